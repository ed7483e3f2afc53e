"""Evaluation sets by name: the shipped benchmarks, the synthetic addition task, a data file, or
a registered seqio task."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from zero_rl.data import BENCHMARKS, Example, FieldMapping, load_benchmark, read_examples
from zero_rl.tasks import TASKS, make_task

# The six benchmarks SimpleRL-Zoo reports, under their short names.
SIMPLERL_ZOO_BENCHMARKS = ("gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23")
ALIASES = {"gsm8k": "gsm8k_test"}
SYNTHETIC = "synthetic_addition"
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Problems evaluated and reported together under `name`.

    `template` overrides the run's prompt template for this set: seqio tasks hold prompts that
    their preprocessors already rendered, so they use "plain".
    """

    name: str
    examples: Sequence[Example]  # stored as a tuple
    template: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "examples", tuple(self.examples))
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"eval set name {self.name!r} cannot be a directory name")
        if not self.examples:
            raise ValueError(f"eval set {self.name!r} has no examples")
        ids = [ex.id for ex in self.examples]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"eval set {self.name!r} has duplicate example id {duplicate!r}")


def valid_names() -> list[str]:
    """Names `load_eval_set` accepts besides file paths and seqio task names."""
    return sorted(set(BENCHMARKS) | set(ALIASES) | {SYNTHETIC} | set(TASKS))


def load_eval_set(
    name: str,
    *,
    limit: int | None = None,
    mapping: FieldMapping | None = None,
    seqio_split: str = "test",
    synthetic_seed: int = 0,
    synthetic_size: int = 200,
    task_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> EvalSet:
    """The eval set called `name`:

    - a shipped benchmark (`zero_rl.data.BENCHMARKS`, plus "gsm8k" for its test split);
    - "synthetic_addition": the held-out split of the tiny config's addition task;
    - a generated task ("countdown", "knights_knaves"): its held-out split, generated with
      `task_settings[name]` (a run's `config.data.tasks`), else the task's defaults;
    - a path to a .jsonl / .json / .parquet file, read with `mapping` (default: MATH-style
      problem / answer fields), reported under the file's stem;
    - a registered seqio task (a name with a dot, e.g. "zero_rl.math500.qwen_boxed"): its
      `inputs_pretokenized` is the finished prompt, `targets_pretokenized` the gold answer.

    `limit` keeps the first problems only.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if name in BENCHMARKS or name in ALIASES:
        return EvalSet(name, tuple(load_benchmark(ALIASES.get(name, name), limit=limit)))
    if name == SYNTHETIC:
        from zero_rl.data.synthetic import AdditionTask

        task = AdditionTask(eval_size=synthetic_size, seed=synthetic_seed)
        return EvalSet(name, tuple(task.split("eval")[:limit]))
    if name in TASKS:
        task = make_task(name, (task_settings or {}).get(name))
        return EvalSet(name, tuple(task.split("eval")[:limit]))
    if name.endswith(_FILE_SUFFIXES) or os.sep in name:
        if not os.path.isfile(name):
            raise FileNotFoundError(f"eval set file {name!r} does not exist")
        stem = os.path.splitext(os.path.basename(name))[0]
        return EvalSet(stem, tuple(read_examples(name, mapping, source=stem, limit=limit).examples))
    if "." in name:
        return _seqio_set(name, split=seqio_split, limit=limit)
    raise ValueError(
        f"unknown benchmark {name!r}; valid names: {valid_names()}, or a .jsonl/.json/.parquet "
        "file, or a registered seqio task name"
    )


def load_eval_sets(names: Sequence[str], **kwargs) -> list[EvalSet]:
    """`load_eval_set` for each name; every name is checked before any set is returned."""
    sets = [load_eval_set(name, **kwargs) for name in names]
    seen = [s.name for s in sets]
    if len(set(seen)) != len(seen):
        raise ValueError(f"benchmark names repeat: {seen}")
    return sets


def _seqio_set(task_name: str, *, split: str, limit: int | None) -> EvalSet:
    import seqio  # imports TensorFlow: only when a seqio task is asked for

    from zero_rl.rewards import normalize_gold

    if task_name not in seqio.TaskRegistry.names():
        registered = sorted(seqio.TaskRegistry.names())
        raise ValueError(
            f"unknown benchmark {task_name!r}: not a shipped name ({valid_names()}) and not a "
            f"registered seqio task (registered: {registered or 'none'}); register it first, "
            "e.g. with zero_rl.data.tasks.register_benchmark_tasks"
        )
    task = seqio.get_mixture_or_task(task_name)
    if split not in task.splits:
        raise ValueError(f"seqio task {task_name!r} has no split {split!r}; has {task.splits}")
    dataset = task.get_dataset(
        sequence_length=None, split=split, shuffle=False, use_cached=False, num_epochs=1
    )
    if limit is not None:
        dataset = dataset.take(limit)
    examples = []
    for i, row in enumerate(dataset.as_numpy_iterator()):
        missing = [k for k in ("inputs_pretokenized", "targets_pretokenized") if k not in row]
        if missing:
            raise ValueError(f"seqio task {task_name!r} has no {missing} features to evaluate")
        prompt = row["inputs_pretokenized"].decode("utf-8")
        raw_id = row["id"].decode("utf-8") if "id" in row else str(i)
        gold = normalize_gold(row["targets_pretokenized"].decode("utf-8"))
        examples.append(Example(f"{task_name}/{raw_id}", prompt, gold, task_name))
    return EvalSet(task_name, tuple(examples), template="plain")


def prompt_id(prompt: str) -> str:
    """A short stable id for a problem known only by its prompt text."""
    return "prompt/" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]
