"""Deterministic, resumable prompt batches for the RL loop, and their NumPy encoding.

The iterator's position is two integers (epoch, batch within the epoch) because each epoch's
order is a pure function of (seed, epoch): saving them in the checkpoint is enough to resume the
exact stream, with no RNG state to serialise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from zero_rl.data.records import Example
from zero_rl.data.templates import get_template
from zero_rl.tokenizer import Tokenizer, encode_prompts


class PromptIterator:
    """Endless (or `num_epochs`-long) stream of batches of Examples, reshuffled every epoch.

    `batch_size` is the global batch over all processes; process `process_index` gets its own
    contiguous `batch_size // process_count` slice of each global batch, so the processes
    together see exactly what a single process would. Each epoch drops the last
    `len(examples) % batch_size` examples of its order so every batch has the same shape.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        num_epochs: int | None = None,
    ):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of "
                f"process_count={process_count}"
            )
        if len(examples) < batch_size:
            raise ValueError(f"{len(examples)} examples cannot fill one batch of {batch_size}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.process_index = process_index
        self.process_count = process_count
        self.num_epochs = num_epochs
        self.local_batch_size = batch_size // process_count
        self.batches_per_epoch = len(self.examples) // batch_size
        self.epoch = 0
        self.batch_in_epoch = 0
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = len(self.examples)
            if self.shuffle:
                self._order = np.random.default_rng((self.seed, epoch)).permutation(n)
            else:
                self._order = np.arange(n)
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> PromptIterator:
        return self

    def __next__(self) -> list[Example]:
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        order = self._epoch_order(self.epoch)
        start = self.batch_in_epoch * self.batch_size + self.process_index * self.local_batch_size
        self.batch_in_epoch += 1
        return [self.examples[i] for i in order[start : start + self.local_batch_size]]

    def state_dict(self) -> dict[str, int]:
        """The position, plus what must match on resume; plain ints for any checkpoint format."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "num_examples": len(self.examples),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from a `state_dict()`; refuses one taken over different data or settings."""
        expected = {
            "seed": self.seed,
            "num_examples": len(self.examples),
            "batch_size": self.batch_size,
        }
        for key, value in expected.items():
            if int(state[key]) != value:
                raise ValueError(
                    f"iterator state has {key}={state[key]} but this iterator has {value}; "
                    "resuming would not continue the same stream"
                )
        epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
        if epoch < 0 or not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"invalid iterator position epoch={epoch}, batch_in_epoch={batch}")
        self.epoch, self.batch_in_epoch = epoch, batch


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """A batch ready for the sampler.

    Attributes:
      tokens_bt: int32 [B, T] left-padded prompt ids.
      lengths_b: int32 [B] real prompt lengths.
      answers: B gold answers, for the verifier.
      examples: the B source examples.
    """

    tokens_bt: np.ndarray
    lengths_b: np.ndarray
    answers: list[str]
    examples: list[Example]


def make_prompt_batch(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    *,
    template: str,
    max_len: int,
    pad_to_multiple: int = 64,
    **encode_kwargs: Any,
) -> PromptBatch:
    """Applies `template` to each example's question and encodes the batch (see encode_prompts)."""
    render = get_template(template).render
    tokens_bt, lengths_b = encode_prompts(
        tokenizer,
        [render(ex.prompt) for ex in examples],
        max_len=max_len,
        pad_to_multiple=pad_to_multiple,
        **encode_kwargs,
    )
    return PromptBatch(tokens_bt, lengths_b, [ex.answer for ex in examples], list(examples))


def encode_batch(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    *,
    template: str,
    max_prompt_len: int,
    rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt tokens and positions [rows, max_prompt_len]; extra rows are empty
    (position -1 everywhere), so every batch has one shape."""
    batch = make_prompt_batch(
        examples, tokenizer, template=template, max_len=max_prompt_len,
        pad_to_multiple=max_prompt_len,
    )  # fmt: skip
    tokens, lengths = batch.tokens_bt, batch.lengths_b
    rows = rows or len(examples)
    tokens_bt = np.full((rows, max_prompt_len), tokenizer.pad_id, np.int32)
    tokens_bt[: len(examples)] = tokens
    lengths_b = np.zeros((rows,), np.int32)
    lengths_b[: len(examples)] = lengths
    steps = np.arange(max_prompt_len)[None, :]
    first = max_prompt_len - lengths_b[:, None]
    positions_bt = np.where(steps >= first, steps - first, -1).astype(np.int32)
    return tokens_bt, positions_bt
