"""The sampler against a full-forward recomputation, NumPy truncation references, and a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from zero_rl import sampler, sharding
from zero_rl.models import ModelConfig, create_model, positions_from_mask, token_logprobs

CFG = ModelConfig(
    vocab_size=61,
    embed_dim=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    qkv_bias=True,
)
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17], [20]]
BUCKETS = (8, 16)


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=0)


@jax.jit
def _last_logits(graphdef, params, tokens_bt):
    return nnx.merge(graphdef, params)(tokens_bt)[:, -1]


def _greedy_reference(model, prompt, n):
    graphdef, params = nnx.split(model)
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(jnp.argmax(_last_logits(graphdef, params, jnp.asarray([seq]))[0])))
    return seq[len(prompt) :]


@pytest.fixture(params=["unrolled", "scanned"])
def layer_loop(request, monkeypatch):
    """The decode's layer loop both ways: unrolled (what CPU runs) and scanned (accelerators)."""
    monkeypatch.setattr(sampler, "_unroll_layers", lambda params: request.param == "unrolled")
    return request.param


# The scanned loop on the case that has it all (a window and segments); the log-prob test below
# runs both loops.
@pytest.mark.parametrize(
    "window,segments,layer_loop",
    [(None, 1, "unrolled"), (4, 1, "unrolled"), (4, 3, "unrolled"), (4, 3, "scanned")],
    indirect=["layer_loop"],
)
def test_greedy_equals_stepwise_argmax_of_full_forward(window, segments, layer_loop):
    model = create_model(CFG.replace(sliding_window=window), seed=1)
    out = sampler.generate(model, PROMPTS, max_new_tokens=7, temperature=0,
                           prompt_buckets=BUCKETS, decode_segments=segments)  # fmt: skip
    for i, prompt in enumerate(PROMPTS):
        np.testing.assert_array_equal(out.tokens_bn[i], _greedy_reference(model, prompt, 7))
    assert out.lengths_b.tolist() == [7] * len(PROMPTS)
    assert out.finish_reasons() == ["length"] * len(PROMPTS)


def test_logprobs_equal_teacher_forced_training_logprobs(model, layer_loop):
    out = sampler.generate(
        model,
        PROMPTS,
        max_new_tokens=9,
        temperature=0.7,
        top_k=20,
        rng=jax.random.key(3),
        prompt_buckets=BUCKETS,
    )
    for i, prompt in enumerate(PROMPTS):
        full = jnp.asarray([list(prompt) + out.tokens_bn[i].tolist()])
        logp, _ = token_logprobs(model, full)
        # The sampler's log-probs are under the policy at temperature 1, not the sampling one.
        np.testing.assert_allclose(out.logprobs_bn[i], logp[0, len(prompt) :], atol=2e-5)


def test_left_padding_and_batch_composition_do_not_change_outputs(model):
    together = sampler.generate(
        model, PROMPTS, max_new_tokens=6, temperature=0, prompt_buckets=BUCKETS
    )
    assert sampler.pad_prompts(PROMPTS, pad_id=0, prompt_buckets=BUCKETS)[0].shape[1] == 16
    for i, prompt in enumerate(PROMPTS):
        # Alone, each prompt is padded to 32 columns (16 more than in the batch): different
        # left padding and different cache slots for every token.
        alone = sampler.generate(
            model, [prompt], max_new_tokens=6, temperature=0, prompt_buckets=(32,)
        )
        np.testing.assert_array_equal(alone.tokens_bn[0], together.tokens_bn[i])
        np.testing.assert_allclose(alone.logprobs_bn[0], together.logprobs_bn[i], atol=1e-5)


def test_stop_tokens_end_responses_and_pad_after(model):
    greedy = sampler.generate(
        model, PROMPTS, max_new_tokens=8, temperature=0, prompt_buckets=BUCKETS
    )
    stop = int(greedy.tokens_bn[0, 2])  # make the first prompt's third token a stop token
    out = sampler.generate(
        model,
        PROMPTS,
        max_new_tokens=8,
        temperature=0,
        stop_token_ids=[stop],
        pad_id=60,
        prompt_buckets=BUCKETS,
    )
    for i in range(len(PROMPTS)):
        row = greedy.tokens_bn[i].tolist()
        expected_len = row.index(stop) + 1 if stop in row else 8
        assert out.lengths_b[i] == expected_len
        assert bool(out.stopped_b[i]) == (stop in row)
        np.testing.assert_array_equal(out.tokens_bn[i, :expected_len], row[:expected_len])
        assert (out.tokens_bn[i, expected_len:] == 60).all()
        assert (out.logprobs_bn[i, expected_len:] == 0).all()
    assert out.finish_reasons()[0] == "stop"


def test_empty_rows_are_done_at_once_and_the_loop_stops_early(model):
    """A row of all -1 positions (what batch_multiple adds) is all padding with length 0, and
    does not keep the decode loop running: it stops after the longest real response."""
    n, stops = 12, list(range(1, 31))  # half the vocabulary stops: every response is short
    tokens, positions = sampler.pad_prompts(
        PROMPTS[:3], pad_id=0, prompt_buckets=BUCKETS, batch_multiple=4
    )
    assert (positions[3] == -1).all()
    kwargs = dict(max_new_tokens=n, temperature=0, stop_token_ids=stops, pad_id=60)
    out = sampler.generate_padded(model, tokens, positions, **kwargs)
    assert out.lengths_b[3] == 0 and not out.stopped_b[3]
    assert (out.tokens_bn[3] == 60).all() and (out.logprobs_bn[3] == 0).all()
    longest = int(np.max(out.lengths_b))
    assert 0 < longest < n and out.stopped_b[:3].all()
    assert out.decode_steps_b.tolist() == [longest] * 4
    # The real rows are what they are without the empty row.
    alone = sampler.generate(model, PROMPTS[:3], prompt_buckets=BUCKETS, **kwargs)
    np.testing.assert_array_equal(alone.tokens_bn, out.tokens_bn[:3])
    np.testing.assert_array_equal(alone.lengths_b, out.lengths_b[:3])


def test_decode_steps_are_the_longest_response(model):
    greedy = sampler.generate(model, PROMPTS, max_new_tokens=8, temperature=0,
                              prompt_buckets=BUCKETS)  # fmt: skip
    assert greedy.decode_steps_b.tolist() == [8] * len(PROMPTS)  # no stop token: the cap
    sampled = sampler.generate(
        model, PROMPTS, max_new_tokens=20, rng=jax.random.key(2), num_samples=3,
        stop_token_ids=list(range(1, 21)), prompt_buckets=BUCKETS,
    )  # fmt: skip
    longest = int(np.max(sampled.lengths_b))
    assert longest < 20 and sampled.decode_steps_b.tolist() == [longest] * 12
    # In calls of two prompts each call stops at its own longest response.
    split = sampler.generate(
        model, PROMPTS, max_new_tokens=20, rng=jax.random.key(2), num_samples=3,
        stop_token_ids=list(range(1, 21)), prompt_buckets=BUCKETS, prompts_per_call=2,
    )  # fmt: skip
    for call in range(2):
        rows = np.concatenate([np.arange(3 * p, 3 * p + 3) for p in (call, call + 2)])
        assert (split.decode_steps_b[rows] == np.max(split.lengths_b[rows])).all()


@pytest.mark.parametrize("segments", [2, 3, 20])
def test_decode_segments_change_no_output(model, segments):
    """Segmented decode reads only the filled part of the cache; sampled tokens (same keys),
    log-probs, lengths and stops equal the one-loop decode's, with left padding and stops."""
    # A sixth of the vocabulary stops a response: some rows stop early, some run to the cap.
    kwargs = dict(max_new_tokens=9, temperature=1.0, rng=jax.random.key(1), num_samples=2,
                  stop_token_ids=list(range(1, 11)), prompt_buckets=BUCKETS)  # fmt: skip
    one = sampler.generate(model, PROMPTS, **kwargs)
    split = sampler.generate(model, PROMPTS, decode_segments=segments, **kwargs)
    np.testing.assert_array_equal(split.tokens_bn, one.tokens_bn)
    np.testing.assert_array_equal(split.lengths_b, one.lengths_b)
    np.testing.assert_array_equal(split.stopped_b, one.stopped_b)
    np.testing.assert_allclose(split.logprobs_bn, one.logprobs_bn, atol=1e-5)
    assert 0 < int(np.sum(one.stopped_b)) < len(one.stopped_b)  # noqa: SIM300


def _numpy_truncate(logits, top_k, top_p):
    out = logits.copy()
    for row in out:
        if top_k:
            row[row < np.sort(row)[::-1][top_k - 1]] = -np.inf
        if top_p < 1:
            order = np.argsort(-row, kind="stable")
            probs = np.exp(row[order] - row[order].max())
            probs /= probs.sum()
            keep = np.zeros(len(row), bool)
            mass = 0.0
            for idx, prob in zip(order, probs):
                keep[idx] = True
                mass += prob
                if mass >= top_p:
                    break
            row[~keep] = -np.inf
    return out


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.8), (0, 0.3), (7, 0.9), (1, 1.0)])
def test_truncation_matches_numpy_reference(top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32) * 2
    got = np.asarray(sampler.truncate_logits(jnp.asarray(logits), top_k=top_k, top_p=top_p))
    expected = _numpy_truncate(logits.astype(np.float64), top_k, top_p)
    np.testing.assert_array_equal(got > -1e30, np.isfinite(expected))
    np.testing.assert_allclose(got[np.isfinite(expected)], logits[np.isfinite(expected)])


def _chi_square_p_value(counts, probs):
    """Pearson's test of counts [vocab] against probabilities [vocab]: 0 if any count falls
    where the probability is 0; bins expecting fewer than 5 draws are pooled."""
    if counts[probs == 0].sum():
        return 0.0
    expected = probs * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big & (probs > 0)].sum())
    exp = np.append(expected[big], expected[~big & (probs > 0)].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    return float(scipy.stats.chi2.sf(np.sum((obs - exp) ** 2 / exp), len(exp) - 1))


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.6, 0, 0.8), (1.5, 6, 1.0), (0.8, 9, 0.9)])
def test_sampled_frequencies_match_the_truncated_tempered_softmax(temperature, top_k, top_p):
    """First tokens of 4,000 samples of one prompt against softmax(logits / T) cut by top-k,
    then top-p, in float64 NumPy from the full forward's logits."""
    model = create_model(CFG, seed=2)
    # Random weights give near-uniform logits: a larger head spreads them, so that temperature
    # and truncation reshape the distribution (checked below against T = 1).
    model.lm_head[...] = model.lm_head[...] * 8
    prompt, n = PROMPTS[2], 4000
    out = sampler.generate(
        model, [prompt], max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p,
        num_samples=n, rng=jax.random.key(7), prompt_buckets=BUCKETS,
    )  # fmt: skip
    counts = np.bincount(np.asarray(out.tokens_bn[:, 0]), minlength=CFG.vocab_size)
    logits = np.asarray(model(jnp.asarray([prompt]))[0, -1], np.float64)

    def probs(t):
        cut = _numpy_truncate(logits[None] / t, top_k, top_p)[0]
        p = np.exp(cut - cut.max())
        return p / p.sum()

    expected = probs(temperature)
    assert 2 < np.sum(expected > 0) < CFG.vocab_size  # the truncation is active
    assert _chi_square_p_value(counts, expected) > 1e-3
    # The test has power: the same draws reject the untempered distribution.
    assert _chi_square_p_value(counts, probs(1.0)) < 1e-6


def test_draw_categorical_inverts_the_cdf_of_blocks_then_tokens():
    """Hand-computed: probabilities .1 .2 .3 .4 in blocks of 2 have block masses .3 .7."""
    logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.3, 0.4]] * 3))
    uniforms = jnp.asarray([[0.5, 0.5], [0.29, 0.99], [0.29, 0.2]])
    # (.5 -> block 1, .5 of [.3, .4] -> token 3); (.29 -> block 0, .99 -> token 1); (.2 -> 0)
    tokens = sampler.draw_categorical(logits, uniforms, block=2)
    assert np.asarray(tokens).tolist() == [3, 1, 0]


def test_draw_categorical_never_draws_a_zero_probability_token():
    """u = 0 and u just below 1 land on the first and last tokens of nonzero mass, also when
    whole blocks are empty and the vocab is not a multiple of the block."""
    floor = jnp.finfo(jnp.float32).min
    logits = jnp.full((2, 10), floor).at[:, 3].set(0.0).at[:, 6].set(1.0)
    below_one = np.nextafter(np.float32(1), np.float32(0))
    uniforms = jnp.asarray([[0.0, 0.0], [below_one, below_one]])
    tokens = sampler.draw_categorical(logits, uniforms, block=4)
    assert np.asarray(tokens).tolist() == [3, 6]


def test_draw_categorical_frequencies_match_float64_softmax():
    """20,000 draws over a 300-token vocab (blocks of 128, the last one padded) with a peaked,
    partly truncated distribution, against the float64 softmax."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=300) * 2.5
    logits[rng.choice(300, 40, replace=False)] = np.finfo(np.float32).min
    n = 20_000
    uniforms = jax.random.uniform(jax.random.key(3), (n, 2))
    logits_nv = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, 300))
    tokens = np.asarray(jax.jit(sampler.draw_categorical)(logits_nv, uniforms))
    counts = np.bincount(tokens, minlength=300)
    probs = np.where(logits > -1e30, np.exp(logits - logits.max()), 0.0)
    probs /= probs.sum()
    assert _chi_square_p_value(counts, probs) > 1e-3
    flat = np.full(300, 1 / 300)  # the test has power
    assert _chi_square_p_value(counts, flat) < 1e-6


def test_sampled_tokens_stay_inside_the_truncated_set(model):
    out = sampler.generate(
        model, PROMPTS, max_new_tokens=5, top_k=3, rng=jax.random.key(0), prompt_buckets=BUCKETS
    )
    for i, prompt in enumerate(PROMPTS):
        seq = list(prompt) + out.tokens_bn[i].tolist()
        logits = model(jnp.asarray([seq]))[0]
        for s in range(5):
            top3 = np.argsort(-np.asarray(logits[len(prompt) - 1 + s]))[:3]
            assert out.tokens_bn[i, s] in top3


def test_group_samples_share_prefill_and_differ(model):
    out = sampler.generate(
        model,
        PROMPTS[:2],
        max_new_tokens=6,
        num_samples=4,
        rng=jax.random.key(5),
        prompt_buckets=BUCKETS,
    )
    assert out.tokens_bn.shape == (8, 6)
    for i, prompt in enumerate(PROMPTS[:2]):
        rows = out.tokens_bn[4 * i : 4 * i + 4]
        assert len({tuple(r.tolist()) for r in rows}) > 1
        for r in range(4):
            full = jnp.asarray([list(prompt) + rows[r].tolist()])
            logp, _ = token_logprobs(model, full)
            np.testing.assert_allclose(
                out.logprobs_bn[4 * i + r], logp[0, len(prompt) :], atol=2e-5
            )


def test_group_samples_share_one_prefill(model):
    """XLA's FLOP count of the compiled prefill: a group of 4 samples per prompt costs what one
    sample does (the prompt runs once, its cache is repeated), while 4x the prompts cost 4x."""
    graphdef, params = nnx.split(model)

    def prefill_flops(prompts, num_samples):
        static = sampler._Static(
            num_samples=num_samples, max_new_tokens=4, greedy=True, top_k=0, top_p=1.0,
            stop_token_ids=(), pad_id=0, cache_dtype=None,
        )  # fmt: skip
        tokens = jnp.zeros((prompts, 16), jnp.int32)
        lowered = sampler.prefill_jit.lower(graphdef, params, tokens, tokens, static=static)
        cost = lowered.compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    one = prefill_flops(2, 1)
    assert prefill_flops(2, 4) == pytest.approx(one, rel=0.02)
    assert prefill_flops(8, 1) == pytest.approx(4 * one, rel=0.1)


def test_no_recompilation_within_a_bucket(model):
    rng = np.random.default_rng(0)
    sampler.generate(
        model, [[1, 2]] * 3, max_new_tokens=4, prompt_buckets=BUCKETS, batch_multiple=4
    )
    sizes = (sampler.prefill_jit._cache_size(), sampler.decode_jit._cache_size())
    for trial in range(4):
        prompts = [rng.integers(1, 60, size=rng.integers(1, 9)).tolist() for _ in range(3)]
        sampler.generate(
            model,
            prompts,
            max_new_tokens=4,
            temperature=0.5 + trial / 10,
            rng=jax.random.key(trial),
            prompt_buckets=BUCKETS,
            batch_multiple=4,
        )
    assert (sampler.prefill_jit._cache_size(), sampler.decode_jit._cache_size()) == sizes


@pytest.mark.parametrize(
    "axes", [{"fsdp": 8}, {"fsdp": 4, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}]
)
def test_sharded_greedy_equals_single_device(model, axes):
    mesh = sharding.make_mesh(axes)
    sharded = create_model(CFG, seed=0, mesh=mesh)
    prompts = PROMPTS * 2
    batch = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    with sharding.activation_sharding(mesh):
        out = sampler.generate(
            sharded,
            prompts,
            max_new_tokens=6,
            temperature=0,
            prompt_buckets=BUCKETS,
            batch_multiple=8,
            input_sharding=batch,
        )
    ref = sampler.generate(model, prompts, max_new_tokens=6, temperature=0, prompt_buckets=BUCKETS)
    np.testing.assert_array_equal(out.tokens_bn, ref.tokens_bn)
    np.testing.assert_allclose(out.logprobs_bn, ref.logprobs_bn, atol=1e-5)


@pytest.mark.parametrize("prompts_per_call", [1, 2])
def test_sampling_in_calls_keeps_greedy_outputs_and_row_order(model, prompts_per_call):
    kwargs = dict(max_new_tokens=5, temperature=0, num_samples=2, prompt_buckets=BUCKETS)
    whole = sampler.generate(model, PROMPTS, **kwargs)
    split = sampler.generate(model, PROMPTS, prompts_per_call=prompts_per_call, **kwargs)
    for a, b in zip(whole, split):
        np.testing.assert_allclose(b, a, atol=1e-6)


def test_sampled_calls_draw_with_their_own_keys(model):
    """Call i samples prompts i, i + 2 with fold_in(rng, i); outputs come back in prompt order."""
    tokens, positions = sampler.pad_prompts(PROMPTS, pad_id=0, prompt_buckets=BUCKETS)
    rng = jax.random.key(3)
    kwargs = dict(max_new_tokens=5, num_samples=3, temperature=1.0)
    out = sampler.generate_padded(model, tokens, positions, rng=rng, prompts_per_call=2, **kwargs)
    assert out.tokens_bn.shape == (12, 5)
    for call in range(2):
        alone = sampler.generate_padded(
            model, tokens[call::2], positions[call::2], rng=jax.random.fold_in(rng, call), **kwargs
        )
        for j, prompt in enumerate(range(call, 4, 2)):
            rows = slice(3 * prompt, 3 * prompt + 3)
            np.testing.assert_array_equal(out.tokens_bn[rows], alone.tokens_bn[3 * j : 3 * j + 3])
            np.testing.assert_allclose(
                out.logprobs_bn[rows], alone.logprobs_bn[3 * j : 3 * j + 3], atol=1e-6
            )


def test_sharded_sampling_in_calls_equals_single_device(model):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = create_model(CFG, seed=0, mesh=mesh)
    prompts = PROMPTS * 2
    batch = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    kwargs = dict(max_new_tokens=4, temperature=0, prompt_buckets=BUCKETS)
    with sharding.activation_sharding(mesh):
        out = sampler.generate(
            sharded, prompts, input_sharding=batch, prompts_per_call=4, num_samples=2, **kwargs
        )
    ref = sampler.generate(model, prompts, num_samples=2, **kwargs)
    np.testing.assert_array_equal(out.tokens_bn, ref.tokens_bn)
    np.testing.assert_allclose(out.logprobs_bn, ref.logprobs_bn, atol=1e-5)


def test_errors_name_the_problem(model):
    with pytest.raises(ValueError, match="decode_segments must be >= 1, got 0"):
        sampler.generate(model, PROMPTS, max_new_tokens=2, decode_segments=0)
    with pytest.raises(ValueError, match="prompts_per_call=3 must divide the 4 prompt rows"):
        sampler.generate(model, PROMPTS, max_new_tokens=2, prompts_per_call=3)
    with pytest.raises(ValueError, match="exceeds the largest bucket 8"):
        sampler.generate(model, [list(range(1, 12))], max_new_tokens=2, prompt_buckets=(8,))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampler.generate(model, [[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        sampler.generate(model, [[1]], max_new_tokens=2, top_p=0)
    with pytest.raises(ValueError, match="top_k must be >= 0 .0 = off., got -1"):
        sampler.generate(model, [[1]], max_new_tokens=2, top_k=-1)
    with pytest.raises(ValueError, match="top_k=62 exceeds the vocabulary size 61"):
        sampler.generate(model, [[1]], max_new_tokens=2, top_k=62)


def test_positions_from_mask_left_and_right_padding():
    valid = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(
        positions_from_mask(valid), [[-1, -1, 0, 1, 2], [0, 1, 2, -1, -1]]
    )


def test_bf16_compute_with_fp32_weights_matches_teacher_forcing():
    """The sampler casts fp32 master weights to bf16 once; the training forward casts at each
    use. Both must see the same numbers."""
    model = create_model(CFG.replace(dtype="bfloat16"), seed=4)
    out = sampler.generate(model, PROMPTS, max_new_tokens=6, temperature=0, prompt_buckets=BUCKETS)
    for i, prompt in enumerate(PROMPTS):
        full = jnp.asarray([list(prompt) + out.tokens_bn[i].tolist()])
        logp, _ = token_logprobs(model, full)
        np.testing.assert_allclose(out.logprobs_bn[i], logp[0, len(prompt) :], atol=0.02)
