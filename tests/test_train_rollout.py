"""Rollout collection: DAPO dynamic sampling and overlong filtering on a scripted collector;
on a tiny random model, the order of device and host work, the skipped reference and the one
device-to-host transfer of a step."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zero_rl import config as config_lib
from zero_rl.checkpoint import Checkpointer
from zero_rl.config import load_config
from zero_rl.data import Example
from zero_rl.rewards import RewardConfig, Verdict
from zero_rl.sampler import SampleOutput
from zero_rl.sampling import Samples, SamplingOptions, with_template_stops
from zero_rl.tokenizer import load_tokenizer
from zero_rl.train import evaluate as evaluate_lib
from zero_rl.train import loop, rollout
from zero_rl.train import run as run_lib
from zero_rl.train.batch import Rollout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
P, N = 4, 3  # prompt and response columns of the scripted rollouts


class ScriptedCollector:
    """`draw` returns the next scripted [groups, samples] rewards. Every row's tokens are
    (draw, group, sample, row), so a test can tell which rows a rollout holds."""

    def __init__(self, rewards, stopped=None, device_rewards=None):
        self.rewards = [np.asarray(r, np.float32) for r in rewards]
        self.stopped = stopped
        self.device_rewards = device_rewards  # what the rollout's device copy holds, if not them
        self.calls = 0

    def _put(self, *arrays):
        return tuple(jnp.asarray(a) for a in arrays)

    def draw(self, params, ref_params, examples, rng):
        d = self.calls
        self.calls += 1
        rewards_pg = self.rewards[d]
        groups, samples = rewards_pg.shape
        ids = [(d, g, s) for g in range(groups) for s in range(samples)]
        tokens = np.zeros((len(ids), P + N), np.int32)
        tokens[:, :4] = [(d, g, s, i) for i, (d, g, s) in enumerate(ids)]
        values = np.asarray([[100 * d + i] * N for i in range(len(ids))], np.float32)
        stopped = np.ones(len(ids), bool) if self.stopped is None else np.asarray(self.stopped[d])
        out = Rollout(
            tokens_bt=jnp.asarray(tokens),
            positions_bt=jnp.zeros_like(tokens),
            mask_bn=jnp.ones((len(ids), N)),
            sampler_logprobs_bn=jnp.asarray(values),
            old_logprobs_bn=jnp.asarray(values + 0.5),
            ref_logprobs_bn=jnp.asarray(values + 0.25),
            rewards_pg=jnp.asarray(
                rewards_pg if self.device_rewards is None else self.device_rewards[d]
            ),
            group_mask_p=jnp.ones((groups,)),
        )
        texts = [f"d{d} g{g} s{s}" for d, g, s in ids]
        verdicts = [Verdict(bool(r > 0), None, float(r), False, False) for r in rewards_pg.flat]
        stats = {"train/reward_mean": float(rewards_pg.mean()), "perf/sample_time_s": 1.0}
        return rollout.RolloutResult(out, list(examples), texts, verdicts, stopped, stats,
                                     rewards_pg)  # fmt: skip


def _batches(groups):
    d = 0
    while True:
        yield [Example(f"p/{d}.{g}", "q", "1", "p") for g in range(groups)]
        d += 1


def _collect(collector, *, dynamic_sampling=True, max_draws=3, overlong_filter=False):
    # No device-to-host copy at all: the scripted collector's rewards are on the host already.
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        return rollout.collect(
            collector, None, None, _batches(len(collector.rewards[0])), jax.random.key(0),
            dynamic_sampling=dynamic_sampling, max_draws=max_draws,
            overlong_filter=overlong_filter,
        )  # fmt: skip


def _groups(result):
    """(draw, group) of each group of the rollout, from its tokens."""
    tokens = np.asarray(result.rollout.tokens_bt)
    samples = result.host_rewards_pg.shape[1]
    rows = tokens.reshape(-1, samples, P + N)
    for group in rows:  # a group's rows are its samples, in order
        assert group[:, 0].tolist() == [group[0, 0]] * samples
        assert group[:, 2].tolist() == list(range(samples))
    return [(int(g[0, 0]), int(g[0, 1])) for g in rows]


def test_without_dynamic_sampling_one_draw_is_the_rollout():
    collector = ScriptedCollector([[[1, 1], [0, 0], [0, 1], [1, 0]]])
    result = _collect(collector, dynamic_sampling=False)
    assert collector.calls == 1
    assert _groups(result) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert np.asarray(result.rollout.group_mask_p).tolist() == [1, 1, 1, 1]
    assert result.stats["train/kept_groups"] == 4


def test_dynamic_sampling_drops_all_equal_groups_and_draws_until_full():
    collector = ScriptedCollector([
        [[1, 1], [0, 1], [0, 0], [1, 0]],  # groups 1 and 3 carry signal
        [[0, 1], [1, 1], [1, 0], [0, 0]],  # groups 0 and 2
        [[0, 1], [0, 1], [0, 1], [0, 1]],  # never drawn: the batch is full
    ])  # fmt: skip
    result = _collect(collector)
    assert collector.calls == 2
    chosen = [(0, 1), (0, 3), (1, 0), (1, 2)]
    assert _groups(result) == chosen
    assert [ex.id for ex in result.examples] == [f"p/{d}.{g}" for d, g in chosen]
    assert result.texts[::2] == [f"d{d} g{g} s0" for d, g in chosen]
    np.testing.assert_array_equal(np.asarray(result.rollout.group_mask_p), [1, 1, 1, 1])
    expected = [collector.rewards[d][g] for d, g in chosen]
    np.testing.assert_array_equal(np.asarray(result.rollout.rewards_pg), expected)
    np.testing.assert_array_equal(result.host_rewards_pg, expected)
    # Every per-row field follows its group (row i of draw d carries 100 d + i).
    rows = [100 * d + 2 * g + s for d, g in chosen for s in range(2)]
    np.testing.assert_array_equal(np.asarray(result.rollout.sampler_logprobs_bn)[:, 0], rows)
    np.testing.assert_array_equal(np.asarray(result.rollout.old_logprobs_bn)[:, 0],
                                  np.add(rows, 0.5))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(result.rollout.ref_logprobs_bn)[:, 0],
                                  np.add(rows, 0.25))  # fmt: skip
    # Statistics describe everything sampled: means over draws, perf times summed.
    assert result.stats["train/reward_mean"] == pytest.approx((0.5 + 0.5) / 2)
    assert result.stats["perf/sample_time_s"] == 2.0
    assert result.stats["train/dynamic_sampling_draws"] == 2
    assert result.stats["train/kept_groups"] == 4


def test_dynamic_sampling_stops_at_the_cap_with_masked_fillers():
    collector = ScriptedCollector([
        [[1, 1], [1, 1], [0, 1], [0, 0]],
        [[0, 0], [0, 0], [0, 0], [1, 0]],
        [[0, 1], [0, 1], [0, 1], [0, 1]],  # beyond max_draws=2
    ])  # fmt: skip
    result = _collect(collector, max_draws=2)
    assert collector.calls == 2
    groups = _groups(result)
    assert groups[:2] == [(0, 2), (1, 3)]
    # The fillers are dropped (all-equal) groups and train nothing.
    for d, g in groups[2:]:
        rewards = collector.rewards[d][g]
        assert rewards.min() == rewards.max()
    np.testing.assert_array_equal(np.asarray(result.rollout.group_mask_p), [1, 1, 0, 0])
    assert result.stats["train/kept_groups"] == 2
    assert result.stats["train/dynamic_sampling_draws"] == 2


def test_dynamic_sampling_keeps_the_first_groups_when_more_have_signal():
    collector = ScriptedCollector([
        [[1, 0], [0, 1], [1, 1], [0, 1]],
        [[0, 1], [1, 0], [1, 0], [0, 0]],
    ])  # fmt: skip
    result = _collect(collector)
    assert _groups(result) == [(0, 0), (0, 1), (0, 3), (1, 0)]
    np.testing.assert_array_equal(np.asarray(result.rollout.group_mask_p), [1, 1, 1, 1])


def test_dynamic_sampling_reads_the_host_rewards_not_the_device_copy():
    rewards = [[[1, 1], [0, 1], [0, 0], [1, 0]], [[0, 1], [1, 1], [1, 0], [0, 0]]]
    collector = ScriptedCollector(rewards, device_rewards=np.zeros((2, 4, 2), np.float32))
    result = _collect(collector)
    assert _groups(result) == [(0, 1), (0, 3), (1, 0), (1, 2)]


@pytest.mark.parametrize("dynamic_sampling", [False, True])
def test_overlong_filter_masks_responses_cut_by_the_length_cap(dynamic_sampling):
    stopped = [[1, 0, 1, 1, 0, 1, 1, 1], [1, 1, 0, 1, 1, 1, 0, 0]]
    collector = ScriptedCollector(
        [[[0, 1], [1, 1], [0, 1], [1, 0]], [[0, 1], [1, 0], [0, 0], [0, 0]]], stopped=stopped
    )
    result = _collect(collector, dynamic_sampling=dynamic_sampling, overlong_filter=True)
    groups = _groups(result)
    expected_stopped = [stopped[d][2 * g + s] for d, g in groups for s in range(2)]
    np.testing.assert_array_equal(result.stopped_b, expected_stopped)
    mask = np.asarray(result.rollout.mask_bn)
    np.testing.assert_array_equal(mask, np.repeat(np.asarray(expected_stopped, float)[:, None],
                                                  N, axis=1))  # fmt: skip
    assert 0 < mask.sum() < mask.size
    unfiltered = _collect(ScriptedCollector(collector.rewards, stopped=stopped),
                          dynamic_sampling=dynamic_sampling)  # fmt: skip
    assert np.asarray(unfiltered.rollout.mask_bn).min() == 1.0


def test_responses_are_cut_after_the_first_stop_string():
    tokenizer = load_tokenizer(config_lib.TINY_TOKENIZER)
    texts = ["1+2=3", "4"]
    ids = [tokenizer.encode(t, add_bos=False) for t in texts]
    tokens = np.zeros((2, 8), np.int32)
    for row, seq in zip(tokens, ids):
        row[: len(seq)] = seq
    lengths = np.asarray([len(s) for s in ids])
    assert rollout.decode_responses(tokenizer, "plain", tokens, lengths) == texts
    long_text = "a</answer> junk \\boxed{9}"
    assert rollout.decode_responses(_TextTokenizer(long_text), "r1_zero",
                                    np.zeros((1, 1), np.int32), [1]) == ["a</answer>"]  # fmt: skip


class _TextTokenizer:
    vocab_size = 1  # the one id the test's rows hold

    def __init__(self, text):
        self.text = text

    def decode(self, ids):
        return self.text


def test_fit_prompts_names_a_too_long_prompt_or_drops_it():
    tokenizer = load_tokenizer(config_lib.TINY_TOKENIZER)
    examples = [Example("s/0", "1+2=", "3", "s"), Example("s/1", "12345+67890=", "80235", "s")]
    kept = rollout.fit_prompts(examples, tokenizer, template="plain", max_prompt_len=8, name="x",
                               drop=True)  # fmt: skip
    assert kept == examples[:1]
    with pytest.raises(ValueError, match=r"x: 1 of 2 prompts are longer .*=8.* s/1 \(13 tokens"):
        rollout.fit_prompts(examples, tokenizer, template="plain", max_prompt_len=8, name="x")


# ---------------------------------------------------------------------------------------------
# A tiny random policy through the loop's own step.

# Batches sharded over 2 devices, sampled by the continuous engine through 2 slots (refilled
# inside its loop); a random policy never gets a group right, so dynamic sampling draws up to
# its cap.
SMALL = ["mesh.data=2", "mesh.fsdp=1", "mesh.tensor=1", "sft.steps=0", "eval_every=0",
         "rl.num_prompts=2", "rl.num_samples=2", "rl.minibatch_size=4",
         "sampling.max_new_tokens=4", "sampling.engine=continuous", "sampling.slots=2",
         "reward.num_workers=1", "rl.dynamic_sampling=true", "rl.max_draws=2",
         "rl.overlong_filter=true"]  # fmt: skip


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """kl_coef -> (run, params, opt_state, ref_params, iterator), made once: the runs share
    one model shape, so they share compiled programs too. Tests must not donate these params."""
    cache = {}

    def get(kl_coef):
        if kl_coef not in cache:
            workdir = tmp_path_factory.mktemp("policy")
            config = load_config(TINY, SMALL + [f"rl.loss.kl_coef={kl_coef}"])
            run = run_lib.resolve(config, str(workdir))
            ckpt = Checkpointer(str(workdir / "ckpt"), async_save=False)
            iterator = loop.PromptIterator(run.train_examples, config.rl.num_prompts, seed=0)
            _, params, opt_state, ref_params, _ = loop._restore_or_start(run, ckpt, iterator)
            ckpt.close()
            cache[kl_coef] = run, params, opt_state, ref_params, iterator
        return cache[kl_coef]

    return get


@pytest.fixture
def pool():
    pool = loop.VerifierPool(num_workers=1, timeout_s=5.0)
    yield pool
    pool.close()


@pytest.mark.parametrize("kl_coef", [0.0, 1e-4])
def test_reference_only_with_a_kl_term_and_logprobs_dispatched_before_verifying(
    policies, monkeypatch, pool, kl_coef
):
    run, params, _, ref_params, iterator = policies(kl_coef)
    if kl_coef == 0.0:
        assert not run.needs_ref and ref_params is None  # no reference is allocated
    else:
        # A copy of the initial params, in buffers of its own (the update donates params).
        ref_leaves, leaves = jax.tree.leaves(ref_params), jax.tree.leaves(params)
        assert all(a is not b for a, b in zip(ref_leaves, leaves))
        assert all(np.array_equal(a, b) for a, b in zip(ref_leaves, leaves))
    events = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            events.append(name)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(rollout, "rollout_logprobs", spy("logprobs", rollout.rollout_logprobs))
    monkeypatch.setattr(rollout, "grade", spy("grade", rollout.grade))
    collector = loop._collector(run, pool)
    monkeypatch.setattr(collector, "_local", spy("fetch", collector._local))
    result = collector.draw(params, ref_params, next(iterator), jax.random.key(1))
    logprobs = ["logprobs"] * (1 if kl_coef == 0.0 else 2)
    # Old (and reference) log-probs are queued before the host blocks on the tokens and
    # verifies them, so the device computes them while the verifier runs.
    assert events == [*logprobs, "fetch", "grade"]
    same = result.rollout.ref_logprobs_bn is result.rollout.old_logprobs_bn
    assert same == (kl_coef == 0.0)
    # The engine's own counts: 2 groups of 2 responses in turn through 2 slots, 1 to 4 tokens
    # each.
    assert 0 < result.stats["perf/slot_utilisation"] <= 1
    assert 2 <= result.stats["perf/decode_steps"] <= 2 * 4


def _guard_stops_device_reads() -> bool:
    """Whether `jax.transfer_guard_device_to_host` stops a read of a device array on this
    backend: it does on accelerators; XLA:CPU arrays already live in host memory and pass it."""
    x = jnp.arange(3) + 1  # computed on the device: no host copy of it yet
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        try:
            np.asarray(x)
        except Exception as err:  # noqa: BLE001 - only the guard's own error counts
            if "Disallowed device-to-host transfer" in str(err):
                return True
            raise
    return False


def _count_host_reads(monkeypatch, reads: list[bool], fetching: list[bool]) -> None:
    """Where the guard lets reads pass (XLA:CPU): appends to `reads`, each time a jax.Array
    becomes host data (np.asarray, float(), bool(), jax.device_get all end in
    `ArrayImpl._value`), whether `fetching` was set. JAX has no public hook there, so this
    wraps a private property, and skips the test when a JAX version no longer has it."""
    try:
        from jax._src import array as jax_array  # noqa: PLC0415

        value = jax_array.ArrayImpl._value.fget
    except (ImportError, AttributeError):
        pytest.skip(
            "device-to-host reads pass jax.transfer_guard on this backend, and this JAX has no "
            "jax._src.array.ArrayImpl._value property to count them at"
        )

    def counted(self):
        reads.append(bool(fetching))
        return value(self)

    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(counted))


def test_the_response_tokens_are_the_only_device_to_host_transfer_of_a_step(
    policies, pool, monkeypatch
):
    run, params, opt_state, ref_params, iterator = policies(1e-4)
    params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))  # the update donates them
    collector = loop._collector(run, pool)
    fetches, fetching, reads = [], [], []
    local = collector._local

    def fetch(*arrays):  # the one read allowed, by `_local` itself, under the guard below
        fetches.append(len(arrays))
        fetching.append(True)
        try:
            return local(*arrays)
        finally:
            fetching.pop()

    monkeypatch.setattr(collector, "_local", fetch)
    guarded = _guard_stops_device_reads()  # on an accelerator, any other read raises
    if not guarded:
        _count_host_reads(monkeypatch, reads, fetching)
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        result, params, opt_state, metrics = loop._step(
            run, collector, params, opt_state, ref_params, iterator, jax.random.key(0)
        )
        assert result.stats["train/dynamic_sampling_draws"] == 2
        assert fetches  # the tokens were read
        # What a hidden read (outside `_local`) looks like to this test.
        if guarded:
            with pytest.raises(Exception, match="Disallowed device-to-host transfer"):
                float(metrics["loss"])
        else:
            assert reads and all(reads), reads  # tokens were read, and nothing else
            reads.clear()
            float(metrics["loss"])
            assert reads == [False]
    assert len(result.texts) == 4


class _RowTextTokenizer:
    """The tiny tokenizer, except that a response's first token picks its text from `texts`."""

    def __init__(self, texts):
        self._tokenizer = load_tokenizer(config_lib.TINY_TOKENIZER)
        self.texts = texts

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def decode(self, ids):
        return self.texts[ids[0]] if ids else ""  # as a real tokenizer decodes no tokens


def _evaluate_scripted(monkeypatch, progress=False):
    """evaluate() on scripted responses (the sampler replaced) for three examples, gold "3"."""
    texts = ["\\boxed{3}</answer> more: \\boxed{7}", "\\boxed{7}</answer> \\boxed{3}", "\\boxed{3}"]
    tokenizer = _RowTextTokenizer(texts)

    def fake_generate(model, tokens_bt, positions_bt, options, **kwargs):
        rows, n = tokens_bt.shape[0], options.max_new_tokens
        return Samples(
            SampleOutput(
                tokens_bn=jnp.arange(rows)[:, None] * jnp.ones((1, n), jnp.int32),
                logprobs_bn=jnp.zeros((rows, n)), lengths_b=jnp.full((rows,), 2),
                stopped_b=jnp.ones((rows,), bool), decode_steps_b=jnp.full((rows,), 2),
            ),
            None,
        )  # fmt: skip

    monkeypatch.setattr(evaluate_lib, "generate_padded", fake_generate)
    examples = [Example(f"e/{i}", "1+2=", "3", "e") for i in range(3)]
    sampling = with_template_stops(
        SamplingOptions(max_prompt_len=512, max_new_tokens=4, temperature=0.0), tokenizer, "r1_zero"
    )
    assert sampling.stop_strings == ("</answer>",)
    result = evaluate_lib.evaluate(
        None, None, examples, tokenizer=tokenizer, template="r1_zero", sampling=sampling,
        batch_size=4, reward=RewardConfig(), progress=progress,
    )  # fmt: skip
    return result, tokenizer


def test_evaluation_grades_up_to_the_stop_string_as_rollouts_do(monkeypatch):
    result, tokenizer = _evaluate_scripted(monkeypatch)
    assert result.texts == ["\\boxed{3}</answer>", "\\boxed{7}</answer>", "\\boxed{3}"]
    assert [v.correct for v in result.verdicts] == [True, False, True]
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.texts == rollout.decode_responses(
        tokenizer, "r1_zero", np.arange(3)[:, None], np.full(3, 2)
    )


@pytest.mark.parametrize("progress", [True, False])
def test_evaluation_shows_a_progress_bar_only_when_asked(monkeypatch, progress):
    bars = []

    def fake_tqdm(iterable, **kwargs):
        bars.append(kwargs)
        return iterable

    monkeypatch.setattr(evaluate_lib, "tqdm", fake_tqdm)
    _evaluate_scripted(monkeypatch, progress)
    # disable=None lets tqdm hide itself when stderr is not a terminal (log files, CI).
    assert [b["disable"] for b in bars] == [None if progress else True]


def test_progress_bars_need_the_config_flag_and_a_terminal(monkeypatch):
    config = load_config(TINY)
    monkeypatch.setattr(run_lib.sys.stderr, "isatty", lambda: True)
    assert run_lib.show_progress(config)
    assert not run_lib.show_progress(load_config(TINY, ["progress_bars=false"]))
    monkeypatch.setattr(run_lib.sys.stderr, "isatty", lambda: False)
    assert not run_lib.show_progress(config)
