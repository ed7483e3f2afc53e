"""Transformer layers: RMSNorm, RoPE, grouped-query attention with a KV cache, SwiGLU MLP.

Every parameter carries `logical_axes` metadata that `zero_rl.sharding` maps onto the mesh.
Weights are stored in `param_dtype` and cast to the compute dtype where used, so fp32 master
weights with bf16 matmuls need no second copy of the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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


def apply_rope(x_bthd: jax.Array, positions_bt: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotary embedding in the "rotate half" layout used by HF checkpoints."""
    angles_bth = positions_bt[..., None].astype(jnp.float32) * inv_freq
    cos = jnp.cos(angles_bth)[:, :, None, :]
    sin = jnp.sin(angles_bth)[:, :, None, :]
    x1, x2 = jnp.split(x_bthd.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_bthd.dtype)


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
    q_bthk: jax.Array,
    k_bsgk: jax.Array,
    v_bsgk: jax.Array,
    q_pos_bt: jax.Array,
    k_pos_bs: jax.Array,
    *,
    q_segment_bt: jax.Array | None = None,
    k_segment_bs: jax.Array | None = None,
    sliding_window: int | None = None,
    query_chunk: int = 0,
) -> jax.Array:
    """Masked grouped-query attention: out [batch, t, heads, head_dim].

    Keys/values [batch, s, kv_heads, head_dim] are shared by heads/kv_heads query heads
    (`jax.nn.dot_product_attention` broadcasts them, it never repeats K/V in memory). The mask
    is `attention_mask` of the positions and segments.

    With `query_chunk > 0` and t longer than it, the queries go through in chunks of that
    length, each under `jax.checkpoint`: only one [batch, heads, chunk, s] block of scores
    (and of mask) exists at a time, in the forward and in the backward pass, instead of
    [batch, heads, t, s]. That is what makes 8K-token responses trainable; it costs one
    recomputation of the scores in the backward pass.
    """

    def one_chunk(q_bchk, q_pos_bc, q_seg_bc):
        mask = attention_mask(
            q_pos_bc,
            k_pos_bs,
            q_segment_bt=q_seg_bc,
            k_segment_bs=k_segment_bs,
            sliding_window=sliding_window,
        )
        return jax.nn.dot_product_attention(q_bchk, k_bsgk, v_bsgk, mask=mask)

    b, t, h, hd = q_bthk.shape
    if query_chunk <= 0 or t <= query_chunk:
        return one_chunk(q_bthk, q_pos_bt, q_segment_bt)
    pad = (-t) % query_chunk
    n = (t + pad) // query_chunk
    if q_segment_bt is None:
        q_segment_bt = jnp.zeros_like(q_pos_bt)
        k_segment_bs = jnp.zeros_like(k_pos_bs)

    def chunks(x):  # [batch, t, ...] -> [n, batch, chunk, ...]; padded queries are dropped
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, n, query_chunk, *x.shape[2:]).swapaxes(0, 1)

    out_nbchk = jax.lax.map(
        lambda args: jax.checkpoint(one_chunk, prevent_cse=False)(*args),
        (chunks(q_bthk), chunks(q_pos_bt), chunks(q_segment_bt)),
    )
    return out_nbchk.swapaxes(0, 1).reshape(b, n * query_chunk, h, hd)[:, :t]


class Attention(nnx.Module):
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
        dt = self.cfg.compute_dtype
        y = jnp.einsum("btd,dhk->bthk", x_btd, getattr(self, name + "_proj")[...].astype(dt))
        if self.cfg.qkv_bias:
            y = y + getattr(self, name + "_bias")[...].astype(dt)
        return y

    def __call__(
        self,
        x_btd: jax.Array,
        positions_bt: jax.Array,
        inv_freq: jax.Array,
        *,
        segment_ids_bt: jax.Array | None = None,
        cache: tuple[jax.Array, jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | int = 0,
        layer: jax.Array | int = 0,
        attend_len: int | None = None,
    ):
        """Self-attention. Without a cache, keys are this call's own tokens.

        With `cache = (k_all, v_all, pos_bs)` (all layers' keys/values
        [layers, batch, cache_len, kv_heads, head_dim] and slot positions, already holding this
        call's positions), the new keys/values are written into slots
        [cache_index, cache_index + t) of `layer` and the queries attend over that layer's cache.
        Only the new slots are written, so a decode step never copies the cache. With
        `attend_len` (static), queries read only the first `attend_len` slots: the caller
        promises that the slots after them are empty.
        """
        cfg = self.cfg
        q = apply_rope(self._project(x_btd, "q"), positions_bt, inv_freq)
        k = apply_rope(self._project(x_btd, "k"), positions_bt, inv_freq)
        v = self._project(x_btd, "v")
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        if cache is None:
            keys, values, k_pos, k_seg = k, v, positions_bt, segment_ids_bt
            new_cache = None
        else:
            k_all, v_all, k_pos = cache
            start = (layer, 0, cache_index, 0, 0)
            k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
            v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
            b, length = k_pos.shape
            span = length if attend_len is None else attend_len
            sizes = (1, b, span, *k_all.shape[3:])
            keys = jax.lax.dynamic_slice(k_all, (layer, 0, 0, 0, 0), sizes)[0]
            values = jax.lax.dynamic_slice(v_all, (layer, 0, 0, 0, 0), sizes)[0]
            k_pos = k_pos[:, :span]
            new_cache, k_seg, segment_ids_bt = (k_all, v_all), None, None
        out_bthk = attend(
            q,
            keys.astype(q.dtype),
            values.astype(q.dtype),
            positions_bt,
            k_pos,
            q_segment_bt=segment_ids_bt,
            k_segment_bs=k_seg,
            sliding_window=cfg.sliding_window,
            query_chunk=cfg.attention_chunk if cfg.attention == "chunked" else 0,
        )
        out = jnp.einsum("bthk,hkd->btd", out_bthk, self.o_proj[...].astype(cfg.compute_dtype))
        return constrain(out, ("batch", "length", "act_embed")), new_cache


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, f, dt = cfg.embed_dim, cfg.mlp_dim, cfg.weight_dtype
        self.gate_proj = _param(rngs, (d, f), ("embed", "mlp"), dt)
        self.up_proj = _param(rngs, (d, f), ("embed", "mlp"), dt)
        self.down_proj = _param(rngs, (f, d), ("mlp", "embed"), dt)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        dt = self.cfg.compute_dtype
        gate = x_btd @ self.gate_proj[...].astype(dt)
        up = x_btd @ self.up_proj[...].astype(dt)
        hidden_btf = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return hidden_btf @ self.down_proj[...].astype(dt)


class Block(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_btd, positions_bt, inv_freq, **attn_kwargs):
        attn_out, new_cache = self.attn(
            self.input_norm(x_btd), positions_bt, inv_freq, **attn_kwargs
        )
        x_btd = x_btd + attn_out
        x_btd = x_btd + self.mlp(self.post_attn_norm(x_btd))
        return constrain(x_btd, ("batch", "length", "act_embed")), new_cache
