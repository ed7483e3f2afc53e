"""Examples (a question and its canonical gold answer) read from the shipped benchmarks or from
user JSONL / JSON / parquet files with a field mapping.

Every malformed or answer-less record is reported with its file and line (JSONL) or row
(parquet, JSON list), and either raises or is skipped and counted (`on_error="skip"`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

BENCHMARK_DIR = Path(__file__).resolve().parent / "benchmarks"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt for RL or evaluation.

    Attributes:
      id: `source/<record id>`, or `source/<line>` without an id field: unique across
        sources and stable across runs (pass rates and checkpoints refer to it).
      prompt: the raw question; templates are applied later.
      answer: the canonical gold answer (after `zero_rl.rewards.normalize_gold`).
      source: dataset name.
      level: MATH difficulty level 1-5, when the record has one.
      meta: extra record fields the scorer may use (unit, answer type, subject, ...).
    """

    id: str
    prompt: str
    answer: str
    source: str
    level: int | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FieldMapping:
    """Where a record keeps its question, gold answer, level and id.

    Attributes:
      question_field: the question text.
      answer_field: the gold answer (str, number, or a one-element list). Ignored when
        `answer_from_solution` is set.
      answer_from_solution: take the last \\boxed{...} of `solution_field` as the gold answer
        (MATH train, Minerva).
      solution_field: the worked solution, used by `answer_from_solution`.
      level_field: difficulty level: an int or a MATH-style "Level 3" string.
      id_field: a unique id; without one, ids use the line (JSONL) or row number.
      meta_fields: fields copied into `Example.meta` when present.
      gold_format: dataset name given to `normalize_gold` (e.g. "gsm8k" takes the text after
        "####"); None means a plain final answer.
    """

    question_field: str = "problem"
    answer_field: str | None = "answer"
    answer_from_solution: bool = False
    solution_field: str = "solution"
    level_field: str | None = None
    id_field: str | None = None
    meta_fields: tuple[str, ...] = ()
    gold_format: str | None = None


@dataclasses.dataclass
class ReadResult:
    """Examples read from one file, and a `path:line: reason` message per skipped record.

    `records` holds each example's record as read (aligned with `examples`) when asked for with
    `keep_records=True`, so a filtered subset can be written back in the file's own format.
    """

    examples: list[Example]
    skipped: list[str]
    records: list[Any] | None = None

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


class RecordError(ValueError):
    """A record that cannot become an Example; the message names the file and line."""


# name -> (file under BENCHMARK_DIR, mapping). The gold_format is the benchmark's family name.
BENCHMARKS: dict[str, tuple[str, FieldMapping]] = {
    "gsm8k_train": (
        "gsm8k/train.jsonl",
        FieldMapping(question_field="question", answer_field="answer", gold_format="gsm8k"),
    ),
    "gsm8k_test": (
        "gsm8k/test.jsonl",
        FieldMapping(question_field="question", answer_field="answer", gold_format="gsm8k"),
    ),
    "math500": (
        "math500/test.jsonl",
        FieldMapping(
            level_field="level", id_field="unique_id", meta_fields=("subject",), gold_format="math"
        ),
    ),
    "minerva_math": (
        "minerva_math/test.jsonl",
        FieldMapping(
            answer_from_solution=True,
            id_field="idx",
            meta_fields=("type",),
            gold_format="minerva_math",
        ),
    ),
    "olympiadbench": (
        "olympiadbench/test.jsonl",
        FieldMapping(
            question_field="question",
            answer_field="final_answer",
            id_field="id",
            meta_fields=("unit", "answer_type", "is_multiple_answer", "subfield"),
            gold_format="olympiadbench",
        ),
    ),
    "aime24": ("aime24/test.jsonl", FieldMapping(id_field="id", gold_format="aime24")),
    "amc23": ("amc23/test.jsonl", FieldMapping(id_field="id", gold_format="amc23")),
}


def _iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yields (location, record) with location "line N" (JSONL) or "row N" (JSON list, parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"line {line_number}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"line {line_number}", RecordError(f"malformed JSON ({e.msg})")
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: malformed JSON ({e})") from e
        if not isinstance(rows, list):
            raise RecordError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
        for i, row in enumerate(rows, start=1):
            yield f"row {i}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"row {i}", row
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def parse_level(value: Any) -> int | None:
    """A difficulty level from 3, "3" or "Level 3"; None for MATH's unknown "Level ?"."""
    if isinstance(value, bool):
        raise ValueError(f"level must be an int or 'Level N', got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().removeprefix("Level").strip()
        if text == "?":
            return None
        if text.isdigit():
            return int(text)
    raise ValueError(f"level must be an int or 'Level N', got {value!r}")


def _example_from_record(record: Any, mapping: FieldMapping, source: str, location: str) -> Example:
    from zero_rl.rewards import extract, normalize_gold

    if not isinstance(record, dict):
        raise ValueError(f"record is a {type(record).__name__}, expected an object")
    question = record.get(mapping.question_field)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"no question: field {mapping.question_field!r} is missing or empty")
    if mapping.answer_from_solution:
        solution = record.get(mapping.solution_field)
        if not isinstance(solution, str):
            raise ValueError(f"no solution: field {mapping.solution_field!r} is missing")
        extraction = extract(solution)
        if extraction is None or not extraction.boxed:
            raise ValueError(f"no answer: no \\boxed{{}} in field {mapping.solution_field!r}")
        raw = extraction.answer
    else:
        raw = record.get(mapping.answer_field) if mapping.answer_field else None
        if raw is None or raw == "" or raw == []:
            raise ValueError(f"no answer: field {mapping.answer_field!r} is missing or empty")
    answer = normalize_gold(raw, dataset=mapping.gold_format)
    if not answer:
        raise ValueError(f"no answer: gold {raw!r} normalises to an empty string")
    level = None
    if mapping.level_field and record.get(mapping.level_field) is not None:
        level = parse_level(record[mapping.level_field])
    if mapping.id_field and record.get(mapping.id_field) is not None:
        example_id = f"{source}/{record[mapping.id_field]}"
    else:
        example_id = f"{source}/{location.split()[-1]}"
    meta = {k: record[k] for k in mapping.meta_fields if k in record}
    return Example(example_id, question, answer, source, level, meta)


def read_examples(
    path: str | os.PathLike,
    mapping: FieldMapping | None = None,
    *,
    source: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    limit: int | None = None,
    keep_records: bool = False,
) -> ReadResult:
    """Reads Examples from a .jsonl, .json (list of records) or .parquet file.

    Args:
      mapping: field names; the default reads MATH-style `problem` / `answer` records.
      source: `Example.source`; defaults to the file name without suffix.
      on_error: "raise" stops at the first bad record with a RecordError naming file and line;
        "skip" leaves it out and records why in `ReadResult.skipped`.
      limit: stop after this many examples.
      keep_records: also return each example's raw record in `ReadResult.records`.
    """
    from zero_rl.rewards import DATASETS  # lazy: `import zero_rl.data` stays verifier-free

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    mapping = mapping or FieldMapping()
    if mapping.gold_format is not None and mapping.gold_format not in DATASETS:
        raise ValueError(f"unknown gold_format {mapping.gold_format!r}; valid: {sorted(DATASETS)}")
    source = source or path.stem
    examples: list[Example] = []
    records: list[Any] = []
    skipped: list[str] = []
    seen_ids: set[str] = set()
    for location, record in _iter_records(path):
        if limit is not None and len(examples) >= limit:
            break
        try:
            if isinstance(record, Exception):
                raise record
            example = _example_from_record(record, mapping, source, location)
            if example.id in seen_ids:
                raise ValueError(f"duplicate id {example.id!r}")
        except (ValueError, TypeError) as e:
            message = f"{path}:{location}: {e}"
            if on_error == "raise":
                raise RecordError(message) from e
            skipped.append(message)
            continue
        seen_ids.add(example.id)
        examples.append(example)
        if keep_records:
            records.append(record)
    if skipped:
        log.warning("%s: skipped %d bad records, first: %s", path, len(skipped), skipped[0])
    if not examples:
        raise RecordError(f"{path}: no usable records ({len(skipped)} skipped)")
    return ReadResult(examples, skipped, records if keep_records else None)


def read_benchmark(
    name: str, *, limit: int | None = None, keep_records: bool = False
) -> ReadResult:
    """`read_examples` on a shipped benchmark: one of `BENCHMARKS` (e.g. "math500")."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid names: {sorted(BENCHMARKS)}")
    relative, mapping = BENCHMARKS[name]
    return read_examples(
        BENCHMARK_DIR / relative, mapping, source=name, limit=limit, keep_records=keep_records
    )


def load_benchmark(name: str, *, limit: int | None = None) -> list[Example]:
    """Examples of a shipped benchmark: one of `BENCHMARKS` (e.g. "math500", "gsm8k_train")."""
    return read_benchmark(name, limit=limit).examples
