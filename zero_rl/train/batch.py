"""A step's rollout as a training batch on device: [prompt | response] sequences of a fixed
shape, and the teacher-forced log-probs (and values) of their responses, one jitted call.

A rollout is a batch of `rows = prompts * samples` sequences laid out as
[prompt (left-padded to P) | response (N)], so every step reuses the same compiled programs.
The next phase, the update, is `zero_rl.train.update`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zero_rl.models.transformer import logprobs_from_hidden
from zero_rl.sharding import constrain


class Rollout(NamedTuple):
    """One step's training batch on device. Rows of a prompt's samples are adjacent.

    tokens_bt / positions_bt: [rows, P + N] prompt and response (positions -1 on padding).
    mask_bn: [rows, N] 1.0 on response tokens that count in the loss.
    sampler_logprobs_bn, old_logprobs_bn, ref_logprobs_bn: [rows, N] behaviour, trainer-side
      old-policy and reference log-probs of the response tokens.
    rewards_pg: [prompts, samples] verifier rewards (after shaping).
    group_mask_p: [prompts] 1.0 for groups that train (0 for dynamic-sampling padding).
    old_values_bn: [rows, N] the value head's V at rollout time (PPO with GAE only).
    """

    tokens_bt: jax.Array
    positions_bt: jax.Array
    mask_bn: jax.Array
    sampler_logprobs_bn: jax.Array
    old_logprobs_bn: jax.Array
    ref_logprobs_bn: jax.Array
    rewards_pg: jax.Array
    group_mask_p: jax.Array
    old_values_bn: jax.Array | None = None


def assemble_sequences(
    prompt_tokens_bt: jax.Array,
    prompt_positions_bt: jax.Array,
    response_tokens_bn: jax.Array,
    response_lengths_b: jax.Array,
    num_samples: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[prompt | response] tokens and positions [rows, P + N] and the response mask [rows, N]."""
    prompt_tokens = jnp.repeat(prompt_tokens_bt, num_samples, axis=0)
    prompt_positions = jnp.repeat(prompt_positions_bt, num_samples, axis=0)
    n = response_tokens_bn.shape[1]
    steps_n = jnp.arange(n)[None, :]
    mask_bn = steps_n < response_lengths_b[:, None]
    first_b = jnp.max(prompt_positions, axis=1, keepdims=True) + 1
    response_positions = jnp.where(mask_bn & (first_b > 0), first_b + steps_n, -1)
    tokens = jnp.concatenate([prompt_tokens, response_tokens_bn], axis=1)
    positions = jnp.concatenate([prompt_positions, response_positions], axis=1)
    return tokens, positions.astype(jnp.int32), mask_bn.astype(jnp.float32)


def response_logprobs(
    model, tokens_bt, positions_bt, prompt_len, *, chunk, with_entropy, with_values=False
):
    """log p of each response token [rows, N], entropy and V (or None), from one forward pass.

    V [rows, N] is the value of the state each response token is emitted from.
    """
    hidden = model.hidden_states(tokens_bt, positions_bt)
    # Logits at position t predict token t + 1: responses start at column P.
    hidden = hidden[:, prompt_len - 1 : -1]
    logp, entropy = logprobs_from_hidden(
        hidden,
        model.head_weight(),
        tokens_bt[:, prompt_len:],
        chunk_size=chunk,
        with_entropy=with_entropy,
    )
    if not with_values:
        return logp, entropy, None
    if model.cfg.separate_critic:
        values = model.critic_values(tokens_bt, positions_bt)[:, prompt_len - 1 : -1]
    else:
        values = model.values(hidden)
    return logp, entropy, values


@functools.partial(
    jax.jit, static_argnames=("graphdef", "prompt_len", "num_chunks", "chunk", "with_values")
)
def rollout_logprobs(
    graphdef,
    params,
    tokens_bt,
    positions_bt,
    *,
    prompt_len,
    num_chunks,
    chunk,
    with_values=False,
):
    """Teacher-forced response log-probs [rows, N] under `params`, `num_chunks` rows-blocks
    at a time (bounding activation memory for large rollouts); with `with_values`, the pair
    (log-probs, value-head V [rows, N])."""
    model = nnx.merge(graphdef, params)
    rows = tokens_bt.shape[0]

    def one(args):
        tokens, positions = args
        logp, _, values = response_logprobs(
            model, tokens, positions, prompt_len, chunk=chunk, with_entropy=False,
            with_values=with_values,
        )  # fmt: skip
        return (logp, values) if with_values else logp

    split = lambda x: x.reshape(num_chunks, rows // num_chunks, *x.shape[1:])
    out = jax.lax.map(one, (split(tokens_bt), split(positions_bt)))
    join = lambda x: constrain(x.reshape(rows, -1), ("batch", "length"))
    return jax.tree.map(join, out)
