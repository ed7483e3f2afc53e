"""One benchmark's numbers from its graded generations (the JSONL records), so a summary can
always be recomputed from the file: after a resume, or for outputs of another engine; and the
`summary.json` of an output directory, which gathers the benchmarks of every call made there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from zero_rl.eval import metrics
from zero_rl.eval.metrics import REFLECTION_WORDS
from zero_rl.eval.store import GENERATIONS, OutputDirError, write_json
from zero_rl.rewards import Verdict
from zero_rl.summaries import SummaryWriter

SUMMARY = "summary.json"
# The settings that identify the policy: benchmarks of one summary.json must agree on them.
# Graded outputs have neither (their engine's model is unknown), so they go with each other.
POLICY_KEYS = ("policy", "step")

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
        "reflection_ratio": float(np.mean([any(c.values()) for c in counts])),
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


def _policy(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: settings.get(k) for k in POLICY_KEYS}


def earlier_results(
    out_dir: str, names: Sequence[str], policy_settings: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """({benchmark: summary}, {benchmark: settings}) of `out_dir/summary.json` for the
    benchmarks other than `names` whose generations are still on disk.

    Raises OutputDirError when one of them was made by another policy (`POLICY_KEYS` of
    `policy_settings` differ): one summary.json must not average two policies.
    """
    path = os.path.join(out_dir, SUMMARY)
    if not os.path.isfile(path):
        return {}, {}
    with open(path, encoding="utf-8") as f:
        previous = json.load(f)
    summaries, settings = {}, {}
    wanted = _policy(json.loads(json.dumps(policy_settings)))
    for name, summary in previous.get("benchmarks", {}).items():
        saved = previous.get("settings", {}).get(name)
        if name in names or not isinstance(saved, dict):  # redone now, or an older layout
            continue
        if not os.path.isfile(os.path.join(out_dir, name, GENERATIONS)):
            continue  # deleted since
        if _policy(saved) != wanted:
            raise OutputDirError(
                f"{out_dir} holds results of another policy ({name}: {_policy(saved)}, this "
                f"call: {wanted}); use one output directory per policy"
            )
        summaries[name], settings[name] = summary, saved
    return summaries, settings


def write_summary(
    out_dir: str,
    summaries: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Mapping[str, Any]],
    *,
    step: int,
    writer: SummaryWriter | None = None,
    is_main: bool = True,
) -> dict[str, Any]:
    """Writes `out_dir/summary.json`: these benchmarks and those of earlier calls in `out_dir`
    (`earlier_results`), with their mean accuracy (SimpleRL-Zoo's "Avg."); with a writer,
    this call's benchmarks and the mean go to TensorBoard at `step`.

    Args:
      summaries: {benchmark: `summarize` result} of this call.
      settings: {benchmark: what made its generations (its settings.json)}.

    Returns:
      {"step", "settings": {benchmark: settings}, "benchmarks": {benchmark: summary},
      "average": {"accuracy"}}, benchmarks of earlier calls first.
    """
    if not summaries:
        raise ValueError("write_summary got no benchmarks")
    first = next(iter(settings.values()))
    old_summaries, old_settings = earlier_results(out_dir, list(summaries), first)
    all_summaries = old_summaries | dict(summaries)
    summary = {
        "step": int(step),
        "settings": old_settings | {k: dict(v) for k, v in settings.items()},
        "benchmarks": all_summaries,
        "average": {"accuracy": float(np.mean([s["accuracy"] for s in all_summaries.values()]))},
    }
    if is_main:
        os.makedirs(out_dir, exist_ok=True)
        write_json(os.path.join(out_dir, SUMMARY), summary)
    if writer is not None:
        tb = scalars(summaries) | {"eval/average/accuracy": summary["average"]["accuracy"]}
        writer.scalars(step, tb)
        writer.flush()
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """A short table of the headline numbers, one benchmark per line ("-": unknown)."""

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    lines = []
    for name, s in summary["benchmarks"].items():
        estimates = " ".join(
            f"{k} {v:.3f}"
            for k, v in s.items()
            if k.startswith(("pass@", "maj@")) and k != "pass@1"  # pass@1 is about acc
        )
        lines.append(
            f"{name:<16} acc {s['accuracy']:.3f} {estimates} "
            f"len {number(s['mean_length'], '.0f')} trunc {number(s['truncated_ratio'], '.2f')} "
            f"boxed {s['boxed_ratio']:.2f} refl {s['reflection_ratio']:.2f} "
            f"rep {s['repetition_ratio']:.2f} (n={s['num_problems']})"
        )
    lines.append(f"{'average':<16} acc {summary['average']['accuracy']:.3f}")
    return "\n".join(lines)
