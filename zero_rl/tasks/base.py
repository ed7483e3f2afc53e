"""What a verifiable task is: a generator of examples, a rule verifier and a teacher.

A task's examples carry the task's name as `Example.source`; `zero_rl.tasks.grade` sends each
response to the verifier of its example's task, and responses to every other example (the math
datasets) to the math verifier (`zero_rl.rewards.score`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

from zero_rl.data.records import Example
from zero_rl.rewards.markers import OverBudget, answer_tag, last_boxed


@dataclasses.dataclass(frozen=True)
class TaskCheck:
    """One response checked by a task's verifier.

    Attributes:
      correct: the response's answer solves the example.
      answer: the answer read from the response (None when there is none).
      boxed: the answer is in the required format (a `\\boxed{}` or a closed `<answer>` tag).
      reason: why it is wrong, one of the task's `REASONS` ("" when correct): counted per
        step in the training metrics, so a run shows how its responses fail.
      score: partial credit in [0, 1] (e.g. the fraction of a program's tests passed); None
        for all-or-nothing tasks, whose reward follows `correct` alone.
    """

    correct: bool
    answer: str | None
    boxed: bool
    reason: str = ""
    score: float | None = None


class Task(Protocol):
    """A generated task with a rule verifier (see `zero_rl.tasks.TASKS`).

    `name` is the `Example.source` of its examples. `reasons` lists every `TaskCheck.reason`
    its `check` can give.
    """

    name: str
    reasons: tuple[str, ...]

    def split(self, name: str) -> list[Example]:
        """The "train" or "eval" (held-out) examples; a pure function of the task's fields."""
        ...

    def check(self, response: str, example: Example) -> TaskCheck:
        """Verifies one response; never raises on the response's content."""
        ...

    def sft_pairs(
        self, examples: Sequence[Example], *, error_rate: float, seed: int
    ) -> list[tuple[str, str]]:
        """(prompt, response) pairs from a teacher that errs on `error_rate` of the examples."""
        ...

    def tokenizer_corpus(self) -> list[str]:
        """Text covering every string the task produces, for its tiny tokenizer."""
        ...


def marked_answer(text: str) -> str | None:
    """The answer a task response marks, as the math reward reads one: the closed `<answer>`
    tag that ends it (R1-Zero template) or its last `\\boxed{}`; None without one, or when it
    is over the verification budget (an unclosed tag or box longer than the answer limit)."""
    try:
        tagged = answer_tag(text)
        if tagged is not None:
            return tagged or None
        boxed = last_boxed(text)
    except OverBudget:
        return None
    return None if boxed is None else boxed.answer


# Draws in a row that found nothing new: the generator's space of problems is spent.
MAX_MISSES = 20_000


def draw_distinct(
    draw: Callable[[], tuple[Hashable, Example] | None], wanted: int, what: str
) -> list[Example]:
    """`wanted` examples from `draw` (a random problem and its key, or None for a draw to
    discard), each key once, in the order drawn; a ValueError naming `what` when the space of
    distinct problems runs out first."""
    seen, examples, misses = set(), [], 0
    while len(examples) < wanted:
        misses += 1
        if misses > MAX_MISSES:
            raise ValueError(f"found only {len(examples)} distinct {what} of the {wanted} asked "
                             "for (train_size + eval_size): ask for fewer")  # fmt: skip
        drawn = draw()
        if drawn is None or drawn[0] in seen:
            continue
        seen.add(drawn[0])
        examples.append(drawn[1])
        misses = 0
    return examples


def held_out_split(problems: Sequence[Example], eval_size: int, name: str) -> list[Example]:
    """The "train" split (all but the first `eval_size` problems) or the "eval" split."""
    if name not in ("train", "eval"):
        raise ValueError(f"unknown split {name!r}; valid: train, eval")
    return list(problems[eval_size:] if name == "train" else problems[:eval_size])
