"""One full RL step, timed phase by phase: sample, verify, log-probs (trainer-side old and
reference), update; with the share of the step the device sits idle, and the compile count.

    python bench/rl_step.py                                      # configs/tiny.py, random weights
    python bench/rl_step.py --responses=synthetic                # realistic texts to verify
    python bench/rl_step.py --config=configs/qwen2_5_1_5b.py --set=tokenizer.path=DIR \\
        --set=data.train=synthetic_addition --set=rl.num_prompts=8 --set=rl.minibatch_size=64 \\
        --set=sampling.max_new_tokens=1024   # DIR: the model's tokenizer (its vocabulary)

The step issues work as `zero_rl.train.rollout.RolloutCollector.draw` and the training loop do:
sampler, then the log-probs are dispatched before the host blocks on the response tokens, so
verification overlaps that device work; then the update. A watcher thread records when the
log-probs finish, so the idle time is measured, not inferred: the part of verification after
the device ran out of queued work. The model has random weights (no SFT stage); its responses
are noise that the verifier rejects quickly, so `--responses=synthetic` verifies the realistic
mix of `bench/verifier.py` instead (the same count, a fresh batch each step).
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench import common  # noqa: E402
from bench.verifier import GOLDS, synthetic_mix  # noqa: E402
from zero_rl import config as config_lib  # noqa: E402
from zero_rl import sharding  # noqa: E402
from zero_rl.data import PromptIterator, encode_batch  # noqa: E402
from zero_rl.describe import describe_run  # noqa: E402
from zero_rl.models import abstract_params, create_model  # noqa: E402
from zero_rl.optim import make_optimizer, sharded_init  # noqa: E402
from zero_rl.rewards import VerifierPool, score  # noqa: E402
from zero_rl.sampling import finish_responses, generate_padded  # noqa: E402
from zero_rl.train.batch import Rollout, assemble_sequences, rollout_logprobs  # noqa: E402
from zero_rl.train.metrics import CompileCounter  # noqa: E402
from zero_rl.train.run import load_examples, update_options  # noqa: E402
from zero_rl.train.update import update  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("sample_s", "verify_s", "logprobs_s", "update_s", "step_s", "device_idle_s")

_assemble = jax.jit(assemble_sequences, static_argnames=("num_samples",))


class _ReadyAt(threading.Thread):
    """Records when each group of device arrays handed to `watch` is computed, in the order
    given (`block_until_ready` releases the GIL, so the host keeps dispatching and verifying
    meanwhile). One thread waits on the groups in turn, so the times are ordered like them."""

    def __init__(self, num_groups: int):
        super().__init__(daemon=True)
        self.num_groups, self.times, self._groups = num_groups, [], queue.SimpleQueue()
        self.start()

    def watch(self, arrays):
        self._groups.put(arrays)

    def run(self):
        for _ in range(self.num_groups):
            jax.block_until_ready(self._groups.get())
            self.times.append(time.perf_counter())


class Step:
    """The RL pieces of `zero_rl.train` wired as the loop wires them, with timestamps."""

    def __init__(self, config, *, responses: str):
        if jax.process_count() > 1:
            raise SystemExit("error: this benchmark runs on one process")
        config_lib.check_keys(config)
        self.config, self.responses = config, responses
        self.mesh = sharding.make_mesh(config.mesh.to_dict())
        self.batch_sharding = jax.sharding.NamedSharding(
            self.mesh, sharding.logical_to_spec(("batch", "length"))
        )
        description = describe_run(config)  # the template, stops and model training uses
        self.tokenizer, self.model_cfg = description.tokenizer, description.model
        if self.model_cfg.vocab_size < self.tokenizer.vocab_size:
            raise SystemExit(
                f"error: the tokenizer has {self.tokenizer.vocab_size} ids but the model only "
                f"{self.model_cfg.vocab_size}; give the model's own with --set=tokenizer.path=DIR"
            )
        self.template = description.template
        self.sampling = description.sampling_options(config)
        train_examples, _ = load_examples(config)
        self.prompts = PromptIterator(train_examples, config.rl.num_prompts, seed=config.seed)
        rules = sharding.DEFAULT_RULES
        self.opts = update_options(config, self.mesh)
        # The schedule's length changes learning rates only, not the cost of a step.
        self.tx, _ = make_optimizer(config.optim, 1000 * self.opts.num_minibatches)
        with sharding.activation_sharding(self.mesh, rules):
            model = create_model(self.model_cfg, seed=config.seed, mesh=self.mesh, rules=rules)
            self.graphdef, self.params = nnx.split(model)
            abstract = abstract_params(self.model_cfg, self.mesh, rules)[1]
            self.opt_state = sharded_init(self.tx, abstract)(self.params)
        needs_ref = self.opts.loss.kl_coef != 0.0 or self.opts.kl_in_reward_coef != 0.0
        self.ref_params = jax.tree.map(jnp.copy, self.params) if needs_ref else None
        self.pool = VerifierPool(config.reward.num_workers, timeout_s=config.reward.timeout_s)
        self.reward = config_lib.reward_config(config)

    def _put(self, array):
        return sharding.global_batch(np.asarray(array), self.batch_sharding)

    def _logprobs(self, params, tokens, positions):
        return rollout_logprobs(
            self.graphdef, params, tokens, positions,
            prompt_len=self.config.sampling.max_prompt_len,
            num_chunks=self.opts.num_minibatches * self.opts.num_microbatches,
            chunk=self.opts.logprob_chunk,
        )  # fmt: skip

    def run(self, index: int) -> dict[str, float]:
        """One step; returns each phase's seconds and the sampled-token count."""
        c, s = self.config, self.config.sampling
        rng = jax.random.fold_in(jax.random.key(c.seed), index)
        examples = next(self.prompts)
        with sharding.activation_sharding(self.mesh, sharding.DEFAULT_RULES):
            t0 = time.perf_counter()
            prompt_bt, positions_bt = map(
                self._put,
                encode_batch(examples, self.tokenizer, template=self.template,
                             max_prompt_len=s.max_prompt_len),
            )  # fmt: skip
            samples = generate_padded(
                (self.graphdef, self.params), prompt_bt, positions_bt, self.sampling,
                num_samples=c.rl.num_samples, rng=jax.random.fold_in(rng, 0),
                tokenizer=self.tokenizer,
            )  # fmt: skip
            out = samples.output
            ready = _ReadyAt(num_groups=2)
            ready.watch((out.tokens_bn, out.logprobs_bn, out.lengths_b))
            tokens_bt, positions_bt, mask_bn = _assemble(
                prompt_bt, positions_bt, out.tokens_bn, out.lengths_b, c.rl.num_samples
            )
            old_bn = self._logprobs(self.params, tokens_bt, positions_bt)
            ref_bn = old_bn
            if self.ref_params is not None:
                ref_bn = self._logprobs(self.ref_params, tokens_bt, positions_bt)
            ready.watch((old_bn, ref_bn))
            response_bn, lengths_b, stopped_b, stats = jax.device_get(
                (out.tokens_bn, out.lengths_b, out.stopped_b, samples.stats)
            )
            t1 = time.perf_counter()

            texts = finish_responses(
                self.tokenizer, response_bn, lengths_b, stopped_b, self.sampling.stop_strings
            ).texts
            answers = [ex.answer for ex in examples for _ in range(c.rl.num_samples)]
            if self.responses == "synthetic":
                texts, answers = synthetic_mix(len(examples), c.rl.num_samples, index, GOLDS)
            verdicts = score(texts, answers, config=self.reward, pool=self.pool)
            rewards_pg = np.asarray([v.reward for v in verdicts], np.float32).reshape(
                len(examples), c.rl.num_samples
            )
            t2 = time.perf_counter()

            rollout = Rollout(
                tokens_bt=tokens_bt, positions_bt=positions_bt, mask_bn=mask_bn,
                sampler_logprobs_bn=out.logprobs_bn, old_logprobs_bn=old_bn,
                ref_logprobs_bn=ref_bn, rewards_pg=self._put(rewards_pg),
                group_mask_p=self._put(np.ones((len(examples),), np.float32)),
            )  # fmt: skip
            self.params, self.opt_state, metrics = update(
                self.graphdef, self.tx, self.params, self.opt_state, rollout,
                jax.random.fold_in(rng, 1), opts=self.opts, prompt_len=s.max_prompt_len,
            )  # fmt: skip
            jax.block_until_ready((self.params, metrics))
            t3 = time.perf_counter()
        ready.join()
        sample_done, logprobs_done = ready.times
        # The log-probs read the sampled tokens, so they start when the sampler finishes:
        # `logprobs_done - sample_done` is their own device time.
        # The device queue holds the log-probs until they finish; verification after that
        # point (and any host work before the update is dispatched) leaves it with nothing.
        busy_until = max(t1, logprobs_done)
        return {
            "sample_s": sample_done - t0,
            "verify_s": t2 - t1,
            "logprobs_s": logprobs_done - sample_done,
            "update_s": t3 - t2,
            "step_s": t3 - t0,
            "device_idle_s": max(0.0, t2 - busy_until),
            "sampled_tokens": float(np.sum(lengths_b)),
            # Live slot-steps over all slot-steps of the continuous engine (nan: static).
            "slot_utilisation": float("nan") if stats is None else float(
                stats.live_slot_steps / stats.slot_steps
            ),
        }  # fmt: skip

    def close(self):
        self.pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(_REPO, "configs", "tiny.py"))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. --set=rl.num_prompts=8 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps that may compile")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--responses", choices=("model", "synthetic"), default="model")
    parser.add_argument("--out", default="", help="write the results as JSON to this path")
    args = parser.parse_args()
    common.check_positive(warmup_steps=args.warmup_steps, steps=args.steps)
    try:
        config = config_lib.load_config(args.config, args.set)
    except (KeyError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err.args[0]}") from None

    CompileCounter.install()
    step = Step(config, responses=args.responses)
    print(
        f"{common.device_description()}; {step.model_cfg.num_params() / 1e6:.2f}M parameters; "
        f"{config.rl.num_prompts} prompts x {config.rl.num_samples} samples, "
        f"{config.sampling.max_new_tokens} new tokens; reference model: "
        f"{step.ref_params is not None}; responses verified: {args.responses}"
    )
    try:
        for i in range(args.warmup_steps):
            step.run(i)
        compiles_after_warmup = CompileCounter.count()
        steps = [step.run(args.warmup_steps + i) for i in range(args.steps)]
        compiles_after_steps = CompileCounter.count()
    finally:
        step.close()

    keys = (*PHASES, "sampled_tokens", "slot_utilisation")
    results = {k: statistics.median(s[k] for s in steps) for k in keys}
    results["rollout_share"] = statistics.median(s["sample_s"] / s["step_s"] for s in steps)
    results |= {
        "device_idle_share": statistics.median(s["device_idle_s"] / s["step_s"] for s in steps),
        "compiles_after_warmup": compiles_after_warmup,
        "compiles_during_timed_steps": compiles_after_steps - compiles_after_warmup,
        "num_params": step.model_cfg.num_params(),
        "rows": config.rl.num_prompts * config.rl.num_samples,
        "steps": steps,
    }
    step_s = results["step_s"]
    labels = {
        "sample_s": "sample (device)",
        "verify_s": "verify (host)",
        "logprobs_s": "log-probs (device, overlaps verify)",
        "update_s": "update (device)",
        "step_s": "whole step",
        "device_idle_s": "device idle",
    }
    rows = [(labels[k], results[k], f"s ({results[k] / step_s:.0%} of the step)") for k in PHASES]
    rows += [
        (f"rollout ({config.sampling.engine})", results["rollout_share"], "of the step"),
        ("slot utilisation", results["slot_utilisation"], "live / all slot-steps"),
        ("compiles after warm-up", compiles_after_warmup, ""),
        ("compiles in timed steps", results["compiles_during_timed_steps"], "(must be 0)"),
    ]
    common.print_table(f"RL step, median of {args.steps} after {args.warmup_steps} warm-up", rows)
    common.write_json(args.out, results, args)


if __name__ == "__main__":
    main()
