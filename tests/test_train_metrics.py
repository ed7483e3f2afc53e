"""TensorBoard event files written and read back without TensorFlow; the compile counter; the
step's scalars, sample texts and progress line."""

import subprocess
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from zero_rl.data import Example
from zero_rl.rewards import Verdict
from zero_rl.summaries import SummaryWriter, _read_events, read_scalars
from zero_rl.train.metrics import CompileCounter, log_samples, progress_line, step_metrics


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
        "import sys; from zero_rl.summaries import SummaryWriter, read_scalars;"
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


def _texts(path):
    return {v.tag: v.tensor.string_val[0].decode() for e in _read_events(str(path))
            for v in e.summary.value if v.tag.startswith("samples/")}  # fmt: skip


def _result(groups, samples):
    examples = [Example(f"s/{g}", f"question {g}", str(g), "s") for g in range(groups)]
    texts = [f"answer {g}.{s}" for g in range(groups) for s in range(samples)]
    verdicts = [Verdict(s == 0, str(g), 1.0, False, False) for g in range(groups)
                for s in range(samples)]  # fmt: skip
    return SimpleNamespace(examples=examples, texts=texts, verdicts=verdicts)


@pytest.mark.parametrize(
    "count, shown",
    [(4, ["0.0", "2.0", "4.0", "6.0"]), (10, [f"{g}.0" for g in range(8)] + ["0.1", "1.1"])],
)
def test_sample_texts_come_from_several_prompts(tmp_path, count, shown):
    writer = SummaryWriter(str(tmp_path), enabled=True)
    log_samples(writer, 3, _result(groups=8, samples=2), count)
    writer.close()
    (path,) = tmp_path.iterdir()
    texts = _texts(path)
    assert sorted(texts) == sorted(f"samples/{i}" for i in range(count))
    for i, sample in enumerate(shown):
        g, s = sample.split(".")
        text = texts[f"samples/{i}"]
        assert text.startswith(f"**prompt s/{g}: correct={s == '0'} extracted='{g}' gold='{g}'**")
        assert f"question {g}" in text and text.endswith(f"answer {g}.{s}")


DEVICE_METRICS = {"entropy": 1.5, "clip_frac_low": 0.1, "clip_frac_high": 0.2, "approx_kl": 0.01,
                  "grad_norm": 2.0, "loss": 0.3, "adv/zero_signal_frac": 0.25,
                  "sampler_logprob_gap_mean": 1e-3}  # fmt: skip
STATS = {"train/reward_mean": 0.5, "train/accuracy": 0.5, "train/response_length_mean": 12.0,
         "perf/sample_tokens": 100.0, "perf/sample_time_s": 2.0}  # fmt: skip


def test_kl_is_logged_only_when_the_update_measured_one():
    without = step_metrics(STATS, DEVICE_METRICS, learning_rate=1e-3, step_time_s=4.0)
    assert "train/kl" not in without
    assert without["train/clip_frac"] == pytest.approx(0.3)
    assert without["perf/sample_tokens_per_s"] == 50.0
    line = progress_line(3, 10, without)
    assert line == "step 3/10 reward +0.500 acc 0.500 len 12.0 time 4.00s"
    with_kl = step_metrics(STATS, DEVICE_METRICS | {"kl": 2e-3}, learning_rate=1e-3,
                           step_time_s=4.0)  # fmt: skip
    assert with_kl["train/kl"] == 2e-3
    assert progress_line(3, 10, with_kl) == (
        "step 3/10 reward +0.500 acc 0.500 len 12.0 kl 2.00e-03 time 4.00s"
    )


def test_kl_in_the_reward_is_logged_as_the_run_kl():
    m = DEVICE_METRICS | {"adv/kl_in_reward": 5e-3}
    assert step_metrics(STATS, m, learning_rate=1e-3, step_time_s=1.0)["train/kl"] == 5e-3
    # The loss's own KL (to the same reference) wins where both exist.
    both = step_metrics(STATS, m | {"kl": 2e-3}, learning_rate=1e-3, step_time_s=1.0)
    assert both["train/kl"] == 2e-3
