"""Grading-only mode: score generations produced elsewhere (vLLM, another framework) with the
same extraction, equivalence and summary rules as `run_benchmarks`, so numbers are comparable
across engines.

Input: JSONL, one response per line, with
  `response` (str), `answer` or `gold` (any format `normalize_gold` reads), `id` or `prompt`
  (samples of a problem share it), and optionally `benchmark` (default: the file's stem),
  `length` (response tokens), `truncated` (bool) or `finish_reason` ("length" = truncated).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from zero_rl.data import BENCHMARKS
from zero_rl.eval.harness import GRADING_KEYS
from zero_rl.eval.sets import ALIASES, prompt_id
from zero_rl.eval.store import GenerationStore
from zero_rl.eval.summary import earlier_results, graded_record, summarize, write_summary
from zero_rl.rewards import RewardConfig, VerifierPool, normalize_gold, score
from zero_rl.summaries import SummaryWriter
from zero_rl.tokenizer import Tokenizer

_CHUNK = 2048


class OutputsError(ValueError):
    """A malformed line of an outputs file; the message names the file and line."""


def _gold_format(benchmark: str, dataset: str | None) -> str | None:
    known = BENCHMARKS.get(ALIASES.get(benchmark, benchmark))
    return known[1].gold_format if known is not None else dataset


def _parse_line(row: Any, default_benchmark: str, dataset: str | None) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    response = row.get("response")
    if not isinstance(response, str):
        raise ValueError("'response' is missing or not a string")
    raw_gold = row.get("answer", row.get("gold"))
    if raw_gold is None:
        raise ValueError("needs 'answer' or 'gold'")
    prompt = row.get("prompt")
    if row.get("id") is None and not isinstance(prompt, str):
        raise ValueError("needs 'id' or 'prompt' to tell which samples belong to one problem")
    benchmark = str(row.get("benchmark") or default_benchmark)
    gold = normalize_gold(raw_gold, _gold_format(benchmark, dataset))
    length = row.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
        raise ValueError(f"'length' must be an integer token count, got {length!r}")
    truncated = row.get("truncated")
    if truncated is None and row.get("finish_reason") is not None:
        truncated = row["finish_reason"] == "length"
    if truncated is not None and not isinstance(truncated, bool):
        raise ValueError(f"'truncated' must be true or false, got {truncated!r}")
    return {
        "benchmark": benchmark,
        "id": str(row["id"]) if row.get("id") is not None else prompt_id(prompt),
        "prompt": prompt,
        "response": response,
        "gold": gold,
        "length": length,
        "truncated": truncated,
    }


def read_outputs(
    path: str, *, benchmark: str | None = None, dataset: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Parses an outputs JSONL into {benchmark: rows}; every line is checked before grading.

    Args:
      benchmark: the benchmark of lines without a `benchmark` field (default: the file stem).
      dataset: gold-answer format (`zero_rl.rewards.DATASETS`) for benchmarks that are not
        shipped ones; shipped benchmarks use their own format.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"outputs file {path!r} does not exist")
    default = benchmark or os.path.splitext(os.path.basename(path))[0]
    by_benchmark: dict[str, list[dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = _parse_line(json.loads(line), default, dataset)
            except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
                raise OutputsError(f"{path}:{number}: {e}") from None
            by_benchmark.setdefault(row.pop("benchmark"), []).append(row)
    if not by_benchmark:
        raise OutputsError(f"{path}: no outputs to grade")
    if bad := [n for n in by_benchmark if "/" in n or n in (".", "..")]:
        raise OutputsError(f"{path}: benchmark names {bad} cannot be directory names")
    return by_benchmark


def _graded_records(
    rows: list[dict[str, Any]],
    reward: RewardConfig,
    pool: VerifierPool | None,
    tokenizer: Tokenizer | None,
    bar: tqdm,
) -> list[dict[str, Any]]:
    """`RECORD_FIELDS` records of one benchmark's rows, samples numbered per problem."""
    sample_of: dict[str, int] = {}
    records = []
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        verdicts = score(
            [r["response"] for r in chunk], [r["gold"] for r in chunk], config=reward, pool=pool
        )
        for row, verdict in zip(chunk, verdicts):
            length = row["length"]
            if length is None and tokenizer is not None:
                length = len(tokenizer.encode(row["response"]))
            sample = sample_of[row["id"]] = sample_of.get(row["id"], -1) + 1
            records.append(
                graded_record(
                    row["id"],
                    sample,
                    row["prompt"],
                    row["response"],
                    row["gold"],
                    verdict,
                    length,
                    row["truncated"],
                )
            )
        bar.update(len(chunk))
    return records


def grade_outputs(
    outputs: str | Mapping[str, Sequence[dict[str, Any]]],
    out_dir: str,
    *,
    benchmark: str | None = None,
    dataset: str | None = None,
    reward: RewardConfig | None = None,
    pool: VerifierPool | None = None,
    tokenizer: Tokenizer | None = None,
    ks: Sequence[int] | None = None,
    writer: SummaryWriter | None = None,
    step: int = 0,
    progress: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Grades outputs and writes what `run_benchmarks` writes: `out_dir/<benchmark>/
    generations.jsonl` with verdicts, its `settings.json` ({"graded_from", "grading"}) and
    `out_dir/summary.json` (with the graded benchmarks of earlier calls there).

    Grading again with the same source and rules rewrites a benchmark's generations; a
    directory holding other generations (from `run_benchmarks`, another file, other rules) is
    an `OutputDirError`, raised before anything is written.

    Args:
      outputs: an outputs file (see the module doc), or `read_outputs`'s result for one.
      benchmark, dataset: as for `read_outputs`, when `outputs` is a path.
      tokenizer: fills in `length` for lines without one; otherwise lengths stay unknown.
      source: where the outputs came from, for the settings (default: the path given).

    Returns:
      The summary dict, laid out as `run_benchmarks`'s.
    """
    reward = reward or RewardConfig(extraction="lenient")
    if isinstance(outputs, str):
        source = source or os.path.abspath(outputs)
        outputs = read_outputs(outputs, benchmark=benchmark, dataset=dataset)
    settings = {
        "graded_from": source,
        "grading": {k: getattr(reward, k) for k in GRADING_KEYS},
    }
    earlier_results(out_dir, list(outputs), settings)
    stores = {name: GenerationStore(os.path.join(out_dir, name), settings) for name in outputs}
    summaries = {}
    for name, rows in outputs.items():
        bar = tqdm(total=len(rows), desc=name, unit="resp", file=sys.stderr, disable=not progress)
        with bar:
            records = _graded_records(rows, reward, pool, tokenizer, bar)
        summaries[name] = summarize(records, ks=ks)  # a bad k fails before the file changes
        stores[name].replace(records)
    return write_summary(
        out_dir, summaries, dict.fromkeys(summaries, settings), step=step, writer=writer
    )
