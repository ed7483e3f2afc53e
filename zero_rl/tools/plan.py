"""Memory planning before paying for a pod: compile one RL step ahead of time, read the bytes.

`plan(config, mesh)` builds every array of a training step as an abstract `ShapeDtypeStruct`
with the sharding the trainer would give it, lowers and compiles the step's programs for `mesh`
(nothing is allocated), and adds up per-device bytes:

- persistent state, exact from shapes and shardings: params, optimiser state, reference params;
- per program, from XLA's buffer assignment (`compiled.memory_analysis()`): arguments, outputs
  and temporaries of the sampler's prefill (which outputs the KV cache) and decode (which
  updates it in place), the old/reference log-prob pass and the policy update.

The peak is the largest program's live bytes plus whatever persists around it. Each
program's lowering and compile seconds are reported too. `launch/plan.py`
runs this on as many fake CPU devices as the target slice has chips, so a laptop can answer
"does configs/mistral7b.py fit a v5p-128?". The CPU compiler's temporaries approximate the
accelerator's (same sharding and program; the TPU/GPU compilers fuse and rematerialise
differently), so keep a margin; the persistent bytes are exact.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from zero_rl import config as config_lib
from zero_rl import sampler, sharding
from zero_rl.models import DecodeCache, ModelConfig, abstract_params
from zero_rl.optim import make_optimizer, sharded_init
from zero_rl.sampling import engine
from zero_rl.sampling.engine import EngineStatic
from zero_rl.train.batch import Rollout, rollout_logprobs
from zero_rl.train.run import update_options
from zero_rl.train.update import UpdateOptions, update

GB = 1e9  # device memory is quoted in GB (1e9 bytes) by the TPU and GPU spec sheets

# Cloud TPU accelerator types "<generation>-<N>", as gcloud names them: (chips per N, HBM bytes
# per chip). v4 and v5p count TensorCores in N (two per chip); v5e ("v5litepod") and v6e count
# chips.
TPU_GENERATIONS = {
    "v4": (0.5, 32 * 2**30),
    "v5p": (0.5, 95 * GB),
    "v5litepod": (1, 16 * GB),  # v5e
    "v6e": (1, 32 * GB),
}


def tpu_slice(accelerator_type: str) -> tuple[int, float]:
    """(chips, HBM bytes per chip) of a Cloud TPU accelerator type such as "v5p-128"."""
    match = re.fullmatch(r"(v4|v5p|v5litepod|v6e)-(\d+)", accelerator_type)
    if not match:
        raise ValueError(
            f"unknown TPU accelerator type {accelerator_type!r}; expected <generation>-<N> with "
            f"generation one of {sorted(TPU_GENERATIONS)}, e.g. v5p-128 or v6e-64"
        )
    per_n, hbm = TPU_GENERATIONS[match[1]]
    chips = int(int(match[2]) * per_n)
    if chips < 1:
        raise ValueError(f"{accelerator_type} has no whole chip")
    return chips, hbm


def parse_hardware(text: str) -> tuple[str, dict[str, int]]:
    """A config's `hardware` string, "<accelerator> [mesh <axes>][; notes]" such as
    "v5p-256 mesh fsdp=64,tensor=2; ...", as (accelerator type, mesh axis sizes)."""
    match = re.fullmatch(r"\s*([^\s;]+)(?:\s+mesh\s+([^\s;]+))?\s*(?:;.*)?", text, re.DOTALL)
    if not match or not text.strip():
        raise ValueError(
            f"hardware {text!r} is not '<accelerator> [mesh <axes>][; notes]', "
            "e.g. 'v5p-64' or 'v5p-256 mesh fsdp=64,tensor=2'"
        )
    tpu_slice(match[1])  # validates the accelerator type
    return match[1], parse_mesh(match[2] or "")


def parse_mesh(text: str) -> dict[str, int]:
    """ "fsdp=64" or "data=2,fsdp=-1,tensor=4" -> axis sizes (unnamed axes keep make_mesh's
    defaults: data=1, fsdp=-1, tensor=1)."""
    sizes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in sharding.MESH_AXES:
            raise ValueError(
                f"bad mesh entry {item!r} in {text!r}; write axis=size with axis one of "
                f"{sharding.MESH_AXES}, e.g. fsdp=64 or data=2,fsdp=-1"
            )
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"mesh size {value!r} of axis {name!r} is not an integer") from None
        if sizes[name] == 0 or sizes[name] < -1:
            raise ValueError(f"mesh axis {name}={sizes[name]} must be positive or -1")
    return sizes


def mesh_devices(axis_sizes: dict[str, int], num_devices: int | None) -> int:
    """The device count a mesh needs: the product of its sizes, or `num_devices` when one axis
    is -1 (checked to divide)."""
    sizes = {"data": 1, "fsdp": -1, "tensor": 1} | axis_sizes
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 not in sizes.values():
        if num_devices not in (None, known):
            raise ValueError(f"mesh {sizes} has {known} devices, not {num_devices}")
        return known
    if num_devices is None:
        raise ValueError(f"mesh {sizes} has a -1 axis: give the number of devices")
    if num_devices % known:
        raise ValueError(f"mesh {sizes} does not divide {num_devices} devices")
    return num_devices


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded arrays or ShapeDtypeStructs."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return int(total)


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Per-device bytes of one compiled program (XLA's buffer assignment)."""

    argument: int
    output: int
    alias: int  # output bytes that reuse donated argument buffers
    temp: int

    @classmethod
    def of(cls, compiled: jax.stages.Compiled) -> ProgramMemory:
        stats = compiled.memory_analysis()
        if stats is None:
            raise RuntimeError("this backend's compiler reports no memory analysis")
        return cls(
            argument=int(stats.argument_size_in_bytes),
            output=int(stats.output_size_in_bytes),
            alias=int(stats.alias_size_in_bytes),
            temp=int(stats.temp_size_in_bytes),
        )

    def live(self) -> int:
        """Peak bytes while the program runs: inputs, fresh outputs and scratch."""
        return self.argument + self.output - self.alias + self.temp


def spec_json(spec: PartitionSpec) -> list:
    """A PartitionSpec as JSON: [None, "fsdp", ["data", "fsdp"], ...]."""
    return [list(e) if isinstance(e, tuple) else e for e in spec]


def _abstract(shape, dtype, mesh, spec: PartitionSpec):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def abstract_mesh(axis_sizes: dict[str, int], num_devices: int | None = None) -> AbstractMesh:
    """A (data, fsdp, tensor) mesh of any size without devices: enough for shapes and shardings
    (`state_bytes`, partition specs), not for compiling."""
    sizes = {"data": 1, "fsdp": -1, "tensor": 1} | axis_sizes
    total = mesh_devices(sizes, num_devices)
    known = math.prod(v for v in sizes.values() if v != -1)
    shape = tuple(total // known if sizes[a] == -1 else sizes[a] for a in sharding.MESH_AXES)
    return AbstractMesh(shape, sharding.MESH_AXES)


def _model_config(config: ml_collections.ConfigDict):
    m = config.model
    vocab_size = None
    if not m.preset and "vocab_size" not in m.dims:
        from zero_rl.tokenizer import load_tokenizer  # noqa: PLC0415 - custom models only

        vocab_size = load_tokenizer(config_lib.tokenizer_path(config)).vocab_size
    return config_lib.model_config(config, vocab_size)


@dataclasses.dataclass
class StepArrays:
    """Every array of one RL step as a sharded ShapeDtypeStruct, with the static arguments of
    the step's programs, exactly as `zero_rl.train.loop.train` builds them."""

    model_cfg: ModelConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    opt_state: object
    tx: optax.GradientTransformation
    opts: UpdateOptions
    needs_ref: bool
    prompts_bt: jax.ShapeDtypeStruct  # [prompts per sampler call, max_prompt_len]
    rollout: Rollout  # [num_prompts * num_samples, max_prompt_len + max_new_tokens]
    rng: jax.ShapeDtypeStruct


def step_arrays(config: ml_collections.ConfigDict, mesh, rules=None):
    """`StepArrays` of `config` on `mesh` (a Mesh or an AbstractMesh); `rules` default to the
    config's `sharding` section."""
    rules = rules or sharding.rules_from_config(config.sharding)
    model_cfg = _model_config(config)
    rl, s = config.rl, config.sampling
    opts = update_options(config, mesh)
    tx, _ = make_optimizer(config.optim, config.total_steps * opts.epochs * opts.num_minibatches)
    graphdef, params = abstract_params(model_cfg, mesh, rules)
    prompts, rows = rl.num_prompts, rl.num_prompts * rl.num_samples
    # The continuous engine takes every prompt in one call; the static sampler a call's.
    per_call = prompts if s.engine == "continuous" else (s.prompts_per_call or prompts)
    p, n = s.max_prompt_len, s.max_new_tokens
    batch = sharding.logical_to_spec(("batch", "length"), rules)
    rows_spec = PartitionSpec(batch[0])
    key = jax.eval_shape(lambda: jax.random.key(0))
    return StepArrays(
        model_cfg=model_cfg,
        graphdef=graphdef,
        params=params,
        opt_state=jax.eval_shape(sharded_init(tx, params), params),
        tx=tx,
        opts=opts,
        needs_ref=opts.loss.kl_coef != 0.0 or rl.kl_in_reward_coef != 0.0,
        prompts_bt=_abstract((per_call, p), jnp.int32, mesh, batch),
        rollout=Rollout(
            tokens_bt=_abstract((rows, p + n), jnp.int32, mesh, batch),
            positions_bt=_abstract((rows, p + n), jnp.int32, mesh, batch),
            mask_bn=_abstract((rows, n), jnp.float32, mesh, batch),
            sampler_logprobs_bn=_abstract((rows, n), jnp.float32, mesh, batch),
            old_logprobs_bn=_abstract((rows, n), jnp.float32, mesh, batch),
            ref_logprobs_bn=_abstract((rows, n), jnp.float32, mesh, batch),
            rewards_pg=_abstract((prompts, rl.num_samples), jnp.float32, mesh, rows_spec),
            group_mask_p=_abstract((prompts,), jnp.float32, mesh, rows_spec),
        ),
        rng=_abstract(key.shape, key.dtype, mesh, PartitionSpec()),
    )


def state_bytes(config: ml_collections.ConfigDict, mesh, rules=None) -> dict[str, int]:
    """Exact per-device bytes of what one RL step holds, from shapes and shardings alone (no
    compile; `mesh` may be an AbstractMesh of any size): params, optimiser state, reference
    params, the sampler's KV cache and the rollout batch. A lower bound on the peak."""
    rules = rules or sharding.rules_from_config(config.sharding)
    arrays = step_arrays(config, mesh, rules)
    cfg, rollout_bt = arrays.model_cfg, arrays.rollout.tokens_bt
    # The sampler's cache: the engine's slots, or one static call's rows (samples of its
    # prompts), x the whole sequence.
    rows = _cache_rows(config, arrays.prompts_bt.shape[0])
    length = rollout_bt.shape[1]
    rows_bt = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=rollout_bt.sharding)
    cache_shape = (cfg.num_layers, rows, cfg.num_kv_heads, length, cfg.head_dim)
    kv = sharding.named_sharding(DecodeCache.LOGICAL_AXES, cache_shape, mesh, rules)
    cache = jax.ShapeDtypeStruct(cache_shape, cfg.compute_dtype, sharding=kv)
    params = per_device_bytes(arrays.params)
    return {
        "params": params,
        "optimizer_state": per_device_bytes(arrays.opt_state),
        "reference": params if arrays.needs_ref else 0,
        # keys + values + the slot positions [rows, length] int32
        "kv_cache": 2 * per_device_bytes(cache) + per_device_bytes(rows_bt),
        "rollout": per_device_bytes(arrays.rollout),
    }


def _cache_rows(config: ml_collections.ConfigDict, prompts_per_call: int) -> int:
    s, rl = config.sampling, config.rl
    if s.engine == "continuous":
        return s.slots or rl.num_prompts * rl.num_samples
    return prompts_per_call * rl.num_samples


def _engine_static(config: ml_collections.ConfigDict) -> EngineStatic:
    """The continuous engine's static options as `zero_rl.sampling.generate_padded` builds
    them for the trainer (layers scanned, as on accelerators)."""
    s, rl = config.sampling, config.rl
    return EngineStatic(
        num_samples=rl.num_samples, slots=_cache_rows(config, 0),
        prefill_prompts=s.prefill_prompts, max_new_tokens=s.max_new_tokens,
        greedy=s.temperature == 0, top_k=s.top_k, top_p=s.top_p, stop_token_ids=(0,),
        pad_id=0, cache_dtype=None, unroll_layers=False, match_state=-1,
        drain_phases=s.drain_phases, response_chunks=s.decode_segments,
    )  # fmt: skip


def _engine_cache_layout(cfg: ModelConfig, prompt_len: int, static: EngineStatic):
    """The engine's slot pool as it is laid out at the start of its loop: abstract arrays
    with the shardings XLA gives them (under the caller's `activation_sharding`)."""
    make = jax.jit(lambda: engine._empty_cache(cfg, static.slots, prompt_len, static))
    shapes = jax.eval_shape(make)
    shardings = make.lower().compile().output_shardings
    return jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shardings
    )


def _sharded_by_logical_axes(cache, mesh, rules) -> bool:
    """Whether every key and value array of the sampler's cache is laid out as its logical
    axes and the rules say (XLA may pick another layout for an unconstrained output)."""
    arrays = jax.tree.leaves((cache.k, cache.v))
    return all(
        x.sharding.is_equivalent_to(
            sharding.named_sharding(type(cache).LOGICAL_AXES, x.shape, mesh, rules), x.ndim
        )
        for x in arrays
    )


def plan(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    device_memory_bytes: float | None = None,
    rules=None,
) -> dict:
    """Per-device memory of one RL step of `config` on `mesh`, as a JSON-ready dict.

    Compiles, with abstract inputs sharded as the trainer shards them, the programs the trainer
    runs: the sampler's prefill on one call's [prompts_per_call, max_prompt_len] prompts and
    its decode of `num_samples` responses of `max_new_tokens` each; the log-prob pass and the
    update on the [num_prompts * num_samples, P + N] rollout. `mesh` needs real (or fake CPU)
    devices.
    """
    rules = rules or sharding.rules_from_config(config.sharding)
    arrays = step_arrays(config, mesh, rules)
    s, rl = config.sampling, config.rl
    graphdef, params = arrays.graphdef, arrays.params

    # The sampler's own two programs, with the options `generate_padded` would pass them.
    static = sampler._Static(
        num_samples=rl.num_samples,
        max_new_tokens=s.max_new_tokens,
        greedy=s.temperature == 0,
        top_k=s.top_k,
        top_p=s.top_p,
        stop_token_ids=(0,),
        pad_id=0,
        cache_dtype=None,
        decode_segments=s.decode_segments,
    )
    prompts_bt, rollout, p = arrays.prompts_bt, arrays.rollout, s.max_prompt_len
    compiled, timings = {}, {}

    def build(name, jitted, *args, **kwargs):
        # Wall seconds grow with whatever else the machine runs; this process's CPU seconds
        # do not, and bound the wall time of a compile that has a host to itself.
        start, cpu = time.perf_counter(), time.process_time()
        lowered = jitted.lower(*args, **kwargs)
        lowered_at = time.perf_counter()
        compiled[name] = lowered.compile()
        timings[name] = {
            "lower_s": round(lowered_at - start, 2),
            "compile_s": round(time.perf_counter() - lowered_at, 2),
            "cpu_s": round(time.process_time() - cpu, 2),
        }
        return compiled[name]

    continuous = s.engine == "continuous"
    with sharding.activation_sharding(mesh, rules):
        if continuous:
            # One program: the slot pool (its cache a temporary), prefills and decode steps.
            engine_static = _engine_static(config)
            rows_spec = PartitionSpec(rollout.tokens_bt.sharding.spec[0])
            rows = rl.num_prompts * rl.num_samples
            vocab = arrays.model_cfg.vocab_size
            build("rollout", engine.run_jit, graphdef, params, prompts_bt, prompts_bt,
                  _abstract((rows,), jnp.int32, mesh, rows_spec),
                  _abstract((1, vocab), jnp.int32, mesh, PartitionSpec()), arrays.rng,
                  jax.ShapeDtypeStruct((), jnp.float32), static=engine_static)  # fmt: skip
            cache = _engine_cache_layout(arrays.model_cfg, p, engine_static)
        else:
            prefill = build("prefill", sampler.prefill_jit, graphdef, params, prompts_bt,
                            prompts_bt, static=static)  # fmt: skip
            # Decode takes prefill's outputs (KV cache, last logits, next positions) as they are.
            cache, logits_bv, next_pos_b = prefill.out_info
            build("decode", sampler.decode_jit, graphdef, params, cache, logits_bv, next_pos_b,
                  arrays.rng, jax.ShapeDtypeStruct((), jnp.float32),
                  _abstract((prompts_bt.shape[0] * rl.num_samples,), jnp.int32, mesh,
                            PartitionSpec(prompts_bt.sharding.spec[0])),
                  _abstract((1, arrays.model_cfg.vocab_size), jnp.int32, mesh, PartitionSpec()),
                  static=static)  # fmt: skip
        build("logprobs", rollout_logprobs, graphdef, params, rollout.tokens_bt,
              rollout.positions_bt, prompt_len=p,
              num_chunks=arrays.opts.num_minibatches * arrays.opts.num_microbatches,
              chunk=rl.logprob_chunk)  # fmt: skip
        build("update", update, graphdef, arrays.tx, params, arrays.opt_state, rollout,
              arrays.rng, opts=arrays.opts, prompt_len=p)  # fmt: skip
    memory = {name: ProgramMemory.of(c) for name, c in compiled.items()}

    sizes = state_bytes(config, mesh, rules)
    persistent = sizes["params"] + sizes["optimizer_state"] + sizes["reference"]
    tokens_bytes = per_device_bytes((rollout.tokens_bt, rollout.positions_bt))
    # Per program: bytes alive besides the persistent state, minus its arguments that are
    # already counted (params and optimiser state are persistent; the log-prob pass reads
    # tokens that belong to the rollout, which is alive from sampling until the update).
    extra = {"rollout": 0, "prefill": 0, "decode": 0, "logprobs": sizes["rollout"], "update": 0}
    if prompts_bt.shape[0] < rl.num_prompts:  # earlier calls' responses wait in memory
        extra["prefill"] = extra["decode"] = sizes["rollout"]
    counted = {
        "rollout": sizes["params"],
        "prefill": sizes["params"],
        "decode": sizes["params"],
        "logprobs": sizes["params"] + tokens_bytes,
        "update": sizes["params"] + sizes["optimizer_state"],
    }
    peaks = {
        name: persistent + extra[name] + mem.live() - counted[name] for name, mem in memory.items()
    }
    peak_program = max(peaks, key=peaks.get)
    report = {
        "model": config.model.preset or "custom",
        "mesh": dict(mesh.shape),
        "num_devices": int(mesh.size),
        "parameter_count": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        "per_device_bytes": sizes
        | {f"{name}_temporaries": mem.temp for name, mem in memory.items()},
        "programs": {
            name: dataclasses.asdict(mem) | {"peak": peaks[name]} | timings[name]
            for name, mem in memory.items()
        },
        # Where prefill put the keys and values it hands to decode (the cache's own layout).
        "kv_cache_spec": spec_json(jax.tree.leaves(cache.k)[0].sharding.spec),
        "kv_cache_sharded_as_planned": _sharded_by_logical_axes(cache, mesh, rules),
        "compile_s": round(sum(t["lower_s"] + t["compile_s"] for t in timings.values()), 2),
        "compile_cpu_s": round(sum(t["cpu_s"] for t in timings.values()), 2),
        "peak_program": peak_program,
        "peak_bytes": peaks[peak_program],
        "peak_gb": round(peaks[peak_program] / GB, 2),
    }
    if device_memory_bytes is not None:
        report["device_memory_gb"] = round(device_memory_bytes / GB, 2)
        report["fits"] = peaks[peak_program] <= device_memory_bytes
    return report
