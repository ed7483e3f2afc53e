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

# Estimators from the rewards of a prompt's group of samples alone (`compute_advantages`).
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
# Every `rl.estimator`: the group estimators, and PPO's "gae" with a learned critic (`gae`).
ESTIMATORS = (*GROUP_ESTIMATORS, "gae")
# Estimators whose training advantages are per token (`reinforce_pp_advantages`).
REINFORCE_PP_ESTIMATORS = ("reinforce_pp", "reinforce_pp_baseline")
# Where PPO's critic lives: a value head on the policy's trunk, or a trunk of its own.
CRITICS = ("shared", "separate")


def zero_signal_groups(rewards_pg: jax.Array) -> jax.Array:
    """[prompts] bool: True where every sample of the group got the same reward.

    Such groups have zero advantage under any group baseline, so they contribute no gradient;
    DAPO's dynamic sampling drops them.
    """
    return jnp.max(rewards_pg, axis=1) == jnp.min(rewards_pg, axis=1)


def _group_mask(group_mask_p: jax.Array | None, num_prompts: int) -> jax.Array:
    if group_mask_p is None:
        return jnp.ones((num_prompts,), jnp.float32)
    if jnp.shape(group_mask_p) != (num_prompts,):
        raise ValueError(f"group_mask_p must be [{num_prompts}]; got {jnp.shape(group_mask_p)}")
    return jnp.asarray(group_mask_p, jnp.float32)


def _check_rewards(rewards_pg: jax.Array) -> None:
    if jnp.ndim(rewards_pg) != 2:
        raise ValueError(f"rewards_pg must be [prompts, group]; got shape {jnp.shape(rewards_pg)}")


def reward_stats(
    rewards_pg: jax.Array, group_mask_p: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Scalar statistics of the verifier rewards over the real groups.

    Args:
      rewards_pg: [prompts, group] rewards, before any KL shaping.
      group_mask_p: optional [prompts] 1/0 marking real groups; the others (padding prompts,
        dynamic-sampling fillers) are left out of every statistic.

    Returns:
      reward_mean, reward_std (population), zero_signal_groups (count of real groups whose
      rewards are all equal) and zero_signal_frac (that count over the real groups).
    """
    _check_rewards(rewards_pg)
    group_mask_p = _group_mask(group_mask_p, rewards_pg.shape[0])
    rewards_pg = jnp.asarray(rewards_pg, jnp.float32)
    sample_mask_pg = jnp.broadcast_to(group_mask_p[:, None], rewards_pg.shape)
    mean = masked_mean(rewards_pg, sample_mask_pg)
    num_zero_signal = jnp.sum(zero_signal_groups(rewards_pg) * group_mask_p)
    return {
        "reward_mean": mean,
        "reward_std": jnp.sqrt(masked_mean(jnp.square(rewards_pg - mean), sample_mask_pg)),
        "zero_signal_groups": num_zero_signal,
        "zero_signal_frac": num_zero_signal / jnp.maximum(jnp.sum(group_mask_p), 1.0),
    }


def _group_centered(rewards_pg: jax.Array) -> jax.Array:
    """r - mean(r) per group, exactly 0 for groups whose rewards are all equal."""
    centered_pg = rewards_pg - jnp.mean(rewards_pg, axis=1, keepdims=True)
    return jnp.where(zero_signal_groups(rewards_pg)[:, None], 0.0, centered_pg)


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
    The two REINFORCE++ forms here are per sample; the update uses the paper's per-token form,
    `reinforce_pp_advantages`, which equals them when all responses have the same length and
    no KL enters the reward.
    The group estimators give exactly 0 to groups whose rewards are all equal (r - mean(r) can
    be off by one ulp there, which the GRPO std division would blow up to noise).

    Args:
      rewards_pg: [prompts, group] rewards.
      estimator: one of GROUP_ESTIMATORS.
      eps: added to the std before dividing.
      std_ddof: delta degrees of freedom of the GRPO group std.
      group_mask_p: optional [prompts] 1/0 marking real groups (fixed-shape batches may carry
        padding prompts); masked groups get advantage 0 and are left out of batch statistics.

    Returns:
      `(advantages_pg, stats)`: advantages of shape [prompts, group]; stats holds scalar
      reward_mean, reward_std, zero_signal_groups (count) and zero_signal_frac over real groups.
    """
    check_choice("advantage estimator", estimator, GROUP_ESTIMATORS)
    _check_rewards(rewards_pg)
    num_prompts, group_size = rewards_pg.shape
    if estimator == "grpo" and group_size - std_ddof <= 0:
        raise ValueError(
            f"grpo with std_ddof={std_ddof} needs a group of at least "
            f"{std_ddof + 1} samples; got {group_size}"
        )
    if estimator == "rloo" and group_size < 2:
        raise ValueError(f"rloo needs at least 2 samples per group; got {group_size}")
    group_mask_p = _group_mask(group_mask_p, num_prompts)
    rewards_pg = jnp.asarray(rewards_pg, jnp.float32)
    sample_mask_pg = jnp.broadcast_to(group_mask_p[:, None], rewards_pg.shape)
    stats = reward_stats(rewards_pg, group_mask_p)
    centered_pg = _group_centered(rewards_pg)

    if estimator == "grpo":
        group_var_p = jnp.sum(jnp.square(centered_pg), axis=1) / (group_size - std_ddof)
        advantages_pg = centered_pg / (jnp.sqrt(group_var_p)[:, None] + eps)
    elif estimator == "dr_grpo":
        advantages_pg = centered_pg
    elif estimator == "rloo":
        advantages_pg = centered_pg * (group_size / (group_size - 1))
    elif estimator == "reinforce_pp":
        advantages_pg = (rewards_pg - stats["reward_mean"]) / (stats["reward_std"] + eps)
    else:
        # Group-centred rewards already have batch mean 0, so only the std is divided out.
        centered_std = jnp.sqrt(masked_mean(jnp.square(centered_pg), sample_mask_pg))
        advantages_pg = centered_pg / (centered_std + eps)
    return zero_outside(advantages_pg, sample_mask_pg), stats


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
    along a response. `reinforce_pp_advantages` builds the token rewards from verifier rewards
    and calls this.

    Returns:
      [batch, time] advantages, 0 outside the mask.
    """
    mask_bt = effective_mask(mask_bt, segment_ids_bt)
    returns_bt = discounted_returns(
        token_rewards_bt, mask_bt, gamma=gamma, segment_ids_bt=segment_ids_bt
    )
    return masked_whiten(returns_bt, mask_bt, eps=eps)


def reinforce_pp_advantages(
    rewards_pg: jax.Array,
    mask_bt: jax.Array,
    *,
    estimator: str = "reinforce_pp",
    kl_bt: jax.Array | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-6,
    group_mask_p: jax.Array | None = None,
) -> jax.Array:
    """REINFORCE++ (Hu 2025) per-token advantages, as in OpenRLHF.

    Token t of response i gets the reward `-kl_coef * kl_t`, its last token also the verifier
    reward r_i (for "reinforce_pp_baseline", r_i minus its group's mean, exactly 0 for an
    all-equal group); the advantage is the reward-to-go from t, discounted by gamma, whitened
    over every counted token of the batch.

    Args:
      rewards_pg: [prompts, group] verifier rewards.
      mask_bt: [prompts * group, time] counted response tokens, one response per row in
        [prompts, group] order.
      estimator: "reinforce_pp" or "reinforce_pp_baseline".
      kl_bt: [prompts * group, time] per-token KL to the reference (`kl_estimate`), or None.
      kl_coef: weight beta of the KL penalty in the reward.
      gamma: discount of the reward-to-go.
      eps: added to the std before dividing.
      group_mask_p: optional [prompts] 1/0; tokens of masked groups get 0 and stay out of the
        batch statistics.

    Returns:
      [prompts * group, time] advantages, 0 outside the mask.
    """
    check_choice("REINFORCE++ estimator", estimator, REINFORCE_PP_ESTIMATORS)
    _check_rewards(rewards_pg)
    num_prompts, group_size = rewards_pg.shape
    (batch, _) = check_token_arrays(mask_bt=mask_bt, kl_bt=kl_bt)
    if batch != num_prompts * group_size:
        raise ValueError(
            f"mask_bt has {batch} rows but rewards_pg {rewards_pg.shape} has "
            f"{num_prompts * group_size} samples; rows must be one sample each"
        )
    if kl_coef and kl_bt is None:
        raise ValueError(f"kl_coef={kl_coef} needs kl_bt")
    group_mask_p = _group_mask(group_mask_p, num_prompts)
    mask_bt = jnp.asarray(mask_bt, jnp.float32) * jnp.repeat(group_mask_p, group_size)[:, None]
    rewards_pg = jnp.asarray(rewards_pg, jnp.float32)
    if estimator == "reinforce_pp_baseline":
        rewards_pg = _group_centered(rewards_pg)
    sequence_rewards_bt = broadcast_to_tokens(rewards_pg, mask_bt)
    if kl_bt is None or not kl_coef:
        kl_bt = jnp.zeros(mask_bt.shape, jnp.float32)
    token_rewards_bt = kl_penalty_token_rewards(
        sequence_rewards_bt, kl_bt, mask_bt, kl_coef=kl_coef
    )
    return reinforce_pp_token_advantages(token_rewards_bt, mask_bt, gamma=gamma, eps=eps)
