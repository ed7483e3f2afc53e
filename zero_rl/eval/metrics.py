"""Per-problem estimators (pass@k, maj@k) and per-response behaviour measures (reflection words,
repetition), all host-side NumPy / Python on graded responses."""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

import numpy as np

from zero_rl.rewards import fast_equivalence, normalize_answer

# Repetition: a response is "stuck in a loop" when character 20-grams that recur >= 3 times
# cover at least 80% of its last 2,000 characters (see `repetition_coverage`). Calibrated on the
# shipped benchmarks' reference solutions (1 of 2,766 flagged; 18 at 50% coverage) and on loops
# with a changing step counter ("Step 12: <20-300 chars>", all flagged; 30-grams miss a third).
REPETITION_TAIL_CHARS = 2000
REPETITION_NGRAM = 20
REPETITION_MIN_REPEATS = 3
REPETITION_MIN_COVERAGE = 0.8

# SimpleRL-Zoo's reflection keywords (behaviour monitoring of "aha" moments).
REFLECTION_WORDS = ("recheck", "rethink", "try again", "wait", "alternatively", "retry", "however")
# Whole words only, any case: "waiter", "awaited" or "retrying" are not reflection.
REFLECTION_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(w) for w in REFLECTION_WORDS) + r")\b", re.IGNORECASE
)


def has_reflection(text: str) -> bool:
    """Whether `text` contains one of `REFLECTION_WORDS` as a whole word (any case)."""
    return REFLECTION_RE.search(text) is not None


# One pattern per word for counting each; the same whole-word matching as `has_reflection`.
_REFLECTION_WORD_RES = {
    word: re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE) for word in REFLECTION_WORDS
}


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021, "Evaluating Large Language Models
    Trained on Code", eq. 1): the probability that k of the n samples, drawn without
    replacement, contain at least one correct one, 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    n, c = num_samples, num_correct
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= num_correct <= num_samples, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= num_samples, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(num_samples_p: Sequence[int], num_correct_p: Sequence[int], k: int) -> float:
    """pass@k averaged over problems; `num_samples_p` and `num_correct_p` are [problems]."""
    if len(num_samples_p) != len(num_correct_p):
        raise ValueError(f"{len(num_samples_p)} sample counts but {len(num_correct_p)} correct")
    if not num_samples_p:
        raise ValueError("mean_pass_at_k got no problems")
    return float(np.mean([pass_at_k(n, c, k) for n, c in zip(num_samples_p, num_correct_p)]))


def same_answer(answer: str, representative: str) -> bool:
    """Whether two extracted answers count as one vote: equal after `normalize_answer`, or
    equal under the verifier's fast checks (numbers, tuples, sets, choices). Symbolic-only
    equivalences (e.g. x^2-1 vs (x-1)(x+1)) are not merged: sympy per pair is too slow here."""
    return answer == representative or fast_equivalence(answer, representative) is True


def answer_clusters(answers: Sequence[str | None]) -> list[int | None]:
    """A cluster label per sample (None where it has no answer), numbered in order of first
    appearance: each answer joins the first earlier cluster whose first member it matches
    (`same_answer`). Labels of a prefix of `answers` equal the labels it gets on its own, so
    maj@k for every k can reuse one clustering of all n samples."""
    labels: list[int | None] = []
    by_key: dict[str, int] = {}  # normalised key -> label, the common case without any parsing
    representatives: list[str] = []
    for answer in answers:
        if answer is None:
            labels.append(None)
            continue
        key = normalize_answer(answer)[0]
        label = by_key.get(key)
        if label is None:
            label = next(
                (i for i, rep in enumerate(representatives) if same_answer(answer, rep)), None
            )
            if label is None:
                label = len(representatives)
                representatives.append(answer)
            by_key[key] = label
        labels.append(label)
    return labels


def majority_index(labels: Sequence[int | None]) -> int | None:
    """Index of the sample that represents the majority vote over `labels` (from
    `answer_clusters`): the first member of the largest cluster, ties going to the cluster that
    appeared first. None when no sample has an answer."""
    counts = collections.Counter(label for label in labels if label is not None)
    if not counts:
        return None
    # Labels count up in order of first appearance, so the smallest label wins a tie.
    winner = min(counts, key=lambda label: (-counts[label], label))
    return labels.index(winner)


def maj_at_k(labels: Sequence[int | None], correct: Sequence[bool], k: int) -> bool:
    """Whether the majority vote over the first k samples of one problem is correct: the
    verdict of the sample that represents the winning answer (False when none answered)."""
    if not 1 <= k <= len(labels):
        raise ValueError(f"maj@k needs 1 <= k <= {len(labels)} samples, got k={k}")
    if len(correct) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(correct)} verdicts")
    index = majority_index(labels[:k])
    return index is not None and bool(correct[index])


def reflection_counts(text: str) -> dict[str, int]:
    """Occurrences of each of SimpleRL-Zoo's reflection keywords (`REFLECTION_WORDS`) as whole
    words in any case, the same matching as `has_reflection`."""
    return {word: len(pattern.findall(text)) for word, pattern in _REFLECTION_WORD_RES.items()}


def repetition_coverage(
    text: str,
    *,
    tail_chars: int = REPETITION_TAIL_CHARS,
    ngram: int = REPETITION_NGRAM,
    min_repeats: int = REPETITION_MIN_REPEATS,
) -> float:
    """Fraction of a response's tail covered by repeated character n-grams.

    Definition: let T be the last `tail_chars` characters of `text` (all of it if shorter).
    An n-gram of T (a substring of `ngram` characters, at any offset, overlaps allowed) is
    repeated if it occurs at least `min_repeats` times in T. The coverage is the number of
    positions of T inside at least one occurrence of a repeated n-gram, divided by len(T);
    0 when T is shorter than `ngram * min_repeats`.

    Characters rather than tokens make the measure independent of the tokenizer, so outputs of
    other engines are measured the same way. A decoding loop with any period up to
    len(T) / min_repeats characters gives a coverage near 1; ordinary solutions, which repeat
    short formulas but not 20-character spans three times over most of their end, stay low.
    """
    if ngram < 1 or min_repeats < 2 or tail_chars < 1:
        raise ValueError(
            f"need ngram >= 1, min_repeats >= 2, tail_chars >= 1; got {ngram}, {min_repeats}, "
            f"{tail_chars}"
        )
    tail = text[-tail_chars:]
    if len(tail) < ngram * min_repeats:
        return 0.0
    starts = range(len(tail) - ngram + 1)
    counts = collections.Counter(tail[i : i + ngram] for i in starts)
    covered = covered_until = 0
    for i in starts:
        if counts[tail[i : i + ngram]] >= min_repeats:
            # Occurrences come in increasing start order, so only the part past the previous
            # covered end is new: the union is counted in one pass.
            covered += i + ngram - max(i, covered_until)
            covered_until = i + ngram
    return covered / len(tail)


def is_repetitive(text: str, *, min_coverage: float = REPETITION_MIN_COVERAGE, **kwargs) -> bool:
    """Whether a response is stuck in a loop: `repetition_coverage(text, **kwargs)` is at
    least `min_coverage` (default: repeated 20-grams cover 80% of the last 2,000 chars)."""
    return repetition_coverage(text, **kwargs) >= min_coverage
