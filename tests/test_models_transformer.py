"""Transformer features against independent recomputations: packing, dtypes, remat, log-probs."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zero_rl.models import (
    ModelConfig,
    abstract_params,
    create_model,
    get_preset,
    logprobs_from_hidden,
    token_logprobs,
)
from zero_rl.models.layers import attention_mask, rope_inv_frequencies

CFG = ModelConfig(
    vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48
)


def test_packed_documents_equal_separate_forward_passes():
    model = create_model(CFG, seed=0)
    doc_a = jnp.arange(1, 6)
    doc_b = jnp.arange(10, 17)
    packed = jnp.concatenate([doc_a, doc_b, jnp.zeros(3, jnp.int32)])[None]
    positions = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, -1, -1, -1]])
    segments = jnp.asarray([[1] * 5 + [2] * 7 + [0] * 3])
    logits = model(packed, positions, segments)
    np.testing.assert_allclose(logits[0, :5], model(doc_a[None])[0], atol=1e-5)
    np.testing.assert_allclose(logits[0, 5:12], model(doc_b[None])[0], atol=1e-5)


def test_attention_mask_by_hand():
    q = jnp.asarray([[0, 1, 2, 3]])
    mask = attention_mask(q, q, sliding_window=2)[0, 0]
    expected = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    np.testing.assert_array_equal(mask, np.asarray(expected, bool))
    left_padded = jnp.asarray([[-1, 0, 1]])
    np.testing.assert_array_equal(
        attention_mask(left_padded, left_padded)[0, 0],
        [[False, False, False], [False, True, False], [False, True, True]],
    )


def test_llama3_rope_scaling_matches_reference_formula():
    cfg = get_preset("llama3.1-8b")
    inv = np.asarray(rope_inv_frequencies(cfg), np.float64)
    base = 1.0 / (500_000.0 ** (np.arange(0, 128, 2) / 128))
    expected = []
    for f in base:  # Meta's reference implementation, written out per frequency
        wavelen = 2 * np.pi / f
        if wavelen < 8192 / 4:
            expected.append(f)
        elif wavelen > 8192 / 1:
            expected.append(f / 8)
        else:
            smooth = (8192 / wavelen - 1) / (4 - 1)
            expected.append((1 - smooth) * f / 8 + smooth * f)
    np.testing.assert_allclose(inv, expected, rtol=1e-6)


def test_bf16_compute_with_fp32_params_is_close_to_fp32():
    model32 = create_model(CFG, seed=1)
    model16 = nnx.merge(
        nnx.graphdef(create_model(CFG.replace(dtype="bfloat16"), seed=1)), nnx.state(model32)
    )
    tokens = jnp.arange(1, 21)[None] % 50
    assert nnx.state(model16)["embed"][...].dtype == jnp.float32
    lp32, _ = token_logprobs(model32, tokens)
    lp16, _ = token_logprobs(model16, tokens)
    np.testing.assert_allclose(lp16, lp32, atol=0.05)


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_policies_change_memory_not_results(policy):
    base = create_model(CFG, seed=2)
    remat = nnx.merge(
        nnx.graphdef(create_model(CFG.replace(remat=policy), seed=2)), nnx.state(base)
    )
    tokens = jnp.arange(1, 13)[None]

    def loss(m):
        return jnp.mean(token_logprobs(m, tokens)[0])

    g1 = nnx.grad(loss)(base)
    g2 = nnx.grad(loss)(remat)
    for a, b in zip(jax.tree.leaves(nnx.state(g1)), jax.tree.leaves(nnx.state(g2))):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("t,chunk", [(7, 3), (8, 8), (5, 16)])
def test_chunked_logprobs_and_entropy_equal_full_softmax(t, chunk):
    rng = np.random.default_rng(t)
    hidden = jnp.asarray(rng.normal(size=(2, t, 6)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(6, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, size=(2, t)))

    def reference(h, w):
        logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        logp_all = logits - logz[..., None]
        logp = np.take_along_axis(logp_all, np.asarray(targets)[..., None], -1)[..., 0]
        return logp, -(np.exp(logp_all) * logp_all).sum(-1)

    logp, ent = logprobs_from_hidden(hidden, head, targets, chunk_size=chunk, with_entropy=True)
    ref_logp, ref_ent = reference(hidden, head)
    np.testing.assert_allclose(logp, ref_logp, atol=1e-5)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-5)
    grad = jax.grad(lambda w: logprobs_from_hidden(hidden, w, targets, chunk_size=chunk)[0].sum())
    full = jax.grad(
        lambda w: jnp.take_along_axis(jax.nn.log_softmax(hidden @ w), targets[..., None], -1).sum()
    )
    np.testing.assert_allclose(grad(head), full(head), atol=1e-4)


def test_largest_preset_compiles_quickly_with_scanned_layers():
    """Qwen2.5-32B's forward, lowered and compiled from abstract params (nothing allocated)."""
    cfg = get_preset("qwen2.5-32b", dtype="bfloat16")
    graphdef, params = abstract_params(cfg)
    tokens = jax.ShapeDtypeStruct((1, 64), jnp.int32)
    start = time.perf_counter()
    jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)).lower(params, tokens).compile()
    assert time.perf_counter() - start < 60


def test_separate_critic_has_its_own_trunk_and_does_not_train_the_embedding():
    cfg = CFG.replace(value_head=True, separate_critic=True)
    model = create_model(cfg, seed=3)
    graphdef, params = nnx.split(model)
    tokens = jnp.arange(1, 9)[None]

    def critic(p):
        return jnp.sum(nnx.merge(graphdef, p).critic_values(tokens) ** 2)

    params = jax.tree.map(lambda x: x + 0.01, params)  # non-zero value head
    grads = jax.grad(critic)(params)
    norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))  # noqa: E731
    assert norm(grads["critic_layers"]) > 0 and norm(grads["value_head"]) > 0
    assert norm(grads["layers"]) == 0 and norm(grads["embed"]) == 0
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
