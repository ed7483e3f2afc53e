"""Grading-only mode on a hand-written outputs file: verdicts, summary numbers, errors."""

import json

import pytest

from zero_rl.eval import OutputDirError, format_summary, grade_outputs, read_outputs
from zero_rl.eval.grade import OutputsError
from zero_rl.eval.harness import GRADING_KEYS
from zero_rl.eval.store import GenerationStore
from zero_rl.rewards import RewardConfig, VerifierPool
from zero_rl.summaries import SummaryWriter, read_scalars
from zero_rl.tokenizer import load_tokenizer

OUTPUTS = [
    # toy: problem p1 (one right, one truncated and wrong), and a problem known by its prompt.
    {"id": "p1", "prompt": "1+1?", "response": "so \\boxed{2}", "answer": "2",
     "benchmark": "toy", "length": 5, "finish_reason": "stop"},
    {"id": "p1", "response": "the answer is 3", "answer": "2", "benchmark": "toy", "length": 7,
     "finish_reason": "length"},
    {"prompt": "half?", "response": "\\boxed{0.5}", "answer": "\\frac{1}{2}", "benchmark": "toy",
     "truncated": False},
    {"prompt": "half?", "response": "Wait, I think \\boxed{1/2}", "gold": "$\\frac12$",
     "benchmark": "toy"},
    # gsm8k: golds in the dataset's "#### N" form; ids are numbers.
    {"id": 7, "response": "So she makes #### 18", "answer": "9 * 2 = 18\n#### 18",
     "benchmark": "gsm8k"},
    {"id": 8, "response": "\\boxed{17}", "answer": "#### 18", "benchmark": "gsm8k"},
]  # fmt: skip


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(1) as p:
        yield p


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_grade_hand_written_outputs(tmp_path, pool):
    path = _write(tmp_path / "outputs.jsonl", OUTPUTS)
    writer = SummaryWriter(str(tmp_path / "tb"))
    summary = grade_outputs(path, str(tmp_path / "out"), pool=pool, writer=writer, step=3,
                            progress=False)  # fmt: skip
    writer.close()
    toy, gsm8k = summary["benchmarks"]["toy"], summary["benchmarks"]["gsm8k"]
    assert toy["accuracy"] == pytest.approx(3 / 4)
    assert toy["pass@1"] == pytest.approx((1 / 2 + 1) / 2)
    assert toy["pass@2"] == pytest.approx(1.0)
    assert toy["maj@2"] == pytest.approx(1.0)  # p1: 2 vs 3 tie, 2 came first; half: one answer
    assert toy["mean_length"] == pytest.approx(6.0)  # lengths of the other two are unknown
    assert toy["mean_length_correct"] == pytest.approx(5.0)
    assert toy["mean_length_wrong"] == pytest.approx(7.0)
    assert toy["truncated_ratio"] == pytest.approx(1 / 3)  # one line says nothing
    assert toy["boxed_ratio"] == pytest.approx(3 / 4)
    assert toy["reflection_ratio"] == pytest.approx(1 / 4)
    assert gsm8k["accuracy"] == pytest.approx(1 / 2) and gsm8k["samples_per_problem"] == 1
    assert summary["average"]["accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)

    lines = (tmp_path / "out" / "toy" / "generations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["correct"] for r in records] == [True, False, True, True]
    assert [r["sample"] for r in records] == [0, 1, 0, 1]
    assert [r["extracted"] for r in records] == ["2", "3", "0.5", "1/2"]
    assert records[2]["id"] == records[3]["id"] != "half?"
    assert [r["gold"] for r in records] == ["2", "2", "\\frac{1}{2}", "\\frac12"]
    with open(tmp_path / "out" / "summary.json") as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    assert read_scalars(str(tmp_path / "tb"))["eval/toy/accuracy"] == [(3, 0.75)]


def test_tokenizer_fills_in_missing_lengths(tmp_path, pool):
    tokenizer = load_tokenizer("zero_rl/assets/tiny_addition.model")
    path = _write(tmp_path / "toy.jsonl", [dict(OUTPUTS[2], response="12+3=15 \\boxed{15}")])
    summary = grade_outputs(path, str(tmp_path / "out"), pool=pool, tokenizer=tokenizer,
                            progress=False)  # fmt: skip
    expected = len(tokenizer.encode("12+3=15 \\boxed{15}"))
    assert summary["benchmarks"]["toy"]["mean_length"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "outputs.jsonl:2: Expecting property name"),
        ('{"id": 1, "answer": "2"}', "outputs.jsonl:2: 'response' is missing"),
        ('{"response": "x", "answer": "2"}', "outputs.jsonl:2: needs 'id' or 'prompt'"),
        ('{"id": 1, "response": "x"}', "outputs.jsonl:2: needs 'answer' or 'gold'"),
        ('{"id": 1, "response": "x", "answer": "2", "length": 3.5}', "integer token count"),
        ('{"id": 1, "response": "x", "answer": "2", "truncated": "no"}', "true or false"),
        ('{"id": 1, "response": "x", "answer": "seven", "benchmark": "gsm8k"}', "no '#### N' line"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path / "outputs.jsonl", [OUTPUTS[0], line])
    with pytest.raises(OutputsError, match=message):
        read_outputs(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_outputs(str(tmp_path / "nope.jsonl"))
    with pytest.raises(OutputsError, match="no outputs"):
        read_outputs(_write(tmp_path / "empty.jsonl", [""]))


def test_format_summary_marks_unknowns(tmp_path, pool):
    path = _write(tmp_path / "toy.jsonl", [OUTPUTS[2], OUTPUTS[3]])  # no lengths, one truncation
    summary = grade_outputs(path, str(tmp_path / "out"), pool=pool, progress=False)
    line = format_summary(summary).splitlines()[0]
    assert line.split() == ["toy", "acc", "1.000", "pass@2", "1.000", "maj@2", "1.000", "len",
                            "-", "trunc", "0.00", "boxed", "1.00", "refl", "0.50", "rep", "0.00",
                            "(n=1)"]  # fmt: skip


def test_grading_writes_settings_and_regrades_only_its_own_source(tmp_path, pool):
    out = tmp_path / "out"
    path = _write(tmp_path / "outputs.jsonl", OUTPUTS)
    first = grade_outputs(path, str(out), pool=pool, progress=False)
    with open(out / "toy" / "settings.json") as f:
        settings = json.load(f)
    assert settings == {
        "graded_from": str(tmp_path / "outputs.jsonl"),
        "grading": {k: getattr(RewardConfig(extraction="lenient"), k) for k in GRADING_KEYS},
    }
    assert set(GRADING_KEYS) == {"extraction", "last_number_fallback", "rel_tol", "timeout_s"}
    assert settings["grading"]["extraction"] == "lenient"  # grading reads unmarked answers
    assert first["settings"] == {"toy": settings, "gsm8k": settings}
    # The same file again: the same files, rewritten (not appended).
    before = (out / "toy" / "generations.jsonl").read_text()
    assert grade_outputs(path, str(out), pool=pool, progress=False) == first
    assert (out / "toy" / "generations.jsonl").read_text() == before
    # Another file with a benchmark of the same name: refused before anything is written.
    other = _write(tmp_path / "other.jsonl", [OUTPUTS[0]])
    with pytest.raises(OutputDirError, match=r"toy holds generations made with other settings"):
        grade_outputs(other, str(out), pool=pool, progress=False)
    assert (out / "toy" / "generations.jsonl").read_text() == before
    with open(out / "summary.json") as f:
        assert json.load(f) == json.loads(json.dumps(first))


def test_grading_refuses_a_directory_of_generated_responses(tmp_path, pool):
    out = tmp_path / "out"
    generated = {"num_samples": 1, "temperature": 0.0, "step": 0, "policy": "0123abcd"}
    store = GenerationStore(str(out / "toy"), generated)
    line = {"id": "p1", "sample": 0, "response": "\\boxed{2}", "correct": True}
    store.append([line])
    path = _write(tmp_path / "outputs.jsonl", OUTPUTS[:2])
    with pytest.raises(OutputDirError, match=r"other settings \(graded_from: None -> '/"):
        grade_outputs(path, str(out), pool=pool, progress=False)
    assert (out / "toy" / "generations.jsonl").read_text() == json.dumps(line) + "\n"
    with open(out / "toy" / "settings.json") as f:
        assert json.load(f) == generated
    # A file left without its settings (what made it is unknown) is refused as well.
    (out / "toy" / "settings.json").unlink()
    with pytest.raises(OutputDirError, match="without settings.json"):
        grade_outputs(path, str(out), pool=pool, progress=False)


def test_summary_gathers_graded_benchmarks_of_several_files(tmp_path, pool):
    out = str(tmp_path / "out")
    grade_outputs(_write(tmp_path / "toy.jsonl", OUTPUTS[:4]), out, pool=pool, progress=False)
    gsm8k_file = _write(tmp_path / "vllm.jsonl", [dict(r, benchmark=None) for r in OUTPUTS[4:]])
    summary = grade_outputs(gsm8k_file, out, benchmark="gsm8k", pool=pool, progress=False)
    assert list(summary["benchmarks"]) == ["toy", "gsm8k"]
    assert summary["benchmarks"]["toy"]["accuracy"] == pytest.approx(3 / 4)
    assert summary["benchmarks"]["gsm8k"]["accuracy"] == pytest.approx(1 / 2)
    assert summary["average"]["accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert summary["settings"]["toy"]["graded_from"] == str(tmp_path / "toy.jsonl")
    assert summary["settings"]["gsm8k"]["graded_from"] == str(tmp_path / "vllm.jsonl")


def test_benchmark_argument_picks_the_gold_format(tmp_path):
    # Lines without a benchmark field take the given one, and with it gsm8k's "#### N" golds.
    rows = [{"id": 1, "response": "\\boxed{18}", "answer": "9 * 2 = 18\n#### 18"}]
    path = _write(tmp_path / "vllm.jsonl", rows)
    assert read_outputs(path, benchmark="gsm8k")["gsm8k"][0]["gold"] == "18"
    assert list(read_outputs(path)) == ["vllm"]
    with pytest.raises(OutputsError, match="no '#### N' line"):
        read_outputs(_write(tmp_path / "bad.jsonl", [dict(rows[0], answer="18 apples")]),
                     benchmark="gsm8k")  # fmt: skip
