"""Knights and Knaves (Logic-RL): knights always tell the truth, knaves always lie; from what
each inhabitant says, tell who is which.

The generator draws one statement per inhabitant (about one person, or two joined by "and",
"or", "if and only if", "if ... then", or "it is false that ...") and solves the puzzle by
trying every assignment; only puzzles with exactly one solution are kept. The verifier reads
the marked answer ("\\boxed{A knight, B knave}", or Logic-RL's "(1) Zoey is a knight (2) ...")
and compares it with that solution, every inhabitant named once.

The teacher of the tiny config's SFT stage misreads "or" as "and" on `error_rate` of the
puzzles that have an "or" statement, and answers the misread puzzle's solution when it has
one: a systematic slip for zero RL to fix.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Sequence

import numpy as np

from zero_rl.data.records import Example
from zero_rl.tasks.base import TaskCheck, draw_distinct, held_out_split, marked_answer

NAME = "knights_knaves"
REASONS = (
    "no_answer",
    "incomplete",
    "contradictory",
    "unknown_person",
    "wrong_assignment",
    "malformed_example",
)
CONNECTIVES = ("and", "or", "iff", "implies")
NAMES = (
    "Zoey", "Oliver", "Ethan", "Mia", "Liam", "Ava", "Noah", "Emma", "Lucas", "Aria",
    "Henry", "Ella", "Jack", "Luna", "Owen", "Grace",
)  # fmt: skip
LETTERS = tuple("ABCDEFGH")


# A statement is ("is", person, is_knight) or ("not", statement) or (connective, a, b): JSON
# lists in Example.meta, so a puzzle survives a round trip through a data file.
def truth(statement: Sequence, knights: Sequence[bool]) -> bool:
    """The truth of `statement` when person i is a knight iff `knights[i]`."""
    kind = statement[0]
    if kind == "is":
        return knights[statement[1]] == statement[2]
    if kind == "not":
        return not truth(statement[1], knights)
    a, b = truth(statement[1], knights), truth(statement[2], knights)
    if kind == "and":
        return a and b
    if kind == "or":
        return a or b
    if kind == "iff":
        return a == b
    if kind == "implies":
        return (not a) or b
    raise ValueError(f"unknown statement kind {kind!r}")


def solutions(statements: Sequence[Sequence]) -> list[tuple[bool, ...]]:
    """Every assignment (True = knight) in which each person's statement is true exactly when
    that person is a knight."""
    n = len(statements)
    return [
        knights
        for knights in itertools.product((True, False), repeat=n)
        if all(truth(s, knights) == knights[i] for i, s in enumerate(statements))
    ]


def _misread_or(statement: Sequence) -> list:
    """The statement with every "or" read as "and" (the teacher's slip)."""
    if statement[0] == "is":
        return list(statement)
    if statement[0] == "not":
        return ["not", _misread_or(statement[1])]
    kind = "and" if statement[0] == "or" else statement[0]
    return [kind, _misread_or(statement[1]), _misread_or(statement[2])]


def render(statement: Sequence, names: Sequence[str]) -> str:
    kind = statement[0]
    if kind == "is":
        return f"{names[statement[1]]} is a {'knight' if statement[2] else 'knave'}"
    if kind == "not":
        return f"it is false that {render(statement[1], names)}"
    a, b = render(statement[1], names), render(statement[2], names)
    return {"and": f"{a} and {b}", "or": f"{a} or {b}",
            "iff": f"{a} if and only if {b}", "implies": f"if {a} then {b}"}[kind]  # fmt: skip


def format_answer(knights: Sequence[bool], names: Sequence[str]) -> str:
    return ", ".join(f"{n} {'knight' if k else 'knave'}" for n, k in zip(names, knights))


# A capitalised word, then its role: "A knight", "Zoey is a knave", "(2) Oliver: knight".
_CLAIM_RE = re.compile(r"\b([A-Z][A-Za-z]*)\b[\s:=-]*(?:(?:is|was)\s+)?(?:an?\s+)?"
                       r"\b(knights?|knaves?)\b", re.IGNORECASE)  # fmt: skip
# Capitalised words that may stand before a role without naming anyone ("So a knight ...").
_NOT_NAMES = frozenset({"a", "an", "so", "the", "thus", "then", "each", "one", "is"})


def read_assignment(answer: str, names: Sequence[str]) -> tuple[dict[str, bool], str]:
    """{name: is_knight} from an answer such as "A knight, B knave" or "(1) Zoey is a knight
    (2) Oliver is a knave", and a reason: "" when every inhabitant is given one role,
    "contradictory" when one is given both, "unknown_person" when a role is given to a name
    not in the puzzle, "incomplete" when someone is left out."""
    assignment: dict[str, bool] = {}
    for match in _CLAIM_RE.finditer(answer):
        name, is_knight = match.group(1), match.group(2).lower().startswith("knight")
        if name not in names:
            if name.lower() in _NOT_NAMES or not name[0].isupper():
                continue
            return assignment, "unknown_person"
        if assignment.get(name, is_knight) != is_knight:
            return assignment, "contradictory"
        assignment[name] = is_knight
    return assignment, "" if len(assignment) == len(names) else "incomplete"


def _puzzle(example: Example) -> tuple[list, list[str], list[bool]] | None:
    meta = example.meta
    statements, names, solution = meta.get("statements"), meta.get("names"), meta.get("solution")
    if not (isinstance(statements, list) and isinstance(names, list)
            and isinstance(solution, list)):  # fmt: skip
        return None
    if not statements or not len(statements) == len(names) == len(solution):
        return None
    return statements, names, solution


def check(response: str, example: Example) -> TaskCheck:
    """Whether the marked answer assigns every inhabitant the role of the puzzle's solution."""
    puzzle = _puzzle(example)
    answer = marked_answer(response)
    if puzzle is None:
        return TaskCheck(False, answer, answer is not None, "malformed_example")
    if answer is None:
        return TaskCheck(False, None, False, "no_answer")
    _, names, solution = puzzle
    assignment, reason = read_assignment(answer, names)
    if reason:
        return TaskCheck(False, answer, True, reason)
    if any(assignment[n] != bool(k) for n, k in zip(names, solution)):
        return TaskCheck(False, answer, True, "wrong_assignment")
    return TaskCheck(True, answer, True)


@dataclasses.dataclass(frozen=True)
class KnightsKnavesTask:
    """Puzzles of `min_people`..`max_people` inhabitants with one statement each, each with
    exactly one solution; `train_size` training and `eval_size` held-out puzzles.

    The defaults follow Logic-RL (3-7 people, names, its island preamble); the tiny config uses
    `prompt_style="short"` (letters for names, "A says B is a knave.") and 2-3 people.
    `connectives` are the ones statements may use (see `CONNECTIVES`; "not" is always allowed).
    """

    min_people: int = 3
    max_people: int = 7
    connectives: str = "and,or,iff,implies"
    train_size: int = 5000
    eval_size: int = 200
    prompt_style: str = "instruction"
    seed: int = 0

    name = NAME
    reasons = REASONS

    def __post_init__(self):
        if not 2 <= self.min_people <= self.max_people <= len(LETTERS):
            raise ValueError(f"need 2 <= min_people <= max_people <= {len(LETTERS)}, got "
                             f"{self.min_people}, {self.max_people}")  # fmt: skip
        unknown = set(self._connectives()) - set(CONNECTIVES)
        if unknown or not self._connectives():
            raise ValueError(f"connectives must be some of {CONNECTIVES}, got "
                             f"{self.connectives!r}")  # fmt: skip
        if self.prompt_style not in ("instruction", "short"):
            raise ValueError(f"prompt_style must be 'instruction' or 'short', got "
                             f"{self.prompt_style!r}")  # fmt: skip
        if self.train_size < 1 or self.eval_size < 0:
            raise ValueError("train_size must be >= 1 and eval_size >= 0")

    def _connectives(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.connectives.split(",") if c.strip())

    def _statement(self, rng: random.Random, n: int) -> list:
        def atom():
            return ["is", rng.randrange(n), rng.random() < 0.5]

        roll = rng.random()
        if roll < 0.35:
            return atom()
        if roll < 0.45:
            return ["not", atom()]
        kind = rng.choice(self._connectives())
        a, b = atom(), atom()
        while b[1] == a[1]:  # two different people: "A is a knight and A is a knave" is dull
            b = atom()
        return [kind, a, b]

    def prompt(self, statements: Sequence, names: Sequence[str]) -> str:
        said = [f"{names[i]} says {render(s, names)}." for i, s in enumerate(statements)]
        if self.prompt_style == "short":
            return " ".join(said) + "\n"
        listing = ", ".join(names[:-1]) + f", and {names[-1]}"
        quoted = " ".join(
            f'{names[i]} says, "{render(s, names)}."' for i, s in enumerate(statements)
        )
        return (
            "A very special island is inhabited only by knights and knaves. Knights always "
            f"tell the truth, and knaves always lie. You meet {len(names)} inhabitants: "
            f"{listing}. {quoted} So who is a knight and who is a knave?"
        )

    def _problems(self) -> list[Example]:
        rng = random.Random(self.seed)

        def draw():
            n = rng.randint(self.min_people, self.max_people)
            statements = [self._statement(rng, n) for _ in range(n)]
            found = solutions(statements)
            if len(found) != 1:
                return None
            names = list(LETTERS[:n]) if self.prompt_style == "short" else rng.sample(NAMES, n)
            return repr(statements), self.example(statements, names, list(found[0]))

        return draw_distinct(draw, self.eval_size + self.train_size, "puzzles")

    def example(self, statements: Sequence, names: Sequence[str], solution) -> Example:
        return Example(
            id=f"{NAME}/" + ";".join(_code(s) for s in statements),
            prompt=self.prompt(statements, names),
            answer=format_answer(solution, names),
            source=NAME,
            meta={"statements": [list(s) for s in statements], "names": list(names),
                  "solution": [bool(k) for k in solution]},
        )  # fmt: skip

    def split(self, name: str) -> list[Example]:
        """ "train" or "eval" (the first `eval_size` puzzles drawn, held out)."""
        return held_out_split(self._problems(), self.eval_size, name)

    def check(self, response: str, example: Example) -> TaskCheck:
        return check(response, example)

    def sft_pairs(
        self, examples: Sequence[Example], *, error_rate: float, seed: int
    ) -> list[tuple[str, str]]:
        rng = np.random.default_rng(seed)
        pairs = []
        for ex in examples:
            statements, names, solution = _puzzle(ex) or (None, None, None)
            if statements is None:
                raise ValueError(f"{ex.id}: not a Knights and Knaves puzzle (its meta lacks "
                                 "statements, names or solution)")  # fmt: skip
            answer = solution
            if any(_code(s).count("or(") for s in statements) and rng.random() < error_rate:
                misread = solutions([_misread_or(s) for s in statements])
                answer = list(misread[0]) if len(misread) == 1 else solution
            pairs.append((ex.prompt, f"\\boxed{{{format_answer(answer, names)}}}"))
        return pairs

    def tokenizer_corpus(self) -> list[str]:
        examples = self.split("train")[:2000]
        return [p + r for p, r in self.sft_pairs(examples, error_rate=0.5, seed=0)]


def _code(statement: Sequence) -> str:
    """A short stable id of a statement: "is1k", "not(is0n)", "or(is0k,is1n)"."""
    if statement[0] == "is":
        return f"is{statement[1]}{'k' if statement[2] else 'n'}"
    return f"{statement[0]}({','.join(_code(s) for s in statement[1:])})"
