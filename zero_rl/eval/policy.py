"""The policy to evaluate: parameters from a trainer checkpoint or an HF model directory, the
run config and model config they belong to, the tokenizer, and a fingerprint that tells one
policy's parameters from another's."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from zero_rl import sharding
from zero_rl.models import ModelConfig, abstract_params, from_hf, param_shardings
from zero_rl.models.hf import config_from_hf
from zero_rl.tokenizer import Tokenizer, load_tokenizer
from zero_rl.train import config as config_lib
from zero_rl.train.config import tokenizer_path


class Policy(NamedTuple):
    """A policy ready for `run_benchmarks`; `step` is the checkpoint's (0 for an HF model)."""

    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Tokenizer
    step: int
    source: str  # where it came from, for logs
    fingerprint: str  # `params_fingerprint(params)`: what a resumed evaluation must match


def checkpoint_directory(path: str) -> str:
    """The orbax directory of a trainer run: `path` itself, or `path/checkpoints` when `path`
    is the run's workdir."""
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints")
    if os.path.isdir(path):
        return path
    raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")


def _strip_value(path: tuple[str, ...]) -> tuple[str, ...]:
    # Params saved as nnx Variables carry a trailing "value" key; plain arrays do not.
    return path[:-1] if path and path[-1] == "value" else path


def restore_params(
    directory: str,
    model_cfg: ModelConfig,
    *,
    step: int | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
) -> tuple[int, nnx.GraphDef, nnx.State]:
    """(step, graphdef, params) from a trainer checkpoint (`{"state": {"params",
    "opt_state"}, "meta"}`), restoring only the params, directly onto `mesh` when given.

    Args:
      directory: the run's workdir or its `checkpoints` directory.
      step: a saved step; default the latest.
    """
    directory = os.path.abspath(checkpoint_directory(directory))
    manager = ocp.CheckpointManager(
        directory,
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True),
    )
    try:
        return _restore(manager, directory, model_cfg, step, mesh, rules)
    finally:
        manager.close()


def _restore(manager, directory, model_cfg, step, mesh, rules):
    steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {directory}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"no checkpoint for step {step} in {directory}; saved steps: {steps}")
    graphdef, abstract = abstract_params(model_cfg)
    expected = {tuple(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(abstract)}
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = dict.fromkeys(expected, device)
    else:
        flat = nnx.to_flat_state(param_shardings(model_cfg, mesh, rules))
        shardings = {tuple(map(str, p)): s for p, s in flat}

    def target(path, leaf):
        key = _strip_value(tuple(str(k.key) for k in path))
        if key not in expected:
            raise ValueError(f"checkpoint parameter {'/'.join(key)} is not in the model config")
        if tuple(leaf.shape) != expected[key].shape:
            raise ValueError(
                f"checkpoint parameter {'/'.join(key)} has shape {tuple(leaf.shape)}, the model "
                f"config gives {expected[key].shape}: is this the run's config?"
            )
        return jax.ShapeDtypeStruct(leaf.shape, expected[key].dtype, sharding=shardings[key])

    state_metadata = manager.item_metadata(step)["state"]
    on_disk = state_metadata.tree if hasattr(state_metadata, "tree") else state_metadata
    if "params" not in on_disk:
        raise ValueError(f"checkpoint {directory}/{step} has no params (keys {list(on_disk)})")
    item = {"params": jax.tree_util.tree_map_with_path(target, on_disk["params"])}
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,  # the optimizer state is not needed to evaluate
            )
        ),
    )
    flat_restored = {
        _strip_value(tuple(str(k.key) for k in path)): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored["state"]["params"])[0]
    }
    if missing := sorted(set(expected) - set(flat_restored)):
        raise ValueError(f"checkpoint lacks parameters {['/'.join(m) for m in missing[:5]]}")
    params = nnx.map_state(
        lambda path, var: var.replace(flat_restored[tuple(map(str, path))]), abstract
    )
    return step, graphdef, params


def _read_hf_config(directory: str) -> Mapping[str, Any]:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HF model directory {directory!r} has no config.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_model_config(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> ModelConfig:
    """The ModelConfig a trainer run used: its preset or dims, else its starting HF model's."""
    m = config.model
    if not m.preset and not m.dims and m.hf_path:
        hf_cfg = config_from_hf(_read_hf_config(m.hf_path))
        return hf_cfg.replace(dtype=m.dtype, param_dtype=m.param_dtype)
    return config_lib.model_config(config, tokenizer.vocab_size)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a trainer run was started with, read back from `workdir/config.json`.

    The saved values go over today's defaults (`base_config()`), so a key added to the schema
    since the run has its default. The result is unlocked, to be changed before use.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{workdir!r} is not a run directory: it has no config.json")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        is_hf = isinstance(saved, dict) and "model_type" in saved
        hint = " (an HF model's config? use --hf_model)" if is_hf else ""
        raise ValueError(f"{path} is not a trainer run's config{hint}: it has no model section")
    config = config_lib.base_config()
    _overlay(config, saved)
    return config


def _overlay(node: ml_collections.ConfigDict, saved: Mapping[str, Any]) -> None:
    for key, value in saved.items():
        if isinstance(node.get(key), ml_collections.ConfigDict) and isinstance(value, dict):
            _overlay(node[key], value)
        else:
            node[key] = value


# The config keys that decide which parameters and tokenizer a checkpoint is read with.
POLICY_CONFIG_KEYS = (
    "model.preset", "model.dims", "model.hf_path", "tokenizer.path", "rl.estimator", "rl.critic",
)  # fmt: skip


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for name in key.split("."):
        node = node[name]
    return node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node


def policy_config_conflicts(
    saved: ml_collections.ConfigDict, given: ml_collections.ConfigDict
) -> list[str]:
    """ "key: saved value vs given value" for each `POLICY_CONFIG_KEYS` entry that differs."""
    return [
        f"{key}: {_get(saved, key)!r} vs {_get(given, key)!r}"
        for key in POLICY_CONFIG_KEYS
        if _get(saved, key) != _get(given, key)
    ]


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """`config.<dotted key> = value`, as a `--config.a.b=v` override sets it."""
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


def saved_run_directory(checkpoint: str) -> str | None:
    """The trainer workdir behind `checkpoint` (the workdir or its `checkpoints` directory)
    when it holds the run's `config.json`, else None (checkpoints copied on their own)."""
    path = os.path.abspath(checkpoint)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    parent = os.path.dirname(path)
    if os.path.basename(path) == "checkpoints" and os.path.isfile(
        os.path.join(parent, "config.json")
    ):
        return parent
    return None


def load_policy(
    config: ml_collections.ConfigDict,
    *,
    checkpoint: str | None = None,
    hf_model: str | None = None,
    step: int | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    tokenizer: Tokenizer | None = None,
) -> Policy:
    """The policy in exactly one of a trainer checkpoint (with the run's `config`, e.g.
    `load_run_config(workdir)`) or an HF model directory (with `config.model.dtype` /
    `param_dtype`). The tokenizer is `tokenizer_path(config, hf_model)`'s, unless given.
    """
    if (checkpoint is None) == (hf_model is None):
        raise ValueError("give exactly one of a checkpoint directory or an HF model directory")
    if step is not None and checkpoint is None:
        raise ValueError("a step applies to a trainer checkpoint, not to an HF model")
    if hf_model is not None and not os.path.isdir(hf_model):
        raise FileNotFoundError(f"HF model directory {hf_model!r} does not exist")
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_path(config, hf_model))
    if hf_model is not None:
        _read_hf_config(hf_model)  # a clear error before from_hf's
        model = from_hf(hf_model, mesh=mesh, rules=rules, dtype=config.model.dtype,
                        param_dtype=config.model.param_dtype)  # fmt: skip
        graphdef, params = nnx.split(model)
        source = f"HF model {os.path.abspath(hf_model)}"
        return Policy(graphdef, params, tokenizer, 0, source, params_fingerprint(params))
    model_cfg = run_model_config(config, tokenizer)
    step, graphdef, params = restore_params(
        checkpoint, model_cfg, step=step, mesh=mesh, rules=rules
    )
    source = f"checkpoint {os.path.abspath(checkpoint)} step {step}"
    return Policy(graphdef, params, tokenizer, step, source, params_fingerprint(params))


# Knuth's multiplicative-hash constant and two of xxHash32's primes, all odd: multiplying by an
# odd number is invertible mod 2**32, so changing any one element always changes the sums.
_MULTIPLIERS = (2654435761, 2246822519, 3266489917)


def _leaf_sums(x: jax.Array) -> jax.Array:
    """Two position-weighted sums mod 2**32 of the bits of `x`: [2] uint32."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize not in (1, 2, 4):
        raise ValueError(f"params_fingerprint: unsupported dtype {x.dtype}")
    bits = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[
        x.dtype.itemsize]).astype(jnp.uint32)  # fmt: skip
    # Flat index from one iota per axis, not a reshape: a reshape could regather a sharded leaf.
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride)
        stride = (stride * x.shape[axis]) % (1 << 32)
    a, b, c = (jnp.uint32(m) for m in _MULTIPLIERS)
    weight = index * a | jnp.uint32(1)  # odd, and different per position
    mixed = (bits ^ (bits >> 15)) * c  # a second, differently mixed sum: 64 bits per leaf
    return jnp.stack([jnp.sum(bits * weight), jnp.sum((mixed + index * b) * weight)])


@jax.jit
def _all_leaf_sums(params):
    return jax.tree.map(_leaf_sums, params)


def params_fingerprint(params: nnx.State) -> str:
    """A 16-hex-digit fingerprint of parameter values, names, shapes and dtypes.

    Exact integer sums of the values' bits, so the same parameters give the same fingerprint
    on any mesh or sharding, and any changed element changes it; one pass over the
    parameters on their devices (no copy to the host).
    """
    sums = _all_leaf_sums(params)
    digest = hashlib.sha256()
    for (path, leaf), (_, leaf_sums) in zip(nnx.to_flat_state(params), nnx.to_flat_state(sums)):
        value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
        digest.update(f"{'/'.join(map(str, path))}:{value.shape}:{value.dtype}:".encode())
        local = leaf_sums.get_value() if hasattr(leaf_sums, "get_value") else leaf_sums
        digest.update(np.asarray(local.addressable_data(0)).tobytes())
    return digest.hexdigest()[:16]
