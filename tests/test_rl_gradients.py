"""Gradient tests of the policy loss on a tiny softmax policy: on-policy REINFORCE, GSPO, and
finite differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zero_rl.rl import LossConfig, compute_advantages, policy_loss

VOCAB = 5


def _tiny_policy(params, tokens_bt):
    """Bigram softmax policy: logits of token t are a linear function of one-hot(token t-1).

    Returns:
      (logprobs_bt, entropy_bt) of the tokens tokens_bt[:, 1:].
    """
    weights_vv, bias_v = params
    logits_btv = jax.nn.one_hot(tokens_bt[:, :-1], VOCAB, dtype=weights_vv.dtype) @ weights_vv
    log_probs_btv = jax.nn.log_softmax(logits_btv + bias_v, axis=-1)
    logprobs_bt = jnp.take_along_axis(log_probs_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    entropy_bt = -jnp.sum(jnp.exp(log_probs_btv) * log_probs_btv, axis=-1)
    return logprobs_bt, entropy_bt


def _tiny_setup(rng, dtype, batch=8, time=7):
    params = (
        jnp.asarray(rng.normal(size=(VOCAB, VOCAB)), dtype),
        jnp.asarray(rng.normal(size=VOCAB), dtype),
    )
    tokens_bt = jnp.asarray(rng.integers(0, VOCAB, size=(batch, time + 1)))
    response_lens = rng.integers(2, time - 1, size=batch)
    mask_bt = (np.arange(time)[None] >= 1) & (np.arange(time)[None] <= response_lens[:, None])
    return params, tokens_bt, jnp.asarray(mask_bt, dtype)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_pp"])
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_on_policy_ratio_is_one_and_gradient_is_reinforce(estimator, ratio_level):
    rng = np.random.default_rng(3)
    params, tokens_bt, mask_bt = _tiny_setup(rng, jnp.float32)
    rewards_pg = rng.integers(0, 2, size=(2, 4)).astype(np.float64)
    rewards_pg[1] = [1.0, 0.0, 0.5, 0.0]
    advantages_pg, _ = compute_advantages(jnp.asarray(rewards_pg), estimator=estimator)
    advantages_bt = advantages_pg.reshape(-1, 1) * mask_bt

    # The baseline each estimator subtracts, recomputed from its definition.
    r = rewards_pg
    if estimator == "rloo":
        baseline_pg = (r.sum(1, keepdims=True) - r) / (r.shape[1] - 1)
    elif estimator == "reinforce_pp":
        baseline_pg = np.full_like(r, r.mean())
    else:
        baseline_pg = np.broadcast_to(r.mean(1, keepdims=True), r.shape)
    scale_pg = {
        "grpo": 1.0 / (r.std(1, ddof=1, keepdims=True) + 1e-6),
        "dr_grpo": 1.0,
        "rloo": 1.0,
        "reinforce_pp": 1.0 / (r.std() + 1e-6),
    }[estimator]
    reinforce_weights_b = ((r - baseline_pg) * scale_pg).reshape(-1)

    for aggregation in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        config = LossConfig(ratio_level=ratio_level, aggregation=aggregation, norm_len=7)

        def loss_fn(p, config=config):
            logprobs_bt, _ = _tiny_policy(p, tokens_bt)
            old_bt = jax.lax.stop_gradient(logprobs_bt)
            return policy_loss(logprobs_bt, old_bt, advantages_bt, mask_bt, config=config)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        assert float(metrics["ratio_max"]) == 1.0 and float(metrics["ratio_min"]) == 1.0
        assert float(metrics["clip_frac_low"]) == 0.0 == float(metrics["clip_frac_high"])

        def reinforce_fn(p, aggregation=aggregation):
            logprobs_bt, _ = _tiny_policy(p, tokens_bt)
            m = np.asarray(mask_bt)
            weights_b = {
                "token_mean": np.full(m.shape[0], 1.0 / m.sum()),
                "seq_mean_token_mean": 1.0 / (m.shape[0] * m.sum(1)),
                "seq_mean_token_sum_norm": np.full(m.shape[0], 1.0 / (m.shape[0] * 7)),
            }[aggregation]
            per_sequence_b = jnp.sum(logprobs_bt * mask_bt, axis=1)
            return -jnp.sum(jnp.asarray(weights_b * reinforce_weights_b) * per_sequence_b)

        expected = jax.grad(reinforce_fn)(params)
        for got_leaf, expected_leaf in zip(grads, expected):
            np.testing.assert_allclose(got_leaf, expected_leaf, rtol=2e-4, atol=1e-6)


def test_sequence_ratio_gradient_matches_gspo_objective():
    # With one advantage per sequence and seq-mean aggregation, the loss and its gradient are
    # GSPO's objective -mean_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t log pi/pi_old).
    rng = np.random.default_rng(4)
    params, tokens_bt, mask_bt = _tiny_setup(rng, jnp.float32)
    old_params = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape), params)
    old_bt, _ = _tiny_policy(old_params, tokens_bt)
    advantages_b = jnp.asarray(rng.normal(size=tokens_bt.shape[0]), jnp.float32)
    config = LossConfig(
        ratio_level="sequence", aggregation="seq_mean_token_mean", clip_low=3e-3, clip_high=4e-3
    )

    def ours(p):
        logprobs_bt, _ = _tiny_policy(p, tokens_bt)
        return policy_loss(
            logprobs_bt, old_bt, advantages_b[:, None] * mask_bt, mask_bt, config=config
        )[0]

    def gspo(p):
        logprobs_bt, _ = _tiny_policy(p, tokens_bt)
        s_b = jnp.exp(jnp.sum((logprobs_bt - old_bt) * mask_bt, 1) / jnp.sum(mask_bt, 1))
        clipped_b = jnp.clip(s_b, 1 - config.clip_low, 1 + config.clip_high)
        return -jnp.mean(jnp.minimum(s_b * advantages_b, clipped_b * advantages_b))

    np.testing.assert_allclose(ours(params), gspo(params), rtol=1e-5)
    for got, expected in zip(jax.grad(ours)(params), jax.grad(gspo)(params)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "config",
    [
        LossConfig(clip_high=0.28, dual_clip=3.0, kl_coef=0.1, entropy_coef=0.01),
        LossConfig(
            ratio_level="sequence",
            aggregation="seq_mean_token_mean",
            kl_coef=0.1,
            kl_estimator="k2",
            entropy_coef=0.01,
        ),
        LossConfig(
            aggregation="seq_mean_token_sum_norm",
            norm_len=6,
            kl_coef=0.1,
            kl_estimator="k1",
            entropy_coef=0.01,
        ),
    ],
    ids=["token", "sequence", "sum_norm"],
)
def test_finite_difference_gradient_on_tiny_policy(config):
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        params, tokens_bt, mask_bt = _tiny_setup(rng, jnp.float64)
        old_params = jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape), params)
        ref_params = jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape), params)
        old_bt, _ = _tiny_policy(old_params, tokens_bt)
        ref_bt, _ = _tiny_policy(ref_params, tokens_bt)
        advantages_bt = jnp.asarray(rng.normal(size=mask_bt.shape)) * mask_bt

        def loss_fn(flat):
            p = (flat[: VOCAB * VOCAB].reshape(VOCAB, VOCAB), flat[VOCAB * VOCAB :])
            logprobs_bt, entropy_bt = _tiny_policy(p, tokens_bt)
            return policy_loss(
                logprobs_bt,
                old_bt,
                advantages_bt,
                mask_bt,
                config=config,
                ref_logprobs_bt=ref_bt,
                entropy_bt=entropy_bt,
            )

        flat = jnp.concatenate([params[0].reshape(-1), params[1]])
        (_, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(flat)
        # The check is only meaningful if some tokens sit on the clipped, flat branch.
        assert float(metrics["clip_frac_low"] + metrics["clip_frac_high"]) > 0.0
        step, basis = 1e-6, np.eye(flat.size)
        losses = jax.jit(jax.vmap(lambda f: loss_fn(f)[0]))(
            flat + step * np.concatenate([basis, -basis])
        )
        fd = (losses[: flat.size] - losses[flat.size :]) / (2 * step)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
