"""TensorBoard event files (no TensorFlow needed), a compile counter and the progress line."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import jax
import numpy as np
from jax._src import monitoring
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA backend compilations in this process (cumulative, thread-safe).

    A training run must stop compiling after its first steps; `perf/num_compiles` shows it.
    """

    _lock = threading.Lock()
    _count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if cls._installed:
                return
            cls._installed = True

        def listener(event: str, duration_secs: float, **kwargs) -> None:
            if event == _BACKEND_COMPILE_EVENT:
                with cls._lock:
                    cls._count += 1

        monitoring.register_event_duration_secs_listener(listener)

    @classmethod
    def count(cls) -> int:
        cls.install()
        return cls._count


class SummaryWriter:
    """Writes scalars and text to a TensorBoard event file; only process 0 writes.

    Records are written with TensorBoard's own TFRecord writer rather than its
    `EventFileWriter`, which imports TensorFlow when it is installed (seconds of start-up).
    """

    def __init__(self, logdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._file = None
        self._records = None
        if self.enabled:
            os.makedirs(logdir, exist_ok=True)
            name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
            self._file = open(os.path.join(logdir, name), "wb")  # noqa: SIM115 - closed in close()
            self._records = RecordWriter(self._file)
            version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
            self._records.write(version.SerializeToString())

    def _write(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        if self._records is None:
            return
        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
        )
        self._records.write(event.SerializeToString())

    def scalars(self, step: int, scalars: dict[str, float]) -> None:
        self._write(
            step,
            [
                summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                for k, v in scalars.items()
                if v is not None and np.isfinite(float(v))
            ],
        )

    def text(self, step: int, tag: str, text: str) -> None:
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text")
        )
        tensor = TensorProto(
            dtype=7,  # DT_STRING
            string_val=[text.encode("utf-8")],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        self._write(step, [summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._records = None


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars in a log directory's event files as {tag: [(step, value), ...]}, in file
    order (for tests and notebooks; reads TFRecords directly, without TensorFlow)."""
    out: dict[str, list[tuple[int, float]]] = {}
    names = sorted(n for n in os.listdir(logdir) if n.startswith("events.out.tfevents"))
    for name in names:
        for event in _read_events(os.path.join(logdir, name)):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def _read_events(path: str):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        end = pos + 12 + length + 4
        if end > len(data):  # a record still being written
            return
        record = data[pos + 12 : pos + 12 + length]
        (crc,) = struct.unpack("<I", data[end - 4 : end])
        if crc != masked_crc32c(record):
            raise ValueError(f"corrupt TensorBoard record at byte {pos} of {path}")
        yield event_pb2.Event.FromString(record)
        pos = end


def step_metrics(
    stats: dict[str, float], m: dict, *, learning_rate: float, step_time_s: float
) -> dict[str, float]:
    """One RL step's scalars: the rollout's host statistics plus the update's metrics `m` (on
    the host). `train/kl` only when there is a reference to measure it against."""
    metrics = dict(stats)
    # No reference, no KL: a logged 0 would claim the policy has not moved. With the KL in the
    # reward instead of the loss, it is the one measured on the rollout.
    if "kl" in m:
        metrics["train/kl"] = float(m["kl"])
    elif "adv/kl_in_reward" in m:
        metrics["train/kl"] = float(m["adv/kl_in_reward"])
    if "vf_loss" in m:
        metrics["train/vf_loss"] = float(m["vf_loss"])
        metrics["train/vf_explained_variance"] = float(m["explained_variance"])
    metrics.update({
        "train/entropy": float(m["entropy"]),
        "train/clip_frac": float(m["clip_frac_low"] + m["clip_frac_high"]),
        "train/clip_frac_low": float(m["clip_frac_low"]),
        "train/clip_frac_high": float(m["clip_frac_high"]),
        "train/approx_kl": float(m["approx_kl"]),
        "train/grad_norm": float(m["grad_norm"]),
        "train/loss": float(m["loss"]),
        "train/zero_signal_frac": float(m["adv/zero_signal_frac"]),
        "train/sampler_logprob_gap": float(m["sampler_logprob_gap_mean"]),
        "train/learning_rate": learning_rate,
        "perf/step_time_s": step_time_s,
        "perf/sample_tokens_per_s": stats["perf/sample_tokens"]
        / max(stats["perf/sample_time_s"], 1e-9),
        "perf/num_compiles": float(CompileCounter.count()),
    })  # fmt: skip
    return metrics


def log_samples(writer: SummaryWriter, step: int, result, count: int) -> None:
    """`count` responses of a `RolloutResult` with their verdicts as TensorBoard text
    (`samples/<i>`): one from each of `count` prompts spread over the batch, then further
    samples of the same prompts when `count` exceeds the prompts."""
    num_groups = len(result.examples)
    group = len(result.texts) // num_groups
    stride = max(num_groups // max(count, 1), 1)
    for i in range(min(count, len(result.texts))):
        g, sample = (i * stride) % num_groups, (i * stride) // num_groups
        row = g * group + sample % group
        v, example = result.verdicts[row], result.examples[g]
        header = (f"**prompt {example.id}: correct={v.correct} extracted={v.extracted!r} "
                  f"gold={example.answer!r}**")  # fmt: skip
        writer.text(step, f"samples/{i}", f"{header}\n\n{example.prompt}\n\n{result.texts[row]}")


def progress_line(step: int, total: int, metrics: dict[str, float]) -> str:
    """The one-line per-step log: step, reward, accuracy, length, KL (when there is a
    reference), time."""
    kl = f"kl {metrics['train/kl']:.2e} " if "train/kl" in metrics else ""
    return (
        f"step {step}/{total} reward {metrics.get('train/reward_mean', float('nan')):+.3f} "
        f"acc {metrics.get('train/accuracy', float('nan')):.3f} "
        f"len {metrics.get('train/response_length_mean', float('nan')):.1f} "
        f"{kl}time {metrics.get('perf/step_time_s', float('nan')):.2f}s"
    )
