"""The continuous-batching decode engine: a fixed pool of slots, refilled inside the compiled
loop as responses end, reading the trainer's own params pytree.

A static batch decodes until its longest response ends, so on real response lengths most of
its row-steps are spent on finished rows. Here a slot whose response ends (a stop token, a stop
string, its row's length cap) takes the next waiting prompt: the prompt is prefilled into the
slot (a prompt's samples share one prefill, in `num_samples` slots) and decoding goes on, in
the same `lax.while_loop`. One call is one compiled program: it never returns to the host.

The KV cache is a pool of per-slot regions, `slots x (prompt_len + max_new_tokens)`, in the
`DecodeCache` layout the static sampler uses: a prompt chunk [slots, kv_heads, prompt_len,
head_dim], written when a slot is refilled, then the response region in `response_chunks`
chunks, where token j of a slot's response goes to offset j (a scatter of one key and value per
slot a step). Causality comes from the positions each slot records (-1 = empty); refilling a
slot resets its response positions. A step reads only the response chunks that some live row
has reached, so its attention costs the longest live response, not the cache length: on the
20M CPU bench, attention over the whole cache was most of a step (bench/kv_layout.py, and
bench/rollout.py for the engine against the static sampler).

Randomness is keyed by (output row, token index), not by slot: a row's sample does not depend
on how many slots there are or which slot it ran in.

Array names end in shape suffixes (`logits_sv`: [slots, vocab]); `zero_rl.models` lists the
letters, and their meanings in the sampling code (s: the pool's slots, r: output rows, ...).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zero_rl.models.transformer import DecodeCache
from zero_rl.sampler import SampleOutput, _compute_dtype_model, draw_categorical, truncate_logits
from zero_rl.sharding import active_shards, constrain


@dataclasses.dataclass(frozen=True)
class EngineStatic:
    """What the compiled engine is specialised on (one compile per distinct value)."""

    num_samples: int
    slots: int
    prefill_prompts: int
    max_new_tokens: int
    greedy: bool
    top_k: int
    top_p: float
    stop_token_ids: tuple[int, ...]
    pad_id: int
    cache_dtype: str | None
    unroll_layers: bool
    match_state: int  # the stop-string table's absorbing state (-1: no stop strings)
    drain_phases: int = 0  # halvings of the pool once no prompt waits (see `_run`)
    response_chunks: int = 1  # the response region in this many chunks (see the module doc)


class EngineStats(NamedTuple):
    """Device scalars of one engine call: decode steps run; slot-steps run (each step counts
    its pool's slots) and those that sampled a token of a live response (utilisation =
    live_slot_steps / slot_steps); prefill calls."""

    decode_steps: jax.Array
    slot_steps: jax.Array
    live_slot_steps: jax.Array
    prefills: jax.Array


class _LoopState(NamedTuple):
    step: jax.Array  # decode steps run
    next_prompt: jax.Array  # index of the next waiting prompt
    cache: DecodeCache
    logits_sv: jax.Array  # [slots, vocab] float32, each slot's next-token logits
    row_s: jax.Array  # [slots] the output row each slot samples, -1 for a free slot
    count_s: jax.Array  # [slots] tokens its row has so far
    first_pos_s: jax.Array  # [slots] position of its row's first response token
    stop_state_s: jax.Array  # [slots] stop-string automaton state
    tokens_rn: jax.Array  # [rows, max_new_tokens] outputs, samples of a prompt adjacent
    logprobs_rn: jax.Array
    lengths_r: jax.Array
    stopped_r: jax.Array
    slot_steps: jax.Array
    live_slot_steps: jax.Array
    prefills: jax.Array


def drain_phases(slots: int, requested: int, shards: int = 1) -> int:
    """How many times the pool halves as it drains: `requested`, fewer if each of the
    `shards` parts of the pool (the devices it is split over) does not halve evenly."""
    local, phases = slots // shards, 0
    while phases < requested and local % 2 == 0:
        local //= 2
        phases += 1
    return phases


def _compact(st: _LoopState, keep: int, shards: int, unroll_layers: bool) -> _LoopState:
    """A pool of `keep` slots holding every live row: each of the `shards` parts of the pool
    keeps its live slots first, so rows never move between devices (a gather across the
    sharded slot axis made XLA replicate the whole cache on every device)."""
    local = st.row_s.shape[0] // shards
    # [shards, keep // shards]: the local indices of each shard's kept slots, live ones first.
    order = jnp.argsort((st.row_s < 0).reshape(shards, local), axis=1, stable=True)
    order = order[:, : keep // shards]

    def take(x, axis=0):  # the kept slots of x's slot axis, shard by shard
        parts = x.reshape(*x.shape[:axis], shards, local, *x.shape[axis + 1 :])
        pick = jax.vmap(lambda p, i: jnp.take(p, i, axis=axis), in_axes=(axis, 0),
                        out_axes=axis)  # fmt: skip
        return pick(parts, order).reshape(*x.shape[:axis], keep, *x.shape[axis + 1 :])

    axes = DecodeCache.LAYER_AXES if unroll_layers else DecodeCache.LOGICAL_AXES

    def groups(cache_groups):  # the pool's slots are the batch axis, sharded as before
        return tuple(
            tuple(constrain(take(c, 0 if unroll_layers else 1), axes) for c in chunks)
            for chunks in cache_groups
        )

    pos = tuple(constrain(take(p), ("batch", "cache_length")) for p in st.cache.pos)
    cache = DecodeCache(groups(st.cache.k), groups(st.cache.v), pos)
    return st._replace(
        cache=cache,
        logits_sv=take(st.logits_sv),
        row_s=take(st.row_s),
        count_s=take(st.count_s),
        first_pos_s=take(st.first_pos_s),
        stop_state_s=take(st.stop_state_s),
    )


def chunk_lengths(static: EngineStatic) -> list[int]:
    """Slots of each response chunk: max_new_tokens split into `response_chunks` near-equal
    parts (fewer if there are fewer tokens than chunks)."""
    n = static.max_new_tokens
    k = max(1, min(static.response_chunks, n))
    ends = [-(-n * (i + 1) // k) for i in range(k)]
    return [e - s for s, e in zip([0, *ends[:-1]], ends)]


def _empty_cache(cfg, slots: int, prompt_len: int, static: EngineStatic) -> DecodeCache:
    dtype = jnp.dtype(static.cache_dtype or cfg.compute_dtype)
    kv, hd = cfg.num_kv_heads, cfg.head_dim
    lengths = (prompt_len, *chunk_lengths(static))

    def group(layers):
        lead = () if static.unroll_layers else (layers,)
        axes = DecodeCache.LAYER_AXES if static.unroll_layers else DecodeCache.LOGICAL_AXES
        return tuple(constrain(jnp.zeros((*lead, slots, kv, n, hd), dtype), axes) for n in lengths)

    n_groups = cfg.num_layers if static.unroll_layers else 1
    layers = 1 if static.unroll_layers else cfg.num_layers
    pos = tuple(
        constrain(jnp.full((slots, n), -1, jnp.int32), ("batch", "cache_length")) for n in lengths
    )
    return DecodeCache(
        tuple(group(layers) for _ in range(n_groups)),
        tuple(group(layers) for _ in range(n_groups)),
        pos,
    )


def _run(
    graphdef,
    params,
    prompt_tokens_pt,
    prompt_positions_pt,
    max_new_r,
    stop_table_qv,
    rng,
    temperature,
    *,
    static: EngineStatic,
):
    """All prompts [prompts, P] (left-padded, positions -1 on padding; an all -1 row is an
    empty prompt whose samples stay empty) -> (SampleOutput of prompts * num_samples rows,
    EngineStats)."""
    model = _compute_dtype_model(graphdef, params)
    cfg = model.cfg
    groups = model.decode_groups(static.unroll_layers)
    num_prompts, prompt_len = prompt_tokens_pt.shape
    g, slots, n = static.num_samples, static.slots, static.max_new_tokens
    rows = num_prompts * g
    batch = static.prefill_prompts
    stop_ids = jnp.asarray(static.stop_token_ids or (-1,), jnp.int32)
    nonempty_p = jnp.any(prompt_positions_pt >= 0, axis=1)
    # Padded so that a batch of prompts past the end reads (empty) rows without clamping.
    pad = ((0, batch), (0, 0))
    queue_tokens = jnp.pad(prompt_tokens_pt, pad, constant_values=static.pad_id)
    queue_positions = jnp.pad(prompt_positions_pt, pad, constant_values=-1)
    queue_nonempty = jnp.pad(nonempty_p, (0, batch))

    def refill(st: _LoopState) -> _LoopState:
        """Prefills the next `batch` prompts into free slots, `num_samples` slots each."""
        start = st.next_prompt
        tokens_pt = jax.lax.dynamic_slice_in_dim(queue_tokens, start, batch)
        positions_pt = jax.lax.dynamic_slice_in_dim(queue_positions, start, batch)
        valid_p = jax.lax.dynamic_slice_in_dim(queue_nonempty, start, batch)
        valid_p &= start + jnp.arange(batch) < num_prompts
        hidden_ptd, k_lptkh, v_lptkh = model.prefill(tokens_pt, positions_pt)
        last_logits_pv = model.logits(hidden_ptd[:, -1:])[:, 0]
        # Each valid prompt's samples go to the next free slots, in slot order.
        valid_j = jnp.repeat(valid_p, g)
        free_first_s = jnp.argsort(st.row_s >= 0, stable=True)
        rank_j = jnp.cumsum(valid_j) - 1
        slot_j = jnp.where(valid_j, free_first_s[jnp.maximum(rank_j, 0)], slots)  # slots: drop
        row_j = (start + jnp.arange(batch * g) // g) * g + jnp.arange(batch * g) % g

        def put(x, new, axis=0):  # rows slot_j of x (along `axis`) <- new; dropped rows skipped
            index = (slice(None),) * axis + (slot_j,)
            return x.at[index].set(new.astype(x.dtype), mode="drop")

        def prompt_chunk(kv_lptkh):  # -> [layers, batch * g, kv, P, hd]
            return jnp.repeat(kv_lptkh.transpose(0, 1, 3, 2, 4), g, axis=1)

        def write(cache_groups, kv_lptkh):
            new = prompt_chunk(kv_lptkh)
            out = []
            for i, (prompt_c, *response_cs) in enumerate(cache_groups):
                if static.unroll_layers:
                    out.append((put(prompt_c, new[i]), *response_cs))
                else:
                    out.append((put(prompt_c, new, axis=1), *response_cs))
            return tuple(out)

        cache = DecodeCache(
            write(st.cache.k, k_lptkh),
            write(st.cache.v, v_lptkh),
            (
                put(st.cache.pos[0], jnp.repeat(positions_pt, g, axis=0)),
                *(put(p, jnp.full((batch * g, p.shape[1]), -1, jnp.int32))
                  for p in st.cache.pos[1:]),
            ),
        )  # fmt: skip
        first_pos_p = jnp.max(positions_pt, axis=1) + 1
        return st._replace(
            next_prompt=start + batch,
            cache=cache,
            logits_sv=put(st.logits_sv, jnp.repeat(last_logits_pv, g, axis=0)),
            row_s=put(st.row_s, row_j),
            count_s=put(st.count_s, jnp.zeros_like(row_j)),
            first_pos_s=put(st.first_pos_s, jnp.repeat(first_pos_p, g)),
            stop_state_s=put(st.stop_state_s, jnp.zeros_like(row_j)),
            prefills=st.prefills + 1,
        )

    def can_refill(st: _LoopState):
        start = st.next_prompt
        valid_p = jax.lax.dynamic_slice_in_dim(queue_nonempty, start, batch)
        valid_p &= start + jnp.arange(batch) < num_prompts
        free = jnp.sum(st.row_s < 0)
        return (start < num_prompts) & (free >= g * jnp.sum(valid_p))

    def draw(logits_sv, row_s, count_s):
        if static.greedy:
            return jnp.argmax(logits_sv, axis=-1).astype(jnp.int32)
        scaled_sv = truncate_logits(logits_sv / temperature, top_k=static.top_k,
                                    top_p=static.top_p)  # fmt: skip

        def uniforms(row, count):
            return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(rng, row), count), (2,))

        return draw_categorical(scaled_sv, jax.vmap(uniforms)(row_s, count_s))

    def step(st: _LoopState, refills: bool = True) -> _LoopState:
        if refills:
            st = jax.lax.while_loop(can_refill, refill, st)
        live_s = st.row_s >= 0
        token_s = draw(st.logits_sv, st.row_s, st.count_s)
        logp_s = jnp.take_along_axis(st.logits_sv, token_s[:, None], axis=-1)[:, 0]
        logp_s -= jax.nn.logsumexp(st.logits_sv, axis=-1)
        token_s = jnp.where(live_s, token_s, static.pad_id)
        out_row_s = jnp.where(live_s, st.row_s, rows)  # rows: out of range, dropped
        tokens_rn = st.tokens_rn.at[out_row_s, st.count_s].set(token_s, mode="drop")
        logprobs_rn = st.logprobs_rn.at[out_row_s, st.count_s].set(logp_s, mode="drop")
        count_s = st.count_s + 1
        stop_state_s = stop_table_qv[st.stop_state_s, token_s]
        is_stop_s = jnp.any(token_s[:, None] == stop_ids[None, :], axis=-1)
        is_stop_s |= stop_state_s == static.match_state
        cap_s = max_new_r[jnp.clip(st.row_s, 0, rows - 1)]
        ended_s = live_s & (is_stop_s | (count_s >= cap_s))
        ended_row_s = jnp.where(ended_s, st.row_s, rows)
        lengths_r = st.lengths_r.at[ended_row_s].set(count_s, mode="drop")
        stopped_r = st.stopped_r.at[ended_row_s].set(is_stop_s, mode="drop")
        going_s = live_s & ~ended_s
        # Ended and free slots still run through the model (shapes are fixed) at position -1,
        # which no query attends to, and write nothing; the slot is refilled before its next
        # token. A response chunk that no going row has reached is not read at all.
        pos_s = jnp.where(going_s, st.first_pos_s + st.count_s, -1)
        offset_s = jnp.where(going_s, st.count_s, n)
        deepest = jnp.max(jnp.where(going_s, st.count_s, -1))
        starts = np.cumsum([0, *chunk_lengths(static)[:-1]])
        active = [None, *(deepest >= int(start) for start in starts)]
        logits_sv, cache = model.decode_step_rows(
            groups, token_s, pos_s, st.cache, row_offsets=offset_s,
            active_chunks=active if len(active) > 2 else None,
        )  # fmt: skip
        return st._replace(
            step=st.step + 1,
            cache=cache,
            logits_sv=logits_sv,
            row_s=jnp.where(going_s, st.row_s, -1),
            count_s=count_s,
            stop_state_s=stop_state_s,
            tokens_rn=tokens_rn,
            logprobs_rn=logprobs_rn,
            lengths_r=lengths_r,
            stopped_r=stopped_r,
            slot_steps=st.slot_steps + live_s.shape[0],
            live_slot_steps=st.live_slot_steps + jnp.sum(live_s),
        )

    def running(st: _LoopState):
        return jnp.any(st.row_s >= 0) | (st.next_prompt < num_prompts)

    zeros_s = jnp.zeros((slots,), jnp.int32)
    init = _LoopState(
        step=jnp.int32(0),
        next_prompt=jnp.int32(0),
        cache=_empty_cache(cfg, slots, prompt_len, static),
        logits_sv=jnp.zeros((slots, cfg.vocab_size), jnp.float32),
        row_s=jnp.full((slots,), -1, jnp.int32),
        count_s=zeros_s,
        first_pos_s=zeros_s,
        stop_state_s=zeros_s,
        tokens_rn=constrain(jnp.full((rows, n), static.pad_id, jnp.int32), ("batch", None)),
        logprobs_rn=constrain(jnp.zeros((rows, n), jnp.float32), ("batch", None)),
        lengths_r=jnp.zeros((rows,), jnp.int32),
        stopped_r=jnp.zeros((rows,), bool),
        slot_steps=jnp.int32(0),
        live_slot_steps=jnp.int32(0),
        prefills=jnp.int32(0),
    )
    # Once no prompt waits, the pool only drains: each time at most half its slots are live,
    # they move to a pool half as large, so the last, longest responses do not each drag a
    # full pool of finished slots through every step. Each phase is one more decode loop in
    # the program (no prefill in it).
    shards = active_shards("batch", slots)
    phases = drain_phases(slots, static.drain_phases, shards)

    def keep_going(st, pool):  # until every shard has at most half its slots live
        live_per_shard = jnp.sum((st.row_s >= 0).reshape(shards, -1), axis=1)
        shrink = (st.next_prompt >= num_prompts) & (jnp.max(live_per_shard) <= pool // shards // 2)
        return running(st) & ~shrink

    pool = slots
    st = jax.lax.while_loop(functools.partial(keep_going, pool=pool) if phases else running,
                            step, init)  # fmt: skip
    for phase in range(1, phases + 1):
        pool //= 2
        st = _compact(st, pool, shards, static.unroll_layers)
        cond = functools.partial(keep_going, pool=pool) if phase < phases else running
        st = jax.lax.while_loop(cond, functools.partial(step, refills=False), st)
    out = SampleOutput(
        st.tokens_rn, st.logprobs_rn, st.lengths_r, st.stopped_r,
        jnp.full((rows,), st.step, jnp.int32),
    )  # fmt: skip
    return out, EngineStats(st.step, st.slot_steps, st.live_slot_steps, st.prefills)


run_jit = jax.jit(_run, static_argnames=("graphdef", "static"))
