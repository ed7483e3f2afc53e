"""Rewards for RL from verifiable answers: correctness, format-aware, and the length-aware terms
(cosine length reward, group length penalty, DAPO's overlong penalty)."""

from __future__ import annotations

import atexit
import dataclasses
import threading
from collections.abc import Sequence

import numpy as np

from zero_rl.rewards import rules
from zero_rl.rewards.equivalence import DEFAULT_REL_TOL
from zero_rl.rewards.extract import answer_for_gold, extract_with_budget
from zero_rl.rewards.gold import normalize_gold
from zero_rl.rewards.length import cosine_length_reward, group_length_penalty
from zero_rl.rewards.pool import VerifierPool

MODES = ("correctness", "format_aware")
LENGTH_REWARDS = ("none", "cosine")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """How responses are scored; build it from keyword args (`RewardConfig(**config.reward)`).

    mode="correctness": `correct_reward` / `incorrect_reward`, minus `format_penalty` when the
    response has no answer in the required format (a `\\boxed{}`, or the closed `<answer>` tag
    of the R1-Zero template).
    mode="format_aware" (SimpleRL-Zoo): correct and boxed `correct_boxed_reward`; correct but not
    boxed (e.g. "the answer is 5") `correct_unboxed_reward`; wrong but boxed `wrong_boxed_reward`;
    anything else, i.e. no answer or a wrong unboxed one, `no_answer_reward`.

    `extraction`: "strict" (a marked answer is required: the RL default) or "lenient" (also
    unmarked answers, for grading benchmark outputs; `zero_rl.rewards.extract`).
    `last_number_fallback` (strict only) also accepts the last number of a response.

    `timeout_s` bounds each equivalence check (a timed-out check is incorrect); `num_workers` sizes
    the default pool. Length-aware terms, applied by the trainer from token lengths
    (`shape_rewards`): `length_reward="cosine"` replaces the reward above by Yeo et al.'s cosine
    length reward (`cosine_*`, `zero_rl.rewards.length`); `length_penalty_coef` > 0 adds Kimi
    k1.5's group-relative penalty on long correct responses; `overlong_cache_len` > 0 adds DAPO's
    `overlong_penalty`.
    """

    mode: str = "correctness"
    correct_reward: float = 1.0
    incorrect_reward: float = 0.0
    correct_boxed_reward: float = 1.0
    correct_unboxed_reward: float = 0.5
    wrong_boxed_reward: float = -0.5
    no_answer_reward: float = -1.0
    format_penalty: float = 0.0
    extraction: str = "strict"
    last_number_fallback: bool = False
    rel_tol: float = DEFAULT_REL_TOL
    timeout_s: float = 2.0
    num_workers: int | None = None
    overlong_cache_len: int = 0
    overlong_factor: float = 1.0
    length_reward: str = "none"
    cosine_correct_short: float = 2.0
    cosine_correct_long: float = 1.0
    cosine_wrong_short: float = -10.0
    cosine_wrong_long: float = 0.0
    cosine_exceed: float = -10.0
    length_penalty_coef: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"RewardConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.format_penalty < 0:
            raise ValueError(
                f"format_penalty is subtracted; give it >= 0, got {self.format_penalty}"
            )
        if self.format_penalty and self.mode != "correctness":
            raise ValueError(
                "format_penalty applies to mode='correctness' only; format_aware "
                "prices the format through its four rewards"
            )
        rules.check_policy(self.extraction)
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.rel_tol < 0:
            raise ValueError(f"rel_tol must be >= 0, got {self.rel_tol}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 or None, got {self.num_workers}")
        if self.overlong_cache_len < 0 or self.overlong_factor < 0:
            raise ValueError("overlong_cache_len and overlong_factor must be >= 0")
        if self.length_reward not in LENGTH_REWARDS:
            raise ValueError(
                f"RewardConfig.length_reward must be one of {LENGTH_REWARDS}, "
                f"got {self.length_reward!r}"
            )
        if self.length_penalty_coef < 0:
            raise ValueError(f"length_penalty_coef must be >= 0, got {self.length_penalty_coef}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The grading of one response.

    `boxed`: the answer is in the required format, a `\\boxed{}` or the closed `<answer>` tag
    that ends an R1-Zero response (`Extraction.boxed`). `timed_out`: over the verification
    budget (see `score`), hence incorrect. `reason`: why a task's verifier rejected the
    response (`zero_rl.tasks.TaskCheck.reason`); "" for correct responses and math answers.
    """

    correct: bool
    extracted: str | None
    reward: float
    timed_out: bool
    boxed: bool
    reason: str = ""


def reward_for(correct: bool, boxed: bool, config: RewardConfig) -> float:
    """The scalar reward of one graded response under `config`."""
    if config.mode == "correctness":
        reward = config.correct_reward if correct else config.incorrect_reward
        return reward - (0.0 if boxed else config.format_penalty)
    if correct:
        return config.correct_boxed_reward if boxed else config.correct_unboxed_reward
    return config.wrong_boxed_reward if boxed else config.no_answer_reward


_default_pool: VerifierPool | None = None
_default_pool_lock = threading.Lock()


def default_pool(num_workers: int | None = None) -> VerifierPool:
    """The module-level pool, created on first use and reused (recreated if `num_workers`
    changes or it was closed)."""
    global _default_pool
    with _default_pool_lock:
        pool = _default_pool
        if pool is not None and not pool.closed:
            if num_workers is None or pool.num_workers == num_workers:
                return pool
            pool.close()
        _default_pool = VerifierPool(num_workers)
        return _default_pool


@atexit.register
def _close_default_pool() -> None:
    if _default_pool is not None:
        _default_pool.close()


def _normalized_golds(answers: Sequence, gold_format: str | None) -> list[str]:
    """`normalize_gold` of each answer, once per distinct answer (a batch repeats each gold
    `group_size` times); errors name the answer's index."""
    cache: dict = {}
    golds = []
    for i, answer in enumerate(answers):
        key = (type(answer), answer) if isinstance(answer, (str, int, float)) else None
        if key is not None and key in cache:
            golds.append(cache[key])
            continue
        try:
            gold = normalize_gold(answer, gold_format)
        except (TypeError, ValueError) as error:
            raise type(error)(f"answers[{i}]: {error}") from None
        if key is not None:
            cache[key] = gold
        golds.append(gold)
    return golds


def score(
    responses: Sequence[str],
    answers: Sequence,
    *,
    config: RewardConfig | None = None,
    pool: VerifierPool | None = None,
    gold_format: str | None = None,
) -> list[Verdict]:
    """Grade a batch of responses against gold answers, one Verdict each.

    Args:
      responses: [batch] model responses.
      answers: [batch] gold answers in any format `normalize_gold` reads (a MATH answer or
        solution, a GSM8K solution ending in `#### N`, an OlympiadBench list, an AMC number);
        each goes through `normalize_gold`, which leaves an already normalised answer as it is.
      config: reward settings (default `RewardConfig()`).
      pool: where symbolic checks run (default: the module-level pool).
      gold_format: the dataset format of `answers`, one of `DATASETS`; None infers it.

    Extraction and cheap checks run in this process; symbolic checks go through `pool` under
    `config.timeout_s` each. `Verdict.timed_out` means over the verification budget: a check
    out of time or memory, or a marked answer longer than `MAX_ANSWER_CHARS`; such a response
    is incorrect and scored as having no answer.
    """
    config = config or RewardConfig()
    if len(responses) != len(answers):
        raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise TypeError(f"responses[{i}] is {type(response).__name__}, expected str")
    golds = _normalized_golds(answers, gold_format)
    extracted = [
        extract_with_budget(
            response,
            policy=config.extraction,
            last_number_fallback=config.last_number_fallback,
        )
        for response in responses
    ]
    answered = [i for i, (extraction, _) in enumerate(extracted) if extraction is not None]
    checks = {}
    if answered:
        pool = pool or default_pool(config.num_workers)
        results = pool.check(
            [answer_for_gold(extracted[i][0], golds[i]) for i in answered],
            [golds[i] for i in answered],
            timeout_s=config.timeout_s,
            rel_tol=config.rel_tol,
        )
        checks = dict(zip(answered, results))
    verdicts = []
    for i, (extraction, over_budget) in enumerate(extracted):
        check = checks.get(i)
        correct = check is not None and check.correct
        boxed = extraction is not None and extraction.boxed
        verdicts.append(
            Verdict(
                correct=correct,
                extracted=None if extraction is None else extraction.answer,
                reward=reward_for(correct, boxed, config),
                timed_out=over_budget or (check is not None and check.timed_out),
                boxed=boxed,
            )
        )
    return verdicts


def overlong_penalty(
    lengths_b: np.ndarray, *, max_response_len: int, cache_len: int, factor: float = 1.0
) -> np.ndarray:
    """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13), added to the task reward.

    0 up to `max_response_len - cache_len` tokens, then falling linearly to `-factor` at
    `max_response_len`, and `-factor` beyond: long answers lose reward smoothly instead of a
    truncation cliff.

    Args:
      lengths_b: [batch] response lengths in tokens.
      max_response_len: L_max, the generation budget in tokens.
      cache_len: L_cache, the length of the soft zone, 1 <= cache_len <= max_response_len.
      factor: scale of the penalty.

    Returns:
      [batch] float32 penalties in [-factor, 0].
    """
    lengths_b = np.asarray(lengths_b)
    if lengths_b.ndim != 1:
        raise ValueError(f"lengths_b must be 1-D [batch], got shape {lengths_b.shape}")
    if not np.issubdtype(lengths_b.dtype, np.integer):
        raise TypeError(f"lengths_b must hold integer token counts, got dtype {lengths_b.dtype}")
    if (lengths_b < 0).any():
        raise ValueError("lengths_b must be >= 0")
    if not 1 <= cache_len <= max_response_len:
        raise ValueError(
            f"need 1 <= cache_len <= max_response_len, got {cache_len} and {max_response_len}"
        )
    expected_len = max_response_len - cache_len
    penalty_b = (expected_len - lengths_b.astype(np.float64)) / cache_len
    return (factor * np.clip(penalty_b, -1.0, 0.0)).astype(np.float32)


def shape_rewards(
    rewards_b: np.ndarray,
    correct_b: np.ndarray,
    lengths_b: np.ndarray,
    truncated_b: np.ndarray,
    *,
    config: RewardConfig,
    max_response_len: int,
    group_size: int,
) -> np.ndarray:
    """The length-aware terms of `config` applied to `score`'s rewards.

    Args:
      rewards_b: [batch] `Verdict.reward`s, rows grouped by prompt (`group_size` in a row).
      correct_b: [batch] bool verdicts.
      lengths_b: [batch] response lengths in tokens.
      truncated_b: [batch] bool, responses cut off by the budget.
      max_response_len: the generation budget in tokens.

    Returns:
      [batch] float32 rewards: the cosine length reward in place of `rewards_b` when
      `config.length_reward == "cosine"`, plus the group length penalty and the overlong
      penalty when they are on.
    """
    lengths_b = np.asarray(lengths_b).astype(np.int64)
    rewards_b = np.asarray(rewards_b, np.float32)
    if config.length_reward == "cosine":
        rewards_b = cosine_length_reward(
            correct_b, lengths_b, truncated_b, max_len=max_response_len,
            correct_short=config.cosine_correct_short, correct_long=config.cosine_correct_long,
            wrong_short=config.cosine_wrong_short, wrong_long=config.cosine_wrong_long,
            exceed=config.cosine_exceed,
        )  # fmt: skip
    if config.length_penalty_coef:
        if len(lengths_b) % group_size:
            raise ValueError(f"{len(lengths_b)} rows are not groups of {group_size}")
        penalty_pg = group_length_penalty(
            np.asarray(correct_b, bool).reshape(-1, group_size),
            lengths_b.reshape(-1, group_size),
            coef=config.length_penalty_coef,
        )
        rewards_b = rewards_b + penalty_pg.reshape(-1)
    if config.overlong_cache_len:
        rewards_b = rewards_b + overlong_penalty(
            lengths_b,
            max_response_len=max_response_len,
            cache_len=config.overlong_cache_len,
            factor=config.overlong_factor,
        )
    return rewards_b.astype(np.float32)
