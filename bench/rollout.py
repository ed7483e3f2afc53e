"""Rollout throughput: the continuous-batching engine against the static sampler, in one
process, interleaved, on the same random-weight model, prompts and per-response lengths.

Responses are made to end at given lengths: every response gets its own budget
(`row_max_new_tokens`) and no stop token, so both paths decode exactly the same useful tokens
and the ratio of their times is the ratio of their useful tokens/s. The static sampler gets
the same memory as the engine: calls of `slots` rows, each decoding until its longest response
ends. Length distributions:

  lognormal  budgets from a log-normal of mean --mean, sigma --sigma, capped at --cap
             (SimpleRL-Zoo-like training lengths: mean ~1.4K, cap 8K; scaled down on CPU)
  solutions  the token lengths of MATH500's reference solutions (4 characters a token),
             scaled to mean --mean and capped at --cap: a real, long-tailed shape
  fixed      every response at the cap: nothing to refill, the static sampler's best case

    python bench/rollout.py --cpus=2                        # the CPU goals (20M parameters)
    python bench/rollout.py --mean=1400 --cap=8192 --prompts=128 --slots=256 --dtype=bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from zero_rl.models import create_model  # noqa: E402
from zero_rl.sampling import SamplingOptions, generate_padded  # noqa: E402

SOLUTIONS = Path(__file__).parent.parent / "zero_rl/data/benchmarks/math500/test.jsonl"


def lengths_for(kind: str, rows: int, *, mean: float, sigma: float, cap: int, seed: int):
    """Per-response budgets [rows] int32 in [1, cap] of one distribution (see the doc)."""
    rng = np.random.default_rng(seed)
    if kind == "fixed":
        return np.full((rows,), cap, np.int32)
    if kind == "lognormal":
        mu = np.log(mean) - sigma**2 / 2  # the log-normal's mean is exp(mu + sigma^2 / 2)
        drawn = rng.lognormal(mu, sigma, rows)
    elif kind == "solutions":
        chars = [len(json.loads(line)["solution"]) for line in SOLUTIONS.open()]
        real = np.asarray(chars, np.float64) / 4.0
        drawn = rng.choice(real, rows) * (mean / real.mean())
    else:
        raise SystemExit(f"error: unknown distribution {kind!r}; use lognormal, solutions, fixed")
    return np.clip(np.round(drawn), 1, cap).astype(np.int32)


def static_slot_steps(lengths_r: np.ndarray, rows_per_call: int) -> int:
    """Slot-steps the static sampler spends: each call of `rows_per_call` rows runs until its
    longest response ends."""
    calls = lengths_r.reshape(-1, rows_per_call)
    return int(calls.max(axis=1).sum() * rows_per_call)


def measure(model, tokens_pt, positions_pt, budgets_r, engines, args) -> dict:
    """Both engines on one workload, interleaved; their lengths must equal the budgets."""
    rows = budgets_r.size
    key = jax.random.key(args.seed)
    useful = int(budgets_r.sum())
    last = {}

    def run(name):
        samples = generate_padded(
            model, tokens_pt, positions_pt, engines[name], num_samples=args.samples, rng=key,
            row_max_new_tokens=budgets_r,
        )  # fmt: skip
        last[name] = samples
        return samples.output.lengths_b

    start = time.perf_counter()
    # Warm-up on one-token budgets: the same compiled programs (shapes do not change), without
    # a second full workload.
    for name in engines:
        jax.block_until_ready(
            generate_padded(model, tokens_pt, positions_pt, engines[name],
                            num_samples=args.samples, rng=key,
                            row_max_new_tokens=np.ones_like(budgets_r))
        )  # fmt: skip
    timing = common.time_interleaved(
        {name: (lambda n=name: run(n)) for name in engines}, warmup=0, repeats=args.repeats
    )
    for name, samples in last.items():
        if not np.array_equal(np.asarray(samples.output.lengths_b), budgets_r):
            raise SystemExit(f"error: the {name} engine's lengths differ from the budgets")
    stats = jax.device_get(last["continuous"].stats)
    # The static sampler's calls take prompts i, i + calls, ... (see generate_padded).
    calls = rows // args.slots
    by_call = budgets_r.reshape(-1, calls, args.samples).transpose(1, 0, 2).reshape(calls, -1)
    return {
        "rows": rows,
        "useful_tokens": useful,
        "mean_length": float(budgets_r.mean()),
        "p90_length": float(np.percentile(budgets_r, 90)),
        "max_length": int(budgets_r.max()),
        "static_s": timing["static"].median,
        "continuous_s": timing["continuous"].median,
        "static_tokens_per_s": useful / timing["static"].median,
        "continuous_tokens_per_s": useful / timing["continuous"].median,
        "speedup": timing["static"].median / timing["continuous"].median,
        "static_utilisation": useful / static_slot_steps(by_call.reshape(-1), args.slots),
        "continuous_utilisation": int(stats.live_slot_steps) / int(stats.slot_steps),
        "continuous_decode_steps": int(stats.decode_steps),
        "continuous_prefills": int(stats.prefills),
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_args(parser)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--samples", type=int, default=8, help="responses per prompt (G)")
    parser.add_argument("--slots", type=int, default=64, help="engine slots = static call rows")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--mean", type=float, default=175.0, help="mean response length")
    parser.add_argument("--sigma", type=float, default=0.8, help="log-normal sigma")
    parser.add_argument("--cap", type=int, default=1024, help="response cap (max_new_tokens)")
    parser.add_argument("--distributions", default="lognormal,solutions")
    parser.add_argument("--prefill-prompts", type=int, default=1)
    parser.add_argument("--decode-segments", type=int, default=4, help="static sampler's loops")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common.check_positive(
        prompts=args.prompts, samples=args.samples, slots=args.slots, cap=args.cap,
        prompt_len=args.prompt_len, repeats=args.repeats,
    )  # fmt: skip
    rows = args.prompts * args.samples
    if rows % args.slots or args.slots % args.samples:
        raise SystemExit(
            f"error: --slots={args.slots} must divide prompts x samples = {rows} and be a "
            f"multiple of --samples={args.samples} (static calls of whole groups)"
        )
    common.restrict_cpus(args.cpus)
    cfg = common.model_config(args, max_position=args.prompt_len + args.cap)
    print(f"{common.device_description()}; {cfg.num_params() / 1e6:.1f}M parameters")
    model = create_model(cfg, seed=0)
    rng = np.random.default_rng(args.seed)
    lengths_p = rng.integers(args.prompt_len // 2, args.prompt_len + 1, args.prompts)
    tokens_pt = rng.integers(3, cfg.vocab_size, (args.prompts, args.prompt_len), np.int32)
    steps = np.arange(args.prompt_len)[None, :]
    first = args.prompt_len - lengths_p[:, None]
    positions_pt = np.where(steps >= first, steps - first, -1).astype(np.int32)
    base = SamplingOptions(
        max_prompt_len=args.prompt_len, max_new_tokens=args.cap, temperature=args.temperature,
        slots=args.slots, prefill_prompts=args.prefill_prompts,
        prompts_per_call=args.slots // args.samples, decode_segments=args.decode_segments,
    )  # fmt: skip
    engines = {"static": base.replace(engine="static"), "continuous": base}
    results = {}
    for kind in args.distributions.split(","):
        budgets_r = lengths_for(kind, rows, mean=args.mean, sigma=args.sigma, cap=args.cap,
                                seed=args.seed)  # fmt: skip
        r = measure(model, tokens_pt, positions_pt, budgets_r, engines, args)
        results[kind] = r
        common.print_table(
            f"{kind}: {rows} responses (mean {r['mean_length']:.0f}, p90 "
            f"{r['p90_length']:.0f}, max {r['max_length']}), {args.slots} slots, median of "
            f"{args.repeats}",
            [
                ("static sampler", r["static_tokens_per_s"], "useful tokens/s"),
                ("continuous engine", r["continuous_tokens_per_s"], "useful tokens/s"),
                ("speed-up", r["speedup"], "x (goal >= 3 on lognormal)"),
                ("static utilisation", r["static_utilisation"], "live / all slot-steps"),
                ("engine utilisation", r["continuous_utilisation"], "(goal >= 0.85)"),
            ],
        )
    common.write_json(args.out, results, args)


if __name__ == "__main__":
    main()
