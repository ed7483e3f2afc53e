"""Transformer layers: RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU MLP.

Every parameter carries `logical_axes` metadata that `zero_rl.sharding` maps onto the mesh.
Weights are stored in `param_dtype` and cast to the compute dtype where used, so fp32 master
weights with bf16 matmuls need no second copy of the model. Array names end in shape suffixes
(`x_btd`: [batch, time, embed]), whose letters `zero_rl.models` lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zero_rl.models.config import ModelConfig
from zero_rl.sharding import constrain

_INIT_STD = 0.02  # HF's `initializer_range` for every family covered here.


def _param(rngs: nnx.Rngs, shape, axes, dtype, init: str = "normal") -> nnx.Param:
    if init == "normal":
        value = _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.eps = cfg.rms_norm_eps
        self.scale = _param(rngs, (cfg.embed_dim,), ("embed",), cfg.weight_dtype, "ones")

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        # Normalise in fp32 and cast back, as the HF reference implementations do.
        x32 = x_btd.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32.astype(x_btd.dtype) * self.scale[...].astype(x_btd.dtype)).astype(x_btd.dtype)


def rope_inv_frequencies(cfg: ModelConfig) -> jax.Array:
    """Inverse frequencies [head_dim // 2], with Llama-3's scaling when configured."""
    exponents = jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta**exponents)
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated
    # (Llama 3.1 report; HF `_compute_llama3_parameters`).
    wavelen = 2 * jnp.pi / inv_freq
    low_freq_wavelen = s.original_max_position / s.low_freq_factor
    high_freq_wavelen = s.original_max_position / s.high_freq_factor
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    interpolated = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    return jnp.where(
        wavelen > low_freq_wavelen,
        inv_freq / s.factor,
        jnp.where(wavelen < high_freq_wavelen, inv_freq, interpolated),
    )


def rope_cos_sin(positions_bt: jax.Array, inv_freq_a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles, each [batch, time, 1, head_dim // 2] float32.

    Computed once per forward and shared by every layer (the angles depend on positions only).
    `inv_freq_a` is `rope_inv_frequencies(cfg)` [head_dim // 2].
    """
    angles_bta = positions_bt[..., None].astype(jnp.float32) * inv_freq_a
    return jnp.cos(angles_bta)[:, :, None, :], jnp.sin(angles_bta)[:, :, None, :]


def apply_rope(x_btnh: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary embedding of x [batch, time, heads, head_dim] in the "rotate half" layout of HF
    checkpoints; `rope` is `rope_cos_sin(positions_bt, inv_freq)`. Returns x's shape and dtype.
    """
    cos_bt1a, sin_bt1a = rope
    x1, x2 = jnp.split(x_btnh.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos_bt1a - x2 * sin_bt1a, x2 * cos_bt1a + x1 * sin_bt1a], -1)
    return rotated.astype(x_btnh.dtype)


def attention_mask(
    q_pos_bt: jax.Array,
    k_pos_bs: jax.Array,
    *,
    q_segment_bt: jax.Array | None = None,
    k_segment_bs: jax.Array | None = None,
    sliding_window: int | None = None,
) -> jax.Array:
    """Boolean mask [batch, 1, t, s]: causal by position, keys with position < 0 are empty.

    Positions, not indices, decide causality, so left padding (pad position -1) and packed
    documents (positions restart per document, segment ids differ) need no special cases.
    """
    q = q_pos_bt[:, :, None]
    k = k_pos_bs[:, None, :]
    mask = (k >= 0) & (k <= q)
    if sliding_window is not None:
        mask &= q - k < sliding_window
    if q_segment_bt is not None:
        mask &= q_segment_bt[:, :, None] == k_segment_bs[:, None, :]
    return mask[:, None, :, :]


def attend(
    q_btnh: jax.Array,
    k_bskh: jax.Array,
    v_bskh: jax.Array,
    q_pos_bt: jax.Array,
    k_pos_bs: jax.Array,
    *,
    q_segment_bt: jax.Array | None = None,
    k_segment_bs: jax.Array | None = None,
    sliding_window: int | None = None,
    query_chunk: int = 0,
) -> jax.Array:
    """Masked grouped-query attention: out [batch, t, heads, head_dim], q's shape.

    Keys/values [batch, s, kv_heads, head_dim] are shared by heads/kv_heads query heads
    (`jax.nn.dot_product_attention` broadcasts them, it never repeats K/V in memory). The mask
    is `attention_mask` of the positions and segments.

    With `query_chunk > 0` and t longer than it, the queries go through in chunks of that
    length, each under `jax.checkpoint`: only one [batch, heads, chunk, s] block of scores
    (and of mask) exists at a time, in the forward and in the backward pass, instead of
    [batch, heads, t, s]. That is what makes 8K-token responses trainable; it costs one
    recomputation of the scores in the backward pass.
    """

    def one_chunk(q_bcnh, q_pos_bc, q_seg_bc):
        mask = attention_mask(
            q_pos_bc,
            k_pos_bs,
            q_segment_bt=q_seg_bc,
            k_segment_bs=k_segment_bs,
            sliding_window=sliding_window,
        )
        return jax.nn.dot_product_attention(q_bcnh, k_bskh, v_bskh, mask=mask)

    b, t, n, h = q_btnh.shape
    if query_chunk <= 0 or t <= query_chunk:
        return one_chunk(q_btnh, q_pos_bt, q_segment_bt)
    pad = (-t) % query_chunk
    m = (t + pad) // query_chunk
    if q_segment_bt is None:
        q_segment_bt = jnp.zeros_like(q_pos_bt)
        k_segment_bs = jnp.zeros_like(k_pos_bs)

    def chunks(x):  # [batch, t, ...] -> [m, batch, chunk, ...]; padded queries are dropped
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, m, query_chunk, *x.shape[2:]).swapaxes(0, 1)

    out_mbcnh = jax.lax.map(
        lambda args: jax.checkpoint(one_chunk, prevent_cse=False)(*args),
        (chunks(q_btnh), chunks(q_pos_bt), chunks(q_segment_bt)),
    )
    return out_mbcnh.swapaxes(0, 1).reshape(b, m * query_chunk, n, h)[:, :t]


def attend_decode(
    q_bkgh: jax.Array,
    k_chunks_bksh: Sequence[jax.Array],
    v_chunks_bksh: Sequence[jax.Array],
    valid_chunks_bs: Sequence[jax.Array],
    active_chunks: Sequence[jax.Array | None] | None = None,
) -> jax.Array:
    """One decode query per row over a KV cache held in chunks of slots.

    q [batch, kv_heads, group, head_dim] (query head i * group + j reads kv head i), each
    chunk's keys/values [batch, kv_heads, slots, head_dim] and a boolean [batch, slots] of the
    slots this query may read. Returns [batch, kv_heads, group, head_dim].

    The chunks are read where they lie: both matmuls batch over (batch, kv_heads) and contract
    head_dim / slots, the layout the cache is stored in, so no copy or transpose of the cache is
    made, and a query-head group shares its kv head inside one matmul. Scores are kept as
    [batch, kv_heads, slots, group], the cache's slots as the matmul's long (left-hand) axis:
    as [.., group, slots], XLA:CPU's matmul packs the cache as its right-hand operand, which
    was 3-4x slower at 1K slots on the 20M bench shape (bench/kv_layout.py). Scores and softmax are
    float32, as in `jax.nn.dot_product_attention`.

    `active_chunks` (a traced bool per chunk, None = always) skips the chunks no row may read
    (the continuous engine's empty response chunks): their slots count as masked, and their
    keys and values are not read at all.
    """
    scale = 1.0 / np.sqrt(q_bkgh.shape[-1])
    f32 = jnp.float32
    # A finite floor, not -inf: a row with nothing to attend (a finished or empty row) gets
    # uniform weights instead of NaNs; its output is never used.
    floor = jnp.finfo(f32).min
    active_chunks = active_chunks or [None] * len(k_chunks_bksh)

    def when(active, compute, shape):  # compute(), or `floor`/0 filler if the chunk is idle
        if active is None:
            return compute()
        return jax.lax.cond(active, compute, lambda: jnp.full(shape, 0.0, f32))

    def scores(k_bksh, m_bs):
        s_bksg = jnp.einsum("bksh,bkgh->bksg", k_bksh, q_bkgh, preferred_element_type=f32)
        return jnp.where(m_bs[:, None, :, None], s_bksg * scale, floor)

    parts = []
    for k_bksh, m_bs, active in zip(k_chunks_bksh, valid_chunks_bs, active_chunks, strict=True):
        shape = (*k_bksh.shape[:3], q_bkgh.shape[2])
        part = when(active, lambda k=k_bksh, m=m_bs: scores(k, m), shape)
        parts.append(part if active is None else jnp.where(active, part, floor))
    probs_bksg = jax.nn.softmax(jnp.concatenate(parts, axis=2), axis=2)
    out_bkgh, offset = 0.0, 0
    for v_bksh, active in zip(v_chunks_bksh, active_chunks, strict=True):
        p_bksg = probs_bksg[:, :, offset : offset + v_bksh.shape[2]].astype(v_bksh.dtype)
        out_bkgh += when(
            active,
            lambda p=p_bksg, v=v_bksh: jnp.einsum("bksg,bksh->bkgh", p, v,
                                                  preferred_element_type=f32),
            q_bkgh.shape,
        )  # fmt: skip
        offset += v_bksh.shape[2]
    return out_bkgh.astype(q_bkgh.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings (and optional q/k/v biases)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, h, k, hd, dt = (
            cfg.embed_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.weight_dtype,
        )
        self.q_proj = _param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), dt)
        self.k_proj = _param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), dt)
        self.v_proj = _param(rngs, (d, k, hd), ("embed", "kv_heads", "head_dim"), dt)
        self.o_proj = _param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), dt)
        if cfg.qkv_bias:
            self.q_bias = _param(rngs, (h, hd), ("heads", "head_dim"), dt, "zeros")
            self.k_bias = _param(rngs, (k, hd), ("kv_heads", "head_dim"), dt, "zeros")
            self.v_bias = _param(rngs, (k, hd), ("kv_heads", "head_dim"), dt, "zeros")

    def _project(self, x_btd, name):
        """x [batch, time, embed] -> [batch, time, heads of `name`, head_dim]."""
        dt = self.cfg.compute_dtype
        # n: the heads of `name` (k for keys and values).
        y = jnp.einsum("btd,dnh->btnh", x_btd, getattr(self, name + "_proj")[...].astype(dt))
        if self.cfg.qkv_bias:
            y = y + getattr(self, name + "_bias")[...].astype(dt)
        return y

    def _qkv(self, x_btd, rope):
        q_btnh = apply_rope(self._project(x_btd, "q"), rope)
        k_btkh = apply_rope(self._project(x_btd, "k"), rope)
        return q_btnh, k_btkh, self._project(x_btd, "v")

    def _out(self, out_btnh):
        # One matmul over the merged (heads, head_dim) axis: both reshapes are free. Written as
        # an einsum over two contracted axes, XLA:CPU transposed both operands first.
        b, t, n, h = out_btnh.shape
        o_proj = self.o_proj[...].astype(self.cfg.compute_dtype).reshape(n * h, -1)
        out_btd = out_btnh.reshape(b, t, n * h) @ o_proj
        return constrain(out_btd, ("batch", "length", "act_embed"))

    def __call__(
        self,
        x_btd: jax.Array,
        positions_bt: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        *,
        segment_ids_bt: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Self-attention of x [batch, time, embed] -> ([batch, time, embed], keys/values).

        `positions_bt` [batch, time] (-1 on padding) decide what attends to what (see
        `attention_mask`); `rope` is `rope_cos_sin(positions_bt, ...)`.

        The keys are this call's own tokens, and the second output is their keys and values
        [batch, time, kv_heads, head_dim] (the sampler's prefill keeps them as its cache;
        decoding over a cache is `decode`).
        """
        cfg = self.cfg
        q_btnh, k_btkh, v_btkh = self._qkv(x_btd, rope)
        q_btnh = constrain(q_btnh, ("batch", "length", "heads", "head_dim"))
        out_btnh = attend(
            q_btnh,
            k_btkh.astype(q_btnh.dtype),
            v_btkh.astype(q_btnh.dtype),
            positions_bt,
            positions_bt,
            q_segment_bt=segment_ids_bt,
            k_segment_bs=segment_ids_bt,
            sliding_window=cfg.sliding_window,
            query_chunk=cfg.attention_chunk if cfg.attention == "chunked" else 0,
        )
        return self._out(out_btnh), (k_btkh, v_btkh)

    def decode(
        self,
        x_b1d: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        valid_chunks_bs: Sequence[jax.Array],
        store: Callable[[jax.Array, jax.Array], tuple[Sequence, Sequence, Any]],
        active_chunks: Sequence[jax.Array | None] | None = None,
    ) -> tuple[jax.Array, Any]:
        """One decode step of x [batch, 1, embed] over a KV cache held in chunks.

        `store(k_bk1h, v_bk1h)` puts the new token's key and value [batch, kv_heads, 1,
        head_dim] into the cache and returns the key chunks and value chunks to attend over
        ([batch, kv_heads, slots, head_dim] each, `valid_chunks_bs` saying which slots) and the
        caller's updated cache, which this returns with the output [batch, 1, embed]. Writing
        before reading lets XLA update the cache in place: a read of the old chunk unordered
        with the write would make it copy the chunk.
        """
        cfg = self.cfg
        b, kv, hd = x_b1d.shape[0], cfg.num_kv_heads, cfg.head_dim
        q_b1nh, k_b1kh, v_b1kh = self._qkv(x_b1d, rope)
        # [b, 1, kv, hd] -> [b, kv, 1, hd] is a free reshape with one time step; so is
        # [b, 1, heads, hd] -> [b, kv, group, hd], heads being kv * group in kv-major order
        # (the grouping of HF and `jax.nn.dot_product_attention`).
        k_chunks, v_chunks, cache = store(
            k_b1kh.reshape(b, kv, 1, hd), v_b1kh.reshape(b, kv, 1, hd)
        )
        dt = q_b1nh.dtype
        out_bkgh = attend_decode(
            q_b1nh.reshape(b, kv, cfg.num_heads // kv, hd),
            [c.astype(dt) for c in k_chunks],
            [c.astype(dt) for c in v_chunks],
            valid_chunks_bs,
            active_chunks,
        )
        return self._out(out_bkgh.reshape(b, 1, cfg.num_heads, hd)), cache


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, f, dt = cfg.embed_dim, cfg.mlp_dim, cfg.weight_dtype
        self.gate_proj = _param(rngs, (d, f), ("embed", "mlp"), dt)
        self.up_proj = _param(rngs, (d, f), ("embed", "mlp"), dt)
        self.down_proj = _param(rngs, (f, d), ("mlp", "embed"), dt)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        """[batch, time, embed] -> [batch, time, embed]."""
        dt = self.cfg.compute_dtype
        gate_btf = x_btd @ self.gate_proj[...].astype(dt)
        up_btf = x_btd @ self.up_proj[...].astype(dt)
        hidden_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("batch", "length", "mlp"))
        return hidden_btf @ self.down_proj[...].astype(dt)


class Block(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_btd, positions_bt, rope, **attn_kwargs):
        """x [batch, time, embed] -> (x, keys/values); arguments as `Attention.__call__`."""
        attn_btd, new_cache = self.attn(self.input_norm(x_btd), positions_bt, rope, **attn_kwargs)
        return self._mlp_residual(x_btd + attn_btd), new_cache

    def decode(self, x_b1d, rope, valid_chunks_bs, store, active_chunks=None):
        """One decode step: x [batch, 1, embed] -> (x, cache); see `Attention.decode`."""
        attn_b1d, cache = self.attn.decode(
            self.input_norm(x_b1d), rope, valid_chunks_bs, store, active_chunks
        )
        return self._mlp_residual(x_b1d + attn_b1d), cache

    def _mlp_residual(self, x_btd):
        x_btd = x_btd + self.mlp(self.post_attn_norm(x_btd))
        return constrain(x_btd, ("batch", "length", "act_embed"))
