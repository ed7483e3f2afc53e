"""Length-aware rewards: the cosine length reward and a group-relative penalty for long correct
responses (overthinking). Both are functions of each response's correctness and token length,
applied by the trainer after `score` (which sees texts, not tokens).
"""

from __future__ import annotations

import math

import numpy as np


def _check_rows(correct_b: np.ndarray, lengths_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    correct_b, lengths_b = np.asarray(correct_b), np.asarray(lengths_b)
    if correct_b.ndim != 1 or correct_b.shape != lengths_b.shape:
        raise ValueError(
            f"correct and lengths must be 1-D of one shape, got {correct_b.shape} and "
            f"{lengths_b.shape}"
        )
    if correct_b.dtype != bool:
        raise TypeError(f"correct must be bool, got dtype {correct_b.dtype}")
    if not np.issubdtype(lengths_b.dtype, np.integer) or (lengths_b < 0).any():
        raise ValueError("lengths must be non-negative integer token counts")
    return correct_b, lengths_b


def cosine_length_reward(
    correct_b: np.ndarray,
    lengths_b: np.ndarray,
    truncated_b: np.ndarray,
    *,
    max_len: int,
    correct_short: float = 2.0,
    correct_long: float = 1.0,
    wrong_short: float = -10.0,
    wrong_long: float = 0.0,
    exceed: float = -10.0,
) -> np.ndarray:
    """Yeo et al. (2025, "Demystifying Long Chain-of-Thought Reasoning in LLMs"), eq. 1.

    A correct response gets `correct_short` at length 0 falling along a half cosine to
    `correct_long` at `max_len` (shorter correct answers are worth more); a wrong one goes from
    `wrong_short` up to `wrong_long` (a wrong answer after long thought is penalised less); a
    truncated response gets `exceed`. Defaults are the paper's.

    Args:
      correct_b: [batch] bool, the verifier's verdicts.
      lengths_b: [batch] response lengths in tokens.
      truncated_b: [batch] bool, responses cut off by the generation budget.
      max_len: L_max, the generation budget in tokens (> 0).

    Returns:
      [batch] float32 rewards,
      r_long + (r_short - r_long) * (1 + cos(pi * min(L, L_max) / L_max)) / 2.
    """
    correct_b, lengths_b = _check_rows(correct_b, lengths_b)
    truncated_b = np.asarray(truncated_b, bool)
    if truncated_b.shape != correct_b.shape:
        raise ValueError(f"truncated must have shape {correct_b.shape}, got {truncated_b.shape}")
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0, got {max_len}")
    progress_b = np.minimum(lengths_b, max_len).astype(np.float64) / max_len
    weight_b = 0.5 * (1.0 + np.cos(math.pi * progress_b))  # 1 at length 0, 0 at max_len
    short_b = np.where(correct_b, correct_short, wrong_short)
    long_b = np.where(correct_b, correct_long, wrong_long)
    reward_b = long_b + (short_b - long_b) * weight_b
    return np.where(truncated_b, exceed, reward_b).astype(np.float32)


def group_length_penalty(
    correct_pg: np.ndarray, lengths_pg: np.ndarray, *, coef: float = 1.0
) -> np.ndarray:
    """The length penalty of Kimi k1.5 (2025, section 2.3.3), within each group of samples.

    lambda = 0.5 - (L - L_min) / (L_max - L_min) over a prompt's samples: +0.5 for its shortest
    response, -0.5 for its longest. A correct response gets `coef * lambda` (long correct
    answers, overthinking, lose reward); a wrong one only the negative part, `coef *
    min(0, lambda)`, so being short never pays for being wrong. A group of equal lengths gets 0.

    Args:
      correct_pg: [prompts, samples] bool verdicts.
      lengths_pg: [prompts, samples] response lengths in tokens.
      coef: the penalty's scale (>= 0).

    Returns:
      [prompts, samples] float32 additions to the reward.
    """
    correct_pg, lengths_pg = np.asarray(correct_pg), np.asarray(lengths_pg)
    if correct_pg.ndim != 2:
        raise ValueError(f"expected [prompts, samples] arrays, got shape {correct_pg.shape}")
    _check_rows(correct_pg.reshape(-1), lengths_pg.reshape(-1))
    if coef < 0:
        raise ValueError(f"coef must be >= 0, got {coef}")
    lengths_pg = lengths_pg.astype(np.float64)
    shortest_p1 = lengths_pg.min(axis=1, keepdims=True)
    spread_p1 = lengths_pg.max(axis=1, keepdims=True) - shortest_p1
    lam_pg = np.where(
        spread_p1 > 0, 0.5 - (lengths_pg - shortest_p1) / np.where(spread_p1 > 0, spread_p1, 1), 0.0
    )
    return (coef * np.where(correct_pg, lam_pg, np.minimum(lam_pg, 0.0))).astype(np.float32)
