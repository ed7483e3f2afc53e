"""Sampling: `SamplingOptions`, the continuous-batching engine and the static sampler behind
one `generate`, and `finish_responses`, the one definition of a finished response's text."""

from zero_rl.sampler import FINISH_LENGTH, FINISH_STOP, SampleOutput
from zero_rl.sampling.engine import EngineStats
from zero_rl.sampling.generate import (
    Responses,
    Samples,
    finish_responses,
    generate,
    generate_padded,
    resolve_slots,
    template_stops,
    with_template_stops,
)
from zero_rl.sampling.options import ENGINES, SamplingOptions
from zero_rl.sampling.stops import build_stop_table, stop_table

__all__ = [
    "ENGINES",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "EngineStats",
    "Responses",
    "SampleOutput",
    "Samples",
    "SamplingOptions",
    "build_stop_table",
    "finish_responses",
    "generate",
    "generate_padded",
    "resolve_slots",
    "stop_table",
    "template_stops",
    "with_template_stops",
]
