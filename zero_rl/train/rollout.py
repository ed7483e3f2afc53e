"""Collecting one step's rollout: sample on device, verify on the host, build the batch.

Order of work per draw: the sampler runs; the trainer-side old and reference log-probs are
dispatched (asynchronously) right after it; only then does the host read the response tokens
and verify them, so verification overlaps with that device work. The response tokens, lengths
and stop flags are the only device-to-host transfer (`_local`, the one place that allows it:
on an accelerator, a step under `jax.transfer_guard_device_to_host("disallow_explicit")` fails
on any other).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zero_rl import sharding
from zero_rl.data.iterator import encode_batch
from zero_rl.data.records import Example
from zero_rl.data.templates import get_template
from zero_rl.eval.metrics import has_reflection
from zero_rl.rewards import RewardConfig, Verdict, VerifierPool, shape_rewards
from zero_rl.sampling import SamplingOptions, finish_responses, generate_padded
from zero_rl.tasks import grade, reason_counts
from zero_rl.tokenizer import Tokenizer
from zero_rl.train.batch import Rollout, assemble_sequences, rollout_logprobs

log = logging.getLogger(__name__)


def decode_responses(
    tokenizer: Tokenizer, template: str, tokens_bn: np.ndarray, lengths_b: np.ndarray
) -> list[str]:
    """Response texts from host tokens [rows, N] and lengths [rows], each cut after the
    template's first stop string (`zero_rl.sampling.finish_responses`'s definition)."""
    stops = get_template(template).stop_strings
    stopped_b = np.zeros(len(lengths_b), bool)
    return finish_responses(tokenizer, tokens_bn, lengths_b, stopped_b, stops).texts


def fit_prompts(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    *,
    template: str,
    max_prompt_len: int,
    name: str,
    drop: bool = False,
) -> list[Example]:
    """The examples whose templated prompt fits in `max_prompt_len` tokens. A longer one raises
    (naming it, `name` and how many are too long) at set-up, not at the step that draws it;
    with `drop` those are left out with a warning instead."""
    render = get_template(template).render
    ids = tokenizer.batch_encode([render(ex.prompt) for ex in examples],
                                 add_bos=tokenizer.add_bos_default)  # fmt: skip
    too_long = [i for i, row in enumerate(ids) if len(row) > max_prompt_len]
    if not too_long:
        return list(examples)
    first = too_long[0]
    message = (
        f"{name}: {len(too_long)} of {len(examples)} prompts are longer than "
        f"sampling.max_prompt_len={max_prompt_len} with template {template!r}, e.g. "
        f"{examples[first].id} ({len(ids[first])} tokens)"
    )
    if not drop or len(too_long) == len(examples):
        raise ValueError(message)
    log.warning("%s; left out", message)
    skip = set(too_long)
    return [ex for i, ex in enumerate(examples) if i not in skip]


@dataclasses.dataclass
class RolloutResult:
    rollout: Rollout
    examples: list[Example]  # one per group (prompt)
    texts: list[str]  # one per row
    verdicts: list[Verdict]
    stopped_b: np.ndarray  # [rows] True where a stop token ended the response
    stats: dict[str, float]
    # [groups, samples] this process's rewards on the host (the rollout's rewards_pg before
    # they moved to the device): dynamic sampling reads them without a copy back.
    host_rewards_pg: np.ndarray | None = None


class RolloutCollector:
    """Samples groups of responses for batches of prompts and scores them."""

    def __init__(
        self,
        *,
        graphdef,
        tokenizer: Tokenizer,
        template: str,
        sampling: SamplingOptions,
        num_samples: int,
        reward: RewardConfig,
        pool: VerifierPool | None,
        batch_sharding: jax.sharding.Sharding | None = None,
        logprob_chunks: int = 1,
        logprob_chunk_len: int = 512,
        with_values: bool = False,
    ):
        self.graphdef = graphdef
        self.tokenizer = tokenizer
        self.template = template
        self.sampling = sampling  # with the template's stop ids and strings
        self.num_samples = num_samples
        self.reward = reward
        self.pool = pool
        self.batch_sharding = batch_sharding
        self.logprob_chunks = logprob_chunks
        self.logprob_chunk_len = logprob_chunk_len
        self.with_values = with_values  # PPO: the value head's V at rollout time

    def _put(self, *arrays):
        """This process's rows -> global batch arrays (rows of all processes, in order)."""
        if self.batch_sharding is None:
            return tuple(jnp.asarray(a) for a in arrays)
        return tuple(sharding.global_batch(a, self.batch_sharding) for a in arrays)

    def _local(self, *arrays):
        """Global batch arrays -> this process's rows, as NumPy: the step's one device-to-host
        transfer (the response tokens for the verifier), allowed here even under a guard."""
        with jax.transfer_guard_device_to_host("allow"):
            if self.batch_sharding is None:
                return jax.device_get(arrays)
            return sharding.local_rows(arrays, self.batch_sharding)

    def _logprobs(self, params, tokens, positions, *, with_values=False):
        return rollout_logprobs(
            self.graphdef,
            params,
            tokens,
            positions,
            prompt_len=self.sampling.max_prompt_len,
            num_chunks=self.logprob_chunks,
            chunk=self.logprob_chunk_len,
            with_values=with_values,
        )

    def draw(self, params, ref_params, examples: Sequence[Example], rng) -> RolloutResult:
        """One batch of prompts -> one rollout with every group (group_mask all ones)."""
        s = self.sampling
        start = time.perf_counter()
        prompt_tokens, prompt_positions = self._put(
            *encode_batch(
                examples, self.tokenizer, template=self.template, max_prompt_len=s.max_prompt_len
            )
        )
        samples = generate_padded(
            (self.graphdef, params), prompt_tokens, prompt_positions, s,
            num_samples=self.num_samples, rng=rng, tokenizer=self.tokenizer,
        )  # fmt: skip
        out = samples.output
        tokens, positions, mask_bn = _assemble(
            prompt_tokens, prompt_positions, out.tokens_bn, out.lengths_b, self.num_samples
        )
        # Dispatched before the host blocks on the tokens: overlaps with verification.
        old_logprobs = self._logprobs(params, tokens, positions, with_values=self.with_values)
        old_values = None
        if self.with_values:
            old_logprobs, old_values = old_logprobs
        ref_logprobs = (
            self._logprobs(ref_params, tokens, positions)
            if ref_params is not None
            else old_logprobs
        )
        tokens_bn, lengths_b, stopped_b = self._local(out.tokens_bn, out.lengths_b, out.stopped_b)
        sample_time = time.perf_counter() - start
        responses = finish_responses(
            self.tokenizer, tokens_bn, lengths_b, stopped_b, s.stop_strings
        )
        texts, lengths_b, stopped_b = responses.texts, responses.lengths, responses.stopped
        rows = [ex for ex in examples for _ in range(self.num_samples)]
        verify_start = time.perf_counter()
        verdicts = grade(texts, rows, config=self.reward, pool=self.pool)
        rewards_b = shape_rewards(
            np.asarray([v.reward for v in verdicts], np.float32),
            np.asarray([v.correct for v in verdicts], bool),
            lengths_b,
            ~np.asarray(stopped_b, bool),
            config=self.reward,
            max_response_len=s.max_new_tokens,
            group_size=self.num_samples,
        )
        verify_time = time.perf_counter() - verify_start
        # Statistics describe the global batch: every process gathers all processes' rows.
        global_rows = sharding.gather_to_host(
            {
                "reward": rewards_b,
                "correct": np.asarray([v.correct for v in verdicts], np.float32),
                "length": lengths_b.astype(np.float32),
                "stopped": stopped_b.astype(np.float32),
                "timed_out": np.asarray([v.timed_out for v in verdicts], np.float32),
                "reflection": np.asarray([has_reflection(t) for t in texts], np.float32),
                "boxed": np.asarray([v.boxed for v in verdicts], np.float32),
            }
        )
        stats = {
            "train/reward_mean": float(global_rows["reward"].mean()),
            "train/accuracy": float(global_rows["correct"].mean()),
            "train/response_length_mean": float(global_rows["length"].mean()),
            "train/truncated_ratio": float(1.0 - global_rows["stopped"].mean()),
            "train/verifier_timeouts": float(global_rows["timed_out"].sum()),
            "train/reflection_words": float(global_rows["reflection"].mean()),
            "train/boxed_ratio": float(global_rows["boxed"].mean()),
            "perf/sample_time_s": sample_time,
            "perf/verify_time_s": verify_time,
            "perf/sample_tokens": float(global_rows["length"].sum()),
        }
        # Why a task's verifier rejected responses (this process's rows; tasks only).
        for reason, count in reason_counts(verdicts).items():
            stats[f"train/rejected/{reason}"] = float(count)
        if samples.stats is not None:  # live slot-steps over all slot-steps of the engine
            steps, slot_steps, live = _replicated_scalars(
                samples.stats.decode_steps, samples.stats.slot_steps, samples.stats.live_slot_steps
            )
            stats["perf/slot_utilisation"] = live / max(slot_steps, 1)
            stats["perf/decode_steps"] = float(steps)
        host_rewards_pg = rewards_b.reshape(len(examples), self.num_samples)
        rewards_pg, group_mask_p = self._put(host_rewards_pg, np.ones((len(examples),), np.float32))
        rollout = Rollout(
            tokens_bt=tokens,
            positions_bt=positions,
            mask_bn=mask_bn,
            sampler_logprobs_bn=out.logprobs_bn,
            old_logprobs_bn=old_logprobs,
            ref_logprobs_bn=ref_logprobs,
            rewards_pg=rewards_pg,
            group_mask_p=group_mask_p,
            old_values_bn=old_values,
        )
        return RolloutResult(
            rollout, list(examples), texts, verdicts, stopped_b, stats, host_rewards_pg
        )


# `perf/` statistics that are ratios: averaged over dynamic-sampling draws, not summed.
_PERF_RATIOS = ("perf/slot_utilisation",)


def _replicated_scalars(*xs: jax.Array) -> list[int]:
    """Replicated device scalars (every process holds them) on the host."""
    with jax.transfer_guard_device_to_host("allow"):
        return [int(np.asarray(x.addressable_data(0))) for x in xs]


@jax.jit
def _stopped_mask(mask_bn, stopped_b):
    return mask_bn * stopped_b[:, None]


_assemble = jax.jit(assemble_sequences, static_argnames=("num_samples",))


def collect(
    collector: RolloutCollector,
    params,
    ref_params,
    batches: Iterator[list[Example]],
    rng,
    *,
    dynamic_sampling: bool,
    max_draws: int,
    overlong_filter: bool,
) -> RolloutResult:
    """A full rollout; with DAPO dynamic sampling, groups whose rewards are all equal are
    dropped and more prompts drawn (up to `max_draws` batches) until the batch is full. If the
    cap is hit, the remaining slots hold dropped groups with group_mask 0 (no gradient), so the
    update's shapes never change."""
    if dynamic_sampling and jax.process_count() > 1:
        # Kept groups would have to move between processes, with their texts for logging.
        raise NotImplementedError(
            "rl.dynamic_sampling runs on a single process only; set rl.dynamic_sampling=False "
            f"for this {jax.process_count()}-process run"
        )
    draws = []
    kept: list[tuple[int, int]] = []  # (draw, group) with signal
    num_groups = None
    for d in range(max_draws if dynamic_sampling else 1):
        result = collector.draw(params, ref_params, next(batches), jax.random.fold_in(rng, d))
        draws.append(result)
        num_groups = len(result.examples)
        if not dynamic_sampling:
            break
        rewards = result.host_rewards_pg  # already on the host: no copy back from the device
        kept += [(d, g) for g in range(num_groups) if rewards[g].max() > rewards[g].min()]
        if len(kept) >= num_groups:
            break
    result = _select(draws, kept, num_groups) if dynamic_sampling else draws[0]
    if overlong_filter:  # DAPO: truncated responses carry no learning signal either way
        result.rollout = result.rollout._replace(
            mask_bn=_stopped_mask(
                result.rollout.mask_bn, collector._put(result.stopped_b.astype(np.float32))[0]
            )
        )
    # Metrics describe everything that was sampled, not only the kept groups.
    for key in draws[0].stats:
        values = [r.stats[key] for r in draws]
        summed = key.startswith("perf/") and key not in _PERF_RATIOS  # times and counts add up
        result.stats[key] = float(np.sum(values) if summed else np.mean(values))
    result.stats["train/dynamic_sampling_draws"] = float(len(draws))
    # Counted on the rollout, which spans all processes' groups.
    kept_groups = (
        min(len(kept), num_groups) if dynamic_sampling else len(result.rollout.group_mask_p)
    )
    result.stats["train/kept_groups"] = float(kept_groups)
    return result


def _select(
    draws: list[RolloutResult], kept: list[tuple[int, int]], num_groups: int
) -> RolloutResult:
    """Builds a rollout of `num_groups` groups: the kept ones first, then masked fillers."""
    kept = kept[:num_groups]
    kept_set = set(kept)
    fillers = [
        (d, g) for d in range(len(draws)) for g in range(num_groups) if (d, g) not in kept_set
    ]
    chosen = kept + fillers[: num_groups - len(kept)]
    g_size = draws[0].rollout.rewards_pg.shape[1]
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *[r.rollout for r in draws])
    group_idx = np.asarray([d * num_groups + g for d, g in chosen])
    row_idx = (group_idx[:, None] * g_size + np.arange(g_size)[None, :]).reshape(-1)
    rollout = Rollout(
        tokens_bt=stacked.tokens_bt[row_idx],
        positions_bt=stacked.positions_bt[row_idx],
        mask_bn=stacked.mask_bn[row_idx],
        sampler_logprobs_bn=stacked.sampler_logprobs_bn[row_idx],
        old_logprobs_bn=stacked.old_logprobs_bn[row_idx],
        ref_logprobs_bn=stacked.ref_logprobs_bn[row_idx],
        rewards_pg=stacked.rewards_pg[group_idx],
        group_mask_p=jnp.asarray([1.0] * len(kept) + [0.0] * (num_groups - len(kept))),
        old_values_bn=None if stacked.old_values_bn is None else stacked.old_values_bn[row_idx],
    )
    examples = [draws[d].examples[g] for d, g in chosen]
    texts = [draws[d].texts[g * g_size + i] for d, g in chosen for i in range(g_size)]
    verdicts = [draws[d].verdicts[g * g_size + i] for d, g in chosen for i in range(g_size)]
    stopped_b = np.concatenate([r.stopped_b for r in draws])[row_idx]
    host_rewards_pg = np.concatenate([r.host_rewards_pg for r in draws])[group_idx]
    return RolloutResult(rollout, examples, texts, verdicts, stopped_b, {}, host_rewards_pg)
