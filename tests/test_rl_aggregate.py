"""Hand-computed cases of the loss aggregation modes and the KL estimators."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from zero_rl.rl import aggregate, kl_estimate, num_sequences


def test_aggregation_modes_by_hand():
    loss_bt = jnp.array([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [5.0, 5.0, 5.0, 5.0]])
    mask_bt = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # The all-masked third row (an overlong or dropped response) counts in neither mean.
    np.testing.assert_allclose(aggregate(loss_bt, mask_bt, mode="token_mean"), 10 / 4)
    np.testing.assert_allclose(aggregate(loss_bt, mask_bt, mode="seq_mean_token_mean"), 3.0)
    # Dr. GRPO's normaliser is the constant rows x norm_len: the masked row counts there.
    got = aggregate(loss_bt, mask_bt, mode="seq_mean_token_sum_norm", norm_len=4)
    np.testing.assert_allclose(got, (6 + 4) / (3 * 4))
    np.testing.assert_allclose(aggregate(loss_bt, 0 * mask_bt), 0.0)
    # Packed: the same two sequences in one row, with padding (segment 0) in between.
    packed_bt = jnp.array([[1.0, 2.0, 3.0, 7.0, 4.0]])
    segments_bt = jnp.array([[1, 1, 1, 0, 2]])
    packed_mask_bt = jnp.ones((1, 5))  # the padding token is masked through its segment id
    got = aggregate(
        packed_bt, packed_mask_bt, mode="seq_mean_token_mean", segment_ids_bt=segments_bt
    )
    np.testing.assert_allclose(got, 3.0)
    # Packed with a fully masked third segment: it counts in Dr. GRPO's constant, 3 x 4.
    packed_bt = jnp.array([[1.0, 2.0, 3.0, 7.0, 4.0, 8.0, 8.0]])
    segments_bt = jnp.array([[1, 1, 1, 0, 2, 3, 3]])
    packed_mask_bt = jnp.array([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    got = aggregate(
        packed_bt,
        packed_mask_bt,
        mode="seq_mean_token_sum_norm",
        norm_len=4,
        segment_ids_bt=segments_bt,
    )
    np.testing.assert_allclose(got, (6 + 4) / (3 * 4))


def test_kl_estimators_by_hand():
    logp, ref = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    log2 = math.log(2.0)
    expected = {"k1": log2, "k2": 0.5 * log2**2, "k3": 0.5 - 1.0 + log2}
    for estimator, value in expected.items():
        np.testing.assert_allclose(
            kl_estimate(logp, ref, estimator=estimator), [[value]], rtol=1e-6
        )
    np.testing.assert_allclose(kl_estimate(logp, ref, estimator="k1", clamp=0.2), [[0.2]])
    np.testing.assert_allclose(kl_estimate(ref, logp, estimator="k1", clamp=0.2), [[-0.2]])
    with pytest.raises(ValueError, match="unknown kl_estimator 'kl'"):
        kl_estimate(logp, ref, estimator="kl")


def test_num_sequences_counts_masked_ones():
    assert float(num_sequences((3, 5))) == 3.0
    segments_bt = jnp.array([[1, 1, 2, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert float(num_sequences((3, 4), segments_bt)) == 3.0
