"""Difficulty sets on MATH500 (which carries levels) and pass-rate filtering."""

import json
import logging
from collections import Counter

import numpy as np
import pytest

from zero_rl.data import (
    BENCHMARK_DIR,
    Example,
    default_difficulty,
    filter_by_pass_rate,
    load_benchmark,
    select_difficulty,
)


@pytest.fixture(scope="module")
def math500():
    return load_benchmark("math500")


@pytest.fixture(scope="module")
def raw_level_counts():
    with open(BENCHMARK_DIR / "math500/test.jsonl", encoding="utf-8") as f:
        return Counter(json.loads(line)["level"] for line in f)


@pytest.mark.parametrize("difficulty, levels", [("medium", {1, 2, 3, 4}), ("hard", {3, 4, 5})])
def test_math_levels(math500, raw_level_counts, difficulty, levels):
    selected = select_difficulty(math500, difficulty)
    assert len(selected) == sum(raw_level_counts[level] for level in levels)
    assert {ex.level for ex in selected} == levels
    order = {ex.id: i for i, ex in enumerate(math500)}
    assert [order[ex.id] for ex in selected] == sorted(order[ex.id] for ex in selected)


def test_easy_is_gsm8k_plus_level_1(math500, raw_level_counts):
    gsm8k = load_benchmark("gsm8k_test", limit=5)
    easy = select_difficulty(math500, "easy", gsm8k_examples=gsm8k)
    assert easy[:5] == gsm8k
    assert len(easy) == 5 + raw_level_counts[1] and {ex.level for ex in easy[5:]} == {1}
    default = select_difficulty(math500, "easy")  # the shipped GSM8K train split
    assert len(default) == 7473 + raw_level_counts[1]


def test_examples_without_level(math500, caplog):
    unlevelled = Example("x/1", "q", "1", "x")
    with caplog.at_level(logging.WARNING):
        hard = select_difficulty([*math500, unlevelled], "hard")
    assert unlevelled not in hard and "1 examples have no level" in caplog.text
    with pytest.raises(ValueError, match="no example carries a level"):
        select_difficulty([unlevelled], "hard")
    with pytest.raises(ValueError, match="got no MATH examples"):
        select_difficulty([], "hard")
    with pytest.raises(ValueError, match=r"unknown difficulty 'expert'.*'easy'"):
        select_difficulty(math500, "expert")


EXAMPLES = [Example(f"s/{i}", f"q{i}", str(i), "s") for i in range(6)]
RATES = [0.0, 0.125, 0.5, 1.0, 0.875, 0.25]


@pytest.mark.parametrize(
    "low, high, inclusive, kept",
    [
        (0.0, 1.0, False, [1, 2, 4, 5]),  # drop 0/k and k/k
        (0.125, 0.875, True, [1, 2, 4, 5]),
        (0.125, 0.875, False, [2, 5]),
        (0.25, 0.5, True, [2, 5]),
        (0.0, 1.0, True, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_filter_by_pass_rate(low, high, inclusive, kept):
    by_id = {ex.id: r for ex, r in zip(EXAMPLES, RATES)}
    for rates in (RATES, by_id, np.asarray(RATES, np.float32)):
        out = filter_by_pass_rate(EXAMPLES, rates, low, high, inclusive=inclusive)
        assert [ex.id for ex in out] == [f"s/{i}" for i in kept]


@pytest.mark.parametrize(
    "rates, low, high, message",
    [
        (RATES[:5], 0.0, 1.0, "5 pass rates for 6 examples"),
        ({"s/0": 0.5}, 0.0, 1.0, r"no pass rate for 5 examples, e.g. \['s/1'"),
        ([*RATES[:5], float("nan")], 0.0, 1.0, "pass rate of 's/5' is nan"),
        ([*RATES[:5], 1.5], 0.0, 1.0, "pass rate of 's/5' is 1.5"),
        (RATES, 0.6, 0.4, "need 0 <= low <= high <= 1"),
    ],
)
def test_filter_by_pass_rate_errors(rates, low, high, message):
    with pytest.raises(ValueError, match=message):
        filter_by_pass_rate(EXAMPLES, rates, low, high)


@pytest.mark.parametrize(
    "model, difficulty",
    [
        ("Llama-3.1-8B", "easy"),
        ("mistralai/Mistral-7B-v0.1", "easy"),
        ("deepseek-math-7b-base", "easy"),
        ("Qwen2.5-0.5B", "medium"),
        ("qwen2_5_0_5b", "medium"),
        ("Qwen-2.5-1.5B", "hard"),
        ("Qwen/Qwen2.5-7B", "hard"),
        ("Qwen2.5-14B", "hard"),
        ("Qwen2.5-32B", "hard"),
        ("Qwen2.5-Math-7B", "hard"),
        ("Mistral-Small-24B-Base-2501", "hard"),
        # The model presets' names.
        ("llama3.1-8b", "easy"),
        ("mistral-7b", "easy"),
        ("deepseek-math-7b", "easy"),
        ("qwen2.5-0.5b", "medium"),
        ("qwen2.5-1.5b", "hard"),
        ("mistral-small-24b", "hard"),
        ("qwen2.5-math-7b", "hard"),
    ],
)
def test_default_difficulty_per_family(model, difficulty):
    assert default_difficulty(model) == difficulty


def test_default_difficulty_unknown_family():
    with pytest.raises(ValueError, match=r"no default difficulty for model 'gpt2'.*'easy'"):
        default_difficulty("gpt2")
