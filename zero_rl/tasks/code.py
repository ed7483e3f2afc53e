"""Code: write a Python program that passes the problem's tests, run in `zero_rl.sandbox`.

A response's program is its last fenced ```python block (or, without one, its last unlabelled
``` block); an unclosed block is no answer. A problem's tests are either stdin/stdout pairs
(APPS/TACO: the program reads the input and its output must match, compared line by line with
whitespace runs collapsed and blank lines at the ends dropped) or assert code (HumanEval/MBPP:
the program defines `entry_point`, the test code is appended and must run to its end - a line
printed after the asserts with a fresh random token, so a program that exits early before the
asserts does not pass). Every test is its own sandboxed process; `check_batch` runs a batch's
tests `num_workers` at a time.

`reward_mode="all_pass"`: correct iff every test passes. `"fraction"`: the check also carries
`score` = the fraction of tests passed (a partial reward through `zero_rl.tasks.grade`), and is
`correct` only when all pass.

Known limit: the appended test code runs in the program's own process, so a program that reads
its own file could find the token; the sandbox still contains it, the reward alone is at stake.

The shipped problem set (`data/code_problems.jsonl`, written for this project) has a reference
and a wrong solution per problem; the SFT teacher answers the wrong one on `error_rate` of the
problems. Problems read from APPS, TACO, HumanEval or MBPP files (`read_code_problems`) have no
wrong solution, and their teacher always answers the reference.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zero_rl import sandbox
from zero_rl.data.records import Example, RecordError
from zero_rl.data.records import _iter_records as iter_records
from zero_rl.tasks.base import TaskCheck

NAME = "code"
REASONS = (
    "no_answer",
    "syntax_error",
    "runtime_error",
    "wrong_answer",
    "timeout",
    "memory",
    "output_limit",
    "killed",
    "refused",
    "malformed_example",
)
REWARD_MODES = ("all_pass", "fraction")
FORMATS = ("auto", "zero_rl", "apps", "humaneval", "mbpp")
DEFAULT_FILE = str(Path(__file__).resolve().parent / "data" / "code_problems.jsonl")
_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_LABELS = ("python", "python3", "py")
# A sandbox status -> the reason of a failed test (an "ok" run is judged by its output).
_STATUS_REASONS = {
    "error": "runtime_error",
    "syntax_error": "syntax_error",
    "timeout": "timeout",
    "memory": "memory",
    "output_limit": "output_limit",
    "killed": "killed",
    "refused": "refused",
}


def extract_program(response: str) -> str | None:
    """The last closed ```python (or ```py / ```python3) block of `response`, or without one
    its last unlabelled ``` block; None when there is neither."""
    blocks = _FENCE_RE.findall(response)
    for wanted in (_PYTHON_LABELS, ("",)):
        chosen = [code for label, code in blocks if label.lower() in wanted]
        if chosen:
            return chosen[-1]
    return None


def normalize_output(text: str) -> list[str]:
    """Output lines with whitespace runs collapsed, blank lines at either end dropped."""
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def _tests(example: Example) -> list[dict] | None:
    tests = example.meta.get("tests")
    if not isinstance(tests, list) or not tests:
        return None
    for test in tests:
        stdio = isinstance(test, dict) and isinstance(test.get("stdin"), str)
        if not (stdio and isinstance(test.get("stdout"), str)) and not (
            isinstance(test, dict) and isinstance(test.get("code"), str)
        ):
            return None
    return tests


def _job(program: str, test: dict) -> tuple[str, bytes, str | None]:
    """(source, stdin, the token its last line must be, or None for a stdin/stdout test)."""
    if "code" not in test:
        return program, test["stdin"].encode(), None
    token = secrets.token_hex(8)
    return f"{program}\n\n{test['code']}\nprint({token!r})\n", b"", token


def _judge(result: sandbox.RunResult, test: dict, token: str | None) -> str:
    """The empty reason "" when the test passes, else why it fails."""
    if result.status != "ok":
        if result.status == "error" and b"AssertionError" in result.stderr.rstrip()[-300:]:
            return "wrong_answer"
        return _STATUS_REASONS.get(result.status, "runtime_error")
    out = result.stdout.decode("utf-8", "replace")
    if token is not None:
        return "" if out.rstrip().rpartition("\n")[2] == token else "wrong_answer"
    return "" if normalize_output(out) == normalize_output(test["stdout"]) else "wrong_answer"


@dataclasses.dataclass(frozen=True)
class CodeTask:
    """Programming problems from `data_file` (the shipped set when empty) in `data_format`
    (see `read_code_problems`): the first `eval_size` held out, up to `train_size` of the rest
    for training. Each test runs under `wall_s` seconds of wall time, `cpu_s` of CPU and
    `memory_mb` of address space; `num_workers` tests run at once."""

    data_file: str = ""
    data_format: str = "auto"
    train_size: int = 10000
    eval_size: int = 4
    reward_mode: str = "all_pass"
    num_workers: int = 2
    wall_s: float = 5.0
    cpu_s: int = 4
    memory_mb: int = 512

    name = NAME
    reasons = REASONS

    def __post_init__(self):
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {self.reward_mode!r}")
        if self.data_format not in FORMATS:
            raise ValueError(f"data_format must be one of {FORMATS}, got {self.data_format!r}")
        if self.num_workers < 1 or self.train_size < 1 or self.eval_size < 0:
            raise ValueError("num_workers and train_size must be >= 1 and eval_size >= 0")
        # Limits validates the rest (wall_s, cpu_s, memory_mb > 0).
        self.limits()

    def limits(self) -> sandbox.Limits:
        return sandbox.Limits(wall_s=self.wall_s, cpu_s=self.cpu_s, memory_mb=self.memory_mb)

    def grading(self) -> dict:
        """The settings a check needs, stored in each example's meta by `split`: `grade` checks
        with a default CodeTask, so the run's settings must travel with the example."""
        return {
            "reward_mode": self.reward_mode,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "memory_mb": self.memory_mb,
            "num_workers": self.num_workers,
        }

    def _for(self, example: Example) -> CodeTask:
        grading = example.meta.get("grading")
        if not isinstance(grading, dict) or not grading:
            return self
        return dataclasses.replace(self, **{k: grading[k] for k in self.grading() if k in grading})

    def split(self, name: str) -> list[Example]:
        """ "train" or "eval" (the file's first `eval_size` problems, held out)."""
        if name not in ("train", "eval"):
            raise ValueError(f"unknown split {name!r}; valid: train, eval")
        path = self.data_file or DEFAULT_FILE
        grading = self.grading()
        problems = [
            dataclasses.replace(ex, meta={**ex.meta, "grading": grading})
            for ex in read_code_problems(path, self.data_format)
        ]
        if len(problems) <= self.eval_size:
            raise ValueError(
                f"{path}: {len(problems)} problems leave none to train on after "
                f"eval_size={self.eval_size}"
            )
        held_out, train = problems[: self.eval_size], problems[self.eval_size :]
        return train[: self.train_size] if name == "train" else held_out

    def check(self, response: str, example: Example) -> TaskCheck:
        return self.check_batch([response], [example])[0]

    def check_batch(self, responses: Sequence[str], examples: Sequence[Example]) -> list[TaskCheck]:
        """One TaskCheck per response; all tests of the batch run `num_workers` at a time."""
        if len(responses) != len(examples):
            raise ValueError(f"{len(responses)} responses but {len(examples)} examples")
        checks: list[TaskCheck | None] = [None] * len(responses)
        programs, jobs = {}, []  # jobs: (row, test, source, stdin, token, limits)
        settings = [self._for(example) for example in examples]
        for row, (response, example) in enumerate(zip(responses, examples)):
            program, tests = extract_program(response), _tests(example)
            if tests is None:
                checks[row] = TaskCheck(False, program, program is not None, "malformed_example")
            elif program is None:
                checks[row] = TaskCheck(False, None, False, "no_answer")
            else:
                programs[row], limits = program, settings[row].limits()
                jobs += [(row, test, *_job(program, test), limits) for test in tests]
        workers = min(max(s.num_workers for s in settings) if settings else 1, len(jobs) or 1)
        run = lambda job: sandbox.run_program(job[2], stdin=job[3], limits=job[5])  # noqa: E731
        verdicts: dict[int, list[str]] = {}
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for job, result in zip(jobs, pool.map(run, jobs)):
                verdicts.setdefault(job[0], []).append(_judge(result, job[1], job[4]))
        for row, reasons in verdicts.items():
            failed = [r for r in reasons if r]
            fraction = settings[row].reward_mode == "fraction"
            score = 1 - len(failed) / len(reasons) if fraction else None
            checks[row] = TaskCheck(
                not failed, programs[row], True, failed[0] if failed else "", score
            )
        return checks

    def sft_pairs(
        self, examples: Sequence[Example], *, error_rate: float, seed: int
    ) -> list[tuple[str, str]]:
        """The reference solution in a ```python block, the wrong one (where the problem has
        one) on `error_rate` of the problems."""
        rng = np.random.default_rng(seed)
        pairs = []
        for ex in examples:
            solution = ex.meta.get("solution")
            if not isinstance(solution, str) or not solution.strip():
                raise ValueError(f"{ex.id}: no reference solution to imitate")
            wrong = ex.meta.get("wrong_solution")
            if rng.random() < error_rate and isinstance(wrong, str) and wrong.strip():
                solution = wrong
            pairs.append((ex.prompt, f"```python\n{solution.strip()}\n```"))
        return pairs

    def tokenizer_corpus(self) -> list[str]:
        examples = self.split("train") + self.split("eval")
        return [p + r for p, r in self.sft_pairs(examples, error_rate=0.5, seed=0)]


def _stdio_prompt(question: str) -> str:
    return (
        f"{question.strip()}\n\nWrite a Python 3 program that reads the input from standard "
        "input and prints the answer. Give the complete program in one ```python block."
    )


def _function_prompt(question: str, entry_point: str, example_test: str = "") -> str:
    shown = f"\nIt must pass, for example:\n{example_test.strip()}\n" if example_test else ""
    return (
        f"{question.strip()}\n{shown}\nWrite the Python function `{entry_point}`. Give the "
        "complete code in one ```python block."
    )


def _example(pid: str, prompt: str, tests: list[dict], meta: dict) -> Example:
    return Example(
        id=f"{NAME}/{pid}", prompt=prompt, answer="", source=NAME, meta={"tests": tests, **meta}
    )


def _from_zero_rl(r: dict, n: int) -> Example:
    entry = r.get("entry_point")
    prompt = _function_prompt(r["question"], entry) if entry else _stdio_prompt(r["question"])
    meta = {k: r[k] for k in ("solution", "wrong_solution", "entry_point") if r.get(k)}
    return _example(str(r.get("id", n)), prompt, list(r["tests"]), meta)


def _from_apps(r: dict, n: int) -> Example:
    io = r["input_output"]
    io = json.loads(io) if isinstance(io, str) else io
    inputs, outputs, fn = io["inputs"], io["outputs"], io.get("fn_name")
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
    solutions = r.get("solutions") or "[]"
    solutions = json.loads(solutions) if isinstance(solutions, str) else solutions
    meta = {"solution": solutions[0]} if solutions else {}
    if fn:  # call-based: the arguments and the result, which APPS stores wrapped in a list
        tests = [
            {"code": f"_r = {fn}(*{a!r})\nassert _r == {b!r} or [_r] == {b!r}"}
            for a, b in zip(inputs, outputs)
        ]
        return _example(
            str(r.get("problem_id", r.get("id", n))),
            _function_prompt(r["question"], fn),
            tests,
            {**meta, "entry_point": fn},
        )
    text = lambda v: "\n".join(v) if isinstance(v, list) else str(v)  # noqa: E731
    tests = [{"stdin": text(a), "stdout": text(b)} for a, b in zip(inputs, outputs)]
    return _example(
        str(r.get("problem_id", r.get("id", n))), _stdio_prompt(r["question"]), tests, meta
    )


def _from_humaneval(r: dict, n: int) -> Example:
    entry = r["entry_point"]
    tests = [{"code": f"{r['test']}\ncheck({entry})"}]
    meta = {"entry_point": entry}
    if r.get("canonical_solution"):
        meta["solution"] = r["prompt"] + r["canonical_solution"]
    return _example(
        str(r.get("task_id", n)).replace("/", "_"),
        _function_prompt(r["prompt"], entry),
        tests,
        meta,
    )


def _from_mbpp(r: dict, n: int) -> Example:
    test_list = list(r["test_list"])
    match = re.search(r"assert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(", test_list[0])
    if match is None:
        raise ValueError(f"cannot tell the function's name from {test_list[0][:60]!r}")
    setup = r.get("test_setup_code") or ""
    tests = [{"code": f"{setup}\n{t}"} for t in test_list]
    meta = {"entry_point": match.group(1), **({"solution": r["code"]} if r.get("code") else {})}
    return _example(
        str(r.get("task_id", n)),
        _function_prompt(r["text"], match.group(1), test_list[0]),
        tests,
        meta,
    )


_READERS = {
    "zero_rl": _from_zero_rl,
    "apps": _from_apps,
    "humaneval": _from_humaneval,
    "mbpp": _from_mbpp,
}
_KEYS = {
    "zero_rl": ("question", "tests"),
    "apps": ("question", "input_output"),
    "humaneval": ("prompt", "test", "entry_point"),
    "mbpp": ("text", "test_list"),
}


def _format_of(record: dict) -> str | None:
    for name, keys in _KEYS.items():
        if all(k in record for k in keys):
            return name
    return None


def read_code_problems(path: str | os.PathLike, format: str = "auto") -> list[Example]:
    """Problems from a .jsonl / .json / .parquet file of records in `format`:

    - "zero_rl" (the shipped set): `question`, `tests` ([{"stdin", "stdout"}] or [{"code"}]),
      optional `entry_point`, `solution`, `wrong_solution`, `id`;
    - "apps" (APPS, TACO): `question`, `input_output` (JSON of "inputs", "outputs", optional
      "fn_name" for call-based problems), optional `solutions` (JSON list);
    - "humaneval": `prompt`, `test` (defining `check`), `entry_point`, `canonical_solution`;
    - "mbpp": `text`, `test_list` (assert lines), `code`, optional `test_setup_code`;
    - "auto": each record by the fields it has.

    A bad record raises a RecordError naming the file and line.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no code problem file at {path}")
    examples = []
    for location, record in iter_records(path):
        if isinstance(record, Exception):
            raise RecordError(f"{path}:{location}: {record}")
        kind = _format_of(record) if isinstance(record, dict) and format == "auto" else format
        if not isinstance(record, dict) or kind not in _READERS:
            raise RecordError(
                f"{path}:{location}: not a code problem record of a known format "
                f"({', '.join(FORMATS[1:])}): {str(record)[:80]}"
            )
        try:
            example = _READERS[kind](record, len(examples))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise RecordError(
                f"{path}:{location}: a bad {kind} record ({type(error).__name__}: {error})"
            ) from None
        if _tests(example) is None:
            raise RecordError(f"{path}:{location}: a {kind} record without valid tests")
        examples.append(example)
    if not examples:
        raise RecordError(f"{path}: no code problems")
    return examples
