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
