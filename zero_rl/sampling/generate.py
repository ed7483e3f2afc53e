"""The one sampling path: prompts -> device responses (`generate_padded`, `generate`) -> texts
cut at their stop strings with one definition of "stopped" (`finish_responses`) -> grading.

The RL collector, in-training evaluation, `launch/eval.py`, pass-rate filtering and the
notebooks all call these with a `SamplingOptions`, so a response that ends on a stop string is
"stopped" (not truncated) everywhere: in evaluation records, in the training metrics and in
the overlong filter's mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zero_rl import sampler
from zero_rl.data.templates import cut_at_stop_string, get_template, stop_token_ids
from zero_rl.models.transformer import Transformer
from zero_rl.sampler import FINISH_LENGTH, FINISH_STOP, SampleOutput
from zero_rl.sampling.engine import EngineStatic, EngineStats, run_jit
from zero_rl.sampling.options import SamplingOptions
from zero_rl.sampling.stops import match_state, stop_table
from zero_rl.tokenizer import Tokenizer


class Samples(NamedTuple):
    """A call's responses on the device (`SampleOutput`'s fields, rows = prompts x samples, a
    prompt's samples adjacent) and the continuous engine's `EngineStats` (None: static)."""

    output: SampleOutput
    stats: EngineStats | None


def _split(policy) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(policy) if isinstance(policy, Transformer) else policy


def template_stops(tokenizer: Tokenizer, template: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """What ends a response under `template`: the tokenizer's stop ids with the template's
    stop strings that are single tokens, and the template's stop strings."""
    ids = tuple(stop_token_ids(tokenizer, template))
    return ids, tuple(get_template(template).stop_strings)


def with_template_stops(
    options: SamplingOptions, tokenizer: Tokenizer, template: str
) -> SamplingOptions:
    """`options` with `template_stops` added to its own stop ids and strings."""
    ids, strings = template_stops(tokenizer, template)
    return options.replace(
        stop_token_ids=tuple(dict.fromkeys(options.stop_token_ids + ids)),
        stop_strings=tuple(dict.fromkeys(options.stop_strings + strings)),
    )


def resolve_slots(options: SamplingOptions, rows: int, num_samples: int) -> int:
    """The continuous engine's slot count for a call of `rows` responses, checked."""
    slots = options.slots or rows
    if slots < num_samples:
        raise ValueError(
            f"sampling option slots={slots} is less than num_samples={num_samples}: a "
            "prompt's samples start together from one shared prefill, so the slot pool must "
            "hold at least one group"
        )
    batch = min(options.prefill_prompts, rows // num_samples)
    if slots < batch * num_samples:
        raise ValueError(
            f"sampling option slots={slots} cannot take a prefill of prefill_prompts="
            f"{options.prefill_prompts} prompts x num_samples={num_samples}; lower "
            "prefill_prompts or raise slots"
        )
    return slots


def generate_padded(
    policy: Transformer | tuple[nnx.GraphDef, nnx.State],
    tokens_pt: jax.Array | np.ndarray,
    positions_pt: jax.Array | np.ndarray,
    options: SamplingOptions,
    *,
    num_samples: int = 1,
    rng: jax.Array | None = None,
    tokenizer: Tokenizer | None = None,
    pad_id: int | None = None,
    row_max_new_tokens: np.ndarray | jax.Array | None = None,
) -> Samples:
    """`num_samples` responses to each left-padded prompt: tokens and positions [prompts, P]
    (-1 on padding; an all -1 row is an empty prompt whose responses stay empty).

    `tokenizer` is needed for `options.stop_strings` (and gives the pad id);
    `row_max_new_tokens` [prompts * num_samples] gives each response its own budget
    (<= options.max_new_tokens). Nothing is copied to the host.
    """
    graphdef, params = _split(policy)
    num_prompts, prompt_len = tokens_pt.shape
    if prompt_len > options.max_prompt_len:
        raise ValueError(
            f"prompts padded to {prompt_len} tokens do not fit sampling option "
            f"max_prompt_len={options.max_prompt_len}"
        )
    rows = num_prompts * num_samples
    cfg = nnx.merge(graphdef, params).cfg
    if prompt_len + options.max_new_tokens > cfg.max_position:
        raise ValueError(
            f"prompts of {prompt_len} tokens + sampling option max_new_tokens="
            f"{options.max_new_tokens} exceed the model's max_position={cfg.max_position}"
        )
    if options.top_k > cfg.vocab_size:
        raise ValueError(f"top_k={options.top_k} exceeds the vocabulary size {cfg.vocab_size}")
    if options.stop_strings and tokenizer is None:
        raise ValueError(f"stop_strings {options.stop_strings} need the tokenizer: pass tokenizer=")
    if pad_id is None:
        pad_id = tokenizer.pad_id if tokenizer is not None else 0
    table = (
        stop_table(tokenizer, options.stop_strings, cfg.vocab_size)
        if options.stop_strings
        else np.zeros((1, cfg.vocab_size), np.int32)
    )
    max_new_r = _row_budgets(row_max_new_tokens, rows, options.max_new_tokens)
    rng = jax.random.key(0) if rng is None else rng
    if options.engine == "static":
        out = sampler.generate_padded(
            (graphdef, params), tokens_pt, positions_pt,
            max_new_tokens=options.max_new_tokens, rng=rng, temperature=options.temperature,
            top_p=options.top_p, top_k=options.top_k, stop_token_ids=options.stop_token_ids,
            pad_id=pad_id, num_samples=num_samples, cache_dtype=options.cache_dtype,
            prompts_per_call=options.prompts_per_call, decode_segments=options.decode_segments,
            row_max_new_tokens=max_new_r, stop_table=table,
        )  # fmt: skip
        return Samples(out, None)
    static = EngineStatic(
        num_samples=num_samples,
        slots=resolve_slots(options, rows, num_samples),
        prefill_prompts=min(options.prefill_prompts, num_prompts),
        max_new_tokens=options.max_new_tokens,
        greedy=options.greedy,
        top_k=options.top_k,
        top_p=options.top_p,
        stop_token_ids=options.stop_token_ids,
        pad_id=int(pad_id),
        cache_dtype=options.cache_dtype,
        unroll_layers=sampler._unroll_layers(params),
        match_state=match_state(table),
        drain_phases=options.drain_phases,
        response_chunks=options.decode_segments,
    )
    out, stats = run_jit(
        graphdef, params, jnp.asarray(tokens_pt), jnp.asarray(positions_pt), max_new_r,
        jnp.asarray(table), rng, jnp.float32(max(options.temperature, 1e-6)), static=static,
    )  # fmt: skip
    return Samples(out, stats)


def _row_budgets(max_new_r, rows: int, cap: int) -> jax.Array:
    if max_new_r is None:
        return jnp.full((rows,), cap, jnp.int32)
    if isinstance(max_new_r, np.ndarray) or not isinstance(max_new_r, jax.Array):
        host = np.asarray(max_new_r)
        if host.shape != (rows,):
            raise ValueError(
                f"row_max_new_tokens has shape {host.shape}, expected ({rows},): one budget "
                "per response (prompts x num_samples)"
            )
        if host.size and (host.min() < 1 or host.max() > cap):
            raise ValueError(
                f"row_max_new_tokens must be in [1, {cap}] (sampling option max_new_tokens, "
                f"the KV cache's response length), got [{host.min()}, {host.max()}]"
            )
    return jnp.asarray(max_new_r, jnp.int32)


def generate(
    policy: Transformer | tuple[nnx.GraphDef, nnx.State],
    prompts: Sequence[Sequence[int]],
    options: SamplingOptions,
    *,
    num_samples: int = 1,
    rng: jax.Array | None = None,
    tokenizer: Tokenizer | None = None,
    pad_id: int | None = None,
    row_max_new_tokens: Sequence[int] | None = None,
    prompt_multiple: int = 1,
    input_sharding: jax.sharding.Sharding | None = None,
) -> Samples:
    """`generate_padded` for ragged token lists: left-padded to the smallest prompt bucket
    (capped at `options.max_prompt_len`), and to a multiple of `prompt_multiple` rows with
    empty prompts, whose rows are dropped from the output."""
    lengths = [len(p) for p in prompts]
    if lengths and max(lengths) > options.max_prompt_len:
        i = int(np.argmax(lengths))
        raise ValueError(
            f"prompt {i} has {lengths[i]} tokens, more than sampling option max_prompt_len="
            f"{options.max_prompt_len}"
        )
    buckets = (*(b for b in sampler.DEFAULT_PROMPT_BUCKETS if b < options.max_prompt_len),
               options.max_prompt_len)  # fmt: skip
    if pad_id is None:
        pad_id = tokenizer.pad_id if tokenizer is not None else 0
    tokens_pt, positions_pt = sampler.pad_prompts(
        prompts, pad_id=pad_id, prompt_buckets=buckets, batch_multiple=prompt_multiple
    )
    keep = len(prompts) * num_samples
    budgets = None
    if row_max_new_tokens is not None:
        if len(row_max_new_tokens) != keep:
            raise ValueError(f"row_max_new_tokens has {len(row_max_new_tokens)} budgets for "
                             f"{keep} responses (prompts x num_samples)")  # fmt: skip
        budgets = np.ones((tokens_pt.shape[0] * num_samples,), np.int32)
        budgets[:keep] = np.asarray(row_max_new_tokens, np.int32).reshape(-1)
    if input_sharding is not None:
        tokens_pt, positions_pt = jax.device_put((tokens_pt, positions_pt), input_sharding)
    samples = generate_padded(
        policy, tokens_pt, positions_pt, options, num_samples=num_samples, rng=rng,
        tokenizer=tokenizer, pad_id=pad_id, row_max_new_tokens=budgets,
    )  # fmt: skip
    if samples.output.tokens_bn.shape[0] == keep:
        return samples
    return samples._replace(output=SampleOutput(*(x[:keep] for x in samples.output)))


@dataclasses.dataclass(frozen=True)
class Responses:
    """Host-side responses, one per row: the text graded, its length in tokens, and whether a
    stop token or stop string ended it (False: it ran into its length budget)."""

    texts: list[str]
    lengths: np.ndarray  # [rows] int, up to and including the token that completed the stop
    stopped: np.ndarray  # [rows] bool

    def finish_reasons(self) -> list[str]:
        return [FINISH_STOP if s else FINISH_LENGTH for s in self.stopped]


def finish_responses(
    tokenizer: Tokenizer,
    tokens_bn: np.ndarray,
    lengths_b: np.ndarray,
    stopped_b: np.ndarray,
    stop_strings: Sequence[str] = (),
) -> Responses:
    """The definition of a finished response, the same for training, evaluation and filtering.

    A row's text is the decode of its first `lengths_b` tokens. If it contains a stop string it
    is cut after the first one and counts as stopped, with its length the tokens up to the one
    that completed the stop string (the decode loop stops there already; the search covers a
    spelling only seen in context). Otherwise it is stopped iff a stop token ended it.
    """
    texts, lengths, stopped = [], [], []
    for row_n, n, was_stopped in zip(tokens_bn, lengths_b, stopped_b):
        ids = row_n[: int(n)].tolist()
        text = _text(tokenizer, ids)
        cut = cut_at_stop_string(text, stop_strings) if stop_strings else None
        if cut is not None:
            text, was_stopped, n = cut, True, _tokens_to_stop(tokenizer, ids, stop_strings)
        texts.append(text)
        lengths.append(int(n))
        stopped.append(bool(was_stopped))
    return Responses(texts, np.asarray(lengths, np.int64), np.asarray(stopped, bool))


def _text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The decode of `ids`; an id past the tokenizer's vocabulary (a model whose embedding is
    padded beyond it, as Qwen2.5's is, can sample one) adds no text."""
    return tokenizer.decode([i for i in ids if 0 <= i < tokenizer.vocab_size])


def _tokens_to_stop(tokenizer: Tokenizer, ids: list[int], stop_strings: Sequence[str]) -> int:
    """The fewest leading tokens of `ids` whose text contains a stop string (bisection: having
    one is monotone in the prefix length)."""
    if cut_at_stop_string(_text(tokenizer, ids[:-1]), stop_strings) is None:
        return len(ids)  # the usual case: the loop stopped on the completing token
    lo, hi = 1, len(ids) - 1  # ids[:hi] has one
    while lo < hi:
        mid = (lo + hi) // 2
        if cut_at_stop_string(_text(tokenizer, ids[:mid]), stop_strings) is None:
            lo = mid + 1
        else:
            hi = mid
    return hi
