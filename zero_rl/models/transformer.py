"""The decoder-only transformer (Llama / Mistral / Qwen2 families) in Flax NNX.

Layers are stacked on a leading "layers" axis and run with `jax.lax.scan`, so compile time does
not grow with depth. The hot path is functional: split once with `nnx.split(model)`, then call
`apply(graphdef, params, ...)` (or `nnx.merge` inside your own jitted function). Array names
end in shape suffixes (`logits_btv`: [batch, time, vocab]), whose letters `zero_rl.models` lists.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zero_rl.models.config import ModelConfig
from zero_rl.models.layers import (
    Block,
    RMSNorm,
    _param,
    attention_mask,
    rope_cos_sin,
    rope_inv_frequencies,
)
from zero_rl.sharding import constrain

_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DecodeCache(NamedTuple):
    """The KV cache as the sampler's decode loop holds it, in groups of layers and chunks of
    slots: `k[group][chunk]` and `v[group][chunk]` are [batch, kv_heads, slots, head_dim] for a
    group of one layer (unrolled) and [layers, batch, kv_heads, slots, head_dim] for a group of
    all layers (scanned); `pos[chunk]` [batch, slots] is the position held by each slot (-1 for
    an empty or padding slot).

    Batch and kv head lead, the layout the decode matmuls read, so a step reads the slots where
    they lie. The chunks let a step attend over the filled part of the cache only (the
    sampler's decode segments) without copying it. See `Transformer.decode_groups` for the
    layer groups.
    """

    k: tuple[tuple[jax.Array, ...], ...]
    v: tuple[tuple[jax.Array, ...], ...]
    pos: tuple[jax.Array, ...]

    LOGICAL_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")
    LAYER_AXES = LOGICAL_AXES[1:]  # the arrays of a group of one layer


def positions_from_mask(valid_bt: jax.Array) -> jax.Array:
    """Positions [batch, time] int32: 0, 1, ... over the valid (nonzero) entries of
    `valid_bt` [batch, time] in each row, -1 on padding (left or right)."""
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
    ) -> jax.Array:
        """Final-norm hidden states [batch, time, embed].

        tokens_bt, positions_bt, segment_ids_bt: [batch, time] (positions default to 0, 1, ...;
        -1 marks padding). Decoding over a KV cache is `prefill` then `decode_step`.
        """
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        x_btd = self._trunk(self.layers, self._embed(tokens_bt), positions_bt, segment_ids_bt)
        return self.final_norm(x_btd)

    def prefill(
        self, tokens_bt: jax.Array, positions_bt: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The prompt's forward pass, keeping its keys and values.

        tokens_bt, positions_bt: [batch, time]. Returns the final-norm hidden states
        [batch, time, embed] and every layer's keys and values
        [layers, batch, time, kv_heads, head_dim] (rotary embedding applied to the keys).
        """
        x_btd = self._embed(tokens_bt)
        return self._trunk(self.layers, x_btd, positions_bt, None, keep_kv=True)

    def _embed(self, tokens_bt):
        x_btd = self.embed[...][tokens_bt].astype(self.cfg.compute_dtype)
        return constrain(x_btd, ("batch", "length", "act_embed"))

    def _trunk(self, layers, x_btd, positions_bt, segment_ids_bt, *, keep_kv: bool = False):
        """The stacked blocks over a whole sequence (no cache), scanned, with remat.

        Returns x [batch, time, embed], or with `keep_kv` (final norm applied) also every
        layer's keys and values [layers, batch, time, kv_heads, head_dim]."""
        graphdef, layer_params = nnx.split(layers)
        # RoPE's cos/sin depend on positions only: computed once, not once per layer.
        rope = rope_cos_sin(positions_bt, rope_inv_frequencies(self.cfg))

        def body(x_btd, layer_state):
            block = nnx.merge(graphdef, layer_state)
            x_btd, kv = block(x_btd, positions_bt, rope, segment_ids_bt=segment_ids_bt)
            return x_btd, (kv if keep_kv else None)

        if self.cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        x_btd, kv = jax.lax.scan(body, x_btd, layer_params)
        if keep_kv:
            return self.final_norm(x_btd), *kv
        return x_btd

    def decode_groups(self, unroll: bool) -> tuple[Block, ...]:
        """The decoder blocks in the layer groups of a `DecodeCache`, for `decode_step`.

        unroll=False: one group, the stacked blocks themselves, scanned over in each decode
        step (no copy of any weight; the program's size does not grow with depth). unroll=True:
        one group per layer, each a copy of that layer's weights made here, once per decode
        loop: XLA:CPU copies a layer's weights out of the stacked arrays in every scanned step
        (a slice that feeds a matmul), which at the 20M-parameter CPU benchmark more than
        doubled the bytes a step moves. The copies cost one more set of block weights in memory.
        """
        if not unroll:
            return (self.layers,)
        graphdef, state = nnx.split(self.layers)
        return tuple(
            nnx.merge(graphdef, jax.tree.map(lambda w, i=i: w[i : i + 1], state))
            for i in range(self.cfg.num_layers)
        )

    def decode_step(
        self,
        groups: Sequence[Block],
        tokens_b: jax.Array,
        positions_b: jax.Array,
        cache: DecodeCache,
        *,
        read_chunks: int,
        write_chunk: int,
        write_index: jax.Array | int,
    ) -> tuple[jax.Array, DecodeCache]:
        """One token per row through the model: logits [batch, vocab] (float32) and the cache.

        tokens_b, positions_b: [batch] (position -1: a row that is done, whose output is unused
        and whose slot stays empty). The token's keys, values and position go into slot
        `write_index` of chunk `write_chunk` (< read_chunks, an empty slot); it then attends over
        chunks [0, read_chunks) of the cache. `groups` is `decode_groups(...)`, matching the
        cache's layer groups.
        """
        pos_b1 = positions_b[:, None].astype(jnp.int32)
        pos = list(cache.pos)
        pos[write_chunk] = jax.lax.dynamic_update_slice_in_dim(
            pos[write_chunk], pos_b1, write_index, axis=1
        )

        def write(chunks, new_bk1h, layer):  # slot (layer, write_index) of chunk write_chunk
            chunks, c = list(chunks), chunks[write_chunk]
            if layer is None:  # one layer's [batch, kv, slots, hd]
                new, start = new_bk1h, (0, 0, write_index, 0)
            else:
                new, start = new_bk1h[None], (layer, 0, 0, write_index, 0)
            chunks[write_chunk] = jax.lax.dynamic_update_slice(c, new.astype(c.dtype), start)
            return chunks

        return self._decode_layers(groups, tokens_b, pos_b1, cache._replace(pos=tuple(pos)),
                                   write, read_chunks=read_chunks)  # fmt: skip

    def decode_step_rows(
        self,
        groups: Sequence[Block],
        tokens_b: jax.Array,
        positions_b: jax.Array,
        cache: DecodeCache,
        *,
        row_offsets: jax.Array,
        active_chunks: Sequence[jax.Array | None] | None = None,
    ) -> tuple[jax.Array, DecodeCache]:
        """`decode_step` for per-row regions (the continuous engine's slots): row b's token goes
        to offset row_offsets[b] of the chunks after the first, read as one region (an offset
        past them writes nothing: one scatter per chunk and layer, rows outside it dropped),
        then attends over every chunk. `active_chunks` (a traced bool or None per chunk) lets
        attention skip chunks no row may read (`attend_decode`).
        """
        pos_b1 = positions_b[:, None].astype(jnp.int32)
        rows = jnp.arange(tokens_b.shape[0])
        pos, targets, start = list(cache.pos), [], 0
        for c in range(1, len(pos)):
            length = pos[c].shape[1]
            inside_b = (row_offsets >= start) & (row_offsets < start + length)
            row_b = jnp.where(inside_b, rows, rows.shape[0])  # out of range: dropped
            local_b = jnp.clip(row_offsets - start, 0, length - 1)
            pos[c] = pos[c].at[row_b, local_b].set(pos_b1[:, 0], mode="drop")
            targets.append((c, row_b, local_b))
            start += length

        def write(chunks, new_bk1h, layer):  # each row's slot of its chunk (of `layer`)
            chunks, update_bkh = list(chunks), new_bk1h[:, :, 0]
            for c, row_b, local_b in targets:
                lead = () if layer is None else (layer,)
                index = (*lead, row_b, slice(None), local_b)  # -> [batch, kv, hd]
                chunks[c] = chunks[c].at[index].set(update_bkh.astype(chunks[c].dtype),
                                                    mode="drop")  # fmt: skip
            return chunks

        return self._decode_layers(groups, tokens_b, pos_b1, cache._replace(pos=tuple(pos)),
                                   write, read_chunks=len(pos),
                                   active_chunks=active_chunks)  # fmt: skip

    def _decode_layers(
        self, groups, tokens_b, pos_b1, cache, write, *, read_chunks, active_chunks=None
    ):
        """The layers of a decode step over `cache` (its positions already hold the new
        token's): each layer writes its new key and value with `write(chunks, new_bk1h,
        layer)` (layer: None for a group of one, else the scanned index), then reads chunks
        [0, read_chunks). Writing before reading lets XLA update the cache in place: a read of
        the old chunk unordered with the write makes it copy the chunk (in the engine, whose
        reads sit in conditionals, every response chunk twice a step)."""
        cfg = self.cfg
        x_b1d = self._embed(tokens_b[:, None])
        rope = rope_cos_sin(pos_b1, rope_inv_frequencies(cfg))
        # The masks depend on positions only: built once per step, shared by every layer.
        valid_chunks_bs = [
            attention_mask(pos_b1, p_bs, sliding_window=cfg.sliding_window)[:, 0, 0]
            for p_bs in cache.pos[:read_chunks]
        ]
        active = None if active_chunks is None else list(active_chunks)[:read_chunks]

        def layer(carry, layer_state, graphdef):
            x_b1d, k_chunks, v_chunks, i = carry

            def store(k_bk1h, v_bk1h):  # write layer i's new slots, then read layer i
                def read(chunks):
                    if i is None:
                        return chunks[:read_chunks]
                    return [jax.lax.dynamic_index_in_dim(c, i, keepdims=False)
                            for c in chunks[:read_chunks]]  # fmt: skip

                k_new = tuple(write(k_chunks, k_bk1h, i))
                v_new = tuple(write(v_chunks, v_bk1h, i))
                # Without the barrier XLA:CPU, which runs bf16 matmuls in float32, rewrites
                # convert(read(update(cache))) into an update of a float32 copy of the cache
                # (all layers' when scanned, in every layer: +19 GB per device in the
                # Qwen2.5-7B 8K plan).
                k_new, v_new = jax.lax.optimization_barrier((k_new, v_new))
                return read(k_new), read(v_new), (k_new, v_new)

            block = nnx.merge(graphdef, layer_state)
            x_b1d, (k_chunks, v_chunks) = block.decode(x_b1d, rope, valid_chunks_bs, store,
                                                       active)  # fmt: skip
            return (x_b1d, k_chunks, v_chunks, None if i is None else i + 1), None

        k_groups, v_groups = [], []
        for group, k_chunks, v_chunks in zip(groups, cache.k, cache.v, strict=True):
            graphdef, state = nnx.split(group)
            if k_chunks[0].ndim == 4:  # one layer, unrolled
                carry = (x_b1d, k_chunks, v_chunks, None)
                carry, _ = layer(carry, jax.tree.map(lambda w: w[0], state), graphdef)
            else:
                carry = (x_b1d, k_chunks, v_chunks, jnp.int32(0))
                body = functools.partial(layer, graphdef=graphdef)
                carry, _ = jax.lax.scan(body, carry, state)
            x_b1d, k_chunks, v_chunks, _ = carry
            k_groups.append(k_chunks)
            v_groups.append(v_chunks)
        logits_bv = self.logits(self.final_norm(x_b1d))[:, 0]
        return logits_bv, DecodeCache(tuple(k_groups), tuple(v_groups), cache.pos)

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        """Logits [batch, time, vocab] float32 of hidden states [batch, time, embed].

        The matmul runs in the hidden states' dtype and accumulates in float32, so bf16 compute
        rounds the logits once less; a tied embedding is contracted on its embed axis directly
        (no transposed copy of the table).
        """
        weight = self.embed[...] if self.cfg.tie_embeddings else self.lm_head[...]
        spec = "btd,vd->btv" if self.cfg.tie_embeddings else "btd,dv->btv"
        logits_btv = jnp.einsum(
            spec, hidden_btd, weight.astype(hidden_btd.dtype), preferred_element_type=jnp.float32
        )
        return constrain(logits_btv, ("batch", "length", "vocab"))

    def __call__(
        self,
        tokens_bt: jax.Array,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [batch, time, vocab] (float32) of tokens [batch, time]; arguments as
        `hidden_states`."""
        return self.logits(self.hidden_states(tokens_bt, positions_bt, segment_ids_bt))


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
    m = (t + pad) // chunk
    hidden_mbcd = hidden.reshape(b, m, chunk, d).swapaxes(0, 1)
    targets_mbc = targets.reshape(b, m, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args):
        h_bcd, y_bc = args
        logits = jnp.einsum(
            "bcd,dv->bcv", h_bcd, head_weight_dv.astype(h_bcd.dtype),
            preferred_element_type=jnp.float32,
        )  # fmt: skip
        logz = jax.nn.logsumexp(logits, axis=-1)
        logp = jnp.take_along_axis(logits, y_bc[..., None], axis=-1)[..., 0] - logz
        if not with_entropy:
            return logp, jnp.zeros_like(logp)
        probs = jax.nn.softmax(logits, axis=-1)
        entropy = logz - jnp.sum(probs * logits, axis=-1)
        return logp, entropy

    logp_mbc, ent_mbc = jax.lax.map(one_chunk, (hidden_mbcd, targets_mbc))
    logp_bt = logp_mbc.swapaxes(0, 1).reshape(b, -1)[:, :t]
    ent_bt = ent_mbc.swapaxes(0, 1).reshape(b, -1)[:, :t] if with_entropy else None
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
    hidden = model.hidden_states(tokens_bt, positions_bt, segment_ids_bt)
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
