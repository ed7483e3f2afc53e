"""Packing (prompt, response) documents into fixed-length rows for supervised fine-tuning.

Several short documents share one row; attention never crosses a document boundary because
positions restart at 0 and segment ids differ (see `zero_rl.models.layers.attention_mask`). The
loss mask is aligned like `token_logprobs`: entry [b, i] says whether token i - the *target* of
the prediction made at i - 1 - is a response token, so the prompt and the first token of every
document (predicted from the previous document) are never trained on.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Document = tuple[Sequence[int], Sequence[int]]
Overflow = Literal["error", "truncate"]


def _check_documents(
    docs: Sequence[Document], seq_len: int, overflow: Overflow
) -> list[tuple[list[int], int]]:
    """Each document as (token ids, number of prompt tokens), truncated when allowed."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if overflow not in ("error", "truncate"):
        raise ValueError(f"overflow must be 'error' or 'truncate', got {overflow!r}")
    if len(docs) == 0:
        raise ValueError("no documents to pack")
    checked, num_truncated = [], 0
    for i, (prompt, response) in enumerate(docs):
        if len(prompt) == 0:
            raise ValueError(
                f"document {i} has an empty prompt: its first response token would have no "
                "context to be predicted from (prepend BOS)"
            )
        if len(response) == 0:
            raise ValueError(f"document {i} has an empty response: nothing to train on")
        ids = [*prompt, *response]
        if len(ids) > seq_len:
            if overflow == "error":
                raise ValueError(
                    f"document {i} has {len(ids)} tokens ({len(prompt)} prompt + "
                    f"{len(response)} response), more than seq_len={seq_len}; raise seq_len or "
                    "set overflow='truncate' to cut it"
                )
            if len(prompt) >= seq_len:
                raise ValueError(
                    f"document {i}: its prompt alone has {len(prompt)} tokens, seq_len={seq_len} "
                    "leaves no room for the response even when truncated; raise seq_len"
                )
            ids, num_truncated = ids[:seq_len], num_truncated + 1
        checked.append((ids, len(prompt)))
    if num_truncated:
        log.warning("truncated %d of %d documents to seq_len=%d", num_truncated, len(docs), seq_len)
    return checked


def _best_fit(docs: list[tuple[list[int], int]], seq_len: int) -> list[list[tuple[list[int], int]]]:
    """Assigns checked documents to rows: each goes, in order, into the open row with the least
    room that still holds it, or starts a new row."""
    rows_of_docs: list[list[tuple[list[int], int]]] = []
    # free space -> rows with exactly that much room, and the sorted distinct free spaces, so the
    # best-fitting row is one bisect away.
    rows_with_room: dict[int, list[int]] = {}
    room_sizes: list[int] = []
    for doc in docs:
        length = len(doc[0])
        k = bisect.bisect_left(room_sizes, length)
        if k < len(room_sizes):
            room = room_sizes[k]
            r = rows_with_room[room].pop()
            if not rows_with_room[room]:
                del rows_with_room[room], room_sizes[k]
            rows_of_docs[r].append(doc)
        else:
            r, room = len(rows_of_docs), seq_len
            rows_of_docs.append([doc])
        new_room = room - length
        if new_room > 0:
            if new_room not in rows_with_room:
                bisect.insort(room_sizes, new_room)
                rows_with_room[new_room] = []
            rows_with_room[new_room].append(r)
    return rows_of_docs


def _write_rows(
    rows_of_docs: list[list[tuple[list[int], int]]], seq_len: int, pad_id: int, rows: int | None
) -> dict[str, np.ndarray]:
    if rows is not None and rows < len(rows_of_docs):
        raise ValueError(f"the documents need {len(rows_of_docs)} rows, more than rows={rows}")
    num_rows = len(rows_of_docs) if rows is None else rows
    tokens_bt = np.full((num_rows, seq_len), pad_id, np.int32)
    positions_bt = np.full((num_rows, seq_len), -1, np.int32)
    segment_ids_bt = np.zeros((num_rows, seq_len), np.int32)
    loss_mask_bt = np.zeros((num_rows, seq_len), np.float32)
    for r, row in enumerate(rows_of_docs):
        start = 0
        for segment, (ids, prompt_len) in enumerate(row, start=1):
            end = start + len(ids)
            tokens_bt[r, start:end] = ids
            positions_bt[r, start:end] = np.arange(len(ids))
            segment_ids_bt[r, start:end] = segment
            loss_mask_bt[r, start + prompt_len : end] = 1.0
            start = end
    return dict(
        tokens_bt=tokens_bt,
        positions_bt=positions_bt,
        segment_ids_bt=segment_ids_bt,
        loss_mask_bt=loss_mask_bt,
    )


def pack_sequences(
    pairs: Sequence[Document],
    *,
    seq_len: int,
    pad_id: int,
    rows: int | None = None,
    overflow: Overflow = "error",
) -> dict[str, np.ndarray]:
    """Packs (prompt_ids, response_ids) documents into rows of `seq_len` tokens (best fit).

    Each document goes, in the given order, into the open row with the least room that still
    holds it, or starts a new row: a greedy bin packing that fills rows nearly as well as
    sorting by length would, while keeping the order's randomness across rows.

    Args:
      pairs: documents as (prompt ids, response ids); neither may be empty.
      seq_len: tokens per row.
      pad_id: token id written on padding.
      rows: exact number of rows to return (extra rows are all padding); an error if the
        documents need more. None returns as many rows as needed.
      overflow: a document longer than `seq_len` raises ("error") or keeps its first
        `seq_len` tokens ("truncate").

    Returns:
      tokens_bt: int32 [rows, seq_len], `pad_id` on padding.
      positions_bt: int32 [rows, seq_len], 0, 1, ... within each document, -1 on padding.
      segment_ids_bt: int32 [rows, seq_len], 1, 2, ... per document within a row, 0 on padding.
      loss_mask_bt: float32 [rows, seq_len], 1.0 where the token is a response token.
    """
    docs = _check_documents(pairs, seq_len, overflow)
    return _write_rows(_best_fit(docs, seq_len), seq_len, pad_id, rows)


def pad_sequences(
    pairs: Sequence[Document],
    *,
    seq_len: int,
    pad_id: int,
    rows: int | None = None,
    overflow: Overflow = "error",
) -> dict[str, np.ndarray]:
    """The unpacked layout: one document per row, right-padded. Same arguments and outputs as
    `pack_sequences` (segment id 1 on every document)."""
    docs = _check_documents(pairs, seq_len, overflow)
    return _write_rows([[doc] for doc in docs], seq_len, pad_id, rows)


def packed_batches(
    docs: Sequence[Document],
    *,
    seq_len: int,
    pad_id: int,
    batch_rows: int,
    seed: int,
    start_step: int = 0,
    overflow: Overflow = "error",
) -> Iterator[dict[str, np.ndarray]]:
    """Endless [batch_rows, seq_len] batches (as `pack_sequences` returns) over reshuffled,
    repacked epochs.

    Epoch e visits the documents in the order `default_rng((seed, e)).permutation` and packs
    them best fit; its rows are streamed, so a batch may span two epochs and no batch has
    padding rows. The stream is a pure function of (docs, seed): starting at `start_step` yields
    exactly what an uninterrupted run would have from that step on. Rows are only written as
    arrays batch by batch, so host memory holds one batch, not an epoch.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    checked = _check_documents(docs, seq_len, overflow)

    def rows():
        for epoch in itertools.count():
            order = np.random.default_rng((seed, epoch)).permutation(len(checked))
            yield from _best_fit([checked[i] for i in order], seq_len)

    def batches(row_stream):
        skip = start_step * batch_rows
        next(itertools.islice(row_stream, skip, skip), None)  # consumes exactly `skip` rows
        while True:
            rows_of_docs = list(itertools.islice(row_stream, batch_rows))
            yield _write_rows(rows_of_docs, seq_len, pad_id, None)

    return batches(rows())
