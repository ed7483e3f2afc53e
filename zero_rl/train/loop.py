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

from zero_rl import config as config_lib
from zero_rl import sandbox, sharding
from zero_rl.checkpoint import Checkpointer, any_process
from zero_rl.data import (
    PromptIterator,
    get_template,
)
from zero_rl.data.curriculum import Curriculum, CurriculumIterator
from zero_rl.data.synthetic import sft_pairs
from zero_rl.describe import write_description
from zero_rl.eval import run_benchmarks
from zero_rl.eval.pass_rate import read_pass_rates
from zero_rl.models import abstract_params, create_model, from_hf
from zero_rl.models.config import RUNTIME_FIELDS
from zero_rl.optim import sharded_init
from zero_rl.rewards import VerifierPool
from zero_rl.summaries import SummaryWriter
from zero_rl.tasks import TASKS, is_task, make_task
from zero_rl.train.evaluate import evaluate
from zero_rl.train.metrics import (
    CompileCounter,
    log_samples,
    progress_line,
    step_metrics,
)
from zero_rl.train.rollout import RolloutCollector, collect
from zero_rl.train.run import (
    Run,
    load_examples,
    resolve,
    save_config,
    show_progress,
)
from zero_rl.train.update import update

log = logging.getLogger(__name__)


def _run_benchmarks(run: Run, params, step, *, writer, pool) -> None:
    """The chosen benchmarks (`config.eval`), one output directory per step; TensorBoard gets
    `eval/<benchmark>/accuracy` and friends."""
    config, e = run.config, run.config.eval
    run_benchmarks(
        run.graphdef, params, tokenizer=run.tokenizer, benchmarks=run.benchmark_sets,
        out_dir=os.path.join(run.workdir, "eval", f"step_{step:06d}"), template=run.template,
        sampling=run.eval_sampling, num_samples=e.num_samples, limit=e.limit or None,
        batch_size=config.rl.num_prompts, reward=run.eval_reward_cfg, pool=pool,
        batch_sharding=run.batch_sharding, writer=writer, step=step,
        progress=show_progress(config),
        # The step identifies the policy: a step replayed after a crash mid-evaluation resumes
        # its own generations even where training is not bit-reproducible (accelerators).
        policy_id=f"training step {step}",
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


def teacher_pairs(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """The built-in SFT stage's (question, response) pairs: the noisy teacher of the synthetic
    addition task or of a generated task, making its slip on `sft.carry_error_rate` of them."""
    d = config.data
    if d.train != "synthetic_addition" and not is_task(d.train):
        raise ValueError(
            "the built-in SFT stage makes pairs for synthetic_addition and the generated tasks "
            f"({sorted(TASKS)}) only; run launch/sft.py on your SFT data and start RL from its "
            "export"
        )
    train_examples, _ = load_examples(config)
    rate, seed = config.sft.carry_error_rate, config.sft.seed
    if d.train == "synthetic_addition":
        return sft_pairs(train_examples, carry_error_rate=rate, seed=seed)
    task = make_task(d.train, d.tasks[d.train].to_dict())
    return task.sft_pairs(train_examples, error_rate=rate, seed=seed)


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

        pairs = [(get_template(template).render(p), r) for p, r in teacher_pairs(config)]
        model = train_sft(config.sft, model=model, tokenizer=tokenizer, pairs=pairs,
                          workdir=os.path.join(workdir, "sft"), mesh=mesh)  # fmt: skip
    return nnx.split(model)[1]


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) the RL job described by `config` in `workdir`; returns the last
    step's metrics. Rerunning with the same workdir continues from the latest checkpoint.

    SIGTERM at any point (a TPU preemption notice) lets the current step finish, saves a
    checkpoint and returns normally.
    """
    # Installed first, so a SIGTERM during set-up or the SFT stage is not fatal either.
    with _Preemption() as preemption:
        return _train(config, workdir, preemption)


def _restore_or_start(run: Run, ckpt: Checkpointer, iterator: PromptIterator):
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


def _evaluate(run: Run, params, step: int, writer: SummaryWriter, pool) -> float:
    """Held-out greedy accuracy on data.eval (`eval/accuracy`), plus config.eval's benchmarks."""
    c = run.config
    # Held-out accuracy is greedy, whatever eval.temperature says for the benchmarks.
    result = evaluate(
        run.graphdef, params, run.eval_examples, tokenizer=run.tokenizer, template=run.template,
        sampling=run.eval_sampling.replace(temperature=0.0), batch_size=c.rl.num_prompts,
        reward=run.eval_reward_cfg, pool=pool, batch_sharding=run.batch_sharding,
        progress=show_progress(c),
    )  # fmt: skip
    writer.scalars(step, {"eval/accuracy": result.accuracy})
    if jax.process_index() == 0:
        log.info("step %d eval/accuracy %.3f (%d examples)", step, result.accuracy,
                 len(run.eval_examples))  # fmt: skip
    if c.eval.benchmarks:
        _run_benchmarks(run, params, step, writer=writer, pool=pool)
    return result.accuracy


def _collector(run: Run, pool: VerifierPool) -> RolloutCollector:
    rl = run.config.rl
    return RolloutCollector(
        graphdef=run.graphdef, tokenizer=run.tokenizer, template=run.template,
        sampling=run.sampling, num_samples=rl.num_samples,
        reward=run.reward_cfg, pool=pool, batch_sharding=run.batch_sharding,
        logprob_chunks=run.opts.num_minibatches * run.opts.num_microbatches,
        logprob_chunk_len=rl.logprob_chunk, with_values=run.model_cfg.value_head,
    )  # fmt: skip


def _prompt_iterator(run: Run) -> PromptIterator | CurriculumIterator:
    """This process's prompt batches: uniformly shuffled, or by `data.curriculum`'s mix."""
    config, block = run.config, run.config.data.curriculum
    where = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if block.schedule == "none":
        return PromptIterator(run.train_examples, config.rl.num_prompts, seed=config.seed, **where)
    pass_rates = None
    if block.by == "pass_rate":
        if not os.path.isfile(block.pass_rate_file):
            raise FileNotFoundError(
                f"config.data.curriculum.pass_rate_file={block.pass_rate_file!r} does not exist "
                "(launch/filter_difficulty.py writes it next to its --output)"
            )
        pass_rates = {i: r["pass_rate"] for i, r in read_pass_rates(block.pass_rate_file).items()}
    curriculum = Curriculum.from_config(block)
    return CurriculumIterator(run.train_examples, config.rl.num_prompts, config.seed, curriculum,
                              pass_rates=pass_rates, **where)  # fmt: skip


class _CurriculumTally:
    """The rollout collector, counting each draw's verdicts per curriculum bucket as it goes.

    With dynamic sampling a step draws several batches and keeps only the groups with signal;
    the groups it drops are exactly the all-correct and all-wrong ones, so the kept groups
    alone would pull every bucket's pass rate toward the middle and a mastered bucket would
    never reach its threshold. Every sampled group counts, as in the step's train/ metrics.
    """

    def __init__(self, collector: RolloutCollector, iterator: CurriculumIterator):
        self._collector, self._iterator = collector, iterator
        self._counts = 0

    def __getattr__(self, name):
        return getattr(self._collector, name)

    def draw(self, *args, **kwargs):
        result = self._collector.draw(*args, **kwargs)
        correct = [v.correct for v in result.verdicts]
        self._counts = self._counts + self._iterator.counts(result.examples, correct)
        return result

    def end_step(self) -> None:
        """Feeds the step's counts, summed over processes (each verified its own rows), to the
        iterator: every process then holds the same pass rates, hence draws the same batches."""
        counts, self._counts = self._counts, 0
        gathered = sharding.gather_to_host(np.asarray(counts, np.int32)[None])
        self._iterator.update_counts(gathered.sum(axis=0))


def _step(run: Run, collector, params, opt_state, ref_params, iterator, step_rng):
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


def _train(config, workdir: str, preemption: _Preemption) -> dict[str, float]:
    config_lib.validate(config)
    CompileCounter.install()
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    run = resolve(config, workdir)
    sandbox.hide_always(workdir)  # programs a task runs (the code task) never see checkpoints
    save_config(config, workdir, is_main)  # a config that fails to resolve leaves no trace
    if is_main:  # what evaluation and the notebooks sample the run's checkpoints with
        write_description(run.description, workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                        async_save=config.async_checkpoint)  # fmt: skip
    iterator = _prompt_iterator(run)
    start_step, params, opt_state, ref_params, meta = _restore_or_start(run, ckpt, iterator)
    if start_step >= config.total_steps:
        log.info("the run already reached total_steps=%d; nothing to do", config.total_steps)
        ckpt.close()
        return dict(meta.get("metrics", {}))

    writer = SummaryWriter(os.path.join(workdir, "tb"), enabled=is_main)
    pool = VerifierPool(num_workers=config.reward.num_workers, timeout_s=run.reward_cfg.timeout_s)
    collector = _collector(run, pool)
    curriculum = isinstance(iterator, CurriculumIterator)
    if curriculum:
        collector = _CurriculumTally(collector, iterator)
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
                if curriculum:  # the mix the next step draws with, and the pass rates so far
                    collector.end_step()
                    metrics |= iterator.stats()
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
