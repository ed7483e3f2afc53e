"""The zero-RL training loop: sample -> verify -> advantages -> update, with checkpoints.

`train(config, workdir)` is the whole job; `launch/train.py` only parses flags and calls it, so
the same run can be driven from a notebook.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from zero_rl import sharding
from zero_rl.data import (
    PromptIterator,
    RecordError,
    default_template,
    get_template,
    load_benchmark,
    read_examples,
    select_difficulty,
)
from zero_rl.data.synthetic import AdditionTask, sft_pairs
from zero_rl.data.templates import stop_token_ids
from zero_rl.models import abstract_params, create_model, from_hf
from zero_rl.models.config import RUNTIME_FIELDS
from zero_rl.rewards import VerifierPool
from zero_rl.tokenizer import load_tokenizer
from zero_rl.train import config as config_lib
from zero_rl.train.checkpoint import Checkpointer, any_process
from zero_rl.train.evaluate import evaluate
from zero_rl.train.metrics import (
    CompileCounter,
    SummaryWriter,
    log_samples,
    progress_line,
    step_metrics,
)
from zero_rl.train.optim import make_optimizer, sharded_init
from zero_rl.train.rl_step import UpdateOptions, update
from zero_rl.train.rollout import RolloutCollector, SamplingOptions, collect, fit_prompts

log = logging.getLogger(__name__)

TINY_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "assets", "tiny_addition.model")


_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def _read_data(config: ml_collections.ConfigDict, key: str) -> list:
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
    train = _read_data(config, "train")
    if d.difficulty:
        train = select_difficulty(train, d.difficulty)
    held_out = _read_data(config, "eval")
    if d.eval_size:
        held_out = held_out[: d.eval_size]
    return train, held_out


def _show_progress(config: ml_collections.ConfigDict) -> bool:
    """Progress bars on process 0 of an interactive run only (not in log files or CI)."""
    return config.progress_bars and jax.process_index() == 0 and sys.stderr.isatty()


def _benchmark_names(config: ml_collections.ConfigDict) -> list[str]:
    return [b.strip() for b in config.eval.benchmarks.split(",") if b.strip()]


def _run_benchmarks(config, graphdef, params, step, *, workdir, writer, **kwargs) -> None:
    """The chosen benchmarks (`config.eval`), one output directory per step; TensorBoard gets
    `eval/<benchmark>/accuracy` and friends."""
    from zero_rl.eval import run_benchmarks  # noqa: PLC0415 - only when benchmarks are asked for

    e = config.eval
    run_benchmarks(
        graphdef, params, benchmarks=_benchmark_names(config),
        out_dir=os.path.join(workdir, "eval", f"step_{step:06d}"), num_samples=e.num_samples,
        temperature=e.temperature, top_p=e.top_p, limit=e.limit or None,
        max_new_tokens=config.sampling.eval_max_new_tokens or config.sampling.max_new_tokens,
        max_prompt_len=config.sampling.max_prompt_len, batch_size=config.rl.num_prompts,
        stop_token_ids=kwargs.pop("stop_ids"), writer=writer, step=step,
        progress=_show_progress(config),
        decode_segments=config.sampling.decode_segments,
        **kwargs,
    )  # fmt: skip


class _Preemption:
    """SIGTERM (TPU preemption) sets a flag; the loop saves and exits cleanly at step end."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (e.g. some notebook kernels): no handler
            self._previous = None
        return self

    def _handler(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and exiting after this step")
        self.requested = True

    def agreed(self) -> bool:
        """Whether any process got SIGTERM. Asked by every process at every step end, it gives
        all of them the same answer there: hosts notified at different steps would otherwise
        diverge, one entering the save (a collective) and stopping while the others go on."""
        return any_process(self.requested)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _base_params(config, model_cfg, tokenizer, template, workdir, mesh, rules):
    """The starting policy: an HF checkpoint or a random init, then the optional SFT stage."""
    if config.model.hf_path:
        # How the network runs comes from the config; what it is, from the checkpoint (the
        # config's model_cfg already agrees with it: config.model_config checks).
        model = from_hf(config.model.hf_path, mesh=mesh, rules=rules,
                        **{k: getattr(model_cfg, k) for k in RUNTIME_FIELDS})  # fmt: skip
    else:
        model = create_model(model_cfg, seed=config.seed, mesh=mesh, rules=rules)
    if config.sft.steps > 0:
        from zero_rl.train.sft import train_sft  # noqa: PLC0415 - only runs with an SFT stage

        if config.data.train != "synthetic_addition":
            raise ValueError(
                "the built-in SFT stage makes pairs for synthetic_addition only; "
                "run launch/sft.py on your SFT data and start RL from its export"
            )
        train_examples, _ = load_examples(config)
        pairs = sft_pairs(train_examples, carry_error_rate=config.sft.carry_error_rate,
                          seed=config.sft.seed)  # fmt: skip
        pairs = [(get_template(template).render(p), r) for p, r in pairs]
        model = train_sft(config.sft, model=model, tokenizer=tokenizer, pairs=pairs,
                          workdir=os.path.join(workdir, "sft"), mesh=mesh)  # fmt: skip
    return nnx.split(model)[1]


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


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) the RL job described by `config` in `workdir`; returns the last
    step's metrics. Rerunning with the same workdir continues from the latest checkpoint.

    SIGTERM at any point (a TPU preemption notice) lets the current step finish, saves a
    checkpoint and returns normally.
    """
    # Installed first, so a SIGTERM during set-up or the SFT stage is not fatal either.
    with _Preemption() as preemption:
        return _train(config, workdir, preemption)


@dataclasses.dataclass
class _Run:
    """What stays fixed for a run once the config is resolved."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    rules: tuple
    batch_sharding: jax.sharding.NamedSharding
    tokenizer: object
    template: str
    stop_ids: list[int]
    train_examples: list
    eval_examples: list
    model_cfg: object
    graphdef: object
    opts: UpdateOptions
    tx: object
    schedule: object
    reward_cfg: object
    sampling: SamplingOptions

    @property
    def needs_ref(self) -> bool:
        return self.opts.loss.kl_coef != 0.0 or self.opts.kl_in_reward_coef != 0.0

    @property
    def updates_per_step(self) -> int:
        return self.opts.epochs * self.opts.num_minibatches


def _resolve(config: ml_collections.ConfigDict, workdir: str) -> _Run:
    mesh = sharding.make_mesh(config.mesh.to_dict())
    rules = sharding.rules_from_config(config.sharding)
    opts = update_options(config, mesh)  # checks the RL options before any loading
    tokenizer = load_tokenizer(config.tokenizer.path or config.model.hf_path or TINY_TOKENIZER)
    model_cfg = config_lib.model_config(config, tokenizer.vocab_size)
    template = config.data.template or _default_template(config.model, model_cfg)
    log.info("prompt template: %s", template)
    max_len, drop = config.sampling.max_prompt_len, config.data.on_error == "skip"
    train_examples, eval_examples = (
        fit_prompts(examples, tokenizer, template=template, max_prompt_len=max_len, name=name,
                    drop=drop)
        for name, examples in zip(("data.train", "data.eval"), load_examples(config))
    )  # fmt: skip
    if config.eval.benchmarks:  # names and prompt lengths now, not after the SFT stage
        from zero_rl.eval.sets import load_eval_sets  # noqa: PLC0415 - as in _run_benchmarks

        for eval_set in load_eval_sets(_benchmark_names(config), limit=config.eval.limit or None):
            fit_prompts(eval_set.examples, tokenizer, template=eval_set.template or template,
                        max_prompt_len=max_len,
                        name=f"eval.benchmarks {eval_set.name}")  # fmt: skip
    tx, schedule = make_optimizer(
        config.optim, config.total_steps * opts.epochs * opts.num_minibatches
    )
    s = config.sampling
    return _Run(
        config=config, workdir=workdir, mesh=mesh, rules=rules,
        batch_sharding=jax.sharding.NamedSharding(
            mesh, sharding.logical_to_spec(("batch", "length"), rules)
        ),
        tokenizer=tokenizer, template=template, stop_ids=stop_token_ids(tokenizer, template),
        train_examples=train_examples, eval_examples=eval_examples, model_cfg=model_cfg,
        graphdef=abstract_params(model_cfg)[0], opts=opts, tx=tx, schedule=schedule,
        reward_cfg=config_lib.reward_config(config),
        sampling=SamplingOptions(max_prompt_len=s.max_prompt_len,
                                 max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                 top_p=s.top_p, top_k=s.top_k,
                                 prompts_per_call=s.prompts_per_call,
                                 decode_segments=s.decode_segments),
    )  # fmt: skip


def _default_template(m: ml_collections.ConfigDict, model_cfg) -> str:
    """SimpleRL-Zoo's template for the model: from the preset's name, else from the HF
    checkpoint's directory name ("Qwen2.5-Math-7B"), else from its architecture."""
    if m.preset:
        return default_template(m.preset)
    if not m.hf_path:
        return default_template("tiny")
    names = [os.path.basename(os.path.normpath(m.hf_path)), model_cfg.hf_architecture]
    for name in names:
        try:
            template = default_template(name)
        except ValueError:
            continue
        log.info("prompt template %s chosen from %r (set data.template to change it)",
                 template, name)  # fmt: skip
        return template
    raise ValueError(f"no default template for {names}; set data.template")


def _restore_or_start(run: _Run, ckpt: Checkpointer, iterator: PromptIterator):
    """(start_step, params, opt_state, ref_params, meta) from the latest checkpoint, or the
    base model at step 0 (meta None). The reference is always the base model."""
    rules = run.rules
    base = None
    if ckpt.latest_step() is None or run.needs_ref:
        with sharding.activation_sharding(run.mesh, rules):
            base = _base_params(run.config, run.model_cfg, run.tokenizer, run.template,
                                run.workdir, run.mesh, rules)  # fmt: skip
    abstract = {"params": abstract_params(run.model_cfg, run.mesh, rules)[1]}
    init_opt = sharded_init(run.tx, abstract["params"])
    abstract["opt_state"] = jax.eval_shape(init_opt, abstract["params"])
    ref_params = base if run.needs_ref else None
    if ckpt.latest_step() is None:
        params = jax.tree.map(jnp.copy, base) if run.needs_ref else base
        return 0, params, init_opt(params), ref_params, None
    restored = ckpt.restore_latest(abstract)
    if restored is None:
        # Never start over on top of a run's checkpoints: that would bury them.
        raise RuntimeError(
            f"no checkpoint in {ckpt.directory} (steps {ckpt.all_steps()}) could be restored; "
            "see the warnings above. Move them aside to start a new run in this workdir."
        )
    step, state, meta = restored
    # Older checkpoints carry no seed; the data iterator still checks its own.
    if meta.get("seed", run.config.seed) != run.config.seed:
        raise ValueError(
            f"checkpoint at step {step} in {ckpt.directory} was trained with seed={meta['seed']} "
            f"but this run has seed={run.config.seed}: the per-step randomness fold_in(seed, "
            "step) would not continue. Use the checkpoint's seed or a new --workdir"
        )
    iterator.load_state_dict(meta["data"])
    log.info("resumed from step %d", step)
    return step, state["params"], state["opt_state"], ref_params, meta


def _evaluate(run: _Run, params, step: int, writer: SummaryWriter, pool) -> float:
    """Held-out greedy accuracy on data.eval (`eval/accuracy`), plus config.eval's benchmarks."""
    c = run.config
    max_new = c.sampling.eval_max_new_tokens or c.sampling.max_new_tokens
    result = evaluate(
        run.graphdef, params, run.eval_examples, tokenizer=run.tokenizer, template=run.template,
        max_prompt_len=c.sampling.max_prompt_len, max_new_tokens=max_new,
        batch_size=c.rl.num_prompts, stop_token_ids=run.stop_ids, reward=run.reward_cfg,
        pool=pool, batch_sharding=run.batch_sharding,
        decode_segments=c.sampling.decode_segments, progress=_show_progress(c),
    )  # fmt: skip
    writer.scalars(step, {"eval/accuracy": result.accuracy})
    if jax.process_index() == 0:
        log.info("step %d eval/accuracy %.3f (%d examples)", step, result.accuracy,
                 len(run.eval_examples))  # fmt: skip
    if c.eval.benchmarks:
        _run_benchmarks(c, run.graphdef, params, step, workdir=run.workdir, writer=writer,
                        tokenizer=run.tokenizer, template=run.template, stop_ids=run.stop_ids,
                        reward=run.reward_cfg, pool=pool,
                        batch_sharding=run.batch_sharding)  # fmt: skip
    return result.accuracy


def _collector(run: _Run, pool: VerifierPool) -> RolloutCollector:
    rl = run.config.rl
    return RolloutCollector(
        graphdef=run.graphdef, tokenizer=run.tokenizer, template=run.template,
        stop_token_ids=run.stop_ids, sampling=run.sampling, num_samples=rl.num_samples,
        reward=run.reward_cfg, pool=pool, batch_sharding=run.batch_sharding,
        logprob_chunks=run.opts.num_minibatches * run.opts.num_microbatches,
        logprob_chunk_len=rl.logprob_chunk, with_values=run.model_cfg.value_head,
    )  # fmt: skip


def _step(run: _Run, collector, params, opt_state, ref_params, iterator, step_rng):
    """One RL step, (rollout result, params, opt_state, device metrics): sample, verify, update.
    Its one device-to-host transfer is the response tokens (`RolloutCollector._local`)."""
    rl = run.config.rl
    result = collect(
        collector, params, ref_params, iterator, jax.random.fold_in(step_rng, 0),
        dynamic_sampling=rl.dynamic_sampling, max_draws=rl.max_draws,
        overlong_filter=rl.overlong_filter,
    )  # fmt: skip
    params, opt_state, device_metrics = update(
        run.graphdef, run.tx, params, opt_state, result.rollout, jax.random.fold_in(step_rng, 1),
        opts=run.opts, prompt_len=run.sampling.max_prompt_len,
    )  # fmt: skip
    return result, params, opt_state, device_metrics


def _save_config(config: ml_collections.ConfigDict, workdir: str, is_main: bool) -> None:
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


def _train(config, workdir: str, preemption: _Preemption) -> dict[str, float]:
    config_lib.validate(config)
    CompileCounter.install()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    run = _resolve(config, workdir)
    _save_config(config, workdir, is_main)  # a config that fails to resolve leaves no trace
    rl = config.rl
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                        async_save=config.async_checkpoint)  # fmt: skip
    iterator = PromptIterator(run.train_examples, rl.num_prompts, seed=config.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())  # fmt: skip
    start_step, params, opt_state, ref_params, meta = _restore_or_start(run, ckpt, iterator)
    if start_step >= config.total_steps:
        log.info("the run already reached total_steps=%d; nothing to do", config.total_steps)
        ckpt.close()
        return dict(meta.get("metrics", {}))

    writer = SummaryWriter(os.path.join(workdir, "tb"), enabled=is_main)
    pool = VerifierPool(num_workers=config.reward.num_workers, timeout_s=run.reward_cfg.timeout_s)
    collector = _collector(run, pool)
    metrics: dict[str, float] = {}
    rng = jax.random.key(config.seed)
    try:
        with sharding.activation_sharding(run.mesh, run.rules):
            if start_step == 0 and config.eval_every:
                metrics["eval/accuracy"] = _evaluate(run, params, 0, writer, pool)
            for step in range(start_step, config.total_steps):
                t0 = time.perf_counter()
                # Per-step randomness from (seed, step) alone: a resumed run replays exactly.
                step_rng = jax.random.fold_in(rng, step)
                result, params, opt_state, device_metrics = _step(
                    run, collector, params, opt_state, ref_params, iterator, step_rng
                )
                lr = run.schedule((step + 1) * run.updates_per_step - 1)  # the step's last
                metrics = step_metrics(result.stats, jax.device_get(device_metrics),
                                       learning_rate=float(lr),
                                       step_time_s=time.perf_counter() - t0)  # fmt: skip
                done = step + 1
                last = done == config.total_steps
                if config.eval_every and (done % config.eval_every == 0 or last):
                    metrics["eval/accuracy"] = _evaluate(run, params, done, writer, pool)
                if done % config.log_every == 0 or last:
                    writer.scalars(done, {k: v for k, v in metrics.items() if k != "eval/accuracy"})
                    log_samples(writer, done, result, config.num_sample_texts)
                    writer.flush()
                    if is_main:
                        print(progress_line(done, config.total_steps, metrics), flush=True)
                periodic = config.checkpoint_every and done % config.checkpoint_every == 0
                stop = preemption.agreed()  # the same on every process
                if periodic or last or stop:
                    meta = {"step": done, "seed": config.seed, "data": iterator.state_dict(),
                            "metrics": {k: float(v) for k, v in metrics.items()}}  # fmt: skip
                    best = {k: v for k, v in metrics.items() if k == "eval/accuracy"} or None
                    ckpt.save(done, {"params": params, "opt_state": opt_state}, meta, metrics=best)
                if stop:
                    ckpt.wait()
                    log.warning("saved step %d after SIGTERM; exiting", done)
                    break
    finally:
        ckpt.close()
        writer.close()
        pool.close()
    if is_main:
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump({k: float(v) for k, v in metrics.items() if np.isfinite(v)}, f, indent=2)
    return metrics
