"""The policy to evaluate: parameters from a trainer checkpoint or an HF model directory, the
model config they belong to, and the tokenizer."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from zero_rl import sharding
from zero_rl.models import ModelConfig, abstract_params, from_hf, param_shardings
from zero_rl.models.hf import config_from_hf
from zero_rl.tokenizer import Tokenizer, load_tokenizer
from zero_rl.train import config as config_lib

TINY_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "assets", "tiny_addition.model")


class Policy(NamedTuple):
    """A policy ready for `run_benchmarks`; `step` is the checkpoint's (0 for an HF model)."""

    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Tokenizer
    step: int
    source: str  # where it came from, for logs


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


def load_policy(
    config: ml_collections.ConfigDict,
    *,
    checkpoint: str | None = None,
    hf_model: str | None = None,
    step: int | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
) -> Policy:
    """The policy in exactly one of a trainer checkpoint (with the run's `config`) or an HF
    model directory (with `config.model.dtype` / `param_dtype`).

    The tokenizer is `config.tokenizer.path`, else the HF directory's (`hf_model`, then
    `config.model.hf_path`), else the tiny config's.
    """
    if (checkpoint is None) == (hf_model is None):
        raise ValueError("give exactly one of a checkpoint directory or an HF model directory")
    if step is not None and checkpoint is None:
        raise ValueError("a step applies to a trainer checkpoint, not to an HF model")
    if hf_model is not None and not os.path.isdir(hf_model):
        raise FileNotFoundError(f"HF model directory {hf_model!r} does not exist")
    tokenizer = load_tokenizer(
        config.tokenizer.path or hf_model or config.model.hf_path or TINY_TOKENIZER
    )
    if hf_model is not None:
        _read_hf_config(hf_model)  # a clear error before from_hf's
        model = from_hf(hf_model, mesh=mesh, rules=rules, dtype=config.model.dtype,
                        param_dtype=config.model.param_dtype)  # fmt: skip
        graphdef, params = nnx.split(model)
        return Policy(graphdef, params, tokenizer, 0, f"HF model {os.path.abspath(hf_model)}")
    model_cfg = run_model_config(config, tokenizer)
    step, graphdef, params = restore_params(
        checkpoint, model_cfg, step=step, mesh=mesh, rules=rules
    )
    source = f"checkpoint {os.path.abspath(checkpoint)} step {step}"
    return Policy(graphdef, params, tokenizer, step, source)
