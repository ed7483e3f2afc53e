"""TensorBoard event files without TensorFlow: `SummaryWriter` (scalars and text, process 0
only) and `read_scalars` (for tests, notebooks and evaluation summaries).

Used by training and evaluation alike, so it sits below both.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import jax
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter


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
