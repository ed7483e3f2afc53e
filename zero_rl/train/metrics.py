"""TensorBoard event files (no TensorFlow needed), a compile counter and the progress line."""

from __future__ import annotations

import os
import threading
import time

import jax
import numpy as np
from jax._src import monitoring
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.summary.writer.event_file_writer import EventFileWriter

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
    """Writes scalars and text to TensorBoard event files; only process 0 writes."""

    def __init__(self, logdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._writer = None
        if self.enabled:
            os.makedirs(logdir, exist_ok=True)
            self._writer = EventFileWriter(logdir)

    def _write(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
        if self._writer is None:
            return
        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
        )
        self._writer.add_event(event)

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
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars in a log directory as {tag: [(step, value), ...]} (for tests and notebooks)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def progress_line(step: int, total: int, metrics: dict[str, float]) -> str:
    """The one-line per-step log: step, reward, accuracy, length, time."""
    return (
        f"step {step}/{total} reward {metrics.get('train/reward_mean', float('nan')):+.3f} "
        f"acc {metrics.get('train/accuracy', float('nan')):.3f} "
        f"len {metrics.get('train/response_length_mean', float('nan')):.1f} "
        f"kl {metrics.get('train/kl', float('nan')):.2e} "
        f"time {metrics.get('perf/step_time_s', float('nan')):.2f}s"
    )
