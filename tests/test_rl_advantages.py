"""Tests of the advantage estimators, token broadcasting, KL reward shaping, GAE and the
value loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zero_rl.rl import (
    GROUP_ESTIMATORS,
    broadcast_to_tokens,
    compute_advantages,
    discounted_returns,
    gae,
    kl_penalty_token_rewards,
    last_token_mask,
    masked_whiten,
    reinforce_pp_advantages,
    reinforce_pp_token_advantages,
    reward_stats,
    sequence_mean_bt,
    value_loss,
    zero_signal_groups,
)

REWARDS_PG = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])

# Worked by hand for REWARDS_PG (7 of 12 rewards are 1).
#   grpo, group 0: mean 1/2, unbiased std sqrt(1/3)      -> +-sqrt(3)/2
#         group 2: mean 1/4, unbiased std sqrt(0.75/3)=1/2 -> 3/2, -1/2
#   rloo, group 0: 1 - 1/3, 0 - 2/3;  group 2: 1 - 0, 0 - 1/3
#   reinforce_pp: batch mean 7/12, population std sqrt(35)/12 -> 5/sqrt(35), -7/sqrt(35)
#   reinforce_pp_baseline: group-centred values / sqrt(mean of their squares = 1.75/12)
_S3 = math.sqrt(3.0) / 2
_C = 1.0 / math.sqrt(1.75 / 12)
HAND_COMPUTED = {
    "grpo": [[_S3, -_S3, -_S3, _S3], [0, 0, 0, 0], [1.5, -0.5, -0.5, -0.5]],
    "dr_grpo": [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [0.75, -0.25, -0.25, -0.25]],
    "rloo": [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0, 0, 0, 0], [1.0, -1 / 3, -1 / 3, -1 / 3]],
    "reinforce_pp": [
        [5 / math.sqrt(35), -7 / math.sqrt(35), -7 / math.sqrt(35), 5 / math.sqrt(35)],
        [5 / math.sqrt(35)] * 4,
        [5 / math.sqrt(35), -7 / math.sqrt(35), -7 / math.sqrt(35), -7 / math.sqrt(35)],
    ],
    "reinforce_pp_baseline": [
        [0.5 * _C, -0.5 * _C, -0.5 * _C, 0.5 * _C],
        [0, 0, 0, 0],
        [0.75 * _C, -0.25 * _C, -0.25 * _C, -0.25 * _C],
    ],
}


def test_every_estimator_has_a_hand_computed_case():
    assert set(HAND_COMPUTED) == set(GROUP_ESTIMATORS)


@pytest.mark.parametrize("estimator", GROUP_ESTIMATORS)
def test_estimators_by_hand(estimator):
    advantages_pg, stats = compute_advantages(jnp.asarray(REWARDS_PG), estimator=estimator)
    np.testing.assert_allclose(advantages_pg, HAND_COMPUTED[estimator], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["zero_signal_groups"], 1.0)
    np.testing.assert_allclose(stats["zero_signal_frac"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(stats["reward_mean"], 7 / 12, rtol=1e-6)
    np.testing.assert_allclose(stats["reward_std"], math.sqrt(35) / 12, rtol=1e-6)


def _np_advantages(rewards, estimator, eps, ddof):
    """Float64 reference written from each paper's definition, one group at a time."""
    out = np.zeros_like(rewards)
    for p, r in enumerate(rewards):
        if np.all(r == r[0]) and estimator != "reinforce_pp":
            continue
        if estimator == "grpo":
            out[p] = (r - r.mean()) / (r.std(ddof=ddof) + eps)
        elif estimator == "dr_grpo":
            out[p] = r - r.mean()
        elif estimator == "rloo":
            out[p] = [r[i] - np.delete(r, i).mean() for i in range(len(r))]
        elif estimator == "reinforce_pp":
            out[p] = (r - rewards.mean()) / (rewards.std() + eps)
        else:
            out[p] = r - r.mean()
    if estimator == "reinforce_pp_baseline":
        out = (out - out.mean()) / (out.std() + eps)
    return out


@pytest.mark.parametrize("estimator", GROUP_ESTIMATORS)
@pytest.mark.parametrize("ddof", [0, 1])
def test_estimators_match_float64_reference(estimator, ddof):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(6, 5))
    rewards[2] = 0.7  # an all-equal group of non-integer rewards
    rewards[4, :3] = 1.0
    got, _ = jax.jit(compute_advantages, static_argnames=("estimator", "eps", "std_ddof"))(
        jnp.asarray(rewards, jnp.float32), estimator=estimator, eps=1e-4, std_ddof=ddof
    )
    expected = _np_advantages(rewards, estimator, 1e-4, ddof)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"])
def test_all_equal_groups_get_exactly_zero(estimator):
    # 0.1 is not exact in binary: the group mean can differ from the rewards by an ulp, which the
    # GRPO std division (std ~ 0, eps 1e-6) would turn into a large, meaningless advantage.
    rewards_pg = jnp.asarray([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [1.0, 0.0, 1.0]])
    advantages_pg, stats = compute_advantages(rewards_pg, estimator=estimator)
    assert np.all(np.asarray(advantages_pg[:2]) == 0.0)
    assert np.any(np.asarray(advantages_pg[2]) != 0.0)
    np.testing.assert_array_equal(zero_signal_groups(rewards_pg), [True, True, False])
    np.testing.assert_allclose(stats["zero_signal_groups"], 2.0)


def test_group_mask_excludes_padding_prompts():
    rewards = np.array([[1.0, 0.0, 1.0], [5.0, 5.0, 5.0], [0.0, 0.0, 1.0]])
    for estimator in GROUP_ESTIMATORS:
        got, stats = compute_advantages(
            jnp.asarray(rewards), estimator=estimator, group_mask_p=jnp.array([1.0, 0.0, 1.0])
        )
        expected, expected_stats = compute_advantages(
            jnp.asarray(rewards[[0, 2]]), estimator=estimator
        )
        np.testing.assert_allclose(np.asarray(got)[[0, 2]], expected, rtol=1e-6, err_msg=estimator)
        np.testing.assert_array_equal(got[1], 0.0)
        for name in stats:
            np.testing.assert_allclose(stats[name], expected_stats[name], rtol=1e-6)


@pytest.mark.parametrize(
    ("rewards", "kwargs", "message"),
    [
        (
            np.zeros((2, 3)),
            {"estimator": "ppo"},
            "unknown advantage estimator 'ppo'; valid: 'grpo', ",
        ),
        (np.zeros((2, 1)), {"estimator": "grpo"}, "needs a group of at least 2 samples; got 1"),
        (np.zeros((2, 1)), {"estimator": "rloo"}, "rloo needs at least 2 samples"),
        (np.zeros(3), {}, r"must be \[prompts, group\]"),
        (np.zeros((2, 3)), {"group_mask_p": jnp.ones(3)}, r"group_mask_p must be \[2\]"),
    ],
)
def test_bad_inputs_are_named(rewards, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_advantages(jnp.asarray(rewards), **kwargs)


# ----------------------------------------------------------------------------------------------
# Tokens: broadcasting, last tokens, packed segments.
# ----------------------------------------------------------------------------------------------

# Two rows: [p p r r r 0] and [p r r 0 0 0] padded; packed into one row with segment ids.
PADDED_MASK_BT = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], np.float32)
PACKED_MASK_BT = np.array([[0, 0, 1, 1, 1, 0, 1, 1, 0, 0]], np.float32)
PACKED_SEGMENTS_BT = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0]], np.int32)
PADDED_TIMES = [(0, np.array([2, 3, 4])), (1, np.array([1, 2]))]
PACKED_TIMES = [(0, np.array([2, 3, 4])), (0, np.array([6, 7]))]


def _per_sequence(x_bt, positions):
    return [np.asarray(x_bt)[row, times] for row, times in positions]


def test_broadcast_to_tokens_padded_and_packed():
    values_pg = jnp.array([[2.0, -3.0]])
    padded = broadcast_to_tokens(values_pg, jnp.asarray(PADDED_MASK_BT))
    np.testing.assert_array_equal(padded, [[0, 0, 2, 2, 2, 0], [0, -3, -3, 0, 0, 0]])
    sample_ids_bt = jnp.asarray(np.maximum(PACKED_SEGMENTS_BT - 1, 0))
    packed = broadcast_to_tokens(
        values_pg, jnp.asarray(PACKED_MASK_BT), sample_ids_bt=sample_ids_bt
    )
    np.testing.assert_array_equal(packed, [[0, 0, 2, 2, 2, 0, -3, -3, 0, 0]])
    with pytest.raises(ValueError, match="pass sample_ids_bt"):
        broadcast_to_tokens(jnp.ones((2, 2)), jnp.asarray(PADDED_MASK_BT))


def test_last_token_and_sequence_mean_padded_and_packed():
    np.testing.assert_array_equal(
        last_token_mask(jnp.asarray(PADDED_MASK_BT)), [[0, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]]
    )
    got = last_token_mask(jnp.asarray(PACKED_MASK_BT), jnp.asarray(PACKED_SEGMENTS_BT))
    np.testing.assert_array_equal(got, [[0, 0, 0, 0, 1, 0, 0, 1, 0, 0]])
    x_bt = np.arange(10, dtype=np.float32)[None]
    got = sequence_mean_bt(x_bt, PACKED_MASK_BT, jnp.asarray(PACKED_SEGMENTS_BT))
    np.testing.assert_allclose(got[0, [0, 4, 5, 7, 9]], [3.0, 3.0, 6.5, 6.5, 0.0])


def test_kl_penalty_token_rewards_by_hand():
    rewards_bt = broadcast_to_tokens(jnp.array([[1.0, 0.5]]), jnp.asarray(PADDED_MASK_BT))
    kl_bt = jnp.arange(12, dtype=jnp.float32).reshape(2, 6) / 10
    got = kl_penalty_token_rewards(rewards_bt, kl_bt, jnp.asarray(PADDED_MASK_BT), kl_coef=0.5)
    expected = [[0, 0, -0.1, -0.15, 1.0 - 0.2, 0], [0, -0.35, 0.5 - 0.4, 0, 0, 0]]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_discounted_returns_by_hand():
    rewards_bt = jnp.array([[9.0, 0.0, 2.0, 0.0, 1.0, 9.0]])
    mask_bt = jnp.array([[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    got = discounted_returns(rewards_bt, mask_bt, gamma=0.5)
    np.testing.assert_allclose(got, [[0, 1.0 + 0.125, 2.0 + 0.25, 0.5, 1.0, 0]])


# ----------------------------------------------------------------------------------------------
# GAE against a Python loop; REINFORCE++ token advantages against NumPy.
# ----------------------------------------------------------------------------------------------


def _loop_gae(values, rewards, counted_times, gamma, lam):
    """GAE over the counted tokens of one sequence; the state after the last one is terminal."""
    advantages, next_value, next_advantage = {}, 0.0, 0.0
    for t in reversed(counted_times):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        next_value = values[t]
        advantages[t] = next_advantage
    return np.array([advantages[t] for t in counted_times])


def _random_gae_layouts(rng):
    """Three sequences (one with a masked hole) laid out padded and packed into one row."""
    prompt_lens, responses = [2, 1, 3], [rng.normal(size=(2, n)) for n in (4, 3, 5)]
    holes = [set(), {1}, set()]
    padded_t, packed_t = 10, 3 + sum(p + r.shape[1] for p, r in zip(prompt_lens, responses))
    padded = {k: rng.normal(size=(3, padded_t)) for k in ("values", "rewards")}
    padded["mask"], padded_positions = np.zeros((3, padded_t)), []
    packed = {k: rng.normal(size=(1, packed_t)) for k in ("values", "rewards")}
    packed["mask"], packed["segments"] = np.zeros((1, packed_t)), np.zeros((1, packed_t), np.int32)
    packed_positions, start = [], 0
    for i, (prompt_len, response) in enumerate(zip(prompt_lens, responses)):
        n = response.shape[1]
        counted = [j for j in range(n) if j not in holes[i]]
        for layout, row, offset, positions in (
            (padded, i, prompt_len, padded_positions),
            (packed, 0, start + prompt_len, packed_positions),
        ):
            times = offset + np.arange(n)
            layout["values"][row, times], layout["rewards"][row, times] = response
            layout["mask"][row, times[counted]] = 1.0
            positions.append((row, times[counted]))
        packed["segments"][0, start : start + prompt_len + n] = i + 1
        start += prompt_len + n
    return padded, padded_positions, packed, packed_positions


def test_gae_matches_python_loop_padded_and_packed():
    rng = np.random.default_rng(1)
    gamma, lam = 0.9, 0.8
    padded, padded_positions, packed, packed_positions = _random_gae_layouts(rng)
    padded_adv, padded_ret = jax.jit(gae)(
        padded["values"], padded["rewards"], padded["mask"], gamma, lam
    )
    packed_adv, packed_ret = jax.jit(gae)(
        packed["values"],
        packed["rewards"],
        packed["mask"],
        gamma,
        lam,
        segment_ids_bt=packed["segments"],
    )
    for i, (row, times) in enumerate(padded_positions):
        expected = _loop_gae(padded["values"][row], padded["rewards"][row], times, gamma, lam)
        np.testing.assert_allclose(padded_adv[row, times], expected, rtol=1e-5, atol=1e-6)
        packed_row, packed_times = packed_positions[i]
        np.testing.assert_allclose(
            packed_adv[packed_row, packed_times], expected, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            padded_ret[row, times], expected + padded["values"][row, times], rtol=1e-5, atol=1e-6
        )
    for adv, ret, mask in (
        (padded_adv, padded_ret, padded["mask"]),
        (packed_adv, packed_ret, packed["mask"]),
    ):
        np.testing.assert_array_equal(np.asarray(adv)[mask == 0], 0.0)
        np.testing.assert_array_equal(np.asarray(ret)[mask == 0], 0.0)


def test_gae_ignores_non_finite_values_outside_the_mask():
    rng = np.random.default_rng(4)
    padded, padded_positions, _, _ = _random_gae_layouts(rng)
    clean_adv, clean_ret = gae(padded["values"], padded["rewards"], padded["mask"], 0.9, 0.8)
    values, rewards = padded["values"].copy(), padded["rewards"].copy()
    values[padded["mask"] == 0], rewards[padded["mask"] == 0] = np.nan, -np.inf
    adv, ret = gae(values, rewards, padded["mask"], 0.9, 0.8)
    np.testing.assert_array_equal(adv, clean_adv)
    np.testing.assert_array_equal(ret, clean_ret)


def test_gae_with_lambda_one_is_return_minus_value():
    rng = np.random.default_rng(2)
    values_bt, rewards_bt = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    mask_bt = np.ones((2, 6))
    advantages_bt, _ = gae(values_bt, rewards_bt, mask_bt, 0.7, 1.0)
    returns_bt = discounted_returns(rewards_bt, mask_bt, gamma=0.7)
    np.testing.assert_allclose(advantages_bt, returns_bt - values_bt, rtol=1e-5, atol=1e-6)


def test_reinforce_pp_token_advantages_match_numpy():
    rng = np.random.default_rng(3)
    padded, padded_positions, packed, packed_positions = _random_gae_layouts(rng)
    gamma, eps = 0.95, 1e-6
    expected_returns = [
        _loop_gae(np.zeros_like(padded["rewards"][row]), padded["rewards"][row], times, gamma, 1.0)
        for row, times in padded_positions
    ]
    all_returns = np.concatenate(expected_returns)
    expected = [(g - all_returns.mean()) / (all_returns.std() + eps) for g in expected_returns]
    padded_adv = reinforce_pp_token_advantages(
        padded["rewards"], padded["mask"], gamma=gamma, eps=eps
    )
    packed_adv = reinforce_pp_token_advantages(
        packed["rewards"], packed["mask"], gamma=gamma, eps=eps, segment_ids_bt=packed["segments"]
    )
    for got, want in zip(_per_sequence(padded_adv, padded_positions), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(_per_sequence(packed_adv, packed_positions), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reward_stats_count_only_real_groups():
    rewards_pg = jnp.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [7.0, 7.0]])
    stats = reward_stats(rewards_pg, jnp.array([1.0, 1.0, 1.0, 0.0]))
    # Real rewards 1, 1, 1, 0, 0, 0: mean 1/2, std 1/2; groups 0 and 2 are all equal.
    np.testing.assert_allclose(
        [stats[k] for k in ("reward_mean", "reward_std", "zero_signal_groups", "zero_signal_frac")],
        [0.5, 0.5, 2.0, 2 / 3],
        rtol=1e-6,
    )


# Two prompts x two samples; responses of 2, 1, 1 and 2 tokens in 3 columns; KL 0.1 per token.
RPP_REWARDS_PG = np.array([[1.0, 0.0], [1.0, 1.0]])
RPP_MASK_BT = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)


# Jitted: op-by-op dispatch of the scan and reductions costs more than one compile.
_reinforce_pp_jit = jax.jit(
    reinforce_pp_advantages, static_argnames=("estimator", "kl_coef", "gamma", "eps")
)


def _whitened(returns_bt, mask_bt):
    counted = np.asarray(returns_bt)[mask_bt > 0]
    return np.where(mask_bt > 0, (returns_bt - counted.mean()) / counted.std(), 0.0)


@pytest.mark.parametrize(
    ("estimator", "returns_bt"),
    [
        # Token rewards -0.1 and, last token, r - 0.1; returns with gamma 0.5:
        #   row 0: -0.1 + 0.5 * 0.9 = 0.35, 0.9;  rows 1, 2: -0.1, 0.9;  row 3: 0.35, 0.9.
        ("reinforce_pp", [[0.35, 0.9, 0], [-0.1, 0, 0], [0, 0.9, 0], [0.35, 0.9, 0]]),
        # Group-centred rewards 0.5, -0.5 and (all equal) 0, 0:
        #   row 0: -0.1 + 0.5 * 0.4 = 0.1, 0.4;  row 1: -0.6;  row 2: -0.1;  row 3: -0.15, -0.1.
        ("reinforce_pp_baseline", [[0.1, 0.4, 0], [-0.6, 0, 0], [0, -0.1, 0], [-0.15, -0.1, 0]]),
    ],
)
def test_reinforce_pp_advantages_by_hand(estimator, returns_bt):
    kl_bt = jnp.where(RPP_MASK_BT > 0, 0.1, jnp.nan)  # junk outside the mask is ignored
    got = _reinforce_pp_jit(
        jnp.asarray(RPP_REWARDS_PG), jnp.asarray(RPP_MASK_BT), estimator=estimator, kl_bt=kl_bt,
        kl_coef=1.0, gamma=0.5, eps=0.0,
    )  # fmt: skip
    expected = _whitened(np.asarray(returns_bt), RPP_MASK_BT)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _np_reinforce_pp(rewards_pg, kl_bt, mask_bt, group_mask_p, kl_coef, gamma, baseline, eps):
    """Float64 REINFORCE++ per-token advantages, one response at a time."""
    r = rewards_pg - rewards_pg.mean(1, keepdims=True) if baseline else rewards_pg
    mask_bt = mask_bt * np.repeat(group_mask_p, rewards_pg.shape[1])[:, None]
    returns_bt = np.zeros(mask_bt.shape)
    for b, reward in enumerate(r.reshape(-1)):
        times = np.flatnonzero(mask_bt[b])
        token_rewards = -kl_coef * kl_bt[b, times]
        if len(times):
            token_rewards[-1] += reward
        running = 0.0
        for j in reversed(range(len(times))):
            running = token_rewards[j] + gamma * running
            returns_bt[b, times[j]] = running
    counted = returns_bt[mask_bt > 0]
    return np.where(mask_bt > 0, (returns_bt - counted.mean()) / (counted.std() + eps), 0.0)


@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_advantages_match_float64_reference(estimator):
    rng = np.random.default_rng(8)
    prompts, group, time = 4, 3, 6
    rewards_pg = rng.normal(size=(prompts, group))
    rewards_pg[1] = 0.3  # all equal: 0 reward under the baseline
    lengths = rng.integers(1, time + 1, size=prompts * group)
    mask_bt = (np.arange(time)[None] < lengths[:, None]).astype(np.float64)
    mask_bt[4, 0] = 0.0  # a masked hole inside a response
    kl_bt = rng.uniform(-0.2, 0.5, size=mask_bt.shape)
    group_mask_p = np.array([1.0, 1.0, 0.0, 1.0])  # a dynamic-sampling filler group
    got = _reinforce_pp_jit(
        jnp.asarray(rewards_pg, jnp.float32), jnp.asarray(mask_bt, jnp.float32),
        estimator=estimator, kl_bt=jnp.asarray(kl_bt, jnp.float32), kl_coef=0.3, gamma=0.9,
        eps=1e-6, group_mask_p=jnp.asarray(group_mask_p),
    )  # fmt: skip
    baseline = estimator == "reinforce_pp_baseline"
    expected = _np_reinforce_pp(rewards_pg, kl_bt, mask_bt, group_mask_p, 0.3, 0.9, baseline, 1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[6:9], 0.0)


@pytest.mark.parametrize("estimator", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_per_token_equals_per_sample_for_equal_lengths_without_kl(estimator):
    mask_bt = jnp.ones((12, 3))
    got = _reinforce_pp_jit(jnp.asarray(REWARDS_PG), mask_bt, estimator=estimator)
    per_sample_pg, _ = jax.jit(compute_advantages, static_argnames="estimator")(
        jnp.asarray(REWARDS_PG), estimator=estimator
    )
    np.testing.assert_allclose(got, broadcast_to_tokens(per_sample_pg, mask_bt), atol=1e-5)


def test_reinforce_pp_advantages_name_bad_inputs():
    rewards_pg, mask_bt = jnp.zeros((2, 2)), jnp.ones((4, 3))
    with pytest.raises(ValueError, match="unknown REINFORCE\\+\\+ estimator 'grpo'"):
        reinforce_pp_advantages(rewards_pg, mask_bt, estimator="grpo")
    with pytest.raises(ValueError, match=r"mask_bt has 3 rows but rewards_pg \(2, 2\) has 4"):
        reinforce_pp_advantages(rewards_pg, mask_bt[:3])
    with pytest.raises(ValueError, match="kl_coef=0.1 needs kl_bt"):
        reinforce_pp_advantages(rewards_pg, mask_bt, kl_coef=0.1)


def test_masked_whiten_by_hand():
    x = jnp.array([[1.0, 3.0, 100.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(masked_whiten(x, mask, eps=0.0), [[-1.0, 1.0, 0.0]])
    np.testing.assert_allclose(masked_whiten(x, mask, eps=0.0, shift_mean=False), [[1.0, 3.0, 0.0]])


def test_value_loss_by_hand():
    values_bt = jnp.array([[1.5, 0.9, 7.0]])
    old_values_bt = jnp.array([[1.0, 1.0, 0.0]])
    returns_bt = jnp.array([[2.0, 2.0, 0.0]])
    mask_bt = jnp.array([[1.0, 1.0, 0.0]])
    # Token 0: unclipped 0.25, clipped (1.2 - 2)^2 = 0.64 -> 0.32; token 1: 1.21 both -> 0.605.
    loss, m = value_loss(values_bt, old_values_bt, returns_bt, mask_bt, clip_range=0.2)
    np.testing.assert_allclose(loss, (0.32 + 0.605) / 2, rtol=1e-6)
    np.testing.assert_allclose(m["vf_clip_frac"], 0.5)
    loss, _ = value_loss(values_bt, old_values_bt, returns_bt, mask_bt, clip_range=None)
    np.testing.assert_allclose(loss, (0.125 + 0.605) / 2, rtol=1e-6)
    # Explained variance: residuals (-1, 1) have variance 1, returns (0, 4) variance 4.
    _, m = value_loss(
        jnp.array([[1.0, 3.0]]), jnp.array([[1.0, 3.0]]), jnp.array([[0.0, 4.0]]), jnp.ones((1, 2))
    )
    np.testing.assert_allclose(m["explained_variance"], 1.0 - 1.0 / 4.0)
    grad = jax.grad(lambda v: value_loss(v, old_values_bt, returns_bt, mask_bt)[0])(values_bt)
    # Token 0 is on the clipped branch (no gradient), token 1: d/dv 0.5 (v - 2)^2 / 2 = -0.55.
    np.testing.assert_allclose(grad, [[0.0, -0.55, 0.0]], rtol=1e-6)
