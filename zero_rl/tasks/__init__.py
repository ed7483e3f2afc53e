"""Verifiable tasks beyond math datasets: generated problems with rule verifiers.

- "countdown" (TinyZero): reach a target with given numbers; the verifier parses the expression
  itself (never `eval`) and checks which numbers it uses.
- "knights_knaves" (Logic-RL): who tells the truth on an island of knights and knaves; the
  generator solves every puzzle and keeps only those with one solution.

`data.train` / `data.eval` name a task to train or evaluate on it (its settings are
`config.data.tasks.<name>`). `grade` scores a batch whose rows may mix tasks and math examples.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

from zero_rl.data.records import Example
from zero_rl.rewards import RewardConfig, Verdict, VerifierPool, reward_for, score
from zero_rl.tasks.base import Task, TaskCheck
from zero_rl.tasks.countdown import CountdownTask
from zero_rl.tasks.knights_knaves import KnightsKnavesTask

TASKS: dict[str, type] = {"countdown": CountdownTask, "knights_knaves": KnightsKnavesTask}
# One instance per task for checking: a check depends on the example (its meta), not on the
# generator's settings.
_CHECKERS: dict[str, Task] = {name: cls() for name, cls in TASKS.items()}


def make_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """The task called `name` with generator settings `options` (its dataclass fields)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name](**dict(options or {}))


def is_task(name: str) -> bool:
    return name in TASKS


def grade(
    texts: Sequence[str],
    examples: Sequence[Example],
    *,
    config: RewardConfig,
    pool: VerifierPool | None = None,
) -> list[Verdict]:
    """One Verdict per response: a task example's by its task's verifier, the rest by `score`.

    Args:
      texts: [rows] responses.
      examples: [rows] the example each response answers (repeat an example per sample).
      config: reward settings; a task's verdict is priced by `reward_for` as a math one is.
      pool: the math verifier's pool (`score`'s default when None).
    """
    if len(texts) != len(examples):
        raise ValueError(f"{len(texts)} responses but {len(examples)} examples")
    verdicts: list[Verdict | None] = [None] * len(texts)
    math_rows = []
    for i, (text, example) in enumerate(zip(texts, examples)):
        checker = _CHECKERS.get(example.source)
        if checker is None:
            math_rows.append(i)
            continue
        check = checker.check(text, example)
        verdicts[i] = Verdict(
            correct=check.correct,
            extracted=check.answer,
            reward=reward_for(check.correct, check.boxed, config),
            timed_out=False,
            boxed=check.boxed,
            reason=check.reason,
        )
    if math_rows:
        math = score([texts[i] for i in math_rows], [examples[i].answer for i in math_rows],
                     config=config, pool=pool)  # fmt: skip
        for i, verdict in zip(math_rows, math):
            verdicts[i] = verdict
    return verdicts


def reason_counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """How many responses each task reason rejected (reasons of no rejection left out)."""
    return dict(collections.Counter(v.reason for v in verdicts if v.reason))


__all__ = [
    "TASKS",
    "CountdownTask",
    "KnightsKnavesTask",
    "Task",
    "TaskCheck",
    "grade",
    "is_task",
    "make_task",
    "reason_counts",
]
