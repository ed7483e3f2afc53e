"""In-process sampler: one jitted prefill, then a jitted `lax.while_loop` decode over a donated
KV cache, reading the trainer's own params pytree (no copy, no weight sync).

Shapes come from buckets (batch rows, prompt length), so a training run compiles the sampler
once. The log-probs returned are under the policy at temperature 1 - what the RL loss needs as
the behaviour log-probs - whatever temperature / top-k / top-p were used to draw the tokens.
Array names end in shape suffixes (`tokens_bn`: [rows, max_new_tokens]); `zero_rl.models`
lists the letters, and their meanings in the sampling code.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zero_rl.models.transformer import DecodeCache, Transformer
from zero_rl.sharding import constrain

DEFAULT_PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

FINISH_STOP, FINISH_LENGTH = "stop", "length"


class SampleOutput(NamedTuple):
    """Responses for `num_prompts * num_samples` rows, samples of a prompt adjacent.

    tokens_bn: [rows, max_new_tokens] int32, `pad_id` after the end of each response.
    logprobs_bn: [rows, max_new_tokens] float32, log p(token) at temperature 1 (0 after the end).
    lengths_b: [rows] int32, response length including the stop token.
    stopped_b: [rows] bool, True if a stop token ended the response, False if the cap did.
    decode_steps_b: [rows] int32, the decode steps run by the call that sampled the row: its
      longest response, as the loop stops once every row of the call has finished.
    """

    tokens_bn: jax.Array
    logprobs_bn: jax.Array
    lengths_b: jax.Array
    stopped_b: jax.Array
    decode_steps_b: jax.Array

    def finish_reasons(self) -> list[str]:
        return [FINISH_STOP if s else FINISH_LENGTH for s in np.asarray(self.stopped_b)]


class _DecodeState(NamedTuple):
    """The decode loop's carry. A step samples token `step` of each row's response (at
    position next_pos_b + step) from `logits_bv` and runs it through the model."""

    step: jax.Array  # decode steps run
    cache: DecodeCache
    logits_bv: jax.Array  # [rows, vocab] float32, each row's next-token logits
    tokens_bn: jax.Array  # [rows, max_new_tokens] the outputs so far, pad_id after the end
    logprobs_bn: jax.Array  # [rows, max_new_tokens] their log-probs at temperature 1
    done_b: jax.Array  # [rows] the row's response has ended (or the row is empty)
    stopped_b: jax.Array  # [rows] a stop token or stop string ended it
    lengths_b: jax.Array  # [rows] its length, set when it ends
    stop_state_b: jax.Array  # [rows] stop-string automaton state


@dataclasses.dataclass(frozen=True)
class _Static:
    num_samples: int
    max_new_tokens: int
    greedy: bool
    top_k: int
    top_p: float
    stop_token_ids: tuple[int, ...]
    pad_id: int
    cache_dtype: str | None
    decode_segments: int = 1
    # See `Transformer.decode_groups`: unrolled on CPU, scanned elsewhere.
    unroll_layers: bool = False
    match_state: int = -1  # the stop-string table's absorbing state (-1: no stop strings)


def bucket(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n; an error naming the largest bucket if n does not fit."""
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}; add a larger bucket")


def truncate_logits(logits_bv: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets logits [rows, vocab] outside the top-k, then the nucleus (top-p), set to the dtype's
    lowest finite value (ties at a threshold are all kept).

    Top-p keeps the smallest prefix of tokens sorted by probability whose mass reaches top_p
    (the token that crosses the threshold is kept), as in Holtzman et al. 2020 and HF. Neither
    cut sorts the vocabulary: XLA:CPU's sort of [rows, vocab] cost more than a decode step of a
    20M-parameter model. The k-th largest logit is the minimum of `lax.top_k`'s values (read
    as its last column, XLA lowers top_k to a full sort); the nucleus threshold is found by
    bisection over the logits' values (`_nucleus_threshold`).
    """
    neg_inf = jnp.finfo(logits_bv.dtype).min
    if top_k > 0:
        kth_b1 = jnp.min(jax.lax.top_k(logits_bv, top_k)[0], axis=-1, keepdims=True)
        logits_bv = jnp.where(logits_bv < kth_b1, neg_inf, logits_bv)
    if top_p < 1.0:
        threshold_b1 = _nucleus_threshold(logits_bv, top_p)
        logits_bv = jnp.where(logits_bv < threshold_b1, neg_inf, logits_bv)
    return logits_bv


def draw_categorical(logits_bv: jax.Array, uniform_b2: jax.Array, block: int = 128) -> jax.Array:
    """One token per row [rows] int32 drawn from softmax(logits [rows, vocab]) by inverting its
    CDF with two uniforms [rows, 2] in [0, 1): the first picks a block of `block` tokens by the
    blocks' masses, the second a token of that block by its mass. Exact, P(token) = P(block)
    P(token | block), and tokens of zero probability (logits at the dtype's lowest value, as
    `truncate_logits` leaves them) are never drawn.

    `jax.random.categorical` draws a Gumbel per logit: at 64 rows x 8,192 on the 20M CPU bench
    that was 9.2 ms of a 42 ms decode step, this 0.6 ms. Two short float32 sums (vocab / block
    blocks, then `block` tokens) keep each token's mass within about one rounding.
    """
    rows, vocab = logits_bv.shape
    logits_bv = logits_bv.astype(jnp.float32)
    weights_bv = jnp.exp(logits_bv - jnp.max(logits_bv, axis=-1, keepdims=True))
    # [rows, blocks, block]: the vocabulary in chunks of `block` tokens.
    weights_bmc = jnp.pad(weights_bv, ((0, 0), (0, -vocab % block))).reshape(rows, -1, block)

    def invert(weights, u_b):
        """Of weights [rows, intervals], the interval holding u * total, never one of weight 0."""
        cumulative = jnp.cumsum(weights, axis=-1)
        index_b = jnp.sum(cumulative <= u_b[:, None] * cumulative[:, -1:], axis=-1)
        # u * total may round up to the total: the last interval of nonzero weight then.
        last_b = weights.shape[1] - 1 - jnp.argmax(weights[:, ::-1] > 0, axis=-1)
        return jnp.minimum(index_b, last_b)

    block_b = invert(jnp.sum(weights_bmc, axis=-1), uniform_b2[:, 0])
    inner_bc = jnp.take_along_axis(weights_bmc, block_b[:, None, None], axis=1)[:, 0]
    return (block_b * block + invert(inner_bc, uniform_b2[:, 1])).astype(jnp.int32)


def _nucleus_threshold(logits_bv: jax.Array, top_p: float) -> jax.Array:
    """The smallest logit of the nucleus, [rows, 1]: the largest value t whose tokens with
    logit >= t hold probability >= top_p. That is the logit of the token whose mass crosses
    top_p in descending order, so keeping logits >= t is the sorted definition of top-p.

    Float32 values map to int32 keys in the same order, and a per-row bisection over the keys
    takes 32 passes over [rows, vocab] (a compare and a masked sum each), no sort.
    """
    probs_bv = jax.nn.softmax(logits_bv.astype(jnp.float32), axis=-1)
    bits_bv = jax.lax.bitcast_convert_type(logits_bv.astype(jnp.float32), jnp.int32)
    # Negative floats order backwards as integers: flipping their magnitude bits fixes that.
    keys_bv = jnp.where(bits_bv >= 0, bits_bv, bits_bv ^ jnp.int32(0x7FFFFFFF))

    def halve(_, bounds):  # invariant: the answer is in [lo, hi], mass(lo) >= top_p
        lo_b, hi_b = bounds
        mid_b = (lo_b >> 1) + (hi_b >> 1) + ((lo_b | hi_b) & 1)  # ceil((lo + hi) / 2), no overflow
        mass_b = jnp.sum(jnp.where(keys_bv >= mid_b[:, None], probs_bv, 0.0), axis=-1)
        inside = mass_b >= top_p
        return jnp.where(inside, mid_b, lo_b), jnp.where(inside, hi_b, mid_b - 1)

    bounds = (jnp.min(keys_bv, axis=-1), jnp.max(keys_bv, axis=-1))
    key_b = jax.lax.fori_loop(0, 32, halve, bounds)[0]
    bits_b = jnp.where(key_b >= 0, key_b, key_b ^ jnp.int32(0x7FFFFFFF))
    return jax.lax.bitcast_convert_type(bits_b, jnp.float32)[:, None].astype(logits_bv.dtype)


def _compute_dtype_model(graphdef, params) -> Transformer:
    """The model with its weights cast once to the compute dtype.

    Every weight is cast to the compute dtype where it is used anyway, so this changes no
    result; with fp32 master weights and bf16 compute it halves the bytes each decode step
    reads, and decode is bound by those bytes.
    """
    dtype = nnx.merge(graphdef, params).cfg.compute_dtype
    params = jax.tree.map(
        lambda w: w.astype(dtype) if jnp.issubdtype(w.dtype, jnp.floating) else w, params
    )
    return nnx.merge(graphdef, params)


def _segment_bounds(static: _Static) -> list[tuple[int, int]]:
    """[start, end) of each decode segment's response slots (a chunk of the cache each)."""
    n = static.max_new_tokens
    segments = max(1, min(static.decode_segments, n))
    ends = [-(-n * (k + 1) // segments) for k in range(segments)]
    return list(zip([0, *ends[:-1]], ends))


def _prefill(graphdef, params, prompt_bt, positions_bt, *, static: _Static):
    """Runs the prompt through the model once and builds the decode cache.

    The prompt attends over its own P slots only; its keys and values become the cache's first
    chunk, in the copy that repeats each prompt's rows for its samples (GRPO groups share one
    prefill; rows of a prompt are adjacent). One empty chunk per decode segment follows.
    Returns the cache, the last prompt token's logits [rows, vocab] float32 and the position of
    each row's first response token [rows] (-1 for an empty row: all positions -1).
    """
    model = _compute_dtype_model(graphdef, params)
    cfg = model.cfg
    hidden_btd, k_lbtkh, v_lbtkh = model.prefill(prompt_bt, positions_bt)
    # Left padding puts every prompt's last token in the last column: only its logits are needed.
    last_logits_bv = model.logits(hidden_btd[:, -1:])[:, 0]
    g = static.num_samples
    rows = prompt_bt.shape[0] * g
    cache_dtype = jnp.dtype(static.cache_dtype or cfg.compute_dtype)

    def repeat(x, axis=0):
        return jnp.repeat(x, g, axis=axis) if g > 1 else x

    bounds = _segment_bounds(static)
    # Layer groups as `decode_groups` makes them: one per layer, or one of all layers.
    layers = cfg.num_layers
    groups = [(i, i + 1) for i in range(layers)] if static.unroll_layers else [(0, layers)]

    def chunks(kv_lbtkh, start, end):  # [layers, rows, time, kv, hd] -> [l, rows, kv, slots, hd]
        prompt_lbkth = repeat(kv_lbtkh[start:end].astype(cache_dtype).transpose(0, 1, 3, 2, 4), 1)
        l_, _, kv, _, hd = prompt_lbkth.shape
        empty = [jnp.zeros((l_, rows, kv, e - s, hd), cache_dtype) for s, e in bounds]
        out = [prompt_lbkth, *empty]
        if static.unroll_layers:  # a group of one layer holds [rows, kv, slots, hd]
            return tuple(constrain(c[0], DecodeCache.LAYER_AXES) for c in out)
        return tuple(constrain(c, DecodeCache.LOGICAL_AXES) for c in out)

    pos = [repeat(positions_bt.astype(jnp.int32))] + [
        jnp.full((rows, end - start), -1, jnp.int32) for start, end in bounds
    ]
    cache = DecodeCache(
        tuple(chunks(k_lbtkh, *g) for g in groups),
        tuple(chunks(v_lbtkh, *g) for g in groups),
        tuple(constrain(p, ("batch", "cache_length")) for p in pos),
    )
    empty_b = jnp.all(positions_bt < 0, axis=1)
    next_pos_b = jnp.where(empty_b, -1, jnp.max(positions_bt, axis=1) + 1)
    return cache, repeat(last_logits_bv), repeat(next_pos_b)


def _decode(
    graphdef,
    params,
    cache,
    logits_bv,
    next_pos_b,
    rng,
    temperature,
    max_new_b,
    stop_table_qv,
    *,
    static: _Static,
):
    """Samples up to max_new_b[row] (<= max_new_tokens) tokens per row, stopping early once
    every row has finished; a stop token or a stop string (`zero_rl.sampling.stops`'s table
    [states, vocab]) ends a row.

    Rows with next_pos_b < 0 (empty rows that pad the batch) are done from the start.
    """
    model = _compute_dtype_model(graphdef, params)
    groups = model.decode_groups(static.unroll_layers)
    rows = logits_bv.shape[0]
    n = static.max_new_tokens
    stop_ids = jnp.asarray(static.stop_token_ids or (-1,), jnp.int32)

    def cond(st: _DecodeState, end) -> jax.Array:
        return (st.step < end) & ~jnp.all(st.done_b)

    def body(st: _DecodeState, segment, start) -> _DecodeState:
        step, was_done_b = st.step, st.done_b
        if static.greedy:
            token_b = jnp.argmax(st.logits_bv, axis=-1)
        else:
            scaled = truncate_logits(
                st.logits_bv / temperature, top_k=static.top_k, top_p=static.top_p
            )
            uniform_b2 = jax.random.uniform(jax.random.fold_in(rng, step), (scaled.shape[0], 2))
            token_b = draw_categorical(scaled, uniform_b2)
        token_b = token_b.astype(jnp.int32)
        logp_b = jnp.take_along_axis(st.logits_bv, token_b[:, None], axis=-1)[:, 0]
        logp_b = logp_b - jax.nn.logsumexp(st.logits_bv, axis=-1)
        token_b = jnp.where(was_done_b, static.pad_id, token_b)
        logp_b = jnp.where(was_done_b, 0.0, logp_b)
        tokens_bn = jax.lax.dynamic_update_slice_in_dim(st.tokens_bn, token_b[:, None], step, 1)
        logprobs_bn = jax.lax.dynamic_update_slice_in_dim(st.logprobs_bn, logp_b[:, None], step, 1)
        stop_state_b = stop_table_qv[st.stop_state_b, token_b]
        is_stop = jnp.any(token_b[:, None] == stop_ids[None, :], axis=-1)
        is_stop = (is_stop | (stop_state_b == static.match_state)) & ~was_done_b
        ends = is_stop | (~was_done_b & (step + 1 >= max_new_b))
        lengths_b = jnp.where(ends, step + 1, st.lengths_b)
        stopped_b = st.stopped_b | is_stop
        done_b = was_done_b | ends
        # Finished rows still run through the model (shapes are fixed) but write position -1,
        # which no query attends to.
        pos_b = jnp.where(done_b, -1, next_pos_b + step)
        logits_bv, cache = model.decode_step(
            groups,
            token_b,
            pos_b,
            st.cache,
            read_chunks=segment + 2,
            write_chunk=segment + 1,
            write_index=step - start,
        )
        return _DecodeState(
            step=step + 1,
            cache=cache,
            logits_bv=logits_bv,
            tokens_bn=tokens_bn,
            logprobs_bn=logprobs_bn,
            done_b=done_b,
            stopped_b=stopped_b,
            lengths_b=lengths_b,
            stop_state_b=stop_state_b,
        )

    state = _DecodeState(
        step=jnp.int32(0),
        cache=cache,
        logits_bv=logits_bv,
        tokens_bn=jnp.full((rows, n), static.pad_id, jnp.int32),
        logprobs_bn=jnp.zeros((rows, n), jnp.float32),
        done_b=next_pos_b < 0,  # empty rows that pad the batch are done from the start
        stopped_b=jnp.zeros((rows,), bool),
        lengths_b=jnp.zeros((rows,), jnp.int32),
        stop_state_b=jnp.zeros((rows,), jnp.int32),
    )
    # Segment k's steps write cache chunk k + 1 and attend over the prompt's chunk and chunks
    # 1..k + 1 only, not over the empty rest of the cache. Each segment is its own loop in the
    # same program (a static set of chunks per loop); later ones exit at once when every row
    # has finished.
    for segment, (start, end) in enumerate(_segment_bounds(static)):
        state = jax.lax.while_loop(
            functools.partial(cond, end=end),
            functools.partial(body, segment=segment, start=start),
            state,
        )
    steps_b = jnp.full((rows,), state.step, jnp.int32)
    lengths_b = state.lengths_b.astype(jnp.int32)
    out = SampleOutput(state.tokens_bn, state.logprobs_bn, lengths_b, state.stopped_b, steps_b)
    # The cache is returned only so its donated buffers are reused in place by the loop.
    return out, state.cache


# Module-level jits, so every call with the same bucket shapes hits the same compiled program.
prefill_jit = jax.jit(_prefill, static_argnames=("graphdef", "static"))
decode_jit = jax.jit(_decode, static_argnames=("graphdef", "static"), donate_argnames=("cache",))


def pad_prompts(
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
    batch_multiple: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists into a bucketed [rows, length] array and positions (-1 on padding).

    Rows are padded to a multiple of `batch_multiple` with empty prompts (position -1
    everywhere), which the decoder treats as already finished.
    """
    if not prompts:
        raise ValueError("no prompts given")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty")
    p = bucket(max(lengths), prompt_buckets)
    rows = -(-len(prompts) // batch_multiple) * batch_multiple
    tokens = np.full((rows, p), pad_id, np.int32)
    positions = np.full((rows, p), -1, np.int32)
    for i, ids in enumerate(prompts):
        tokens[i, p - len(ids) :] = ids
        positions[i, p - len(ids) :] = np.arange(len(ids))
    return tokens, positions


def generate(
    model_or_params: Transformer | tuple[nnx.GraphDef, nnx.State],
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    rng: jax.Array | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_token_ids: Sequence[int] = (),
    pad_id: int = 0,
    num_samples: int = 1,
    prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
    batch_multiple: int = 1,
    cache_dtype: str | None = None,
    input_sharding: jax.sharding.Sharding | None = None,
    prompts_per_call: int = 0,
    decode_segments: int = 1,
    row_max_new_tokens: np.ndarray | None = None,
    stop_table: np.ndarray | None = None,
) -> SampleOutput:
    """Samples `num_samples` responses per prompt (rows of a prompt adjacent in the output).

    Args:
      model_or_params: an NNX Transformer or its `(graphdef, params)` split.
      prompts: token-id lists (ragged); they are left-padded to a prompt-length bucket.
      temperature: 0 means greedy decoding.
      batch_multiple: pad the prompt batch to a multiple of this (e.g. the number of
        data-parallel devices); padded rows are dropped from the output.
      prompts_per_call: sample this many (padded) prompts per call; see `generate_padded`.
      decode_segments: decode loops of increasing attended length; see `generate_padded`.
    Returns:
      SampleOutput with `len(prompts) * num_samples` rows.
    """
    tokens_bt, positions_bt = pad_prompts(
        prompts, pad_id=pad_id, prompt_buckets=prompt_buckets, batch_multiple=batch_multiple
    )
    if input_sharding is not None:
        tokens_bt, positions_bt = jax.device_put((tokens_bt, positions_bt), input_sharding)
    out = generate_padded(
        model_or_params,
        tokens_bt,
        positions_bt,
        max_new_tokens=max_new_tokens,
        rng=rng,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop_token_ids=stop_token_ids,
        pad_id=pad_id,
        num_samples=num_samples,
        cache_dtype=cache_dtype,
        prompts_per_call=prompts_per_call,
        decode_segments=decode_segments,
        row_max_new_tokens=_pad_rows(row_max_new_tokens, tokens_bt.shape[0] * num_samples),
        stop_table=stop_table,
    )
    keep = len(prompts) * num_samples
    if out.tokens_bn.shape[0] == keep:
        return out
    return SampleOutput(*(x[:keep] for x in out))


def _pad_rows(max_new_r: np.ndarray | None, rows: int) -> np.ndarray | None:
    """Per-row budgets padded with 1 for the empty rows that pad the batch."""
    if max_new_r is None:
        return None
    max_new_r = np.asarray(max_new_r, np.int32)
    return np.concatenate([max_new_r, np.ones((rows - len(max_new_r),), np.int32)])


def generate_padded(
    model_or_params: Transformer | tuple[nnx.GraphDef, nnx.State],
    tokens_bt: jax.Array,
    positions_bt: jax.Array,
    *,
    max_new_tokens: int,
    rng: jax.Array | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_token_ids: Sequence[int] = (),
    pad_id: int = 0,
    num_samples: int = 1,
    cache_dtype: str | None = None,
    prompts_per_call: int = 0,
    decode_segments: int = 1,
    row_max_new_tokens: jax.Array | np.ndarray | None = None,
    stop_table: np.ndarray | None = None,
) -> SampleOutput:
    """`generate` for prompts already left-padded: tokens [rows, P] and positions [rows, P]
    (-1 on padding; a row of all -1 is an empty slot whose output is all padding).

    Nothing is transferred to the host, so a trainer can dispatch more device work before it
    reads the tokens.

    `prompts_per_call` (0 = all) samples the prompts in calls of that many, one after another
    with the same compiled programs, so the KV cache holds `prompts_per_call * num_samples`
    rows rather than the whole batch's: the knob that bounds the sampler's memory at long
    response lengths. Call i takes prompts i, i + calls, i + 2 * calls, ... (each device keeps
    its own rows of a row-sharded batch) and draws with `fold_in(rng, i)`; greedy outputs do
    not depend on the split.

    `decode_segments` splits the decode loop into that many loops of equal length; the steps
    of segment k attend over the prompt and the first k + 1 segments' slots only, instead of
    the whole cache. It changes no output and reads less of the cache (about
    (segments + 1) / (2 * segments) of the response part on average), at the price of a
    decode program that many times larger to compile.
    """
    if isinstance(model_or_params, Transformer):
        graphdef, params = nnx.split(model_or_params)
    else:
        graphdef, params = model_or_params
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    vocab = nnx.merge(graphdef, params).cfg.vocab_size
    if top_k > vocab:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {vocab}")
    static = _Static(
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        greedy=temperature == 0,
        top_k=int(top_k),
        top_p=float(top_p),
        stop_token_ids=tuple(int(t) for t in stop_token_ids),
        pad_id=int(pad_id),
        cache_dtype=cache_dtype,
        decode_segments=int(decode_segments),
        unroll_layers=_unroll_layers(params),
    )
    if decode_segments < 1:
        raise ValueError(f"decode_segments must be >= 1, got {decode_segments}")
    rng = jax.random.key(0) if rng is None else rng
    rows = tokens_bt.shape[0]
    if stop_table is None:
        stop_table = np.zeros((1, vocab), np.int32)
    match = stop_table.shape[0] - 1 if stop_table.shape[0] > 1 else -1  # see sampling.stops
    static = dataclasses.replace(static, match_state=match)
    stop_table = jnp.asarray(stop_table)
    if row_max_new_tokens is None:
        max_new_b = jnp.full((rows * num_samples,), max_new_tokens, jnp.int32)
    else:
        max_new_b = jnp.asarray(row_max_new_tokens, jnp.int32)
        if max_new_b.shape != (rows * num_samples,):
            raise ValueError(f"row_max_new_tokens has shape {max_new_b.shape}, expected "
                             f"({rows * num_samples},): one budget per response row")  # fmt: skip
    if 0 < prompts_per_call < rows:
        if rows % prompts_per_call:
            raise ValueError(
                f"prompts_per_call={prompts_per_call} must divide the {rows} prompt rows"
            )
        num_calls = rows // prompts_per_call
        max_new_pg = max_new_b.reshape(rows, num_samples)
        outs = [
            _sample(
                graphdef,
                params,
                _take_call(tokens_bt, i, num_calls),
                _take_call(positions_bt, i, num_calls),
                jax.random.fold_in(rng, i),
                temperature,
                static,
                _take_call(max_new_pg, i, num_calls).reshape(-1),
                stop_table,
            )
            for i in range(num_calls)
        ]
        return _merge_calls(outs, num_samples)
    return _sample(
        graphdef, params, tokens_bt, positions_bt, rng, temperature, static, max_new_b, stop_table
    )


def _unroll_layers(params) -> bool:
    """Whether the decode unrolls its layer loop: on CPU, where a scanned step copies each
    layer's weights (see `Transformer.decode_groups`). On accelerators the scan keeps the weights
    in place, the memory plan tight and compile time independent of depth."""
    leaf = jax.tree.leaves(params)[0]
    if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
        return all(d.platform == "cpu" for d in leaf.devices())
    return jax.default_backend() == "cpu"


@functools.partial(jax.jit, static_argnums=2)
def _take_call(x_b, index, num_calls: int):
    """Rows index, index + num_calls, ... of x_b [rows, ...]."""
    x = x_b.reshape(-1, num_calls, *x_b.shape[1:])
    return jax.lax.dynamic_index_in_dim(x, index, axis=1, keepdims=False)


@functools.partial(jax.jit, static_argnums=1)
def _merge_calls(outs: list[SampleOutput], num_samples: int) -> SampleOutput:
    """Undoes `_take_call`'s striding: each call's [prompts * num_samples, ...] outputs back in
    prompt order."""

    def merge(*xs):
        per_call = [x.reshape(-1, num_samples, *x.shape[1:]) for x in xs]
        stacked = jnp.stack(per_call, axis=1)  # [prompts / calls, calls, samples, ...]
        return stacked.reshape(-1, *stacked.shape[3:])

    return jax.tree.map(merge, *outs)


def _sample(
    graphdef, params, tokens_bt, positions_bt, rng, temperature, static, max_new_b, stop_table
) -> SampleOutput:
    """One prefill + decode call on all of its rows."""
    cache, logits_bv, next_pos_b = prefill_jit(
        graphdef, params, tokens_bt, positions_bt, static=static
    )
    out, _ = decode_jit(
        graphdef,
        params,
        cache,
        logits_bv,
        next_pos_b,
        rng,
        jnp.float32(max(temperature, 1e-6)),
        max_new_b,
        stop_table,
        static=static,
    )
    return out
