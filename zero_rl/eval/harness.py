"""Benchmark evaluation with the in-process sampler.

For each benchmark: generate in fixed-shape batches, grade with the rule-based verifier, append
every graded response to `out_dir/<benchmark>/generations.jsonl`, and summarise from those
records into `out_dir/summary.json` (and TensorBoard scalars `eval/<benchmark>/<metric>`).
A rerun skips the problems already in the JSONL, so an interrupted evaluation resumes; the
policy's parameter fingerprint is part of the settings a resume must match.

Grading and writing of a batch run on a host thread while the device generates the next batch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from zero_rl import sharding
from zero_rl.data import Example, apply_template, encode_batch, get_template
from zero_rl.eval.policy import params_fingerprint
from zero_rl.eval.sets import EvalSet, load_eval_set
from zero_rl.eval.store import GenerationStore
from zero_rl.eval.summary import earlier_results, graded_record, summarize, write_summary
from zero_rl.rewards import RewardConfig, VerifierPool
from zero_rl.sampling import (
    SamplingOptions,
    finish_responses,
    generate_padded,
    with_template_stops,
)
from zero_rl.summaries import SummaryWriter
from zero_rl.tasks import grade
from zero_rl.tokenizer import Tokenizer

# The RewardConfig fields that change a verdict (the reward values do not enter the records).
GRADING_KEYS = ("extraction", "last_number_fallback", "rel_tol", "timeout_s")


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every batch of one `run_benchmarks` call shares."""

    graphdef: Any
    params: Any
    tokenizer: Tokenizer
    num_samples: int
    sampling: SamplingOptions  # with the set's template's stops
    batch_size: int
    reward: RewardConfig
    pool: VerifierPool | None
    batch_sharding: jax.sharding.Sharding | None
    is_main: bool


def check_sampling(num_samples: int, temperature: float, ks: Sequence[int] | None) -> None:
    """Raises ValueError for sampling settings that cannot give what they ask for."""
    if num_samples < 1:
        raise ValueError(f"need num_samples >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if temperature == 0 and num_samples > 1:
        raise ValueError(
            f"temperature 0 is greedy decoding: all {num_samples} samples of a problem would be "
            "the same; use num_samples=1, or a temperature above 0 for pass@k / maj@k / avg@k"
        )
    if ks is not None and not all(1 <= k <= num_samples for k in ks):
        raise ValueError(f"ks={list(ks)} must lie in [1, num_samples={num_samples}]")


def check_prompt_lengths(
    eval_set: EvalSet, tokenizer: Tokenizer, template: str, max_prompt_len: int
) -> None:
    """Raises ValueError, naming the longest, if a prompt of `eval_set` rendered with
    `template` has more than `max_prompt_len` tokens."""
    texts = [apply_template(template, ex.prompt) for ex in eval_set.examples]
    lengths = [len(ids) for ids in tokenizer.batch_encode(texts, add_bos=tokenizer.add_bos_default)]
    if max(lengths) > max_prompt_len:
        longest = int(np.argmax(lengths))
        raise ValueError(
            f"problem {eval_set.examples[longest].id} of {eval_set.name} has a prompt of "
            f"{lengths[longest]} tokens, more than max_prompt_len={max_prompt_len}; "
            f"{sum(n > max_prompt_len for n in lengths)} of {len(lengths)} prompts are too long"
        )


def _generate(run: _Run, examples: Sequence[Example], template: str, rng: jax.Array):
    """Responses to one batch of prompts: tokens [rows, max_new_tokens], lengths [rows] and
    stopped [rows] on the host, rows = len(examples) * num_samples."""
    tokens_bt, positions_bt = encode_batch(
        examples,
        run.tokenizer,
        template=template,
        max_prompt_len=run.sampling.max_prompt_len,
        rows=run.batch_size,
    )
    if run.batch_sharding is not None:
        tokens_bt, positions_bt = jax.device_put((tokens_bt, positions_bt), run.batch_sharding)
    out = generate_padded(
        (run.graphdef, run.params), tokens_bt, positions_bt, run.sampling,
        num_samples=run.num_samples, rng=rng, tokenizer=run.tokenizer,
    ).output  # fmt: skip
    keep = len(examples) * run.num_samples
    host = sharding.gather_to_host((out.tokens_bn, out.lengths_b, out.stopped_b))
    return tuple(x[:keep] for x in host)


def _grade(run, examples, template, tokens_bn, lengths_b, stopped_b) -> list[dict[str, Any]]:
    """Decodes and grades one batch: a record (see `RECORD_FIELDS`) per response."""
    responses = finish_responses(
        run.tokenizer, tokens_bn, lengths_b, stopped_b, run.sampling.stop_strings
    )
    golds = [ex.answer for ex in examples for _ in range(run.num_samples)]
    rows = [ex for ex in examples for _ in range(run.num_samples)]
    verdicts = grade(responses.texts, rows, config=run.reward, pool=run.pool)
    records = []
    for row, verdict in enumerate(verdicts):
        example = examples[row // run.num_samples]
        records.append(
            graded_record(
                example.id,
                row % run.num_samples,
                example.prompt,
                responses.texts[row],
                golds[row],
                verdict,
                int(responses.lengths[row]),
                not responses.stopped[row],
            )
        )
    return records


def _evaluate_set(
    run: _Run, eval_set: EvalSet, template: str, store: GenerationStore, rng, progress: bool
) -> list[dict[str, Any]]:
    """Generates what `store` lacks of `eval_set` and returns all its records, in order.

    Batches are always the set's consecutive slices of `batch_size` problems, and a batch
    with any problem missing is generated whole (keeping only the missing problems' records):
    its rows and random key are then those of an uninterrupted run, so a resumed run gives
    the same samples, whatever problems a crash cut off.
    """
    done = store.load(run.num_samples)
    if jax.process_count() > 1:  # every host must see the same file before any writes to it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"zero_rl.eval.load.{eval_set.name}")
    examples = eval_set.examples
    missing = {}  # batch start -> positions of its problems not on disk
    for start in range(0, len(examples), run.batch_size):
        end = min(start + run.batch_size, len(examples))
        missing[start] = [i for i in range(start, end) if examples[i].id not in done]
    total = len(examples) * run.num_samples
    bar = tqdm(
        total=total,
        initial=total - sum(map(len, missing.values())) * run.num_samples,
        desc=eval_set.name,
        unit="resp",
        file=sys.stderr,
        disable=not (progress and run.is_main),
        dynamic_ncols=True,
    )

    def finish(batch: list[Example], outputs) -> None:
        records = _grade(run, batch, template, *outputs)
        store.append(records)
        for j, example in enumerate(batch):
            done[example.id] = records[j * run.num_samples : (j + 1) * run.num_samples]
        bar.update(len(records))

    with bar, concurrent.futures.ThreadPoolExecutor(max_workers=1) as grader:
        pending = None
        for start, todo in missing.items():
            if not todo:
                continue
            batch = examples[start : start + run.batch_size]
            # Keyed by the batch's first problem's position in the set: the same key on resume.
            outputs = _generate(run, batch, template, jax.random.fold_in(rng, start))
            rows = [(i - start) * run.num_samples + n for i in todo for n in range(run.num_samples)]
            outputs = tuple(x[rows] for x in outputs)
            if pending is not None:
                pending.result()  # at most one batch waits for grading
            pending = grader.submit(finish, [examples[i] for i in todo], outputs)
        if pending is not None:
            pending.result()
    return [record for ex in examples for record in done[ex.id]]


def run_benchmarks(
    graphdef,
    params,
    *,
    tokenizer: Tokenizer,
    benchmarks: Sequence[str | EvalSet],
    out_dir: str,
    template: str,
    sampling: SamplingOptions,
    num_samples: int = 1,
    batch_size: int,
    reward: RewardConfig | None = None,
    pool: VerifierPool | None = None,
    seed: int = 0,
    limit: int | None = None,
    ks: Sequence[int] | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
    writer: SummaryWriter | None = None,
    step: int = 0,
    progress: bool = True,
    policy_id: str | None = None,
) -> dict[str, Any]:
    """Evaluates a policy on benchmarks; writes generations, summary.json and TB scalars.

    Args:
      graphdef, params: the policy, as `nnx.split(model)` gives it (params may be sharded).
      benchmarks: names for `load_eval_set` ("gsm8k", "math500", a file, a seqio task, ...)
        or ready `EvalSet`s (e.g. the trainer's held-out examples).
      out_dir: gets `<benchmark>/generations.jsonl`, `<benchmark>/settings.json` and
        `summary.json`. Problems already in a benchmark's JSONL are not generated again, so
        use one out_dir per policy (e.g. `workdir/eval/step_<n>` in training); generations
        made with other settings, at another `step` or by another policy make the call fail
        (`OutputDirError`), before anything is generated. Benchmarks evaluated in out_dir by
        earlier calls stay in its summary.json.
      template: prompt template name (`zero_rl.data.TEMPLATES`).
      sampling: how responses are drawn; each set's template adds its stop ids and strings
        (`zero_rl.sampling.with_template_stops`). Temperature 0 is greedy.
      num_samples: responses per problem; greedy decoding needs 1 sample.
      batch_size: problems per sampler call, a fixed shape (batch_size * num_samples rows);
        a multiple of the batch-sharding devices when `batch_sharding` is given.
      reward: grading rules (by default `RewardConfig(extraction="lenient")`); pool: verifier
        pool (default: the module-level one).
      seed: sampling seed; the samples of a problem depend on it and on `batch_size` (a
        resumed run with the same batch_size draws the same samples as an uninterrupted one).
      limit: evaluate the first `limit` problems of each benchmark.
      ks: the k of pass@k / maj@k (default 1, 2, 4, ... up to num_samples).
      writer, step: TensorBoard writer and the step to log at (periodic eval in training).
      policy_id: what identifies the policy in the settings a resume must match; default
        `params_fingerprint(params)` (one pass over the params on their devices).

    Returns:
      {"step", "settings": {name: settings}, "benchmarks": {name: summary (see
      `summarize`)}, "average": {"accuracy": mean over benchmarks}}, as written to
      `out_dir/summary.json` (with the benchmarks of earlier calls there).
    """
    if batch_size < 1:
        raise ValueError(f"need batch_size >= 1, got {batch_size}")
    check_sampling(num_samples, sampling.temperature, ks)
    max_prompt_len = sampling.max_prompt_len
    if not benchmarks:
        raise ValueError("run_benchmarks got no benchmarks")
    get_template(template)
    reward = reward or RewardConfig(extraction="lenient")
    sets = [b if isinstance(b, EvalSet) else load_eval_set(b, limit=limit) for b in benchmarks]
    if limit is not None:
        sets = [dataclasses.replace(s, examples=s.examples[:limit]) for s in sets]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark names repeat: {names}")
    for eval_set in sets:  # fail now, not at the 900th problem of the third benchmark
        check_prompt_lengths(eval_set, tokenizer, eval_set.template or template, max_prompt_len)
    is_main = jax.process_index() == 0
    run = _Run(
        graphdef=graphdef,
        params=params,
        tokenizer=tokenizer,
        num_samples=num_samples,
        sampling=sampling,  # the stops are added per set: they depend on its template
        batch_size=batch_size,
        reward=reward,
        pool=pool,
        batch_sharding=batch_sharding,
        is_main=is_main,
    )
    settings: dict[str, Any] = {
        "num_samples": num_samples,
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": int(sampling.top_k),
        "max_new_tokens": sampling.max_new_tokens,
        "max_prompt_len": max_prompt_len,
        "seed": seed,
        # The policy: resuming must never mix two policies' responses (every HF model is at
        # step 0, so the step alone does not tell them apart).
        "step": int(step),
        "policy": params_fingerprint(params) if policy_id is None else str(policy_id),
        "grading": {k: getattr(reward, k) for k in GRADING_KEYS},
    }
    earlier_results(out_dir, names, settings)  # another policy's results: fail before work
    plans = []  # every set's store is checked before any generation
    for eval_set in sets:
        set_template = eval_set.template or template
        set_sampling = with_template_stops(sampling, tokenizer, set_template)
        set_settings = settings | {
            "template": set_template,
            "stop_token_ids": list(set_sampling.stop_token_ids),
            "stop_strings": list(set_sampling.stop_strings),
        }
        store = GenerationStore(
            os.path.join(out_dir, eval_set.name), set_settings, writable=is_main
        )
        plans.append((eval_set, set_template, set_sampling, set_settings, store))
    summaries = {}
    for eval_set, set_template, set_sampling, _, store in plans:
        set_run = dataclasses.replace(run, sampling=set_sampling)
        rng = jax.random.fold_in(jax.random.key(seed), zlib.crc32(eval_set.name.encode()))
        records = _evaluate_set(set_run, eval_set, set_template, store, rng, progress)
        summaries[eval_set.name] = summarize(records, ks=ks)
    return write_summary(
        out_dir, summaries, {plan[0].name: plan[3] for plan in plans}, step=step, writer=writer,
        is_main=is_main,
    )  # fmt: skip
