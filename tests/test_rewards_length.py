"""Length-aware rewards against hand-computed values: the cosine length reward, the group length
penalty on long correct responses, and how `shape_rewards` combines them with DAPO's."""

import math

import numpy as np
import pytest

from zero_rl.rewards import (
    RewardConfig,
    cosine_length_reward,
    group_length_penalty,
    overlong_penalty,
    shape_rewards,
)


def test_cosine_length_reward_by_hand():
    correct = np.array([True, True, True, True, False, False, False, True, False])
    lengths = np.array([0, 25, 50, 100, 0, 50, 100, 30, 30])
    truncated = np.array([False] * 7 + [True, True])
    got = cosine_length_reward(correct, lengths, truncated, max_len=100)
    # Paper defaults: correct 2 -> 1, wrong -10 -> 0, truncated -10.
    quarter = 1.0 + 1.0 * (1.0 + math.cos(math.pi / 4)) / 2  # 1.8535534
    np.testing.assert_allclose(got, [2.0, quarter, 1.5, 1.0, -10.0, -5.0, 0.0, -10.0, -10.0],
                               rtol=1e-6)  # fmt: skip
    assert got.dtype == np.float32


def test_cosine_length_reward_custom_ends_and_lengths_past_the_budget():
    got = cosine_length_reward(
        np.array([True, False]), np.array([300, 300]), np.array([False, False]), max_len=200,
        correct_short=1.0, correct_long=0.5, wrong_short=-1.0, wrong_long=-0.5, exceed=-2.0,
    )  # fmt: skip
    np.testing.assert_allclose(got, [0.5, -0.5])  # clipped at max_len: the long ends


def test_group_length_penalty_by_hand():
    correct = np.array([[True, True, False], [False, False, True], [True, True, True]])
    lengths = np.array([[10, 20, 30], [10, 20, 30], [7, 7, 7]])
    got = group_length_penalty(correct, lengths, coef=0.2)
    # lambda = 0.5 - (L - L_min) / (L_max - L_min): [0.5, 0, -0.5]; wrong rows keep min(0, .).
    np.testing.assert_allclose(
        got, [[0.1, 0.0, -0.1], [0.0, 0.0, -0.1], [0.0, 0.0, 0.0]], atol=1e-7
    )


def test_shape_rewards_combines_the_terms():
    config = RewardConfig(length_reward="cosine", length_penalty_coef=1.0, overlong_cache_len=20)
    correct = np.array([True, True, False, False])
    lengths = np.array([0, 100, 50, 100])
    truncated = np.array([False, False, False, True])
    got = shape_rewards(
        np.zeros(4, np.float32), correct, lengths, truncated, config=config,
        max_response_len=100, group_size=2,
    )  # fmt: skip
    cosine = [2.0, 1.0, -5.0, -10.0]
    penalty = [0.5, -0.5, 0.0, -0.5]
    overlong = overlong_penalty(lengths, max_response_len=100, cache_len=20)  # [0, -1, 0, -1]
    np.testing.assert_allclose(got, np.add(np.add(cosine, penalty), overlong), rtol=1e-6)
    # Off by default: the verifier's rewards pass through.
    plain = shape_rewards(
        np.array([1.0, 0.0], np.float32), correct[:2], lengths[:2], truncated[:2],
        config=RewardConfig(), max_response_len=100, group_size=2,
    )  # fmt: skip
    np.testing.assert_array_equal(plain, [1.0, 0.0])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: RewardConfig(length_reward="linear"), ValueError, "length_reward must be one of"),
        (lambda: RewardConfig(length_penalty_coef=-1), ValueError, "length_penalty_coef"),
        (lambda: cosine_length_reward(np.array([1]), np.array([3]), np.array([False]), max_len=4),
         TypeError, "correct must be bool"),
        (lambda: cosine_length_reward(np.array([True]), np.array([-3]), np.array([False]),
                                      max_len=4), ValueError, "non-negative integer"),
        (lambda: cosine_length_reward(np.array([True]), np.array([3]), np.array([False]),
                                      max_len=0), ValueError, "max_len must be > 0"),
        (lambda: group_length_penalty(np.array([True]), np.array([3])), ValueError,
         r"\[prompts, samples\]"),
        (lambda: shape_rewards(np.zeros(3), np.ones(3, bool), np.ones(3, int), np.zeros(3, bool),
                               config=RewardConfig(length_penalty_coef=1.0), max_response_len=4,
                               group_size=2), ValueError, "3 rows are not groups of 2"),
    ],
)  # fmt: skip
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
