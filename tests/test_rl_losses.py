"""Tests of the policy loss, its aggregation modes, the KL estimators and the value loss."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zero_rl.rl import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    RATIO_LEVELS,
    LossConfig,
    policy_loss,
)

# ----------------------------------------------------------------------------------------------
# Layouts: the same sequences padded (one per row) and packed (several per row, segment ids).
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Layout:
    """Token arrays of one layout plus where each sequence's response tokens sit in it."""

    arrays: dict[str, np.ndarray]
    mask_bt: np.ndarray
    segment_ids_bt: np.ndarray | None
    response_positions: list[tuple[int, np.ndarray]]  # (row, time indices) per sequence


def _layouts(sequences, prompt_lens, padded_len, packed_rows, packed_len, rng):
    """Lays out `sequences` (dicts name -> [response_len] array) padded and packed.

    Prompt and padding positions get random junk so that a masking bug changes the result.
    """
    names = list(sequences[0])

    def empty(rows, length):
        return {name: rng.normal(size=(rows, length)) - 1.0 for name in names}

    padded = Layout(
        empty(len(sequences), padded_len), np.zeros((len(sequences), padded_len)), None, []
    )
    for row, (seq, prompt_len) in enumerate(zip(sequences, prompt_lens)):
        times = prompt_len + np.arange(len(seq[names[0]]))
        for name in names:
            padded.arrays[name][row, times] = seq[name]
        padded.mask_bt[row, times] = 1.0
        padded.response_positions.append((row, times))

    packed = Layout(
        empty(len(packed_rows), packed_len),
        np.zeros((len(packed_rows), packed_len)),
        np.zeros((len(packed_rows), packed_len), np.int32),
        [None] * len(sequences),
    )
    for row, sequence_indices in enumerate(packed_rows):
        start = 0
        for segment, index in enumerate(sequence_indices, start=1):
            response_len = len(sequences[index][names[0]])
            total = prompt_lens[index] + response_len
            packed.segment_ids_bt[row, start : start + total] = segment
            times = start + prompt_lens[index] + np.arange(response_len)
            for name in names:
                packed.arrays[name][row, times] = sequences[index][name]
            packed.mask_bt[row, times] = 1.0
            packed.response_positions[index] = (row, times)
            start += total
        assert start <= packed_len
    return padded, packed


def _random_sequences(rng, lengths, spread=0.3):
    """Random sequences; the second has ratios near e^1.5 > dual_clip and negative advantages,
    so the dual clip binds at token and at sequence level."""
    sequences = []
    for i, length in enumerate(lengths):
        old = np.log(rng.uniform(0.05, 0.95, size=length))
        shift, advantages = 0.0, np.full(length, rng.normal()) + rng.normal(scale=0.3, size=length)
        if i == 1:
            shift, advantages = 1.5, -1.0 - np.abs(advantages)
        sequences.append(
            {
                "logprobs": old + shift + rng.normal(scale=spread, size=length),
                "old_logprobs": old,
                "advantages": advantages,
                "ref_logprobs": old + rng.normal(scale=0.3, size=length),
                "entropy": rng.uniform(0.1, 2.0, size=length),
                "sampler_logprobs": old + rng.normal(scale=0.05, size=length),
            }
        )
    return sequences


def _loss_inputs(layout, dtype=jnp.float32):
    a = {name: jnp.asarray(x, dtype) for name, x in layout.arrays.items()}
    segment_ids = None if layout.segment_ids_bt is None else jnp.asarray(layout.segment_ids_bt)
    return a, jnp.asarray(layout.mask_bt, dtype), segment_ids


def _call_policy_loss(config, layout, *, jit=False):
    a, mask_bt, segment_ids_bt = _loss_inputs(layout)
    loss_fn = jax.jit(policy_loss, static_argnames="config") if jit else policy_loss
    return loss_fn(
        a["logprobs"],
        a["old_logprobs"],
        a["advantages"],
        mask_bt,
        config=config,
        ref_logprobs_bt=a["ref_logprobs"],
        entropy_bt=a["entropy"],
        sampler_logprobs_bt=a["sampler_logprobs"],
        segment_ids_bt=segment_ids_bt,
    )


# ----------------------------------------------------------------------------------------------
# An independent float64 NumPy reference, written per sequence.
# ----------------------------------------------------------------------------------------------


def _np_kl(logp, ref, estimator, clamp):
    log_r = ref - logp
    kl = {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": np.exp(log_r) - 1.0 - log_r}[estimator]
    return kl if clamp is None else np.clip(kl, -clamp, clamp)


def _np_aggregate(per_sequence_losses, mode, norm_len, num_sequences=None):
    """`num_sequences`: Dr. GRPO's count of sequences, masked ones included."""
    if mode == "token_mean":
        return np.concatenate(per_sequence_losses).sum() / sum(map(len, per_sequence_losses))
    if mode == "seq_mean_token_mean":
        return np.mean([loss.mean() for loss in per_sequence_losses])
    num_sequences = num_sequences or len(per_sequence_losses)
    return sum(loss.sum() for loss in per_sequence_losses) / (num_sequences * norm_len)


def _np_policy_loss(sequences, c: LossConfig):
    pg, kl, ent, ratios = [], [], [], []
    for s in sequences:
        log_ratio = s["logprobs"] - s["old_logprobs"]
        if c.ratio_level == "sequence":
            log_ratio = np.full_like(log_ratio, log_ratio.mean())
        ratio = np.exp(log_ratio)
        adv = s["advantages"]
        loss = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - c.clip_low, 1 + c.clip_high))
        if c.dual_clip is not None:
            loss = np.where(adv < 0, np.minimum(loss, -c.dual_clip * adv), loss)
        if c.tis_cap is not None:
            loss = loss * np.minimum(np.exp(s["old_logprobs"] - s["sampler_logprobs"]), c.tis_cap)
        pg.append(loss)
        kl.append(_np_kl(s["logprobs"], s["ref_logprobs"], c.kl_estimator, c.kl_clamp))
        ent.append(s["entropy"])
        ratios.append(ratio)
    agg = lambda x: _np_aggregate(x, c.aggregation, c.norm_len)
    all_ratios = np.concatenate(ratios)
    all_adv = np.concatenate([s["advantages"] for s in sequences])
    metrics = {
        "pg_loss": agg(pg),
        "kl_loss": agg(kl),
        "entropy_loss": agg(ent),
        "kl": np.concatenate(kl).mean(),
        "entropy": np.concatenate(ent).mean(),
        "ratio_mean": all_ratios.mean(),
        "ratio_max": all_ratios.max(),
        "ratio_min": all_ratios.min(),
        "clip_frac_low": np.mean((all_adv < 0) & (all_ratios < 1 - c.clip_low)),
        "clip_frac_high": np.mean((all_adv > 0) & (all_ratios > 1 + c.clip_high)),
        "sampler_logprob_gap_mean": np.mean(
            np.concatenate([np.abs(s["old_logprobs"] - s["sampler_logprobs"]) for s in sequences])
        ),
    }
    if c.dual_clip is not None:
        metrics["dual_clip_frac"] = np.mean((all_adv < 0) & (all_ratios > c.dual_clip))
    loss = metrics["pg_loss"] + c.kl_coef * metrics["kl_loss"] - c.entropy_coef * agg(ent)
    return loss, metrics


CONFIG_GRID = [
    LossConfig(
        ratio_level=level,
        aggregation=agg,
        norm_len=16,
        dual_clip=dual,
        kl_coef=0.05,
        kl_estimator=estimator,
        kl_clamp=clamp,
        entropy_coef=0.01,
        clip_low=clip_low,
        clip_high=0.28,
        tis_cap=tis,
    )
    for (level, agg, dual, estimator, clamp, tis, clip_low) in [
        ("token", "token_mean", None, "k3", None, None, 0.2),
        ("token", "seq_mean_token_mean", 3.0, "k1", 0.5, 2.0, 0.1),
        ("token", "seq_mean_token_sum_norm", None, "k2", None, None, 0.2),
        # GSPO is defined with the sequence-mean-token-mean aggregation only.
        ("sequence", "seq_mean_token_mean", 3.0, "k3", 10.0, None, 0.2),
        ("sequence", "seq_mean_token_mean", None, "k1", None, 1.5, 0.2),
        ("sequence", "seq_mean_token_mean", 2.0, "k2", 0.1, None, 0.1),
    ]
]
LENGTHS = (3, 5, 2, 4)
PROMPT_LENS = (2, 1, 3, 2)
PACKED_ROWS = ((0, 1), (2, 3))


# ----------------------------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------------------------


def test_config_from_mapping_and_is_hashable():
    config = LossConfig(**{"clip_low": 0.2, "clip_high": 0.28, "aggregation": "token_mean"})
    assert config.clip_high == 0.28
    assert hash(config) == hash(LossConfig(clip_high=0.28))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aggregation": "mean"}, "unknown aggregation 'mean'; valid: 'token_mean'"),
        ({"ratio_level": "seq"}, "unknown ratio_level 'seq'; valid: 'token', 'sequence'"),
        ({"kl_estimator": "k4"}, "unknown kl_estimator 'k4'; valid: 'k1', 'k2', 'k3'"),
        ({"aggregation": "seq_mean_token_sum_norm"}, "needs a positive norm_len"),
        ({"dual_clip": 1.0}, "dual_clip must be > 1"),
        ({"clip_low": 1.0}, "clip_low must be in"),
        ({"kl_clamp": 0.0}, "kl_clamp must be > 0"),
        ({"tis_cap": -1.0}, "tis_cap must be > 0"),
        (
            {"ratio_level": "sequence"},
            r"ratio_level='sequence' \(GSPO\) needs aggregation='seq_mean_token_mean'; "
            "got aggregation='token_mean'",
        ),
        (
            {"ratio_level": "sequence", "aggregation": "seq_mean_token_sum_norm", "norm_len": 4},
            "needs aggregation='seq_mean_token_mean'",
        ),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**overrides)


def test_missing_inputs_and_bad_shapes_are_named():
    x_bt = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="needs ref_logprobs_bt"):
        policy_loss(x_bt, x_bt, x_bt, x_bt, config=LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="needs entropy_bt"):
        policy_loss(x_bt, x_bt, x_bt, x_bt, config=LossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="needs sampler_logprobs_bt"):
        policy_loss(x_bt, x_bt, x_bt, x_bt, config=LossConfig(tis_cap=2.0))
    with pytest.raises(ValueError, match=r"advantages_bt has shape \(2, 4\)"):
        policy_loss(x_bt, x_bt, jnp.zeros((2, 4)), x_bt)
    with pytest.raises(ValueError, match=r"must be \[batch, time\]"):
        policy_loss(x_bt[0], x_bt[0], x_bt[0], x_bt[0])


# ----------------------------------------------------------------------------------------------
# Hand-computed values.
# ----------------------------------------------------------------------------------------------


def _ratios_case(ratios, advantages, config, mask=None):
    ratios = jnp.asarray([ratios], jnp.float32)
    old_bt = jnp.full(ratios.shape, -1.0)
    mask_bt = jnp.ones(ratios.shape) if mask is None else jnp.asarray([mask], jnp.float32)
    adv_bt = jnp.asarray([advantages], jnp.float32)
    return policy_loss(old_bt + jnp.log(ratios), old_bt, adv_bt, mask_bt, config=config)


def test_clipped_surrogate_by_hand():
    # r=1.5, A=+1: clipped high -> -1.2;  r=0.5, A=-1: clipped low -> 0.8;
    # r=1.1, A=-1: unclipped -> 1.1;      r=0.9, A=+1: unclipped -> -0.9.
    loss, m = _ratios_case([1.5, 0.5, 1.1, 0.9], [1.0, -1.0, -1.0, 1.0], LossConfig())
    np.testing.assert_allclose(loss, (-1.2 + 0.8 + 1.1 - 0.9) / 4, rtol=1e-6)
    np.testing.assert_allclose(m["clip_frac_low"], 0.25)
    np.testing.assert_allclose(m["clip_frac_high"], 0.25)
    np.testing.assert_allclose(m["ratio_mean"], 1.0, rtol=1e-6)
    np.testing.assert_allclose([m["ratio_max"], m["ratio_min"]], [1.5, 0.5], rtol=1e-6)
    # approx_kl = mean(r - 1 - log r).
    expected_kl = np.mean([r - 1 - math.log(r) for r in (1.5, 0.5, 1.1, 0.9)])
    np.testing.assert_allclose(m["approx_kl"], expected_kl, rtol=1e-5)


def test_clip_higher_and_dual_clip_by_hand():
    # DAPO clip-higher: r=1.5, A=1 is clipped at 1.28 instead of 1.2.
    loss, _ = _ratios_case([1.5], [1.0], LossConfig(clip_high=0.28))
    np.testing.assert_allclose(loss, -1.28, rtol=1e-6)
    # r=5, A=-2: plain PPO loss is 10; dual clip c=3 caps it at 6.
    loss, m = _ratios_case([5.0, 0.5], [-2.0, 1.0], LossConfig(dual_clip=3.0))
    np.testing.assert_allclose(loss, (6.0 + -0.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(m["dual_clip_frac"], 0.5)
    loss, _ = _ratios_case([5.0, 0.5], [-2.0, 1.0], LossConfig())
    np.testing.assert_allclose(loss, (10.0 + -0.5) / 2, rtol=1e-6)


def test_bfloat16_inputs_are_computed_in_float32():
    # Exact in bf16; their ratios exp(-1/32), exp(1/64) are not (bf16 steps near 1: 1/256, 1/128).
    logprobs_bt = jnp.array([[-5.0, -1.0]], jnp.bfloat16)
    old_bt = jnp.array([[-4.96875, -1.015625]], jnp.bfloat16)
    adv_bt, mask_bt = jnp.ones((1, 2)), jnp.ones((1, 2))
    loss, metrics = policy_loss(logprobs_bt, old_bt, adv_bt, mask_bt)
    assert loss.dtype == jnp.float32
    ratios = np.exp(np.asarray(logprobs_bt, np.float64) - np.asarray(old_bt, np.float64))
    np.testing.assert_allclose(metrics["ratio_mean"], ratios.mean(), rtol=1e-6)
    np.testing.assert_allclose(loss, -ratios.mean(), rtol=1e-6)


GSPO = LossConfig(ratio_level="sequence", aggregation="seq_mean_token_mean")


def test_sequence_ratio_by_hand():
    # GSPO: token ratios 2 and 1 (a masked third, 3, does not count): s = exp((log 2 + 0) / 2)
    # = sqrt(2) on both tokens (a summed log-ratio would give 2). With A = -1 nothing is
    # clipped: each token's loss is sqrt(2).
    ratios_bt = jnp.asarray([[2.0, 1.0, 3.0]])
    old_bt = jnp.full((1, 3), -1.0)
    mask_bt = jnp.asarray([[1.0, 1.0, 0.0]])
    logprobs_bt = old_bt + jnp.log(ratios_bt)

    def loss_fn(logprobs_bt, adv_bt):
        return policy_loss(logprobs_bt, old_bt, adv_bt, mask_bt, config=GSPO)

    (loss, m), grad_bt = jax.value_and_grad(loss_fn, has_aux=True)(
        logprobs_bt, jnp.full((1, 3), -1.0)
    )
    np.testing.assert_allclose(loss, math.sqrt(2.0), rtol=1e-6)
    np.testing.assert_allclose([m["ratio_max"], m["ratio_min"]], [math.sqrt(2.0)] * 2, rtol=1e-6)
    # GSPO-token: d loss / d log pi_t = -A_t * s / |y| = sqrt(2) / 2 on each counted token.
    np.testing.assert_allclose(grad_bt, [[math.sqrt(0.5), math.sqrt(0.5), 0.0]], rtol=1e-6)
    # Per-token advantages stay per token: A = (-1, -3) gives gradients (1, 3) * sqrt(2) / 2.
    grad_bt = jax.grad(lambda x: loss_fn(x, jnp.asarray([[-1.0, -3.0, 5.0]]))[0])(logprobs_bt)
    np.testing.assert_allclose(grad_bt, [[math.sqrt(0.5), 3 * math.sqrt(0.5), 0.0]], rtol=1e-6)


def test_kl_loss_entropy_bonus_and_sampler_metrics_by_hand():
    logp_bt = jnp.log(jnp.array([[0.5, 0.2]]))
    ref_bt = jnp.log(jnp.array([[0.25, 0.2]]))
    sampler_bt = logp_bt + jnp.array([[0.1, -0.3]])
    entropy_bt = jnp.array([[1.0, 3.0]])
    adv_bt = jnp.array([[1.0, -1.0]])
    config = LossConfig(kl_coef=0.1, entropy_coef=0.01, tis_cap=1.2)
    loss, m = policy_loss(
        logp_bt,
        logp_bt,
        adv_bt,
        jnp.ones((1, 2)),
        config=config,
        ref_logprobs_bt=ref_bt,
        entropy_bt=entropy_bt,
        sampler_logprobs_bt=sampler_bt,
    )
    # TIS weights: min(e^-0.1, 1.2) = 0.904837, min(e^0.3, 1.2) = 1.2; on-policy pg = -A.
    pg = (-1.0 * math.exp(-0.1) + 1.0 * 1.2) / 2
    kl = (0.5 - 1.0 + math.log(2.0) + 0.0) / 2
    np.testing.assert_allclose(m["pg_loss"], pg, rtol=1e-6)
    np.testing.assert_allclose(m["kl"], kl, rtol=1e-6)
    np.testing.assert_allclose(m["entropy"], 2.0)
    np.testing.assert_allclose(loss, pg + 0.1 * kl - 0.01 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(m["sampler_logprob_gap_mean"], 0.2, rtol=1e-6)
    np.testing.assert_allclose(m["sampler_logprob_gap_max"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(m["tis_weight_mean"], (math.exp(-0.1) + 1.2) / 2, rtol=1e-6)


def test_sampler_gap_compares_sampler_to_old_logprobs():
    # After a minibatch update the trained policy has moved (logp = old + 0.5); the gap is the
    # sampler's numeric mismatch with the rollout's recomputed log-probs, |0.1| and |-0.3|.
    old_bt = jnp.log(jnp.array([[0.5, 0.2]]))
    _, m = policy_loss(
        old_bt + 0.5,
        old_bt,
        jnp.ones((1, 2)),
        jnp.ones((1, 2)),
        sampler_logprobs_bt=old_bt + jnp.array([[0.1, -0.3]]),
    )
    np.testing.assert_allclose(m["sampler_logprob_gap_mean"], 0.2, rtol=1e-5)
    np.testing.assert_allclose(m["sampler_logprob_gap_max"], 0.3, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Random inputs against the float64 reference, padded == packed.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIG_GRID, ids=lambda c: f"{c.ratio_level}-{c.aggregation}")
def test_matches_float64_reference_padded_and_packed(config):
    rng = np.random.default_rng(0)
    sequences = _random_sequences(rng, LENGTHS)
    padded, packed = _layouts(sequences, PROMPT_LENS, 9, PACKED_ROWS, 14, rng)
    expected_loss, expected_metrics = _np_policy_loss(sequences, config)
    if config.dual_clip is not None:
        assert expected_metrics["dual_clip_frac"] > 0.0  # the dual clip binds somewhere
    for layout in (padded, packed):
        loss, metrics = _call_policy_loss(config, layout, jit=True)
        np.testing.assert_allclose(loss, expected_loss, rtol=2e-5, atol=1e-6)
        for name, value in expected_metrics.items():
            np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("config", CONFIG_GRID, ids=lambda c: f"{c.ratio_level}-{c.aggregation}")
def test_padded_and_packed_gradients_agree(config):
    rng = np.random.default_rng(1)
    sequences = _random_sequences(rng, LENGTHS)
    padded, packed = _layouts(sequences, PROMPT_LENS, 9, PACKED_ROWS, 14, rng)

    def grad_per_sequence(layout):
        a, mask_bt, segment_ids_bt = _loss_inputs(layout)

        def loss_fn(logprobs_bt):
            return policy_loss(
                logprobs_bt,
                a["old_logprobs"],
                a["advantages"],
                mask_bt,
                config=config,
                ref_logprobs_bt=a["ref_logprobs"],
                entropy_bt=a["entropy"],
                sampler_logprobs_bt=a["sampler_logprobs"],
                segment_ids_bt=segment_ids_bt,
            )[0]

        grad_bt = np.asarray(jax.grad(loss_fn)(a["logprobs"]))
        outside = np.ones_like(grad_bt, bool)
        for row, times in layout.response_positions:
            outside[row, times] = False
        np.testing.assert_array_equal(grad_bt[outside], 0.0)
        return [grad_bt[row, times] for row, times in layout.response_positions]

    for padded_grad, packed_grad in zip(grad_per_sequence(padded), grad_per_sequence(packed)):
        np.testing.assert_allclose(packed_grad, padded_grad, rtol=1e-5, atol=1e-7)


def test_non_finite_values_outside_the_mask_are_ignored():
    # E.g. -inf log-probs on padding, or no sampler log-prob on prompt tokens.
    rng = np.random.default_rng(7)
    sequences = _random_sequences(rng, LENGTHS)
    padded, packed = _layouts(sequences, PROMPT_LENS, 9, PACKED_ROWS, 14, rng)
    for layout in (padded, packed):
        uncounted = layout.mask_bt == 0
        for name, junk in zip(layout.arrays, [np.nan, -np.inf, np.inf, np.nan, np.inf, np.nan]):
            layout.arrays[name][uncounted] = junk
    for config in CONFIG_GRID:
        expected_loss, _ = _np_policy_loss(sequences, config)
        for layout in (padded, packed):
            a, mask_bt, segment_ids_bt = _loss_inputs(layout)

            def loss_fn(
                logprobs_bt, a=a, mask_bt=mask_bt, segment_ids_bt=segment_ids_bt, config=config
            ):
                return policy_loss(
                    logprobs_bt,
                    a["old_logprobs"],
                    a["advantages"],
                    mask_bt,
                    config=config,
                    ref_logprobs_bt=a["ref_logprobs"],
                    entropy_bt=a["entropy"],
                    sampler_logprobs_bt=a["sampler_logprobs"],
                    segment_ids_bt=segment_ids_bt,
                )

            (loss, metrics), grad_bt = jax.value_and_grad(loss_fn, has_aux=True)(a["logprobs"])
            np.testing.assert_allclose(loss, expected_loss, rtol=2e-5, atol=1e-6)
            assert all(np.isfinite(value) for value in metrics.values()), metrics
            assert np.all(np.asarray(grad_bt)[layout.mask_bt == 0] == 0.0)
            assert np.all(np.isfinite(grad_bt))


def test_zero_mask_equals_dropping_the_sequence():
    rng = np.random.default_rng(2)
    sequences = _random_sequences(rng, LENGTHS)
    padded, _ = _layouts(sequences, PROMPT_LENS, 9, PACKED_ROWS, 14, rng)
    kept, _ = _layouts(
        sequences[:2] + sequences[3:], PROMPT_LENS[:2] + PROMPT_LENS[3:], 9, ((0,),), 9, rng
    )
    padded.mask_bt[2] = 0.0  # e.g. a truncated response under overlong filtering
    for config in CONFIG_GRID:
        got, _ = _call_policy_loss(config, padded)
        expected, _ = _call_policy_loss(config, kept)
        if config.aggregation == "seq_mean_token_sum_norm":
            # Dr. GRPO's constant counts the masked row: 4 sequences instead of the kept 3.
            expected = expected * 3 / 4
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=str(config))


def test_jit_matches_eager_for_every_mode():
    rng = np.random.default_rng(6)
    sequences = _random_sequences(rng, LENGTHS)
    _, packed = _layouts(sequences, PROMPT_LENS, 9, PACKED_ROWS, 14, rng)
    for config in CONFIG_GRID:
        eager_loss, eager_metrics = _call_policy_loss(config, packed)
        jit_loss, jit_metrics = _call_policy_loss(config, packed, jit=True)
        np.testing.assert_allclose(jit_loss, eager_loss, rtol=1e-6)
        assert set(jit_metrics) == set(eager_metrics)


def test_every_config_field_is_covered_by_the_grid():
    # Guards the reference test against a new LossConfig field silently left untested.
    fields = {f.name for f in dataclasses.fields(LossConfig)}
    varied = {
        name
        for name in fields
        if len({getattr(c, name) for c in CONFIG_GRID} | {getattr(LossConfig(), name)}) > 1
    }
    assert varied == fields, fields - varied
    assert {c.aggregation for c in CONFIG_GRID} == set(AGGREGATIONS)
    assert {c.ratio_level for c in CONFIG_GRID} == set(RATIO_LEVELS)
    assert {c.kl_estimator for c in CONFIG_GRID} == set(KL_ESTIMATORS)
