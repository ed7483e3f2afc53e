"""What a training run is once its config is resolved: data, tokenizer, template, the
update's static options and the model's structure, checked before anything is loaded.

`resolve(config, workdir)` gives the `Run` the loop in `zero_rl.train.loop` drives.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

import jax
import ml_collections

from zero_rl import config as config_lib
from zero_rl import sharding
from zero_rl.data import (
    RecordError,
    load_benchmark,
    read_examples,
    select_difficulty,
)
from zero_rl.data.synthetic import AdditionTask
from zero_rl.describe import RunDescription, describe_run
from zero_rl.eval.sets import load_eval_sets
from zero_rl.models import abstract_params
from zero_rl.optim import make_optimizer
from zero_rl.sampling import SamplingOptions
from zero_rl.tasks import is_task, make_task
from zero_rl.train.rollout import fit_prompts
from zero_rl.train.update import UpdateOptions

log = logging.getLogger(__name__)


_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_data(config: ml_collections.ConfigDict, key: str) -> list:
    """The examples of `config.data.<key>`: a shipped benchmark name or a data file."""
    name = config.data[key]
    if not (os.sep in name or "/" in name or name.lower().endswith(_DATA_SUFFIXES)):
        return load_benchmark(name)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"data.{key}: no data file at {name!r}")
    try:
        result = read_examples(
            name, config_lib.field_mapping(config), on_error=config.data.on_error
        )
    except RecordError as err:
        hint = (
            "data.answer_from_solution=False reads data.answer_field instead"
            if config.data.answer_from_solution
            else "data.answer_from_solution=True takes the solution's last \\boxed{}"
        )
        raise RecordError(
            f"data.{key}: {err} ({hint}; data.on_error=skip drops bad records)"
        ) from err
    if result.num_skipped:
        log.warning("data.%s: skipped %d bad records of %s (first: %s)", key,
                    result.num_skipped, name, result.skipped[0])  # fmt: skip
    return result.examples


def load_examples(config: ml_collections.ConfigDict):
    """(train examples, eval examples) for the config's data block.

    data.train / data.eval name a shipped benchmark, or (a name with a "/" or a .jsonl, .json
    or .parquet suffix) a data file read with the data.* field mapping.
    """
    d = config.data
    if d.train == "synthetic_addition":
        task = AdditionTask(eval_size=d.eval_size or 200, seed=config.seed)
        return task.split("train"), task.split("eval")
    if is_task(d.train) and d.difficulty:
        raise ValueError(
            f"data.difficulty={d.difficulty!r} selects MATH levels, and the {d.train!r} task has "
            "none: set --config.data.difficulty='' (a task's difficulty is in data.tasks)"
        )
    train = task_split(config, d.train, "train") if is_task(d.train) else read_data(config, "train")
    if d.difficulty:
        train = select_difficulty(train, d.difficulty)
    held_out = task_split(config, d.eval, "eval") if is_task(d.eval) else read_data(config, "eval")
    if d.eval_size:
        held_out = held_out[: d.eval_size]
    return train, held_out


def task_split(config: ml_collections.ConfigDict, name: str, split: str) -> list:
    """A generated task's split, with the task's settings in `config.data.tasks.<name>`."""
    return make_task(name, config.data.tasks[name].to_dict()).split(split)


def show_progress(config: ml_collections.ConfigDict) -> bool:
    """Progress bars on process 0 of an interactive run only (not in log files or CI)."""
    return config.progress_bars and jax.process_index() == 0 and sys.stderr.isatty()


def benchmark_names(config: ml_collections.ConfigDict) -> list[str]:
    return [b.strip() for b in config.eval.benchmarks.split(",") if b.strip()]


def update_options(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> UpdateOptions:
    """The update's static options; raises unless the batch splits evenly over the mesh."""
    rl = config.rl
    rows = rl.num_prompts * rl.num_samples
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    microbatch = rl.microbatch_size or rl.minibatch_size
    if config.sampling.prompts_per_call < 0:
        raise ValueError(
            f"sampling.prompts_per_call={config.sampling.prompts_per_call} must be >= 0"
        )
    per_call = config.sampling.prompts_per_call or rl.num_prompts
    for name, value, divisor in [
        ("rl.num_prompts", rl.num_prompts, batch_devices),
        ("rl.num_prompts", rl.num_prompts, per_call),
        ("sampling.prompts_per_call", per_call, batch_devices),
        ("sampling.slots", config.sampling.slots, batch_devices),
        ("rl.num_prompts * rl.num_samples", rows, rl.minibatch_size),
        ("rl.minibatch_size", rl.minibatch_size, microbatch),
        ("rl.microbatch_size", microbatch, batch_devices),
    ]:
        if value % divisor:
            raise ValueError(f"{name}={value} must be a multiple of {divisor}")
    return UpdateOptions(
        loss=config_lib.loss_config(config),
        estimator=rl.estimator,
        adv_eps=rl.adv_eps,
        adv_std_ddof=rl.adv_std_ddof,
        kl_in_reward_coef=rl.kl_in_reward_coef,
        epochs=rl.epochs,
        num_minibatches=rows // rl.minibatch_size,
        num_microbatches=rl.minibatch_size // microbatch,
        logprob_chunk=rl.logprob_chunk,
        gamma=rl.gamma,
        lam=rl.lam,
        vf_coef=rl.vf_coef,
        vf_clip=rl.vf_clip,
    )


@dataclasses.dataclass
class Run:
    """What stays fixed for a run once the config is resolved."""

    config: ml_collections.ConfigDict
    workdir: str
    description: RunDescription  # template, stops, model and tokenizer: written to run.json
    mesh: jax.sharding.Mesh
    rules: tuple
    batch_sharding: jax.sharding.NamedSharding
    train_examples: list
    eval_examples: list
    graphdef: object
    opts: UpdateOptions
    tx: object
    schedule: object
    reward_cfg: object  # the rollout's rewards (reward.extraction: strict by default)
    eval_reward_cfg: object  # grading of evaluation (eval.extraction: lenient by default)
    sampling: SamplingOptions  # the rollout's, with the template's stops
    eval_sampling: SamplingOptions  # evaluation's (eval.temperature, eval_max_new_tokens)
    benchmark_sets: list  # eval.benchmarks' EvalSets, read once at set-up

    @property
    def tokenizer(self):
        return self.description.tokenizer

    @property
    def template(self) -> str:
        return self.description.template

    @property
    def model_cfg(self):
        return self.description.model

    @property
    def needs_ref(self) -> bool:
        return self.opts.loss.kl_coef != 0.0 or self.opts.kl_in_reward_coef != 0.0

    @property
    def updates_per_step(self) -> int:
        return self.opts.epochs * self.opts.num_minibatches


def resolve(config: ml_collections.ConfigDict, workdir: str) -> Run:
    mesh = sharding.make_mesh(config.mesh.to_dict())
    rules = sharding.rules_from_config(config.sharding)
    opts = update_options(config, mesh)  # checks the RL options before any loading
    description = describe_run(config)
    tokenizer, model_cfg, template = description.tokenizer, description.model, description.template
    log.info("prompt template: %s", template)
    max_len, drop = config.sampling.max_prompt_len, config.data.on_error == "skip"
    train_examples, eval_examples = (
        fit_prompts(examples, tokenizer, template=template, max_prompt_len=max_len, name=name,
                    drop=drop)
        for name, examples in zip(("data.train", "data.eval"), load_examples(config))
    )  # fmt: skip
    # Names and prompt lengths checked now, not after the SFT stage; read once for the run.
    benchmark_sets = load_eval_sets(benchmark_names(config), limit=config.eval.limit or None,
                                    task_settings=config.data.tasks.to_dict())  # fmt: skip
    for eval_set in benchmark_sets:
        fit_prompts(eval_set.examples, tokenizer, template=eval_set.template or template,
                    max_prompt_len=max_len,
                    name=f"eval.benchmarks {eval_set.name}")  # fmt: skip
    tx, schedule = make_optimizer(
        config.optim, config.total_steps * opts.epochs * opts.num_minibatches
    )
    return Run(
        config=config, workdir=workdir, description=description, mesh=mesh, rules=rules,
        batch_sharding=jax.sharding.NamedSharding(
            mesh, sharding.logical_to_spec(("batch", "length"), rules)
        ),
        train_examples=train_examples, eval_examples=eval_examples,
        graphdef=abstract_params(model_cfg)[0], opts=opts, tx=tx, schedule=schedule,
        reward_cfg=config_lib.reward_config(config),
        eval_reward_cfg=config_lib.reward_config(config, evaluation=True),
        sampling=description.sampling_options(config),
        eval_sampling=description.sampling_options(config, evaluation=True),
        benchmark_sets=benchmark_sets,
    )  # fmt: skip


def save_config(config: ml_collections.ConfigDict, workdir: str, is_main: bool) -> None:
    """Writes the resolved config to workdir/config.json. A rerun in a workdir with checkpoints
    must not change a key that changes results (it would resume the old run under new settings,
    e.g. another seed's random stream): that raises, before anything is written."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    # Only checkpoints (of the RL or the SFT stage) make a run that another config would bury.
    stages = [os.path.join(workdir, d) for d in ("checkpoints", "sft")]
    resumable = any(os.path.isdir(d) and os.listdir(d) for d in stages)
    if os.path.isfile(path) and resumable:
        with open(path) as f:
            saved = json.load(f)
        changed, harmless = config_lib.rerun_differences(saved, current)
        if changed:
            raise ValueError(
                f"{workdir} holds a run with another config ({path}); these keys change its "
                f"results: {'; '.join(changed)}. Use a new --workdir, or the saved values"
            )
        if not harmless:
            return
        log.warning("config changes since the last run in %s: %s", workdir, "; ".join(harmless))
    if is_main:  # written whole, then renamed: other processes never read half a file
        with open(path + ".tmp", "w") as f:
            json.dump(current, f, indent=2)
        os.replace(path + ".tmp", path)
