"""Reward modes, RewardConfig, `score` batching and DAPO's overlong penalty."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from zero_rl.rewards import (
    RewardConfig,
    Verdict,
    VerifierPool,
    default_pool,
    overlong_penalty,
    reward_for,
    score,
)
from zero_rl.rewards import reward as reward_module


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(1, timeout_s=2.0) as pool:
        yield pool


# (response, gold, correct, boxed, correctness reward, format-aware reward).
RESPONSES = [
    (r"So the total is $\boxed{18}$.", "18", True, True, 1.0, 1.0),
    ("So the total is 18.\nThe answer is 18.", "18", True, False, 1.0, 0.5),
    (r"So the total is $\boxed{16}$.", "18", False, True, 0.0, -0.5),
    ("So the total is 16.\nThe answer is 16.", "18", False, False, 0.0, -1.0),
    ("I am not sure how to proceed with", "18", False, False, 0.0, -1.0),
    (r"Hence $\boxed{2\sqrt{2}}$.", r"\sqrt{8}", True, True, 1.0, 1.0),
    # The R1-Zero template: a closed <answer> tag ending the response is the format.
    ("<think>9 * 2 = 18</think> <answer> 18 </answer>", "18", True, True, 1.0, 1.0),
    ("<think>9 * 2 = 16</think> <answer> 16 </answer>", "18", False, True, 0.0, -0.5),
    ("<think>so the answer is 18.</think> <answer> 18", "18", True, False, 1.0, 0.5),
    ("<think>9 * 2</think> <answer> </answer>", "18", False, False, 0.0, -1.0),
]


@pytest.mark.parametrize("mode, column", [("correctness", 4), ("format_aware", 5)])
def test_score_modes(pool, mode, column):
    verdicts = score(
        [row[0] for row in RESPONSES],
        [row[1] for row in RESPONSES],
        config=RewardConfig(mode=mode),
        pool=pool,
    )
    for verdict, row in zip(verdicts, RESPONSES):
        assert isinstance(verdict, Verdict)
        assert (verdict.correct, verdict.boxed, verdict.reward) == (row[2], row[3], row[column])
        assert not verdict.timed_out
    assert verdicts[0].extracted == "18" and verdicts[4].extracted is None


def test_format_penalty_in_correctness_mode(pool):
    config = RewardConfig(format_penalty=0.25)
    verdicts = score(
        [row[0] for row in RESPONSES], [row[1] for row in RESPONSES], config=config, pool=pool
    )
    assert [v.reward for v in verdicts] == [1.0, 0.75, 0.0, -0.25, -0.25, 1.0] + [
        1.0,
        0.0,
        0.75,
        -0.25,
    ]


@pytest.mark.parametrize(
    "correct, boxed, expected",
    [(True, True, 2.0), (True, False, 0.25), (False, True, -0.75), (False, False, -3.0)],
)
def test_format_aware_values_are_configurable(correct, boxed, expected):
    config = RewardConfig(
        mode="format_aware",
        correct_boxed_reward=2.0,
        correct_unboxed_reward=0.25,
        wrong_boxed_reward=-0.75,
        no_answer_reward=-3.0,
    )
    assert reward_for(correct, boxed, config) == expected


def test_last_number_fallback_is_opt_in(pool):
    response = "She has 3 + 4 = 7 apples"
    assert not score([response], ["7"], pool=pool)[0].correct
    verdict = score([response], ["7"], config=RewardConfig(last_number_fallback=True), pool=pool)[0]
    assert verdict.correct and verdict.extracted == "7" and not verdict.boxed


def test_config_from_an_ml_collections_dict():
    reward = ml_collections.ConfigDict({"mode": "format_aware", "timeout_s": 3, "num_workers": 2})
    config = RewardConfig(**reward)
    assert (config.mode, config.timeout_s, config.num_workers) == ("format_aware", 3, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "correctness"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "binary"}, "mode must be one of"),
        ({"format_penalty": -1.0}, "format_penalty"),
        ({"mode": "format_aware", "format_penalty": 0.5}, "applies to mode=.correctness. only"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"rel_tol": -1e-4}, "rel_tol"),
        ({"num_workers": 0}, "num_workers"),
        ({"overlong_cache_len": -1}, "overlong"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardConfig(**kwargs)


# (raw gold as its dataset stores it, gold_format, a response that answers it).
RAW_GOLDS = [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18", None, r"$\boxed{18}$"),
    ("#### 18", "gsm8k", "The answer is 18."),
    ("18", "gsm8k", r"$\boxed{18}$"),
    (r"So the area is $\boxed{\frac{25}{2}}$.", "math", r"$\boxed{12.5}$"),
    (r"\frac{25}{2}", "math500", r"$\boxed{\dfrac{25}{2}}$"),
    (["$3$", "$-5$"], "olympiadbench", r"$\boxed{-5, 3}$"),
    (["$(1,1), (3,2)$"], "olympiadbench", r"$\boxed{(3,2)}$ and $\boxed{(1,1)}$"),
    (27.0, "amc23", r"$\boxed{27}$"),
    (27.0, None, r"$\boxed{27}$"),
    ("025", "aime24", r"$\boxed{25}$"),
]


def test_score_normalises_raw_golds(pool):
    for raw, gold_format, response in RAW_GOLDS:
        [verdict] = score([response], [raw], pool=pool, gold_format=gold_format)
        assert verdict.correct, (raw, response)
    # One batch, the format inferred; each response against the next row's gold is wrong.
    raws = [raw for raw, _, _ in RAW_GOLDS]
    responses = [response for _, _, response in RAW_GOLDS]
    assert all(v.correct for v in score(responses, raws, pool=pool))
    shifted = score(responses, raws[1:] + raws[:1], pool=pool)
    # Rows 0-2 all answer 18, rows 3-4 both 25/2, rows 7-8 both 27.
    assert [v.correct for v in shifted] == [True, True, False, True] + [False] * 3 + [
        True,
        False,
        False,
    ]


def test_score_rejects_bad_batches(pool):
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        score(["a", "b"], ["1"], pool=pool)
    with pytest.raises(TypeError, match=r"answers\[1\]: gold answer must be a string.*NoneType"):
        score(["a", "b"], ["1", None], pool=pool)
    with pytest.raises(ValueError, match=r"answers\[0\]: gsm8k gold answer has no '#### N'"):
        score(["a"], ["eighteen eggs"], pool=pool, gold_format="gsm8k")
    with pytest.raises(ValueError, match=r"answers\[0\]: unknown dataset 'mnist'"):
        score(["a"], ["1"], pool=pool, gold_format="mnist")
    with pytest.raises(TypeError, match=r"responses\[0\] is NoneType"):
        score([None], ["1"], pool=pool)
    assert score([], [], pool=pool) == []


def test_default_pool_is_created_lazily_and_reused():
    reward_module._close_default_pool()
    try:
        config = RewardConfig(num_workers=1)
        first = score([r"$\boxed{2\sqrt{2}}$"], [r"\sqrt{8}"], config=config)
        pool = default_pool()
        assert first[0].correct and pool.num_workers == 1
        score([r"$\boxed{\sqrt{8}}$"], [r"2\sqrt{2}"], config=config)
        assert default_pool() is pool
        pool.close()
        assert default_pool(1) is not pool  # a closed default pool is replaced
    finally:
        reward_module._close_default_pool()


def _overlong_reference(lengths, max_response_len, cache_len, factor):
    out = []
    for length in lengths:  # DAPO eq. 13, term by term in float64
        if length <= max_response_len - cache_len:
            out.append(0.0)
        elif length <= max_response_len:
            out.append(factor * ((max_response_len - cache_len) - length) / cache_len)
        else:
            out.append(-factor)
    return np.asarray(out, np.float64)


def test_overlong_penalty_hand_computed():
    lengths_b = np.array([0, 768, 769, 896, 1023, 1024, 1500])
    penalty_b = overlong_penalty(lengths_b, max_response_len=1024, cache_len=256)
    expected = [0.0, 0.0, -1 / 256, -0.5, -255 / 256, -1.0, -1.0]
    np.testing.assert_allclose(penalty_b, expected, rtol=1e-6)
    assert penalty_b.dtype == np.float32 and penalty_b.shape == (7,)


@pytest.mark.parametrize(
    "max_response_len, cache_len, factor", [(4096, 512, 1.0), (20, 20, 0.5), (100, 1, 2.0)]
)
def test_overlong_penalty_matches_float64_reference(max_response_len, cache_len, factor):
    rng = np.random.default_rng(0)
    lengths_b = rng.integers(0, int(max_response_len * 1.2) + 2, size=512)
    penalty_b = overlong_penalty(
        lengths_b, max_response_len=max_response_len, cache_len=cache_len, factor=factor
    )
    reference = _overlong_reference(lengths_b, max_response_len, cache_len, factor)
    np.testing.assert_allclose(penalty_b, reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "lengths, kwargs, error, message",
    [
        (np.zeros((2, 2), int), {}, ValueError, "1-D"),
        (np.array([1.5]), {}, TypeError, "integer"),
        (np.array([-1]), {}, ValueError, ">= 0"),
        (np.array([1]), {"cache_len": 0}, ValueError, "cache_len"),
        (np.array([1]), {"cache_len": 2000}, ValueError, "cache_len"),
    ],
)
def test_overlong_penalty_rejects_bad_input(lengths, kwargs, error, message):
    kwargs = {"max_response_len": 1024, "cache_len": 256, **kwargs}
    with pytest.raises(error, match=message):
        overlong_penalty(lengths, **kwargs)
