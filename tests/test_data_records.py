"""Example readers: the shipped benchmarks against their raw fields, user files, bad records."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zero_rl.data import (
    BENCHMARK_DIR,
    FieldMapping,
    RecordError,
    load_benchmark,
    parse_level,
    read_examples,
)


def _raw(relative):
    with open(BENCHMARK_DIR / relative, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write_jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "name, rows",
    [
        ("gsm8k_train", 7473),
        ("gsm8k_test", 1319),
        ("math500", 500),
        ("minerva_math", 272),
        ("olympiadbench", 675),
        ("aime24", 30),
        ("amc23", 40),
    ],
)
def test_benchmark_sizes_and_ids(name, rows):
    examples = load_benchmark(name)
    assert len(examples) == rows
    assert len({ex.id for ex in examples}) == rows
    assert all(ex.id.startswith(f"{name}/") and ex.source == name for ex in examples)
    assert all(ex.prompt.strip() and ex.answer for ex in examples)


def test_gsm8k_gold_is_the_number_after_hashes():
    raw = _raw("gsm8k/test.jsonl")
    expected = [r["answer"].split("####")[-1].strip().replace(",", "") for r in raw]
    examples = load_benchmark("gsm8k_test")
    assert [ex.answer for ex in examples] == expected
    assert examples[0].answer == "18" and examples[0].prompt == raw[0]["question"]


def test_answer_fields_and_levels_follow_the_raw_records():
    math500, raw = load_benchmark("math500"), _raw("math500/test.jsonl")
    assert [ex.answer for ex in math500] == [r["answer"] for r in raw]
    assert [ex.level for ex in math500] == [r["level"] for r in raw]
    assert math500[0].id == "math500/test/precalculus/807.json"
    assert math500[0].meta == {"subject": "Precalculus"}
    amc = load_benchmark("amc23")
    assert [ex.answer for ex in amc] == [str(int(r["answer"])) for r in _raw("amc23/test.jsonl")]
    assert [ex.answer for ex in load_benchmark("aime24")[:3]] == ["204", "113", "371"]


def test_minerva_gold_is_the_last_boxed_of_the_solution():
    # Hand-read from the first three solutions.
    assert [ex.answer for ex in load_benchmark("minerva_math", limit=3)] == [
        "1.6",
        "4.5e33",
        "41.8",
    ]


def test_olympiadbench_lists_and_meta():
    examples = {ex.id: ex for ex in load_benchmark("olympiadbench")}
    assert examples["olympiadbench/1606"].answer == "2"
    multi = [ex for ex in examples.values() if ex.meta["is_multiple_answer"]]
    assert len(multi) == 94
    assert "(1,8,19), (2,7,13), (4,5,7)" in [ex.answer for ex in multi]
    assert "69, 84" in [ex.answer for ex in multi]  # "$69$,$84$": one answer per part
    units = [ex.meta["unit"] for ex in examples.values() if ex.meta["unit"]]
    assert "km/h" in units


def test_user_jsonl_with_field_mapping(tmp_path):
    path = _write_jsonl(
        tmp_path / "custom.jsonl",
        [
            {"q": "What is 2+3?", "gold": 5, "uid": "a", "tag": "x"},
            "\n",  # blank lines are ignored
            {"q": "Half of 3?", "gold": "$\\frac{3}{2}$", "uid": "b"},
        ],
    )
    mapping = FieldMapping(
        question_field="q", answer_field="gold", id_field="uid", meta_fields=("tag",)
    )
    result = read_examples(path, mapping)
    assert result.num_skipped == 0
    a, b = result.examples
    assert (a.id, a.prompt, a.answer, a.source, a.meta) == (
        "custom/a",
        "What is 2+3?",
        "5",
        "custom",
        {"tag": "x"},
    )
    assert (b.id, b.answer, b.meta) == ("custom/b", "\\frac{3}{2}", {})


def test_math_train_style_parquet_with_answer_from_solution(tmp_path):
    rows = [
        {"problem": "P1", "solution": "So $x=\\boxed{\\frac{1}{2}}$.", "level": "Level 3"},
        {"problem": "P2", "solution": "First \\boxed{1}, then \\boxed{7}.", "level": "Level 5"},
        {"problem": "P3", "solution": "It is \\boxed{4}.", "level": "Level ?"},
    ]
    path = tmp_path / "math_train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    mapping = FieldMapping(answer_from_solution=True, level_field="level", gold_format="math")
    examples = read_examples(path, mapping, source="math").examples
    assert [ex.answer for ex in examples] == ["\\frac{1}{2}", "7", "4"]
    assert [ex.level for ex in examples] == [3, 5, None]
    assert [ex.id for ex in examples] == ["math/1", "math/2", "math/3"]


def test_json_list_and_limit(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"problem": f"Q{i}", "answer": str(i)} for i in range(5)]))
    examples = read_examples(path, limit=2).examples
    assert [(ex.id, ex.answer) for ex in examples] == [("list/1", "0"), ("list/2", "1")]


BAD_ROWS = [
    {"problem": "ok 1", "answer": "1"},
    {"problem": "no answer"},
    "{not json\n",
    {"problem": "", "answer": "3"},
    ["a", "list"],
    {"problem": "ok 2", "answer": "2"},
]


@pytest.mark.parametrize(
    "rows, message",
    [
        (BAD_ROWS[:2], r"bad\.jsonl:line 2: no answer: field 'answer' is missing or empty"),
        (BAD_ROWS[:3:2], r"bad\.jsonl:line 2: malformed JSON"),
        (BAD_ROWS[3:4], r"bad\.jsonl:line 1: no question"),
        (BAD_ROWS[4:5], r"bad\.jsonl:line 1: record is a list, expected an object"),
        ([{"problem": "p", "answer": "x", "level": "hard"}], r"line 1: level must be an int"),
        ([{"problem": "p", "answer": "x", "level": True}], r"line 1: level must be an int"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(RecordError, match=message):
        read_examples(path, FieldMapping(level_field="level"))


def test_duplicate_ids_are_bad_records(tmp_path):
    path = _write_jsonl(tmp_path / "dup.jsonl", [{"problem": "p", "answer": "1", "uid": 7}] * 2)
    with pytest.raises(RecordError, match=r"dup\.jsonl:line 2: duplicate id 'dup/7'"):
        read_examples(path, FieldMapping(id_field="uid"))


def test_skip_mode_counts_bad_records(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    result = read_examples(path, on_error="skip")
    assert [ex.prompt for ex in result.examples] == ["ok 1", "ok 2"]
    assert result.num_skipped == 4
    assert [m.split(": ")[0] for m in result.skipped] == [f"{path}:line {i}" for i in (2, 3, 4, 5)]


def test_gold_format_errors_and_missing_boxed(tmp_path):
    gsm = _write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no hashes here"}])
    with pytest.raises(RecordError, match=r"g\.jsonl:line 1: gsm8k gold answer has no '#### N'"):
        read_examples(gsm, FieldMapping(question_field="question", gold_format="gsm8k"))
    sol = _write_jsonl(tmp_path / "s.jsonl", [{"problem": "q", "solution": "The answer is 4."}])
    with pytest.raises(RecordError, match=r"s\.jsonl:line 1: no answer: no \\boxed\{\}"):
        read_examples(sol, FieldMapping(answer_from_solution=True))


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file"):
        read_examples(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("problem,answer\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        read_examples(tmp_path / "data.csv")
    all_bad = _write_jsonl(tmp_path / "all_bad.jsonl", BAD_ROWS[1:3])
    with pytest.raises(RecordError, match=r"no usable records \(2 skipped\)"):
        read_examples(all_bad, on_error="skip")
    with pytest.raises(ValueError, match="on_error must be"):
        read_examples(all_bad, on_error="ignore")
    with pytest.raises(ValueError, match="unknown gold_format 'gsm9k'"):
        read_examples(all_bad, FieldMapping(gold_format="gsm9k"))
    bool_answer = _write_jsonl(tmp_path / "b.jsonl", [{"problem": "p", "answer": True}])
    with pytest.raises(RecordError, match=r"b\.jsonl:line 1: gold answer is a bool"):
        read_examples(bool_answer)
    with pytest.raises(ValueError, match=r"unknown benchmark 'math'.*'math500'"):
        load_benchmark("math")


@pytest.mark.parametrize(
    "value, level", [(3, 3), ("3", 3), ("Level 5", 5), ("Level ?", None), (" Level 1 ", 1)]
)
def test_parse_level(value, level):
    assert parse_level(value) == level
