"""Pass-rate filtering of training prompts with the policy itself (SimpleRL-Zoo's "control query
difficulty"): k samples per prompt, graded by the verifier; keep the prompts in a band.

    python launch/filter_difficulty.py --config=configs/qwen2_5_math_7b.py \
        --hf_model=/ckpt/Qwen2.5-Math-7B --data=data/math_train.jsonl --level_field=level \
        --k=8 --config.sampling.max_new_tokens=4096 --output=/data/math_train_band.jsonl
    python launch/filter_difficulty.py --checkpoint=/tmp/zero-rl-tiny --data=synthetic_addition \
        --k=4 --output=/tmp/addition_band.jsonl            # the tiny config's run

Writes OUTPUT (the kept records, in the source's own format: point `data.train` at it) and
OUTPUT's `.pass_rates.jsonl` ({"id", "pass_rate", "num_correct", "k"} per prompt, appended per
batch). Rerunning resumes an interrupted run; with a finished pass-rate file and a new --output
and band, nothing is sampled again. --overwrite starts over.

The config is found as launch/eval.py finds it (a trainer workdir's saved config.json, with
`--config.x=y` overrides), and the responses are sampled as the run's rollouts are
(`--config.sampling.temperature`, `.top_p`, `.top_k`, `.max_new_tokens`, `.max_prompt_len`),
with the run's template (`--config.data.template` to change it).
"""

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from zero_rl import sharding
from zero_rl.config import exit_on_bad_command_line, reward_config, sampling_options
from zero_rl.data import FieldMapping
from zero_rl.eval.pass_rate import Sampling, filter_difficulty, load_source
from zero_rl.eval.policy import describe_policy, load_policy, run_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "tiny.py")
# Sampling flags of earlier versions, now the config keys every sampling caller reads.
MOVED_FLAGS = {
    "temperature": "sampling.temperature", "top_p": "sampling.top_p",
    "top_k": "sampling.top_k", "max_new_tokens": "sampling.max_new_tokens",
    "max_prompt_len": "sampling.max_prompt_len", "template": "data.template",
}  # fmt: skip
if __name__ == "__main__":
    exit_on_bad_command_line(sys.argv[1:], _DEFAULT_CONFIG, moved=MOVED_FLAGS)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "run config file", lock_config=True
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "trainer workdir or checkpoints dir")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
_HF_MODEL = flags.DEFINE_string("hf_model", None, "HF model directory (instead of --checkpoint)")
_DATA = flags.DEFINE_string("data", None, "benchmark name, synthetic_addition, or a data file")
_QUESTION = flags.DEFINE_string("question_field", "problem", "question field of a data file")
_ANSWER = flags.DEFINE_string("answer_field", "answer", "gold answer field of a data file")
_FROM_SOLUTION = flags.DEFINE_bool(
    "answer_from_solution", False, "gold = last \\boxed{} of --solution_field"
)
_SOLUTION = flags.DEFINE_string("solution_field", "solution", "worked solution field")
_LEVEL = flags.DEFINE_string("level_field", None, "difficulty level field (kept in the output)")
_ID = flags.DEFINE_string("id_field", None, "unique id field (default: the line number)")
_GOLD_FORMAT = flags.DEFINE_string("gold_format", None, "gold answer format, e.g. gsm8k")
_ON_ERROR = flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "bad records: stop or skip")
_LIMIT = flags.DEFINE_integer("limit", None, "first N prompts only")
_OUTPUT = flags.DEFINE_string("output", None, "kept records (.jsonl)", required=True)
_PASS_RATES = flags.DEFINE_string("pass_rates", None, "default: OUTPUT's .pass_rates.jsonl")
_K = flags.DEFINE_integer("k", 8, "samples per prompt")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "prompts per sampler call")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_LOW = flags.DEFINE_float("low", 0.0, "keep pass rates above this")
_HIGH = flags.DEFINE_float("high", 1.0, "keep pass rates below this")
_INCLUSIVE = flags.DEFINE_bool("inclusive", False, "keep low <= rate <= high instead")
_RESPONSES = flags.DEFINE_bool("save_responses", False, "add responses to the pass-rate lines")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace existing outputs and sample again")
_PROGRESS = flags.DEFINE_bool("progress", True, "progress bar on stderr")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _pass_rates_path(output: str) -> str:
    return _PASS_RATES.value or os.path.splitext(output)[0] + ".pass_rates.jsonl"


def main(argv):
    del argv
    if (_CHECKPOINT.value is None) == (_HF_MODEL.value is None):
        return _fail("give exactly one of --checkpoint=DIR or --hf_model=DIR")
    if not _DATA.value:
        return _fail("--data is required: a benchmark name, synthetic_addition, or a data file")
    try:  # everything that can be wrong with the flags fails here, before the model loads
        config, config_source = run_config(
            _CONFIG.value, checkpoint=_CHECKPOINT.value,
            overrides=config_flags.get_override_values(flags.FLAGS["config"]),
            given_explicitly=flags.FLAGS["config"].present,
        )  # fmt: skip
        mesh = sharding.make_mesh(config.mesh.to_dict())
        batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
        if _BATCH_SIZE.value % batch_devices:
            raise ValueError(f"--batch_size must be a multiple of {batch_devices} (data x fsdp)")
        mapping = FieldMapping(
            question_field=_QUESTION.value, answer_field=_ANSWER.value,
            answer_from_solution=_FROM_SOLUTION.value, solution_field=_SOLUTION.value,
            level_field=_LEVEL.value, id_field=_ID.value, gold_format=_GOLD_FORMAT.value,
        )  # fmt: skip
        source = load_source(_DATA.value, mapping, limit=_LIMIT.value, on_error=_ON_ERROR.value,
                             synthetic_seed=config.seed)  # fmt: skip
        description = describe_policy(config, checkpoint=_CHECKPOINT.value,
                                      hf_model=_HF_MODEL.value)  # fmt: skip
        template = description.template
        reward = reward_config(config)
        options = sampling_options(config)
        sampling = Sampling(template=template, k=_K.value, batch_size=_BATCH_SIZE.value,
                            options=options, seed=_SEED.value, reward=reward)  # fmt: skip
        output, pass_rates = _OUTPUT.value, _pass_rates_path(_OUTPUT.value)
        if os.path.exists(output) and not _OVERWRITE.value:
            raise FileExistsError(f"{output} exists; pass --overwrite or another --output")
        policy = load_policy(config, checkpoint=_CHECKPOINT.value, hf_model=_HF_MODEL.value,
                             step=_STEP.value, mesh=mesh, description=description)  # fmt: skip
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        return _fail(str(e))
    print(
        f"filtering {len(source.examples)} prompts of {source.name} with {policy.source} "
        f"(config from {config_source}): "
        f"template={template} k={sampling.k} temperature={options.temperature} "
        f"top_p={options.top_p} band={'[' if _INCLUSIVE.value else '('}{_LOW.value}, "
        f"{_HIGH.value}{']' if _INCLUSIVE.value else ')'}",
        file=sys.stderr,
    )
    input_sharding = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    try:
        with sharding.activation_sharding(mesh):
            summary = filter_difficulty(
                (policy.graphdef, policy.params), policy.tokenizer, source, sampling,
                pass_rates_path=pass_rates, output_path=output, low=_LOW.value,
                high=_HIGH.value, inclusive=_INCLUSIVE.value, with_responses=_RESPONSES.value,
                overwrite=_OVERWRITE.value, policy_name=policy.source,
                input_sharding=input_sharding, progress=_PROGRESS.value,
            )  # fmt: skip
    except (FileExistsError, ValueError) as e:
        return _fail(str(e))
    print(summary.format())
    print(f"pass rates in {pass_rates}")
    if jax.process_index() == 0 and summary.num_kept:
        print(f"train on them: --config.data.train={output}")
    return 0


if __name__ == "__main__":
    app.run(main)
