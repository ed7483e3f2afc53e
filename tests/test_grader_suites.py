"""Grading accuracy on the answer-equivalence suites (tests/data/grader_suites): the lenient
policy agrees with the expected labels at least as often as math-verify does, on every suite;
and the suites themselves are what they claim to be."""

import collections
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import grader_agreement  # noqa: E402
from zero_rl.rewards import VerifierPool  # noqa: E402

SUITES = REPO / "tests" / "data" / "grader_suites"
NAMES = ("heldout", "math_is_equiv", "math_verify", "nemo_skills", "qwen_math")


@pytest.fixture(scope="module")
def results():
    with VerifierPool(2) as pool:
        return grader_agreement.agreement(SUITES, pool=pool)


@pytest.mark.parametrize("name", NAMES)
def test_suites_are_balanced_and_well_formed(name):
    rows = grader_agreement.read_suite(SUITES / f"{name}.jsonl")
    assert len(rows) >= 60
    labels = collections.Counter(row["expected"] for row in rows)
    assert labels[False] >= 0.3 * len(rows) and labels[True] >= 0.3 * len(rows)
    assert len({(row["response"], row["gold"]) for row in rows}) == len(rows)  # no duplicates


@pytest.mark.parametrize("name", NAMES)
def test_lenient_agrees_at_least_as_often_as_math_verify(results, name):
    result = results[name]
    assert result["lenient"] >= result["math_verify"], result["misses"]
    assert result["lenient"] >= 0.95, result["misses"]
    # Strict finds no unmarked answer, so it misses the bare and cue cases: it is the reward's
    # policy, not a grader.
    assert result["strict"] < result["lenient"]


def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    suite = tmp_path / "suites"
    suite.mkdir()
    rows = [
        {"response": "Answer: 12", "gold": "12", "expected": True},
        {"response": r"So $\boxed{13}$.", "gold": "12", "expected": False},
    ]
    (suite / "tiny.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "results.json"
    args = ["--suites", str(suite), "--workers", "1", "--json", str(out), "--show-misses"]
    results = grader_agreement.main(args)
    assert results["tiny"]["lenient"] == 1.0 and results["tiny"]["strict"] == 0.5
    assert json.loads(out.read_text())["tiny"]["cases"] == 2
    assert "tiny" in capsys.readouterr().out
    (suite / "bad.jsonl").write_text('{"response": "5", "gold": "5", "expected": "yes"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: need response, gold and a bool expected"):
        grader_agreement.main(["--suites", str(suite), "--workers", "1"])
