"""The optimiser: learning-rate schedules against hand-computed values, global-norm clipping
and AdamW's update against a float64 recomputation, and the state dtypes of the bf16 options."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zero_rl.config import optimizer_config
from zero_rl.models import ModelConfig, abstract_params
from zero_rl.optim import learning_rate_schedule, make_optimizer, sharded_init
from zero_rl.sharding import make_mesh

# lr 1, 4 warmup steps, 12 steps in all, decay to 0.1: after warmup, 8 steps of decay.
COS_6 = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 8))  # 0.8682
SCHEDULE_CASES = {
    # schedule, warmup: {step: lr}
    ("constant", 0): {0: 1.0, 1: 1.0, 11: 1.0, 50: 1.0},
    ("constant", 4): {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 11: 1.0, 50: 1.0},
    ("cosine", 4): {0: 0.0, 2: 0.5, 4: 1.0, 6: COS_6, 8: 0.55, 12: 0.1, 30: 0.1},
    ("cosine", 0): {0: 1.0, 4: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 12)), 6: 0.55},
    ("linear", 4): {0: 0.0, 3: 0.75, 4: 1.0, 6: 0.775, 8: 0.55, 12: 0.1, 30: 0.1},
}


@pytest.mark.parametrize("case", list(SCHEDULE_CASES), ids=lambda c: f"{c[0]}-warmup{c[1]}")
def test_schedule_values_match_hand_computed_ones(case):
    schedule, warmup = case
    fn = learning_rate_schedule(
        lr=1.0, schedule=schedule, warmup_steps=warmup, total_steps=12, end_lr_ratio=0.1
    )
    for step, expected in SCHEDULE_CASES[case].items():
        assert float(fn(step)) == pytest.approx(expected, abs=1e-6), step


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'; valid"):
        learning_rate_schedule(lr=1.0, schedule="step", warmup_steps=0, total_steps=10)


def _adamw_first_update(g, p, *, lr, eps, weight_decay, clip):
    """AdamW's first step with b1 = b2 = 0, in float64: m = g, v = g^2 (bias corrections are 1),
    update = -lr (g / (|g| + eps) + wd p), after scaling g to global norm <= clip."""
    g = {k: np.asarray(v, np.float64) for k, v in g.items()}
    norm = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    scale = min(1.0, clip / norm) if clip else 1.0
    return {
        k: -lr * (scale * g[k] / (np.abs(scale * g[k]) + eps) + weight_decay * np.asarray(p[k]))
        for k in g
    }


@pytest.mark.parametrize("clip", [0.0, 1.0, 100.0])
def test_update_clips_the_global_norm_then_applies_adamw(clip):
    # A large eps keeps Adam's update proportional to the gradient, so clipping shows in it.
    cfg = optimizer_config(lr=0.1, b1=0.0, b2=0.0, eps=3.0, weight_decay=0.01, grad_clip=clip)
    tx, _ = make_optimizer(cfg, total_steps=10)
    params = {"a": jnp.asarray([1.0, -2.0, 0.5]), "b": jnp.asarray([[3.0, 0.0], [1.0, 1.0]])}
    grads = {"a": jnp.asarray([3.0, -4.0, 0.0]), "b": jnp.asarray([[6.0, 0.0], [-8.0, 5.0]])}
    assert float(optax.tree.norm(grads)) > 1.0  # so clip=1 changes it and clip=100 does not
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = _adamw_first_update(grads, params, lr=0.1, eps=3.0, weight_decay=0.01, clip=clip)
    for k in params:
        np.testing.assert_allclose(np.asarray(updates[k]), expected[k], rtol=1e-6, atol=1e-7)


def test_clipping_bounds_the_global_norm_seen_by_adam():
    clip = optax.clip_by_global_norm(1.0)
    grads = {"a": jnp.full((4,), 3.0), "b": jnp.full((2, 2), -4.0)}  # norm 10
    clipped, _ = clip.update(grads, clip.init(grads))
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(np.asarray(clipped["a"]), 0.3, rtol=1e-6)


CFG = ModelConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                  head_dim=8, mlp_dim=32)  # fmt: skip


@pytest.mark.parametrize(
    "param_dtype, mu_dtype", [("float32", "float32"), ("float32", "bfloat16"),
                              ("bfloat16", "float32"), ("bfloat16", "bfloat16")]
)  # fmt: skip
def test_optimizer_state_dtypes_follow_the_bf16_options(param_dtype, mu_dtype):
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    _, abstract = abstract_params(CFG.replace(param_dtype=param_dtype), mesh)
    tx, _ = make_optimizer(optimizer_config(mu_dtype=mu_dtype), total_steps=10)
    state = jax.eval_shape(sharded_init(tx, abstract), abstract)
    adam = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu")) if
            hasattr(s, "mu")]  # fmt: skip
    assert len(adam) == 1
    mu, nu = jax.tree.leaves(adam[0].mu), jax.tree.leaves(adam[0].nu)
    assert {x.dtype for x in mu} == {jnp.dtype(mu_dtype)}
    # The second moment stays in the parameters' dtype.
    assert {x.dtype for x in nu} == {jnp.dtype(param_dtype)}
    assert len(mu) == len(jax.tree.leaves(abstract))
