"""Checkpointer: keep last N plus best, fall back past an unreadable latest checkpoint (moved
aside, never deleted), URLs kept verbatim, decisions shared by all processes, the phases of a
save that the fault-injection hook sees."""

import logging
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import multihost_utils

from zero_rl import checkpoint
from zero_rl.checkpoint import (
    PHASES,
    Checkpointer,
    abstract_like,
    any_process,
    checkpoint_path,
)


def _state(value):
    return {"w": jnp.full((4, 3), float(value)), "b": jnp.arange(3, dtype=jnp.int32) + value}


def test_save_restore_roundtrip_and_meta(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=True)
    ckpt.save(1, _state(1), {"step": 1, "data": {"epoch": 0, "batch_in_epoch": 3}})
    ckpt.wait()
    step, state, meta = ckpt.restore_latest(abstract_like(_state(0)))
    assert step == 1 and meta["data"]["batch_in_epoch"] == 3
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 1.0))
    assert ckpt.save(1, _state(1), {"step": 1}) is False  # never overwrites a saved step
    ckpt.close()


@pytest.mark.parametrize("async_save", [True, False])
def test_on_phase_sees_each_save_written_committed_and_completed(tmp_path, async_save):
    seen = []

    def record(phase, step):  # what is on disk at each point
        names = os.listdir(tmp_path)
        seen.append((phase, step, str(step) in names, any(n.startswith(f"{step}.") for n in names),
                     "1" in names))  # fmt: skip

    ckpt = Checkpointer(str(tmp_path), keep=1, async_save=async_save, on_phase=record)
    for step in (1, 2):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.wait()
    assert [s[:2] for s in seen] == [(phase, step) for step in (1, 2) for phase in PHASES]
    for phase, step, done, temporary, step_1 in seen:
        # Written and committed in the temporary directory; complete once it is renamed.
        assert (done, temporary) == ((True, False) if phase == "complete" else (False, True))
        # keep=1 drops step 1 only after step 2 is complete.
        assert step_1 == (step == 2 or phase == "complete")
    assert ckpt.all_steps() == [2] and not os.path.isdir(tmp_path / "1")
    state, meta = ckpt.restore(2, abstract_like(_state(0)))
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 2.0))
    assert meta == {"step": 2}
    ckpt.close()
    plain = Checkpointer(str(tmp_path), keep=1)  # no hook: reads what the hooked one wrote
    assert plain.restore_latest(abstract_like(_state(0)))[0] == 2
    plain.close()


@pytest.mark.parametrize("async_save", [True, False])
@pytest.mark.parametrize("phase", ["write", "commit"])
def test_an_error_before_the_commit_fails_the_save_and_lists_no_step(tmp_path, phase, async_save):
    def failing_disk(point, step):
        if (point, step) == (phase, 2):
            raise OSError(f"disk gone during {point}")

    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=async_save, on_phase=failing_disk)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.wait()
    with pytest.raises(OSError, match=f"disk gone during {phase}"):
        ckpt.save(2, _state(2), {"step": 2})
        ckpt.wait()
    assert not os.path.exists(tmp_path / "2")
    reopened = Checkpointer(str(tmp_path), keep=3)
    assert reopened.all_steps() == [1]
    reopened.close()


def test_keeps_last_n_plus_best_by_eval(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
    accuracy = {1: 0.2, 2: 0.9, 3: 0.4, 4: None, 5: 0.3}
    for step, acc in accuracy.items():
        metrics = None if acc is None else {"eval/accuracy": acc}
        ckpt.save(step, _state(step), {"step": step}, metrics=metrics)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    ckpt.close()


def _corrupt(step_dir) -> dict[str, bytes]:
    """Overwrites every data file of a checkpoint (as a failing disk would); returns the new
    contents by path relative to the step directory."""
    written = {}
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "wb") as f:
                f.write(b"\x00garbage")
            written[os.path.relpath(path, step_dir)] = b"\x00garbage"
    assert written
    return written


def _moved(tmp_path) -> list[str]:
    corrupt = tmp_path / "corrupt"
    return sorted(os.listdir(corrupt)) if corrupt.is_dir() else []


def test_unreadable_latest_falls_back_and_is_moved_aside(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    written = _corrupt(tmp_path / "3")
    with caplog.at_level(logging.WARNING):
        step, state, _ = ckpt.restore_latest(abstract_like(_state(0)))
    assert step == 2
    np.testing.assert_array_equal(state["b"], [2, 3, 4])
    assert "step 3" in caplog.text and "unreadable" in caplog.text and "moved" in caplog.text
    # Nothing is deleted: the unreadable step lies, byte for byte, under corrupt/.
    (moved,) = _moved(tmp_path)
    assert moved.startswith("3-")
    for rel, data in written.items():
        assert (tmp_path / "corrupt" / moved / rel).read_bytes() == data
    assert ckpt.all_steps() == [2]
    # The retrained step saves again, and keep-last-N counts good checkpoints only.
    assert ckpt.save(3, _state(30), {"step": 3}) is True
    ckpt.save(4, _state(4), {"step": 4})
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
    state, _ = ckpt.restore(3, abstract_like(_state(0)))
    np.testing.assert_array_equal(state["w"], np.full((4, 3), 30.0))
    ckpt.close()
    reopened = Checkpointer(str(tmp_path), keep=2, async_save=False)  # orbax ignores corrupt/
    assert reopened.all_steps() == [3, 4] and _moved(tmp_path) == [moved]
    reopened.close()


def test_same_step_corrupted_twice_keeps_both_copies(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
    ckpt.save(1, _state(1), {"step": 1})
    for value in (2, 20):
        ckpt.save(2, _state(value), {"step": 2})
        ckpt.wait()
        _corrupt(tmp_path / "2")
        assert ckpt.restore_latest(abstract_like(_state(0)))[0] == 1
    assert [m.split("-")[0] for m in _moved(tmp_path)] == ["2", "2"]
    ckpt.close()


def test_nothing_readable_moves_nothing(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
    for step in (1, 2):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.wait()
    _corrupt(tmp_path / "1")
    _corrupt(tmp_path / "2")
    assert ckpt.restore_latest(abstract_like(_state(0))) is None
    assert ckpt.all_steps() == [1, 2] and _moved(tmp_path) == []
    ckpt.close()


def test_a_step_another_process_cannot_read_is_skipped_by_all(tmp_path, monkeypatch):
    """Step 2 reads here but not on another process: every process resumes from step 1."""
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
    for step in (1, 2):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.wait()
    votes = iter([True, False])  # the other process's "failed" for steps 2, then 1
    monkeypatch.setattr(checkpoint, "any_process", lambda failed: failed or next(votes))
    step, state, _ = ckpt.restore_latest(abstract_like(_state(0)))
    assert step == 1 and [m.split("-")[0] for m in _moved(tmp_path)] == ["2"]
    np.testing.assert_array_equal(state["b"], [1, 2, 3])
    ckpt.close()


@pytest.mark.parametrize(
    "local,others,expected",
    [(False, [0, 0], False), (True, [0, 0], True), (False, [0, 1], True), (True, [1, 1], True)],
)
def test_any_process_agrees_on_the_gathered_flags(monkeypatch, local, others, expected):
    monkeypatch.setattr(jax, "process_count", lambda: 1 + len(others))
    sent = []

    def allgather(x):  # as process_allgather: this process's value next to the others'
        sent.append(x)
        return np.asarray([int(x), *others])

    assert any_process(local, allgather) is expected
    assert sent[0].dtype == np.int32 and sent[0].shape == () and int(sent[0]) == local


# Two JAX processes on localhost (gloo collectives on CPU): process 1 alone got the signal.
_TWO_PROCESSES = textwrap.dedent("""
    import sys
    import jax
    port, pid = sys.argv[1], int(sys.argv[2])
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from zero_rl.checkpoint import any_process
    print("agreed", [any_process(pid == 1), any_process(False), any_process(True)], flush=True)
""")


def test_any_process_agrees_across_two_real_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-c", _TWO_PROCESSES, str(port), str(pid)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for pid in (0, 1)
    ]  # fmt: skip
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "agreed [True, False, True]" in out, out[-3000:]


def test_any_process_on_one_process_does_not_communicate(monkeypatch):
    def fail(_):
        raise AssertionError("no all-gather on one process")

    monkeypatch.setattr(multihost_utils, "process_allgather", fail)
    assert any_process(True) is True and any_process(False) is False


def test_bucket_urls_go_to_orbax_verbatim(tmp_path, monkeypatch):
    url = "gs://my-bucket/runs/a//checkpoints"
    assert checkpoint_path(url) == url
    assert checkpoint_path("s3://b/x") == "s3://b/x"
    assert checkpoint_path("rel/dir") == os.path.join(os.getcwd(), "rel", "dir")
    assert checkpoint_path("gs:/not-a-url") == os.path.join(os.getcwd(), "gs:", "not-a-url")
    seen = []

    class Manager:  # records what orbax would get, touching no network
        def __init__(self, directory, **kwargs):
            seen.append(directory)

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", Manager)
    assert Checkpointer(url).directory == url and seen == [url]


def test_restores_onto_a_sharding(tmp_path):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(4, 2), ("a", "b"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b"))
    state = {"w": jax.device_put(jnp.arange(32.0).reshape(8, 4), sharding)}
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(7, state, {"step": 7})
    ckpt.wait()
    _, restored, _ = ckpt.restore_latest(abstract_like(state))
    assert restored["w"].sharding == sharding
    np.testing.assert_array_equal(restored["w"], state["w"])
    ckpt.close()


def test_restore_latest_of_empty_directory_is_none(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "none"))
    assert ckpt.restore_latest(abstract_like(_state(0))) is None
    ckpt.close()


def test_clear_error_when_directory_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="is a file"):
        Checkpointer(str(path))
