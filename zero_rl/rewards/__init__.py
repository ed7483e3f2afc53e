"""Rule-based verifier and rewards: answer extraction, equivalence, a timed process pool, rewards.

Host-only Python (no JAX). A train step calls `score(responses, answers, config=...)` between
generation and the update; `python -m zero_rl.tools.verify` grades saved outputs offline. Two
extraction policies (`RewardConfig.extraction`): "strict" for rewards, "lenient" for grading;
`python -m zero_rl.tools.rule_report` shows what each named rule (`RULES`) decides.
"""

from zero_rl.rewards.equivalence import (
    DEFAULT_REL_TOL,
    fast_equivalence,
    is_equivalent,
    symbolic_equivalence,
)
from zero_rl.rewards.extract import (
    Extraction,
    answer_for_gold,
    extract,
    extract_answer,
    extract_with_budget,
)
from zero_rl.rewards.gold import DATASETS, normalize_gold
from zero_rl.rewards.length import cosine_length_reward, group_length_penalty
from zero_rl.rewards.normalize import MAX_ANSWER_CHARS, clean_latex, normalize_answer
from zero_rl.rewards.pool import CheckResult, VerifierPool
from zero_rl.rewards.reward import (
    RewardConfig,
    Verdict,
    default_pool,
    overlong_penalty,
    reward_for,
    score,
    shape_rewards,
)
from zero_rl.rewards.rules import POLICIES, RULES

__all__ = [
    "DATASETS",
    "DEFAULT_REL_TOL",
    "MAX_ANSWER_CHARS",
    "POLICIES",
    "RULES",
    "CheckResult",
    "Extraction",
    "RewardConfig",
    "Verdict",
    "VerifierPool",
    "answer_for_gold",
    "clean_latex",
    "cosine_length_reward",
    "default_pool",
    "extract",
    "extract_answer",
    "extract_with_budget",
    "fast_equivalence",
    "group_length_penalty",
    "is_equivalent",
    "normalize_answer",
    "normalize_gold",
    "overlong_penalty",
    "reward_for",
    "score",
    "shape_rewards",
    "symbolic_equivalence",
]
