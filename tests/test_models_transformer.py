"""Transformer features against independent recomputations: packing, dtypes, remat, log-probs.

Structural claims (bf16 matmuls, remat, one scan over the layers, no full logits) are checked on
the jaxpr: tracing only, nothing compiled or allocated.
"""

import math
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
# jax.checkpoint's primitive (its name differs between jax versions).
_REMAT_PRIMITIVES = ("checkpoint", "remat2")


def _eqns(jaxpr):
    """Every equation of a (closed) jaxpr, recursing into scans, remat, pjit, cond branches."""
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    yield from _eqns(sub)


def _layer_scans(jaxpr, num_layers: int) -> list:
    return [
        e for e in _eqns(jaxpr) if e.primitive.name == "scan" and e.params["length"] == num_layers
    ]


def _logprobs_fn(cfg: ModelConfig, **kwargs):
    graphdef, _ = abstract_params(cfg)
    return lambda params, tokens_bt: token_logprobs(
        nnx.merge(graphdef, params), tokens_bt, **kwargs
    )


@pytest.fixture(scope="module")
def params():
    """CFG's float32 parameters (state of `create_model(CFG, seed=1)`)."""
    return nnx.state(create_model(CFG, seed=1))


def test_packed_documents_equal_separate_forward_passes(params):
    graphdef, _ = abstract_params(CFG)
    forward = jax.jit(lambda p, *args: nnx.merge(graphdef, p)(*args))
    doc_a = jnp.arange(1, 6)
    doc_b = jnp.arange(10, 17)
    packed = jnp.concatenate([doc_a, doc_b, jnp.zeros(3, jnp.int32)])[None]
    positions = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, -1, -1, -1]])
    segments = jnp.asarray([[1] * 5 + [2] * 7 + [0] * 3])
    logits = forward(params, packed, positions, segments)
    np.testing.assert_allclose(logits[0, :5], forward(params, doc_a[None])[0], atol=1e-5)
    np.testing.assert_allclose(logits[0, 5:12], forward(params, doc_b[None])[0], atol=1e-5)


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


def test_bf16_compute_with_fp32_params_runs_bf16_matmuls_close_to_fp32(params):
    tokens = jnp.arange(1, 21)[None] % 50
    cfg16 = CFG.replace(dtype="bfloat16")
    assert params["embed"][...].dtype == jnp.float32
    lp32 = jax.jit(_logprobs_fn(CFG))(params, tokens)[0]
    lp16 = jax.jit(_logprobs_fn(cfg16))(params, tokens)[0]
    # bf16 has 8 mantissa bits: the results must differ (or the dtype was ignored), but little.
    diff = float(jnp.abs(lp16 - lp32).max())
    assert 1e-4 < diff < 0.05, diff

    def bf16_dots(cfg):
        jaxpr = jax.make_jaxpr(_logprobs_fn(cfg))(params, tokens)
        dots = [e for e in _eqns(jaxpr) if e.primitive.name == "dot_general"]
        return sum(all(v.aval.dtype == jnp.bfloat16 for v in e.invars) for e in dots), jaxpr

    count16, jaxpr16 = bf16_dots(cfg16)
    # q, k, v, o, gate, up and down in the (scanned) block, and the LM head.
    assert count16 >= 8
    assert bf16_dots(CFG)[0] == 0
    # The residual stream between layers (the layer scan's carry) is bf16 too.
    (scan,) = _layer_scans(jaxpr16, CFG.num_layers)
    assert scan.outvars[0].aval.dtype == jnp.bfloat16


def _grads(cfg, params):
    loss = _logprobs_fn(cfg)
    tokens = jnp.arange(1, 13)[None]
    return jax.jit(jax.grad(lambda p: jnp.mean(loss(p, tokens)[0])))(params)


@pytest.fixture(scope="module")
def grads_without_remat(params):
    return _grads(CFG, params)


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_policies_change_memory_not_results(params, grads_without_remat, policy):
    remat = _grads(CFG.replace(remat=policy), params)
    for a, b in zip(jax.tree.leaves(grads_without_remat), jax.tree.leaves(remat)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _remat_in_layer_scan(cfg, tokens):
    """The remat equations inside the layer scan of the forward pass."""
    _, abstract = abstract_params(cfg)
    jaxpr = jax.make_jaxpr(_logprobs_fn(cfg))(abstract, tokens)
    (scan,) = _layer_scans(jaxpr, cfg.num_layers)
    return [e for e in _eqns(scan.params["jaxpr"]) if e.primitive.name in _REMAT_PRIMITIVES]


def _saved_for_backward(cfg, tokens) -> int:
    """Elements the forward layer scan of the gradient's jaxpr stacks for the backward pass."""
    _, abstract = abstract_params(cfg)
    loss = _logprobs_fn(cfg)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p, x: jnp.mean(loss(p, x)[0])))(abstract, tokens)
    forward = _layer_scans(jaxpr, cfg.num_layers)[0]  # the first one runs first
    stacked = forward.outvars[forward.params["num_carry"] :]
    return sum(math.prod(v.aval.shape) for v in stacked)


def test_remat_policy_reaches_the_layer_scan_and_cuts_saved_activations():
    cfg = CFG.replace(num_layers=3)
    tokens = jax.ShapeDtypeStruct((1, 12), jnp.int32)
    assert _remat_in_layer_scan(cfg, tokens) == []
    saveable = jax.checkpoint_policies
    policies = {
        "full": None,
        "dots_saveable": saveable.dots_saveable,
        "dots_with_no_batch_dims_saveable": saveable.dots_with_no_batch_dims_saveable,
    }
    for name, policy in policies.items():
        (remat,) = _remat_in_layer_scan(cfg.replace(remat=name), tokens)
        assert remat.params["policy"] is policy, name
    saved = {name: _saved_for_backward(cfg.replace(remat=name), tokens) for name in policies}
    saved["none"] = _saved_for_backward(cfg, tokens)
    # Full remat keeps only each layer's input [layers, batch, time, embed].
    assert saved["full"] == cfg.num_layers * 12 * cfg.embed_dim
    assert saved["full"] < saved["dots_with_no_batch_dims_saveable"] <= saved["dots_saveable"]
    assert saved["dots_saveable"] < saved["none"], saved


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


def test_token_logprobs_are_the_next_token_log_softmax_of_the_logits(params):
    """Entry [b, i] is log p(token i | tokens before it) from the logits at i - 1; [b, 0] is 0.
    Checked against a float64 log-softmax of `model(tokens)`, on a batch with two packed
    documents in one row and left padding in the other, with chunks that do not divide time."""
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 11)), jnp.int32)
    positions = jnp.asarray(
        [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5], [-1, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8]]
    )
    segments = jnp.asarray([[1] * 5 + [2] * 6, [0, 0] + [1] * 9])
    graphdef, _ = abstract_params(CFG)

    @jax.jit
    def run(p):
        model = nnx.merge(graphdef, p)
        logp, ent = token_logprobs(model, tokens, positions, segments, chunk_size=4,
                                   with_entropy=True)  # fmt: skip
        return model(tokens, positions, segments), logp, ent

    logits, logp, ent = (np.asarray(x, np.float64) for x in run(params))
    shifted = logits - logits.max(-1, keepdims=True)
    logp_all = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    want = np.zeros((2, 11))
    want[:, 1:] = np.take_along_axis(logp_all[:, :-1], np.asarray(tokens)[:, 1:, None], -1)[..., 0]
    want_entropy = np.zeros((2, 11))
    want_entropy[:, 1:] = -(np.exp(logp_all) * logp_all).sum(-1)[:, :-1]
    np.testing.assert_allclose(logp, want, atol=1e-5)
    np.testing.assert_allclose(ent, want_entropy, atol=1e-5)
    assert (logp[:, 0] == 0).all() and (ent[:, 0] == 0).all()


def _largest_with_axis(jaxpr, size: int) -> int:
    """Elements of the largest array in `jaxpr` that has an axis of length `size`."""
    avals = [v.aval for e in _eqns(jaxpr) for v in (*e.invars, *e.outvars) if hasattr(v, "aval")]
    return max(math.prod(a.shape) for a in avals if size in getattr(a, "shape", ()))


def test_chunked_token_logprobs_never_hold_full_logits():
    # A vocabulary size no other axis has, so every array with that axis is a logits-like one.
    cfg = CFG.replace(vocab_size=64, embed_dim=16, head_dim=4, mlp_dim=24)
    b, t, chunk = 2, 33, 5
    full = b * (t - 1) * cfg.vocab_size
    _, abstract = abstract_params(cfg)
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def largest(chunk_size):
        loss = _logprobs_fn(cfg, chunk_size=chunk_size, with_entropy=True)
        forward = jax.make_jaxpr(loss)(abstract, tokens)
        backward = jax.make_jaxpr(jax.grad(lambda p, x: jnp.sum(loss(p, x)[0])))(abstract, tokens)
        return _largest_with_axis(forward, 64), _largest_with_axis(backward, 64)

    # One [batch, chunk, vocab] block at a time, or the head weight [embed, vocab] itself.
    bound = max(b * chunk * cfg.vocab_size, cfg.embed_dim * cfg.vocab_size)
    assert bound < full
    assert max(largest(chunk)) <= bound
    # Unchunked, the full [batch, time - 1, vocab] logits do appear: the check can see them.
    assert min(largest(t)) >= full


def test_largest_preset_compiles_quickly_with_scanned_layers():
    """Qwen2.5-32B's forward, lowered and compiled from abstract params (nothing allocated)."""
    cfg = get_preset("qwen2.5-32b", dtype="bfloat16")
    graphdef, params = abstract_params(cfg)
    tokens = jax.ShapeDtypeStruct((1, 64), jnp.int32)

    def forward(p, x):
        return nnx.merge(graphdef, p)(x)

    # One scan over the 64 layers, and a program as long as a 2-layer model's: depth costs no
    # compile time.
    jaxpr = jax.make_jaxpr(forward)(params, tokens)
    assert len(_layer_scans(jaxpr, cfg.num_layers)) == 1
    graphdef2, params2 = abstract_params(cfg.replace(num_layers=2))
    jaxpr2 = jax.make_jaxpr(lambda p, x: nnx.merge(graphdef2, p)(x))(params2, tokens)
    assert len(list(_eqns(jaxpr))) == len(list(_eqns(jaxpr2)))
    start = time.perf_counter()
    jax.jit(forward).lower(params, tokens).compile()
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
