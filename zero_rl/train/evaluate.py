"""Accuracy of a policy on held-out prompts, with the in-process sampler and the verifier."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from zero_rl import sampler, sharding
from zero_rl.data.records import Example
from zero_rl.rewards import RewardConfig, Verdict, VerifierPool, score
from zero_rl.tokenizer import Tokenizer
from zero_rl.train.rollout import decode_responses, encode_batch


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
    max_prompt_len: int,
    max_new_tokens: int,
    batch_size: int,
    stop_token_ids: Sequence[int],
    reward: RewardConfig,
    pool: VerifierPool | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    rng: jax.Array | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
    decode_segments: int = 1,
    progress: bool = False,
) -> EvalResult:
    """Generates for every example in fixed-shape batches of `batch_size` prompts (the last one
    padded with empty rows) and scores with the verifier; accuracy is the mean over all samples.

    Responses are graded up to the template's first stop string, as in training rollouts.
    `progress` shows a bar over the batches on process 0 when stderr is a terminal.
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
            chunk, tokenizer, template=template, max_prompt_len=max_prompt_len, rows=batch_size
        )
        if batch_sharding is not None:
            tokens_bt, positions_bt = jax.device_put((tokens_bt, positions_bt), batch_sharding)
        out = sampler.generate_padded(
            (graphdef, params),
            tokens_bt,
            positions_bt,
            max_new_tokens=max_new_tokens,
            rng=jax.random.fold_in(rng, start),
            temperature=temperature,
            top_p=top_p,
            stop_token_ids=stop_token_ids,
            pad_id=tokenizer.pad_id,
            num_samples=num_samples,
            decode_segments=decode_segments,
        )
        keep = len(chunk) * num_samples
        # Every process holds the same examples and scores all of them (eval is small).
        tokens_bn, lengths_b, stopped_b = (
            x[:keep] for x in sharding.gather_to_host((out.tokens_bn, out.lengths_b, out.stopped_b))
        )
        texts += decode_responses(tokenizer, template, tokens_bn, lengths_b)
        lengths.append(lengths_b)
        stopped.append(stopped_b)
    answers = [ex.answer for ex in examples for _ in range(num_samples)]
    verdicts = score(texts, answers, config=reward, pool=pool)
    return EvalResult(
        accuracy=float(np.mean([v.correct for v in verdicts])),
        texts=texts,
        verdicts=verdicts,
        lengths=np.concatenate(lengths),
        stopped=np.concatenate(stopped),
    )
