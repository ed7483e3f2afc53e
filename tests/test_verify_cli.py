"""`python -m zero_rl.tools.verify`: JSONL in, JSONL verdicts out, summary on stderr."""

import io
import json
import os
import pathlib
import subprocess
import sys

import pytest

from zero_rl.tools.verify import InputError, main, read_examples

ROOT = pathlib.Path(__file__).resolve().parents[1]

LINES = [
    {"response": "So she makes $\\boxed{18}$ dollars.", "answer": "9 * 2 = 18\n#### 18"},
    {"response": "The answer is 70,000.", "answer": "#### 70000"},
    {"response": "I could not finish", "answer": "#### 5"},
    {"response": "$\\boxed{9^{9^{9^{9}}}}$", "answer": "#### 1"},
    {"response": "Thus $\\boxed{7}$.", "answer": "#### 8"},
]


def _run(args, stdin=""):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "zero_rl.tools.verify", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_stdin_to_stdout_in_order(monkeypatch, capsys):
    stdin = (
        "\n".join(json.dumps(line) for line in LINES[:2])
        + "\n\n"
        + "\n".join(json.dumps(line) for line in LINES[2:])
    )
    # In-process (the subprocess tests below cover `python -m zero_rl.tools.verify` itself).
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["--timeout-s", "1", "--dataset", "gsm8k", "--num-workers", "1"]) == 0
    result = capsys.readouterr()
    verdicts = [json.loads(line) for line in result.out.splitlines()]
    assert verdicts == [
        {"correct": True, "extracted": "18", "reward": 1.0, "timed_out": False},
        {"correct": True, "extracted": "70,000", "reward": 1.0, "timed_out": False},
        {"correct": False, "extracted": None, "reward": 0.0, "timed_out": False},
        {"correct": False, "extracted": "9^{9^{9^{9}}}", "reward": 0.0, "timed_out": True},
        {"correct": False, "extracted": "7", "reward": 0.0, "timed_out": False},
    ]
    summary = result.err
    assert "graded 5 responses" in summary and "accuracy 0.4000 (2/5)" in summary
    assert "timeouts 1" in summary and "responses/s" in summary


def test_files_and_format_aware_mode(tmp_path, capsys):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    r1 = {"response": "<think>9 * 2</think> <answer>18</answer>", "answer": "#### 18"}
    source.write_text("\n".join(json.dumps(line) for line in LINES[:3] + LINES[4:] + [r1]))
    argv = ["--input", str(source), "--output", str(target), "--mode", "format_aware"]
    assert main(argv + ["--num-workers", "1"]) == 0  # in-process: the same code as the CLI
    assert capsys.readouterr().out == ""
    rewards = [json.loads(line)["reward"] for line in target.read_text().splitlines()]
    assert rewards == [1.0, 0.5, -1.0, -0.5, 1.0]


@pytest.mark.parametrize(
    "extraction, correct", [(None, True), ("lenient", True), ("strict", False)]
)
def test_extraction_policy(tmp_path, extraction, correct):
    """Lenient by default: a bare final answer counts; strict (the reward's rule) needs a mark."""
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"response": "Adding: 7 + 5\n\n12", "answer": "12"}) + "\n")
    argv = ["--input", str(source), "--output", str(target), "--num-workers", "1"]
    assert main(argv + ([] if extraction is None else ["--extraction", extraction])) == 0
    verdict = json.loads(target.read_text())
    assert verdict["correct"] is correct
    assert verdict["extracted"] == ("12" if correct else None)


@pytest.mark.parametrize("output", ["missing_dir/out.jsonl", "."], ids=["no-dir", "a-dir"])
def test_a_bad_output_path_is_a_one_line_error(tmp_path, capsys, output):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(LINES[0]) + "\n")
    assert main(["--input", str(source), "--output", str(tmp_path / output)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: cannot write --output {tmp_path / output}: ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_a_missing_input_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.jsonl" in err and err.count("\n") == 1


def test_malformed_line_stops_before_grading():
    stdin = json.dumps(LINES[0]) + "\n" + '{"response": "x", "answer": 1' + "\n"
    result = _run([], stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: line 2: not valid JSON")


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", "line 2: expected a JSON object, got list"),
        ('{"response": "x"}', "line 2: missing key(s) answer"),
        ('{"answer": "1"}', "line 2: missing key(s) response"),
        ('{"response": 3, "answer": "1"}', "line 2: 'response' must be a string, got int"),
        ('{"response": "x", "answer": null}', "line 2: bad 'answer'"),
        ('{"response": "x", "answer": ""}', "line 2: bad 'answer'"),
    ],
)
def test_read_examples_names_the_bad_line(line, message):
    stream = io.StringIO(json.dumps(LINES[0]) + "\n" + line + "\n")
    with pytest.raises(InputError) as error:
        read_examples(stream, None)
    assert str(error.value).startswith(message)


def test_read_examples_normalises_answers_and_skips_blank_lines():
    stream = io.StringIO(
        '\n{"response": "r", "answer": 27.0}\n\n{"response": "s", "answer": ["$x$"]}\n'
    )
    assert read_examples(stream, None) == [("r", "27"), ("s", "x")]
