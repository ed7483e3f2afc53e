"""Verifiable tasks beyond math datasets: generated problems with rule verifiers.

- "countdown" (TinyZero): reach a target with given numbers; the verifier parses the expression
  itself (never `eval`) and checks which numbers it uses.
- "knights_knaves" (Logic-RL): who tells the truth on an island of knights and knaves; the
  generator solves every puzzle and keeps only those with one solution.
- "code": write a Python program that passes a problem's tests (stdin/stdout or asserts), each
  test run in `zero_rl.sandbox` (no network, no host files, resource limits).

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
from zero_rl.tasks.code import CodeTask
from zero_rl.tasks.countdown import CountdownTask
from zero_rl.tasks.knights_knaves import KnightsKnavesTask

TASKS: dict[str, type] = {
    "countdown": CountdownTask,
    "knights_knaves": KnightsKnavesTask,
    "code": CodeTask,
}
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
    math_rows, task_rows = [], collections.defaultdict(list)
    for i, example in enumerate(examples):
        if example.source in _CHECKERS:
            task_rows[example.source].append(i)
        else:
            math_rows.append(i)
    for name, rows in task_rows.items():
        checker = _CHECKERS[name]
        if hasattr(checker, "check_batch"):  # one call, which runs the rows in parallel
            checks = checker.check_batch([texts[i] for i in rows], [examples[i] for i in rows])
        else:
            checks = [checker.check(texts[i], examples[i]) for i in rows]
        for i, check in zip(rows, checks):
            verdicts[i] = Verdict(
                correct=check.correct,
                extracted=check.answer,
                reward=_task_reward(check, config),
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


def _task_reward(check: TaskCheck, config: RewardConfig) -> float:
    """`reward_for` of the check; with a partial `score` under mode "correctness", the reward
    between the incorrect (score 0) and the correct one (score 1), less any format penalty."""
    if check.score is None or config.mode != "correctness":
        return reward_for(check.correct, check.boxed, config)
    low, high = reward_for(False, check.boxed, config), reward_for(True, check.boxed, config)
    return low + check.score * (high - low)


def reason_counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """How many responses each task reason rejected (reasons of no rejection left out)."""
    return dict(collections.Counter(v.reason for v in verdicts if v.reason))


__all__ = [
    "TASKS",
    "CodeTask",
    "CountdownTask",
    "KnightsKnavesTask",
    "Task",
    "TaskCheck",
    "grade",
    "is_task",
    "make_task",
    "reason_counts",
]
