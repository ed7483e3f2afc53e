"""Datasets, prompt templates, difficulty control and resumable iteration.

Pure Python and NumPy: the seqio tasks live in `zero_rl.data.tasks`, the only module that imports
seqio (and with it TensorFlow), and are never imported from here.
"""

from zero_rl.data.difficulty import (
    MATH_LEVELS,
    default_difficulty,
    filter_by_pass_rate,
    select_difficulty,
)
from zero_rl.data.iterator import PromptBatch, PromptIterator, encode_batch, make_prompt_batch
from zero_rl.data.records import (
    BENCHMARK_DIR,
    BENCHMARKS,
    Example,
    FieldMapping,
    ReadResult,
    RecordError,
    load_benchmark,
    parse_level,
    read_examples,
)
from zero_rl.data.templates import (
    TEMPLATES,
    Template,
    apply_template,
    default_template,
    get_template,
)

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_DIR",
    "MATH_LEVELS",
    "TEMPLATES",
    "Example",
    "FieldMapping",
    "PromptBatch",
    "PromptIterator",
    "ReadResult",
    "RecordError",
    "Template",
    "apply_template",
    "default_difficulty",
    "default_template",
    "encode_batch",
    "filter_by_pass_rate",
    "get_template",
    "load_benchmark",
    "make_prompt_batch",
    "parse_level",
    "read_examples",
    "select_difficulty",
]
