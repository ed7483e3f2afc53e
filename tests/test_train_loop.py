"""The RL loop end to end on the tiny config: it learns, records, resumes and handles signals."""

import contextlib
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from zero_rl import sharding
from zero_rl.config import load_config
from zero_rl.summaries import _read_events, read_scalars
from zero_rl.train.loop import train
from zero_rl.train.run import update_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")

# The loop runs on one of the 8 test devices: XLA:CPU collectives between 8 device threads on
# 2 cores can stall for minutes under load; the sharded update and sampler have their own tests
# (test_sharding.py, test_sampler.py).
ONE_DEVICE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]
# A reduced version of the default run: fewer SFT and RL steps, same task and recipe.
LEARN = ONE_DEVICE + ["sft.steps=400", "sft.checkpoint_every=400", "total_steps=20",
                      "eval_every=10", "checkpoint_every=10",
                      "eval.benchmarks=synthetic_addition", "eval.limit=16"]  # fmt: skip
# A few seconds of RL for the resume tests.
MICRO = ONE_DEVICE + ["sft.steps=20", "sft.checkpoint_every=20", "total_steps=10", "eval_every=0",
         "checkpoint_every=2", "rl.num_prompts=8", "rl.num_samples=4", "rl.minibatch_size=16",
         "async_checkpoint=False"]  # fmt: skip

REQUIRED_TAGS = [
    "train/reward_mean", "train/accuracy", "train/response_length_mean", "train/truncated_ratio",
    "train/kl", "train/entropy", "train/clip_frac", "train/grad_norm", "train/learning_rate",
    "train/verifier_timeouts", "train/reflection_words", "perf/step_time_s",
    "perf/sample_tokens_per_s", "perf/num_compiles", "eval/accuracy",
]  # fmt: skip


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("learn"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        metrics = train(load_config(TINY, LEARN), workdir)
    sys.stdout.write(out.getvalue())
    return workdir, metrics, read_scalars(os.path.join(workdir, "tb")), out.getvalue()


@pytest.mark.slow
def test_tiny_run_visibly_learns(learned_run):
    _, _, scalars, _ = learned_run
    accuracy = dict(scalars["eval/accuracy"])
    assert sorted(accuracy) == [0, 10, 20]
    # Held-out greedy accuracy: the SFT base model forgets carries; RL must fix them.
    assert accuracy[20] - accuracy[0] >= 0.30, accuracy


@pytest.mark.slow
def test_run_records_every_required_scalar_and_samples(learned_run):
    workdir, _, scalars, stdout = learned_run
    missing = [tag for tag in REQUIRED_TAGS if tag not in scalars]
    assert not missing
    assert [s for s, _ in scalars["train/reward_mean"]] == list(range(1, 21))
    # The tiny config has SimpleRL-Zoo's k3 KL term: a measured KL, positive once the policy moved.
    assert all(v >= 0 for _, v in scalars["train/kl"]) and scalars["train/kl"][-1][1] > 0
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["total_steps"] == 20
    # Sample responses with their verdicts, from several prompts, at every logged step.
    texts = {}
    for name in os.listdir(os.path.join(workdir, "tb")):
        for event in _read_events(os.path.join(workdir, "tb", name)):
            for value in event.summary.value:
                if value.tag.startswith("samples/"):
                    texts.setdefault(event.step, []).append(value.tensor.string_val[0].decode())
    assert sorted(texts) == list(range(1, 21))
    prompts = {re.match(r"\*\*prompt (\S+): correct=(True|False) ", t).group(1)
               for t in texts[20]}  # fmt: skip
    assert len(texts[20]) == 4 and len(prompts) == 4
    # One progress line per step.
    lines = re.findall(r"^step (\d+)/20 reward [+-]\d\.\d{3} acc \d\.\d{3} len [\d.]+ "
                       r"kl [\d.e+-]+ time [\d.]+s$", stdout, re.MULTILINE)  # fmt: skip
    assert lines == [str(i) for i in range(1, 21)]


@pytest.mark.slow
def test_periodic_benchmark_evaluation(learned_run):
    workdir, _, scalars, _ = learned_run
    steps = [s for s, _ in scalars["eval/synthetic_addition/accuracy"]]
    assert steps == [0, 10, 20]
    for step in steps:
        path = os.path.join(workdir, "eval", f"step_{step:06d}", "synthetic_addition")
        with open(os.path.join(path, "generations.jsonl")) as f:
            assert len(f.readlines()) == 16


@pytest.mark.slow
def test_compilations_stop_after_the_first_steps(learned_run):
    _, _, scalars, _ = learned_run
    compiles = [v for _, v in scalars["perf/num_compiles"]]
    assert compiles[2:] == [compiles[2]] * (len(compiles) - 2), compiles


def _launch(workdir, extra=()):
    cmd = [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--workdir={workdir}"]
    cmd += [f"--config.{o}" for o in MICRO + list(extra)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _wait_for_checkpoint(proc, workdir, step, timeout=300):
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isdir(path) and proc.poll() is None:
            return
        if proc.poll() is not None:
            pytest.fail(f"run exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint at step {step} within {timeout}s")


def _final(workdir):
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        metrics = json.load(f)
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    proc = _launch(workdir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return _final(workdir)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_bit_identical_final_metrics(tmp_path, reference_run):
    workdir = str(tmp_path)
    proc = _launch(workdir)
    _wait_for_checkpoint(proc, workdir, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _launch(workdir)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert "resumed from step" in out
    assert _final(workdir) == reference_run


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    workdir = str(tmp_path)
    proc = _launch(workdir, ["checkpoint_every=1000"])
    # The SFT stage's final checkpoint shows the RL stage is about to start.
    _wait_for_checkpoint_dir(proc, os.path.join(workdir, "sft", "sft_checkpoints", "20"))
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
    assert len(steps) == 1 and 1 <= steps[0] <= 10, steps
    assert "SIGTERM" in out


def _wait_for_checkpoint_dir(proc, path, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and not os.path.isdir(path):
        if proc.poll() is not None:
            pytest.fail(f"run exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    assert os.path.isdir(path), f"{path} did not appear"


def test_unknown_config_key_is_an_error_listing_valid_keys(tmp_path):
    with pytest.raises(KeyError, match="valid keys: .*'kl_coef'"):
        load_config(TINY, ["rl.loss.kl_coeff=0"])
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "train.py"), f"--workdir={tmp_path}",
         "--config.rl.nonexistent=1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "unknown key 'nonexistent' in config.rl; valid keys: [" in proc.stderr
    assert "'kl_in_reward_coef'" in proc.stderr and "'num_prompts'" in proc.stderr


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(learned_run):
    workdir, metrics, _, _ = learned_run
    final = pathlib.Path(workdir, "final_metrics.json")
    before = final.read_text()
    again = train(load_config(TINY, LEARN), workdir)
    assert final.read_text() == before
    assert again["train/reward_mean"] == metrics["train/reward_mean"]


def test_ppo_with_a_separate_critic_trains(tmp_path):
    """The loop with a critic of its own (optimiser, checkpoint); the shared value head is the
    policy's own params, and both updates have their tests in test_train_step.py."""
    overrides = MICRO + ["rl.estimator=gae", "rl.lam=0.95", "reward.incorrect_reward=-1.0",
                         "total_steps=2", "rl.critic=separate"]  # fmt: skip
    metrics = train(load_config(TINY, overrides), str(tmp_path))
    assert metrics["train/vf_loss"] > 0
    assert -1.0 <= metrics["train/vf_explained_variance"] <= 1.0


def test_memory_settings_change_no_result(tmp_path):
    """The static engine in calls of 2 prompts with a decode in 2 segments, the continuous
    engine with a pool a quarter of the batch (refilled, two prompts per prefill), both with
    query-chunked attention: greedy rollouts and the update match the plain run's (the
    continuous engine, one slot per response); a batch the calls or the slots cannot split is
    named."""
    greedy = MICRO + ["total_steps=1", "checkpoint_every=0", "sampling.temperature=0"]
    plain = train(load_config(TINY, greedy + ["sampling.slots=0"]), str(tmp_path / "plain"))
    chunked = ["model.attention=chunked", "model.attention_chunk=16"]
    variants = {
        "static": greedy + chunked + ["sampling.engine=static", "sampling.prompts_per_call=2",
                                      "sampling.decode_segments=2"],
        "slots": greedy + chunked + ["sampling.slots=8", "sampling.prefill_prompts=2"],
    }  # fmt: skip
    light = {name: train(load_config(TINY, overrides), str(tmp_path / name))
             for name, overrides in variants.items()}  # fmt: skip
    for name, metrics in light.items():
        for key in ["train/reward_mean", "train/response_length_mean", "train/loss",
                    "train/grad_norm", "train/entropy"]:  # fmt: skip
            assert metrics[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-6), (name, key)
    # The continuous engine reports how busy its slots were; the static sampler has no slots.
    assert "perf/slot_utilisation" not in light["static"]
    assert 0 < light["slots"]["perf/slot_utilisation"] <= 1
    assert 0 < plain["perf/slot_utilisation"] <= 1
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
    with pytest.raises(ValueError, match="rl.num_prompts=8 must be a multiple of 3"):
        update_options(load_config(TINY, greedy + ["sampling.prompts_per_call=3"]), mesh)
    two = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1})
    with pytest.raises(ValueError, match="sampling.slots=5 must be a multiple of 2"):
        update_options(load_config(TINY, greedy + ["sampling.slots=5", "mesh.data=2"]), two)
