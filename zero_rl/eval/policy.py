"""The policy to evaluate or sample: parameters from a trainer checkpoint or an HF model
directory, the run description they belong to (template, stops, model, tokenizer), and a
fingerprint that tells one policy's parameters from another's."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from zero_rl import config as config_lib
from zero_rl import sharding
from zero_rl.checkpoint import Checkpointer
from zero_rl.describe import RunDescription, describe_run, read_description
from zero_rl.models import ModelConfig, abstract_params, from_hf, param_shardings
from zero_rl.tokenizer import Tokenizer


class Policy(NamedTuple):
    """Parameters with what sampling them needs: the run's description (template, stops,
    model, tokenizer) and the config they are used under. `step` is the checkpoint's (0 for an
    HF model); `meta` the checkpoint's metadata ({"step", "data", "metrics"}; {} for HF)."""

    graphdef: nnx.GraphDef
    params: nnx.State
    description: RunDescription
    config: ml_collections.ConfigDict
    step: int
    source: str  # where it came from, for logs
    fingerprint: str  # `params_fingerprint(params)`: what a resumed evaluation must match
    meta: Mapping[str, Any]

    @property
    def tokenizer(self) -> Tokenizer:
        return self.description.tokenizer

    @property
    def template(self) -> str:
        return self.description.template

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return self.description.stop_token_ids


def checkpoint_directory(path: str) -> str:
    """The orbax directory of a trainer run: `path` itself, or `path/checkpoints` when `path`
    is the run's workdir."""
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints")
    if os.path.isfile(os.path.join(path, "config.json")):  # a workdir, before its first save
        raise FileNotFoundError(f"run {path!r} has no checkpoints directory")
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
    with Checkpointer(checkpoint_directory(directory), read_only=True) as checkpoints:
        return _restore(checkpoints, model_cfg, step, mesh, rules)


def checkpoint_steps(directory: str) -> list[int]:
    """The steps saved in a run's workdir or `checkpoints` directory, ascending."""
    with Checkpointer(checkpoint_directory(directory), read_only=True) as checkpoints:
        return checkpoints.all_steps()


def _restore(checkpoints: Checkpointer, model_cfg, step, mesh, rules):
    directory, steps = checkpoints.directory, checkpoints.all_steps()
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

    on_disk = checkpoints.state_structure(step)
    if "params" not in on_disk:
        raise ValueError(f"checkpoint {directory}/{step} has no params (keys {list(on_disk)})")
    # The optimizer state is not needed to evaluate: only the params are read.
    item = {"params": jax.tree_util.tree_map_with_path(target, on_disk["params"])}
    restored = checkpoints.restore_subtree(step, item)
    flat_restored = {
        _strip_value(tuple(str(k.key) for k in path)): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored["params"])[0]
    }
    if missing := sorted(set(expected) - set(flat_restored)):
        raise ValueError(f"checkpoint lacks parameters {['/'.join(m) for m in missing[:5]]}")
    params = nnx.map_state(
        lambda path, var: var.replace(flat_restored[tuple(map(str, path))]), abstract
    )
    return step, graphdef, params


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


def run_config(
    given: ml_collections.ConfigDict,
    *,
    checkpoint: str | None,
    overrides: Mapping[str, Any],
    given_explicitly: bool,
) -> tuple[ml_collections.ConfigDict, str]:
    """The config to use a policy under, and where it came from (for logs).

    A trainer workdir given as `checkpoint` holds the run's config.json: that is the config,
    with `overrides` (`--config.x=y`: mesh, model dtype, sampling, reward rules, ...) set on
    it. An explicit `given` config (`given_explicitly`) is used instead only when it agrees
    with the saved one on `POLICY_CONFIG_KEYS`, which pick the parameters and tokenizer;
    otherwise it is an error. Without a saved config (an HF model, checkpoints copied on their
    own), `given` is the config.
    """
    run_dir = saved_run_directory(checkpoint) if checkpoint else None
    if run_dir is None:
        return given, "--config"
    saved = config_lib.load_run_config(run_dir)
    for key, value in overrides.items():
        config_lib.set_key(saved, key, value)
    saved.lock()
    if not given_explicitly:
        return saved, os.path.join(run_dir, "config.json")
    if conflicts := policy_config_conflicts(saved, given):
        raise ValueError(
            f"--config disagrees with the run's {run_dir}/config.json on "
            f"{'; '.join(conflicts)} (saved vs --config): drop --config to use the saved "
            "config, or make them agree"
        )
    return given, "--config"


def describe_policy(
    config: ml_collections.ConfigDict,
    *,
    checkpoint: str | None = None,
    hf_model: str | None = None,
    tokenizer: Tokenizer | None = None,
) -> RunDescription:
    """The description of the policy in a trainer checkpoint or an HF model directory, under
    `config`: a checkpoint in a run's workdir is described by what training wrote there
    (`read_description`), with `config`'s `data.template` / `tokenizer.path` overrides; an HF
    model or checkpoints copied on their own by `describe_run`."""
    if (checkpoint is None) == (hf_model is None):
        raise ValueError("give exactly one of a checkpoint directory or an HF model directory")
    if hf_model is not None:
        if not os.path.isfile(os.path.join(hf_model, "config.json")):
            raise FileNotFoundError(
                f"HF model directory {hf_model!r} "
                + ("has no config.json" if os.path.isdir(hf_model) else "does not exist")
            )
        return describe_run(config, hf_model=hf_model, tokenizer=tokenizer)
    run_dir = saved_run_directory(checkpoint)
    if run_dir is None:
        return describe_run(config, tokenizer=tokenizer)
    return read_description(run_dir, config, tokenizer=tokenizer)


def load_policy(
    config: ml_collections.ConfigDict,
    *,
    checkpoint: str | None = None,
    hf_model: str | None = None,
    step: int | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    description: RunDescription | None = None,
) -> Policy:
    """The policy in exactly one of a trainer checkpoint (with the run's `config`, e.g.
    `load_run_config(workdir)`) or an HF model directory, computed in `config.model.dtype`
    and stored in `param_dtype`. `description` defaults to `describe_policy`'s.
    """
    if step is not None and checkpoint is None:
        raise ValueError("a step applies to a trainer checkpoint, not to an HF model")
    if description is None:
        description = describe_policy(config, checkpoint=checkpoint, hf_model=hf_model)
    if hf_model is not None:
        model = from_hf(hf_model, mesh=mesh, rules=rules, dtype=config.model.dtype,
                        param_dtype=config.model.param_dtype)  # fmt: skip
        graphdef, params = nnx.split(model)
        source = f"HF model {os.path.abspath(hf_model)}"
        return Policy(graphdef, params, description, config, 0, source,
                      params_fingerprint(params), {})  # fmt: skip
    model_cfg = description.model.replace(
        dtype=config.model.dtype, param_dtype=config.model.param_dtype
    )
    # One read-only opening of the directory for the params and the step's metadata.
    with Checkpointer(checkpoint_directory(checkpoint), read_only=True) as checkpoints:
        step, graphdef, params = _restore(checkpoints, model_cfg, step, mesh, rules)
        meta = checkpoints.restore_meta(step)
    source = f"checkpoint {os.path.abspath(checkpoint)} step {step}"
    return Policy(graphdef, params, description, config, step, source,
                  params_fingerprint(params), meta)  # fmt: skip


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
