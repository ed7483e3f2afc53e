"""Stop strings inside the compiled decode loop: an Aho-Corasick automaton over characters,
advanced one token at a time through a [states, vocab] transition table.

A stop string such as r1_zero's "</answer>" is several tokens in most vocabularies, and the
model may spell it with any of them ("</", "answer", ">" or "</ans", "wer>" ...). Matching
token sequences would miss spellings; matching characters does not. The table is built once
on the host from every token's text: entry [q, t] is the automaton's state after reading token
t's characters from state q, and `MATCH` (the last state, absorbing) means a stop string has
appeared in the response's text. On the device the per-row state is one gather per step.

The host-side definition (`zero_rl.sampling.finish`) still decodes and cuts the text, so a
spelling whose characters a tokenizer only produces in context (a token that decodes
differently alone) is cut there; the table makes the decode loop stop at the same token.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence

import numpy as np

from zero_rl.tokenizer import Tokenizer


def _automaton(patterns: Sequence[str]) -> tuple[np.ndarray, list[bool], dict[str, int]]:
    """Aho-Corasick goto function over the patterns' characters.

    Returns goto [nodes, alphabet + 1] (column 0 is "any other character"), whether each node
    ends a pattern (itself or through its failure links), and the alphabet's column per char.
    """
    alphabet = {c: i + 1 for i, c in enumerate(sorted(set("".join(patterns))))}
    children: list[dict[str, int]] = [{}]
    ends = [False]
    for pattern in patterns:
        node = 0
        for c in pattern:
            if c not in children[node]:
                children.append({})
                ends.append(False)
                children[node][c] = len(children) - 1
            node = children[node][c]
        ends[node] = True
    goto = np.zeros((len(children), len(alphabet) + 1), np.int32)
    fail = [0] * len(children)
    queue = collections.deque()
    for c, child in children[0].items():
        goto[0, alphabet[c]] = child
        queue.append(child)
    while queue:  # breadth first: a node's failure target is final before its children's
        node = queue.popleft()
        ends[node] = ends[node] or ends[fail[node]]
        for c, col in alphabet.items():
            child = children[node].get(c)
            if child is None:
                goto[node, col] = goto[fail[node], col]
            else:
                fail[child] = goto[fail[node], col] if node else 0
                goto[node, col] = child
                queue.append(child)
        goto[node, 0] = 0
    return goto, ends, alphabet


def build_stop_table(token_texts: Sequence[str], patterns: Sequence[str]) -> np.ndarray:
    """Transition table [states, len(token_texts)] int32 of the stop-string automaton.

    State 0 is the start (no partial match), the last state is `MATCH` (absorbing). With no
    patterns the table is one row of zeros and never matches.
    """
    patterns = [p for p in patterns if p]
    vocab = len(token_texts)
    if not patterns:
        return np.zeros((1, vocab), np.int32)
    goto, ends, alphabet = _automaton(patterns)
    nodes = goto.shape[0]
    match = nodes  # one extra, absorbing state
    # Characters as alphabet columns, [vocab, longest token]; -1 past a token's end.
    longest = max((len(t) for t in token_texts), default=0)
    chars_vl = np.full((vocab, max(longest, 1)), -1, np.int32)
    for v, text in enumerate(token_texts):
        if text:
            chars_vl[v, : len(text)] = [alphabet.get(c, 0) for c in text]
    # Every state and token at once: one [states, vocab] gather per character position.
    goto_m = np.concatenate([goto, np.zeros((1, goto.shape[1]), np.int32)])
    is_end = np.asarray([*ends, True])
    state_qv = np.broadcast_to(np.arange(nodes + 1, dtype=np.int32)[:, None], (nodes + 1, vocab))
    state_qv = np.where(is_end[state_qv], match, state_qv)
    for position in range(chars_vl.shape[1]):
        col_v = chars_vl[:, position]
        active_v = col_v >= 0
        if not active_v.any():
            break
        nxt_qv = goto_m[state_qv, np.maximum(col_v, 0)[None, :]]
        nxt_qv = np.where(is_end[nxt_qv] | (state_qv == match), match, nxt_qv)
        state_qv = np.where(active_v[None, :], nxt_qv, state_qv)
    return state_qv.astype(np.int32)


def match_state(table_qv: np.ndarray) -> int:
    """The absorbing state that means "a stop string was produced" (-1 with no patterns)."""
    return table_qv.shape[0] - 1 if table_qv.shape[0] > 1 else -1


@functools.lru_cache(maxsize=8)
def _cached_table(tokenizer: Tokenizer, patterns: tuple[str, ...], vocab: int) -> np.ndarray:
    texts = tokenizer.token_texts()
    # The model's embedding may have more rows than the tokenizer has ids: those never match.
    texts = list(texts[:vocab]) + [""] * max(0, vocab - len(texts))
    table = build_stop_table(texts, patterns)
    table.flags.writeable = False
    return table


def stop_table(tokenizer: Tokenizer, patterns: Sequence[str], vocab_size: int) -> np.ndarray:
    """`build_stop_table` of the tokenizer's token texts, padded to the model's vocabulary size
    and cached per (tokenizer, patterns), since a run builds it once and samples many times."""
    return _cached_table(tokenizer, tuple(patterns), int(vocab_size))
