"""Checkpointer: keep last N plus best, fall back past an unreadable latest checkpoint."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zero_rl.train.checkpoint import Checkpointer, abstract_like


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


def test_keeps_last_n_plus_best_by_eval(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=2, async_save=False)
    accuracy = {1: 0.2, 2: 0.9, 3: 0.4, 4: None, 5: 0.3}
    for step, acc in accuracy.items():
        metrics = None if acc is None else {"eval/accuracy": acc}
        ckpt.save(step, _state(step), {"step": step}, metrics=metrics)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    ckpt.close()


def test_unreadable_latest_falls_back_to_previous(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
    for step in (1, 2):
        ckpt.save(step, _state(step), {"step": step})
    ckpt.wait()
    # Corrupt every data file of the newest checkpoint (as a failing disk would).
    corrupted = 0
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "wb") as f:
                f.write(b"\x00garbage")
            corrupted += 1
    assert corrupted
    with caplog.at_level(logging.WARNING):
        step, state, _ = ckpt.restore_latest(abstract_like(_state(0)))
    assert step == 1
    np.testing.assert_array_equal(state["b"], [1, 2, 3])
    assert "step 2" in caplog.text and "unreadable" in caplog.text
    assert 2 in ckpt.all_steps()  # nothing is deleted by a failed restore
    ckpt.close()


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
