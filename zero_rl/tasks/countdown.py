"""Countdown (TinyZero): combine the given numbers with + - * / to reach a target.

Every number is used exactly once, as in TinyZero's verifier. The verifier reads the marked
answer (`\\boxed{}` or the R1-Zero `<answer>` tag), parses it with a small recursive-descent
parser over exact fractions - nothing is ever evaluated by Python - and checks the numbers it
uses and its value. A trailing "= 56" is allowed (and must be the target); unary minus,
decimals and other operators are not (the task's numbers are positive integers).

The teacher of the tiny config's SFT stage works the combination out step by step
("3+5=8, 8*7=56, \\boxed{(3+5)*7}") but, on `error_rate` of the problems, answers with its last
step instead of the whole expression ("\\boxed{8*7}", which uses a number that is not given): the
same kind of systematic slip as the addition teacher's forgotten carry, which zero RL can fix.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from zero_rl.data.records import Example, RecordError
from zero_rl.data.records import _iter_records as iter_records
from zero_rl.tasks.base import TaskCheck, draw_distinct, held_out_split, marked_answer

NAME = "countdown"
REASONS = (
    "no_answer",
    "too_long",
    "unparsable",
    "division_by_zero",
    "wrong_numbers",
    "wrong_value",
    "malformed_example",
)
MAX_EXPRESSION_CHARS = 200
_MAX_DEPTH = 16  # parentheses nesting: deeper is no answer a person would write
_MAX_DIGITS = 6
# LaTeX and Unicode spellings of the four operations and of parentheses.
_ALIASES = (
    ("\\left(", "("), ("\\right)", ")"), ("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"),
    ("×", "*"), ("·", "*"), ("÷", "/"), ("−", "-"), ("$", ""),
)  # fmt: skip
_TOKEN_RE = re.compile(r"\s*(\d+|[-+*/()])")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


class ExpressionError(ValueError):
    """An answer that is not a Countdown expression; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _tokens(text: str) -> list[str]:
    for alias, op in _ALIASES:
        text = text.replace(alias, op)
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise ExpressionError("unparsable", f"unexpected {text[pos:].strip()[:10]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


class _Parser:
    """expr := term (("+" | "-") term)*;  term := atom (("*" | "/") atom)*;
    atom := integer | "(" expr ")"."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.numbers = tokens, 0, []

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ExpressionError("unparsable", "the expression ends early")
        self.pos += 1
        return token

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self._peek() in ("+", "-"):
            op = self._take()
            right = self.term(depth)
            value = value + right if op == "+" else value - right
        return value

    def term(self, depth: int) -> Fraction:
        value = self.atom(depth)
        while self._peek() in ("*", "/"):
            op = self._take()
            right = self.atom(depth)
            if op == "/" and right == 0:
                raise ExpressionError("division_by_zero", "division by zero")
            value = value * right if op == "*" else value / right
        return value

    def atom(self, depth: int) -> Fraction:
        token = self._take()
        if token == "(":
            if depth >= _MAX_DEPTH:
                raise ExpressionError("unparsable", f"parentheses nested over {_MAX_DEPTH} deep")
            value = self.expr(depth + 1)
            if self._take() != ")":
                raise ExpressionError("unparsable", "a parenthesis does not close")
            return value
        if not token.isdigit():
            raise ExpressionError("unparsable", f"expected a number, got {token!r}")
        if len(token) > _MAX_DIGITS:
            raise ExpressionError("unparsable", f"a number of over {_MAX_DIGITS} digits")
        self.numbers.append(int(token))
        return Fraction(int(token))


def parse_expression(text: str) -> tuple[Fraction, list[int]]:
    """(exact value, the integers it uses in order) of an arithmetic expression.

    Raises ExpressionError (with a `reason`) for anything else, including over
    MAX_EXPRESSION_CHARS characters.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError("too_long", f"over {MAX_EXPRESSION_CHARS} characters")
    tokens = _tokens(text)
    if not tokens:
        raise ExpressionError("unparsable", "an empty expression")
    parser = _Parser(tokens)
    value = parser.expr(0)
    if parser.pos != len(tokens):
        raise ExpressionError("unparsable", f"unexpected {tokens[parser.pos]!r}")
    return value, parser.numbers


def _split_result(answer: str) -> tuple[str, int | None]:
    """`(3+5)*7 = 56` -> (`(3+5)*7`, 56): a result may be stated after the expression."""
    left, sep, right = answer.rpartition("=")
    right = right.strip().rstrip(".").strip()
    if sep and right.isdigit() and len(right) <= _MAX_DIGITS:
        return left, int(right)
    return answer, None


def _puzzle(example: Example) -> tuple[list[int], int] | None:
    numbers, target = example.meta.get("numbers"), example.meta.get("target")
    if not isinstance(numbers, (list, tuple)) or not numbers or isinstance(target, bool):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return None
    return (list(numbers), target) if isinstance(target, int) else None


def check(response: str, example: Example) -> TaskCheck:
    """Whether the response's marked expression uses each number once and equals the target."""
    puzzle = _puzzle(example)
    answer = marked_answer(response)
    if puzzle is None:
        return TaskCheck(False, answer, answer is not None, "malformed_example")
    if answer is None:
        return TaskCheck(False, None, False, "no_answer")
    numbers, target = puzzle
    expression, stated = _split_result(answer)
    try:
        value, used = parse_expression(expression)
    except ExpressionError as error:
        return TaskCheck(False, answer, True, error.reason)
    if sorted(used) != sorted(numbers):
        return TaskCheck(False, answer, True, "wrong_numbers")
    if value != target or stated not in (None, target):  # a false "= 57" is a wrong answer
        return TaskCheck(False, answer, True, "wrong_value")
    return TaskCheck(True, answer, True)


@dataclasses.dataclass(frozen=True)
class _Step:
    """A partial result: its value, its expression and that expression's precedence."""

    value: int
    text: str
    precedence: int  # 3 for a single number


def _combine(left: _Step, right: _Step, op: str) -> _Step:
    prec = _PRECEDENCE[op]
    value = {"+": left.value + right.value, "-": left.value - right.value,
             "*": left.value * right.value}.get(op)  # fmt: skip
    if op == "/":
        value = left.value // right.value
    left_text = f"({left.text})" if left.precedence < prec else left.text
    # a - (b + c) and a / (b * c) keep their parentheses; a + (b + c) does not need them.
    wrap_right = right.precedence < prec or (right.precedence == prec and op in "-/")
    right_text = f"({right.text})" if wrap_right else right.text
    return _Step(value, f"{left_text}{op}{right_text}", prec)


def _valid(left: _Step, right: _Step, op: str) -> bool:
    """Intermediate results stay positive integers, as a person solving it would keep them."""
    if op == "-":
        return left.value > right.value
    if op == "/":
        return right.value > 1 and left.value % right.value == 0
    return True


@dataclasses.dataclass(frozen=True)
class CountdownTask:
    """Countdown problems: `min_numbers`..`max_numbers` numbers in [1, `max_number`] and a
    target in [1, `max_target`] reachable with `operations`; `train_size` training and
    `eval_size` held-out problems, no (numbers, target) pair in both.

    The defaults follow TinyZero (3-4 numbers up to 99, targets up to 100, + - * /);
    `prompt_style="short"` is the tiny config's prompt ("Make 56 from 3 5 7"). `in_order`
    generates only problems whose worked solution combines the numbers left to right
    (((3+5)*7)), an easier search for a tiny model; any order still verifies. `data_file` reads
    the problems from a file instead (`read_countdown_file`, e.g. TinyZero's), the first
    `eval_size` of them held out and up to `train_size` of the rest for training.
    """

    min_numbers: int = 3
    max_numbers: int = 4
    max_number: int = 99
    max_target: int = 100
    operations: str = "+-*/"
    train_size: int = 10000
    eval_size: int = 200
    prompt_style: str = "instruction"
    in_order: bool = False
    data_file: str = ""
    seed: int = 0

    name = NAME
    reasons = REASONS

    def __post_init__(self):
        if not 2 <= self.min_numbers <= self.max_numbers:
            raise ValueError(f"need 2 <= min_numbers <= max_numbers, got {self.min_numbers}, "
                             f"{self.max_numbers}")  # fmt: skip
        if self.max_number < 1 or self.max_target < 1:
            raise ValueError("max_number and max_target must be >= 1")
        if not self.operations or set(self.operations) - set(_PRECEDENCE):
            raise ValueError(f"operations must be some of '+-*/', got {self.operations!r}")
        if self.prompt_style not in ("instruction", "short"):
            raise ValueError(f"prompt_style must be 'instruction' or 'short', got "
                             f"{self.prompt_style!r}")  # fmt: skip
        if self.train_size < 1 or self.eval_size < 0:
            raise ValueError("train_size must be >= 1 and eval_size >= 0")

    def prompt(self, numbers: Sequence[int], target: int) -> str:
        if self.prompt_style == "short":
            return f"Make {target} from {' '.join(map(str, numbers))}\n"
        ops = ", ".join(self.operations)
        return (
            f"Using the numbers {list(numbers)}, create an equation that equals {target}. "
            f"You can use basic arithmetic operations ({ops}) and each number can only be "
            "used once."
        )

    def _problems(self) -> list[Example]:
        # Python's generator: a draw is a few small calls, each ~20x cheaper than NumPy's.
        rng = random.Random(self.seed)

        def draw():
            count = rng.randint(self.min_numbers, self.max_numbers)
            numbers = [rng.randint(1, self.max_number) for _ in range(count)]
            solution = _random_solution(rng, numbers, self.operations, self.in_order)
            if solution is None or not 1 <= solution.value <= self.max_target:
                return None
            key = (tuple(sorted(numbers)), solution.value)
            return key, self.example(numbers, solution.value, solution)

        what = (f"problems with up to {self.max_numbers} numbers <= {self.max_number} and "
                f"targets <= {self.max_target}")  # fmt: skip
        return draw_distinct(draw, self.eval_size + self.train_size, what)

    def example(
        self, numbers: Sequence[int], target: int, solution: _Solution | None = None
    ) -> Example:
        """The example of one problem; with its worked `solution` (the teacher's) in meta."""
        meta = {"numbers": list(numbers), "target": int(target)}
        if solution is not None:
            meta["solution"] = solution.text
            meta["steps"] = list(solution.lines)
        return Example(
            id=f"{NAME}/{'_'.join(map(str, numbers))}={target}",
            prompt=self.prompt(numbers, target), answer=str(target), source=NAME, meta=meta,
        )  # fmt: skip

    def split(self, name: str) -> list[Example]:
        """ "train" or "eval" (the first `eval_size` problems drawn, held out)."""
        if name not in ("train", "eval"):
            raise ValueError(f"unknown split {name!r}; valid: train, eval")
        if self.data_file:
            problems = read_countdown_file(self.data_file, self)
            if len(problems) <= self.eval_size:
                raise ValueError(f"{self.data_file}: {len(problems)} problems leave none to "
                                 f"train on after eval_size={self.eval_size}")  # fmt: skip
            held_out, train = problems[: self.eval_size], problems[self.eval_size :]
            return train[: self.train_size] if name == "train" else held_out
        return held_out_split(self._problems(), self.eval_size, name)

    def check(self, response: str, example: Example) -> TaskCheck:
        return check(response, example)

    def sft_pairs(
        self, examples: Sequence[Example], *, error_rate: float, seed: int
    ) -> list[tuple[str, str]]:
        rng = np.random.default_rng(seed)
        pairs = []
        for ex in examples:
            if "solution" not in ex.meta:
                raise ValueError(f"{ex.id}: no worked solution to imitate (a generated "
                                 "problem has one; one read from a file does not)")  # fmt: skip
            answer = ex.meta["solution"]
            if rng.random() < error_rate:  # the last step, "12-4", not the whole expression
                answer = ex.meta["steps"][-1].partition("=")[0]
            pairs.append((ex.prompt, ", ".join([*ex.meta["steps"], f"\\boxed{{{answer}}}"])))
        return pairs

    def tokenizer_corpus(self) -> list[str]:
        examples = self.split("train")[:2000]
        pairs = self.sft_pairs(examples, error_rate=0.5, seed=0)
        return [prompt + response for prompt, response in pairs]


@dataclasses.dataclass(frozen=True)
class _Solution:
    """A worked solution: its step lines ("3+5=8") and the final expression."""

    lines: tuple[str, ...]
    text: str
    value: int


def _random_solution(rng: random.Random, numbers: list[int], operations: str, in_order: bool):
    """Combines the numbers pairwise with random operations, in a random order or (`in_order`)
    left to right; None when a step is not valid (the caller draws again)."""
    pool, lines = [_Step(n, str(n), 3) for n in numbers], []
    while len(pool) > 1:
        # In order, the running result (last in the pool) takes the next number.
        i, j = (len(pool) - 1, 0) if in_order and len(pool) < len(numbers) else (0, 1)
        if not in_order:
            i, j = rng.sample(range(len(pool)), 2)
        op = rng.choice(operations)
        if not _valid(pool[i], pool[j], op):
            return None
        step = _combine(pool[i], pool[j], op)
        lines.append(f"{pool[i].value}{op}{pool[j].value}={step.value}")
        pool = [s for k, s in enumerate(pool) if k not in (i, j)] + [step]
    return _Solution(tuple(lines), pool[0].text, pool[0].value)


def read_countdown_file(
    path: str | os.PathLike, task: CountdownTask | None = None
) -> list[Example]:
    """Countdown problems from a .jsonl / .json / .parquet file of {"nums" (or "numbers"): [ints],
    "target": int} records, TinyZero's Countdown-Tasks-3to4 format; a bad record raises a
    RecordError naming its line or row."""
    task = task or CountdownTask()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Countdown file at {path}")
    examples = []
    for location, record in iter_records(path):
        if isinstance(record, Exception):
            raise RecordError(f"{path}:{location}: {record}")
        record = record if isinstance(record, dict) else {}
        numbers, target = record.get("nums", record.get("numbers")), record.get("target")
        numbers = list(numbers) if isinstance(numbers, (list, tuple)) else []
        example = task.example(numbers, target if isinstance(target, int) else 0)
        if _puzzle(example) is None or not numbers or not isinstance(target, int):
            raise RecordError(
                f'{path}:{location}: a Countdown record needs "nums" (a list of integers) and '
                f'"target" (an integer), got {str(record)[:80]}'
            )
        examples.append(example)
    if not examples:
        raise RecordError(f"{path}: no Countdown records")
    return examples
