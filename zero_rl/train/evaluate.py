"""Accuracy of a policy on held-out prompts, with the in-process sampler and the verifier."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from zero_rl import sharding
from zero_rl.data import encode_batch
from zero_rl.data.records import Example
from zero_rl.rewards import RewardConfig, Verdict, VerifierPool
from zero_rl.sampling import SamplingOptions, finish_responses, generate_padded
from zero_rl.tasks import grade
from zero_rl.tokenizer import Tokenizer


@dataclasses.dataclass
class EvalResult:
    accuracy: float
    texts: list[str]  # num_examples * num_samples, samples of an example adjacent
    verdicts: list[Verdict]
    lengths: np.ndarray
    stopped: np.ndarray


def evaluate(
    graphdef,
    params,
    examples: Sequence[Example],
    *,
    tokenizer: Tokenizer,
    template: str,
    sampling: SamplingOptions,
    batch_size: int,
    reward: RewardConfig,
    pool: VerifierPool | None = None,
    num_samples: int = 1,
    rng: jax.Array | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
    progress: bool = False,
) -> EvalResult:
    """Generates for every example in fixed-shape batches of `batch_size` prompts (the last one
    padded with empty rows) and scores with the verifier; accuracy is the mean over all samples.

    `sampling` carries the decoding settings and the stops (add the template's with
    `zero_rl.sampling.with_template_stops`); responses are finished by
    `zero_rl.sampling.finish_responses`, as training rollouts are. `progress` shows a bar over
    the batches on process 0 when stderr is a terminal.
    """
    if not examples:
        raise ValueError("evaluate got no examples")
    rng = jax.random.key(0) if rng is None else rng
    texts, lengths, stopped = [], [], []
    starts = range(0, len(examples), batch_size)
    # disable=None: tqdm turns itself off when stderr is not a terminal (log files, CI).
    show = progress and jax.process_index() == 0
    for start in tqdm(starts, desc="eval", unit="batch", disable=None if show else True):
        chunk = list(examples[start : start + batch_size])
        tokens_bt, positions_bt = encode_batch(
            chunk, tokenizer, template=template, max_prompt_len=sampling.max_prompt_len,
            rows=batch_size,
        )  # fmt: skip
        if batch_sharding is not None:
            tokens_bt, positions_bt = jax.device_put((tokens_bt, positions_bt), batch_sharding)
        out = generate_padded(
            (graphdef, params), tokens_bt, positions_bt, sampling, num_samples=num_samples,
            rng=jax.random.fold_in(rng, start), tokenizer=tokenizer,
        ).output  # fmt: skip
        keep = len(chunk) * num_samples
        # Every process holds the same examples and scores all of them (eval is small).
        tokens_bn, lengths_b, stopped_b = (
            x[:keep] for x in sharding.gather_to_host((out.tokens_bn, out.lengths_b, out.stopped_b))
        )
        responses = finish_responses(
            tokenizer, tokens_bn, lengths_b, stopped_b, sampling.stop_strings
        )
        texts += responses.texts
        lengths.append(responses.lengths)
        stopped.append(responses.stopped)
    rows = [ex for ex in examples for _ in range(num_samples)]
    verdicts = grade(texts, rows, config=reward, pool=pool)
    return EvalResult(
        accuracy=float(np.mean([v.correct for v in verdicts])),
        texts=texts,
        verdicts=verdicts,
        lengths=np.concatenate(lengths),
        stopped=np.concatenate(stopped),
    )
