"""TensorBoard event files written and read back without TensorFlow; the compile counter."""

import subprocess
import sys

import jax
import jax.numpy as jnp

from zero_rl.train.metrics import CompileCounter, SummaryWriter, _read_events, read_scalars


def test_scalars_and_text_round_trip(tmp_path):
    writer = SummaryWriter(str(tmp_path), enabled=True)
    writer.scalars(1, {"train/reward_mean": 0.5, "skip/nan": float("nan")})
    writer.scalars(2, {"train/reward_mean": 0.75})
    writer.text(2, "samples/0", "**correct** 2+2=4")
    writer.close()
    assert read_scalars(str(tmp_path)) == {"train/reward_mean": [(1, 0.5), (2, 0.75)]}
    (path,) = tmp_path.iterdir()
    events = list(_read_events(str(path)))
    assert events[0].file_version == "brain.Event:2"
    text = [v for e in events for v in e.summary.value if v.tag == "samples/0"]
    assert text[0].metadata.plugin_data.plugin_name == "text"
    assert text[0].tensor.string_val == [b"**correct** 2+2=4"]


def test_disabled_writer_writes_nothing(tmp_path):
    writer = SummaryWriter(str(tmp_path / "tb"), enabled=False)
    writer.scalars(1, {"a": 1.0})
    writer.close()
    assert not (tmp_path / "tb").exists()


def test_writing_events_does_not_import_tensorflow(tmp_path):
    logdir = repr(str(tmp_path))
    code = (
        "import sys; from zero_rl.train.metrics import SummaryWriter, read_scalars;"
        f"w = SummaryWriter({logdir}, enabled=True); w.scalars(0, {{'a': 1.0}}); w.close();"
        f"read_scalars({logdir}); assert 'tensorflow' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_compile_counter_counts_new_programs_only():
    f = jax.jit(lambda x: x * 3 + 1)
    f(jnp.ones(5))
    before = CompileCounter.count()
    f(jnp.ones(5))
    assert CompileCounter.count() == before
    f(jnp.ones(6))
    assert CompileCounter.count() > before
