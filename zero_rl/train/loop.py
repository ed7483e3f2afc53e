"""The zero-RL training loop: sample -> verify -> advantages -> update, with checkpoints.

`train(config, workdir)` is the whole job; `launch/train.py` only parses flags and calls it, so
the same run can be driven from a notebook.
"""

from __future__ import annotations

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


def _stop_token_ids(tokenizer, template_name: str) -> list[int]:
    ids = list(tokenizer.stop_token_ids)
    for text in get_template(template_name).stop_strings:
        token = tokenizer.token_to_id(text)
        if token is not None and token not in ids:
            ids.append(token)
    return ids


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
        progress=jax.process_index() == 0, **kwargs,
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
                        param_dtype=model_cfg.param_dtype, remat=model_cfg.remat)  # fmt: skip
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
    for name, value, divisor in [
        ("rl.num_prompts", rl.num_prompts, batch_devices),
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


def _train(config, workdir: str, preemption: _Preemption) -> dict[str, float]:
    config_lib.check_keys(config)
    CompileCounter.install()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    mesh = sharding.make_mesh(config.mesh.to_dict())
    rules = sharding.DEFAULT_RULES
    batch_sharding = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    tok_path = config.tokenizer.path or config.model.hf_path or TINY_TOKENIZER
    tokenizer = load_tokenizer(tok_path)
    template = config.data.template or default_template(config.model.preset or "tiny")
    log.info("prompt template: %s", template)
    stop_ids = _stop_token_ids(tokenizer, template)
    train_examples, eval_examples = load_examples(config)
    model_cfg = config_lib.model_config(config, tokenizer.vocab_size)
    graphdef, _ = abstract_params(model_cfg)

    rl = config.rl
    opts = update_options(config, mesh)
    updates_per_step = opts.epochs * opts.num_minibatches
    tx, schedule = make_optimizer(config.optim, config.total_steps * updates_per_step)
    reward_cfg = config_lib.reward_config(config)
    needs_ref = opts.loss.kl_coef != 0.0 or rl.kl_in_reward_coef != 0.0

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                        async_save=config.async_checkpoint)  # fmt: skip
    iterator = PromptIterator(train_examples, rl.num_prompts, seed=config.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())  # fmt: skip
    base = None
    if ckpt.latest_step() is None or needs_ref:
        with sharding.activation_sharding(mesh, rules):
            base = _base_params(config, model_cfg, tokenizer, template, workdir, mesh, rules)
    abstract_state = {"params": abstract_params(model_cfg, mesh, rules)[1]}
    init_opt = sharded_init(tx, abstract_state["params"])
    abstract_state["opt_state"] = jax.eval_shape(init_opt, abstract_state["params"])
    restored = ckpt.restore_latest(abstract_state) if ckpt.latest_step() is not None else None
    if restored is None and ckpt.latest_step() is not None:
        # Never start over on top of a run's checkpoints: that would bury them.
        raise RuntimeError(
            f"no checkpoint in {ckpt.directory} (steps {ckpt.all_steps()}) could be restored; "
            "see the warnings above. Move them aside to start a new run in this workdir."
        )
    if restored is not None:
        start_step, state, meta = restored
        params, opt_state = state["params"], state["opt_state"]
        iterator.load_state_dict(meta["data"])
        log.info("resumed from step %d", start_step)
    else:
        start_step = 0
        params = jax.tree.map(jnp.copy, base) if needs_ref else base
        opt_state = init_opt(params)
    ref_params = base if needs_ref else None

    writer = SummaryWriter(os.path.join(workdir, "tb"), enabled=is_main)
    pool = VerifierPool(num_workers=config.reward.num_workers, timeout_s=reward_cfg.timeout_s)
    sampling = SamplingOptions(
        max_prompt_len=config.sampling.max_prompt_len,
        max_new_tokens=config.sampling.max_new_tokens,
        temperature=config.sampling.temperature,
        top_p=config.sampling.top_p,
        top_k=config.sampling.top_k,
    )
    collector = RolloutCollector(
        graphdef=graphdef, tokenizer=tokenizer, template=template, stop_token_ids=stop_ids,
        sampling=sampling, num_samples=rl.num_samples, reward=reward_cfg, pool=pool,
        batch_sharding=batch_sharding,
        logprob_chunks=opts.num_minibatches * opts.num_microbatches,
        logprob_chunk_len=rl.logprob_chunk,
    )  # fmt: skip

    def run_eval(step):
        result = evaluate(
            graphdef, params, eval_examples, tokenizer=tokenizer, template=template,
            max_prompt_len=sampling.max_prompt_len,
            max_new_tokens=config.sampling.eval_max_new_tokens or sampling.max_new_tokens,
            batch_size=rl.num_prompts, stop_token_ids=stop_ids, reward=reward_cfg, pool=pool,
            batch_sharding=batch_sharding,
        )  # fmt: skip
        writer.scalars(step, {"eval/accuracy": result.accuracy})
        if is_main:
            log.info("step %d eval/accuracy %.3f (%d examples)", step, result.accuracy,
                     len(eval_examples))  # fmt: skip
        if config.eval.benchmarks:
            _run_benchmarks(config, graphdef, params, step, workdir=workdir, tokenizer=tokenizer,
                            template=template, stop_ids=stop_ids, reward=reward_cfg, pool=pool,
                            batch_sharding=batch_sharding, writer=writer)  # fmt: skip
        return result.accuracy

    metrics: dict[str, float] = {}
    rng = jax.random.key(config.seed)
    try:
        with sharding.activation_sharding(mesh, rules):
            if start_step == 0 and config.eval_every:
                metrics["eval/accuracy"] = run_eval(0)
            for step in range(start_step, config.total_steps):
                t0 = time.perf_counter()
                step_rng = jax.random.fold_in(rng, step)
                result = collect(
                    collector, params, ref_params, iterator, jax.random.fold_in(step_rng, 0),
                    dynamic_sampling=rl.dynamic_sampling, max_draws=rl.max_draws,
                    overlong_filter=rl.overlong_filter,
                )  # fmt: skip
                params, opt_state, device_metrics = update(
                    graphdef, tx, params, opt_state, result.rollout,
                    jax.random.fold_in(step_rng, 1), opts=opts,
                    prompt_len=sampling.max_prompt_len,
                )  # fmt: skip
                m = jax.device_get(device_metrics)
                metrics = dict(result.stats)
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
                    "train/learning_rate": float(schedule((step + 1) * updates_per_step - 1)),
                })  # fmt: skip
                step_time = time.perf_counter() - t0
                metrics["perf/step_time_s"] = step_time
                metrics["perf/sample_tokens_per_s"] = metrics["perf/sample_tokens"] / max(
                    metrics["perf/sample_time_s"], 1e-9
                )
                metrics["perf/num_compiles"] = float(CompileCounter.count())
                done = step + 1
                if config.eval_every and (
                    done % config.eval_every == 0 or done == config.total_steps
                ):
                    metrics["eval/accuracy"] = run_eval(done)
                if done % config.log_every == 0 or done == config.total_steps:
                    writer.scalars(done, {k: v for k, v in metrics.items() if k != "eval/accuracy"})
                    _log_samples(writer, done, result, config.num_sample_texts)
                    writer.flush()
                    if is_main:
                        print(progress_line(done, config.total_steps, metrics), flush=True)
                should_save = config.checkpoint_every and done % config.checkpoint_every == 0
                if should_save or done == config.total_steps or preemption.requested:
                    meta = {"step": done, "data": iterator.state_dict(),
                            "metrics": {k: float(v) for k, v in metrics.items()}}  # fmt: skip
                    best = (
                        {"eval/accuracy": metrics["eval/accuracy"]}
                        if "eval/accuracy" in metrics
                        else None
                    )
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
