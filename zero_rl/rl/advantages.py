"""Advantage estimators: the GRPO family from group rewards, REINFORCE++, and GAE.

Group estimators take `rewards_pg` of shape [prompts, group samples] (one verifier reward per
sampled response) and return one advantage per response; `broadcast_to_tokens` spreads them
over the response tokens. Token-level estimators (REINFORCE++ with a per-token KL penalty, GAE
with a value head) work on `[batch, time]` arrays with the conventions of `zero_rl.rl.masking`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zero_rl.rl.masking import (
    check_choice,
    check_token_arrays,
    effective_mask,
    last_token_mask,
    masked_mean,
    masked_whiten,
    zero_outside,
)

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")


def zero_signal_groups(rewards_pg: jax.Array) -> jax.Array:
    """[prompts] bool: True where every sample of the group got the same reward.

    Such groups have zero advantage under any group baseline, so they contribute no gradient;
    DAPO's dynamic sampling drops them.
    """
    return jnp.max(rewards_pg, axis=1) == jnp.min(rewards_pg, axis=1)


def compute_advantages(
    rewards_pg: jax.Array,
    *,
    estimator: str = "grpo",
    eps: float = 1e-6,
    std_ddof: int = 1,
    group_mask_p: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sequence-level advantages from the rewards of groups of samples per prompt.

    Estimators (r: rewards of one group of G samples, R: all rewards of the batch):
      grpo (DeepSeekMath): (r - mean(r)) / (std(r) + eps), std with `std_ddof` (1 matches the
        common implementations, which use an unbiased std).
      dr_grpo (Dr. GRPO, Liu et al. 2025): r - mean(r); no std division.
      rloo (Ahmadian et al. 2024): r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean(r)).
      reinforce_pp (REINFORCE++, Hu 2025): (r - mean(R)) / (std(R) + eps), a batch baseline.
      reinforce_pp_baseline (REINFORCE++-baseline): r - mean(r), then divided by its batch std.
    The group estimators give exactly 0 to groups whose rewards are all equal (r - mean(r) can
    be off by one ulp there, which the GRPO std division would blow up to noise).

    Args:
      rewards_pg: [prompts, group] rewards.
      estimator: one of ESTIMATORS.
      eps: added to the std before dividing.
      std_ddof: delta degrees of freedom of the GRPO group std.
      group_mask_p: optional [prompts] 1/0 marking real groups (fixed-shape batches may carry
        padding prompts); masked groups get advantage 0 and are left out of batch statistics.

    Returns:
      `(advantages_pg, stats)`: advantages of shape [prompts, group]; stats holds scalar
      reward_mean, reward_std, zero_signal_groups (count) and zero_signal_frac over real groups.
    """
    check_choice("advantage estimator", estimator, ESTIMATORS)
    if rewards_pg.ndim != 2:
        raise ValueError(f"rewards_pg must be [prompts, group]; got shape {rewards_pg.shape}")
    num_prompts, group_size = rewards_pg.shape
    if estimator == "grpo" and group_size - std_ddof <= 0:
        raise ValueError(
            f"grpo with std_ddof={std_ddof} needs a group of at least "
            f"{std_ddof + 1} samples; got {group_size}"
        )
    if estimator == "rloo" and group_size < 2:
        raise ValueError(f"rloo needs at least 2 samples per group; got {group_size}")
    if group_mask_p is None:
        group_mask_p = jnp.ones((num_prompts,), jnp.float32)
    elif jnp.shape(group_mask_p) != (num_prompts,):
        raise ValueError(f"group_mask_p must be [{num_prompts}]; got {jnp.shape(group_mask_p)}")
    rewards_pg = jnp.asarray(rewards_pg, jnp.float32)
    group_mask_p = jnp.asarray(group_mask_p, jnp.float32)
    sample_mask_pg = jnp.broadcast_to(group_mask_p[:, None], rewards_pg.shape)

    zero_signal_p = zero_signal_groups(rewards_pg)
    centered_pg = rewards_pg - jnp.mean(rewards_pg, axis=1, keepdims=True)
    centered_pg = jnp.where(zero_signal_p[:, None], 0.0, centered_pg)
    batch_mean = masked_mean(rewards_pg, sample_mask_pg)
    batch_std = jnp.sqrt(masked_mean(jnp.square(rewards_pg - batch_mean), sample_mask_pg))

    if estimator == "grpo":
        group_var_p = jnp.sum(jnp.square(centered_pg), axis=1) / (group_size - std_ddof)
        advantages_pg = centered_pg / (jnp.sqrt(group_var_p)[:, None] + eps)
    elif estimator == "dr_grpo":
        advantages_pg = centered_pg
    elif estimator == "rloo":
        advantages_pg = centered_pg * (group_size / (group_size - 1))
    elif estimator == "reinforce_pp":
        advantages_pg = (rewards_pg - batch_mean) / (batch_std + eps)
    else:
        # Group-centred rewards already have batch mean 0, so only the std is divided out.
        centered_std = jnp.sqrt(masked_mean(jnp.square(centered_pg), sample_mask_pg))
        advantages_pg = centered_pg / (centered_std + eps)
    advantages_pg = zero_outside(advantages_pg, sample_mask_pg)

    num_real_groups = jnp.sum(group_mask_p)
    num_zero_signal = jnp.sum(zero_signal_p * group_mask_p)
    stats = {
        "reward_mean": batch_mean,
        "reward_std": batch_std,
        "zero_signal_groups": num_zero_signal,
        "zero_signal_frac": num_zero_signal / jnp.maximum(num_real_groups, 1.0),
    }
    return advantages_pg, stats


def broadcast_to_tokens(
    values_pg: jax.Array, mask_bt: jax.Array, *, sample_ids_bt: jax.Array | None = None
) -> jax.Array:
    """Gives every counted token the value (advantage, reward) of the sample it belongs to.

    Args:
      values_pg: [prompts, group] per-sample values.
      mask_bt: [batch, time] token mask; tokens outside it get 0.
      sample_ids_bt: [batch, time] int index of each token's sample in the flattened
        [prompts * group] order, needed for packed rows. When None, rows are samples in that
        order (batch must equal prompts * group).

    Returns:
      [batch, time] float32.
    """
    (batch, _) = check_token_arrays(mask_bt=mask_bt, sample_ids_bt=sample_ids_bt)
    values_s = jnp.reshape(jnp.asarray(values_pg, jnp.float32), (-1,))
    mask_bt = jnp.asarray(mask_bt, jnp.float32)
    if sample_ids_bt is None:
        if batch != values_s.shape[0]:
            raise ValueError(
                f"{batch} rows but {values_s.shape[0]} samples ({values_pg.shape}); pass "
                "sample_ids_bt when rows are not one sample each in [prompts, group] order"
            )
        return zero_outside(jnp.broadcast_to(values_s[:, None], mask_bt.shape), mask_bt)
    return zero_outside(jnp.take(values_s, sample_ids_bt, mode="clip"), mask_bt)


def kl_penalty_token_rewards(
    sequence_rewards_bt: jax.Array,
    kl_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    kl_coef: float,
    segment_ids_bt: jax.Array | None = None,
) -> jax.Array:
    """Token rewards with the KL to the reference as a penalty (InstructGPT, REINFORCE++).

    Each counted token gets `-kl_coef * kl_t`; the last counted token of each sequence also gets
    the sequence's verifier reward. The result carries no gradient: it is a reward.

    Args:
      sequence_rewards_bt: [batch, time] the sequence reward on the tokens of each sequence,
        e.g. from `broadcast_to_tokens(rewards_pg, mask_bt)`; only the last token's is read.
      kl_bt: [batch, time] per-token KL estimates (`zero_rl.rl.kl.kl_estimate`).
      mask_bt: [batch, time] counted tokens.
      kl_coef: penalty weight beta.
      segment_ids_bt: packed segment ids or None.

    Returns:
      [batch, time] token rewards, 0 outside the mask.
    """
    check_token_arrays(
        sequence_rewards_bt=sequence_rewards_bt,
        kl_bt=kl_bt,
        mask_bt=mask_bt,
        segment_ids_bt=segment_ids_bt,
    )
    mask_bt = effective_mask(mask_bt, segment_ids_bt)
    last_bt = last_token_mask(mask_bt, segment_ids_bt)
    rewards_bt = zero_outside(sequence_rewards_bt, last_bt) - kl_coef * zero_outside(kl_bt, mask_bt)
    return jax.lax.stop_gradient(rewards_bt)


def _segment_ends_bt(mask_bt: jax.Array, segment_ids_bt: jax.Array | None) -> jax.Array:
    """True where the next position starts another sequence or the row ends."""
    ends_bt = jnp.zeros(mask_bt.shape, bool).at[:, -1].set(True)
    if segment_ids_bt is None:
        return ends_bt
    return ends_bt.at[:, :-1].set(segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1])


def gae(
    values_bt: jax.Array,
    rewards_bt: jax.Array,
    mask_bt: jax.Array,
    gamma: float,
    lam: float,
    *,
    segment_ids_bt: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    `values_bt[b, t]` is V of the state that emitted token t and `rewards_bt[b, t]` the reward
    after emitting it. Tokens outside the mask (prompt, padding, masked tool output) are skipped:
    the next state of a counted token is the next counted token of the same sequence, and the
    last counted token is terminal (V = 0). Runs as one reverse `lax.scan` over time.

    Returns:
      `(advantages_bt, returns_bt)`, both [batch, time] and 0 outside the mask;
      returns = advantages + values are the value-head targets.
    """
    check_token_arrays(
        values_bt=values_bt, rewards_bt=rewards_bt, mask_bt=mask_bt, segment_ids_bt=segment_ids_bt
    )
    mask_bt = effective_mask(mask_bt, segment_ids_bt)
    values_bt = jax.lax.stop_gradient(zero_outside(jnp.asarray(values_bt, jnp.float32), mask_bt))
    rewards_bt = jax.lax.stop_gradient(zero_outside(jnp.asarray(rewards_bt, jnp.float32), mask_bt))
    ends_bt = _segment_ends_bt(mask_bt, segment_ids_bt)

    def step(carry, inputs_b):
        next_value_b, next_advantage_b = carry
        value_b, reward_b, counted_b, end_b = inputs_b
        next_value_b = jnp.where(end_b, 0.0, next_value_b)
        next_advantage_b = jnp.where(end_b, 0.0, next_advantage_b)
        delta_b = reward_b + gamma * next_value_b - value_b
        advantage_b = delta_b + gamma * lam * next_advantage_b
        counted_b = counted_b > 0
        carry = (
            jnp.where(counted_b, value_b, next_value_b),
            jnp.where(counted_b, advantage_b, next_advantage_b),
        )
        return carry, jnp.where(counted_b, advantage_b, 0.0)

    zeros_b = jnp.zeros(mask_bt.shape[:1], jnp.float32)
    inputs_tb = tuple(x.T for x in (values_bt, rewards_bt, mask_bt, ends_bt))
    _, advantages_tb = jax.lax.scan(step, (zeros_b, zeros_b), inputs_tb, reverse=True)
    advantages_bt = advantages_tb.T
    return advantages_bt, zero_outside(advantages_bt + values_bt, mask_bt)


def discounted_returns(
    rewards_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    gamma: float = 1.0,
    segment_ids_bt: jax.Array | None = None,
) -> jax.Array:
    """Reward-to-go `G_t = sum_{k >= t} gamma^(k - t) r_k` over each sequence's counted tokens.

    This is GAE with V = 0 and lambda = 1. Returns [batch, time], 0 outside the mask.
    """
    zeros_bt = jnp.zeros(jnp.shape(rewards_bt), jnp.float32)
    returns_bt, _ = gae(zeros_bt, rewards_bt, mask_bt, gamma, 1.0, segment_ids_bt=segment_ids_bt)
    return returns_bt


def reinforce_pp_token_advantages(
    token_rewards_bt: jax.Array,
    mask_bt: jax.Array,
    *,
    gamma: float = 1.0,
    eps: float = 1e-6,
    segment_ids_bt: jax.Array | None = None,
) -> jax.Array:
    """REINFORCE++ token advantages: discounted returns whitened over all counted tokens.

    With a per-token KL penalty in the reward (`kl_penalty_token_rewards`) the returns differ
    along a response; without one, prefer `compute_advantages(estimator="reinforce_pp")`, which
    normalises per sample rather than per token. For REINFORCE++-baseline, subtract the group
    mean from the rewards before building `token_rewards_bt`.

    Returns:
      [batch, time] advantages, 0 outside the mask.
    """
    mask_bt = effective_mask(mask_bt, segment_ids_bt)
    returns_bt = discounted_returns(
        token_rewards_bt, mask_bt, gamma=gamma, segment_ids_bt=segment_ids_bt
    )
    return masked_whiten(returns_bt, mask_bt, eps=eps)
