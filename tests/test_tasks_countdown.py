"""Countdown: the expression parser, the verifier, the generator, its teacher and file reader."""

import json
from fractions import Fraction

import pytest

from zero_rl.data import Example
from zero_rl.data.records import RecordError
from zero_rl.tasks import CountdownTask
from zero_rl.tasks.countdown import (
    MAX_EXPRESSION_CHARS,
    ExpressionError,
    check,
    parse_expression,
    read_countdown_file,
)

TINY = dict(min_numbers=3, max_numbers=3, max_number=15, max_target=99, operations="+-*",
            train_size=300, eval_size=50, prompt_style="short")  # fmt: skip


@pytest.mark.parametrize(
    "text, value, numbers",
    [
        ("3+5*7", 38, [3, 5, 7]),
        ("(3+5)*7", 56, [3, 5, 7]),
        ("7*(3+5)", 56, [7, 3, 5]),
        ("10-4-3", 3, [10, 4, 3]),  # left-associative
        ("10-(4-3)", 9, [10, 4, 3]),
        ("12/4/3", 1, [12, 4, 3]),
        ("10/4", Fraction(5, 2), [10, 4]),  # exact, no float rounding
        (" ( 3 + 5 ) * 7 ", 56, [3, 5, 7]),
        ("\\left(3+5\\right)\\times 7", 56, [3, 5, 7]),
        ("3 \\cdot 5 \\div 5", 3, [3, 5, 5]),
        ("3 × 5 − 1", 14, [3, 5, 1]),
        ("$(1+2)/3$", 1, [1, 2, 3]),
        ("((((4))))", 4, [4]),
        ("007+1", 8, [7, 1]),
    ],
)
def test_parse_expression(text, value, numbers):
    assert parse_expression(text) == (value, numbers)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "unparsable"),
        ("3++5", "unparsable"),
        ("-3+5", "unparsable"),  # no unary minus: the numbers are positive
        ("3.5+1", "unparsable"),
        ("3 5", "unparsable"),
        ("(3+5", "unparsable"),
        ("3+5)", "unparsable"),
        ("2**10", "unparsable"),
        ("3^2", "unparsable"),
        ("x+1", "unparsable"),
        ("__import__('os').system('true')", "unparsable"),
        ("1234567+1", "unparsable"),
        ("3/(2-2)", "division_by_zero"),
        ("(" * 17 + "1" + ")" * 17, "unparsable"),
        ("1+" * (MAX_EXPRESSION_CHARS // 2) + "1", "too_long"),
    ],
)
def test_parse_expression_rejects(text, reason):
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    assert caught.value.reason == reason


def _example(numbers, target):
    return CountdownTask().example(numbers, target)


@pytest.mark.parametrize(
    "response, correct, reason",
    [
        ("3+5=8, 8*7=56, \\boxed{(3+5)*7}", True, ""),
        ("<think>8 times 7</think> <answer> (3 + 5) * 7 </answer>", True, ""),
        ("\\boxed{(5+3)*7 = 56}", True, ""),  # a stated result after the expression
        ("\\boxed{7*(5+3)}", True, ""),  # any order
        ("\\boxed{3+5*7}", False, "wrong_value"),
        ("\\boxed{(3+5)*7 = 57}", False, "wrong_value"),  # a false stated result
        ("\\boxed{8*7}", False, "wrong_numbers"),  # 8 is not given
        ("\\boxed{(3+5)*7*1}", False, "wrong_numbers"),  # 1 is not given
        ("\\boxed{(3+5)*7+3-3}", False, "wrong_numbers"),  # 3 is given once
        ("\\boxed{56}", False, "wrong_numbers"),
        ("\\boxed{(3+5)*7/(3-3)}", False, "division_by_zero"),
        ("\\boxed{eval('56')}", False, "unparsable"),
        ("(3+5)*7", False, "no_answer"),  # not marked
        ("\\boxed{(3+5)*7", False, "no_answer"),  # unclosed: truncated
        ("", False, "no_answer"),
    ],
)
def test_check(response, correct, reason):
    result = check(response, _example([3, 5, 7], 56))
    assert (result.correct, result.reason) == (correct, reason)
    assert result.boxed == (reason != "no_answer")


def test_check_never_evaluates(tmp_path):
    marker = tmp_path / "pwned"
    response = f"\\boxed{{__import__('pathlib').Path('{marker}').touch()}}"
    assert check(response, _example([1, 2], 3)).reason == "unparsable"
    assert not marker.exists()


@pytest.mark.parametrize(
    "meta",
    [{}, {"numbers": [1, 2]}, {"numbers": "1 2", "target": 3}, {"numbers": [1, 2], "target": "3"},
     {"numbers": [1.5, 2], "target": 3}, {"numbers": [], "target": 3}],
)  # fmt: skip
def test_malformed_example_is_a_counted_zero(meta):
    example = Example("countdown/x", "Make 3 from 1 2", "3", "countdown", meta=meta)
    result = check("\\boxed{1+2}", example)
    assert (result.correct, result.reason) == (False, "malformed_example")


def test_generator_is_deterministic_and_held_out_is_disjoint():
    task = CountdownTask(**TINY)
    train, held_out = task.split("train"), task.split("eval")
    assert (len(train), len(held_out)) == (300, 50)
    assert [ex.id for ex in train] == [ex.id for ex in CountdownTask(**TINY).split("train")]
    key = lambda ex: (tuple(sorted(ex.meta["numbers"])), ex.meta["target"])  # noqa: E731
    assert not {key(ex) for ex in train} & {key(ex) for ex in held_out}
    assert len({key(ex) for ex in train}) == len(train)
    other_seed = CountdownTask(**{**TINY, "seed": 1}).split("train")
    assert [ex.id for ex in other_seed] != [ex.id for ex in train]
    for ex in train + held_out:
        numbers, target = ex.meta["numbers"], ex.meta["target"]
        assert len(numbers) == 3 and all(1 <= n <= 15 for n in numbers)
        assert 1 <= target <= 99 and ex.answer == str(target)
        assert ex.prompt == f"Make {target} from {' '.join(map(str, numbers))}\n"
        # The worked solution is a correct answer and uses only the allowed operations.
        assert check(f"\\boxed{{{ex.meta['solution']}}}", ex).correct, ex
        assert "/" not in ex.meta["solution"]


def test_instruction_prompt_follows_tinyzero():
    ex = CountdownTask().example([3, 5, 7], 56)
    assert ex.prompt == (
        "Using the numbers [3, 5, 7], create an equation that equals 56. You can use basic "
        "arithmetic operations (+, -, *, /) and each number can only be used once."
    )


def test_default_generator_covers_division():
    task = CountdownTask(train_size=400, eval_size=0)
    solutions = [ex.meta["solution"] for ex in task.split("train")]
    assert any("/" in s for s in solutions)
    assert {len(ex.meta["numbers"]) for ex in task.split("train")} == {3, 4}


def test_teacher_answers_its_last_step_at_its_error_rate():
    task = CountdownTask(**TINY)
    train = task.split("train")
    exact = task.sft_pairs(train, error_rate=0.0, seed=0)
    assert all(check(response, ex).correct for (_, response), ex in zip(exact, train))
    first = train[0]
    assert exact[0][1] == ", ".join([*first.meta["steps"], f"\\boxed{{{first.meta['solution']}}}"])
    slipped = task.sft_pairs(train, error_rate=1.0, seed=0)
    for (prompt, response), ex in zip(slipped, train):
        assert prompt == ex.prompt
        last_step = ex.meta["steps"][-1].partition("=")[0]
        assert response == ", ".join([*ex.meta["steps"], f"\\boxed{{{last_step}}}"])
        assert check(response, ex).reason == "wrong_numbers"  # it uses an intermediate result
    half = task.sft_pairs(train, error_rate=0.5, seed=0)
    wrong = sum(not check(r, ex).correct for (_, r), ex in zip(half, train)) / len(train)
    assert 0.4 < wrong < 0.6


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(min_numbers=1), "min_numbers"),
        (dict(min_numbers=4, max_numbers=3), "min_numbers"),
        (dict(operations="+^"), "operations"),
        (dict(prompt_style="long"), "prompt_style"),
        (dict(max_number=2, max_numbers=3, min_numbers=3, train_size=500), "distinct problems"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        CountdownTask(**settings).split("train")


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        CountdownTask(**TINY).split("test")


def test_read_countdown_file(tmp_path):
    path = tmp_path / "countdown.jsonl"
    rows = [{"target": 56, "nums": [3, 5, 7]}, {"target": 3, "numbers": [1, 2]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    examples = read_countdown_file(path)
    puzzles = [(ex.meta["numbers"], ex.meta["target"]) for ex in examples]
    assert puzzles == [([3, 5, 7], 56), ([1, 2], 3)]
    assert check("\\boxed{(3+5)*7}", examples[0]).correct
    with pytest.raises(ValueError, match="no worked solution"):
        CountdownTask().sft_pairs(examples, error_rate=0.0, seed=0)


def test_a_task_reads_its_problems_from_a_file(tmp_path):
    path = tmp_path / "countdown.jsonl"
    rows = [{"target": t, "nums": [t, 1, 1]} for t in range(10, 20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = CountdownTask(data_file=str(path), eval_size=3, train_size=5)
    assert [ex.meta["target"] for ex in task.split("eval")] == [10, 11, 12]
    assert [ex.meta["target"] for ex in task.split("train")] == [13, 14, 15, 16, 17]
    with pytest.raises(ValueError, match="leave none to train on"):
        CountdownTask(data_file=str(path), eval_size=10).split("train")


@pytest.mark.parametrize(
    "line", ['{"target": 5}', '{"nums": [1, 2], "target": "3"}', '{"nums": [1, "2"], "target": 3}',
             "[1, 2]", "not json"],
)  # fmt: skip
def test_read_countdown_file_names_the_bad_line(tmp_path, line):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"target": 56, "nums": [3, 5, 7]}\n' + line + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:line 2"):
        read_countdown_file(path)
