"""The code task: reading the program out of a response, grading it by its tests in the
sandbox, the rewards and reasons that reach a run, and the problem file formats."""

import json

import pytest

from zero_rl import sandbox
from zero_rl.data import Example
from zero_rl.data.records import RecordError
from zero_rl.rewards import RewardConfig
from zero_rl.tasks import CodeTask, grade, make_task, reason_counts
from zero_rl.tasks.code import DEFAULT_FILE, extract_program, normalize_output, read_code_problems

pytestmark = pytest.mark.skipif(
    sandbox.isolation() == "none", reason="no namespaces here: the sandbox refuses to run"
)
TASK = CodeTask(wall_s=2.5, cpu_s=2, memory_mb=256)
STDIO = Example(
    "code/add",
    "add",
    "",
    "code",
    meta={
        "tests": [
            {"stdin": "1 2\n", "stdout": "3\n"},
            {"stdin": "5 5\n", "stdout": "10"},
            {"stdin": "2 2\n", "stdout": "4\n"},
            {"stdin": "0 7\n", "stdout": "7\n"},
        ]
    },
)
ASSERTS = Example(
    "code/sq",
    "square",
    "",
    "code",
    meta={
        "entry_point": "square",
        "tests": [{"code": "assert square(3) == 9"}, {"code": "assert square(-2) == 4"}],
    },
)


def block(code, label="python"):
    return f"Here it is:\n```{label}\n{code}\n```\n"


ADD = "a, b = map(int, input().split())\nprint(a + b)"
# Right on the first and third of STDIO's four tests.
HALF = "a, b = map(int, input().split())\nprint(a + b if a != 5 and a != 0 else -1)"


@pytest.mark.parametrize(
    ("response", "program"),
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("```py\nprint(1)\n```", "print(1)\n"),
        ("```Python3 main.py\nprint(1)\n```", "print(1)\n"),
        ("```\nprint(2)\n```", "print(2)\n"),
        ("```python\nprint(1)\n```\nthen\n```python\nprint(3)\n```", "print(3)\n"),
        ("```python\nprint(1)\n```\n```\nplain\n```", "print(1)\n"),  # python block preferred
        ("```text\nnot code\n```", None),
        ("```python\nprint(1)\n", None),  # unclosed: cut off mid-program
        ("print(1)", None),
        ("", None),
    ],
)
def test_extract_program(response, program):
    assert extract_program(response) == program


def test_output_comparison_forgives_whitespace_only():
    assert normalize_output("  1   2 \n3\n\n") == normalize_output("1 2\n3")
    assert normalize_output("1 2") != normalize_output("1\n2")
    assert normalize_output("12") != normalize_output("1 2")


def test_stdin_stdout_and_assert_grading():
    rows = [
        block(ADD),
        block(HALF),
        block("print(input())"),
        "no code at all",
        block("def square(x):\n    return x * x"),
        block("def square(x):\n    return 2 * x"),
        block("import sys\nsys.exit(0)\ndef square(x):\n    return 0"),
        block("def square(x):\n    return x.y"),
        block("def square(x) return"),
    ]
    examples = [STDIO] * 4 + [ASSERTS] * 5
    checks = TASK.check_batch(rows, examples)
    assert [c.correct for c in checks] == [
        True,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
        False,
    ]
    assert [c.reason for c in checks] == [
        "",
        "wrong_answer",
        "wrong_answer",
        "no_answer",
        "",
        "wrong_answer",
        "wrong_answer",
        "runtime_error",
        "syntax_error",
    ]
    assert checks[0].answer == ADD + "\n" and checks[3].answer is None and not checks[3].boxed
    assert all(c.score is None for c in checks)  # all_pass mode
    assert TASK.check(block(ADD), STDIO).correct


def test_fraction_and_all_pass_rewards_through_grade():
    config = RewardConfig(num_workers=1)
    fraction = make_task("code", {"reward_mode": "fraction", "wall_s": 2.5})
    half_row = fraction.grading()
    example = Example(STDIO.id, STDIO.prompt, "", "code", meta={**STDIO.meta, "grading": half_row})
    texts = [block(ADD), block(HALF), "nothing"]
    assert [v.reward for v in grade(texts, [example] * 3, config=config)] == [1.0, 0.5, 0.0]
    assert [v.reward for v in grade(texts, [STDIO] * 3, config=config)] == [1.0, 0.0, 0.0]
    scaled = RewardConfig(correct_reward=2.0, incorrect_reward=-1.0, num_workers=1)
    assert grade(texts[1:2], [example], config=scaled)[0].reward == 0.5  # -1 + 0.5 * 3
    assert not grade(texts[1:2], [example], config=scaled)[0].correct


def test_hostile_programs_score_zero_with_reasons_and_the_batch_goes_on():
    hostile = [
        "while True:\n    pass",
        "x = bytearray(4 * 1024**3)",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "print('x' * 10**8)",
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
        "import os\nos.kill(os.getppid(), 9)",
    ]
    texts = [block(h) for h in hostile] + [block(ADD)]
    task = CodeTask(wall_s=2.0, cpu_s=1, memory_mb=256)
    examples = [
        Example(
            "code/one",
            "",
            "",
            "code",
            meta={"tests": STDIO.meta["tests"][:1], "grading": task.grading()},
        )
    ] * 7
    verdicts = grade(texts, examples, config=RewardConfig(num_workers=1))
    reasons = [v.reason for v in verdicts]
    assert [v.reward for v in verdicts] == [0.0] * 6 + [1.0], reasons
    # Killing the parent reaches nothing outside the sandbox: the program ends with no output,
    # or (its own process group killed first) is reported killed.
    expected = ["timeout", "memory", "timeout", "output_limit", "runtime_error"]
    assert reasons[:5] == expected and reasons[5] in ("wrong_answer", "killed"), reasons
    assert reasons[6] == ""
    assert sum(reason_counts(verdicts).values()) == 6


def test_malformed_examples():
    bad = Example("code/x", "", "", "code", meta={"tests": [{"stdin": 1}]})
    assert TASK.check(block(ADD), bad).reason == "malformed_example"
    assert TASK.check(block(ADD), Example("code/y", "", "", "code")).reason == "malformed_example"


def test_shipped_reference_solutions_pass_and_wrong_ones_fail():
    problems = read_code_problems(DEFAULT_FILE)
    assert len(problems) >= 20 and len({p.id for p in problems}) == len(problems)
    kinds = {"entry_point" in p.meta for p in problems}
    assert kinds == {True, False}  # both stdin/stdout and function problems
    right = [block(p.meta["solution"]) for p in problems]
    wrong = [block(p.meta["wrong_solution"]) for p in problems]
    checks = TASK.check_batch(right + wrong, problems + problems)
    assert all(c.correct for c in checks[: len(problems)]), [c.reason for c in checks]
    assert not any(c.correct for c in checks[len(problems) :])


def test_split_and_teacher():
    task = CodeTask(eval_size=4)
    train, held_out = task.split("train"), task.split("eval")
    assert len(held_out) == 4 and not {e.id for e in train} & {e.id for e in held_out}
    assert all(e.meta["grading"]["reward_mode"] == "all_pass" for e in train)
    pairs = task.sft_pairs(train, error_rate=0.0, seed=0)
    assert [p for p, _ in pairs] == [e.prompt for e in train]
    assert all(task.check(r, e).correct for (_, r), e in zip(pairs, train))
    slipped = task.sft_pairs(train, error_rate=1.0, seed=0)
    assert not any(task.check(r, e).correct for (_, r), e in zip(slipped, train))
    assert any("```python" in text for text in task.tokenizer_corpus())
    with pytest.raises(ValueError, match="reward_mode must be one of"):
        CodeTask(reward_mode="partial")
    with pytest.raises(ValueError, match="unknown split"):
        task.split("test")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_loaders_read_each_public_format(tmp_path):
    apps = {
        "question": "Print the double of n.",
        "problem_id": 7,
        "input_output": json.dumps({"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"]}),
        "solutions": json.dumps(["print(2 * int(input()))"]),
    }
    apps_call = {
        "question": "Return a + b.",
        "input_output": json.dumps(
            {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]}
        ),
    }
    humaneval = {
        "task_id": "HumanEval/0",
        "prompt": 'def inc(x):\n    """x + 1"""\n',
        "canonical_solution": "    return x + 1\n",
        "entry_point": "inc",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
    }
    mbpp = {
        "task_id": 11,
        "text": "Write a function to negate a number.",
        "code": "def neg(x):\n    return -x",
        "test_list": ["assert neg(1) == -1", "assert neg(-3) == 3"],
    }
    path = write_jsonl(tmp_path / "mixed.jsonl", [apps, apps_call, humaneval, mbpp])
    problems = read_code_problems(path)
    assert [p.id for p in problems] == ["code/7", "code/1", "code/HumanEval_0", "code/11"]
    assert problems[0].meta["tests"][1] == {"stdin": "5\n", "stdout": "10\n"}
    assert problems[3].meta["entry_point"] == "neg" and "assert neg(1) == -1" in problems[3].prompt
    assert read_code_problems(write_jsonl(tmp_path / "h.jsonl", [humaneval]), "humaneval")
    solved = [block(p.meta["solution"]) for p in problems if "solution" in p.meta]
    with_solution = [p for p in problems if "solution" in p.meta]
    assert all(c.correct for c in TASK.check_batch(solved, with_solution))
    call = TASK.check_batch(
        [block("def add(a, b):\n    return a + b"), block("def add(a, b):\n    return a - b")],
        [problems[1]] * 2,
    )
    assert [c.correct for c in call] == [True, False]


@pytest.mark.parametrize(
    ("rows", "format", "message"),
    [
        ([{"question": "q"}], "auto", "line 1: not a code problem record"),
        ([{"question": "q", "tests": []}], "auto", "line 1: a zero_rl record without valid tests"),
        ([{"question": "q", "input_output": "{not json"}], "apps", "line 1: a bad apps record"),
        (
            [{"question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": []})}],
            "apps",
            "1 inputs but 0 outputs",
        ),
        ([{"text": "t", "test_list": ["print(1)"]}], "mbpp", "cannot tell the function's name"),
        (
            [{"prompt": "p", "test": "t", "entry_point": "f"}, {"prompt": "p"}],
            "humaneval",
            "line 2: a bad humaneval record",
        ),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, rows, format, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(RecordError, match=f"bad.jsonl:{message}" if "line" in message else message):
        read_code_problems(path, format)


def test_bad_files():
    with pytest.raises(FileNotFoundError, match="no code problem file"):
        read_code_problems("missing.jsonl")
    with pytest.raises(ValueError, match="format must be one of"):
        read_code_problems(DEFAULT_FILE, "leetcode")
