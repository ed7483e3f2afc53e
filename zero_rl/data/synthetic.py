"""A synthetic verifiable math task for the tiny CPU run: two-digit addition.

The SFT "teacher" writes a short chain of thought, digit by digit, but forgets the carry in a
configurable fraction of the problems that need one ("7+5=12, 3+4=7, \\boxed{72}" for 37 + 45).
A model fine-tuned on it is an imperfect base model in exactly the way zero RL can fix: the
right behaviour is in its distribution but not its mode, and the rule-based verifier tells the
two apart.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zero_rl.data.records import Example

SOURCE = "synthetic_addition"


@dataclasses.dataclass(frozen=True)
class AdditionTask:
    """Problems a + b with a, b in [low, high]; `eval_size` of them are held out.

    `carry_fraction` sets the share of problems whose units digits carry (by dropping some of
    the others): the noisy teacher's mistakes live there, so it sets how much RL can fix.
    """

    low: int = 10
    high: int = 99
    eval_size: int = 200
    seed: int = 0
    carry_fraction: float = 0.75

    def _pairs(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        values = range(self.low, self.high + 1)
        pairs = [(a, b) for a in values for b in values]
        carry = [p for p in pairs if needs_carry(*p)]
        no_carry = [p for p in pairs if not needs_carry(*p)]
        if not 0 < self.carry_fraction <= 1:
            raise ValueError(f"carry_fraction must be in (0, 1], got {self.carry_fraction}")
        keep = min(
            len(no_carry), round(len(carry) * (1 - self.carry_fraction) / self.carry_fraction)
        )
        rng = np.random.default_rng(self.seed)
        pairs = sorted(carry + [no_carry[i] for i in rng.permutation(len(no_carry))[:keep]])
        order = rng.permutation(len(pairs))
        if self.eval_size >= len(pairs):
            raise ValueError(f"eval_size={self.eval_size} leaves no training problems")
        held_out = [pairs[i] for i in order[: self.eval_size]]
        train = [pairs[i] for i in order[self.eval_size :]]
        return train, held_out

    def split(self, name: str) -> list[Example]:
        """ "train" (RL prompts and SFT problems) or "eval" (held-out problems)."""
        train, held_out = self._pairs()
        if name not in ("train", "eval"):
            raise ValueError(f"unknown split {name!r}; valid: train, eval")
        return [make_example(a, b) for a, b in (train if name == "train" else held_out)]


def needs_carry(a: int, b: int) -> bool:
    return (a % 10 + b % 10) >= 10


def question(a: int, b: int) -> str:
    return f"What is {a} + {b}?\n"


def make_example(a: int, b: int) -> Example:
    return Example(
        id=f"{SOURCE}/{a}+{b}", prompt=question(a, b), answer=str(a + b), source=SOURCE,
        meta={"a": a, "b": b},
    )  # fmt: skip


def solution(a: int, b: int, *, forget_carry: bool = False) -> str:
    """The digit-by-digit working; with `forget_carry`, the tens sum drops the carry."""
    ua, ub, ta, tb = a % 10, b % 10, a // 10, b // 10
    units = ua + ub
    carry = units // 10 if not forget_carry else 0
    tens_line = f"{ta}+{tb}+{carry}={ta + tb + carry}" if carry else f"{ta}+{tb}={ta + tb}"
    result = (ta + tb + carry) * 10 + units % 10
    return f"{ua}+{ub}={units}, {tens_line}, \\boxed{{{result}}}"


def sft_pairs(
    examples: list[Example], *, carry_error_rate: float, seed: int
) -> list[tuple[str, str]]:
    """(prompt, response) pairs from the noisy teacher, one per example."""
    rng = np.random.default_rng(seed)
    pairs = []
    for ex in examples:
        a, b = ex.meta["a"], ex.meta["b"]
        forget = needs_carry(a, b) and rng.random() < carry_error_rate
        pairs.append((ex.prompt, solution(a, b, forget_carry=forget)))
    return pairs


def tokenizer_corpus(task: AdditionTask) -> list[str]:
    """Text covering every string the task produces, to train its tiny tokenizer on."""
    texts = []
    for a in range(0, 100):
        for b in range(0, 100, 7):
            texts.append(question(a, b) + solution(a, b) + solution(a, b, forget_carry=True))
    return texts
