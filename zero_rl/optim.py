"""Optimiser and learning-rate schedules from a config block."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(
    *, lr: float, schedule: str, warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.0
) -> optax.Schedule:
    """Linear warmup to `lr`, then constant, cosine or linear decay to `lr * end_lr_ratio`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; valid: {SCHEDULES}")
    warmup = optax.linear_schedule(0.0 if warmup_steps else lr, lr, max(warmup_steps, 1))
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "constant":
        after = optax.constant_schedule(lr)
    elif schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_ratio)
    else:
        after = optax.linear_schedule(lr, lr * end_lr_ratio, decay_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(
    optim_cfg, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping. `optim_cfg` fields: lr, schedule, warmup_steps,
    weight_decay, b1, b2, eps, grad_clip (0 disables), mu_dtype ("float32" or "bfloat16")."""
    schedule = learning_rate_schedule(
        lr=optim_cfg.lr,
        schedule=optim_cfg.schedule,
        warmup_steps=optim_cfg.warmup_steps,
        total_steps=total_steps,
        end_lr_ratio=optim_cfg.end_lr_ratio,
    )
    parts = []
    if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
    parts.append(
        optax.adamw(
            schedule,
            b1=optim_cfg.b1,
            b2=optim_cfg.b2,
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
            mu_dtype=jnp.dtype(optim_cfg.mu_dtype),
        )
    )
    return optax.chain(*parts), schedule


def sharded_init(tx: optax.GradientTransformation, abstract_params):
    """`tx.init` as a jitted function whose state leaves are sharded like their parameters.

    `abstract_params` holds ShapeDtypeStructs with NamedShardings (`abstract_params(cfg, mesh)`).
    A plain `jax.jit(tx.init)` has no input its outputs depend on (init reads only shapes), so
    XLA puts the whole state on one device: a 7B model's Adam moments (58 GB) on chip 0.
    """
    leaves = jax.tree.leaves(abstract_params)
    if not leaves or not all(isinstance(x.sharding, NamedSharding) for x in leaves):
        raise ValueError("sharded_init needs abstract params that all carry a NamedSharding")
    replicated = NamedSharding(leaves[0].sharding.mesh, PartitionSpec())
    shardings = optax.tree_map_params(
        tx,
        lambda _, param: param.sharding,
        jax.eval_shape(tx.init, abstract_params),
        abstract_params,
        transform_non_params=lambda _: replicated,
    )
    return jax.jit(tx.init, out_shardings=shardings)
