"""The update of an RL step: advantages from the rollout (`zero_rl.train.batch.Rollout`), then
epochs x minibatches of the policy loss as one jitted `lax.scan`, with gradient accumulation
over microbatches as an inner scan; the params and optimiser state are donated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from zero_rl.rl import (
    ESTIMATORS,
    REINFORCE_PP_ESTIMATORS,
    LossConfig,
    compute_advantages,
    gae,
    kl_estimate,
    last_token_mask,
    masked_whiten,
    num_sequences,
    policy_loss,
    reinforce_pp_advantages,
    reward_stats,
    value_loss,
)
from zero_rl.rl.masking import check_choice, masked_mean
from zero_rl.train.batch import Rollout, response_logprobs


@dataclasses.dataclass(frozen=True)
class UpdateOptions:
    """Static options of the update (hashable: part of the jit cache key).

    estimator: one of `zero_rl.rl.ESTIMATORS`; "gae" is PPO with a value head as critic
      (lam, vf_coef, vf_clip apply to it). "reinforce_pp" and "reinforce_pp_baseline" train on
      per-token advantages (`zero_rl.rl.reinforce_pp_advantages`).
    gamma: discount of the per-token returns ("gae", "reinforce_pp", "reinforce_pp_baseline").
    adv_std_ddof: delta degrees of freedom of the GRPO group std.
    kl_in_reward_coef: > 0 puts the KL to the reference into the reward (per token for the
      token-level estimators, summed per response for the group ones) instead of the loss;
      it uses loss.kl_estimator and loss.kl_clamp.
    """

    loss: LossConfig
    estimator: str = "grpo"
    gamma: float = 1.0
    lam: float = 1.0
    vf_coef: float = 0.0
    vf_clip: float | None = 0.2
    adv_eps: float = 1e-6
    adv_std_ddof: int = 1
    kl_in_reward_coef: float = 0.0
    epochs: int = 1
    num_minibatches: int = 1
    num_microbatches: int = 1
    logprob_chunk: int = 512

    def __post_init__(self):
        check_choice("rl.estimator", self.estimator, ESTIMATORS)
        if self.kl_in_reward_coef < 0:
            raise ValueError(f"rl.kl_in_reward_coef must be >= 0; got {self.kl_in_reward_coef}")
        if self.kl_in_reward_coef and self.loss.kl_coef:
            raise ValueError(
                f"rl.kl_in_reward_coef={self.kl_in_reward_coef} and "
                f"rl.loss.kl_coef={self.loss.kl_coef} would both penalise the KL to the "
                "reference (in the reward and in the loss); set one of them to 0"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"rl.gamma must be in (0, 1]; got {self.gamma}")
        if self.gamma != 1.0 and self.estimator not in (*REINFORCE_PP_ESTIMATORS, "gae"):
            raise ValueError(
                f"rl.gamma={self.gamma} has no effect with rl.estimator={self.estimator!r}; "
                f"it discounts the per-token returns of {(*REINFORCE_PP_ESTIMATORS, 'gae')}"
            )
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"rl.lam must be in [0, 1]; got {self.lam}")
        if self.lam != 1.0 and self.estimator != "gae":
            raise ValueError(
                f"rl.lam={self.lam} has no effect with rl.estimator={self.estimator!r}; "
                "it is GAE's lambda (rl.estimator='gae')"
            )
        if self.adv_std_ddof < 0:
            raise ValueError(f"rl.adv_std_ddof must be >= 0; got {self.adv_std_ddof}")


def _training_mask(rollout: Rollout) -> jax.Array:
    """[rows, N] response tokens of the groups that train (dynamic-sampling fillers masked)."""
    group_mask_b = jnp.repeat(rollout.group_mask_p, rollout.rewards_pg.shape[1])
    return rollout.mask_bn * group_mask_b[:, None]


def _loss_count(mask_bn: jax.Array, aggregation: str) -> jax.Array:
    """What the aggregation averages over: tokens, sequences with at least one token, or (Dr.
    GRPO's constant normaliser) every row."""
    if aggregation == "token_mean":
        return jnp.sum(mask_bn)
    if aggregation == "seq_mean_token_sum_norm":
        return num_sequences(mask_bn.shape)
    return jnp.sum(jnp.any(mask_bn > 0, axis=-1).astype(jnp.float32))


def rollout_advantages(rollout: Rollout, opts: UpdateOptions):
    """Per-token advantages [rows, N], value targets [rows, N] for "gae" (else None), and
    scalar stats of the verifier rewards (before KL shaping) over the groups that train."""
    mask = _training_mask(rollout)
    stats = reward_stats(rollout.rewards_pg, rollout.group_mask_p)
    kl_bn = None
    if opts.kl_in_reward_coef:
        kl_bn = kl_estimate(
            rollout.old_logprobs_bn, rollout.ref_logprobs_bn,
            estimator=opts.loss.kl_estimator, clamp=opts.loss.kl_clamp,
        )  # fmt: skip
        stats["kl_in_reward"] = masked_mean(kl_bn, mask)
    if opts.estimator == "gae":
        return (*_gae_advantages(rollout, opts, mask, kl_bn), stats)
    if opts.estimator in REINFORCE_PP_ESTIMATORS:
        advantages = reinforce_pp_advantages(
            rollout.rewards_pg, rollout.mask_bn, estimator=opts.estimator, kl_bt=kl_bn,
            kl_coef=opts.kl_in_reward_coef, gamma=opts.gamma, eps=opts.adv_eps,
            group_mask_p=rollout.group_mask_p,
        )  # fmt: skip
        return advantages, None, stats
    rewards_pg = rollout.rewards_pg
    if kl_bn is not None:
        # The group estimators see one reward per response: the verifier reward minus the
        # response's summed KL penalty (as verl applies a KL penalty before GRPO).
        kl_b = jnp.sum(jnp.where(rollout.mask_bn > 0, kl_bn, 0.0), axis=1)
        rewards_pg = rewards_pg - opts.kl_in_reward_coef * kl_b.reshape(rewards_pg.shape)
    adv_pg, _ = compute_advantages(
        rewards_pg, estimator=opts.estimator, eps=opts.adv_eps, std_ddof=opts.adv_std_ddof,
        group_mask_p=rollout.group_mask_p,
    )  # fmt: skip
    return adv_pg.reshape(-1)[:, None] * rollout.mask_bn, None, stats


def _gae_advantages(rollout: Rollout, opts: UpdateOptions, mask, kl_bn):
    """PPO: the outcome reward on each response's last token (minus a per-token KL penalty when
    `kl_in_reward_coef` is set), GAE over the rollout's values, advantages whitened over the
    batch (Schulman et al. 2017; as in the RLHF PPO recipes)."""
    if rollout.old_values_bn is None:
        raise ValueError('estimator="gae" needs the rollout\'s old values (a value head)')
    token_rewards = last_token_mask(rollout.mask_bn) * rollout.rewards_pg.reshape(-1)[:, None]
    if kl_bn is not None:
        token_rewards = token_rewards - opts.kl_in_reward_coef * jnp.where(
            rollout.mask_bn > 0, kl_bn, 0.0
        )
    advantages, returns = gae(rollout.old_values_bn, token_rewards, mask, opts.gamma, opts.lam)
    return masked_whiten(advantages, mask), returns


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "tx", "opts", "prompt_len"),
    donate_argnames=("params", "opt_state"),
)
def update(graphdef, tx, params, opt_state, rollout: Rollout, rng, *, opts, prompt_len):
    """Policy update on one rollout: `epochs` passes over shuffled minibatches.

    Returns (params, opt_state, metrics) with metrics averaged over minibatches.
    """
    advantages_bn, returns_bn, adv_stats = rollout_advantages(rollout, opts)
    use_critic = returns_bn is not None
    row_mask_bn = _training_mask(rollout)
    rows = rollout.tokens_bt.shape[0]
    mb = rows // opts.num_minibatches
    micro = mb // opts.num_microbatches
    need_entropy = True  # entropy is always reported; its cost is one softmax per token
    use_ref = opts.loss.kl_coef != 0.0

    def loss_fn(p, batch):
        tokens, positions, mask, adv, old, ref, sampler_lp, old_values, returns = batch
        model = nnx.merge(graphdef, p)
        logp, ent, values = response_logprobs(
            model, tokens, positions, prompt_len, chunk=opts.logprob_chunk,
            with_entropy=need_entropy, with_values=use_critic,
        )  # fmt: skip
        loss, metrics = policy_loss(
            logp,
            old,
            adv,
            mask,
            config=opts.loss,
            ref_logprobs_bt=ref if use_ref else None,
            entropy_bt=ent,
            sampler_logprobs_bt=sampler_lp,
        )
        if use_critic:
            vf_loss, vf_metrics = value_loss(
                values, old_values, returns, mask, clip_range=opts.vf_clip,
                aggregation=opts.loss.aggregation, norm_len=opts.loss.norm_len,
            )  # fmt: skip
            loss = loss + opts.vf_coef * vf_loss
            metrics = metrics | {"vf_loss": vf_loss} | vf_metrics
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    fields = (
        rollout.tokens_bt,
        rollout.positions_bt,
        row_mask_bn,
        advantages_bn,
        rollout.old_logprobs_bn,
        rollout.ref_logprobs_bn,
        rollout.sampler_logprobs_bn,
        # Placeholders keep one batch layout when there is no critic.
        rollout.old_values_bn if use_critic else jnp.zeros_like(advantages_bn),
        returns_bn if use_critic else jnp.zeros_like(advantages_bn),
    )

    def minibatch_step(carry, index):
        p, o = carry
        epoch, k = index // opts.num_minibatches, index % opts.num_minibatches
        perm = jax.random.permutation(jax.random.fold_in(rng, epoch), rows)
        rows_idx = jax.lax.dynamic_slice_in_dim(perm, k * mb, mb)
        batch = tuple(
            x[rows_idx].reshape(opts.num_microbatches, micro, *x.shape[1:]) for x in fields
        )

        # Each microbatch's loss is a mean over its own tokens (or sequences); weighting it by
        # its share of the minibatch makes the accumulated gradient that of the whole minibatch.
        counts = jax.vmap(lambda m: _loss_count(m, opts.loss.aggregation))(batch[2])
        weights = counts / jnp.maximum(jnp.sum(counts), 1.0)

        def micro_step(acc, args):
            mbatch, weight = args
            (loss, metrics), grads = grad_fn(p, mbatch)
            acc_grads, acc_loss, acc_metrics = acc
            add = lambda a, b: jax.tree.map(lambda x, y: x + weight * y, a, b)
            return (
                add(acc_grads, grads),
                acc_loss + weight * loss,
                add(acc_metrics, metrics),
            ), None

        zero_metrics = jax.eval_shape(lambda: grad_fn(p, jax.tree.map(lambda x: x[0], batch))[0][1])
        init = (
            jax.tree.map(jnp.zeros_like, p),
            jnp.float32(0),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_metrics),
        )
        (grads, loss, metrics), _ = jax.lax.scan(micro_step, init, (batch, weights))
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.tree.norm(grads)
        updates, o = tx.update(grads, o, p)
        p = optax.apply_updates(p, updates)
        return (p, o), metrics

    steps = jnp.arange(opts.epochs * opts.num_minibatches)
    (params, opt_state), metrics = jax.lax.scan(minibatch_step, (params, opt_state), steps)
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics.update({f"adv/{k}": v for k, v in adv_stats.items()})
    return params, opt_state, metrics
