"""Benchmark evaluation of a policy, or grading of outputs produced elsewhere.

    python launch/eval.py --checkpoint=WORKDIR --out_dir=/tmp/eval   # six benchmarks, greedy
    python launch/eval.py --config=configs/qwen2_5_math_7b.py --hf_model=DIR \
        --benchmarks=aime24 --num_samples=32 --temperature=1.0 --out_dir=...   # avg@32, pass@k
    python launch/eval.py --grade_only --input=vllm_outputs.jsonl --out_dir=... \
        [--benchmark=aime24]     # the benchmark of lines without one (default: the file name)

Writes OUT_DIR/<benchmark>/generations.jsonl (every response with its verdict),
OUT_DIR/summary.json and TensorBoard scalars in OUT_DIR/tb. Rerunning with the same OUT_DIR
resumes; OUT_DIR is for one policy (another policy's generations there are refused).

The config: a trainer workdir given as --checkpoint holds the run's config.json, and that is
the config used (so a model or tokenizer set on the training command line is not lost);
`--config.x=y` overrides its keys (mesh, model dtype, reward rules, ...). An explicit
--config=FILE is used instead only when it agrees with the saved config on the keys that pick
the parameters and tokenizer (model.preset/dims/hf_path, tokenizer.path, rl.estimator/critic);
otherwise it is an error. Without a saved config (an HF model, checkpoints copied on their
own), --config (default configs/tiny.py) is the config.
"""

import importlib
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from zero_rl import sharding
from zero_rl.data import FieldMapping, default_template, get_template
from zero_rl.eval import (
    SIMPLERL_ZOO_BENCHMARKS,
    OutputDirError,
    format_summary,
    load_eval_sets,
    run_benchmarks,
)
from zero_rl.eval.grade import grade_outputs, read_outputs
from zero_rl.eval.harness import check_prompt_lengths, check_sampling
from zero_rl.eval.policy import (
    load_policy,
    load_run_config,
    policy_config_conflicts,
    saved_run_directory,
    set_key,
    tokenizer_path,
)
from zero_rl.eval.sets import SYNTHETIC
from zero_rl.tokenizer import load_tokenizer
from zero_rl.train.config import reward_config, sampling_options
from zero_rl.train.metrics import SummaryWriter

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_REPO, "configs", "tiny.py"), "run config file", lock_config=True
)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where results go", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "trainer workdir or checkpoints dir")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
_HF_MODEL = flags.DEFINE_string("hf_model", None, "HF model directory (instead of --checkpoint)")
_BENCHMARKS = flags.DEFINE_list(
    "benchmarks", None, "names, data files or seqio tasks (default: the six SimpleRL-Zoo ones)"
)
_LIMIT = flags.DEFINE_integer("limit", None, "first N problems of each benchmark")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "responses per problem")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass")
_TOP_K = flags.DEFINE_integer("top_k", 0, "0 = off")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 0, "0 = the config's eval length")
_MAX_PROMPT_LEN = flags.DEFINE_integer("max_prompt_len", 0, "0 = the config's")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "problems per sampler call")
_TEMPLATE = flags.DEFINE_string("template", "", "prompt template (default: the config's)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_KS = flags.DEFINE_list("ks", None, "k of pass@k / maj@k (default 1, 2, 4, ... num_samples)")
_SEQIO_MODULES = flags.DEFINE_list("seqio_modules", [], "modules that register seqio tasks")
_SEQIO_SPLIT = flags.DEFINE_string("seqio_split", "test", "split of seqio tasks")
_GRADE_ONLY = flags.DEFINE_bool("grade_only", False, "grade --input instead of generating")
_INPUT = flags.DEFINE_string("input", None, "outputs JSONL to grade (with --grade_only)")
_BENCHMARK = flags.DEFINE_string(
    "benchmark", None, "benchmark of --input lines without one (default: the file's name)"
)
_DATASET = flags.DEFINE_string("dataset", None, "gold format of --input's other benchmarks")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "counts tokens of --input's responses")
_PROGRESS = flags.DEFINE_bool("progress", True, "progress bars on stderr")
_TENSORBOARD = flags.DEFINE_bool("tensorboard", True, "write scalars to OUT_DIR/tb")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _ks() -> list[int] | None:
    try:
        return [int(k) for k in _KS.value] if _KS.value else None
    except ValueError:
        raise ValueError(f"--ks must be integers, got {_KS.value}") from None


def _run_config():
    """The config to evaluate with (see the module doc) and where it came from."""
    config = _CONFIG.value
    run_dir = saved_run_directory(_CHECKPOINT.value) if _CHECKPOINT.value else None
    if run_dir is None:
        return config, "--config"
    saved = load_run_config(run_dir)
    for key, value in config_flags.get_override_values(flags.FLAGS["config"]).items():
        set_key(saved, key, value)
    saved.lock()
    if not flags.FLAGS["config"].present:
        return saved, os.path.join(run_dir, "config.json")
    if conflicts := policy_config_conflicts(saved, config):
        raise ValueError(
            f"--config disagrees with the run's {run_dir}/config.json on "
            f"{'; '.join(conflicts)} (saved vs --config): drop --config to use the saved "
            "config, or make them agree"
        )
    return config, "--config"


def _writer() -> SummaryWriter | None:
    return SummaryWriter(os.path.join(_OUT_DIR.value, "tb")) if _TENSORBOARD.value else None


def _grade(config) -> int:
    if not _INPUT.value:
        return _fail("--grade_only needs --input=outputs.jsonl")
    try:
        tokenizer = load_tokenizer(_TOKENIZER.value) if _TOKENIZER.value else None
        # Every line is checked here, before anything is written.
        outputs = read_outputs(_INPUT.value, benchmark=_BENCHMARK.value, dataset=_DATASET.value)
        ks = _ks()
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    writer = _writer()
    try:
        summary = grade_outputs(
            outputs, _OUT_DIR.value, reward=reward_config(config),
            tokenizer=tokenizer, ks=ks, writer=writer, progress=_PROGRESS.value,
            source=os.path.abspath(_INPUT.value),
        )  # fmt: skip
    except ValueError as e:  # another run's directory, or a k above a problem's samples
        return _fail(str(e))
    finally:
        if writer is not None:
            writer.close()
    print(format_summary(summary))
    return 0


def _evaluate() -> int:
    if (_CHECKPOINT.value is None) == (_HF_MODEL.value is None):
        return _fail("give exactly one of --checkpoint=DIR or --hf_model=DIR (or --grade_only)")
    try:  # everything that can be wrong with the flags fails here, before the model loads
        config, config_source = _run_config()
        default_names = [SYNTHETIC] if config.data.train == SYNTHETIC else SIMPLERL_ZOO_BENCHMARKS
        mesh = sharding.make_mesh(config.mesh.to_dict())
        batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
        for module in _SEQIO_MODULES.value:
            importlib.import_module(module)
        sets = load_eval_sets(
            _BENCHMARKS.value or default_names, limit=_LIMIT.value, seqio_split=_SEQIO_SPLIT.value,
            mapping=FieldMapping(question_field=config.data.question_field,
                                 answer_field=config.data.answer_field),
            synthetic_seed=config.seed, synthetic_size=config.data.eval_size or 200,
        )  # fmt: skip
        if _BATCH_SIZE.value % batch_devices:
            raise ValueError(f"--batch_size must be a multiple of {batch_devices} (data x fsdp)")
        ks = _ks()
        check_sampling(_NUM_SAMPLES.value, _TEMPERATURE.value, ks)
        model_name = config.model.preset or os.path.basename(
            os.path.normpath(_HF_MODEL.value or config.model.hf_path or "tiny")
        )
        template = _TEMPLATE.value or config.data.template or default_template(model_name)
        get_template(template)
        tokenizer = load_tokenizer(tokenizer_path(config, _HF_MODEL.value))
        max_prompt_len = _MAX_PROMPT_LEN.value or config.sampling.max_prompt_len
        options = sampling_options(config, evaluation=True).replace(
            temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value,
            max_new_tokens=_MAX_NEW_TOKENS.value or config.sampling.eval_max_new_tokens
            or config.sampling.max_new_tokens, max_prompt_len=max_prompt_len,
        )  # fmt: skip
        for eval_set in sets:
            check_prompt_lengths(eval_set, tokenizer, eval_set.template or template,
                                 max_prompt_len)  # fmt: skip
        policy = load_policy(config, checkpoint=_CHECKPOINT.value, hf_model=_HF_MODEL.value,
                             step=_STEP.value, mesh=mesh, tokenizer=tokenizer)  # fmt: skip
    except (FileNotFoundError, ValueError, ImportError) as e:
        return _fail(str(e))
    print(f"evaluating {policy.source} (config from {config_source}, params {policy.fingerprint})"
          f" with template {template!r}", file=sys.stderr)  # fmt: skip
    batch_sharding = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    writer = _writer()
    try:
        with sharding.activation_sharding(mesh, sharding.DEFAULT_RULES):
            summary = run_benchmarks(
                policy.graphdef, policy.params, tokenizer=policy.tokenizer, benchmarks=sets,
                out_dir=_OUT_DIR.value, template=template, sampling=options,
                num_samples=_NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value,
                reward=reward_config(config), seed=_SEED.value, ks=ks,
                batch_sharding=batch_sharding, writer=writer, step=policy.step,
                progress=_PROGRESS.value, policy_id=policy.fingerprint,
            )  # fmt: skip
    except OutputDirError as e:
        return _fail(str(e))
    finally:
        if writer is not None:
            writer.close()
    print(format_summary(summary))
    return 0


def main(argv):
    del argv
    return _grade(_CONFIG.value) if _GRADE_ONLY.value else _evaluate()


if __name__ == "__main__":
    app.run(main)
