"""Evaluation: the six SimpleRL-Zoo benchmarks (or any set) with pass@k, maj@k, avg@k and
reasoning-behaviour metrics, from this codebase's policies or from other engines' outputs."""

from zero_rl.eval.grade import grade_outputs, read_outputs
from zero_rl.eval.harness import run_benchmarks
from zero_rl.eval.metrics import (
    answer_clusters,
    is_repetitive,
    maj_at_k,
    majority_index,
    mean_pass_at_k,
    pass_at_k,
    reflection_counts,
    repetition_coverage,
)
from zero_rl.eval.policy import (
    Policy,
    describe_policy,
    load_policy,
    params_fingerprint,
    restore_params,
)
from zero_rl.eval.sets import (
    SIMPLERL_ZOO_BENCHMARKS,
    EvalSet,
    load_eval_set,
    load_eval_sets,
    valid_names,
)
from zero_rl.eval.store import OutputDirError
from zero_rl.eval.summary import RECORD_FIELDS, default_ks, format_summary, summarize

__all__ = [
    "RECORD_FIELDS",
    "SIMPLERL_ZOO_BENCHMARKS",
    "EvalSet",
    "OutputDirError",
    "Policy",
    "answer_clusters",
    "default_ks",
    "describe_policy",
    "format_summary",
    "grade_outputs",
    "is_repetitive",
    "load_eval_set",
    "load_eval_sets",
    "load_policy",
    "maj_at_k",
    "majority_index",
    "mean_pass_at_k",
    "params_fingerprint",
    "pass_at_k",
    "read_outputs",
    "reflection_counts",
    "repetition_coverage",
    "restore_params",
    "run_benchmarks",
    "summarize",
    "valid_names",
]
