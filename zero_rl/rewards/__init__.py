"""Rule-based verifier and rewards: answer extraction, equivalence, a timed process pool, rewards.

Host-only Python (no JAX). A train step calls `score(responses, answers, config=...)` between
generation and the update; `python -m zero_rl.tools.verify` grades saved outputs offline.
"""

from zero_rl.rewards.equivalence import (
    DEFAULT_REL_TOL,
    fast_equivalence,
    is_equivalent,
    symbolic_equivalence,
)
from zero_rl.rewards.extract import Extraction, extract, extract_answer, extract_with_budget
from zero_rl.rewards.gold import DATASETS, normalize_gold
from zero_rl.rewards.normalize import MAX_ANSWER_CHARS, clean_latex, normalize_answer
from zero_rl.rewards.pool import CheckResult, VerifierPool
from zero_rl.rewards.reward import (
    RewardConfig,
    Verdict,
    default_pool,
    overlong_penalty,
    reward_for,
    score,
)

__all__ = [
    "DATASETS",
    "DEFAULT_REL_TOL",
    "MAX_ANSWER_CHARS",
    "CheckResult",
    "Extraction",
    "RewardConfig",
    "Verdict",
    "VerifierPool",
    "clean_latex",
    "default_pool",
    "extract",
    "extract_answer",
    "extract_with_budget",
    "fast_equivalence",
    "is_equivalent",
    "normalize_answer",
    "normalize_gold",
    "overlong_penalty",
    "reward_for",
    "score",
    "symbolic_equivalence",
]
