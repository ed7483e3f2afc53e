"""Shared pieces of the benchmark scripts: the device's measured limits, timing, model FLOPs and
bytes, the printed table and the JSON record.

Rooflines use the limits measured in the same run (a large matmul for peak FLOP/s, a large
elementwise pass for memory bandwidth), not the datasheet, so a fraction near 1 means the code
runs as fast as this device runs its best-case kernels - and a shared, noisy machine slows both
sides of the ratio alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zero_rl.models import ModelConfig, get_preset

# Sizes that keep one measured call far above dispatch overhead: ~9 TFLOP / 16 GB of traffic
# (~10 ms / ~4 ms on an H200), ~17 GFLOP / 2 GB on a CPU (~0.3 s each).
DEFAULT_PEAK_DIM = {"cpu": 1024, "gpu": 8192, "tpu": 8192}
DEFAULT_BANDWIDTH_MB = {"cpu": 256, "gpu": 2048, "tpu": 2048}


def platform_name() -> str:
    return jax.devices()[0].platform


def device_description() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        cpu = platform.processor() or platform.machine()
        return f"CPU ({cpu}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} cores)"
    return f"{len(jax.devices())}x {device.device_kind}"


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls after warm-up."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def time_call(
    fn: Callable[..., Any],
    *,
    setup: Callable[[], Any] | None = None,
    warmup: int = 1,
    repeats: int = 3,
) -> Timing:
    """Times `fn()` to completion of its device work (`block_until_ready` on its outputs).

    With `setup`, each call is `fn(setup())` and only `fn` is timed: fresh inputs for a function
    that donates them. The warm-up calls pay for compilation; `repeats` must be >= 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def one_call() -> float:
        inputs = () if setup is None else (jax.block_until_ready(setup()),)
        start = time.perf_counter()
        jax.block_until_ready(fn(*inputs))
        return time.perf_counter() - start

    for _ in range(warmup):
        one_call()
    return Timing(tuple(one_call() for _ in range(repeats)))


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 3
) -> dict[str, Timing]:
    """Times several zero-argument functions in turn (A, B, A, B, ...), so that load from
    other processes on a shared machine slows each about equally and their ratio stays fair."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(s)) for name, s in seconds.items()}


def measure_peak_flops(dtype: str, dim: int, *, chain: int = 8, repeats: int = 3) -> float:
    """Best FLOP/s of `chain` dependent [dim, dim] @ [dim, dim] matmuls in one compiled call.

    The chain amortises dispatch; scaling by 1/sqrt(dim) keeps values O(1) in low precision.
    The trip count is a runtime value so that no compiler can unroll the loop and merge passes.
    """
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (dim, dim), jnp.float32).astype(dtype)
    w = (jax.random.normal(keys[1], (dim, dim), jnp.float32) / np.sqrt(dim)).astype(dtype)

    @jax.jit
    def chained(x, w, trips):
        return jax.lax.fori_loop(0, trips, lambda _, y: y @ w, x)

    timing = time_call(lambda: chained(x, w, jnp.int32(chain)), repeats=repeats)
    return 2.0 * dim**3 * chain / timing.best


def measure_bandwidth(megabytes: int, *, chain: int = 4, repeats: int = 3) -> float:
    """Best bytes/s of `chain` dependent elementwise passes over a float32 array of
    `megabytes` (each pass reads and writes the whole array: 2x its size in traffic)."""
    n = megabytes * 2**20 // 4
    x = jnp.arange(n, dtype=jnp.float32)

    @jax.jit
    def passes(x, trips):
        # A runtime trip count: unrolled, the passes would fuse into one and hide the traffic.
        return jax.lax.fori_loop(0, trips, lambda _, y: y * 0.5 + 1.0, x)

    timing = time_call(lambda: passes(x, jnp.int32(chain)), repeats=repeats)
    return 2.0 * n * 4 * chain / timing.best


def device_limits(dtype: str, peak_dim: int | None, bandwidth_mb: int | None) -> dict[str, float]:
    """Measured peak matmul FLOP/s in `dtype` and memory bandwidth (bytes/s) of device 0."""
    name = platform_name()
    dim = peak_dim or DEFAULT_PEAK_DIM.get(name, 4096)
    mb = bandwidth_mb or DEFAULT_BANDWIDTH_MB.get(name, 1024)
    return {
        "peak_flops": measure_peak_flops(dtype, dim),
        "bandwidth_bytes_per_s": measure_bandwidth(mb),
        "peak_matmul_dim": dim,
        "bandwidth_array_mb": mb,
    }


# --------------------------------------------------------------------------------------------
# Model arithmetic


def head_params(cfg: ModelConfig) -> int:
    """Weights of the output projection [embed, vocab] (the embedding itself when tied)."""
    return cfg.vocab_size * cfg.embed_dim


def body_matmul_params(cfg: ModelConfig) -> int:
    """Weights every token multiplies through in the decoder blocks: all parameters but the
    embedding table (a gather, no FLOPs) and the output head (counted per logit position)."""
    embed_tables = cfg.vocab_size * cfg.embed_dim * (1 if cfg.tie_embeddings else 2)
    return cfg.num_params() - embed_tables


def forward_flops(cfg: ModelConfig, body_tokens: int, logit_tokens: int) -> float:
    """2 FLOPs per weight per token: blocks for `body_tokens`, the head for `logit_tokens`.

    Attention scores (O(length^2)) are left out, as in the 2N / 6N convention, so the MFU
    reported is a slight underestimate at long lengths.
    """
    return 2.0 * (body_matmul_params(cfg) * body_tokens + head_params(cfg) * logit_tokens)


def decode_bytes_per_step(cfg: ModelConfig, batch: int, cache_len: float, cache_dtype) -> float:
    """Bytes a decode step must read: every weight once (the embedding table only if it doubles
    as the head) plus the keys and values of the `cache_len` filled cache slots of each row.

    Weights count at the compute dtype: the sampler casts them once per call and its decode
    steps read that copy (float32 master weights with bf16 compute: 2 bytes a weight)."""
    weight_bytes = (body_matmul_params(cfg) + head_params(cfg)) * cfg.compute_dtype.itemsize
    kv_bytes = (
        2 * cfg.num_layers * batch * cache_len * cfg.num_kv_heads * cfg.head_dim
    ) * jnp.dtype(cache_dtype).itemsize
    return float(weight_bytes + kv_bytes)


# --------------------------------------------------------------------------------------------
# Command line, table, JSON


def add_model_args(parser: argparse.ArgumentParser, *, dtype: str = "float32") -> None:
    """--preset or explicit dims (the CPU defaults: 20.5M parameters), and dtypes."""
    g = parser.add_argument_group("model (random weights)")
    g.add_argument("--preset", default="", help="a zero_rl.models.PRESETS name; overrides dims")
    g.add_argument("--vocab", type=int, default=8192)
    g.add_argument("--embed", type=int, default=512)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv-heads", type=int, default=2)
    g.add_argument("--head-dim", type=int, default=64)
    g.add_argument("--mlp", type=int, default=1536)
    g.add_argument("--dtype", default=dtype, help="compute dtype")
    g.add_argument("--param-dtype", default="float32", help="storage dtype of the weights")
    g = parser.add_argument_group("device limits")
    g.add_argument("--peak-dim", type=int, default=0, help="matmul size; 0 = platform default")
    g.add_argument("--bandwidth-mb", type=int, default=0, help="array size; 0 = default")
    parser.add_argument(
        "--cpus", type=int, default=0,
        help="CPU backend: run on this many cores (0 = all); the torch side uses as many threads",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after warm-up")
    parser.add_argument("--out", default="", help="write the results as JSON to this path")


def restrict_cpus(count: int) -> int:
    """Pins this process to its first `count` allowed cores (0 = all) and returns the number it
    may use. Call before JAX starts its backend, whose thread pool is sized from this set.

    On a machine shared with other jobs, torch's OpenMP threads spin-wait for each other and
    slow down many times over once the cores are oversubscribed; pinning both sides to the same
    cores, one thread each, keeps the comparison about the code rather than the scheduler.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if count < 0 or count > len(allowed):
        raise SystemExit(f"error: --cpus={count}; this process may use 1 to {len(allowed)} cores")
    if count:
        os.sched_setaffinity(0, allowed[:count])
    return len(os.sched_getaffinity(0))


def model_config(args: argparse.Namespace, **overrides: Any) -> ModelConfig:
    dtypes = dict(dtype=args.dtype, param_dtype=args.param_dtype) | overrides
    if args.preset:
        return get_preset(args.preset, **dtypes)
    return ModelConfig(
        vocab_size=args.vocab,
        embed_dim=args.embed,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        head_dim=args.head_dim,
        mlp_dim=args.mlp,
        **dtypes,
    )


def check_positive(**values: int) -> None:
    """Raises naming the first flag that is not a positive integer."""
    for name, value in values.items():
        if value < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {value}")


def print_table(title: str, rows: Sequence[tuple[str, Any, str]]) -> None:
    """Prints (name, value, unit) rows under a title; floats get 4 significant digits."""
    print(f"\n{title}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, unit in rows:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {name:<{width}}  {text:>12}  {unit}")


def write_json(path: str, results: dict[str, Any], args: argparse.Namespace) -> None:
    """Writes `results` with what is needed to compare runs: device, versions, command line."""
    if not path:
        return
    record = {
        "benchmark": os.path.basename(sys.argv[0]),
        "date": datetime.date.today().isoformat(),
        "device": device_description(),
        "platform": platform_name(),
        "jax_version": jax.__version__,
        "args": vars(args),
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=float)
        f.write("\n")
    print(f"\nwrote {path}")
