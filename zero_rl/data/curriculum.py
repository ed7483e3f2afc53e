"""An online curriculum: each batch's prompts drawn from difficulty buckets by a mix that shifts
during training, resumable like `PromptIterator`.

Buckets are groups of MATH levels (`Example.level`, "1-2,3,4-5") or bands of a pass rate measured
before training (`launch/filter_difficulty.py`'s pass-rate file, read by the caller and passed
in as {example id: pass rate}), easiest first. A schedule gives each bucket a weight per stage:

    stages = "0:1,0,0; 20:0.5,0.5,0; 40:0.2,0.3,0.5"

With schedule "steps" the number before each ":" is the step the stage starts at (steps done,
so stage 2 draws the 21st step's prompts). With schedule "threshold" it is the running pass rate
that the previous stage's hardest bucket (its last with a weight > 0) must reach for the run to
move on, e.g. "0:1,0,0; 0.8:0.5,0.5,0; 0.6:0.2,0.3,0.5" leaves stage 1 once level 1-2 is solved
80% of the time. The first stage starts at 0 in both. Weights are normalised per stage.

The running pass rate of a bucket is an exponential moving average over steps of its correct and
its total samples, kept separately (rate = EMA correct / EMA total): each sample counts
`decay ** age` with age in steps, so a step in which a bucket drew few samples moves its rate
little, a bucket that drew none keeps its rate, and no initial value biases the start. An EMA
rather than a window of the last steps: two numbers per bucket in the checkpoint, not a window
of counts, for the same smoothing (horizon about 1 / (1 - decay) steps).

Resume is exact because everything is a pure function of (seed, position): a batch's split
between buckets and its order come from (seed, batch number), each bucket's order from (seed,
bucket, its epoch), and the position is a few integers plus the EMA sums, all in `state_dict()`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zero_rl.data.records import Example
from zero_rl.rl.masking import check_choice

SCHEDULES = ("steps", "threshold")
BUCKET_BY = ("level", "pass_rate")
_MIX_STREAM, _BUCKET_STREAM = 1, 2  # keep the batch and bucket random streams apart


@dataclasses.dataclass(frozen=True)
class Stage:
    """`start`: the step (schedule "steps") or the pass rate (schedule "threshold") that starts
    the stage; `weights`: one per bucket, summing to 1."""

    start: float
    weights: tuple[float, ...]


def parse_levels(text: str) -> tuple[tuple[int, ...], ...]:
    """ "1-2,3,4-5" -> ((1, 2), (3,), (4, 5)): groups of levels, each a level or a range."""
    groups, seen = [], set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"{part.strip()!r} is not a level or a range of levels like 1-2")
        low, high = int(match[1]), int(match[2] or match[1])
        if low > high:
            raise ValueError(f"level range {part.strip()!r} runs backwards")
        levels = tuple(range(low, high + 1))
        if seen & set(levels):
            raise ValueError(f"level {min(seen & set(levels))} is in two groups")
        seen |= set(levels)
        groups.append(levels)
    return tuple(groups)


def parse_edges(text: str) -> tuple[float, ...]:
    """ "0.7,0.3" -> (0.7, 0.3): pass-rate cut points, falling, strictly inside (0, 1)."""
    try:
        edges = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of pass rates") from None
    if not all(0 < e < 1 for e in edges) or any(a <= b for a, b in zip(edges, edges[1:])):
        raise ValueError(f"{text!r}: cut points must fall, each strictly between 0 and 1")
    return edges


def parse_stages(text: str, schedule: str, num_buckets: int) -> tuple[Stage, ...]:
    """ "0:1,0,0; 20:0.5,0.5,0" -> Stages; see the module docstring for what starts mean."""
    stages = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        start_text, sep, weights_text = part.partition(":")
        try:
            start = float(start_text)
            weights = [float(w) for w in weights_text.split(",")]
        except ValueError:
            raise ValueError(f"stage {i + 1} {part.strip()!r} is not START:w1,w2,...") from None
        if not sep or len(weights) != num_buckets:
            raise ValueError(
                f"stage {i + 1} {part.strip()!r} needs START:w1,...,w{num_buckets}, "
                f"one weight per bucket"
            )
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"stage {i + 1} weights must be >= 0 with a positive sum")
        stages.append(Stage(start, tuple(w / sum(weights) for w in weights)))
    if not stages or stages[0].start != 0:
        raise ValueError(f"{text!r}: the first stage must start at 0")
    later = [s.start for s in stages[1:]]
    if schedule == "steps" and (
        any(s != int(s) for s in later) or any(a >= b for a, b in zip([0.0, *later], later))
    ):
        raise ValueError(f"{text!r}: stage starts must be whole steps, rising")
    if schedule == "threshold" and not all(0 < s <= 1 for s in later):
        raise ValueError(f"{text!r}: each stage after the first starts at a pass rate in (0, 1]")
    return tuple(stages)


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """The settings: how examples fall into buckets and how the mix moves between them."""

    schedule: str
    stages: tuple[Stage, ...]
    by: str = "level"
    levels: tuple[tuple[int, ...], ...] = ((1, 2), (3,), (4, 5))
    edges: tuple[float, ...] = (0.7, 0.3)
    decay: float = 0.9
    min_stage_steps: int = 5

    @classmethod
    def from_config(cls, block: Any) -> Curriculum:
        """From the `data.curriculum` config block; errors name the key at fault."""

        def parse(key, fn, *args):
            try:
                return fn(block[key], *args)
            except ValueError as e:
                raise ValueError(f"config.data.curriculum.{key}={block[key]!r}: {e}") from None

        check_choice("data.curriculum.schedule", block.schedule, SCHEDULES)
        check_choice("data.curriculum.by", block.by, BUCKET_BY)
        if not 0 <= block.decay < 1:
            raise ValueError(f"config.data.curriculum.decay={block.decay} must be in [0, 1)")
        if block.min_stage_steps < 1:
            raise ValueError(
                f"config.data.curriculum.min_stage_steps={block.min_stage_steps} must be >= 1"
            )
        if block.by == "pass_rate" and not block.pass_rate_file:
            raise ValueError(
                "config.data.curriculum.by='pass_rate' needs data.curriculum.pass_rate_file "
                "(the pass rates written by launch/filter_difficulty.py)"
            )
        levels, edges = cls.levels, cls.edges
        if block.by == "level":
            levels = parse("levels", parse_levels)
        else:
            edges = parse("pass_rate_edges", parse_edges)
        num_buckets = len(levels) if block.by == "level" else len(edges) + 1
        stages = parse("stages", parse_stages, block.schedule, num_buckets)
        return cls(block.schedule, stages, block.by, levels, edges, float(block.decay),
                   int(block.min_stage_steps))  # fmt: skip

    @property
    def bucket_names(self) -> tuple[str, ...]:
        if self.by == "level":
            return tuple(f"level_{g[0]}" + (f"-{g[-1]}" if len(g) > 1 else "") for g in self.levels)
        bounds = (1, *self.edges, 0)
        return tuple(f"pass_{low:g}-{high:g}" for high, low in zip(bounds, bounds[1:]))

    def assign(
        self, examples: Sequence[Example], pass_rates: Mapping[str, float] | None = None
    ) -> np.ndarray:
        """The bucket of each example; an example that fits none is an error, with counts."""
        if self.by == "pass_rate":
            if pass_rates is None:
                raise ValueError("bucketing by pass rate needs the pass rates")
            missing = [ex.id for ex in examples if ex.id not in pass_rates]
            if missing:
                raise ValueError(
                    f"no pass rate for {len(missing)} of {len(examples)} examples, e.g. "
                    f"{missing[:3]}: pass rates are looked up by example id, so measure them on "
                    "data.train itself (or set data.id_field so that ids survive filtering)"
                )
            rates = [pass_rates[ex.id] for ex in examples]
            bad = [(ex.id, r) for ex, r in zip(examples, rates) if not 0 <= r <= 1]
            if bad:
                raise ValueError(f"pass rate of {bad[0][0]!r} is {bad[0][1]!r}, not in [0, 1]")
            return np.asarray([sum(r < e for e in self.edges) for r in rates])
        of_level = {level: b for b, group in enumerate(self.levels) for level in group}
        outside = [ex.level for ex in examples if ex.level not in of_level]
        if outside:
            values, counts = np.unique([str(v) for v in outside], return_counts=True)
            found = ", ".join(f"level {v}: {c}" for v, c in zip(values, counts))
            groups = ",".join(name.removeprefix("level_") for name in self.bucket_names)
            raise ValueError(
                f"{len(outside)} of {len(examples)} examples fall in no curriculum bucket "
                f"({found}); examples need a level (data.level_field) within "
                f"data.curriculum.levels={groups!r}"
            )
        return np.asarray([of_level[ex.level] for ex in examples])


class CurriculumIterator:
    """Endless stream of batches of Examples, drawn from buckets by the current stage's mix.

    The interface of `PromptIterator`: `batch_size` is the global batch, of which process
    `process_index` gets its contiguous `batch_size // process_count` slice (every process
    computes the same global batch). Call `update` once per training step with the step's
    verdicts: it moves the running pass rates and the schedule. A step is one `update`, however
    many batches it drew (dynamic sampling draws several, all with that step's mix).

    Each batch gives bucket b `floor(w_b * batch_size)` prompts, and the prompts left over go
    to buckets with probability equal to their fractional part (systematic sampling): each
    batch has the mix's proportions as closely as whole prompts allow, with no rounding bias
    over many batches. The batch is then shuffled, so every process's slice has the mix too. A
    bucket walks through its own shuffled order; one that runs out mid-batch reshuffles (its
    next epoch) and goes on, so a bucket smaller than its share of a batch repeats prompts.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seed: int,
        curriculum: Curriculum,
        *,
        pass_rates: Mapping[str, float] | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of "
                f"process_count={process_count}"
            )
        self.examples = list(examples)
        self.batch_size, self.seed, self.curriculum = batch_size, seed, curriculum
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = batch_size // process_count
        self.names = curriculum.bucket_names
        bucket_of = curriculum.assign(self.examples, pass_rates)
        self._members = [np.flatnonzero(bucket_of == b) for b in range(len(self.names))]
        sizes = [len(m) for m in self._members]
        if 0 in sizes:
            counts = ", ".join(f"{n}: {s}" for n, s in zip(self.names, sizes))
            raise ValueError(
                f"curriculum bucket {self.names[sizes.index(0)]} has no examples (examples per "
                f"bucket: {counts}); change data.curriculum's buckets or the data"
            )
        self._bucket_of_id = {ex.id: int(b) for ex, b in zip(self.examples, bucket_of)}
        self._order_cache: dict[tuple[int, int], np.ndarray] = {}
        num = len(self.names)
        self.batches = self.steps = self.stage = self.stage_start = 0
        self.bucket_epoch, self.bucket_offset = [0] * num, [0] * num
        self.correct, self.total = [0.0] * num, [0.0] * num

    def __iter__(self) -> CurriculumIterator:
        return self

    def _bucket_order(self, bucket: int, epoch: int) -> np.ndarray:
        key = (bucket, epoch)
        if key not in self._order_cache:  # only each bucket's current epoch is kept
            self._order_cache = {k: v for k, v in self._order_cache.items() if k[0] != bucket}
            rng = np.random.default_rng([self.seed, _BUCKET_STREAM, bucket, epoch])
            self._order_cache[key] = self._members[bucket][
                rng.permutation(len(self._members[bucket]))
            ]
        return self._order_cache[key]

    def _take(self, bucket: int, count: int) -> list[int]:
        taken = []
        while len(taken) < count:
            order = self._bucket_order(bucket, self.bucket_epoch[bucket])
            offset = self.bucket_offset[bucket]
            chunk = order[offset : offset + count - len(taken)]
            taken += chunk.tolist()
            self.bucket_offset[bucket] += len(chunk)
            if self.bucket_offset[bucket] == len(order):
                self.bucket_epoch[bucket] += 1
                self.bucket_offset[bucket] = 0
        return taken

    def batch_counts(self, weights: Sequence[float], rng: np.random.Generator) -> np.ndarray:
        """Prompts per bucket in one batch: floor of each quota, then systematic rounding."""
        quota = np.asarray(weights, np.float64) * self.batch_size
        counts = np.floor(quota + 1e-9).astype(np.int64)
        left = self.batch_size - int(counts.sum())
        if left > 0:
            # Points (u + k) * spacing, k < left, over the cumulative fractional parts: bucket b
            # gets one where a point falls in its stretch, of length frac_b < spacing ~ 1, which
            # happens with probability frac_b; a weight-0 bucket has an empty stretch.
            cum = np.cumsum(np.clip(quota - counts, 0.0, None))
            points = (rng.random() + np.arange(left)) * (cum[-1] / left)
            last = int(np.flatnonzero(quota > counts).max())
            hits = np.minimum(np.searchsorted(cum, points, side="right"), last)
            counts += np.bincount(hits, minlength=len(counts))
        return counts

    def __next__(self) -> list[Example]:
        rng = np.random.default_rng([self.seed, _MIX_STREAM, self.batches])
        counts = self.batch_counts(self.curriculum.stages[self.stage].weights, rng)
        chosen = [i for b, n in enumerate(counts) for i in self._take(b, int(n))]
        chosen = [chosen[j] for j in rng.permutation(len(chosen))]
        self.batches += 1
        start = self.process_index * self.local_batch_size
        return [self.examples[i] for i in chosen[start : start + self.local_batch_size]]

    def counts(self, examples: Sequence[Example], correct: Sequence[Any]) -> np.ndarray:
        """int64 [buckets, 2]: (correct, total) samples per bucket. `correct` has one verdict
        per sample, `len(examples) * k` of them in example order (or [len(examples), k])."""
        correct_gk = np.asarray(correct, bool).reshape(len(examples), -1)
        out = np.zeros((len(self.names), 2), np.int64)
        for ex, row in zip(examples, correct_gk):
            if ex.id not in self._bucket_of_id:
                raise KeyError(f"example {ex.id!r} is not one of this curriculum's examples")
            out[self._bucket_of_id[ex.id]] += (int(row.sum()), len(row))
        return out

    def update(self, examples: Sequence[Example], correct: Sequence[Any]) -> None:
        """Ends a step: its verdicts (see `counts`) move the running pass rates and the stage."""
        self.update_counts(self.counts(examples, correct))

    def update_counts(self, counts: np.ndarray) -> None:
        """`update` from (correct, total) per bucket, e.g. `counts` summed over processes."""
        counts = np.asarray(counts)
        if counts.shape != (len(self.names), 2):
            raise ValueError(f"counts of shape {counts.shape}, expected ({len(self.names)}, 2)")
        d = self.curriculum.decay
        self.correct = [d * c + int(n) for c, n in zip(self.correct, counts[:, 0])]
        self.total = [d * t + int(n) for t, n in zip(self.total, counts[:, 1])]
        self.steps += 1
        stages = self.curriculum.stages
        if self.curriculum.schedule == "steps":
            self.stage = max(i for i, s in enumerate(stages) if s.start <= self.steps)
        elif self.stage + 1 < len(stages) and (
            self.steps - self.stage_start >= self.curriculum.min_stage_steps
        ):
            weights = stages[self.stage].weights
            hardest = max(b for b, w in enumerate(weights) if w > 0)
            rate = self.pass_rates()[self.names[hardest]]
            if rate is not None and rate >= stages[self.stage + 1].start:
                self.stage, self.stage_start = self.stage + 1, self.steps

    def mix(self) -> dict[str, float]:
        """Bucket name -> its weight in the next batch."""
        return dict(zip(self.names, self.curriculum.stages[self.stage].weights))

    def pass_rates(self) -> dict[str, float | None]:
        """Bucket name -> running pass rate (None before any of its samples was verified)."""
        return {
            n: c / t if t > 0 else None for n, c, t in zip(self.names, self.correct, self.total)
        }

    def stats(self) -> dict[str, float]:
        """TensorBoard scalars: `curriculum/weight/<bucket>`, `curriculum/pass_rate/<bucket>`
        (buckets with verified samples only) and `curriculum/stage` (0-based)."""
        out = {f"curriculum/weight/{n}": w for n, w in self.mix().items()}
        out |= {
            f"curriculum/pass_rate/{n}": r for n, r in self.pass_rates().items() if r is not None
        }
        out["curriculum/stage"] = float(self.stage)
        return out

    def _identity(self) -> dict[str, Any]:
        """What a state must have been taken with to continue this stream."""
        ids = "\n".join(ex.id for ex in self.examples).encode("utf-8")
        return {
            "curriculum": repr(self.curriculum),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_examples": len(self.examples),
            "examples_crc32": zlib.crc32(ids),
            "bucket_sizes": [len(m) for m in self._members],
        }

    def state_dict(self) -> dict[str, Any]:
        """The position and running pass rates, plus what must match on resume; plain ints,
        floats, strings and lists (floats survive JSON exactly)."""
        return self._identity() | {
            "batches": self.batches, "steps": self.steps, "stage": self.stage,
            "stage_start": self.stage_start, "bucket_epoch": list(self.bucket_epoch),
            "bucket_offset": list(self.bucket_offset), "correct": list(self.correct),
            "total": list(self.total),
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues from a `state_dict()`; refuses one taken over other data or settings."""
        if "curriculum" not in state:
            raise ValueError(
                "iterator state is from a run without a curriculum (data.curriculum.schedule="
                "'none'); resuming it with one would not continue the same stream"
            )
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ValueError(
                    f"iterator state has {key}={state.get(key)!r} but this iterator has "
                    f"{value!r}; resuming would not continue the same stream"
                )
        num = len(self.names)
        sizes = [len(m) for m in self._members]
        lists = [state[k] for k in ("bucket_epoch", "bucket_offset", "correct", "total")]
        if (
            any(len(x) != num for x in lists)
            or not 0 <= int(state["stage"]) < len(self.curriculum.stages)
            or any(not 0 <= int(o) < s for o, s in zip(state["bucket_offset"], sizes))
        ):
            raise ValueError(f"invalid curriculum iterator position in {dict(state)}")
        self.batches, self.steps = int(state["batches"]), int(state["steps"])
        self.stage, self.stage_start = int(state["stage"]), int(state["stage_start"])
        self.bucket_epoch = [int(x) for x in state["bucket_epoch"]]
        self.bucket_offset = [int(x) for x in state["bucket_offset"]]
        self.correct = [float(x) for x in state["correct"]]
        self.total = [float(x) for x in state["total"]]
