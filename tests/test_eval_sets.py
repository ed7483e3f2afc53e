"""Eval sets by name: shipped benchmarks, aliases, files, the synthetic task, seqio tasks."""

import json

import pytest

from zero_rl.data import FieldMapping, load_benchmark
from zero_rl.data.synthetic import AdditionTask
from zero_rl.eval import EvalSet, load_eval_set, load_eval_sets

TINY_VOCAB = "zero_rl/assets/tiny_addition.model"


def test_shipped_benchmarks_and_the_gsm8k_alias():
    gsm8k = load_eval_set("gsm8k", limit=3)
    assert gsm8k.name == "gsm8k" and gsm8k.template is None
    assert list(gsm8k.examples) == load_benchmark("gsm8k_test", limit=3)
    assert len(load_eval_set("aime24").examples) == 30


def test_file_with_a_field_mapping(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"q": "1+1?", "a": 2}, {"q": "2+2?", "a": "4"}, {"q": "3+3?", "a": 6}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapping = FieldMapping(question_field="q", answer_field="a")
    eval_set = load_eval_set(str(path), mapping=mapping, limit=2)
    assert eval_set.name == "mine"
    assert [(ex.prompt, ex.answer) for ex in eval_set.examples] == [("1+1?", "2"), ("2+2?", "4")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_eval_set(str(tmp_path / "missing.jsonl"))


def test_synthetic_addition_is_the_trainers_held_out_split():
    eval_set = load_eval_set("synthetic_addition", synthetic_seed=3, synthetic_size=50, limit=10)
    assert list(eval_set.examples) == AdditionTask(eval_size=50, seed=3).split("eval")[:10]


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown benchmark 'math5000'; valid names: \[.*amc23"):
        load_eval_set("math5000")
    with pytest.raises(ValueError, match="names repeat"):
        load_eval_sets(["amc23", "amc23"])
    with pytest.raises(ValueError, match="limit must be"):
        load_eval_set("amc23", limit=0)


def test_eval_set_checks():
    examples = load_benchmark("amc23", limit=2)
    with pytest.raises(ValueError, match="duplicate example id 'amc23/0'"):
        EvalSet("x", [examples[0], examples[0]])
    with pytest.raises(ValueError, match="no examples"):
        EvalSet("x", [])
    with pytest.raises(ValueError, match="directory name"):
        EvalSet("a/b", examples)


def test_seqio_task():
    from zero_rl.data import tasks

    (name,) = tasks.register_benchmark_tasks(TINY_VOCAB, template="plain", datasets=["amc23"])
    eval_set = load_eval_set(name, limit=3)
    shipped = load_benchmark("amc23", limit=3)
    assert eval_set.name == "zero_rl.amc23.plain" and eval_set.template == "plain"
    assert [ex.prompt for ex in eval_set.examples] == [ex.prompt for ex in shipped]
    assert [ex.answer for ex in eval_set.examples] == [ex.answer for ex in shipped]
    assert eval_set.examples[0].id == "zero_rl.amc23.plain/amc23/0"
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_eval_set(name, seqio_split="validation")
    with pytest.raises(ValueError, match="not a registered seqio task"):
        load_eval_set("zero_rl.amc24.plain")
