"""Benchmark evaluation of a policy, or grading of outputs produced elsewhere.

    python launch/eval.py --checkpoint=WORKDIR --out_dir=/tmp/eval   # six benchmarks, greedy
    python launch/eval.py --config=configs/qwen2_5_math_7b.py --hf_model=DIR \
        --benchmarks=aime24 --config.eval.num_samples=32 --config.eval.temperature=1.0 \
        --out_dir=...                                                           # avg@32, pass@k
    python launch/eval.py --grade_only --input=vllm_outputs.jsonl --out_dir=... \
        [--benchmark=aime24]     # the benchmark of lines without one (default: the file name)

Writes OUT_DIR/<benchmark>/generations.jsonl (every response with its verdict),
OUT_DIR/summary.json and TensorBoard scalars in OUT_DIR/tb. Rerunning with the same OUT_DIR
resumes; OUT_DIR is for one policy (another policy's generations there are refused).

The config: a trainer workdir given as --checkpoint holds the run's config.json, and that is
the config used (so a model or tokenizer set on the training command line is not lost), with
the template, stops and model training used (its run.json); `--config.x=y` overrides its keys.
An explicit --config=FILE is used instead only when it agrees with the saved config on the keys
that pick the parameters and tokenizer (model.preset/dims/hf_path, tokenizer.path,
rl.estimator/critic); otherwise it is an error. Without a saved config (an HF model,
checkpoints copied on their own), --config (default configs/tiny.py) is the config.

Sampling is the config's evaluation sampling, as in training's own evaluation:
`--config.eval.num_samples`, `--config.eval.temperature` (0 = greedy), `--config.eval.top_p`,
`--config.sampling.top_k`, `--config.sampling.eval_max_new_tokens` (0 = max_new_tokens),
`--config.sampling.max_prompt_len`, `--config.data.template`.
"""

import importlib
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from zero_rl import sharding
from zero_rl.config import exit_on_bad_command_line, reward_config, sampling_options
from zero_rl.data import FieldMapping
from zero_rl.eval import (
    SIMPLERL_ZOO_BENCHMARKS,
    OutputDirError,
    format_summary,
    load_eval_sets,
    run_benchmarks,
)
from zero_rl.eval.grade import grade_outputs, read_outputs
from zero_rl.eval.harness import check_prompt_lengths, check_sampling
from zero_rl.eval.policy import describe_policy, load_policy, run_config
from zero_rl.eval.sets import SYNTHETIC
from zero_rl.summaries import SummaryWriter
from zero_rl.tokenizer import load_tokenizer

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "tiny.py")
# Sampling flags of earlier versions, now the config keys every sampling caller reads.
MOVED_FLAGS = {
    "num_samples": "eval.num_samples", "temperature": "eval.temperature",
    "top_p": "eval.top_p", "top_k": "sampling.top_k",
    "max_new_tokens": "sampling.eval_max_new_tokens",
    "max_prompt_len": "sampling.max_prompt_len", "template": "data.template",
}  # fmt: skip
if __name__ == "__main__":
    exit_on_bad_command_line(sys.argv[1:], _DEFAULT_CONFIG, moved=MOVED_FLAGS)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "run config file", lock_config=True
)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "where results go", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "trainer workdir or checkpoints dir")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
_HF_MODEL = flags.DEFINE_string("hf_model", None, "HF model directory (instead of --checkpoint)")
_BENCHMARKS = flags.DEFINE_list(
    "benchmarks", None, "names, data files or seqio tasks (default: the six SimpleRL-Zoo ones)"
)
_LIMIT = flags.DEFINE_integer("limit", None, "first N problems of each benchmark")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "problems per sampler call")
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
    """The config to evaluate with (`zero_rl.eval.policy.run_config`) and where it came from."""
    return run_config(
        _CONFIG.value, checkpoint=_CHECKPOINT.value,
        overrides=config_flags.get_override_values(flags.FLAGS["config"]),
        given_explicitly=flags.FLAGS["config"].present,
    )  # fmt: skip


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
            outputs, _OUT_DIR.value, reward=reward_config(config, evaluation=True),
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
            task_settings=config.data.tasks.to_dict(),
        )  # fmt: skip
        if _BATCH_SIZE.value % batch_devices:
            raise ValueError(f"--batch_size must be a multiple of {batch_devices} (data x fsdp)")
        ks = _ks()
        num_samples = config.eval.num_samples
        options = sampling_options(config, evaluation=True)
        check_sampling(num_samples, options.temperature, ks)
        description = describe_policy(config, checkpoint=_CHECKPOINT.value,
                                      hf_model=_HF_MODEL.value)  # fmt: skip
        template = description.template
        for eval_set in sets:
            check_prompt_lengths(eval_set, description.tokenizer, eval_set.template or template,
                                 options.max_prompt_len)  # fmt: skip
        policy = load_policy(config, checkpoint=_CHECKPOINT.value, hf_model=_HF_MODEL.value,
                             step=_STEP.value, mesh=mesh, description=description)  # fmt: skip
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
                num_samples=num_samples, batch_size=_BATCH_SIZE.value,
                reward=reward_config(config, evaluation=True), seed=_SEED.value, ks=ks,
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
