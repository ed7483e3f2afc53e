"""Rejection-sampling fine-tuning data: the policy's own verified responses as SFT targets.

Each prompt gets k responses from the in-process sampler; the verifier's correct ones become
(prompt, response) pairs, as in rejection-sampling fine-tuning (RFT, Yuan et al. 2023,
arXiv:2308.01825) and STaR's filtering of its own rationales (arXiv:2203.14465). They are
graded by `zero_rl.tasks.grade` with the reward's *strict* extraction (a `\\boxed{}` or
`<answer>` tag required), not evaluation's lenient one: a pair teaches its response's format,
so it must be one the RL reward accepts.

Of one prompt's verified responses, `select_responses` drops the truncated ones (a response cut
at `max_new_tokens` is not a finished trace, even with a right answer in it), the duplicates
(RFT's point is distinct reasoning paths, and a repeat would weigh one path twice) and those
past `max_per_prompt` (otherwise easy prompts, solved k/k, dominate the data).

`rejection_sample` appends every prompt's graded samples to a samples file per batch (a
pass-rate file of `zero_rl.eval.pass_rate` with the responses and their stops), so an
interrupted run resumes where it stopped, and then writes the kept pairs, atomically, as the
JSONL `launch/sft.py --config.data.source=...` reads. `launch/rejection_sample.py` is its
command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from tqdm import tqdm

from zero_rl.data import Example, FieldMapping
from zero_rl.eval.harness import check_prompt_lengths
from zero_rl.eval.pass_rate import (
    Sampling,
    Source,
    _check_resume,
    append_records,
    load_source,
    read_pass_rates,
    sample_graded,
    settings_path,
)
from zero_rl.eval.sets import EvalSet
from zero_rl.eval.store import write_jsonl
from zero_rl.rewards import VerifierPool
from zero_rl.tasks import is_task, make_task
from zero_rl.tokenizer import Tokenizer

# One line of the output: what SFT reads (`prompt`, `response`: the raw question, which SFT
# renders with its `data.template`, and the sampled text) and where the pair came from.
PAIR_FIELDS = ("id", "prompt", "response", "answer", "extracted", "template", "sample")
# One line of the samples file: a pass-rate record with every response and its verdict.
SAMPLE_FIELDS = ("id", "pass_rate", "num_correct", "k", "responses", "correct", "stopped",
                 "extracted")  # fmt: skip


def load_prompts(
    data: str,
    mapping: FieldMapping | None = None,
    *,
    limit: int | None = None,
    on_error: str = "raise",
    synthetic_seed: int = 0,
    task_options: Mapping[str, Any] | None = None,
) -> Source:
    """The prompts of `data`: a generated task's training split (`zero_rl.tasks.TASKS`, made
    with the generator settings `task_options`), or what `zero_rl.eval.pass_rate.load_source`
    reads (a shipped benchmark, "synthetic_addition", a .jsonl / .json / .parquet file)."""
    if not is_task(data):
        return load_source(data, mapping, limit=limit, on_error=on_error,
                           synthetic_seed=synthetic_seed)  # fmt: skip
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    options = dict(task_options or {})
    examples = make_task(data, options).split("train")[:limit]
    records = [{"id": ex.id, "problem": ex.prompt, "answer": ex.answer} for ex in examples]
    # The settings are part of the origin: other settings generate other problems.
    return Source(data, f"task {data} {json.dumps(options, sort_keys=True)}", examples, records)


def normalize_whitespace(text: str) -> str:
    """`text` with runs of whitespace as one space and none at the ends: the duplicate key."""
    return " ".join(text.split())


@dataclasses.dataclass(frozen=True)
class Selection:
    """What `select_responses` kept of one prompt's k responses.

    Attributes:
      kept: indices of the kept responses, ascending (sample order).
      num_verified: responses the verifier accepted (kept or not).
      num_truncated, num_duplicates, num_capped: verified responses dropped for being cut at
        the token budget, for repeating an earlier kept one, or for being past the cap; each
        response counts once, in that order.
    """

    kept: tuple[int, ...]
    num_verified: int
    num_truncated: int
    num_duplicates: int
    num_capped: int


def select_responses(
    responses: Sequence[str],
    correct: Sequence[bool],
    stopped: Sequence[bool],
    *,
    max_per_prompt: int | None = None,
) -> Selection:
    """The responses of one prompt to keep: verified, finished (`stopped`), the first of each
    whitespace-normalised text, and at most `max_per_prompt` of them (None: no cap).

    Args:
      responses, correct, stopped: [k] the texts, their verdicts and whether each ended on a
        stop (False: cut at the token budget).

    Samples are drawn independently, so the first ones in sample order are a random subset:
    the cap keeps them rather than choosing by length or content.
    """
    if not len(responses) == len(correct) == len(stopped):
        raise ValueError(f"{len(responses)} responses, {len(correct)} verdicts and "
                         f"{len(stopped)} stop flags: one of each per response")  # fmt: skip
    if max_per_prompt is not None and max_per_prompt < 1:
        raise ValueError(f"max_per_prompt must be >= 1 or None, got {max_per_prompt}")
    kept, seen = [], set()
    verified = truncated = duplicates = capped = 0
    for i, (text, ok, finished) in enumerate(zip(responses, correct, stopped)):
        if not ok:
            continue
        verified += 1
        key = normalize_whitespace(text)
        if not finished:
            truncated += 1
        elif key in seen:
            duplicates += 1
        elif max_per_prompt is not None and len(kept) >= max_per_prompt:
            capped += 1
        else:
            kept.append(i)
            seen.add(key)
    return Selection(tuple(kept), verified, truncated, duplicates, capped)


@dataclasses.dataclass(frozen=True)
class PromptSamples:
    """The k graded responses to one prompt: [k] texts, verdicts, stop flags and the answers
    the verifier read from them (None where it found none)."""

    example: Example
    responses: tuple[str, ...]
    correct: tuple[bool, ...]
    stopped: tuple[bool, ...]
    extracted: tuple[str | None, ...]

    def record(self) -> dict[str, Any]:
        """Its line of the samples file (`SAMPLE_FIELDS`)."""
        k, num_correct = len(self.correct), sum(self.correct)
        return {"id": self.example.id, "pass_rate": num_correct / k, "num_correct": num_correct,
                "k": k, "responses": list(self.responses), "correct": list(self.correct),
                "stopped": list(self.stopped), "extracted": list(self.extracted)}  # fmt: skip


def sample_responses(
    policy: tuple[Any, Any],
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    sampling: Sampling,
    **kwargs: Any,
) -> Iterator[list[PromptSamples]]:
    """Yields the graded responses batch by batch (`zero_rl.eval.pass_rate.sample_graded`,
    whose batches, keys and padding `filter_difficulty` samples with too: the same `sampling`
    draws the same responses there and here), with each response's stop flag and the answer
    the verifier read. `kwargs`: `sample_graded`'s `done`, `pool`, `input_sharding`."""
    for batch in sample_graded(policy, tokenizer, examples, sampling, **kwargs):
        yield [
            PromptSamples(ex, tuple(texts), tuple(bool(v.correct) for v in verdicts),
                          tuple(bool(x) for x in stopped), tuple(v.extracted for v in verdicts))
            for ex, texts, verdicts, stopped in batch
        ]  # fmt: skip


def read_samples(path: str | os.PathLike, *, k: int | None = None) -> dict[str, dict[str, Any]]:
    """id -> samples-file record (`SAMPLE_FIELDS`); a torn last line (a crash) is dropped.

    Raises ValueError, naming the file, on a malformed record, one with another k, or one
    without k responses and verdicts (e.g. a pass-rate file saved without responses).
    """
    records = read_pass_rates(path, k=k)
    for example_id, record in records.items():
        lists = [record.get(f) for f in SAMPLE_FIELDS[4:]]
        if not all(isinstance(x, list) and len(x) == record["k"] for x in lists):
            raise ValueError(
                f"{path}: the record of {example_id!r} lacks k={record['k']} of each of "
                f"{SAMPLE_FIELDS[4:]}: not a rejection-sampling samples file"
            )
    return records


def pairs_of(
    example: Example, record: dict[str, Any], template: str, *, max_per_prompt: int | None
) -> tuple[list[dict[str, Any]], Selection]:
    """The output lines (`PAIR_FIELDS`) of one prompt's samples-file record, and the selection."""
    chosen = select_responses(record["responses"], record["correct"], record["stopped"],
                              max_per_prompt=max_per_prompt)  # fmt: skip
    lines = [{"id": example.id, "prompt": example.prompt, "response": record["responses"][i],
              "answer": example.answer, "extracted": record["extracted"][i],
              "template": template, "sample": i} for i in chosen.kept]  # fmt: skip
    return lines, chosen


@dataclasses.dataclass(frozen=True)
class RejectionSummary:
    """What `rejection_sample` wrote.

    Attributes:
      num_prompts: prompts in the source; num_sampled_now: of them sampled by this call (the
        rest came from an earlier, interrupted run).
      num_responses: responses graded (prompts x k); num_verified, num_truncated,
        num_duplicates, num_capped, num_kept: totals of the prompts' `Selection`s.
      num_prompts_without: prompts of which nothing was kept.
    """

    num_prompts: int
    num_sampled_now: int
    num_responses: int
    num_verified: int
    num_truncated: int
    num_duplicates: int
    num_capped: int
    num_kept: int
    num_prompts_without: int
    output_path: str
    samples_path: str

    def format(self) -> str:
        return (
            f"{self.num_prompts} prompts ({self.num_sampled_now} sampled now), "
            f"{self.num_responses} responses, {self.num_verified} verified; dropped "
            f"{self.num_truncated} truncated, {self.num_duplicates} duplicates, "
            f"{self.num_capped} over the cap; kept {self.num_kept} in {self.output_path}; "
            f"{self.num_prompts_without} prompts with none kept"
        )


def default_samples_path(output_path: str | os.PathLike) -> Path:
    """OUTPUT.jsonl's samples file, OUTPUT.samples.jsonl."""
    return Path(output_path).with_suffix(".samples.jsonl")


def rejection_sample(
    policy: tuple[Any, Any],
    tokenizer: Tokenizer,
    source: Source,
    sampling: Sampling,
    *,
    output_path: str | os.PathLike,
    samples_path: str | os.PathLike | None = None,
    max_per_prompt: int | None = None,
    overwrite: bool = False,
    policy_name: str = "",
    pool: VerifierPool | None = None,
    input_sharding: jax.sharding.Sharding | None = None,
    progress: bool = True,
) -> RejectionSummary:
    """Samples k responses per prompt of `source`, appends them graded to `samples_path`
    (default `default_samples_path(output_path)`) and writes the `select_responses` pairs of
    every prompt, in source order, to `output_path` (lines of `PAIR_FIELDS`).

    Args:
      sampling: decoding, k and grading; its `reward` must use the strict extraction.
      max_per_prompt: most pairs per prompt (None: every distinct verified one).
      overwrite: start over. Without it an existing samples file is resumed when it was made
        with the same settings (data, policy, sampling, grading and `max_per_prompt`) and is an
        error otherwise; an output without its samples file is an error.
      policy_name: where the policy came from; part of the settings a resume must match.

    Prompts sampled by an earlier run that are no longer in `source` (a smaller `limit`) stay
    in the samples file but are not written to the output.
    """
    output_path = Path(output_path)
    samples_path = Path(samples_path or default_samples_path(output_path))
    for path in (output_path, samples_path):
        if path.suffix != ".jsonl":
            raise ValueError(f"output files are JSONL: {path} must end in .jsonl")
    if samples_path.resolve() == output_path.resolve():
        raise ValueError(f"samples and kept pairs cannot both go to {output_path}")
    if max_per_prompt is not None and max_per_prompt < 1:
        raise ValueError(f"max_per_prompt must be >= 1 or None, got {max_per_prompt}")
    if sampling.reward.extraction != "strict":
        raise ValueError(
            f"reward extraction is {sampling.reward.extraction!r}: training targets must be "
            "graded strictly (a marked answer, as the RL reward requires); set "
            "reward.extraction=strict"
        )
    # The prompts are checked before anything is written: all fit, and ids are unique.
    check_prompt_lengths(EvalSet(source.name, source.examples), tokenizer, sampling.template,
                         sampling.options.max_prompt_len)  # fmt: skip
    settings = {"data": source.origin, "policy": policy_name, **sampling.settings(),
                "max_per_prompt": max_per_prompt}  # fmt: skip
    if samples_path.exists() and not overwrite:
        _check_resume(samples_path, settings)
        done = read_samples(samples_path, k=sampling.k)
    elif output_path.exists() and not overwrite:
        raise FileExistsError(
            f"{output_path} exists but its samples file {samples_path} does not, so it cannot "
            "be resumed; pass overwrite=True (--overwrite) or another output path"
        )
    else:
        done = {}
    if jax.process_count() > 1:  # every host must read the file before any host writes it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("zero_rl.rejection.load")
    is_main = jax.process_index() == 0
    if is_main:
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(str(samples_path), list(done.values()))  # drops a torn last line
        settings_path(samples_path).write_text(json.dumps(settings, indent=2) + "\n")
    in_source = sum(ex.id in done for ex in source.examples)
    bar = tqdm(total=len(source.examples), initial=in_source, desc=f"sampling {source.name}",
               unit="prompt", file=sys.stderr, disable=not (progress and is_main),
               dynamic_ncols=True)  # fmt: skip
    num_sampled = 0
    with bar:
        batches = sample_responses(policy, tokenizer, source.examples, sampling, done=done,
                                   pool=pool, input_sharding=input_sharding)  # fmt: skip
        for results in batches:
            records = [r.record() for r in results]
            if is_main:
                append_records(samples_path, records)
            done.update((r["id"], r) for r in records)
            num_sampled += len(records)
            bar.update(len(records))
    lines, selections = [], []
    for example in source.examples:
        kept, chosen = pairs_of(example, done[example.id], sampling.template,
                                max_per_prompt=max_per_prompt)  # fmt: skip
        lines += kept
        selections.append(chosen)
    if is_main:
        write_jsonl(str(output_path), lines)
    return RejectionSummary(
        num_prompts=len(source.examples), num_sampled_now=num_sampled,
        num_responses=len(source.examples) * sampling.k,
        num_verified=sum(c.num_verified for c in selections),
        num_truncated=sum(c.num_truncated for c in selections),
        num_duplicates=sum(c.num_duplicates for c in selections),
        num_capped=sum(c.num_capped for c in selections), num_kept=len(lines),
        num_prompts_without=sum(not c.kept for c in selections),
        output_path=str(output_path), samples_path=str(samples_path),
    )  # fmt: skip
