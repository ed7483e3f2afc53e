"""pass@k, maj@k, reflection counts, repetition and the per-benchmark summary, against
hand-computed values and independent recomputations."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from zero_rl.data import BENCHMARK_DIR
from zero_rl.eval import metrics
from zero_rl.eval.summary import default_ks, scalars, summarize


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (4, 1, 1, 0.25),  # pass@1 = c/n
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (10, 0, 4, 0.0),
        (8, 6, 3, 1.0),  # only 2 wrong samples: any 3 include a correct one
        (3, 3, 3, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_exact_combinatorics():
    for n in range(1, 41, 3):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert metrics.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_correct"):
        metrics.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="1 <= k <= num_samples"):
        metrics.pass_at_k(4, 2, 5)


def test_mean_pass_at_k():
    assert metrics.mean_pass_at_k([5, 4], [2, 1], 2) == pytest.approx((0.7 + 0.5) / 2)


def test_answer_clusters_merge_equivalent_forms():
    answers = ["1/2", "0.5", "\\frac{1}{2}", None, "3", "\\dfrac12", "3.0", "x"]
    assert metrics.answer_clusters(answers) == [0, 0, 0, None, 1, 0, 1, 2]


@pytest.mark.parametrize(
    "answers, correct, k, expected",
    [
        # 6 beats 5 two to one in the first three samples.
        (["5", "6", "6", "5", "5"], [True, False, False, True, True], 3, False),
        # Two-two tie: 5 appeared first and wins.
        (["5", "6", "6", "5", "5"], [True, False, False, True, True], 4, True),
        (["5", "6", "6", "5", "5"], [True, False, False, True, True], 5, True),
        # Samples without an answer do not vote.
        ([None, None, "7", None], [False, False, True, False], 4, True),
        ([None, None], [False, False], 2, False),
        # 1/2 and 0.5 are one answer: two votes against one for 3.
        (["3", "1/2", "0.5"], [False, True, True], 3, True),
    ],
)
def test_maj_at_k_hand_made(answers, correct, k, expected):
    labels = metrics.answer_clusters(answers)
    assert metrics.maj_at_k(labels, correct, k) is expected


def test_majority_index_first_member_of_winner():
    assert metrics.majority_index([None, 1, 0, 1]) == 1
    assert metrics.majority_index([2, 1, 1, 2]) == 1  # tie: label 1 appeared first
    assert metrics.majority_index([None]) is None


def test_reflection_counts():
    text = "Wait, let me recheck. wait... However, RETRY. Alternatively"
    counts = metrics.reflection_counts(text)
    assert counts["wait"] == 2 and counts["recheck"] == 1 and counts["however"] == 1
    assert counts["retry"] == 1 and counts["alternatively"] == 1 and counts["rethink"] == 0
    # Whole words only, as has_reflection: no waiter, retrying or awaited.
    assert metrics.reflection_counts("The waiter, retrying, awaited; try  again") == dict.fromkeys(
        counts, 0
    )
    assert metrics.reflection_counts("Let me TRY AGAIN (wait)")["try again"] == 1


def _coverage_brute_force(text, tail_chars, ngram, min_repeats):
    tail = text[-tail_chars:]
    if len(tail) < ngram * min_repeats:
        return 0.0
    grams = [tail[i : i + ngram] for i in range(len(tail) - ngram + 1)]
    covered = set()
    for i, gram in enumerate(grams):
        if grams.count(gram) >= min_repeats:
            covered.update(range(i, i + ngram))
    return len(covered) / len(tail)


def test_repetition_coverage_hand_computed():
    # "abc" occurs 3 times and covers everything.
    assert metrics.repetition_coverage("abcabcabc", ngram=3, min_repeats=3) == 1.0
    # Positions 0-8 covered by "abc" x3; "xyz" occurs once: 9 of 12.
    assert metrics.repetition_coverage("abcabcabcxyz", ngram=3, min_repeats=3) == 0.75
    # Only the last 6 characters count: "ab" occurs 3 times in "ababab".
    assert metrics.repetition_coverage("zzzzababab", tail_chars=6, ngram=2, min_repeats=3) == 1.0
    assert metrics.repetition_coverage("short", ngram=3, min_repeats=2) == 0.0


def test_repetition_coverage_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        text = "".join(rng.choice(list("ab c"), size=int(rng.integers(0, 80))))
        for ngram, repeats in [(2, 2), (3, 3), (4, 2)]:
            got = metrics.repetition_coverage(text, tail_chars=50, ngram=ngram, min_repeats=repeats)
            assert got == pytest.approx(_coverage_brute_force(text, 50, ngram, repeats))


def test_is_repetitive_on_loops_and_real_solutions():
    assert metrics.is_repetitive("To start, x = 2. " + "So 3 + 4 = 7, and then " * 200)
    counter_loop = "".join(f"Step {i}: add the two numbers again.\n" for i in range(150))
    assert metrics.is_repetitive(counter_loop)
    with open(BENCHMARK_DIR / "math500" / "test.jsonl") as f:
        solutions = [json.loads(line)["solution"] for line in f][:200]
    assert not any(metrics.is_repetitive(s) for s in solutions)


def _record(pid, sample, correct, extracted, length, truncated, boxed, response="ok"):
    return dict(id=pid, sample=sample, prompt="q", response=response, extracted=extracted,
                gold="5", correct=correct, length=length, truncated=truncated, boxed=boxed,
                timed_out=False)  # fmt: skip


def test_summarize_hand_computed():
    records = [
        _record("a", 0, True, "5", 10, False, True, "Wait, so \\boxed{5}"),
        _record("a", 1, False, "6", 20, False, True),
        _record("a", 2, True, "5.0", 30, False, False),
        _record("b", 0, False, None, 40, True, False, "loop " * 500),
        _record("b", 1, False, "4", 50, False, True),
        _record("b", 2, False, "4", None, None, True),
    ]
    s = summarize(records)
    assert s["num_problems"] == 2 and s["num_responses"] == 6 and s["samples_per_problem"] == 3
    assert s["accuracy"] == pytest.approx(2 / 6) and s["avg@3"] == s["accuracy"]
    assert s["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["pass@2"] == pytest.approx(0.5)  # a: any 2 of 3 hold a correct one; b: none
    assert s["pass@3"] == pytest.approx(0.5)
    # a: 5 and 5.0 are one answer (2 votes) -> correct; b: 4 wins -> wrong.
    assert s["maj@3"] == pytest.approx(0.5)
    assert s["maj@2"] == pytest.approx(0.5)  # a: tie 5/6, 5 first; b: one vote for 4
    assert s["mean_length"] == pytest.approx(30.0)  # the unknown length is left out
    assert s["mean_length_correct"] == pytest.approx(20.0)
    assert s["mean_length_wrong"] == pytest.approx(110 / 3)
    assert s["truncated_ratio"] == pytest.approx(1 / 5)
    assert s["boxed_ratio"] == pytest.approx(4 / 6)
    assert s["no_answer_ratio"] == pytest.approx(1 / 6)
    assert s["reflection_ratio"] == pytest.approx(1 / 6)
    assert s["reflection_words_per_response"]["wait"] == pytest.approx(1 / 6)
    assert s["repetition_ratio"] == pytest.approx(1 / 6)
    assert s["verifier_timeouts"] == 0
    tb = scalars({"toy": s})
    assert tb["eval/toy/accuracy"] == s["accuracy"] and tb["eval/toy/maj@3"] == 0.5
    assert "eval/toy/reflection_words_per_response" not in tb


def test_summarize_uneven_samples_and_errors():
    records = [_record("a", 0, True, "5", 1, False, True)] + [
        _record("b", i, False, "4", 1, False, True) for i in range(3)
    ]
    s = summarize(records)
    assert s["samples_per_problem"] == [1, 3] and "avg@1" not in s
    assert list(k for k in s if k.startswith("pass@")) == ["pass@1"]
    with pytest.raises(ValueError, match="must lie in"):
        summarize(records, ks=[2])
    with pytest.raises(ValueError, match="no records"):
        summarize([])


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(12) == [1, 2, 4, 8, 12]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Wait, let me recheck that.", True),
        ("HOWEVER the sum is 5", True),
        ("let me try again: 3", True),
        ("so, wait.", True),
        ("the waiter brought awaited dishes", False),
        ("retrying rethinking alternatively-minded", True),  # "alternatively" is a whole word
        ("retrying and rethinking", False),
        ("nothing to see", False),
    ],
)
def test_reflection_words_match_whole_words_only(text, expected):
    assert metrics.has_reflection(text) is expected
