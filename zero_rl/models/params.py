"""Creating models abstractly or directly sharded, and their logical axes."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from zero_rl import sharding
from zero_rl.models.config import ModelConfig
from zero_rl.models.transformer import Transformer


def _axes_of(path, variable) -> tuple[str, ...]:
    names = variable.get_metadata()["logical_axes"]
    if path and path[0] in ("layers", "critic_layers"):
        names = ("layers", *names)
    if len(names) != len(variable.get_value().shape):
        raise ValueError(
            f"parameter {path} has shape {variable.get_value().shape} but axes {names}"
        )
    return names


def logical_axes(params: nnx.State) -> nnx.State:
    """The logical-axis tuple of every parameter, e.g. ("embed", "heads", "head_dim") for a query
    projection [embed, heads, head_dim]; stacked block weights [layers, ...] gain a leading
    "layers"."""
    return nnx.map_state(_axes_of, params)


def abstract_params(
    cfg: ModelConfig, mesh: Mesh | None = None, rules=sharding.DEFAULT_RULES
) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params) with ShapeDtypeStruct leaves: shapes of a full-size model, no memory.

    Leaves have the real parameters' shapes (e.g. embed [vocab, embed]; block weights stacked
    [layers, ...]) and `cfg.param_dtype`. With a mesh, each leaf also carries its NamedSharding
    (for AOT compilation and restores).
    """
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    if mesh is not None:
        # Keep the Variable wrappers: restores and jit out_shardings match the real params'
        # pytree structure only then.
        abstract = nnx.map_state(
            lambda path, var: var.replace(
                jax.ShapeDtypeStruct(
                    var.get_value().shape,
                    var.get_value().dtype,
                    sharding=sharding.named_sharding(
                        _axes_of(path, var), var.get_value().shape, mesh, rules
                    ),
                )
            ),
            abstract,
        )
    return graphdef, abstract


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=sharding.DEFAULT_RULES) -> nnx.State:
    """NamedSharding of every parameter under `rules` on `mesh` (a State shaped like the
    parameters, one sharding per leaf)."""
    _, abstract = abstract_params(cfg)
    return nnx.map_state(
        lambda path, var: sharding.named_sharding(
            _axes_of(path, var), var.get_value().shape, mesh, rules
        ),
        abstract,
    )


def create_model(
    cfg: ModelConfig, seed: int = 0, *, mesh: Mesh | None = None, rules=sharding.DEFAULT_RULES
) -> Transformer:
    """A randomly initialised model (`model(tokens_bt)` -> logits [batch, time, vocab]); with a
    mesh, each parameter is created already sharded, never whole on one device."""
    if mesh is None:
        return Transformer(cfg, rngs=nnx.Rngs(seed))
    graphdef, _ = abstract_params(cfg)
    shardings = param_shardings(cfg, mesh, rules)

    @jax.jit
    def init():
        return nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))[1]

    params = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, params)
