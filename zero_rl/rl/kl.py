"""Per-token KL estimators between the trained policy and a frozen reference.

With tokens sampled from the policy pi and `log_r = log pi_ref(y_t) - log pi(y_t)`, the three
estimators of KL(pi || pi_ref) from Schulman's "Approximating KL divergence" note are

  k1 = -log_r                        unbiased, high variance, can be negative
  k2 = log_r ** 2 / 2                biased, always >= 0
  k3 = exp(log_r) - 1 - log_r        unbiased, always >= 0, low variance (GRPO's choice)

Used as a loss term their gradients differ: k1's expectation is zero, while the gradient of k2
is the on-policy gradient of the reverse KL. Pick them with that in mind.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zero_rl.rl.masking import check_choice

KL_ESTIMATORS = ("k1", "k2", "k3")

# exp() of a float32 log-ratio overflows at ~88; a per-token ratio beyond e^20 only arises from a
# diverged minibatch, so bounding it keeps one bad token from turning the whole loss into inf/nan.
MAX_LOG_RATIO = 20.0


def kl_estimate(
    logprobs_bt: jax.Array,
    ref_logprobs_bt: jax.Array,
    *,
    estimator: str = "k3",
    clamp: float | None = None,
) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    Args:
      logprobs_bt: [batch, time] log pi(y_t) of the policy the tokens were sampled from.
      ref_logprobs_bt: [batch, time] log pi_ref(y_t) under the reference.
      estimator: "k1", "k2" or "k3" (see the module docstring).
      clamp: when set, the estimate is clipped to [-clamp, clamp].

    Returns:
      [batch, time] per-token KL estimates (unmasked; the caller applies its mask).
    """
    check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    if clamp is not None and clamp <= 0:
        raise ValueError(f"kl clamp must be positive or None; got {clamp}")
    log_r_bt = ref_logprobs_bt - logprobs_bt
    if estimator == "k1":
        kl_bt = -log_r_bt
    elif estimator == "k2":
        kl_bt = 0.5 * jnp.square(log_r_bt)
    else:
        log_r_bt = jnp.clip(log_r_bt, -MAX_LOG_RATIO, MAX_LOG_RATIO)
        kl_bt = jnp.expm1(log_r_bt) - log_r_bt
    if clamp is not None:
        kl_bt = jnp.clip(kl_bt, -clamp, clamp)
    return kl_bt
