"""RL objectives: advantage estimators, the clipped policy loss and its variants, KL estimators.

Pure functions of arrays with static keyword options, meant to be called inside `jax.jit`.
"""

from zero_rl.rl.advantages import (
    CRITICS,
    ESTIMATORS,
    GROUP_ESTIMATORS,
    REINFORCE_PP_ESTIMATORS,
    broadcast_to_tokens,
    compute_advantages,
    discounted_returns,
    gae,
    kl_penalty_token_rewards,
    reinforce_pp_advantages,
    reinforce_pp_token_advantages,
    reward_stats,
    zero_signal_groups,
)
from zero_rl.rl.kl import KL_ESTIMATORS, kl_estimate
from zero_rl.rl.losses import (
    AGGREGATIONS,
    RATIO_LEVELS,
    LossConfig,
    aggregate,
    num_sequences,
    policy_loss,
    value_loss,
)
from zero_rl.rl.masking import last_token_mask, masked_whiten, sequence_mean_bt

__all__ = [
    "AGGREGATIONS",
    "CRITICS",
    "ESTIMATORS",
    "GROUP_ESTIMATORS",
    "KL_ESTIMATORS",
    "RATIO_LEVELS",
    "REINFORCE_PP_ESTIMATORS",
    "LossConfig",
    "aggregate",
    "broadcast_to_tokens",
    "compute_advantages",
    "discounted_returns",
    "gae",
    "kl_estimate",
    "kl_penalty_token_rewards",
    "last_token_mask",
    "masked_whiten",
    "num_sequences",
    "policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_token_advantages",
    "reward_stats",
    "sequence_mean_bt",
    "value_loss",
    "zero_signal_groups",
]
