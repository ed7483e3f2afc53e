"""The online curriculum: mixes per schedule, threshold stages, exact resume, bucket errors,
per-process slices, and a short RL run with it on (with dynamic sampling) that resumes."""

import collections
import json
import os
import shutil

import numpy as np
import pytest

from zero_rl.config import base_config, load_config, validate
from zero_rl.data import PromptIterator
from zero_rl.data.curriculum import Curriculum, CurriculumIterator
from zero_rl.data.records import Example
from zero_rl.data.synthetic import AdditionTask
from zero_rl.summaries import read_scalars
from zero_rl.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


def _examples(per_level=(20, 20, 20, 20, 20)):
    """`per_level[i]` examples of level i + 1, ids "t/<level>.<n>"."""
    return [Example(f"t/{level}.{n}", f"q {level} {n}", "1", "t", level=level)
            for level, count in enumerate(per_level, start=1) for n in range(count)]  # fmt: skip


def _curriculum(**overrides) -> Curriculum:
    block = base_config().data.curriculum
    block.update(dict(schedule="steps") | overrides)
    return Curriculum.from_config(block)


def _bucket_counts(it: CurriculumIterator, batch) -> list[int]:
    of_level = {lv: b for b, group in enumerate(it.curriculum.levels) for lv in group}
    counts = collections.Counter(of_level[ex.level] for ex in batch)
    return [counts[b] for b in range(len(it.names))]


def _no_verdicts(it):
    return np.zeros((len(it.names), 2), np.int64)


@pytest.mark.parametrize(
    "stages, expected",  # after each update: the mix, and a batch of 8's prompts per bucket
    [
        ("0:1,0,0; 2:1,1,0; 4:1,1,2",
         [(1, 0, 0)] * 2 + [(0.5, 0.5, 0)] * 2 + [(0.25, 0.25, 0.5)] * 2),
        ("0:0,0,3; 1:1,3,4", [(0, 0, 1)] + [(0.125, 0.375, 0.5)] * 5),
    ],
)  # fmt: skip
def test_steps_schedule_mix_and_batches(stages, expected):
    it = CurriculumIterator(_examples(), 8, seed=0, curriculum=_curriculum(stages=stages))
    for weights in expected:
        assert list(it.mix().values()) == pytest.approx(weights)
        # Quotas that are whole prompts are met exactly, in every batch.
        assert _bucket_counts(it, next(it)) == [round(w * 8) for w in weights]
        it.update_counts(_no_verdicts(it))
    assert list(it.mix()) == ["level_1-2", "level_3", "level_4-5"]


def test_fractional_quotas_round_without_bias():
    # 8 * (1/3, 0, 2/3) = (2.67, 0, 5.33) prompts: 2 or 3, never any of bucket 2, 8 in all.
    it = CurriculumIterator(_examples(), 8, seed=3, curriculum=_curriculum(stages="0:1,0,2"))
    counts = np.asarray([_bucket_counts(it, next(it)) for _ in range(600)])
    assert set(counts[:, 0]) == {2, 3} and set(counts[:, 1]) == {0} and set(counts.sum(1)) == {8}
    np.testing.assert_allclose(counts.mean(0), [8 / 3, 0, 16 / 3], atol=0.1)


def test_threshold_schedule_advances_on_the_hardest_buckets_running_pass_rate():
    cur = _curriculum(schedule="threshold", stages="0:1,0,0; 0.75:1,1,0; 0.5:0,1,1",
                      decay=0.5, min_stage_steps=2)  # fmt: skip
    it = CurriculumIterator(_examples(), 8, seed=0, curriculum=cur)
    steps = [  # (correct, total) of buckets 0 and 1 -> expected stage, EMA pass rates
        ((6, 8), (0, 0), 0, 6 / 8, None),  # 0.75 reached, but the stage is 1 step old
        ((2, 8), (0, 0), 0, 5 / 12, None),  # (0.5 * 6 + 2) / (0.5 * 8 + 8)
        ((8, 8), (0, 0), 1, 10.5 / 14, None),  # 0.75: stage 1, whose hardest is bucket 1
        ((0, 8), (8, 8), 1, 5.25 / 15, 1.0),  # 1.0 >= 0.5, but the stage is 1 step old
        ((0, 0), (0, 0), 2, 2.625 / 7.5, 1.0),  # no samples: the rates hold
    ]
    for b0, b1, stage, rate0, rate1 in steps:
        it.update_counts([b0, b1, (0, 0)])
        assert it.stage == stage
        assert it.pass_rates() == {"level_1-2": pytest.approx(rate0), "level_3": rate1,
                                   "level_4-5": None}  # fmt: skip
    assert it.stats() == {
        "curriculum/weight/level_1-2": 0.0, "curriculum/weight/level_3": 0.5,
        "curriculum/weight/level_4-5": 0.5, "curriculum/pass_rate/level_1-2": 0.35,
        "curriculum/pass_rate/level_3": 1.0, "curriculum/stage": 2.0,
    }  # fmt: skip
    assert it.stage == 2 and it.stage_start == 5  # the last stage: nothing more to reach


def test_update_counts_each_sample_in_its_examples_bucket():
    it = CurriculumIterator(_examples(), 8, seed=0, curriculum=_curriculum())
    batch = [ex for ex in _examples() if ex.id in ("t/1.0", "t/3.0", "t/5.0")]
    correct = [True, False, True, True, False, False]  # 2 samples each, in example order
    np.testing.assert_array_equal(it.counts(batch, correct), [[1, 2], [2, 2], [0, 2]])
    it.update(batch, correct)
    assert it.pass_rates() == {"level_1-2": 0.5, "level_3": 1.0, "level_4-5": 0.0}
    with pytest.raises(KeyError, match="'x/1' is not one of this curriculum's examples"):
        it.counts([Example("x/1", "q", "1", "x", level=1)], [True])


def _verdicts(batch, step):
    """Deterministic fake verdicts, 2 samples per prompt: easy levels solved first."""
    return [ex.level <= 1 + step // 2 and (i + step) % 3 != 0
            for ex in batch for i in range(2)]  # fmt: skip


def _run(it, steps, batches):
    """Steps as the RL loop takes them with dynamic sampling: 2 draws, then one update."""
    for step in range(it.steps, it.steps + steps):
        counts = 0
        for _ in range(2):
            batch = next(it)
            batches.append([ex.id for ex in batch])
            counts = counts + it.counts(batch, _verdicts(batch, step))
        it.update_counts(counts)
    return batches


def test_resume_mid_run_continues_the_exact_stream():
    # Small buckets (7 and 5 examples) run out and reshuffle mid-batch; stages change on the way.
    examples = _examples((4, 3, 5, 9, 9))
    cur = _curriculum(schedule="threshold", stages="0:1,0,0; 0.6:1,1,0; 0.6:1,1,1",
                      decay=0.8, min_stage_steps=1)  # fmt: skip
    whole = CurriculumIterator(examples, 8, seed=5, curriculum=cur)
    expected = _run(whole, 12, [])
    assert whole.stage == 2 and min(whole.bucket_epoch) >= 1
    first = CurriculumIterator(examples, 8, seed=5, curriculum=cur)
    got = _run(first, 5, [])
    assert 0 < first.stage < 2  # the resume point is between stage changes
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint's meta holds it
    resumed = CurriculumIterator(examples, 8, seed=5, curriculum=cur)
    resumed.load_state_dict(state)
    assert _run(resumed, 7, got) == expected
    assert resumed.state_dict() == whole.state_dict()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(seed=6), "seed=5 but this iterator has 6"),
        (dict(examples=_examples((4, 3, 5, 9, 8)) + [Example("t/9", "q", "1", "t", level=5)]),
         "examples_crc32"),
        (dict(curriculum=_curriculum(stages="0:1,0,0; 3:1,1,1")), "curriculum="),
        (dict(batch_size=4), "batch_size=8 but this iterator has 4"),
    ],
)  # fmt: skip
def test_load_state_dict_refuses_a_state_of_other_data_or_settings(change, message):
    args = dict(examples=_examples((4, 3, 5, 9, 9)), batch_size=8, seed=5,
                curriculum=_curriculum())  # fmt: skip
    state = CurriculumIterator(**args).state_dict()
    with pytest.raises(ValueError, match=message):
        CurriculumIterator(**(args | change)).load_state_dict(state)


def test_load_state_dict_refuses_a_plain_iterators_state():
    state = PromptIterator(_examples(), 8, seed=0).state_dict()
    it = CurriculumIterator(_examples(), 8, seed=0, curriculum=_curriculum())
    with pytest.raises(ValueError, match="from a run without a curriculum"):
        it.load_state_dict(state)


def test_an_empty_bucket_is_an_error_naming_it_and_every_buckets_count():
    with pytest.raises(ValueError, match=r"bucket level_4-5 has no examples .*level_1-2: 7, "
                                         r"level_3: 5, level_4-5: 0\)"):  # fmt: skip
        CurriculumIterator(_examples((4, 3, 5)), 8, seed=0, curriculum=_curriculum())


def test_examples_outside_every_bucket_are_an_error():
    examples = _examples((4, 3, 5, 2, 2)) + [Example("u/1", "q", "1", "u")]
    with pytest.raises(ValueError, match=r"3 of 17 examples fall in no curriculum bucket "
                                         r"\(level 5: 2, level None: 1\)"):  # fmt: skip
        CurriculumIterator(examples, 8, seed=0, curriculum=_curriculum(levels="1-2,3,4"))


def test_buckets_by_pass_rate():
    examples = _examples((10, 0, 0, 0, 0))
    rates = {ex.id: i / 9 for i, ex in enumerate(examples)}  # 0, 1/9, ..., 1
    cur = _curriculum(by="pass_rate", pass_rate_file="rates.jsonl", pass_rate_edges="0.7,0.3",
                      stages="0:1,1,1")  # fmt: skip
    it = CurriculumIterator(examples, 4, seed=0, curriculum=cur, pass_rates=rates)
    assert it.names == ("pass_0.7-1", "pass_0.3-0.7", "pass_0-0.3")
    by_bucket = [sorted(examples[i].id for i in m) for m in it._members]
    # 7/9 = 0.78 and up; 3/9 = 0.33 up to 6/9 = 0.67; 0 to 2/9 = 0.22.
    assert by_bucket == [[f"t/1.{n}" for n in (7, 8, 9)], [f"t/1.{n}" for n in (3, 4, 5, 6)],
                         [f"t/1.{n}" for n in (0, 1, 2)]]  # fmt: skip
    with pytest.raises(ValueError, match=r"no pass rate for 1 of 10 examples, e.g. \['t/1.0'\]"):
        CurriculumIterator(examples, 4, seed=0, curriculum=cur,
                           pass_rates={k: v for k, v in rates.items() if k != "t/1.0"})  # fmt: skip


def test_each_process_gets_its_half_of_the_same_global_batch():
    cur = _curriculum(stages="0:1,1,0; 2:1,1,2")
    whole = CurriculumIterator(_examples(), 8, seed=1, curriculum=cur)
    halves = [CurriculumIterator(_examples(), 8, seed=1, curriculum=cur, process_index=i,
                                 process_count=2) for i in range(2)]  # fmt: skip
    for step in range(4):
        batch = [ex.id for ex in next(whole)]
        parts = [[ex.id for ex in next(h)] for h in halves]
        assert parts[0] + parts[1] == batch and not set(parts[0]) & set(parts[1])
        # Every process feeds the global counts (the loop sums them over processes).
        counts = np.asarray([[step, 8], [1, 8], [0, 0]])
        for it in (whole, *halves):
            it.update_counts(counts)
    assert halves[0].state_dict() == halves[1].state_dict() == whole.state_dict()
    # The global batch is shuffled after it is drawn bucket by bucket: each slice has the mix.
    first_half = np.asarray([_bucket_counts(halves[0], next(halves[0])) for _ in range(100)])
    np.testing.assert_allclose(first_half.mean(0), [1, 1, 2], atol=0.2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.curriculum.schedule=linear"], "unknown data.curriculum.schedule 'linear'"),
        (["data.curriculum.schedule=steps", "data.curriculum.stages=0:1,0; 5:0,1"],
         r"stages='0:1,0; 5:0,1': stage 1 '0:1,0' needs START:w1,...,w3"),
        (["data.curriculum.schedule=steps", "data.curriculum.stages=0:1,0,0; 5:1,1,0; 5:0,0,1"],
         "stage starts must be whole steps, rising"),
        (["data.curriculum.schedule=threshold"], r"starts at a pass rate in \(0, 1\]"),
        (["data.curriculum.schedule=steps", "data.curriculum.stages=1:1,0,0"],
         "the first stage must start at 0"),
        (["data.curriculum.schedule=steps", "data.curriculum.levels=1-2,2-5"],
         "level 2 is in two groups"),
        (["data.curriculum.schedule=steps", "data.curriculum.by=pass_rate"],
         "needs data.curriculum.pass_rate_file"),
        (["data.curriculum.schedule=steps", "data.curriculum.decay=1.0"], r"must be in \[0, 1\)"),
    ],
)  # fmt: skip
def test_validate_names_the_bad_curriculum_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(load_config(TINY, overrides))


# Two RL steps of the tiny job with no SFT stage, 8 prompts x 4 samples, DAPO dynamic sampling
# (the random model earns no reward, so every step draws its max_draws=2 batches), and a
# curriculum over pass-rate buckets that moves to the two harder buckets after step 1.
RUN = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "sft.steps=0", "total_steps=2",
       "eval_every=0", "checkpoint_every=1", "async_checkpoint=False", "rl.num_prompts=8",
       "rl.num_samples=4", "rl.minibatch_size=16", "sampling.max_new_tokens=12",
       "num_sample_texts=1", "rl.dynamic_sampling=true", "rl.max_draws=2",
       "data.curriculum.schedule=steps", "data.curriculum.by=pass_rate",
       "data.curriculum.stages=0:1,1,0; 1:0,1,1", "data.curriculum.decay=0.5"]  # fmt: skip


def _meta(workdir, step):
    with open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")) as f:
        return json.load(f)


def test_rl_run_with_curriculum_logs_it_and_resumes_exactly(tmp_path):
    rates = tmp_path / "rates.pass_rates.jsonl"
    with rates.open("w") as f:
        for i, ex in enumerate(AdditionTask(eval_size=200, seed=0).split("train")):
            f.write(json.dumps({"id": ex.id, "pass_rate": (i % 5) / 4, "num_correct": i % 5,
                                "k": 4}) + "\n")  # fmt: skip
    config = RUN + [f"data.curriculum.pass_rate_file={rates}"]
    workdir = str(tmp_path / "run")
    loop.train(load_config(TINY, config), workdir)
    scalars = read_scalars(os.path.join(workdir, "tb"))
    # Logged after each step: the mix the next step draws with, the pass rates so far.
    assert scalars["curriculum/weight/pass_0.7-1"] == [(1, 0.0), (2, 0.0)]
    assert scalars["curriculum/weight/pass_0-0.3"] == [(1, 0.5), (2, 0.5)]
    assert [s for s, _ in scalars["curriculum/pass_rate/pass_0.7-1"]] == [1, 2]
    assert [s for s, _ in scalars["curriculum/pass_rate/pass_0-0.3"]] == [2]  # drawn in step 2
    state = _meta(workdir, 2)["data"]
    assert state["batches"] == 4 and state["steps"] == 2  # 2 draws per step, one update
    # Every drawn group is counted, not only the kept ones: 2 draws x 8 prompts x 4 samples.
    assert sum(state["total"]) == pytest.approx(0.5 * 64 + 64)
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    # Resuming from step 1 replays step 2 exactly: the same prompts and pass rates.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))
    os.remove(os.path.join(workdir, "final_metrics.json"))
    loop.train(load_config(TINY, config), workdir)
    assert _meta(workdir, 2)["data"] == state
    again = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert {k: v for k, v in again.items() if not k.startswith("perf/")} == {
        k: v for k, v in final.items() if not k.startswith("perf/")
    }
