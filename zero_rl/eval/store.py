"""The resumable record of one benchmark's run: `generations.jsonl` (one graded response per
line, appended and flushed per batch) and `settings.json` (what produced them).

A crash can leave a torn last line, or only some samples of the last batch's problems; loading
drops both (rewriting the file without them), so those problems are simply generated again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

GENERATIONS = "generations.jsonl"
SETTINGS = "settings.json"


class OutputDirError(ValueError):
    """An output directory holds results that this call must not mix with its own (another
    policy's, other settings', or of unknown origin); the message says how to go on."""


def write_json(path: str, value: Any) -> None:
    """Writes JSON atomically (temporary file, then rename): never a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def write_jsonl(path: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Writes records as JSONL atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, path)


class GenerationStore:
    """`directory/generations.jsonl` and `directory/settings.json` of one benchmark.

    Args:
      directory: created if missing (when `writable`).
      settings: the generation and grading settings of this run. If the directory already
        holds generations made with other settings, that is an error: mixing them would give a
        summary of neither run.
      writable: False on processes other than 0 in a multi-host run, which only read.
    """

    def __init__(self, directory: str, settings: Mapping[str, Any], *, writable: bool = True):
        self.directory = directory
        self.path = os.path.join(directory, GENERATIONS)
        self.writable = writable
        settings_path = os.path.join(directory, SETTINGS)
        settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        if os.path.isfile(self.path) and not os.path.isfile(settings_path):
            raise OutputDirError(
                f"{directory} holds {GENERATIONS} without {SETTINGS}, so what made them is "
                "unknown; use another output directory, or delete it to start over"
            )
        if os.path.isfile(settings_path):
            with open(settings_path, encoding="utf-8") as f:
                previous = json.load(f)
            changed = sorted(
                k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k)
            )
            if changed and os.path.isfile(self.path):
                details = ", ".join(
                    f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed
                )
                raise OutputDirError(
                    f"{directory} holds generations made with other settings ({details}); "
                    "use another output directory, or delete it to start over"
                )
        if writable:
            os.makedirs(directory, exist_ok=True)
            write_json(settings_path, settings)

    def load(self, num_samples: int) -> dict[str, list[dict[str, Any]]]:
        """Complete problems already on disk: id -> its `num_samples` records in sample order.

        Raises OutputDirError on a malformed line before the last, or on more samples of a problem
        than `num_samples` (the file was written by something else).
        """
        if not os.path.isfile(self.path):
            return {}
        with open(self.path, encoding="utf-8") as f:
            lines = f.readlines()
        records, torn = [], False
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "id" not in record or "sample" not in record:
                    raise ValueError("not a generation record (needs id and sample)")
            except ValueError as e:
                if number == len(lines):  # an append cut short by a crash
                    torn = True
                    break
                raise OutputDirError(
                    f"{self.path}:{number}: {e}; delete the file to start over"
                ) from e
            records.append(record)
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            groups.setdefault(record["id"], []).append(record)
        for problem_id, group in groups.items():
            samples = sorted(r["sample"] for r in group)
            if len(group) > num_samples or samples != list(range(len(group))):
                raise OutputDirError(
                    f"{self.path}: problem {problem_id!r} has samples {samples}, expected "
                    f"0..{num_samples - 1}; the file was not written by this run"
                )
        complete = {
            pid: sorted(g, key=lambda r: r["sample"])
            for pid, g in groups.items()
            if len(g) == num_samples
        }
        if self.writable and (torn or len(complete) < len(groups)):
            write_jsonl(self.path, [r for r in records if r["id"] in complete])
        return complete

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Appends one batch's records and flushes them to disk."""
        if not self.writable:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def replace(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Writes `records` as the whole file, atomically (grading rewrites all of it)."""
        if self.writable:
            write_jsonl(self.path, records)
