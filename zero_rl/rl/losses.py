"""The clipped policy-gradient loss of the GRPO family, its aggregation modes, and a value loss.

All functions are pure in their arrays and take static options as keyword arguments, so they can
be called inside `jax.jit`. Token arrays are `[batch, time]` with the mask and packed-segment
conventions of `zero_rl.rl.masking`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from zero_rl.rl.kl import KL_ESTIMATORS, MAX_LOG_RATIO, kl_estimate
from zero_rl.rl.masking import (
    at_least_float32,
    check_choice,
    check_token_arrays,
    effective_mask,
    masked_max,
    masked_mean,
    masked_min,
    sequence_mean_bt,
    sequence_sums,
    zero_outside,
)

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
RATIO_LEVELS = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Options of `policy_loss`; the fields mirror the `rl.loss` config keys.

    Attributes:
      clip_low: ratio lower bound is 1 - clip_low.
      clip_high: ratio upper bound is 1 + clip_high (DAPO's clip-higher sets it above clip_low).
      dual_clip: when set (> 1), the loss of a negative-advantage token is capped at
        -dual_clip * A (dual-clip PPO, Ye et al. 2020), bounding updates from huge ratios.
      ratio_level: "token" (PPO/GRPO) or "sequence" (GSPO-token: the length-normalised
        sequence ratio on every token of the sequence); "sequence" needs the aggregation GSPO
        is defined with, "seq_mean_token_mean".
      aggregation: how per-token losses become a scalar: "token_mean" (DAPO), mean over
        sequences of the token mean ("seq_mean_token_mean", GRPO), or mean over sequences of the
        token sum divided by the constant `norm_len` ("seq_mean_token_sum_norm", Dr. GRPO:
        the sum over the batch divided by sequences x norm_len, every sequence counted).
      norm_len: Dr. GRPO's constant normaliser, e.g. the maximum response length.
      kl_coef: weight of the KL-to-reference loss term (0 disables it).
      kl_estimator: "k1", "k2" or "k3" (see `zero_rl.rl.kl`).
      kl_clamp: when set, each per-token KL estimate is clipped to [-kl_clamp, kl_clamp].
      entropy_coef: weight of the entropy bonus (subtracted from the loss).
      tis_cap: when set, each token's policy loss is weighted by the truncated importance ratio
        min(pi_old / pi_sampler, tis_cap) correcting for sampler/trainer numeric mismatch (Yao
        et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training").
        Needs `sampler_logprobs_bt` and old log-probs recomputed by the trainer.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    ratio_level: str = "token"
    aggregation: str = "token_mean"
    norm_len: int | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_clamp: float | None = None
    entropy_coef: float = 0.0
    tis_cap: float | None = None

    def __post_init__(self):
        check_choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _check_aggregation_options(self.aggregation, self.norm_len)
        if self.ratio_level == "sequence" and self.aggregation != "seq_mean_token_mean":
            # GSPO's objective averages each sequence's tokens, then the sequences; any other
            # weighting of the sequence ratio is an objective no paper defines.
            raise ValueError(
                f"ratio_level='sequence' (GSPO) needs aggregation='seq_mean_token_mean'; "
                f"got aggregation={self.aggregation!r}"
            )
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low must be in [0, 1); got {self.clip_low}")
        if self.clip_high < 0.0:
            raise ValueError(f"clip_high must be >= 0; got {self.clip_high}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 or None; got {self.dual_clip}")
        if self.kl_clamp is not None and self.kl_clamp <= 0.0:
            raise ValueError(f"kl_clamp must be > 0 or None; got {self.kl_clamp}")
        if self.tis_cap is not None and self.tis_cap <= 0.0:
            raise ValueError(f"tis_cap must be > 0 or None; got {self.tis_cap}")


def _check_aggregation_options(aggregation: str, norm_len: int | None) -> None:
    if aggregation == "seq_mean_token_sum_norm" and (norm_len is None or norm_len <= 0):
        raise ValueError(
            f"aggregation 'seq_mean_token_sum_norm' needs a positive norm_len; got {norm_len}"
        )


def aggregate(
    loss_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    mode: str = "token_mean",
    norm_len: int | None = None,
    segment_ids_bt: jax.Array | None = None,
) -> jax.Array:
    """Reduces per-token losses to a scalar.

    Under "token_mean" and "seq_mean_token_mean", sequences (rows, or packed segments) with no
    counted token, e.g. truncated responses under overlong filtering or groups dropped by
    dynamic sampling, count in no denominator. "seq_mean_token_sum_norm" keeps Dr. GRPO's
    constant normaliser: every sequence of the batch (every row when padded, every segment id
    present when packed) counts, masked or not, so the loss scale does not depend on the mask.

    Args:
      loss_bt: [batch, time] per-token losses.
      mask_bt: [batch, time] 1.0 on counted tokens.
      mode: "token_mean": sum / number of counted tokens.
        "seq_mean_token_mean": mean over sequences of each sequence's token mean.
        "seq_mean_token_sum_norm": sum over all tokens / (number of sequences * norm_len).
      norm_len: the constant of "seq_mean_token_sum_norm".
      segment_ids_bt: packed segment ids or None.

    Returns:
      Scalar loss (0 when nothing is counted).
    """
    check_choice("aggregation", mode, AGGREGATIONS)
    _check_aggregation_options(mode, norm_len)
    mask_bt = effective_mask(mask_bt, segment_ids_bt)
    if mode == "token_mean":
        return masked_mean(loss_bt, mask_bt)
    sums_bs, _ = sequence_sums(zero_outside(loss_bt, mask_bt), segment_ids_bt)
    if mode == "seq_mean_token_mean":
        counts_bs, _ = sequence_sums(mask_bt, segment_ids_bt)
        num_counted = jnp.maximum(jnp.sum(counts_bs > 0), 1)
        return jnp.sum(sums_bs / jnp.maximum(counts_bs, 1.0)) / num_counted
    return jnp.sum(sums_bs) / (num_sequences(loss_bt.shape, segment_ids_bt) * norm_len)


def num_sequences(shape_bt: tuple[int, int], segment_ids_bt: jax.Array | None = None) -> jax.Array:
    """Sequences of a [batch, time] layout, counted or not: the rows when padded, the distinct
    nonzero segment ids of each row when packed. A float32 scalar."""
    if segment_ids_bt is None:
        return jnp.float32(shape_bt[0])
    present_bs, _ = sequence_sums((segment_ids_bt > 0).astype(jnp.float32), segment_ids_bt)
    return jnp.sum(present_bs > 0).astype(jnp.float32)


def policy_loss(
    logprobs_bt: jax.Array,
    old_logprobs_bt: jax.Array,
    advantages_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    config: LossConfig = LossConfig(),
    ref_logprobs_bt: jax.Array | None = None,
    entropy_bt: jax.Array | None = None,
    sampler_logprobs_bt: jax.Array | None = None,
    segment_ids_bt: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped importance-ratio surrogate + KL-to-reference term - entropy bonus.

    Per token, with ratio r = pi / pi_old and advantage A:
      pg = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)),
      and for A < 0 with dual clip c: pg = min(pg, -c A).
    With ratio_level="sequence" this is GSPO-token (Zheng et al. 2025): every token of sequence
    i takes the value of the length-normalised ratio s_i = exp(mean_t log pi(y_t) / pi_old(y_t))
    with the gradient of a token ratio, s_i,t = sg(s_i) * pi(y_t) / sg(pi(y_t)), so each token
    keeps its own advantage; with one advantage per sequence its gradient is GSPO's. The ratio is
    taken against `old_logprobs_bt`, the log-probs of the policy that produced the rollout, so
    several minibatch updates per rollout stay correct.

    Args:
      logprobs_bt: [batch, time] log-probs of the taken tokens under the trained policy.
      old_logprobs_bt: [batch, time] log-probs under the rollout policy (no gradient).
      advantages_bt: [batch, time] advantages (no gradient).
      mask_bt: [batch, time] 1.0 on counted response tokens; zero whole sequences to drop them
        (overlong filtering, dynamically dropped groups).
      config: LossConfig.
      ref_logprobs_bt: [batch, time] reference-model log-probs; needed when kl_coef != 0.
      entropy_bt: [batch, time] per-token entropy of the trained policy; needed when
        entropy_coef != 0.
      sampler_logprobs_bt: [batch, time] log-probs reported by the sampler, for the
        sampler/trainer gap metrics and truncated importance sampling.
      segment_ids_bt: [batch, time] packed segment ids, or None for one sequence per row.

    Returns:
      `(loss, metrics)`: a scalar loss and a dict of scalar metrics: pg_loss, clip_frac_low,
      clip_frac_high, approx_kl (k3 estimate of KL(pi_old || pi)), ratio_mean/max/min; plus
      dual_clip_frac, kl_loss and kl (token mean, to the reference), entropy_loss and entropy,
      sampler_logprob_gap_mean/max (|log pi_sampler - log pi_old| per token: the numeric
      mismatch between sampler and trainer on the same weights, free of the policy's drift over
      the minibatches) and tis_weight_mean when they apply.
      Token metrics are means over counted tokens.
    """
    check_token_arrays(
        logprobs_bt=logprobs_bt,
        old_logprobs_bt=old_logprobs_bt,
        advantages_bt=advantages_bt,
        mask_bt=mask_bt,
        ref_logprobs_bt=ref_logprobs_bt,
        entropy_bt=entropy_bt,
        sampler_logprobs_bt=sampler_logprobs_bt,
        segment_ids_bt=segment_ids_bt,
    )
    if config.kl_coef != 0.0 and ref_logprobs_bt is None:
        raise ValueError(f"kl_coef={config.kl_coef} needs ref_logprobs_bt")
    if config.entropy_coef != 0.0 and entropy_bt is None:
        raise ValueError(f"entropy_coef={config.entropy_coef} needs entropy_bt")
    if config.tis_cap is not None and sampler_logprobs_bt is None:
        raise ValueError(f"tis_cap={config.tis_cap} needs sampler_logprobs_bt")
    mask_bt = effective_mask(mask_bt, segment_ids_bt)

    def prepare(x_bt):
        # bfloat16 resolves a ratio near 1 only to 0.4-0.8% and its token sums stop growing
        # after a few hundred terms, so compute in float32 at least. Zeroing uncounted positions
        # up front keeps their junk out of the backward pass, where a select alone would still
        # meet 0 * inf.
        return None if x_bt is None else zero_outside(at_least_float32(x_bt), mask_bt)

    logprobs_bt, old_logprobs_bt, advantages_bt = map(
        prepare, (logprobs_bt, old_logprobs_bt, advantages_bt)
    )
    ref_logprobs_bt, entropy_bt, sampler_logprobs_bt = map(
        prepare, (ref_logprobs_bt, entropy_bt, sampler_logprobs_bt)
    )
    old_logprobs_bt = jax.lax.stop_gradient(old_logprobs_bt)
    advantages_bt = jax.lax.stop_gradient(advantages_bt)
    aggregate_tokens = lambda x_bt: aggregate(
        x_bt,
        mask_bt,
        mode=config.aggregation,
        norm_len=config.norm_len,
        segment_ids_bt=segment_ids_bt,
    )

    token_log_ratio_bt = logprobs_bt - old_logprobs_bt
    if config.ratio_level == "token":
        log_ratio_bt = jnp.clip(token_log_ratio_bt, -MAX_LOG_RATIO, MAX_LOG_RATIO)
    else:
        sequence_log_ratio_bt = sequence_mean_bt(token_log_ratio_bt, mask_bt, segment_ids_bt)
        sequence_log_ratio_bt = jnp.clip(sequence_log_ratio_bt, -MAX_LOG_RATIO, MAX_LOG_RATIO)
        # GSPO-token: the value of the sequence ratio, the gradient of the token's log-prob.
        log_ratio_bt = (
            jax.lax.stop_gradient(sequence_log_ratio_bt)
            + logprobs_bt
            - jax.lax.stop_gradient(logprobs_bt)
        )
    ratio_bt = jnp.exp(log_ratio_bt)
    clipped_ratio_bt = jnp.clip(ratio_bt, 1.0 - config.clip_low, 1.0 + config.clip_high)
    pg_bt = jnp.maximum(-advantages_bt * ratio_bt, -advantages_bt * clipped_ratio_bt)
    negative_bt = advantages_bt < 0
    if config.dual_clip is not None:
        pg_bt = jnp.where(negative_bt, jnp.minimum(pg_bt, -config.dual_clip * advantages_bt), pg_bt)
    if config.tis_cap is not None:
        sampler_log_ratio_bt = jax.lax.stop_gradient(old_logprobs_bt - sampler_logprobs_bt)
        tis_weight_bt = jnp.minimum(
            jnp.exp(jnp.minimum(sampler_log_ratio_bt, MAX_LOG_RATIO)), config.tis_cap
        )
        pg_bt = pg_bt * tis_weight_bt
    pg_loss = aggregate_tokens(pg_bt)
    loss = pg_loss

    ratio_bt = jax.lax.stop_gradient(ratio_bt)
    metrics = {
        "pg_loss": pg_loss,
        "clip_frac_low": masked_mean(negative_bt & (ratio_bt < 1.0 - config.clip_low), mask_bt),
        "clip_frac_high": masked_mean(
            (advantages_bt > 0) & (ratio_bt > 1.0 + config.clip_high), mask_bt
        ),
        "approx_kl": masked_mean(
            kl_estimate(old_logprobs_bt, jax.lax.stop_gradient(logprobs_bt), estimator="k3"),
            mask_bt,
        ),
        "ratio_mean": masked_mean(ratio_bt, mask_bt),
        "ratio_max": masked_max(ratio_bt, mask_bt),
        "ratio_min": masked_min(ratio_bt, mask_bt),
    }
    if config.dual_clip is not None:
        metrics["dual_clip_frac"] = masked_mean(
            negative_bt & (ratio_bt > config.dual_clip), mask_bt
        )
    if config.tis_cap is not None:
        metrics["tis_weight_mean"] = masked_mean(tis_weight_bt, mask_bt)
    # A term with coefficient 0 is left out of the loss rather than multiplied by 0, which would
    # still backpropagate through it (XLA keeps 0 * x because x may be inf or nan).
    if ref_logprobs_bt is not None:
        kl_input_bt = logprobs_bt if config.kl_coef else jax.lax.stop_gradient(logprobs_bt)
        kl_bt = kl_estimate(
            kl_input_bt,
            jax.lax.stop_gradient(ref_logprobs_bt),
            estimator=config.kl_estimator,
            clamp=config.kl_clamp,
        )
        kl_loss = aggregate_tokens(kl_bt)
        if config.kl_coef:
            loss = loss + config.kl_coef * kl_loss
        metrics["kl_loss"] = kl_loss
        metrics["kl"] = masked_mean(kl_bt, mask_bt)
    if entropy_bt is not None:
        entropy_input_bt = entropy_bt if config.entropy_coef else jax.lax.stop_gradient(entropy_bt)
        entropy_loss = aggregate_tokens(entropy_input_bt)
        if config.entropy_coef:
            loss = loss - config.entropy_coef * entropy_loss
        metrics["entropy_loss"] = entropy_loss
        metrics["entropy"] = masked_mean(entropy_input_bt, mask_bt)
    if sampler_logprobs_bt is not None:
        gap_bt = jnp.abs(old_logprobs_bt - sampler_logprobs_bt)
        metrics["sampler_logprob_gap_mean"] = masked_mean(gap_bt, mask_bt)
        metrics["sampler_logprob_gap_max"] = masked_max(gap_bt, mask_bt)
    metrics = {name: jax.lax.stop_gradient(value) for name, value in metrics.items()}
    return loss, metrics


def value_loss(
    values_bt: jax.Array,
    old_values_bt: jax.Array,
    returns_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    clip_range: float | None = 0.2,
    aggregation: str = "token_mean",
    norm_len: int | None = None,
    segment_ids_bt: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's clipped value loss: 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).

    Args:
      values_bt: [batch, time] value-head outputs of the trained critic.
      old_values_bt: [batch, time] values at rollout time (no gradient).
      returns_bt: [batch, time] targets, e.g. the returns from `gae` (no gradient).
      mask_bt: [batch, time] counted tokens.
      clip_range: c; None for the unclipped squared error.
      aggregation, norm_len, segment_ids_bt: as in `aggregate`.

    Returns:
      `(loss, metrics)` with metrics vf_clip_frac (share of tokens where the clipped term is the
      larger) and explained_variance (1 - Var[R - V] / Var[R] over counted tokens).
    """
    check_token_arrays(
        values_bt=values_bt,
        old_values_bt=old_values_bt,
        returns_bt=returns_bt,
        mask_bt=mask_bt,
        segment_ids_bt=segment_ids_bt,
    )
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"value clip_range must be > 0 or None; got {clip_range}")
    mask_bt = effective_mask(mask_bt, segment_ids_bt)
    values_bt, old_values_bt, returns_bt = (
        zero_outside(at_least_float32(x), mask_bt) for x in (values_bt, old_values_bt, returns_bt)
    )
    old_values_bt = jax.lax.stop_gradient(old_values_bt)
    returns_bt = jax.lax.stop_gradient(returns_bt)
    squared_error_bt = jnp.square(values_bt - returns_bt)
    if clip_range is None:
        loss_bt = 0.5 * squared_error_bt
        clipped_frac = jnp.zeros((), jnp.float32)
    else:
        clipped_values_bt = old_values_bt + jnp.clip(
            values_bt - old_values_bt, -clip_range, clip_range
        )
        clipped_error_bt = jnp.square(clipped_values_bt - returns_bt)
        loss_bt = 0.5 * jnp.maximum(squared_error_bt, clipped_error_bt)
        clipped_frac = masked_mean(clipped_error_bt > squared_error_bt, mask_bt)
    loss = aggregate(
        loss_bt, mask_bt, mode=aggregation, norm_len=norm_len, segment_ids_bt=segment_ids_bt
    )
    values_bt = jax.lax.stop_gradient(values_bt)
    residual_bt = returns_bt - values_bt
    residual_var = masked_mean(jnp.square(residual_bt - masked_mean(residual_bt, mask_bt)), mask_bt)
    returns_var = masked_mean(jnp.square(returns_bt - masked_mean(returns_bt, mask_bt)), mask_bt)
    metrics = {
        "vf_clip_frac": clipped_frac,
        "explained_variance": 1.0 - residual_var / jnp.maximum(returns_var, 1e-8),
    }
    return loss, metrics
