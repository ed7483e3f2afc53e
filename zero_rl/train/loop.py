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
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from zero_rl import sharding
from zero_rl.data import (
    FieldMapping,
    PromptIterator,
    default_template,
    get_template,
    load_benchmark,
    read_examples,
    select_difficulty,
)
from zero_rl.data.synthetic import AdditionTask, sft_pairs
from zero_rl.data.templates import stop_token_ids
from zero_rl.models import abstract_params, create_model, from_hf
from zero_rl.rewards import VerifierPool
from zero_rl.tokenizer import load_tokenizer
from zero_rl.train import config as config_lib
from zero_rl.train.checkpoint import Checkpointer
from zero_rl.train.evaluate import evaluate
from zero_rl.train.metrics import CompileCounter, SummaryWriter, progress_line
from zero_rl.train.optim import make_optimizer, sharded_init
from zero_rl.train.rl_step import UpdateOptions, update
from zero_rl.train.rollout import RolloutCollector, SamplingOptions, collect

log = logging.getLogger(__name__)

TINY_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "assets", "tiny_addition.model")


def load_examples(config: ml_collections.ConfigDict):
    """(train examples, eval examples) for the config's data block."""
    d = config.data
    if d.train == "synthetic_addition":
        task = AdditionTask(eval_size=d.eval_size or 200, seed=config.seed)
        return task.split("train"), task.split("eval")

    def read(name):
        if os.path.isfile(name):
            mapping = FieldMapping(question_field=d.question_field, answer_field=d.answer_field)
            return read_examples(name, mapping, on_error="raise").examples
        return load_benchmark(name)

    train = read(d.train)
    if d.difficulty:
        train = select_difficulty(train, d.difficulty)
    held_out = read(d.eval)
    if d.eval_size:
        held_out = held_out[: d.eval_size]
    return train, held_out


def _run_benchmarks(config, graphdef, params, step, *, workdir, writer, **kwargs) -> None:
    """The chosen benchmarks (`config.eval`), one output directory per step; TensorBoard gets
    `eval/<benchmark>/accuracy` and friends."""
    from zero_rl.eval import run_benchmarks  # noqa: PLC0415 - only when benchmarks are asked for

    e = config.eval
    run_benchmarks(
        graphdef, params, benchmarks=[b.strip() for b in e.benchmarks.split(",") if b.strip()],
        out_dir=os.path.join(workdir, "eval", f"step_{step:06d}"), num_samples=e.num_samples,
        temperature=e.temperature, top_p=e.top_p, limit=e.limit or None,
        max_new_tokens=config.sampling.eval_max_new_tokens or config.sampling.max_new_tokens,
        max_prompt_len=config.sampling.max_prompt_len, batch_size=config.rl.num_prompts,
        stop_token_ids=kwargs.pop("stop_ids"), writer=writer, step=step,
        progress=jax.process_index() == 0, decode_segments=config.sampling.decode_segments,
        **kwargs,
    )  # fmt: skip


def _log_samples(writer: SummaryWriter, step: int, result, count: int) -> None:
    """A few responses with their verdicts, as TensorBoard text."""
    group = len(result.texts) // len(result.examples)
    for i in range(min(count, len(result.texts))):
        v = result.verdicts[i]
        gold = result.examples[i // group].answer
        header = f"**correct={v.correct} extracted={v.extracted!r} gold={gold!r}**"
        writer.text(step, f"samples/{i}", f"{header}\n\n{result.texts[i]}")


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

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _base_params(config, model_cfg, tokenizer, template, workdir, mesh, rules):
    """The starting policy: an HF checkpoint or a random init, then the optional SFT stage."""
    if config.model.hf_path:
        model = from_hf(config.model.hf_path, mesh=mesh, rules=rules, dtype=model_cfg.dtype,
                        param_dtype=model_cfg.param_dtype, remat=model_cfg.remat,
                        value_head=model_cfg.value_head,
                        separate_critic=model_cfg.separate_critic)  # fmt: skip
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
    tokenizer = load_tokenizer(config.tokenizer.path or config.model.hf_path or TINY_TOKENIZER)
    template = config.data.template or default_template(config.model.preset or "tiny")
    log.info("prompt template: %s", template)
    train_examples, eval_examples = load_examples(config)
    model_cfg = config_lib.model_config(config, tokenizer.vocab_size)
    opts = update_options(config, mesh)
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
        decode_segments=c.sampling.decode_segments,
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


def _step_metrics(run: _Run, step: int, stats: dict, m: dict, seconds: float) -> dict[str, float]:
    """One step's scalars: host statistics of the rollout plus the update's device metrics."""
    metrics = dict(stats)
    metrics.update({
        "train/kl": float(m.get("kl", 0.0)),
        "train/entropy": float(m["entropy"]),
        "train/clip_frac": float(m["clip_frac_low"] + m["clip_frac_high"]),
        "train/clip_frac_low": float(m["clip_frac_low"]),
        "train/clip_frac_high": float(m["clip_frac_high"]),
        "train/approx_kl": float(m["approx_kl"]),
        "train/grad_norm": float(m["grad_norm"]),
        "train/loss": float(m["loss"]),
        "train/zero_signal_frac": float(m["adv/zero_signal_frac"]),
        "train/sampler_logprob_gap": float(m["sampler_logprob_gap_mean"]),
        "train/learning_rate": float(run.schedule((step + 1) * run.updates_per_step - 1)),
        **({"train/vf_loss": float(m["vf_loss"]),
            "train/vf_explained_variance": float(m["explained_variance"])}
           if "vf_loss" in m else {}),
        "perf/step_time_s": seconds,
        "perf/sample_tokens_per_s": stats["perf/sample_tokens"]
        / max(stats["perf/sample_time_s"], 1e-9),
        "perf/num_compiles": float(CompileCounter.count()),
    })  # fmt: skip
    return metrics


def _train(config, workdir: str, preemption: _Preemption) -> dict[str, float]:
    config_lib.check_keys(config)
    CompileCounter.install()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    run = _resolve(config, workdir)
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
    collector = RolloutCollector(
        graphdef=run.graphdef, tokenizer=run.tokenizer, template=run.template,
        stop_token_ids=run.stop_ids, sampling=run.sampling, num_samples=rl.num_samples,
        reward=run.reward_cfg, pool=pool, batch_sharding=run.batch_sharding,
        logprob_chunks=run.opts.num_minibatches * run.opts.num_microbatches,
        logprob_chunk_len=rl.logprob_chunk, with_values=run.model_cfg.value_head,
    )  # fmt: skip
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
                result = collect(
                    collector, params, ref_params, iterator, jax.random.fold_in(step_rng, 0),
                    dynamic_sampling=rl.dynamic_sampling, max_draws=rl.max_draws,
                    overlong_filter=rl.overlong_filter,
                )  # fmt: skip
                params, opt_state, device_metrics = update(
                    run.graphdef, run.tx, params, opt_state, result.rollout,
                    jax.random.fold_in(step_rng, 1), opts=run.opts,
                    prompt_len=run.sampling.max_prompt_len,
                )  # fmt: skip
                metrics = _step_metrics(run, step, result.stats, jax.device_get(device_metrics),
                                        time.perf_counter() - t0)  # fmt: skip
                done = step + 1
                last = done == config.total_steps
                if config.eval_every and (done % config.eval_every == 0 or last):
                    metrics["eval/accuracy"] = _evaluate(run, params, done, writer, pool)
                if done % config.log_every == 0 or last:
                    writer.scalars(done, {k: v for k, v in metrics.items() if k != "eval/accuracy"})
                    _log_samples(writer, done, result, config.num_sample_texts)
                    writer.flush()
                    if is_main:
                        print(progress_line(done, config.total_steps, metrics), flush=True)
                periodic = config.checkpoint_every and done % config.checkpoint_every == 0
                if periodic or last or preemption.requested:
                    meta = {"step": done, "data": iterator.state_dict(),
                            "metrics": {k: float(v) for k, v in metrics.items()}}  # fmt: skip
                    best = {k: v for k, v in metrics.items() if k == "eval/accuracy"} or None
                    ckpt.save(done, {"params": params, "opt_state": opt_state}, meta, metrics=best)
                if preemption.requested:
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
