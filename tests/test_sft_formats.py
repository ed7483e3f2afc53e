"""SFT data formats: hand-written records in each public long-CoT dataset's layout, read through
`read_sft_pairs` (exact pairs, skip reasons and counts, `file:line` errors), the config check,
and `launch/sft.py`'s template on the prompt."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zero_rl.config import load_config, sft_run_config, validate_sft
from zero_rl.data.records import RecordError
from zero_rl.data.sft_formats import FORMAT_NAMES, FORMATS, get_converter
from zero_rl.train.sft import read_sft_pairs

REPO = Path(__file__).resolve().parents[1]

THINK = "<think>\nLet x = 2. Then x + 3 = 5.\n</think>\n\nThe answer is $\\boxed{5}$."
AM_REPLY = "<think>\n2 + 3 is 5.\n</think>\n<answer>\n\\boxed{5}\n</answer>"
Q = "What is 2 + 3?"
MULTI_TURN = ("user", "assistant", "user", "assistant")
ROLES = "'system', 'user', 'human', 'assistant', 'gpt'"
MISSING = "is missing, empty or not a string"


def turns(*pairs, role_key="role", content_key="content"):
    return [{role_key: role, content_key: text} for role, text in pairs]


def sharegpt(*pairs):
    return turns(*pairs, role_key="from", content_key="value")


# format -> (good records with their exact pairs, bad records with their exact reasons).
CASES = {
    "openr1_math": (
        [
            # The first generation Math-Verify accepted; the Llama judge's earlier pick loses.
            ({"problem": Q, "solution": "NuminaMath's solution", "answer": "5",
              "generations": ["<think>wrong</think> 6", THINK, "<think>also</think> 5"],
              "correctness_math_verify": [False, True, True],
              "correctness_llama": [True, False, True],
              "is_reasoning_complete": [True, True, True],
              "messages": turns(("user", Q), ("assistant", "not this one"))}, (Q, THINK)),
            # Math-Verify accepted none: the judge's first accepted generation.
            ({"problem": Q, "generations": ["a 6", "b 5"],
              "correctness_math_verify": [False, False], "correctness_llama": [False, True]},
             (Q, "b 5")),
            # A correct but unfinished generation never counts.
            ({"problem": Q, "generations": ["cut off", THINK],
              "correctness_math_verify": [True, True], "is_reasoning_complete": [False, True]},
             (Q, THINK)),
            # No flags: the messages' assistant turn; the prompt is still `problem`.
            ({"problem": Q, "messages": turns(("user", Q + " (as asked)"), ("assistant", THINK))},
             (Q, THINK)),
            # No problem either: the user turn, a system turn prepended.
            ({"messages": turns(("system", "Be brief."), ("user", Q), ("assistant", THINK))},
             ("Be brief.\n\n" + Q, THINK)),
        ],
        [
            ({"problem": Q, "generations": ["6", "7"], "correctness_math_verify": [False, False],
              "correctness_llama": [False, False]},
             "no verified generation: none of the 2 generations is complete and marked correct "
             "by correctness_math_verify or correctness_llama"),
            ({"problem": Q, "generations": [THINK], "correctness_math_verify": [True],
              "is_reasoning_complete": [False]},
             "no verified generation: none of the 1 generations is complete and marked correct "
             "by correctness_math_verify or correctness_llama"),
            ({"problem": Q, "generations": ["6", THINK], "correctness_math_verify": [True]},
             "field 'correctness_math_verify' has 1 flags for 2 generations"),
            ({"problem": Q, "generations": THINK, "correctness_math_verify": [True]},
             "field 'generations' is a str, not a list"),
            ({"problem": Q, "generations": [THINK], "correctness_math_verify": True},
             "field 'correctness_math_verify' is a bool, not a list of booleans"),
            ({"problem": "", "generations": [THINK], "correctness_math_verify": [True]},
             f"field 'problem' {MISSING}"),
            ({"problem": Q, "generations": [THINK]},
             "no correctness flags (correctness_math_verify, correctness_llama) to pick a "
             "verified generation, and no 'messages'"),
            ({"problem": Q, "messages": turns(("user", Q), ("assistant", "6"), ("user", "Sure?"),
                                              ("assistant", THINK))},
             f"messages is a multi-turn conversation ({', '.join(MULTI_TURN)}); only one user "
             "turn and one assistant reply make a (prompt, response) pair"),
        ],
    ),
    "light_r1": (
        [
            ({"conversations": sharegpt(("user", Q), ("assistant", THINK))}, (Q, THINK)),
            ({"conversations": sharegpt(("human", Q), ("gpt", THINK))}, (Q, THINK)),
            ({"conversations": sharegpt(("system", "Think first."), ("human", Q), ("gpt", THINK))},
             ("Think first.\n\n" + Q, THINK)),
        ],
        [
            ({"messages": turns(("user", Q), ("assistant", THINK))},
             "field 'conversations' is missing or not a non-empty list of turns"),
            ({"conversations": []},
             "field 'conversations' is missing or not a non-empty list of turns"),
            ({"conversations": ["user: hi"]}, "conversations[0] is a str, not an object"),
            ({"conversations": sharegpt(("user", Q), ("tool", "5"))},
             f"conversations[1] has from 'tool'; expected one of {ROLES}"),
            ({"conversations": sharegpt(("user", Q), ("assistant", " \n"))},
             "conversations[1] (assistant) has no text in 'value'"),
            ({"conversations": sharegpt(("user", Q))},
             "conversations has turns (user); expected an optional system turn, then one user "
             "turn and one assistant reply"),
            ({"conversations": sharegpt(("assistant", THINK), ("user", Q))},
             "conversations has turns (assistant, user); expected an optional system turn, then "
             "one user turn and one assistant reply"),
            ({"conversations": sharegpt(("user", Q), ("system", "Be brief."),
                                        ("assistant", THINK))},
             "conversations has turns (user, system, assistant); expected an optional system "
             "turn, then one user turn and one assistant reply"),
            ({"conversations": sharegpt(("human", Q), ("gpt", "6"), ("human", "Sure?"),
                                        ("gpt", THINK))},
             f"conversations is a multi-turn conversation ({', '.join(MULTI_TURN)}); only one "
             "user turn and one assistant reply make a (prompt, response) pair"),
        ],
    ),
    "limo": (
        [
            ({"question": Q, "solution": THINK, "answer": "5"}, (Q, THINK)),
            ({"question": Q, "solution": "Adding, 5.\n\\boxed{5}"}, (Q, "Adding, 5.\n\\boxed{5}")),
        ],
        [
            ({"question": Q, "answer": "5"}, f"field 'solution' {MISSING}"),
            ({"question": "  ", "solution": THINK}, f"field 'question' {MISSING}"),
            ({"problem": Q, "solution": THINK}, f"field 'question' {MISSING}"),
        ],
    ),
    "s1k": (
        [
            # s1K: the trajectories joined by newlines, then the attempt.
            ({"question": Q, "solution": "5", "thinking_trajectories": ["x = 2.", "x + 3 = 5."],
              "attempt": "The answer is 5."},
             (Q, "<think>\nx = 2.\nx + 3 = 5.\n</think>\n\nThe answer is 5.")),
            # s1K-1.1: DeepSeek's trace and attempt (stripped); Gemini's are not read.
            ({"question": Q, "gemini_thinking_trajectory": "gemini", "gemini_attempt": "g",
              "deepseek_thinking_trajectory": "\n2 + 3 = 5.  \n", "deepseek_attempt": "**5**\n"},
             (Q, "<think>\n2 + 3 = 5.\n</think>\n\n**5**")),
        ],
        [
            ({"question": Q, "deepseek_thinking_trajectory": "2 + 3 = 5."},
             f"field 'deepseek_attempt' {MISSING}"),
            ({"question": Q, "gemini_thinking_trajectory": "g", "gemini_attempt": "5"},
             "no thinking: neither 'deepseek_thinking_trajectory' (s1K-1.1) nor a non-empty "
             "'thinking_trajectories' list of strings (s1K)"),
            ({"question": Q, "thinking_trajectories": ["x = 2.", 5], "attempt": "5"},
             "no thinking: neither 'deepseek_thinking_trajectory' (s1K-1.1) nor a non-empty "
             "'thinking_trajectories' list of strings (s1K)"),
            ({"question": Q, "thinking_trajectories": ["2 + 3 = 5."]},
             f"field 'attempt' {MISSING}"),
            ({"thinking_trajectories": ["2 + 3 = 5."], "attempt": "5"},
             f"field 'question' {MISSING}"),
        ],
    ),
    "am": (
        [
            ({"messages": [
                {"role": "user", "content": Q,
                 "info": {"source": "natural_reasoning", "reference_answer": "5"}},
                {"role": "assistant", "content": AM_REPLY,
                 "info": {"think_content": "2 + 3 is 5.", "answer_content": "\\boxed{5}"}}]},
             (Q, AM_REPLY)),
            ({"messages": turns(("system", "Answer in <answer> tags."), ("user", Q),
                                ("assistant", AM_REPLY))},
             ("Answer in <answer> tags.\n\n" + Q, AM_REPLY)),
        ],
        [
            ({"messages": sharegpt(("user", Q), ("assistant", AM_REPLY))},
             f"messages[0] has role None; expected one of {ROLES}"),
            ({"messages": turns(("user", Q), ("assistant", "5"), ("user", "Why?"),
                                ("assistant", AM_REPLY))},
             f"messages is a multi-turn conversation ({', '.join(MULTI_TURN)}); only one user "
             "turn and one assistant reply make a (prompt, response) pair"),
            ({"messages": turns(("user", Q), ("assistant", None))},
             "messages[1] (assistant) has no text in 'content'"),
            ({"conversations": sharegpt(("user", Q), ("assistant", AM_REPLY))},
             "field 'messages' is missing or not a non-empty list of turns"),
        ],
    ),
}  # fmt: skip


def write_jsonl(path, rows):
    path.write_text(
        "".join(row if isinstance(row, str) else json.dumps(row) + "\n" for row in rows)
    )
    return path


def test_every_dataset_format_has_cases():
    assert set(CASES) == set(FORMATS)
    assert FORMAT_NAMES == ("fields", "openr1_math", "light_r1", "limo", "s1k", "am")


@pytest.mark.parametrize("name", sorted(CASES))
def test_converter_gives_the_exact_pair_or_reason(name):
    convert = get_converter(name)
    good, bad = CASES[name]
    for record, pair in good:
        assert convert(record) == pair, record
    for record, reason in bad:
        assert convert(record) == reason, record


@pytest.mark.parametrize("name", sorted(CASES))
def test_skip_keeps_the_good_records_and_names_each_bad_line(name, tmp_path, caplog):
    good, bad = CASES[name]
    path = tmp_path / f"{name}.jsonl"
    rows, skips = [], []
    for i in range(max(len(good), len(bad))):  # good and bad records interleaved
        if i < len(good):
            rows.append(good[i][0])
        if i < len(bad):
            rows.append(bad[i][0])
            skips.append(f"{path}:line {len(rows)}: {bad[i][1]}")
    # The reader's own bad lines, the same for every format.
    rows += ["{not json\n", [Q, THINK]]
    skips += [
        f"{path}:line {len(rows) - 1}: malformed JSON (Expecting property name enclosed in "
        "double quotes)",
        f"{path}:line {len(rows)}: record is a list, not an object",
    ]
    write_jsonl(path, rows)
    with caplog.at_level("WARNING"):
        read = read_sft_pairs(path, format=name, on_error="skip")
    assert read.pairs == [pair for _, pair in good]
    assert read.skipped == skips and read.num_skipped == len(bad) + 2
    assert f"skipped {len(bad) + 2} bad records" in caplog.text


@pytest.mark.parametrize("name", sorted(CASES))
def test_raise_names_the_file_line_and_reason(name, tmp_path):
    good, bad = CASES[name]
    for record, reason in bad:
        path = write_jsonl(tmp_path / "data.jsonl", [good[0][0], good[0][0], record])
        with pytest.raises(RecordError) as error:
            read_sft_pairs(path, format=name)
        assert str(error.value) == f"{path}:line 3: {reason}"


def test_a_file_without_a_usable_record_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "limo.jsonl", [{"question": Q}, {"solution": THINK}])
    with pytest.raises(RecordError, match=r"limo.jsonl: no usable records \(2 skipped\)"):
        read_sft_pairs(path, format="limo", on_error="skip")
    # A file in one dataset's layout read with another format: every record says why.
    light_r1_record = {"conversations": sharegpt(("user", Q), ("gpt", THINK))}
    path = write_jsonl(tmp_path / "light.jsonl", [light_r1_record])
    with pytest.raises(RecordError, match=r"line 1: field 'messages' is missing or not a non-"):
        read_sft_pairs(path, format="am")


def test_fields_format_is_unchanged_and_the_default(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"q": Q, "a": THINK}, {"q": Q}, {"q": Q, "a": ""}])
    read = read_sft_pairs(path, prompt_field="q", response_field="a", on_error="skip")
    assert read.pairs == [(Q, THINK)]
    assert read.skipped == [f"{path}:line 2: field 'a' is missing or not a string",
                            f"{path}:line 3: field 'a' is missing or not a string"]  # fmt: skip
    explicit = read_sft_pairs(path, prompt_field="q", response_field="a", format="fields",
                              on_error="skip")  # fmt: skip
    assert explicit == read
    # Another format ignores the field names: LIMO's own fields are read.
    path = write_jsonl(tmp_path / "limo.jsonl", [{"question": Q, "solution": THINK, "q": "x"}])
    assert read_sft_pairs(path, prompt_field="q", format="limo").pairs == [(Q, THINK)]


def test_limit_counts_pairs_not_records(tmp_path):
    good, bad = CASES["s1k"]
    rows = [bad[0][0], good[0][0], bad[1][0], good[1][0], good[0][0]]
    path = write_jsonl(tmp_path / "s1k.jsonl", rows)
    read = read_sft_pairs(path, format="s1k", limit=2, on_error="skip")
    assert read.pairs == [good[0][1], good[1][1]] and read.num_skipped == 2


def test_unknown_format_lists_the_valid_ones(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": Q, "response": THINK}])
    valid = "fields, openr1_math, light_r1, limo, s1k, am"
    with pytest.raises(
        ValueError, match=re.escape(f"unknown SFT data format 'openr1'; valid: {valid}")
    ):
        read_sft_pairs(path, format="openr1")
    with pytest.raises(ValueError, match="unknown SFT data format 'S1K'"):
        get_converter("S1K")


def test_parquet_openr1_math(tmp_path):
    """OpenR1-Math-220k ships parquet: lists of bools and a list of {content, role} structs."""
    good, bad = CASES["openr1_math"]
    schema = pa.schema([
        ("problem", pa.string()),
        ("generations", pa.list_(pa.string())),
        ("correctness_math_verify", pa.list_(pa.bool_())),
        ("correctness_llama", pa.list_(pa.bool_())),
        ("is_reasoning_complete", pa.list_(pa.bool_())),
        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ])  # fmt: skip
    rows = [good[0][0], bad[0][0], good[1][0], good[3][0]]
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    path = tmp_path / "train-00000-of-00010.parquet"
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), path)
    read = read_sft_pairs(path, format="openr1_math", on_error="skip")
    assert read.pairs == [good[0][1], good[1][1], good[3][1]]
    assert read.skipped == [f"{path}:row 2: {bad[0][1]}"]


def test_json_list_light_r1(tmp_path):
    """Light-R1's stage2-3k.json is one JSON list of records: locations are rows."""
    good, bad = CASES["light_r1"]
    path = tmp_path / "stage2-3k.json"
    path.write_text(json.dumps([good[1][0], bad[5][0], good[2][0]]))
    read = read_sft_pairs(path, format="light_r1", on_error="skip")
    assert read.pairs == [good[1][1], good[2][1]]
    assert read.skipped == [f"{path}:row 2: {bad[5][1]}"]


def _sft_launcher():
    """launch/sft.py as a module (it defines absl flags, so it is loaded once per process)."""
    if "launch_sft" not in sys.modules:
        spec = importlib.util.spec_from_file_location("launch_sft", REPO / "launch" / "sft.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["launch_sft"] = module
    return sys.modules["launch_sft"]


def test_launcher_load_pairs_reads_the_format_and_templates_the_prompt(tmp_path):
    good, bad = CASES["am"]
    path = write_jsonl(tmp_path / "am.jsonl", [good[0][0], bad[1][0], good[1][0]])
    data_cfg = sft_run_config().data
    data_cfg.update(source=str(path), format="am", template="abel", on_error="skip")
    pairs = _sft_launcher().load_pairs(data_cfg, seed=0)
    # abel is "Question:\n" + question + "\nAnswer:\nLet's think step by step.\n"; the response,
    # <think> and <answer> tags included, is left as it is.
    assert pairs == [
        (f"Question:\n{Q}\nAnswer:\nLet's think step by step.\n", AM_REPLY),
        (f"Question:\nAnswer in <answer> tags.\n\n{Q}\nAnswer:\nLet's think step by step.\n",
         AM_REPLY),
    ]  # fmt: skip


def sft_tiny(*overrides):
    return load_config(str(REPO / "configs" / "sft_tiny.py"), overrides)


def test_validate_sft_checks_the_format():
    assert sft_run_config().data.format == "fields"
    validate_sft(sft_tiny())
    validate_sft(sft_tiny("data.source=limo.jsonl", "data.format=limo"))
    bad = {
        ("data.source=limo.jsonl", "data.format=LIMO"):
            "unknown data.format 'LIMO'; valid: 'fields', 'openr1_math', 'light_r1', 'limo', "
            "'s1k', 'am'",
        ("data.source=limo.jsonl", "data.format=limo", "data.prompt_field=question"):
            "data.prompt_field='question' is only read with data.format='fields', not 'limo'; "
            "leave it unset",
        ("data.format=s1k",):  # still the synthetic task
            "data.format='s1k' reads a data file, but data.source is the 'synthetic_addition' "
            "task; set data.source to the dataset's file",
    }  # fmt: skip
    for overrides, message in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            validate_sft(sft_tiny(*overrides))
