"""Attention against a float64 NumPy recomputation (whole-sequence, query-chunked and the
decode step over cache chunks), the query-chunked path against the whole-sequence one (values,
gradients, the model's logits, the sampler, compiled memory), and the float32 logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zero_rl import sampler
from zero_rl.models import ModelConfig, create_model, token_logprobs
from zero_rl.models.layers import attend, attend_decode

CFG = ModelConfig(
    vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48
)


def _inputs(t=13, seed=0):
    rng = np.random.default_rng(seed)
    b, h, g, hd = 2, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, g, hd)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, g, hd)), jnp.float32)
    # Row 0: left padding of 3 then one document; row 1: two packed documents and a pad tail.
    pos = np.asarray(
        [[-1] * 3 + list(range(t - 3)), list(range(6)) + list(range(t - 8)) + [-1] * 2]
    )
    seg = np.asarray([[0] * 3 + [1] * (t - 3), [1] * 6 + [2] * (t - 8) + [0] * 2])
    return q, k, v, jnp.asarray(pos), jnp.asarray(seg)


def _reference(q, k, v, pos, seg, window):
    """Softmax attention written out in float64 with explicit loops over heads."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    pos, seg = np.asarray(pos), np.asarray(seg)
    b, t, h, hd = q.shape
    group = h // k.shape[2]
    out = np.zeros_like(q)
    for i in range(b):
        allowed = (pos[i][None, :] >= 0) & (pos[i][None, :] <= pos[i][:, None])
        allowed &= seg[i][:, None] == seg[i][None, :]
        if window is not None:
            allowed &= pos[i][:, None] - pos[i][None, :] < window
        for head in range(h):
            scores = q[i, :, head] @ k[i, :, head // group].T / np.sqrt(hd)
            scores = np.where(allowed, scores, -np.inf)
            rows = allowed.any(-1)  # rows with no key (padding) are never read downstream
            p = np.exp(scores[rows] - scores[rows].max(-1, keepdims=True))
            out[i, rows, head] = (p / p.sum(-1, keepdims=True)) @ v[i, :, head // group]
    return out, (pos >= 0)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("chunk", [0, 4, 5, 13, 32])
def test_attention_matches_float64_reference(window, chunk):
    q, k, v, pos, seg = _inputs()
    out = attend(q, k, v, pos, pos, q_segment_bt=seg, k_segment_bs=seg, sliding_window=window,
                 query_chunk=chunk)  # fmt: skip
    ref, valid = _reference(q, k, v, pos, seg, window)
    np.testing.assert_allclose(np.asarray(out)[valid], ref[valid], atol=1e-5)


@pytest.mark.parametrize("chunk", [4, 6])
def test_chunked_gradients_equal_whole_sequence_gradients(chunk):
    q, k, v, pos, seg = _inputs(t=11, seed=1)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)
    valid = (pos >= 0)[:, :, None, None]

    def loss(q, k, v, query_chunk):
        out = attend(q, k, v, pos, pos, q_segment_bt=seg, k_segment_bs=seg,
                     query_chunk=query_chunk)  # fmt: skip
        return jnp.sum(jnp.where(valid, out * weights, 0.0))

    whole = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, 0)
    chunked = jax.grad(loss, argnums=(0, 1, 2))(q, k, v, chunk)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_chunked_model_equals_whole_sequence_model_and_sampler():
    base = create_model(CFG.replace(sliding_window=5), seed=0)
    chunked = nnx.merge(
        nnx.graphdef(create_model(CFG.replace(sliding_window=5, attention="chunked",
                                              attention_chunk=4), seed=0)),
        nnx.state(base),
    )  # fmt: skip
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 50, size=(2, 15)))
    np.testing.assert_allclose(chunked(tokens), base(tokens), atol=1e-5)
    lp_base, _ = token_logprobs(base, tokens)
    lp_chunked, _ = token_logprobs(chunked, tokens)
    np.testing.assert_allclose(lp_chunked, lp_base, atol=1e-5)
    # Prefill with a cache chunks the prompt's queries over the cache's keys.
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    kwargs = dict(max_new_tokens=6, temperature=0.0, rng=jax.random.key(0))
    out_base = sampler.generate(base, prompts, **kwargs)
    out_chunked = sampler.generate(chunked, prompts, **kwargs)
    np.testing.assert_array_equal(out_chunked.tokens_bn, out_base.tokens_bn)
    np.testing.assert_allclose(out_chunked.logprobs_bn, out_base.logprobs_bn, atol=1e-5)


def test_chunked_attention_needs_less_memory_for_long_sequences():
    """Compiled forward + backward of a 1,024-token sequence: the scores of 128-query chunks
    replace the [batch, heads, 1024, 1024] block (16 MiB at these sizes)."""
    t = 1024
    shapes = [jax.ShapeDtypeStruct((1, t, 4, 8), jnp.float32)] + [
        jax.ShapeDtypeStruct((1, t, 2, 8), jnp.float32)
    ] * 2
    pos = jnp.arange(t)[None]

    def temp_bytes(query_chunk):
        def loss(q, k, v):
            return jnp.sum(attend(q, k, v, pos, pos, query_chunk=query_chunk) ** 2)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*shapes).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    whole, chunked = temp_bytes(0), temp_bytes(128)
    assert whole > 16 * 2**20
    assert chunked < whole / 4, (chunked, whole)


def test_bad_attention_settings_are_named():
    with pytest.raises(ValueError, match="attention='flash'"):
        CFG.replace(attention="flash")
    with pytest.raises(ValueError, match="attention_chunk=0"):
        CFG.replace(attention="chunked", attention_chunk=0)


def test_decode_attention_over_chunks_matches_float64_reference():
    """One query per row over three cache chunks with holes (empty, padding and future slots)
    against softmax attention over the concatenated slots in float64."""
    rng = np.random.default_rng(3)
    b, kv, g, hd, sizes = 3, 2, 3, 8, (5, 1, 4)
    q = rng.normal(size=(b, kv, g, hd))
    ks = [rng.normal(size=(b, kv, s, hd)) for s in sizes]
    vs = [rng.normal(size=(b, kv, s, hd)) for s in sizes]
    valid = [rng.random((b, s)) < 0.6 for s in sizes]
    valid[0][:, 0] = True  # every row reads at least one slot
    f32 = lambda xs: [jnp.asarray(x, jnp.float32) for x in xs]
    out = attend_decode(
        jnp.asarray(q, jnp.float32), f32(ks), f32(vs), [jnp.asarray(m) for m in valid]
    )
    k_all, v_all = np.concatenate(ks, axis=2), np.concatenate(vs, axis=2)
    m_all = np.concatenate(valid, axis=1)
    ref = np.zeros_like(q)
    for i in range(b):
        for h in range(kv):
            scores = q[i, h] @ k_all[i, h].T / np.sqrt(hd)  # [group, slots]
            scores = np.where(m_all[i], scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            ref[i, h] = (p / p.sum(-1, keepdims=True)) @ v_all[i, h]
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_bf16_logits_accumulate_in_float32(tie):
    """bf16 hidden states and head, float32 logits with float32 accumulation: equal to the
    float32 product of the bf16 values (rounding the logits to bf16 would miss by ~1e-2)."""
    model = create_model(CFG.replace(dtype="bfloat16", tie_embeddings=tie), seed=0)
    hidden = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 32)), jnp.bfloat16)
    logits = model.logits(hidden)
    assert logits.dtype == jnp.float32
    head = model.embed[...].T if tie else model.lm_head[...]
    ref = np.asarray(hidden, np.float64) @ np.asarray(head.astype(jnp.bfloat16), np.float64)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)
