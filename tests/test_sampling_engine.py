"""The continuous-batching engine (`zero_rl.sampling.generate`, engine="continuous") against the
static sampler, a full-forward recomputation, HF transformers, NumPy truncation references and
a mesh; its per-row budgets, utilisation statistics, compile count and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zero_rl import sampler, sharding
from zero_rl.models import ModelConfig, create_model, param_shardings, to_hf, token_logprobs
from zero_rl.sampling import SamplingOptions, engine, generate, generate_padded

# The static sampler's NumPy reference of top-k / top-p (a test-module import, as elsewhere).
from test_sampler import _chi_square_p_value, _numpy_truncate  # isort: skip

CFG = ModelConfig(
    vocab_size=61,
    embed_dim=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    qkv_bias=True,
    hf_architecture="Qwen2ForCausalLM",  # q/k/v biases: exportable as Qwen2 for the HF test
)
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17], [20]]
P = 16  # max_prompt_len; every prompt here pads to this one bucket
N = 8  # max_new_tokens of the greedy cases
PAD = 60  # a pad id distinct from 0, so that "pad after the end" is visible
WIDTH = 48  # the reference forward's fixed sequence width (prompt + response, right-padded)
REF_ROWS = 16  # ... and its fixed batch: one compile for every reference call


@pytest.fixture(scope="module")
def model():
    return create_model(CFG, seed=0)


@pytest.fixture(scope="module")
def sharp():
    """Random weights give near-uniform logits: a larger head spreads them, so that temperature
    and truncation reshape the distribution."""
    m = create_model(CFG, seed=2)
    m.lm_head[...] = m.lm_head[...] * 8
    return m


@pytest.fixture(params=["unrolled", "scanned"])
def layer_loop(request, monkeypatch):
    """The decode's layer loop both ways: unrolled (what CPU runs) and scanned (accelerators)."""
    monkeypatch.setattr(sampler, "_unroll_layers", lambda params: request.param == "unrolled")
    return request.param


# --- references ------------------------------------------------------------------------------


@jax.jit
def _forward(graphdef, params, tokens_bt):
    return nnx.merge(graphdef, params)(tokens_bt)


@jax.jit
def _teacher_forced(graphdef, params, tokens_bt):
    return token_logprobs(nnx.merge(graphdef, params), tokens_bt)[0]


def _batch(seqs):
    """Sequences right-padded into [REF_ROWS, WIDTH] (causal: padding after a token does not
    change its logits), positions 0, 1, ... as in an unpadded forward."""
    assert len(seqs) <= REF_ROWS and max(map(len, seqs)) <= WIDTH
    buf = np.full((REF_ROWS, WIDTH), PAD, np.int32)
    for i, s in enumerate(seqs):
        buf[i, : len(s)] = s
    return jnp.asarray(buf)


def _full_logits(model, seqs) -> np.ndarray:
    """Full-forward logits [len(seqs), WIDTH, vocab] of each whole sequence."""
    return np.asarray(_forward(*nnx.split(model), _batch(seqs)))[: len(seqs)]


def _greedy_reference(model, prompts, n):
    """Stepwise argmax of the full forward over the whole sequence so far (no cache)."""
    seqs = [list(p) for p in prompts]
    for _ in range(n):
        logits = _full_logits(model, seqs)
        for i, s in enumerate(seqs):
            s.append(int(np.argmax(logits[i, len(s) - 1])))
    return [s[len(p) :] for s, p in zip(seqs, prompts)]


def _cut(row, stops, budget):
    """(length, stopped) of a response that ends at its first stop token or at its budget."""
    for i, t in enumerate(row[:budget]):
        if t in stops:
            return i + 1, True
    return budget, False


def _host(samples):
    return [np.asarray(x) for x in samples.output]


# --- greedy: static sampler, full forward, HF ------------------------------------------------


@pytest.fixture(scope="module")
def greedy_ref(model):
    """The stop-free greedy continuations of PROMPTS, and two stop tokens taken from them so that
    rows 0 and 2 stop early."""
    ref = _greedy_reference(model, PROMPTS, N)
    return ref, (ref[0][2], ref[2][1])


@pytest.fixture(scope="module")
def greedy_opts(greedy_ref):
    return SamplingOptions(max_prompt_len=P, max_new_tokens=N, temperature=0,
                           stop_token_ids=greedy_ref[1])  # fmt: skip


@pytest.fixture(scope="module")
def static_greedy(model, greedy_opts):
    return _host(generate(model, PROMPTS, greedy_opts.replace(engine="static"), pad_id=PAD))


@pytest.mark.parametrize("slots", [1, 2, 0])  # one slot (every prompt in turn), a few, all rows
def test_greedy_equals_static_sampler_and_full_forward(
    model, greedy_ref, greedy_opts, static_greedy, slots
):
    ref, stops = greedy_ref
    samples = generate(model, PROMPTS, greedy_opts.replace(slots=slots), pad_id=PAD)
    tokens, logprobs, lengths, stopped, _ = _host(samples)
    s_tokens, s_logprobs, s_lengths, s_stopped, _ = static_greedy
    assert samples.stats is not None
    np.testing.assert_array_equal(tokens, s_tokens)
    np.testing.assert_array_equal(lengths, s_lengths)
    np.testing.assert_array_equal(stopped, s_stopped)
    np.testing.assert_allclose(logprobs, s_logprobs, atol=1e-5)
    for i, row in enumerate(ref):
        n, stop = _cut(row, stops, N)
        assert (lengths[i], stopped[i]) == (n, stop)
        np.testing.assert_array_equal(tokens[i, :n], row[:n])
        assert (tokens[i, n:] == PAD).all() and (logprobs[i, n:] == 0).all()
    assert 0 < stopped.sum() < len(PROMPTS)  # some rows stop early, some run to the cap
    # With fewer slots than rows, slots were refilled: more steps than the longest response.
    steps = int(samples.stats.decode_steps)
    assert (steps == max(lengths)) if slots == 0 else (steps > max(lengths))


def test_greedy_equals_hf_transformers_generate(model, greedy_opts, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    to_hf(model, tmp_path / "hf", dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager"
    ).eval()
    stops = list(greedy_opts.stop_token_ids)
    tokens, _, lengths, stopped, _ = _host(
        generate(model, PROMPTS, greedy_opts.replace(slots=2), pad_id=PAD)
    )
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([prompt], dtype=torch.long)
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N,
                              do_sample=False, eos_token_id=stops, pad_token_id=PAD)  # fmt: skip
        new = out[0, len(prompt) :].tolist()
        assert lengths[i] == len(new), (i, new, tokens[i])
        np.testing.assert_array_equal(tokens[i, : len(new)], new)
        assert bool(stopped[i]) == (new[-1] in stops)
    assert 0 < stopped.sum() < len(PROMPTS)


# --- sampled: log-probs, truncation, row-keyed randomness ------------------------------------


TRUNC = dict(temperature=1.0, top_k=5, top_p=0.8)
# 6 prompts x 2 samples: the last prompt's pair runs to 16 tokens, every other pair to 2. The
# pair starts after the first slots are refilled (so its response ring wraps around) and in
# the pool's last slots (so compacting the draining pool moves it).
MULTI_PROMPTS = [[3, 4, 5], [6], list(range(10, 22)), [30, 31], [40, 41, 42, 43], [50]]
MULTI_BUDGETS = [2] * 10 + [16, 16]
MULTI_OPTS = SamplingOptions(max_prompt_len=P, max_new_tokens=16, **TRUNC)
# (slots, prefill_prompts): 4 slots refilled one prompt (a pair) at a time, and 8 slots
# refilled 4 prompts at a time (the second batch runs past the last prompt).
POOLS = [(4, 1), (8, 4)]


def _multi(policy, opts, **kw):
    kw = (
        dict(num_samples=2, rng=jax.random.key(1), pad_id=PAD, row_max_new_tokens=MULTI_BUDGETS)
        | kw
    )
    return generate(policy, MULTI_PROMPTS, opts, **kw)


@pytest.fixture(scope="module")
def sampled_runs(sharp):
    """The same rng, prompts and budgets through both slot pools."""
    return {
        pool: _multi(sharp, MULTI_OPTS.replace(slots=pool[0], prefill_prompts=pool[1]))
        for pool in POOLS
    }


def test_logprobs_equal_teacher_forced_with_refilled_slots(sharp, layer_loop):
    """Sampled at temperature 1 (top-k, top-p), 2 samples a prompt, 4 slots for 12 responses:
    slots are refilled, the response ring wraps, the pool is compacted as it drains, and every
    log-prob is still the teacher-forced one of the untruncated policy."""
    samples = _multi(sharp, MULTI_OPTS.replace(slots=POOLS[0][0]))
    tokens, logprobs, lengths, stopped, _ = _host(samples)
    rows = len(MULTI_BUDGETS)
    seqs = [list(MULTI_PROMPTS[r // 2]) + tokens[r, : lengths[r]].tolist() for r in range(rows)]
    teacher = np.asarray(_teacher_forced(*nnx.split(sharp), _batch(seqs)))
    for r in range(rows):
        start = len(MULTI_PROMPTS[r // 2])
        np.testing.assert_allclose(
            logprobs[r, : lengths[r]], teacher[r, start : start + lengths[r]], atol=2e-5
        )
        assert (tokens[r, lengths[r] :] == PAD).all() and (logprobs[r, lengths[r] :] == 0).all()
    np.testing.assert_array_equal(lengths, MULTI_BUDGETS)
    assert not stopped.any()
    assert int(samples.stats.decode_steps) > MULTI_OPTS.max_new_tokens  # the ring wrapped


def test_sampled_tokens_stay_inside_the_truncated_set(sharp, sampled_runs):
    tokens, _, lengths, _, _ = _host(sampled_runs[POOLS[0]])
    np.testing.assert_array_equal(lengths, MULTI_BUDGETS)  # no stop tokens: the budgets
    rows = len(MULTI_BUDGETS)
    seqs = [list(MULTI_PROMPTS[r // 2]) + tokens[r, : lengths[r]].tolist() for r in range(rows)]
    logits = _full_logits(sharp, seqs).astype(np.float64)
    kept, off_argmax = [], 0
    for r in range(rows):
        start = len(MULTI_PROMPTS[r // 2]) - 1
        for j in range(lengths[r]):
            logits_v = logits[r, start + j]
            allowed = np.isfinite(_numpy_truncate(logits_v[None] / TRUNC["temperature"],
                                                  TRUNC["top_k"], TRUNC["top_p"])[0])  # fmt: skip
            assert allowed[tokens[r, j]], (r, j, tokens[r, j], np.flatnonzero(allowed))
            kept.append(allowed.sum())
            off_argmax += int(tokens[r, j] != np.argmax(logits_v))
    assert 1 < np.mean(kept) < TRUNC["top_k"]  # both cuts are active
    assert off_argmax > 0  # and the draws are not greedy


def test_row_samples_do_not_depend_on_slots_or_prefill_batch(sharp, sampled_runs):
    """Randomness is keyed by (row, token index): the same rng gives the same tokens whatever
    the slot a row ran in and however many prompts were prefilled together."""
    a, b = (_host(sampled_runs[pool]) for pool in POOLS)
    for x, y, name in zip(a[:4], b[:4], sampled_runs[POOLS[0]].output._fields):
        np.testing.assert_allclose(x, y, atol=1e-5, err_msg=name)
    assert len({tuple(a[0][r]) for r in (10, 11)}) == 2  # a group's two samples differ
    # The test has power: another rng draws other tokens.
    opts = MULTI_OPTS.replace(slots=POOLS[0][0])
    other = _multi(sharp, opts, rng=jax.random.key(2))
    assert not np.array_equal(np.asarray(other.output.tokens_bn), a[0])


def test_sampled_frequencies_match_the_truncated_tempered_softmax(sharp):
    """First tokens of 4,000 responses (400 copies of a prompt x 10 samples, 100 slots refilled
    10 prompts at a time) against softmax(logits / T) cut by top-k, then top-p, in float64
    NumPy from the full forward's logits: distinct rows draw independent samples."""
    temperature, top_k, top_p, prompt = 0.8, 9, 0.9, PROMPTS[2]
    opts = SamplingOptions(max_prompt_len=P, max_new_tokens=1, temperature=temperature,
                           top_k=top_k, top_p=top_p, slots=100, prefill_prompts=10,
                           drain_phases=0)  # fmt: skip
    samples = generate(sharp, [prompt] * 400, opts, num_samples=10, rng=jax.random.key(7))
    counts = np.bincount(np.asarray(samples.output.tokens_bn[:, 0]), minlength=CFG.vocab_size)
    assert int(samples.stats.prefills) == 40
    logits = _full_logits(sharp, [prompt])[0, len(prompt) - 1].astype(np.float64)

    def probs(t):
        cut = _numpy_truncate(logits[None] / t, top_k, top_p)[0]
        p = np.exp(cut - cut.max())
        return p / p.sum()

    expected = probs(temperature)
    assert 2 < np.sum(expected > 0) < CFG.vocab_size  # the truncation is active
    assert _chi_square_p_value(counts, expected) > 1e-3
    # The test has power: the same draws reject the untempered distribution.
    assert _chi_square_p_value(counts, probs(1.0)) < 1e-6


# --- per-row budgets, utilisation, compile count ---------------------------------------------


def test_row_budgets_cap_each_response_and_static_agrees(model, greedy_ref, greedy_opts):
    ref, stops = greedy_ref
    budgets = [2, N, 5, 1]
    outs = [
        _host(generate(model, PROMPTS, greedy_opts.replace(engine=e, slots=2), pad_id=PAD,
                       row_max_new_tokens=budgets))
        for e in ("continuous", "static")
    ]  # fmt: skip
    for x, y in zip(outs[0][:4], outs[1][:4]):
        np.testing.assert_allclose(x, y, atol=1e-5)
    tokens, logprobs, lengths, stopped, _ = outs[0]
    expected = [_cut(row, stops, b) for row, b in zip(ref, budgets)]
    assert lengths.tolist() == [n for n, _ in expected]
    assert stopped.tolist() == [s for _, s in expected]
    for i, (n, _) in enumerate(expected):
        np.testing.assert_array_equal(tokens[i, :n], ref[i][:n])
        assert (tokens[i, n:] == PAD).all() and (logprobs[i, n:] == 0).all()
    # Both ways of ending occur: a budget before a stop token, a stop token before a budget.
    assert lengths[0] < _cut(ref[0], stops, N)[0] and stopped[2]


def test_utilisation_stats_and_group_prefills(sampled_runs):
    """Budgets of very different lengths: the short pairs cycle through the slots the long pair
    leaves free, where the static sampler runs every row until the longest ends."""
    static_slot_steps = len(MULTI_BUDGETS) * max(MULTI_BUDGETS)  # 12 rows x 16 steps
    for (slots, batch), samples in sampled_runs.items():
        lengths = np.asarray(samples.output.lengths_b)
        np.testing.assert_array_equal(lengths, MULTI_BUDGETS)
        stats = samples.stats
        steps = int(stats.decode_steps)
        # Every slot-step that sampled a kept token, and nothing else.
        assert int(stats.live_slot_steps) == lengths.sum() == 52
        assert 52 <= int(stats.slot_steps) <= steps * slots
        # A group of samples shares one prefill, and `batch` prompts share one call.
        assert int(stats.prefills) == math.ceil(len(MULTI_PROMPTS) / batch)
        assert steps >= max(MULTI_BUDGETS)
        assert (np.asarray(samples.output.decode_steps_b) == steps).all()
        if slots == 4:  # fewer slots than rows: the short pairs run beside the long one
            assert steps * slots <= static_slot_steps / 2
            assert int(stats.slot_steps) <= static_slot_steps / 3  # the pool shrank too


def test_one_compile_across_prompts_budgets_temperatures_and_keys(sharp):
    """Prompt contents and lengths (within the one bucket), per-row budgets (or none),
    temperatures and keys are arguments of the one compiled engine program, not part of it."""
    opts = MULTI_OPTS.replace(slots=POOLS[0][0])
    _multi(sharp, opts)
    size = engine.run_jit._cache_size()
    rng = np.random.default_rng(0)
    for trial in range(5):
        prompts = [rng.integers(1, 60, size=rng.integers(1, P + 1)).tolist() for _ in range(6)]
        budgets = None if trial == 4 else rng.integers(1, 17, size=12).tolist()
        samples = generate(sharp, prompts, opts.replace(temperature=0.5 + trial / 4),
                           num_samples=2, rng=jax.random.key(trial + 1), pad_id=PAD,
                           row_max_new_tokens=budgets)  # fmt: skip
        lengths = np.asarray(samples.output.lengths_b)
        np.testing.assert_array_equal(lengths, budgets or [16] * 12)
    assert engine.run_jit._cache_size() == size


# --- mesh, empty rows, errors ----------------------------------------------------------------


def test_sharded_greedy_equals_single_device(model, greedy_opts):
    """On a (data, fsdp, tensor) mesh, with 2 slots refilled for 3 prompts and an empty row
    (`prompt_multiple`), tokens and log-probs are the single-device ones."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, params = nnx.split(model)
    sharded = (graphdef, jax.device_put(params, param_shardings(CFG, mesh)))
    opts, kw = greedy_opts.replace(slots=2), dict(pad_id=PAD, prompt_multiple=4)
    batch = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    with sharding.activation_sharding(mesh):
        out = generate(sharded, PROMPTS[:3], opts, input_sharding=batch, **kw)
    ref = generate(model, PROMPTS[:3], opts, **kw)
    assert len(out.output.tokens_bn.sharding.device_set) == 8
    for x, y, name in zip(_host(out), _host(ref), ref.output._fields):
        np.testing.assert_allclose(x, y, atol=1e-5, err_msg=name)
    # The pool drains shard by shard (rows never move between devices): 2 slots over 2
    # shards cannot halve, so only the slot-steps count may differ from one device's.
    for field in ("decode_steps", "live_slot_steps", "prefills"):
        assert int(getattr(out.stats, field)) == int(getattr(ref.stats, field)), field
    assert int(out.stats.slot_steps) >= int(ref.stats.slot_steps)


def test_empty_prompt_rows_are_empty_and_change_nothing(model, greedy_opts):
    opts = greedy_opts.replace(slots=2)
    full = _host(generate(model, PROMPTS, opts, pad_id=PAD))
    tokens_pt, positions_pt = sampler.pad_prompts(PROMPTS, pad_id=PAD, prompt_buckets=(P,))
    tokens_pt[1], positions_pt[1] = PAD, -1  # an empty row between real ones
    out = _host(generate_padded(model, tokens_pt, positions_pt, opts, pad_id=PAD))
    tokens, logprobs, lengths, stopped, _ = out
    assert lengths[1] == 0 and not stopped[1]
    assert (tokens[1] == PAD).all() and (logprobs[1] == 0).all()
    for x, y in zip(out[:4], full[:4]):
        np.testing.assert_allclose(x[[0, 2, 3]], y[[0, 2, 3]], atol=1e-5)
    # `prompt_multiple` pads with empty prompts, whose rows are dropped.
    padded = _host(generate(model, PROMPTS[:3], opts, pad_id=PAD, prompt_multiple=4))
    for x, y in zip(padded[:4], full[:4]):
        np.testing.assert_allclose(x, y[:3], atol=1e-5)


def test_empty_rows_in_a_prefill_batch_keep_the_other_rows_samples(sharp, sampled_runs):
    """An empty prompt inside a batch of 4 prefilled prompts: its 2 samples stay empty and every
    other row draws what it draws without it (rows are keyed by their index)."""
    slots, batch = POOLS[1]
    full = _host(sampled_runs[POOLS[1]])
    tokens_pt, positions_pt = sampler.pad_prompts(MULTI_PROMPTS, pad_id=PAD, prompt_buckets=(P,))
    tokens_pt[2], positions_pt[2] = PAD, -1
    opts = MULTI_OPTS.replace(slots=slots, prefill_prompts=batch)
    samples = generate_padded(sharp, tokens_pt, positions_pt, opts, num_samples=2,
                              rng=jax.random.key(1), pad_id=PAD,
                              row_max_new_tokens=np.asarray(MULTI_BUDGETS))  # fmt: skip
    out = _host(samples)
    assert out[2][4:6].tolist() == [0, 0] and not out[3][4:6].any()
    assert (out[0][4:6] == PAD).all() and (out[1][4:6] == 0).all()
    keep = [r for r in range(12) if r not in (4, 5)]
    for x, y in zip(out[:4], full[:4]):
        np.testing.assert_allclose(x[keep], y[keep], atol=1e-5)
    assert int(samples.stats.live_slot_steps) == sum(MULTI_BUDGETS) - 4


def test_errors_name_the_option(model):
    opts = SamplingOptions(max_prompt_len=P, max_new_tokens=4)
    with pytest.raises(ValueError, match="slots=2 is less than num_samples=3"):
        generate(model, PROMPTS, opts.replace(slots=2), num_samples=3)
    with pytest.raises(ValueError, match="prompt 1 has 17 tokens, more than .*max_prompt_len=16"):
        generate(model, [[1], list(range(1, 18))], opts)
    tokens = np.ones((1, 2 * P), np.int32)
    with pytest.raises(ValueError, match="padded to 32 tokens .*max_prompt_len=16"):
        generate_padded(model, tokens, tokens, opts)
    with pytest.raises(ValueError, match=r"row_max_new_tokens must be in \[1, 4\].*max_new_tokens"):
        generate(model, PROMPTS, opts, row_max_new_tokens=[1, 2, 3, 5])
    with pytest.raises(ValueError, match="row_max_new_tokens has 5 budgets for 4 responses"):
        generate(model, PROMPTS, opts, row_max_new_tokens=[1] * 5)
    with pytest.raises(ValueError, match="slots must be >= 0, got -1"):
        SamplingOptions(max_prompt_len=P, max_new_tokens=4, slots=-1)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        SamplingOptions(max_prompt_len=P, max_new_tokens=0)
    with pytest.raises(ValueError, match="engine='bogus'; choose one of"):
        SamplingOptions(max_prompt_len=P, max_new_tokens=4, engine="bogus")
    with pytest.raises(ValueError, match="stop_strings .* need the tokenizer"):
        generate(model, PROMPTS, opts.replace(stop_strings=("</answer>",)))
    with pytest.raises(ValueError, match="top_k=62 exceeds the vocabulary size 61"):
        generate(model, PROMPTS, opts.replace(top_k=62))


def test_too_few_row_budgets_name_the_option(model):
    opts = SamplingOptions(max_prompt_len=P, max_new_tokens=4)
    with pytest.raises(ValueError, match="row_max_new_tokens has 3 budgets for 4 responses"):
        generate(model, PROMPTS, opts, row_max_new_tokens=[1, 2, 3])


def test_a_pool_too_small_for_one_prefill_is_an_error(model):
    """Three slots cannot take a prefill of 2 prompts x 2 samples: an error, not a loop that
    waits forever for a fourth free slot."""
    opts = SamplingOptions(max_prompt_len=P, max_new_tokens=3, temperature=0, slots=3,
                           prefill_prompts=2)  # fmt: skip
    with pytest.raises(ValueError, match="slots=3 cannot take a prefill of prefill_prompts=2"):
        generate(model, [[1, 2]] * 2, opts, num_samples=2)
    out = generate(model, [[1, 2]] * 2, opts.replace(prefill_prompts=1), num_samples=2)
    assert np.asarray(out.output.lengths_b).tolist() == [3] * 4


def test_the_draining_pool_compacts_within_each_shard(model):
    """On 4 batch shards of 4 slots each, the pool halves shard by shard (rows stay on their
    device; the planner's 7B memory test catches a cache gathered across devices): outputs
    equal one device's, and the pool did shrink."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, params = nnx.split(model)
    sharded = (graphdef, jax.device_put(params, param_shardings(CFG, mesh)))
    opts = SamplingOptions(max_prompt_len=P, max_new_tokens=12, temperature=0, slots=16,
                           decode_segments=3)  # fmt: skip
    prompts = [[i % 50 + 1, 7, 9] for i in range(12)]
    budgets = [12 if i % 7 == 0 else 2 + i % 3 for i in range(24)]
    kw = dict(num_samples=2, pad_id=PAD, row_max_new_tokens=budgets)
    batch = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
    with sharding.activation_sharding(mesh):
        out = generate(sharded, prompts, opts, input_sharding=batch, **kw)
    ref = generate(model, prompts, opts, **kw)
    for x, y, name in zip(_host(out), _host(ref), ref.output._fields):
        np.testing.assert_allclose(x, y, atol=1e-5, err_msg=name)
    assert int(out.stats.slot_steps) < int(out.stats.decode_steps) * 16  # it did shrink
    assert engine.drain_phases(16, 3, shards=4) == 2 and engine.drain_phases(16, 3) == 3
