"""Hugging Face `transformers` checkpoints (config.json + safetensors) in and out.

Covers `LlamaForCausalLM` (Llama 3.x, DeepSeek-Math), `MistralForCausalLM` and `Qwen2ForCausalLM`;
the config.json side is `zero_rl.models.hf_config`. Weights move one HF tensor at a time in both
directions, so host memory holds about one tensor on import (one shard on export), never the
whole model: a 32B checkpoint loads on a host with far less RAM than its size. HF stores every
Linear as [out, in] with heads flattened; this model keeps [in, ..., out] with a separate heads
axis, so each tensor is a transpose and a reshape away. Both use the rotate-half RoPE layout, so
q/k need no permutation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from zero_rl import sharding
from zero_rl.models.config import ModelConfig
from zero_rl.models.hf_config import config_from_hf, hf_config, read_config_json
from zero_rl.models.params import abstract_params, param_shardings
from zero_rl.models.transformer import Transformer

# config_from_hf and hf_config stay importable from here, where they used to live.
__all__ = ["EXPORT_DTYPES", "config_from_hf", "from_hf", "hf_config", "to_hf"]

EXPORT_DTYPES = ("bfloat16", "float32", "float16")

_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
_SHARD_FILE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# What `to_hf` writes, and so replaces when overwriting; every other file in the directory
# (tokenizer, README, ...) is kept.
_EXPORT_FILES = ("config.json", "generation_config.json", _SINGLE_FILE, _INDEX_FILE)
# Buffers some exporters saved next to the weights; HF recomputes them from the config too.
_HARMLESS_EXTRA = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_FLOAT_DTYPES = ("F32", "BF16", "F16")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


# --------------------------------------------------------------------------------------------
# Which HF tensor is which parameter


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor per layer (stacked block weights) or per model, and its layout."""

    path: tuple[str, ...]  # parameter path in `nnx.state(model)`
    hf_name: str  # "{i}" is the layer index
    in_dims: int = 0  # > 0: a Linear whose first `in_dims` axes here are its inputs
    flat: bool = False  # HF keeps it as one axis (attention biases [heads * head_dim])

    @property
    def stacked(self) -> bool:
        return self.path[0] == "layers"

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """HF shape of one tensor given this model's per-layer shape."""
        if self.in_dims:
            return (math.prod(shape[self.in_dims :]), math.prod(shape[: self.in_dims]))
        return (math.prod(shape),) if self.flat else shape

    def from_hf(self, w, shape: tuple[int, ...]):
        return (w.T if self.in_dims else w).reshape(shape)

    def to_hf(self, x):
        if self.in_dims:
            return x.reshape(self.hf_shape(x.shape)[::-1]).T
        return x.reshape(self.hf_shape(x.shape))


def _tensors(cfg: ModelConfig) -> list[_Tensor]:
    """The HF tensor(s) behind each parameter of `cfg`."""
    block = "model.layers.{i}."
    out = [_Tensor(("embed",), "model.embed_tokens.weight")]
    out += [
        _Tensor(("layers", "input_norm", "scale"), block + "input_layernorm.weight"),
        *(
            _Tensor(("layers", "attn", f"{n}_proj"), block + f"self_attn.{n}_proj.weight", 1)
            for n in ("q", "k", "v")
        ),
        _Tensor(("layers", "attn", "o_proj"), block + "self_attn.o_proj.weight", 2),
        _Tensor(("layers", "post_attn_norm", "scale"), block + "post_attention_layernorm.weight"),
        *(
            _Tensor(("layers", "mlp", n), block + f"mlp.{n}.weight", 1)
            for n in ("gate_proj", "up_proj", "down_proj")
        ),
    ]
    if cfg.qkv_bias:
        out += [
            _Tensor(("layers", "attn", f"{n}_bias"), block + f"self_attn.{n}_proj.bias", flat=True)
            for n in ("q", "k", "v")
        ]
    out.append(_Tensor(("final_norm", "scale"), "model.norm.weight"))
    if not cfg.tie_embeddings:
        out.append(_Tensor(("lm_head",), "lm_head.weight", 1))
    return out


def _hf_order(cfg: ModelConfig) -> Iterator[tuple[_Tensor, int | None, str]]:
    """Every HF tensor as (tensor, layer, name): embedding, then layer by layer, then the head,
    so that an exported shard holds whole layers as HF's own shards do."""
    tensors = _tensors(cfg)
    yield tensors[0], None, tensors[0].hf_name
    for i in range(cfg.num_layers):
        yield from ((t, i, t.hf_name.format(i=i)) for t in tensors if t.stacked)
    yield from ((t, None, t.hf_name) for t in tensors[1:] if not t.stacked)


def _listed(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


# --------------------------------------------------------------------------------------------
# Import


def _weight_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from a sharded checkpoint's index file."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{index} is not a JSON object ({e})") from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no 'weight_map' (tensor name -> shard file)")
    return weight_map


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory."""
    if (directory / _SINGLE_FILE).is_file():
        return [directory / _SINGLE_FILE]
    if (directory / _INDEX_FILE).is_file():
        weight_map = _weight_map(directory / _INDEX_FILE)
        files = [directory / f for f in sorted(set(weight_map.values()))]
        if absent := [p.name for p in files if not p.is_file()]:
            raise FileNotFoundError(f"{_INDEX_FILE} in {directory} names missing files {absent}")
        return files
    raise FileNotFoundError(
        f"no {_SINGLE_FILE} or {_INDEX_FILE} in {directory} "
        "(only safetensors checkpoints are supported; found "
        f"{sorted(p.name for p in directory.iterdir())})"
    )


@dataclasses.dataclass(frozen=True)
class _Header:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors' name: "BF16", "F32", ...


def _read_headers(files: list[Path]) -> dict[str, _Header]:
    """Name -> header of every tensor in `files`, reading no tensor data."""
    headers = {}
    for file in files:
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                info = f.get_slice(name)
                headers[name] = _Header(file, tuple(info.get_shape()), info.get_dtype())
    return headers


def _read(header: _Header, name: str) -> np.ndarray:
    # Opening the file per tensor keeps at most one tensor's pages of the memory-mapped file
    # resident: a handle kept open would let the whole checkpoint accumulate in RSS.
    with safe_open(header.file, framework="numpy") as f:
        return f.get_tensor(name)


def _piece_sharding(full: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """Sharding of one layer's slice of a stacked parameter."""
    if isinstance(full, NamedSharding):
        return NamedSharding(full.mesh, PartitionSpec(*tuple(full.spec)[1:]))
    return full


def _put(host: np.ndarray, target: jax.sharding.Sharding, dtype: jnp.dtype) -> jax.Array:
    # Each device (and, multi-host, each process) copies and casts only its own shard.
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index].astype(dtype))


@functools.lru_cache(maxsize=64)
def _layer_writer(target: jax.sharding.Sharding):
    # Donating the stacked array makes each layer's write in place: device memory stays at one
    # copy of the parameter plus one layer.
    def write(full, piece, layer):
        return jax.lax.dynamic_update_index_in_dim(full, piece, layer, 0)

    return jax.jit(write, out_shardings=target, donate_argnums=0)


def _check_tensors(cfg: ModelConfig, abstract: dict, headers: dict[str, _Header]) -> None:
    """All checks before any data is read: names (missing/extra), shapes and dtypes."""
    expected = {}
    for tensor, _, name in _hf_order(cfg):
        shape = abstract[tensor.path].get_value().shape[1 if tensor.stacked else 0 :]
        expected[name] = tensor.hf_shape(shape)
    if missing := [n for n in expected if n not in headers]:
        raise ValueError(f"checkpoint lacks {len(missing)} tensors: {_listed(missing)}")
    # With tied embeddings HF ignores a stored lm_head and reuses the embedding; so do we.
    harmless = {"lm_head.weight"} if cfg.tie_embeddings else set()
    extra = sorted(
        n
        for n in set(headers) - set(expected)
        if n not in harmless and not _HARMLESS_EXTRA.search(n)
    )
    if extra:
        raise ValueError(f"checkpoint has {len(extra)} unexpected tensors: {_listed(extra)}")
    for name, want in expected.items():
        got = headers[name]
        if got.shape != want:
            raise ValueError(
                f"tensor {name!r} has shape {got.shape}, expected {want} from config.json"
            )
        if got.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {got.dtype}; need {_FLOAT_DTYPES}")


_CRITIC_COPIES = {"critic_layers": "layers", "critic_norm": "final_norm"}


def from_hf(
    path: str | Path,
    *,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    dtype: str | None = None,
    param_dtype: str | None = None,
    **config_overrides: Any,
) -> Transformer:
    """Loads an HF checkpoint directory (config.json + safetensors, single or sharded).

    Returns the Transformer, callable as `model(tokens_bt)` -> logits [batch, time, vocab].
    Each parameter is created with its sharding from `param_shardings(cfg, mesh, rules)`, or on
    this process's first local device without a mesh. `dtype`/`param_dtype` (compute/storage)
    default to the ModelConfig defaults (float32), whatever the checkpoint's dtype; other keyword
    arguments override ModelConfig fields (e.g. `remat="full"`). Every tensor name, shape and
    dtype is checked before any weight is read, so a bad checkpoint never yields a partial model.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory {directory} does not exist")
    dtypes = {"dtype": dtype, "param_dtype": param_dtype}
    overrides = config_overrides | {k: v for k, v in dtypes.items() if v is not None}
    cfg = config_from_hf(read_config_json(directory / "config.json")).replace(**overrides)
    graphdef, abstract = abstract_params(cfg)
    flat_abstract = dict(nnx.to_flat_state(abstract))
    if mesh is None:
        # jax.devices()[0] would be process 0's device on every host of a multi-host run.
        default = SingleDeviceSharding(jax.local_devices()[0])
        targets = {p: default for p in flat_abstract}
    else:
        targets = dict(nnx.to_flat_state(param_shardings(cfg, mesh, rules)))
    headers = _read_headers(_weight_files(directory))
    _check_tensors(cfg, flat_abstract, headers)

    loaded = {}
    # HF order is file order (layer by layer), so sharded files are read sequentially.
    for tensor, layer, name in _hf_order(cfg):
        spec, target = flat_abstract[tensor.path].get_value(), targets[tensor.path]
        if layer is None:
            host = tensor.from_hf(_read(headers[name], name), spec.shape)
            loaded[tensor.path] = _put(host, target, spec.dtype)
            continue
        if tensor.path not in loaded:
            loaded[tensor.path] = jnp.zeros(spec.shape, spec.dtype, device=target)
        host = tensor.from_hf(_read(headers[name], name), spec.shape[1:])
        piece = _put(host, _piece_sharding(target), spec.dtype)
        loaded[tensor.path] = _layer_writer(target)(loaded[tensor.path], piece, layer)

    def fill(path, var):
        if path in loaded:
            return var.replace(loaded[path])
        # What HF causal LMs do not have: a separate critic starts as a copy of the policy's
        # trunk (the usual PPO initialisation), the value head at zero.
        if path[0] in _CRITIC_COPIES:
            return var.replace(jnp.copy(loaded[(_CRITIC_COPIES[path[0]], *path[1:])]))
        spec = var.get_value()
        return var.replace(jnp.zeros(spec.shape, spec.dtype, device=targets[path]))

    return nnx.merge(graphdef, nnx.map_state(fill, abstract))


# --------------------------------------------------------------------------------------------
# Export


def _size_in_bytes(size: int | str) -> int:
    """Bytes in `size`: an int, or a string like "5GB" (10**9) or "2GiB" (2**30) as in HF."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
    unit = match[2].upper() if match else ""
    if not match or (unit and unit not in _SIZE_UNITS) or float(match[1]) <= 0:
        raise ValueError(f"max_shard_size={size!r}; give bytes or e.g. '5GB', '500MB', '2GiB'")
    return int(float(match[1]) * _SIZE_UNITS[unit or "B"])


@functools.partial(jax.jit, static_argnames=("tensor", "dtype"))
def _hf_layout(param, layer, *, tensor: _Tensor, dtype: str):
    x = param[layer] if tensor.stacked else param
    return tensor.to_hf(x).astype(dtype)


def _shard_plan(entries: list[tuple], max_bytes: int) -> list[list[tuple]]:
    """Greedy split of entries (..., nbytes) into shards of <= max_bytes; like HF, a tensor larger
    than that gets a shard of its own."""
    shards, current, size = [], [], 0
    for entry in entries:
        if current and size + entry[-1] > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry[-1]
    return [*shards, current] if current else shards


def _check_target(directory: Path, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{directory} is not empty; pass overwrite=True to replace its checkpoint files"
        )


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    # A hard link costs no copy of a large file (the old directory is deleted right after).
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _staging_directory(directory: Path) -> Path:
    """A new empty sibling of `directory` to write the export into (same filesystem, so that
    moving it into place is a rename)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = directory.with_name(f".{directory.name}.partial-{os.urandom(4).hex()}")
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        if directory.is_dir():
            shutil.copymode(directory, staging)
        return staging


def _swap_in(staging: Path, directory: Path) -> None:
    """Puts the complete export in `staging` at `directory`.

    Files of an existing `directory` that the export does not write (a tokenizer, a README)
    are carried over first; the old directory is renamed away before the new one is renamed into
    place, and deleted only after that, so at every moment one complete checkpoint exists.
    """
    if not directory.exists():
        staging.rename(directory)
        return
    for p in directory.iterdir():
        if p.name in _EXPORT_FILES or _SHARD_FILE.fullmatch(p.name):
            continue  # Stale shards of an earlier export must not be loaded with ours.
        if p.is_dir() and not p.is_symlink():
            shutil.copytree(p, staging / p.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(p, staging / p.name)
    old = staging.with_name(staging.name + ".old")
    directory.rename(old)
    try:
        staging.rename(directory)
    except BaseException:
        old.rename(directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def to_hf(
    model: Transformer,
    path: str | Path,
    *,
    dtype: str = "bfloat16",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    extra_config: Mapping[str, Any] | None = None,
) -> None:
    """Writes `model` as an HF checkpoint that `AutoModelForCausalLM.from_pretrained` loads.

    Weights go to `model.safetensors`, or to `model-0000k-of-0000n.safetensors` plus an index when
    they exceed `max_shard_size` (bytes, or a string like "5GB"), each tensor in HF's layout
    (Linear weights [out, in]); host memory holds at most one shard. `extra_config` adds
    config.json entries the model does not determine (e.g. `bos_token_id`, `eos_token_id`), which
    also go to generation_config.json. A non-empty `path` is refused unless `overwrite=True`; then
    config and weight files are replaced and other files (tokenizer, ...) kept. The export is
    written to a sibling directory and renamed into place once complete, so a failure part-way
    leaves an earlier checkpoint at `path` as it was. Only process 0 writes; every process must
    call this (multi-host arrays are gathered).
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r}; valid: {EXPORT_DTYPES}")
    cfg = model.cfg
    config = hf_config(cfg, dtype=dtype)
    if clash := sorted(set(extra_config or {}) & set(config)):
        raise ValueError(f"extra_config may not set {clash}: the model determines them")
    config |= dict(extra_config or {})
    max_bytes = _size_in_bytes(max_shard_size)
    directory = Path(path)
    if directory.is_symlink():  # Replace what the link points to, not the link.
        directory = Path(os.path.realpath(directory))
    _check_target(directory, overwrite)

    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    itemsize = jnp.dtype(dtype).itemsize
    entries = []
    for tensor, layer, name in _hf_order(cfg):
        shape = params[tensor.path].get_value().shape[1 if tensor.stacked else 0 :]
        entries.append((tensor, layer, name, math.prod(shape) * itemsize))
    shards = _shard_plan(entries, max_bytes)

    writer = jax.process_index() == 0
    staging = _staging_directory(directory) if writer else None
    try:
        weight_map = {}
        for k, shard in enumerate(shards, start=1):
            file = _SINGLE_FILE
            if len(shards) > 1:
                file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            arrays = {}
            for tensor, layer, name, _ in shard:
                param = params[tensor.path].get_value()
                # Every process joins the gather of a multi-host array; only process 0 writes.
                layout = _hf_layout(param, layer or 0, tensor=tensor, dtype=dtype)
                arrays[name] = np.asarray(sharding.gather_to_host(layout))
                weight_map[name] = file
            if writer:
                save_file(arrays, staging / file, metadata={"format": "pt"})
            del arrays
        if not writer:
            return
        if len(shards) > 1:
            total = sum(e[-1] for e in entries)
            _write_json(staging / _INDEX_FILE, {"metadata": {"total_size": total},
                                                "weight_map": weight_map})  # fmt: skip
        _write_json(staging / "config.json", config)
        token_ids = ("bos_token_id", "eos_token_id", "pad_token_id")
        generation = {"_from_model_config": True} | {k: config[k] for k in token_ids if k in config}
        _write_json(staging / "generation_config.json", generation)
        _swap_in(staging, directory)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
