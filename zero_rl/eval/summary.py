"""One benchmark's numbers from its graded generations (the JSONL records), so a summary can
always be recomputed from the file: after a resume, or for outputs of another engine."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from zero_rl.eval import metrics
from zero_rl.rewards import Verdict
from zero_rl.train.rollout import REFLECTION_WORDS, has_reflection

# One line of generations.jsonl per response; `length`/`truncated` may be null for outputs
# graded without their token counts.
RECORD_FIELDS = (
    "id", "sample", "prompt", "response", "extracted", "gold", "correct", "length", "truncated",
    "boxed", "timed_out",
)  # fmt: skip

# TensorBoard gets these (plus pass@k / maj@k) as eval/<benchmark>/<name>.
SCALAR_KEYS = (
    "accuracy", "mean_length", "mean_length_correct", "mean_length_wrong", "truncated_ratio",
    "boxed_ratio", "no_answer_ratio", "reflection_ratio", "repetition_ratio",
)  # fmt: skip


def graded_record(
    problem_id: str,
    sample: int,
    prompt: str | None,
    response: str,
    gold: str,
    verdict: Verdict,
    length: int | None,
    truncated: bool | None,
) -> dict[str, Any]:
    """One line of generations.jsonl, fields in `RECORD_FIELDS` order."""
    return {
        "id": problem_id,
        "sample": sample,
        "prompt": prompt,
        "response": response,
        "extracted": verdict.extracted,
        "gold": gold,
        "correct": verdict.correct,
        "length": length,
        "truncated": truncated,
        "boxed": verdict.boxed,
        "timed_out": verdict.timed_out,
    }


def default_ks(num_samples: int) -> list[int]:
    """1, 2, 4, ... up to `num_samples`, and `num_samples` itself."""
    ks = [1 << i for i in range(num_samples.bit_length()) if 1 << i <= num_samples]
    return sorted(set(ks) | {num_samples})


def group_by_id(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Records per problem id, problems in order of first appearance, samples in file order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["id"], []).append(record)
    return groups


def _mean(values: Sequence[float]) -> float | None:
    """Mean, or None (JSON null) when there is nothing to average."""
    return float(np.mean(values)) if len(values) else None


def summarize(records: Sequence[Mapping[str, Any]], *, ks: Sequence[int] | None = None) -> dict:
    """The numbers papers report for one benchmark, from its graded records.

    Args:
      records: dicts with `RECORD_FIELDS`; samples of a problem share an `id`.
      ks: the k of pass@k and maj@k; default `default_ks(n)` with n the fewest samples any
        problem has. A k above that n is an error.

    Returns:
      accuracy (mean over all responses), avg@n (the same number, under its paper name),
      pass@k (unbiased estimator, mean over problems), maj@k (vote over the first k samples of
      each problem), mean response length in tokens (all, correct, wrong; over responses with a
      known length), truncated / boxed / no-answer / reflection / repetition ratios over
      responses, mean reflection-keyword counts per response, verifier timeouts, and counts.
    """
    if not records:
        raise ValueError("summarize got no records")
    groups = list(group_by_id(records).values())
    n_p = [len(g) for g in groups]
    fewest = min(n_p)
    ks = default_ks(fewest) if ks is None else sorted(set(ks))
    if ks and not 1 <= ks[0] <= ks[-1] <= fewest:
        raise ValueError(f"ks={list(ks)} must lie in [1, {fewest}] (fewest samples of a problem)")

    correct = np.array([bool(r["correct"]) for r in records])
    texts = [r["response"] for r in records]
    lengths = [(r["length"], bool(r["correct"])) for r in records if r.get("length") is not None]
    truncated = [bool(r["truncated"]) for r in records if r.get("truncated") is not None]
    counts = [metrics.reflection_counts(t) for t in texts]
    summary: dict[str, Any] = {
        "num_problems": len(groups),
        "num_responses": len(records),
        "samples_per_problem": fewest if fewest == max(n_p) else [fewest, max(n_p)],
        "accuracy": float(correct.mean()),
    }
    if fewest == max(n_p):
        summary[f"avg@{fewest}"] = summary["accuracy"]
    for k in ks:
        summary[f"pass@{k}"] = metrics.mean_pass_at_k(
            n_p, [sum(bool(r["correct"]) for r in g) for g in groups], k
        )
    clusters = [metrics.answer_clusters([r["extracted"] for r in g]) for g in groups]
    verdicts = [[bool(r["correct"]) for r in g] for g in groups]
    for k in ks:
        if k > 1:  # maj@1 is the first sample's accuracy, not a vote
            summary[f"maj@{k}"] = float(
                np.mean([metrics.maj_at_k(c, v, k) for c, v in zip(clusters, verdicts)])
            )
    summary |= {
        "mean_length": _mean([n for n, _ in lengths]),
        "mean_length_correct": _mean([n for n, ok in lengths if ok]),
        "mean_length_wrong": _mean([n for n, ok in lengths if not ok]),
        "truncated_ratio": _mean(truncated),
        "boxed_ratio": float(np.mean([bool(r["boxed"]) for r in records])),
        "no_answer_ratio": float(np.mean([r["extracted"] is None for r in records])),
        "reflection_ratio": float(np.mean([has_reflection(t) for t in texts])),
        "reflection_words_per_response": {
            word: float(np.mean([c[word] for c in counts])) for word in REFLECTION_WORDS
        },
        "repetition_ratio": float(np.mean([metrics.is_repetitive(t) for t in texts])),
        "verifier_timeouts": int(sum(bool(r.get("timed_out")) for r in records)),
    }
    return summary


def scalars(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """TensorBoard scalars `eval/<benchmark>/<metric>` of several benchmark summaries."""
    out = {}
    for name, summary in summaries.items():
        for key, value in summary.items():
            wanted = key in SCALAR_KEYS or key.startswith(("pass@", "maj@"))
            if wanted and value is not None:
                out[f"eval/{name}/{key}"] = float(value)
    return out
