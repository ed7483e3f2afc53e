"""seqio Tasks over the shipped benchmarks and user files.

The only module in `zero_rl` that imports seqio (and so TensorFlow): the training loop consumes
plain NumPy batches, and this layer exists for seqio-based evaluation and data pipelines.

A task is registered per (dataset, template, vocabulary), named `zero_rl.<dataset>.<template>`
unless a name is given. Features: "inputs" is the templated prompt, "targets" the canonical gold
answer; both keep their text in "*_pretokenized". The metric scores a decoded model response
against the gold answer with `zero_rl.rewards.score`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from zero_rl.data.records import BENCHMARK_DIR, BENCHMARKS, Example, FieldMapping, read_examples
from zero_rl.data.templates import get_template
from zero_rl.tokenizer import Tokenizer, load_tokenizer

# dataset -> split -> benchmark name in `BENCHMARKS`.
BENCHMARK_SPLITS: dict[str, dict[str, str]] = {
    "gsm8k": {"train": "gsm8k_train", "test": "gsm8k_test"},
    **{name: {"test": name} for name in BENCHMARKS if not name.startswith("gsm8k")},
}


class TokenizerVocabulary(seqio.Vocabulary):
    """A seqio vocabulary over a `zero_rl.tokenizer.Tokenizer` (for HF tokenizer.json models).

    The TF ops call back into Python through `tf.numpy_function`, which is fine for evaluation
    sets of a few thousand prompts.
    """

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(extra_ids=0)
        self.tokenizer = tokenizer

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def unk_id(self) -> None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self.tokenizer.encode(s)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != self.pad_id])

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def encode(text: bytes) -> np.ndarray:
            return np.asarray(self.tokenizer.encode(text.decode("utf-8")), np.int32)

        ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
        return tf.ensure_shape(ids, [None])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode(ids_array: np.ndarray) -> np.ndarray:
            flat = ids_array.reshape(-1, ids_array.shape[-1])
            texts = [self._decode(row.tolist()).encode("utf-8") for row in flat]
            return np.asarray(texts, dtype=object).reshape(ids_array.shape[:-1])

        texts = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        return tf.ensure_shape(texts, ids.shape[:-1])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenizerVocabulary) and other.tokenizer is self.tokenizer


def make_vocabulary(path: str | os.PathLike) -> seqio.Vocabulary:
    """`seqio.SentencePieceVocabulary` for a `.model` file, else a TokenizerVocabulary."""
    path = Path(path)
    if path.suffix == ".model":
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}")
        return seqio.SentencePieceVocabulary(str(path))
    return TokenizerVocabulary(load_tokenizer(path))


def _examples_dataset(examples: Sequence[Example]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {
            "id": [ex.id for ex in examples],
            "question": [ex.prompt for ex in examples],
            "answer": [ex.answer for ex in examples],
            "level": np.array([-1 if ex.level is None else ex.level for ex in examples], np.int32),
        }
    )


def render_prompt(dataset: tf.data.Dataset, template: str) -> tf.data.Dataset:
    """seqio preprocessor: "inputs" = templated question, "targets" = gold answer."""
    t = get_template(template)

    def render(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        inputs = tf.strings.join([t.prefix, ex["question"], t.suffix])
        return {**ex, "inputs": inputs, "targets": ex["answer"]}

    return dataset.map(render, num_parallel_calls=tf.data.AUTOTUNE)


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """seqio metric: percent of responses that `zero_rl.rewards.score` marks correct."""
    from zero_rl.rewards import score

    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not targets:
        return {"accuracy": 0.0}
    verdicts = score([_text(p) for p in predictions], [_text(t) for t in targets])
    return {"accuracy": 100.0 * float(np.mean([v.correct for v in verdicts]))}


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _register(
    name: str,
    splits: Mapping[str, Callable[[], Sequence[Example]]],
    vocabulary: seqio.Vocabulary,
    template: str,
) -> str:
    get_template(template)  # fail here, not at first use, on an unknown template

    @functools.cache
    def examples_of(split: str) -> tuple[Example, ...]:
        return tuple(splits[split]())

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory source; seqio shuffles examples itself
        return _examples_dataset(examples_of(split))

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)),
        preprocessors=[
            functools.partial(render_prompt, template=template),
            seqio.preprocessors.tokenize,
        ],
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=False),
        },
        metric_fns=[accuracy],
    )
    return name


def register_benchmark_tasks(
    vocabulary: seqio.Vocabulary | str | os.PathLike,
    *,
    template: str,
    datasets: Sequence[str] | None = None,
    prefix: str = "zero_rl",
) -> list[str]:
    """Registers `<prefix>.<dataset>.<template>` for each shipped dataset; returns the names.

    Datasets are "gsm8k" (splits train/test) and "math500", "minerva_math", "olympiadbench",
    "aime24", "amc23" (split test). Registering a name again replaces the task.
    """
    if not isinstance(vocabulary, seqio.Vocabulary):
        vocabulary = make_vocabulary(vocabulary)
    datasets = list(BENCHMARK_SPLITS) if datasets is None else list(datasets)
    unknown = sorted(set(datasets) - set(BENCHMARK_SPLITS))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; valid: {sorted(BENCHMARK_SPLITS)}")
    names = []
    for dataset in datasets:
        splits = {
            split: functools.partial(_load_shipped, benchmark)
            for split, benchmark in BENCHMARK_SPLITS[dataset].items()
        }
        names.append(_register(f"{prefix}.{dataset}.{template}", splits, vocabulary, template))
    return names


def _load_shipped(benchmark: str) -> list[Example]:
    relative, mapping = BENCHMARKS[benchmark]
    return read_examples(BENCHMARK_DIR / relative, mapping, source=benchmark).examples


def register_file_task(
    name: str,
    path: str | os.PathLike,
    mapping: FieldMapping | None = None,
    *,
    vocabulary: seqio.Vocabulary | str | os.PathLike,
    template: str,
    split: str = "train",
    **read_kwargs: Any,
) -> str:
    """Registers a task over a user JSONL / JSON / parquet file (see `read_examples`).

    The file is read on first use of the task, with `read_kwargs` (e.g. `on_error="skip"`).
    """
    if not isinstance(vocabulary, seqio.Vocabulary):
        vocabulary = make_vocabulary(vocabulary)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no data file at {path}")

    def load() -> list[Example]:
        return read_examples(path, mapping, **read_kwargs).examples

    return _register(name, {split: load}, vocabulary, template)
