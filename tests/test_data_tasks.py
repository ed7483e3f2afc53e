"""seqio tasks over the shipped benchmarks and a user file; the verifier-backed metric."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from zero_rl.data import apply_template, load_benchmark, tasks
from zero_rl.tokenizer import load_tokenizer, train_sentencepiece


@pytest.fixture(scope="module")
def math500():
    return load_benchmark("math500")


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory, math500):
    prefix = tmp_path_factory.mktemp("seqio_spm") / "tok"
    train_sentencepiece(
        [ex.prompt for ex in math500],
        vocab_size=600,
        model_prefix=prefix,
        user_defined_symbols=("<|im_start|>", "<|im_end|>"),
    )
    return f"{prefix}.model"


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory, math500):
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([ex.prompt for ex in math500[:100]], trainer=trainer)
    path = tmp_path_factory.mktemp("seqio_hf") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_benchmark_task_features(spm_path, math500):
    names = tasks.register_benchmark_tasks(spm_path, template="qwen_boxed")
    assert names == [f"zero_rl.{d}.qwen_boxed" for d in tasks.BENCHMARK_SPLITS]
    task = seqio.get_mixture_or_task("zero_rl.math500.qwen_boxed")
    assert isinstance(task.output_features["inputs"].vocabulary, seqio.SentencePieceVocabulary)
    rows = list(
        task.get_dataset(split="test", sequence_length=None, shuffle=False).as_numpy_iterator()
    )
    assert len(rows) == 500
    vocab = task.output_features["inputs"].vocabulary
    for row, ex in zip(rows[:5], math500):
        prompt = apply_template("qwen_boxed", ex.prompt)
        assert row["inputs_pretokenized"].decode() == prompt
        assert vocab.decode(row["inputs"].tolist()) == prompt
        assert row["targets_pretokenized"].decode() == ex.answer
        assert row["id"].decode() == ex.id and row["level"] == ex.level
    gsm8k = seqio.get_mixture_or_task("zero_rl.gsm8k.qwen_boxed")
    assert set(gsm8k.splits) == {"train", "test"}
    first = next(
        gsm8k.get_dataset(split="test", sequence_length=None, shuffle=False).as_numpy_iterator()
    )
    assert first["targets_pretokenized"] == b"18"


def test_hf_vocabulary_in_tf(hf_path, math500):
    names = tasks.register_benchmark_tasks(hf_path, template="abel", datasets=["aime24"])
    task = seqio.get_mixture_or_task(names[0])
    vocab = task.output_features["inputs"].vocabulary
    assert isinstance(vocab, tasks.TokenizerVocabulary)
    row = next(
        task.get_dataset(split="test", sequence_length=None, shuffle=False).as_numpy_iterator()
    )
    tok = load_tokenizer(hf_path)
    prompt = row["inputs_pretokenized"].decode()
    assert prompt.startswith("Question:\nEvery morning Aya") and row["targets"].tolist() == (
        tok.encode("204")
    )
    np.testing.assert_array_equal(row["inputs"], tok.encode(prompt))
    ids = tf.constant([tok.encode("a b"), tok.encode("c d")], dtype=tf.int32)
    assert vocab.decode_tf(ids).numpy().tolist() == [b"a b", b"c d"]
    assert vocab.decode_tf(ids[0]).numpy() == b"a b"


def test_file_task_reads_user_file_with_skips(tmp_path, spm_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"q": "What is 6*7?", "a": 42}, {"q": "no answer"}, {"q": "1+1?", "a": "2"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from zero_rl.data import FieldMapping

    name = tasks.register_file_task(
        "zero_rl.test_mine",
        path,
        FieldMapping(question_field="q", answer_field="a"),
        vocabulary=spm_path,
        template="plain",
        on_error="skip",
    )
    task = seqio.get_mixture_or_task(name)
    got = [
        (r["inputs_pretokenized"], r["targets_pretokenized"])
        for r in task.get_dataset(
            split="train", sequence_length=None, shuffle=False
        ).as_numpy_iterator()
    ]
    assert got == [(b"What is 6*7?", b"42"), (b"1+1?", b"2")]


def test_accuracy_metric_uses_the_verifier():
    targets = [b"18", b"3", b"\\frac{1}{2}"]
    predictions = ["so \\boxed{18}", "The answer is 4", "\\boxed{\\dfrac{1}{2}}"]
    assert tasks.accuracy(targets, predictions) == pytest.approx({"accuracy": 200 / 3})
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        tasks.accuracy(["1", "2"], ["1"])


def test_registration_errors(spm_path, tmp_path):
    with pytest.raises(ValueError, match=r"unknown datasets \['math'\]"):
        tasks.register_benchmark_tasks(spm_path, template="abel", datasets=["math"])
    with pytest.raises(ValueError, match="unknown template 'chatml'"):
        tasks.register_benchmark_tasks(spm_path, template="chatml", datasets=["amc23"])
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        tasks.make_vocabulary(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="no data file"):
        tasks.register_file_task(
            "x", tmp_path / "none.jsonl", vocabulary=spm_path, template="plain"
        )


@pytest.fixture(scope="module")
def boxed_tasks(spm_path):
    return tasks.register_benchmark_tasks(spm_path, template="qwen_boxed", prefix="zero_rl_rows")


@pytest.mark.parametrize(
    "dataset, split",
    [(d, s) for d, splits in tasks.BENCHMARK_SPLITS.items() for s in splits],
)
def test_first_row_of_every_benchmark_split(boxed_tasks, dataset, split):
    task = seqio.get_mixture_or_task(f"zero_rl_rows.{dataset}.qwen_boxed")
    row = next(
        task.get_dataset(split=split, sequence_length=None, shuffle=False).as_numpy_iterator()
    )
    # The same record read without seqio: templated prompt, canonical gold, id and level.
    ex = load_benchmark(tasks.BENCHMARK_SPLITS[dataset][split], limit=1)[0]
    prompt = apply_template("qwen_boxed", ex.prompt)
    assert row["inputs_pretokenized"].decode() == prompt
    assert row["targets_pretokenized"].decode() == ex.answer
    assert row["id"].decode() == ex.id
    assert row["level"] == (-1 if ex.level is None else ex.level)
    vocab = task.output_features["inputs"].vocabulary
    assert row["inputs"].tolist() == vocab.encode(prompt)
    assert row["targets"].tolist() == vocab.encode(ex.answer)


def test_metric_through_the_seqio_evaluator(tmp_path, spm_path):
    """seqio.Evaluator decodes a model's predicted ids and calls `accuracy` on them against the
    task's targets: 2 of 3 responses right (one by a \\frac that only the verifier matches)."""
    path = tmp_path / "eval.jsonl"
    rows = [{"problem": "What is 6 times 7?", "answer": "42"},
            {"problem": "Half of 1?", "answer": "\\frac{1}{2}"},
            {"problem": "What is 1 plus 1?", "answer": "2"}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    name = tasks.register_file_task("zero_rl.test_eval", path, vocabulary=spm_path,
                                    template="plain", split="test")  # fmt: skip
    vocab = seqio.get_mixture_or_task(name).output_features["inputs"].vocabulary
    responses = {"What is 6 times 7?": "6 times 7 is 42, so \\boxed{42}",
                 "Half of 1?": "\\boxed{0.5}",
                 "What is 1 plus 1?": "\\boxed{3}"}  # fmt: skip
    seen = []

    def predict_fn(dataset, model_feature_shapes=None):
        del model_feature_shapes
        out = []
        for index, features in dataset.as_numpy_iterator():
            ids = features["encoder_input_tokens"].tolist()
            question = vocab.decode([i for i in ids if i != vocab.pad_id])
            seen.append(question)
            # A decoder's fixed-length output: the response, then EOS to the end.
            response = vocab.encode(responses[question])
            out.append((index, response + [vocab.eos_id] * (40 - len(response))))
        return out

    evaluator = seqio.Evaluator(
        name, feature_converter=seqio.EncDecFeatureConverter(pack=False), eval_split="test",
        async_compute_metrics=False,
    )  # fmt: skip
    metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
    assert sorted(seen) == sorted(responses)
    assert metrics.result()[name] == pytest.approx({"accuracy": 200 / 3})


def test_parquet_file_task(tmp_path, spm_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from zero_rl.data import FieldMapping

    path = tmp_path / "math_train.parquet"
    rows = [{"q": "What is 6*7?", "sol": "6*7 = \\boxed{42}", "lvl": "Level 2", "uid": "a"},
            {"q": "What is 3/6?", "sol": "It is \\boxed{\\frac{1}{2}}.", "lvl": "Level 5",
             "uid": "b"}]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path)
    mapping = FieldMapping(question_field="q", answer_from_solution=True, solution_field="sol",
                           level_field="lvl", id_field="uid")  # fmt: skip
    name = tasks.register_file_task("zero_rl.test_parquet", path, mapping, vocabulary=spm_path,
                                    template="abel")  # fmt: skip
    got = list(
        seqio.get_mixture_or_task(name)
        .get_dataset(split="train", sequence_length=None, shuffle=False)
        .as_numpy_iterator()
    )
    assert [r["inputs_pretokenized"].decode() for r in got] == [
        apply_template("abel", r["q"]) for r in rows
    ]
    assert [r["targets_pretokenized"] for r in got] == [b"42", b"\\frac{1}{2}"]
    assert [r["level"] for r in got] == [2, 5]
    assert [r["id"] for r in got] == [b"math_train/a", b"math_train/b"]
