"""Rejection-sampling fine-tuning data: k samples per prompt from a policy; the verified,
finished, distinct ones (at most --max_per_prompt per prompt) become SFT pairs.

    python launch/rejection_sample.py --checkpoint=/tmp/zero-rl-tiny --k=8 \
        --output=/tmp/addition_rft.jsonl                   # the run's data.train and template
    python launch/rejection_sample.py --config=configs/qwen2_5_math_7b.py --hf_model=DIR \
        --data=data/math_train.jsonl --config.sampling.max_new_tokens=4096 --output=rft.jsonl
    python launch/sft.py --config.data.source=rft.jsonl --config.data.template=qwen_boxed ...

OUTPUT gets {"id", "prompt", "response", "answer", "extracted", "template", "sample"} per kept
response ("prompt" is the raw question: give SFT the "template"), OUTPUT's `.samples.jsonl`
every graded response, appended per batch. A rerun resumes; other settings are refused;
--overwrite starts over. The config, template and sampling (`--config.sampling.*`) are found
as in launch/filter_difficulty.py, a data file is read as training reads data.train
(`--config.data.question_field`, `.answer_from_solution`, ...), grading is the reward's, strict.
"""

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from zero_rl import sharding
from zero_rl.config import exit_on_bad_command_line, field_mapping, reward_config, sampling_options
from zero_rl.eval.pass_rate import Sampling
from zero_rl.eval.policy import describe_policy, load_policy, run_config
from zero_rl.eval.rejection import load_prompts, rejection_sample
from zero_rl.tasks import is_task

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT_CONFIG = os.path.join(_REPO, "configs", "tiny.py")
if __name__ == "__main__":
    exit_on_bad_command_line(sys.argv[1:], _DEFAULT_CONFIG)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "run config file", lock_config=True
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "trainer workdir or checkpoints dir")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
_HF_MODEL = flags.DEFINE_string("hf_model", None, "HF model directory (instead of --checkpoint)")
_DATA = flags.DEFINE_string(
    "data", None, "benchmark, synthetic_addition, task or data file (default: data.train)"
)
_LIMIT = flags.DEFINE_integer("limit", None, "first N prompts only")
_OUTPUT = flags.DEFINE_string("output", None, "kept pairs (.jsonl)", required=True)
_K = flags.DEFINE_integer("k", 8, "samples per prompt")
_MAX_PER_PROMPT = flags.DEFINE_integer("max_per_prompt", 4, "most pairs per prompt (0: no cap)")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "prompts per sampler call")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace existing outputs and sample again")
_PROGRESS = flags.DEFINE_bool("progress", True, "progress bar on stderr")


def main(argv):
    del argv
    checkpoint, hf_model = _CHECKPOINT.value, _HF_MODEL.value
    try:  # what can be wrong with the flags fails before the model loads
        if (checkpoint is None) == (hf_model is None):
            raise ValueError("give exactly one of --checkpoint=DIR or --hf_model=DIR")
        if _MAX_PER_PROMPT.value < 0:
            raise ValueError(f"--max_per_prompt={_MAX_PER_PROMPT.value}: need >= 0 (0: no cap)")
        config, config_source = run_config(
            _CONFIG.value, checkpoint=checkpoint,
            overrides=config_flags.get_override_values(flags.FLAGS["config"]),
            given_explicitly=flags.FLAGS["config"].present,
        )  # fmt: skip
        mesh = sharding.make_mesh(config.mesh.to_dict())
        batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
        if _BATCH_SIZE.value % batch_devices:
            raise ValueError(f"--batch_size must be a multiple of {batch_devices} (data x fsdp)")
        data = _DATA.value or config.data.train
        source = load_prompts(
            data, field_mapping(config), limit=_LIMIT.value, on_error=config.data.on_error,
            synthetic_seed=config.seed,
            task_options=config.data.tasks[data].to_dict() if is_task(data) else None,
        )  # fmt: skip
        description = describe_policy(config, checkpoint=checkpoint, hf_model=hf_model)
        sampling = Sampling(template=description.template, k=_K.value,
                            batch_size=_BATCH_SIZE.value, options=sampling_options(config),
                            seed=_SEED.value, reward=reward_config(config))  # fmt: skip
        policy = load_policy(config, checkpoint=checkpoint, hf_model=hf_model, step=_STEP.value,
                             mesh=mesh, description=description)  # fmt: skip
        print(f"rejection sampling {len(source.examples)} prompts of {source.name} with "
              f"{policy.source} (config from {config_source}): template={sampling.template} "
              f"k={sampling.k} temperature={sampling.options.temperature}",
              file=sys.stderr)  # fmt: skip
        input_sharding = jax.sharding.NamedSharding(
            mesh, sharding.logical_to_spec(("batch", "length"))
        )
        with sharding.activation_sharding(mesh):
            summary = rejection_sample(
                (policy.graphdef, policy.params), policy.tokenizer, source, sampling,
                output_path=_OUTPUT.value, max_per_prompt=_MAX_PER_PROMPT.value or None,
                overwrite=_OVERWRITE.value, policy_name=policy.fingerprint,
                input_sharding=input_sharding, progress=_PROGRESS.value,
            )  # fmt: skip
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    if jax.process_index() == 0 and summary.num_kept:
        print(f"fine-tune on them: launch/sft.py --config.data.source={summary.output_path} "
              f"--config.data.template={sampling.template}")  # fmt: skip
    return 0


if __name__ == "__main__":
    app.run(main)
