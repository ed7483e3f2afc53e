"""Resuming after crashes: SIGKILL in the middle of an asynchronous save, a corrupt latest
checkpoint (the run falls back, repairs it and ends as an uninterrupted run), a preemption seen
by another process, and a checkpoint of another seed."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import jax.numpy as jnp
import numpy as np
import pytest

from zero_rl.checkpoint import Checkpointer, abstract_like
from zero_rl.config import load_config
from zero_rl.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")
STEPS = 3
# The tiny job cut down to seconds: one device, no SFT stage, three RL steps of 8 prompts with
# short responses, a checkpoint after every step, saved asynchronously. The random model earns
# no rewards; the entropy term still moves it, so each step's metrics depend on the last.
RESUME = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1", "sft.steps=0", f"total_steps={STEPS}",
          "eval_every=0", "checkpoint_every=1", "keep_checkpoints=3", "async_checkpoint=True",
          "rl.num_prompts=8", "rl.num_samples=4", "rl.minibatch_size=16",
          "sampling.max_new_tokens=12", "rl.loss.entropy_coef=0.01",
          "num_sample_texts=1"]  # fmt: skip


def _state(value, size=1 << 18):
    return {"w": jnp.full((size,), float(value)), "b": jnp.arange(3, dtype=jnp.int32) + value}


# A child process saves steps 1 and 2, starts the asynchronous save of step 3 and SIGKILLs
# itself from the save's background thread at `phase` (Checkpointer's fault-injection hook):
# while the items are written, or with all written but before the step is marked complete.
_CHILD = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from zero_rl.checkpoint import Checkpointer

    directory, phase = sys.argv[1], sys.argv[2]

    def state(value):
        return {"w": jnp.full((1 << 18,), float(value)),
                "b": jnp.arange(3, dtype=jnp.int32) + value}

    def die(point, step):
        if (point, step) == (phase, 3):
            print("killed during", point, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    ckpt = Checkpointer(directory, keep=2, async_save=True, on_phase=die)
    for step in (1, 2):
        ckpt.save(step, state(step), {"step": step})
        ckpt.wait()
    ckpt.save(3, state(3), {"step": 3})
    ckpt.wait()
    print("save finished: the kill did not happen", flush=True)
""")


@pytest.mark.parametrize("phase", ["write", "commit"])
def test_sigkill_during_an_async_save_keeps_the_older_steps(tmp_path, phase):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), phase],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    assert f"killed during {phase}" in proc.stdout
    # Step 3 was under way (its temporary directory), never listed as a checkpoint.
    assert [n for n in os.listdir(tmp_path) if n.startswith("3.")], os.listdir(tmp_path)
    assert not os.path.exists(tmp_path / "3")
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=True)
    # Step 1 falls outside keep=2 once step 3 is complete; step 3 never was, so it stays.
    assert ckpt.all_steps() == [1, 2]
    for step in (1, 2):
        state, meta = ckpt.restore(step, abstract_like(_state(0)))
        np.testing.assert_array_equal(state["w"], np.full(1 << 18, float(step)))
        assert meta == {"step": step}
    step, state, _ = ckpt.restore_latest(abstract_like(_state(0)))
    assert step == 2 and int(state["b"][0]) == 2
    # The rerun's save of step 3 completes despite the leftover, and only then drops step 1.
    assert ckpt.save(3, _state(3), {"step": 3})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    ckpt.close()


def test_old_steps_are_deleted_only_after_the_newer_save_is_complete(tmp_path):
    release, committing = threading.Event(), threading.Event()
    on_disk = {}  # phase -> (step 1's directory exists, step 2's directory exists)

    def slow_disk(phase, step):  # the commit of step 2 waits for the test
        if step != 2:
            return
        on_disk[phase] = (os.path.isdir(tmp_path / "1"), os.path.isdir(tmp_path / "2"))
        if phase == "commit":
            committing.set()
            assert release.wait(timeout=120)

    ckpt = Checkpointer(str(tmp_path), keep=1, async_save=True, on_phase=slow_disk)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.wait()
    ckpt.save(2, _state(2), {"step": 2})  # returns while the write goes on in the background
    try:
        assert committing.wait(timeout=120)
        # Held just before step 2 is marked complete: step 1 is all there is on disk.
        assert os.path.isdir(tmp_path / "1") and not os.path.isdir(tmp_path / "2")
    finally:
        release.set()  # a failed check must not leave the save held
    ckpt.wait()
    # Step 2 was complete while step 1 still existed; step 1 went only after that.
    assert on_disk == {"write": (True, False), "commit": (True, False), "complete": (True, True)}
    assert not os.path.isdir(tmp_path / "1") and ckpt.all_steps() == [2]
    ckpt.close()


def _final(workdir) -> dict:
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("perf/")}


def _steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted run: its workdir and final metrics."""
    workdir = str(tmp_path_factory.mktemp("finished"))
    loop.train(load_config(TINY, RESUME), workdir)
    assert _steps(workdir) == [1, 2, 3]
    final = _final(workdir)
    assert final["train/grad_norm"] > 0
    return workdir, final


def _copy(finished, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(finished[0], workdir)
    return workdir


def test_corrupt_final_checkpoint_is_retrained_and_saved_again(finished, tmp_path, caplog):
    workdir = _copy(finished, tmp_path)
    last = os.path.join(workdir, "checkpoints", str(STEPS))
    for root, _, files in os.walk(os.path.join(last, "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")
    with caplog.at_level(logging.INFO):
        loop.train(load_config(TINY, RESUME), workdir)
    assert f"checkpoint at step {STEPS}" in caplog.text and "unreadable" in caplog.text
    assert f"resumed from step {STEPS - 1}" in caplog.text
    (moved,) = os.listdir(os.path.join(workdir, "checkpoints", "corrupt"))
    assert moved.startswith(f"{STEPS}-")
    assert _steps(workdir) == [1, 2, 3]  # step 3 retrained and saved again
    assert _final(workdir) == finished[1]  # bit-identical to the uninterrupted run
    # Repaired: the next rerun finds a readable final step and has nothing to do.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        loop.train(load_config(TINY, RESUME), workdir)
    assert "unreadable" not in caplog.text and "nothing to do" in caplog.text
    assert len(os.listdir(os.path.join(workdir, "checkpoints", "corrupt"))) == 1


def test_preemption_on_another_process_stops_every_process(finished, tmp_path, monkeypatch):
    """Only another host got SIGTERM: the agreed flag still makes this one save and stop."""
    workdir = _copy(finished, tmp_path)
    local_flags = []

    def another_host_was_preempted(flag):
        local_flags.append(flag)
        return True

    monkeypatch.setattr(loop, "any_process", another_host_was_preempted)
    more = RESUME + ["total_steps=6", "checkpoint_every=0"]  # no periodic saves
    metrics = loop.train(load_config(TINY, more), workdir)
    assert local_flags == [False]  # asked once, at the end of step 4
    assert _steps(workdir) == [2, 3, 4]
    with open(os.path.join(workdir, "checkpoints", "4", "meta", "metadata")) as f:
        meta = json.load(f)
    assert meta["step"] == 4 and meta["metrics"]["train/loss"] == metrics["train/loss"]


def test_resuming_with_another_seed_is_refused(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    with open(os.path.join(workdir, "checkpoints", str(STEPS), "meta", "metadata")) as f:
        assert json.load(f)["seed"] == 0
    # Without config.json (checkpoints copied elsewhere) the checkpoint's seed still decides.
    # No KL term, so no reference model is made before the checkpoint is read.
    os.remove(os.path.join(workdir, "config.json"))
    other = RESUME + ["seed=7", "rl.loss.kl_coef=0"]
    with pytest.raises(ValueError, match=r"trained with seed=0 but this run has seed=7"):
        loop.train(load_config(TINY, other), workdir)
    assert _steps(workdir) == [1, 2, 3]
