"""Gradient tests of the policy loss on a tiny softmax policy: on-policy REINFORCE, GSPO, and
finite differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zero_rl.rl import (
    REINFORCE_PP_ESTIMATORS,
    LossConfig,
    compute_advantages,
    policy_loss,
    reinforce_pp_advantages,
)

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


def _np_reward_to_go_advantages(rewards_pg, kl_bt, mask_bt, kl_coef, gamma, baseline, eps):
    """REINFORCE++ per-token advantages in float64, one response at a time."""
    r = np.asarray(rewards_pg, np.float64)
    if baseline:
        r = r - r.mean(1, keepdims=True)
    r = r.reshape(-1)
    returns = np.zeros(mask_bt.shape)
    for b in range(mask_bt.shape[0]):
        times = np.flatnonzero(mask_bt[b])
        token_rewards = -kl_coef * kl_bt[b, times]
        token_rewards[-1] += r[b]
        running = 0.0
        for j in range(len(times) - 1, -1, -1):
            running = token_rewards[j] + gamma * running
            returns[b, times[j]] = running
    counted = mask_bt > 0
    mean, std = returns[counted].mean(), returns[counted].std()
    return np.where(counted, (returns - mean) / (std + eps), 0.0)


ESTIMATORS_UNDER_TEST = ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]


@pytest.mark.parametrize("estimator", ESTIMATORS_UNDER_TEST)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_on_policy_ratio_is_one_and_gradient_is_reinforce(estimator, ratio_level):
    rng = np.random.default_rng(3)
    params, tokens_bt, mask_bt = _tiny_setup(rng, jnp.float32)
    rewards_pg = rng.integers(0, 2, size=(2, 4)).astype(np.float64)
    rewards_pg[1] = [1.0, 0.0, 0.5, 0.0]
    m = np.asarray(mask_bt, np.float64)
    if estimator in REINFORCE_PP_ESTIMATORS:
        # Per-token advantages: a KL penalty in the reward and a discount make them vary along
        # each response.
        kl_bt = rng.uniform(0.0, 0.5, size=m.shape)
        advantages_bt = reinforce_pp_advantages(
            jnp.asarray(rewards_pg), mask_bt, estimator=estimator, kl_bt=jnp.asarray(kl_bt),
            kl_coef=0.2, gamma=0.9,
        )  # fmt: skip
        reinforce_weights_bt = _np_reward_to_go_advantages(
            rewards_pg, kl_bt, m, 0.2, 0.9, estimator == "reinforce_pp_baseline", 1e-6
        )
    else:
        advantages_pg, _ = compute_advantages(jnp.asarray(rewards_pg), estimator=estimator)
        advantages_bt = advantages_pg.reshape(-1, 1) * mask_bt
        # The baseline each estimator subtracts, recomputed from its definition.
        r = rewards_pg
        if estimator == "rloo":
            baseline_pg = (r.sum(1, keepdims=True) - r) / (r.shape[1] - 1)
        else:
            baseline_pg = np.broadcast_to(r.mean(1, keepdims=True), r.shape)
        scale_pg = 1.0 / (r.std(1, ddof=1, keepdims=True) + 1e-6) if estimator == "grpo" else 1.0
        reinforce_weights_bt = ((r - baseline_pg) * scale_pg).reshape(-1, 1) * m

    # GSPO is defined with the sequence-mean-token-mean aggregation only.
    aggregations = ["seq_mean_token_mean"]
    if ratio_level == "token":
        aggregations += ["token_mean", "seq_mean_token_sum_norm"]
    for aggregation in aggregations:
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
            weights_b = {
                "token_mean": np.full(m.shape[0], 1.0 / m.sum()),
                "seq_mean_token_mean": 1.0 / (m.shape[0] * m.sum(1)),
                "seq_mean_token_sum_norm": np.full(m.shape[0], 1.0 / (m.shape[0] * 7)),
            }[aggregation]
            weights_bt = jnp.asarray(weights_b[:, None] * reinforce_weights_bt, jnp.float32)
            return -jnp.sum(weights_bt * logprobs_bt * mask_bt)

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


def test_gspo_token_gradient_with_per_token_advantages_matches_the_paper():
    # GSPO-token (Zheng et al. 2025): s_i,t = sg(s_i) * pi(y_i,t) / sg(pi(y_i,t)), so that
    # grad = -1/G sum_i 1/|y_i| sum_t s_i A_i,t grad log pi(y_i,t) over the tokens whose term
    # is not clipped; recomputed here in float64 NumPy.
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        params, tokens_bt, mask_bt = _tiny_setup(rng, jnp.float64)
        old_params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape), params)
        old_bt, _ = jax.jit(_tiny_policy)(old_params, tokens_bt)
        advantages_bt = jnp.asarray(rng.normal(size=mask_bt.shape)) * mask_bt
        logprobs_bt, _ = jax.jit(_tiny_policy)(params, tokens_bt)
        lp, old, adv, m = (np.asarray(x) for x in (logprobs_bt, old_bt, advantages_bt, mask_bt))
        lengths_b = m.sum(1)
        s_b = np.exp(((lp - old) * m).sum(1) / lengths_b)
        clip = float(np.median(np.abs(s_b - 1.0)))  # clips about half the sequences
        config = LossConfig(
            ratio_level="sequence", aggregation="seq_mean_token_mean", clip_low=clip,
            clip_high=clip,
        )  # fmt: skip
        s_bt = s_b[:, None]
        clipped_bt = ((adv > 0) & (s_bt > 1 + clip)) | ((adv < 0) & (s_bt < 1 - clip))
        counted_bt = m > 0
        assert np.any(clipped_bt & counted_bt) and np.any(~clipped_bt & counted_bt)
        num_rows = m.shape[0]
        coef_bt = np.where(counted_bt & ~clipped_bt, s_bt * adv / lengths_b[:, None], 0.0)
        coef_bt = coef_bt / num_rows
        token_terms_bt = np.minimum(s_bt * adv, np.clip(s_bt, 1 - clip, 1 + clip) * adv)
        expected_loss = -np.mean((token_terms_bt * m).sum(1) / lengths_b)

        def ours(p):
            logprobs_bt, _ = _tiny_policy(p, tokens_bt)
            return policy_loss(logprobs_bt, old_bt, advantages_bt, mask_bt, config=config)[0]

        def paper(p):
            logprobs_bt, _ = _tiny_policy(p, tokens_bt)
            return -jnp.sum(coef_bt * logprobs_bt)

        def through_the_mean(p):
            # The sequence ratio differentiated as a whole: GSPO only for constant advantages.
            logprobs_bt, _ = _tiny_policy(p, tokens_bt)
            s_b = jnp.exp(jnp.sum((logprobs_bt - old_bt) * mask_bt, 1) / lengths_b)[:, None]
            clipped_b = jnp.clip(s_b, 1 - clip, 1 + clip)
            terms_bt = jnp.minimum(s_b * advantages_bt, clipped_b * advantages_bt)
            return -jnp.mean(jnp.sum(terms_bt * mask_bt, 1) / lengths_b)

        # Jitted: op-by-op dispatch of the loss costs more than compiling it once.
        np.testing.assert_allclose(jax.jit(ours)(params), expected_loss, rtol=1e-12)
        got, want, other = (jax.jit(jax.grad(f))(params) for f in (ours, paper, through_the_mean))
        for got_leaf, want_leaf in zip(got, want):
            np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-10, atol=1e-14)
        # ... and the check tells GSPO-token from the gradient through the mean.
        assert max(float(np.max(np.abs(o - w))) for o, w in zip(other, want)) > 1e-3


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
        if config.ratio_level == "sequence":
            # GSPO-token's gradient is that of its loss value only for one advantage per
            # sequence; per-token advantages are checked against the paper's formula above.
            advantages_bt = advantages_bt[:, 1:2] * mask_bt

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
