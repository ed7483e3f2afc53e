"""The decoder-only transformer (Llama / Mistral / Qwen2 families) in Flax NNX.

Layers are stacked on a leading "layers" axis and run with `jax.lax.scan`, so compile time does
not grow with depth. The hot path is functional: split once with `nnx.split(model)`, then call
`apply(graphdef, params, ...)` (or `nnx.merge` inside your own jitted function).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zero_rl.models.config import ModelConfig
from zero_rl.models.layers import Block, RMSNorm, _param, rope_inv_frequencies
from zero_rl.sharding import constrain

_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class KVCache(NamedTuple):
    """Keys/values of all layers, `[layers, batch, cache_len, kv_heads, head_dim]`, and the
    position held by each slot, `pos_bs` [batch, cache_len] (-1 for an empty or padding slot)."""

    k: jax.Array
    v: jax.Array
    pos_bs: jax.Array

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
        shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or cfg.compute_dtype
        return cls(
            jnp.zeros(shape, dtype),
            jnp.zeros(shape, dtype),
            jnp.full((batch, length), -1, jnp.int32),
        )

    LOGICAL_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")


def positions_from_mask(valid_bt: jax.Array) -> jax.Array:
    """Positions 0, 1, ... over the valid tokens of each row, -1 on padding (left or right)."""
    valid = valid_bt.astype(jnp.int32)
    return jnp.where(valid > 0, jnp.cumsum(valid, axis=-1) - 1, -1)


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """`num_layers` blocks built under vmap: every weight gets a leading layers axis."""
    keys = jax.random.split(rngs.params(), cfg.num_layers)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0))))
    stacked = jax.vmap(lambda k: nnx.split(Block(cfg, rngs=nnx.Rngs(params=k)))[1])(keys)
    return nnx.merge(graphdef, stacked)


class Transformer(nnx.Module):
    """Decoder-only LM. `model(tokens_bt)` returns logits [batch, time, vocab]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = cfg.weight_dtype
        self.embed = _param(rngs, (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"), dt)
        self.layers = _stacked_blocks(cfg, rngs)
        self.final_norm = RMSNorm(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), dt)
        if cfg.value_head:
            # Zero-initialised: the critic starts by predicting 0 for every state.
            self.value_head = _param(rngs, (cfg.embed_dim,), ("embed",), dt, "zeros")
            self.value_bias = _param(rngs, (), (), dt, "zeros")
        if cfg.separate_critic:
            self.critic_layers = _stacked_blocks(cfg, rngs)
            self.critic_norm = RMSNorm(cfg, rngs=rngs)

    def critic_values(
        self,
        tokens_bt: jax.Array,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
    ) -> jax.Array:
        """V [batch, time] from the separate critic trunk (`separate_critic=True`)."""
        if not self.cfg.separate_critic:
            raise ValueError("this model has no separate critic (ModelConfig.separate_critic)")
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        # The critic reads the policy's embedding but must not train it.
        embed = jax.lax.stop_gradient(self.embed[...])
        x = constrain(
            embed[tokens_bt].astype(self.cfg.compute_dtype), ("batch", "length", "act_embed")
        )
        x = self._trunk(self.critic_layers, x, positions_bt, segment_ids_bt)
        return self.values(self.critic_norm(x))

    def values(self, hidden_btd: jax.Array) -> jax.Array:
        """The value head's V [batch, time] (float32) of each position's hidden state."""
        if not self.cfg.value_head:
            raise ValueError("this model has no value head (ModelConfig.value_head=False)")
        h = hidden_btd.astype(jnp.float32)
        return h @ self.value_head[...].astype(jnp.float32) + self.value_bias[...].astype(
            jnp.float32
        )

    def head_weight(self) -> jax.Array:
        """The output projection [embed, vocab] (the transposed embedding when tied)."""
        return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

    def hidden_states(
        self,
        tokens_bt: jax.Array,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        *,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        attend_len: int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [batch, time, embed] and the updated cache (if given).

        `attend_len` (static, with a cache): attend over the first that many cache slots only,
        the caller promising that later slots are empty (the sampler's decode, which fills the
        cache in order, reads less of it early on)."""
        cfg = self.cfg
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        x = self.embed[...][tokens_bt].astype(cfg.compute_dtype)
        x = constrain(x, ("batch", "length", "act_embed"))
        inv_freq = rope_inv_frequencies(cfg)
        graphdef, layer_params = nnx.split(self.layers)

        if cache is not None:
            pos_bs = jax.lax.dynamic_update_slice_in_dim(
                cache.pos_bs, positions_bt.astype(jnp.int32), cache_index, 1
            )

            def body(carry, layer_state):
                x, k_all, v_all, layer = carry
                block = nnx.merge(graphdef, layer_state)
                x, (k_all, v_all) = block(
                    x,
                    positions_bt,
                    inv_freq,
                    cache=(k_all, v_all, pos_bs),
                    cache_index=cache_index,
                    layer=layer,
                    attend_len=attend_len,
                )
                return (x, k_all, v_all, layer + 1), None

            (x, k_all, v_all, _), _ = jax.lax.scan(
                body, (x, cache.k, cache.v, jnp.int32(0)), layer_params
            )
            new_cache = KVCache(k_all, v_all, pos_bs)
        else:
            x = self._trunk(self.layers, x, positions_bt, segment_ids_bt)
            new_cache = None
        return self.final_norm(x), new_cache

    def _trunk(self, layers, x_btd, positions_bt, segment_ids_bt):
        """The stacked blocks over a whole sequence (no cache), scanned, with remat."""
        graphdef, layer_params = nnx.split(layers)
        inv_freq = rope_inv_frequencies(self.cfg)

        def body(x, layer_state):
            block = nnx.merge(graphdef, layer_state)
            x, _ = block(x, positions_bt, inv_freq, segment_ids_bt=segment_ids_bt)
            return x, None

        if self.cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        return jax.lax.scan(body, x_btd, layer_params)[0]

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        logits = hidden_btd @ self.head_weight().astype(hidden_btd.dtype)
        return constrain(logits, ("batch", "length", "vocab"))

    def __call__(
        self,
        tokens_bt: jax.Array,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        *,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
    ):
        """Logits [batch, time, vocab] (float32); with a cache, returns (logits, new cache)."""
        hidden, new_cache = self.hidden_states(
            tokens_bt, positions_bt, segment_ids_bt, cache=cache, cache_index=cache_index
        )
        logits = self.logits(hidden).astype(jnp.float32)
        return logits if cache is None else (logits, new_cache)


def logprobs_from_hidden(
    hidden_btd: jax.Array,
    head_weight_dv: jax.Array,
    targets_bt: jax.Array,
    *,
    chunk_size: int = 512,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """log p(targets) [batch, time] (and entropy [batch, time]) without materialising all logits.

    The time axis is processed in chunks under `jax.checkpoint`, so neither the forward nor the
    backward pass holds more than one [batch, chunk, vocab] block of float32 logits: at 152K
    vocab and 8K tokens the full tensor would be ~5 GB per sequence.
    """
    b, t, d = hidden_btd.shape
    chunk = min(chunk_size, t)
    pad = (-t) % chunk
    hidden = jnp.pad(hidden_btd, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets_bt, ((0, 0), (0, pad)))
    n = (t + pad) // chunk
    hidden_nbcd = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    targets_nbc = targets.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args):
        h_bcd, y_bc = args
        logits = (h_bcd @ head_weight_dv.astype(h_bcd.dtype)).astype(jnp.float32)
        logz = jax.nn.logsumexp(logits, axis=-1)
        logp = jnp.take_along_axis(logits, y_bc[..., None], axis=-1)[..., 0] - logz
        if not with_entropy:
            return logp, jnp.zeros_like(logp)
        probs = jax.nn.softmax(logits, axis=-1)
        entropy = logz - jnp.sum(probs * logits, axis=-1)
        return logp, entropy

    logp_nbc, ent_nbc = jax.lax.map(one_chunk, (hidden_nbcd, targets_nbc))
    logp_bt = logp_nbc.swapaxes(0, 1).reshape(b, -1)[:, :t]
    ent_bt = ent_nbc.swapaxes(0, 1).reshape(b, -1)[:, :t] if with_entropy else None
    return logp_bt, ent_bt


def token_logprobs(
    model: Transformer,
    tokens_bt: jax.Array,
    positions_bt: jax.Array | None = None,
    segment_ids_bt: jax.Array | None = None,
    *,
    chunk_size: int = 512,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Teacher-forced log p(tokens[:, i+1] | tokens[:, :i+1]), aligned to the *target*: entry
    [b, i] is the log-prob of token i (entry [b, 0] is 0). Returns ([batch, time], entropy|None).
    """
    hidden, _ = model.hidden_states(tokens_bt, positions_bt, segment_ids_bt)
    logp, ent = logprobs_from_hidden(
        hidden[:, :-1],
        model.head_weight(),
        tokens_bt[:, 1:],
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )
    logp = jnp.pad(logp, ((0, 0), (1, 0)))
    ent = None if ent is None else jnp.pad(ent, ((0, 0), (1, 0)))
    return logp, ent


def apply(graphdef: nnx.GraphDef, params: nnx.State, *args, **kwargs):
    """Functional forward: `model(*args, **kwargs)` for the model given as (graphdef, params)."""
    return nnx.merge(graphdef, params)(*args, **kwargs)
