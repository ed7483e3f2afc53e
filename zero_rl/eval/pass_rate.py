"""Pass-rate filtering: SimpleRL-Zoo's "control query difficulty" by sampling the policy itself.

Each prompt gets k responses from the in-process sampler, graded by the rule-based verifier; its
pass rate is the fraction correct. Under GRPO a prompt solved 0/k or k/k times has zero
advantage for every sample, so it costs rollout time and teaches nothing: keeping a band such
as 0 < rate < 1 is what let zero RL start on weak base models (arXiv:2503.18892, Sec. 2).

`filter_difficulty` writes one pass-rate line per prompt, appended and flushed per batch, so an
interrupted run resumes where it stopped; then it writes the kept records in their source
format, for `data.train` to point at. `launch/filter_difficulty.py` is its command line.

It samples and grades a policy as evaluation does, so it lives with evaluation; the band
itself (`zero_rl.data.filter_by_pass_rate`) is a data rule.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from zero_rl import sampling as sampling_lib
from zero_rl import sharding
from zero_rl.data.difficulty import filter_by_pass_rate
from zero_rl.data.records import BENCHMARKS, Example, FieldMapping, read_benchmark, read_examples
from zero_rl.data.templates import get_template
from zero_rl.rewards import RewardConfig, Verdict, VerifierPool
from zero_rl.sampling import SamplingOptions, finish_responses, with_template_stops
from zero_rl.tasks import grade as grade_rows
from zero_rl.tokenizer import Tokenizer

PASS_RATE_FIELDS = ("id", "pass_rate", "num_correct", "k")
SYNTHETIC = "synthetic_addition"
# The RewardConfig fields that change a verdict: a resumed run must grade as the first did.
GRADING_KEYS = ("extraction", "last_number_fallback", "rel_tol", "timeout_s")


@dataclasses.dataclass(frozen=True)
class Source:
    """Prompts to filter and the record each came from (written back when it is kept).

    `origin` names the data for a resume to check: a benchmark name, or a file's absolute path
    and field mapping.
    """

    name: str
    origin: str
    examples: Sequence[Example]
    records: Sequence[Any]

    def __post_init__(self):
        if len(self.examples) != len(self.records):
            raise ValueError(f"{len(self.examples)} examples but {len(self.records)} records")


def load_source(
    data: str,
    mapping: FieldMapping | None = None,
    *,
    limit: int | None = None,
    on_error: str = "raise",
    synthetic_seed: int = 0,
) -> Source:
    """The prompts of `data`: a shipped benchmark (`BENCHMARKS`), "synthetic_addition" (the
    tiny config's training split) or a .jsonl / .json / .parquet file read with `mapping`."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    if data in BENCHMARKS:
        result = read_benchmark(data, limit=limit, keep_records=True)
        return Source(data, data, result.examples, result.records)
    if data == SYNTHETIC:
        from zero_rl.data.synthetic import AdditionTask

        examples = AdditionTask(seed=synthetic_seed).split("train")[:limit]
        # MATH-style fields: the default `data.question_field` / `data.answer_field` read them.
        records = [{"id": ex.id, "problem": ex.prompt, "answer": ex.answer} for ex in examples]
        return Source(data, f"{data} seed {synthetic_seed}", examples, records)
    if Path(data).suffix.lower() in (".jsonl", ".json", ".parquet") or os.sep in data:
        result = read_examples(data, mapping, limit=limit, on_error=on_error, keep_records=True)
        if result.num_skipped:
            print(f"{data}: skipped {result.num_skipped} bad records", file=sys.stderr)
        origin = f"{os.path.abspath(data)} read with {mapping or FieldMapping()}"
        return Source(Path(data).stem, origin, result.examples, result.records)
    raise ValueError(
        f"unknown data {data!r}: not a shipped benchmark ({sorted(BENCHMARKS)}), "
        f"{SYNTHETIC!r}, or a .jsonl / .json / .parquet file"
    )


@dataclasses.dataclass(frozen=True)
class PromptResult:
    """The k graded responses to one prompt."""

    example: Example
    responses: tuple[str, ...]
    correct: tuple[bool, ...]

    @property
    def k(self) -> int:
        return len(self.correct)

    @property
    def num_correct(self) -> int:
        return sum(self.correct)

    @property
    def pass_rate(self) -> float:
        return self.num_correct / self.k

    def record(self, *, with_responses: bool = False) -> dict[str, Any]:
        """One pass-rate line: id, pass_rate, num_correct, k (and the graded responses)."""
        out = {"id": self.example.id, "pass_rate": self.pass_rate,
               "num_correct": self.num_correct, "k": self.k}  # fmt: skip
        if with_responses:
            out |= {"responses": list(self.responses), "correct": list(self.correct)}
        return out


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the k responses per prompt are drawn and graded.

    Attributes:
      template: the prompt template; its stop ids and strings are added to `options`'.
      k: responses per prompt (`num_samples`).
      batch_size: prompts per sampler call, a fixed shape of batch_size * k rows (a multiple
        of the batch-parallel devices when `input_sharding` is given).
      options: decoding (`zero_rl.sampling.SamplingOptions`); SimpleRL-Zoo samples its
        rollouts at temperature 1.
      seed: the samples of a prompt depend on it, on k and on the batch layout.
    """

    template: str
    k: int
    batch_size: int
    options: SamplingOptions
    seed: int = 0
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)

    def __post_init__(self):
        get_template(self.template)
        for name in ("k", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.options.greedy and self.k > 1:
            raise ValueError(
                f"temperature {self.options.temperature} is greedy: all k={self.k} samples "
                "would be the same response; sample at temperature > 0"
            )

    def settings(self) -> dict[str, Any]:
        """What decides the pass rates, as JSON (stored next to them to check a resume)."""
        o = self.options
        return {
            "template": self.template, "k": self.k, "max_new_tokens": o.max_new_tokens,
            "max_prompt_len": o.max_prompt_len, "batch_size": self.batch_size,
            "temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k, "seed": self.seed,
            "reward": {key: getattr(self.reward, key) for key in GRADING_KEYS},
            "stop_token_ids": list(o.stop_token_ids) or None,
            "stop_strings": list(o.stop_strings) or None,
        }  # fmt: skip


def append_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Appends JSON lines and syncs them to disk: a crash loses at most the batch being
    written, which `read_pass_rates` drops as a torn last line."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def sample_graded(
    policy: tuple[Any, Any],
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    sampling: Sampling,
    *,
    done: Collection[str] = (),
    pool: VerifierPool | None = None,
    input_sharding: jax.sharding.Sharding | None = None,
) -> Iterator[list[tuple[Example, list[str], list[Verdict], np.ndarray]]]:
    """Yields, batch by batch, each prompt's k responses with their verdicts and stop flags
    ([k] texts, [k] Verdicts, [k] bool), for the examples whose id is not in `done`.

    Args:
      policy: `(graphdef, params)` as `nnx.split(model)` gives them (params may be sharded).
      examples: all prompts; a batch's samples are keyed by its first prompt's position here,
        so a resumed run draws what an uninterrupted one would have.
      pool: the math verifier's pool (default: the module-level one).

    The next batch is generated while a host thread grades the last one with
    `zero_rl.tasks.grade` under `sampling.reward`.
    """
    s = sampling
    options = with_template_stops(s.options, tokenizer, s.template)
    render = get_template(s.template).render
    todo = [(i, ex) for i, ex in enumerate(examples) if ex.id not in done]
    prompts = tokenizer.batch_encode(
        [render(ex.prompt) for _, ex in todo], add_bos=tokenizer.add_bos_default
    )
    too_long = [j for j, ids in enumerate(prompts) if len(ids) > options.max_prompt_len]
    if too_long:
        j = too_long[0]
        raise ValueError(
            f"prompt {todo[j][1].id!r} has {len(prompts[j])} tokens, more than max_prompt_len="
            f"{options.max_prompt_len}; {len(too_long)} of {len(prompts)} prompts are too long"
        )
    key = jax.random.key(s.seed)

    def generate(start: int) -> tuple[np.ndarray, ...]:
        chunk = prompts[start : start + s.batch_size]
        # A short last batch repeats its last prompt: one shape, and no slicing of arrays
        # sharded over other hosts; the extra rows are dropped here, on the host.
        padded = chunk + [chunk[-1]] * (s.batch_size - len(chunk))
        out = sampling_lib.generate(
            policy, padded, options, num_samples=s.k,
            rng=jax.random.fold_in(key, todo[start][0]), tokenizer=tokenizer,
            input_sharding=input_sharding,
        ).output  # fmt: skip
        rows = len(chunk) * s.k
        host = sharding.gather_to_host((out.tokens_bn, out.lengths_b, out.stopped_b))
        return tuple(x[:rows] for x in host)

    def grade(batch: list[Example], tokens_bn, lengths_b, stopped_b):
        finished = finish_responses(tokenizer, tokens_bn, lengths_b, stopped_b,
                                    options.stop_strings)  # fmt: skip
        rows = [ex for ex in batch for _ in range(s.k)]
        verdicts = grade_rows(finished.texts, rows, config=s.reward, pool=pool)
        spans = [slice(j * s.k, (j + 1) * s.k) for j in range(len(batch))]
        return [(ex, finished.texts[span], verdicts[span], np.asarray(finished.stopped[span]))
                for ex, span in zip(batch, spans)]  # fmt: skip

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as grader:
        pending = None
        for start in range(0, len(todo), s.batch_size):
            outputs = generate(start)
            if pending is not None:
                yield pending.result()
            batch = [ex for _, ex in todo[start : start + s.batch_size]]
            pending = grader.submit(grade, batch, *outputs)
        if pending is not None:
            yield pending.result()


def sample_pass_rates(
    policy: tuple[Any, Any],
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    sampling: Sampling,
    **kwargs: Any,
) -> Iterator[list[PromptResult]]:
    """`sample_graded`'s batches as PromptResults (texts and verdicts of each prompt)."""
    for batch in sample_graded(policy, tokenizer, examples, sampling, **kwargs):
        yield [PromptResult(ex, tuple(texts), tuple(v.correct for v in verdicts))
               for ex, texts, verdicts, _ in batch]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FilterSummary:
    """What `filter_difficulty` wrote.

    Attributes:
      num_prompts, num_kept, num_sampled: prompts in the source, kept in the band, and
        sampled by this call (the rest came from an earlier, interrupted run).
      histogram: histogram[c] = prompts with c of k responses correct.
    """

    num_prompts: int
    num_kept: int
    num_sampled: int
    histogram: tuple[int, ...]
    pass_rates_path: str
    output_path: str

    def format(self) -> str:
        k = len(self.histogram) - 1
        counts = " ".join(f"{c}/{k}:{n}" for c, n in enumerate(self.histogram))
        return (
            f"{self.num_prompts} prompts ({self.num_sampled} sampled now), correct of k: "
            f"{counts}; kept {self.num_kept} in {self.output_path}"
        )


def settings_path(pass_rates_path: str | os.PathLike) -> Path:
    """The JSON next to a pass-rate file that records what produced it."""
    return Path(pass_rates_path).with_suffix(".settings.json")


def read_pass_rates(path: str | os.PathLike, *, k: int | None = None) -> dict[str, dict]:
    """id -> pass-rate record of a pass-rate JSONL; a torn last line (a crash) is dropped.

    Raises ValueError, naming the file and line, on a malformed record or one with another k.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rates: dict[str, dict] = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                break  # an append cut short by a crash; the prompt is sampled again
            raise ValueError(f"{path}:{number}: malformed JSON ({e.msg})") from e
        if not isinstance(record, dict) or any(f not in record for f in PASS_RATE_FIELDS):
            raise ValueError(f"{path}:{number}: not a pass-rate record {PASS_RATE_FIELDS}")
        if k is not None and record["k"] != k:
            raise ValueError(f"{path}:{number}: has k={record['k']}, this run samples k={k}")
        if not 0 <= record["num_correct"] <= record["k"]:
            raise ValueError(f"{path}:{number}: num_correct={record['num_correct']} not in 0..k")
        rates[record["id"]] = record
    return rates


def _check_resume(path: Path, settings: Mapping[str, Any]) -> None:
    """Refuses to add to pass rates made with other settings: the file would mix two runs."""
    settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
    previous_path = settings_path(path)
    if not previous_path.is_file():
        raise ValueError(
            f"{path} exists but {previous_path.name} does not, so whether it came from the same "
            "policy and settings is unknown; pass overwrite=True (--overwrite) or another path"
        )
    previous = json.loads(previous_path.read_text(encoding="utf-8"))
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    if changed:
        details = ", ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} holds pass rates made with other settings ({details}); pass "
            "overwrite=True (--overwrite) to sample again, or write to another path"
        )


def _write_jsonl_atomic(path: Path, records: Sequence[Any], ids: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record, example_id in zip(records, ids):
            try:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            except TypeError as e:
                raise TypeError(f"record of {example_id!r} cannot be written as JSON: {e}") from e
    os.replace(tmp, path)


def filter_difficulty(
    policy: tuple[Any, Any],
    tokenizer: Tokenizer,
    source: Source,
    sampling: Sampling,
    *,
    pass_rates_path: str | os.PathLike,
    output_path: str | os.PathLike,
    low: float = 0.0,
    high: float = 1.0,
    inclusive: bool = False,
    with_responses: bool = False,
    overwrite: bool = False,
    policy_name: str = "",
    pool: VerifierPool | None = None,
    input_sharding: jax.sharding.Sharding | None = None,
    progress: bool = True,
) -> FilterSummary:
    """Samples and grades k responses per prompt of `source`, writes each prompt's pass rate to
    `pass_rates_path` and the records with a pass rate in the band to `output_path`.

    Args:
      low, high, inclusive: keep `low < rate < high` (default: drop 0/k and k/k), or
        `low <= rate <= high` with `inclusive`.
      with_responses: add each prompt's responses and verdicts to its pass-rate line.
      overwrite: start over, replacing both files. Without it an existing `output_path` is an
        error and an existing `pass_rates_path` is resumed (settings permitting), so a finished
        run filtered again with another band to another output samples nothing.
      policy_name: where the policy came from; part of the settings a resume must match.
    """
    pass_rates_path, output_path = Path(pass_rates_path), Path(output_path)
    for path in (pass_rates_path, output_path):
        if path.suffix != ".jsonl":
            raise ValueError(f"output files are JSONL: {path} must end in .jsonl")
    if pass_rates_path.resolve() == output_path.resolve():
        raise ValueError(f"pass rates and kept records cannot both go to {output_path}")
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass --overwrite or another output path")
    settings = {"data": source.origin, "policy": policy_name, **sampling.settings()}
    is_main = jax.process_index() == 0
    if pass_rates_path.exists() and not overwrite:
        _check_resume(pass_rates_path, settings)
        done = read_pass_rates(pass_rates_path, k=sampling.k)
    else:
        done = {}
    if jax.process_count() > 1:  # every host must read the file before any host writes it
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("zero_rl.pass_rate.load")
    ids = {ex.id for ex in source.examples}
    done = {i: r for i, r in done.items() if i in ids}
    if is_main:
        pass_rates_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten whole: drops a torn last line and any prompts no longer in the source.
        _write_jsonl_atomic(pass_rates_path, list(done.values()), list(done))
        settings_path(pass_rates_path).write_text(json.dumps(settings, indent=2) + "\n")
    total = len(source.examples)
    bar = tqdm(total=total, initial=len(done), desc=f"pass rates {source.name}", unit="prompt",
               file=sys.stderr, disable=not (progress and is_main), dynamic_ncols=True)  # fmt: skip
    num_sampled = 0
    with bar:
        batches = sample_pass_rates(
            policy, tokenizer, source.examples, sampling, done=done, pool=pool,
            input_sharding=input_sharding,
        )  # fmt: skip
        for results in batches:
            records = [r.record(with_responses=with_responses) for r in results]
            if is_main:
                append_records(pass_rates_path, records)
            done.update((r["id"], r) for r in records)
            num_sampled += len(records)
            bar.update(len(records))
    rates = {i: r["pass_rate"] for i, r in done.items()}
    kept = {ex.id for ex in filter_by_pass_rate(source.examples, rates, low, high,
                                                inclusive=inclusive)}  # fmt: skip
    chosen = [(rec, ex.id) for ex, rec in zip(source.examples, source.records) if ex.id in kept]
    if is_main:
        _write_jsonl_atomic(output_path, [r for r, _ in chosen], [i for _, i in chosen])
    histogram = np.bincount([done[ex.id]["num_correct"] for ex in source.examples],
                            minlength=sampling.k + 1)  # fmt: skip
    return FilterSummary(total, len(kept), num_sampled, tuple(int(n) for n in histogram),
                         str(pass_rates_path), str(output_path))  # fmt: skip
