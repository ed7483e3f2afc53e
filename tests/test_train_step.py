"""The jitted RL update and rollout helpers against independent recomputations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from zero_rl.models import ModelConfig, create_model, token_logprobs
from zero_rl.rl import LossConfig, policy_loss
from zero_rl.train.batch import Rollout, assemble_sequences, rollout_logprobs
from zero_rl.train.update import UpdateOptions, rollout_advantages, update

CFG = ModelConfig(
    vocab_size=37, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64
)
P, N, PROMPTS, G = 6, 5, 4, 4


def test_assemble_sequences_layout():
    prompt = jnp.asarray([[0, 0, 5, 6], [7, 8, 9, 10]])
    positions = jnp.asarray([[-1, -1, 0, 1], [0, 1, 2, 3]])
    response = jnp.asarray([[11, 12, 0], [13, 0, 0], [14, 15, 16], [17, 18, 0]])
    lengths = jnp.asarray([2, 1, 3, 2])
    tokens, pos, mask = assemble_sequences(prompt, positions, response, lengths, 2)
    np.testing.assert_array_equal(tokens[1], [0, 0, 5, 6, 13, 0, 0])
    np.testing.assert_array_equal(pos[0], [-1, -1, 0, 1, 2, 3, -1])
    np.testing.assert_array_equal(pos[2], [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])


def _rollout(model, seed=0):
    rng = np.random.default_rng(seed)
    rows = PROMPTS * G
    prompt_len = rng.integers(2, P + 1, size=PROMPTS)
    prompt = np.zeros((PROMPTS, P), np.int32)
    prompt_pos = np.full((PROMPTS, P), -1, np.int32)
    for i, n in enumerate(prompt_len):
        prompt[i, P - n :] = rng.integers(1, CFG.vocab_size, size=n)
        prompt_pos[i, P - n :] = np.arange(n)
    response = rng.integers(1, CFG.vocab_size, size=(rows, N)).astype(np.int32)
    lengths = rng.integers(1, N + 1, size=rows).astype(np.int32)
    tokens, positions, mask = assemble_sequences(
        jnp.asarray(prompt), jnp.asarray(prompt_pos), jnp.asarray(response), jnp.asarray(lengths), G
    )
    graphdef, params = nnx.split(model)
    logp = rollout_logprobs(
        graphdef, params, tokens, positions, prompt_len=P, num_chunks=2, chunk=4
    )
    # The first group has no signal (all equal); the others are mixed.
    rewards = np.asarray([[1, 1, 1, 1], [1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 1]], np.float32)
    return Rollout(
        tokens_bt=tokens,
        positions_bt=positions,
        mask_bn=mask,
        sampler_logprobs_bn=logp * mask,
        old_logprobs_bn=logp,
        ref_logprobs_bn=logp - 0.01,
        rewards_pg=jnp.asarray(rewards),
        group_mask_p=jnp.ones((PROMPTS,)),
    )


def test_rollout_logprobs_equal_teacher_forced_logprobs():
    model = create_model(CFG, seed=0)
    rollout = _rollout(model)
    for row in range(3):
        valid = np.asarray(rollout.positions_bt[row]) >= 0
        seq = jnp.asarray(np.asarray(rollout.tokens_bt[row])[valid][None])
        logp, _ = token_logprobs(model, seq)
        n = int(rollout.mask_bn[row].sum())
        np.testing.assert_allclose(rollout.old_logprobs_bn[row, :n], logp[0, -n:], atol=2e-5)


def _run_update(model, rollout, *, microbatches, aggregation, epochs=1, minibatches=1):
    graphdef, params = nnx.split(model)
    params = jax.tree.map(jnp.copy, params)
    tx = optax.sgd(0.1)
    loss = LossConfig(aggregation=aggregation, norm_len=N, kl_coef=0.1, entropy_coef=0.01)
    opts = UpdateOptions(
        loss=loss, epochs=epochs, num_minibatches=minibatches, num_microbatches=microbatches,
        logprob_chunk=4,
    )  # fmt: skip
    opt_state = tx.init(params)
    return update(
        graphdef, tx, params, opt_state, rollout, jax.random.key(0), opts=opts, prompt_len=P
    )


@pytest.mark.parametrize(
    "aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
)
def test_gradient_accumulation_equals_one_big_batch(aggregation):
    model = create_model(CFG, seed=1)
    # A dynamic-sampling filler group: its rows count in no token mean, but in Dr. GRPO's
    # constant normaliser (every row), so each microbatch weighs by its rows there.
    rollout = _rollout(model, seed=1)._replace(group_mask_p=jnp.asarray([1.0, 0.0, 1.0, 1.0]))
    one, _, m1 = _run_update(model, rollout, microbatches=1, aggregation=aggregation)
    four, _, m4 = _run_update(model, rollout, microbatches=4, aggregation=aggregation)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, atol=2e-6)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)


def _np_k3(logp, ref, clamp=None):
    kl = np.exp(ref - logp) - 1.0 - (ref - logp)
    return kl if clamp is None else np.clip(kl, -clamp, clamp)


def _np_reward_to_go_advantages(rewards_pg, kl_bn, mask_bn, group_mask_p, *, coef, gamma, baseline):
    """REINFORCE++ in float64: per-token reward -coef * kl_t plus the (group-centred) verifier
    reward on the last token, reward-to-go, whitened over the counted tokens of real groups."""
    r = rewards_pg - rewards_pg.mean(1, keepdims=True) if baseline else rewards_pg
    mask = mask_bn * np.repeat(group_mask_p, rewards_pg.shape[1])[:, None]
    returns = np.zeros(mask.shape)
    for b, reward in enumerate(r.reshape(-1)):
        running = 0.0
        times = np.flatnonzero(mask[b])
        for k, t in enumerate(times[::-1]):
            running = -coef * kl_bn[b, t] + (reward if k == 0 else 0.0) + gamma * running
            returns[b, t] = running
    counted = returns[mask > 0]
    return np.where(mask > 0, (returns - counted.mean()) / (counted.std() + 1e-6), 0.0)


def test_on_policy_update_is_reinforce_with_group_baseline():
    """One minibatch, on-policy: ratio 1, nothing clipped, and the SGD step equals the gradient
    of the plain policy loss recomputed outside the update. (The other estimators reach the
    update through the same advantages array; their advantages are checked below and their
    on-policy gradients in test_rl_gradients.)"""
    model = create_model(CFG, seed=2)
    rollout = _rollout(model, seed=2)
    new_params, _, metrics = _run_update(model, rollout, microbatches=1, aggregation="token_mean")
    assert metrics["clip_frac_low"] == 0 and metrics["clip_frac_high"] == 0
    np.testing.assert_allclose(metrics["ratio_mean"], 1.0, atol=1e-6)
    assert metrics["adv/zero_signal_groups"] == 1

    graphdef, params = nnx.split(model)
    rewards = np.asarray(rollout.rewards_pg, np.float64)
    centered = rewards - rewards.mean(1, keepdims=True)
    std = rewards.std(1, ddof=1, keepdims=True)
    adv = np.where(std > 0, centered / (std + 1e-6), 0.0).reshape(-1)

    def loss_fn(p):
        m = nnx.merge(graphdef, p)
        hidden = m.hidden_states(rollout.tokens_bt, rollout.positions_bt)
        logits = (hidden[:, P - 1 : -1] @ m.head_weight()).astype(jnp.float32)
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, rollout.tokens_bt[:, P:, None], -1)[..., 0]
        ent = -jnp.sum(jnp.exp(logp_all) * logp_all, -1)
        mask = rollout.mask_bn
        return policy_loss(
            logp, jax.lax.stop_gradient(logp), jnp.asarray(adv, jnp.float32)[:, None] * mask,
            mask, config=LossConfig(kl_coef=0.1, entropy_coef=0.01),
            ref_logprobs_bt=rollout.ref_logprobs_bn, entropy_bt=ent,
        )[0]  # fmt: skip

    grads = jax.jit(jax.grad(loss_fn))(params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_epochs_and_minibatches_take_several_optimizer_steps():
    model = create_model(CFG, seed=3)
    rollout = _rollout(model, seed=3)
    graphdef, params = nnx.split(model)
    params = jax.tree.map(jnp.copy, params)
    tx = optax.chain(optax.scale_by_adam(), optax.scale(-1e-3))
    opts = UpdateOptions(loss=LossConfig(), epochs=2, num_minibatches=2, logprob_chunk=4)
    opt_state = tx.init(params)
    _, opt_state, metrics = update(
        graphdef, tx, params, opt_state, rollout, jax.random.key(0), opts=opts, prompt_len=P
    )
    assert int(opt_state[0].count) == 4
    # Later minibatches are off-policy: their ratios move away from 1.
    assert metrics["ratio_max"] > 1.0


def _numpy_gae(values, rewards, mask, gamma, lam):
    adv = np.zeros_like(values)
    for b in range(values.shape[0]):
        idx = np.flatnonzero(mask[b])
        next_value, next_adv = 0.0, 0.0
        for t in idx[::-1]:
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_adv = delta + gamma * lam * next_adv
            adv[b, t], next_value = next_adv, values[b, t]
    return adv


def test_ppo_advantages_are_whitened_gae_of_the_outcome_reward():
    model = create_model(CFG.replace(value_head=True), seed=5)
    rollout = _rollout(model, seed=5)
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda x: x + 0.01, params)  # a non-zero value head
    _, values = rollout_logprobs(
        graphdef, params, rollout.tokens_bt, rollout.positions_bt, prompt_len=P, num_chunks=1,
        chunk=4, with_values=True,
    )  # fmt: skip
    rollout = rollout._replace(old_values_bn=values)
    opts = UpdateOptions(loss=LossConfig(), estimator="gae", gamma=0.99, lam=0.9)
    adv, returns, _ = rollout_advantages(rollout, opts)
    mask = np.asarray(rollout.mask_bn, np.float64)
    rewards = np.zeros_like(mask)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    rewards[np.arange(len(last)), last] = np.asarray(rollout.rewards_pg).reshape(-1)
    raw = _numpy_gae(np.asarray(values, np.float64) * mask, rewards, mask, 0.99, 0.9)
    m = mask > 0
    expected = (raw - raw[m].mean()) / (raw[m].std() + 1e-6) * mask
    np.testing.assert_allclose(adv, expected, atol=1e-4)
    np.testing.assert_allclose(returns, (raw + np.asarray(values) * mask) * mask, atol=1e-5)


def test_ppo_update_trains_the_shared_value_head():
    model = create_model(CFG.replace(value_head=True), seed=6)
    graphdef, params = nnx.split(model)
    rollout = _rollout(model, seed=6)
    rollout = rollout._replace(old_values_bn=jnp.zeros_like(rollout.old_logprobs_bn))
    tx = optax.adam(3e-3)
    opts = UpdateOptions(
        loss=LossConfig(), estimator="gae", vf_coef=1.0, vf_clip=None, logprob_chunk=4
    )
    params = jax.tree.map(jnp.copy, params)
    opt_state = tx.init(params)
    losses = []
    for i in range(6):
        params, opt_state, metrics = update(
            graphdef, tx, params, opt_state, rollout, jax.random.key(i), opts=opts, prompt_len=P
        )
        losses.append(float(metrics["vf_loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert float(jnp.abs(params["value_head"][...]).sum()) > 0


def test_ppo_update_with_a_separate_critic_trains_only_the_critic_on_value_loss():
    model = create_model(CFG.replace(value_head=True, separate_critic=True), seed=7)
    model.value_head.set_value(jnp.full_like(model.value_head.get_value(), 0.1))
    graphdef, params = nnx.split(model)
    rollout = _rollout(model, seed=7)
    rollout = rollout._replace(old_values_bn=jnp.zeros_like(rollout.old_logprobs_bn))
    # Equal rewards: zero advantages, so only the value loss moves any weight.
    rollout = rollout._replace(rewards_pg=jnp.ones_like(rollout.rewards_pg))
    tx = optax.sgd(1e-2)
    opts = UpdateOptions(
        loss=LossConfig(), estimator="gae", vf_coef=1.0, vf_clip=None, logprob_chunk=4
    )
    before = jax.tree.map(jnp.copy, params)
    after, _, metrics = update(
        graphdef, tx, jax.tree.map(jnp.copy, params), tx.init(params), rollout,
        jax.random.key(0), opts=opts, prompt_len=P,
    )  # fmt: skip
    moved = lambda name: float(  # noqa: E731
        sum(
            jnp.abs(a - b).sum()
            for a, b in zip(jax.tree.leaves(after[name]), jax.tree.leaves(before[name]))
        )
    )
    assert metrics["vf_loss"] > 0
    assert moved("critic_layers") > 0 and moved("value_head") > 0
    assert moved("layers") == 0 and moved("embed") == 0


# ----------------------------------------------------------------------------------------------
# Advantages and their stats inside the update, on a synthetic rollout (no model needed).
# ----------------------------------------------------------------------------------------------

# Group 0 all equal, group 2 all equal but a dynamic-sampling filler, groups 1 and 3 mixed.
STATS_REWARDS_PG = np.asarray(
    [[1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0.5]], np.float64
)
STATS_GROUP_MASK_P = np.asarray([1.0, 1.0, 0.0, 1.0])


def _synthetic_rollout(seed, *, with_values=False):
    rng = np.random.default_rng(seed)
    rows = PROMPTS * G
    lengths = rng.integers(1, N + 1, size=rows)
    mask = (np.arange(N)[None] < lengths[:, None]).astype(np.float32)
    old = np.log(rng.uniform(0.05, 0.95, size=(rows, N)))
    ref = old + rng.normal(scale=0.5, size=(rows, N))
    zeros_bt = jnp.zeros((rows, P + N), jnp.int32)
    return Rollout(
        tokens_bt=zeros_bt,
        positions_bt=zeros_bt,
        mask_bn=jnp.asarray(mask),
        sampler_logprobs_bn=jnp.asarray(old, jnp.float32),
        old_logprobs_bn=jnp.asarray(old, jnp.float32),
        ref_logprobs_bn=jnp.asarray(ref, jnp.float32),
        rewards_pg=jnp.asarray(STATS_REWARDS_PG, jnp.float32),
        group_mask_p=jnp.asarray(STATS_GROUP_MASK_P, jnp.float32),
        old_values_bn=jnp.asarray(rng.normal(size=(rows, N)), jnp.float32) if with_values else None,
    )


_advantages_jit = jax.jit(rollout_advantages, static_argnums=1)


@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_update_advantages_are_whitened_reward_to_go_with_kl(estimator):
    rollout = _synthetic_rollout(10)
    clamp = 0.3  # binds on part of the tokens: k3 of log-ratios with std 0.5
    opts = UpdateOptions(
        loss=LossConfig(kl_coef=0.0, kl_clamp=clamp), estimator=estimator, gamma=0.9,
        kl_in_reward_coef=0.2,
    )  # fmt: skip
    adv, returns, stats = _advantages_jit(rollout, opts)
    assert returns is None
    old, ref = (
        np.asarray(x, np.float64) for x in (rollout.old_logprobs_bn, rollout.ref_logprobs_bn)
    )
    mask = np.asarray(rollout.mask_bn, np.float64)
    kl = _np_k3(old, ref, clamp)
    assert 0 < np.mean(_np_k3(old, ref)[mask > 0] > clamp) < 1
    expected = _np_reward_to_go_advantages(
        STATS_REWARDS_PG, kl, mask, STATS_GROUP_MASK_P, coef=0.2, gamma=0.9,
        baseline=estimator == "reinforce_pp_baseline",
    )  # fmt: skip
    np.testing.assert_allclose(adv, expected, rtol=1e-4, atol=1e-5)
    counted = (mask * np.repeat(STATS_GROUP_MASK_P, G)[:, None]) > 0
    np.testing.assert_allclose(stats["kl_in_reward"], kl[counted].mean(), rtol=1e-5)


def test_grpo_with_kl_in_reward_sums_the_clamped_kl_and_uses_the_std_ddof():
    rollout = _synthetic_rollout(11)
    opts = UpdateOptions(
        loss=LossConfig(kl_coef=0.0, kl_clamp=0.3), kl_in_reward_coef=0.2, adv_std_ddof=0
    )
    adv, _, _ = _advantages_jit(rollout, opts)
    old, ref = (
        np.asarray(x, np.float64) for x in (rollout.old_logprobs_bn, rollout.ref_logprobs_bn)
    )
    mask = np.asarray(rollout.mask_bn, np.float64)
    shaped = STATS_REWARDS_PG - 0.2 * (_np_k3(old, ref, 0.3) * mask).sum(1).reshape(PROMPTS, G)
    centered = shaped - shaped.mean(1, keepdims=True)
    expected = centered / (shaped.std(1, ddof=0, keepdims=True) + 1e-6)
    expected = expected * STATS_GROUP_MASK_P[:, None]
    np.testing.assert_allclose(adv, expected.reshape(-1)[:, None] * mask, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("estimator", "kl_in_reward_coef"),
    [("grpo", 0.0), ("grpo", 0.5), ("rloo", 0.0), ("reinforce_pp", 0.5),
     ("reinforce_pp_baseline", 0.0), ("gae", 0.0), ("gae", 0.5)],
)  # fmt: skip
def test_reward_stats_use_raw_rewards_of_real_groups_in_every_path(estimator, kl_in_reward_coef):
    rollout = _synthetic_rollout(12, with_values=estimator == "gae")
    opts = UpdateOptions(
        loss=LossConfig(kl_coef=0.0), estimator=estimator, kl_in_reward_coef=kl_in_reward_coef
    )
    _, _, stats = _advantages_jit(rollout, opts)
    real = STATS_REWARDS_PG[STATS_GROUP_MASK_P > 0]
    # Group 0 is the one real all-equal group; the all-equal filler group 2 is not counted.
    np.testing.assert_allclose(stats["zero_signal_groups"], 1.0)
    np.testing.assert_allclose(stats["zero_signal_frac"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(stats["reward_mean"], real.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["reward_std"], real.std(), rtol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"loss": LossConfig(kl_coef=1e-3), "kl_in_reward_coef": 0.1},
            r"rl.kl_in_reward_coef=0.1 and rl.loss.kl_coef=0.001 would both penalise",
        ),
        ({"loss": LossConfig(), "estimator": "ppo"}, "unknown rl.estimator 'ppo'; valid: 'grpo', "),
        ({"loss": LossConfig(), "gamma": 0.99}, r"rl.gamma=0.99 has no effect with rl.estimator"),
        ({"loss": LossConfig(), "gamma": 0.0}, r"rl.gamma must be in \(0, 1\]"),
        ({"loss": LossConfig(), "lam": 0.95}, "rl.lam=0.95 has no effect"),
        ({"loss": LossConfig(), "adv_std_ddof": -1}, "rl.adv_std_ddof must be >= 0"),
        ({"loss": LossConfig(), "kl_in_reward_coef": -0.1}, "rl.kl_in_reward_coef must be >= 0"),
    ],
)
def test_update_options_reject_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        UpdateOptions(**options)
    # The same discount is accepted where it applies.
    UpdateOptions(loss=LossConfig(), estimator="reinforce_pp", gamma=0.99)
