"""Query-difficulty control: SimpleRL-Zoo's level-based sets and pass-rate filtering.

SimpleRL-Zoo (arXiv:2503.18892, Sec. 2) found that zero RL only takes off when the training
questions match the base model: too hard and every sample scores 0, so GRPO advantages are all
zero. Its three sets, each ~8K questions:
  easy   = GSM8K + MATH level 1
  medium = MATH levels 1-4
  hard   = MATH levels 3-5
and which base model trains on which: `default_difficulty`.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Mapping, Sequence

from zero_rl.data.records import Example, load_benchmark

log = logging.getLogger(__name__)

MATH_LEVELS: dict[str, tuple[int, ...]] = {
    "easy": (1,),
    "medium": (1, 2, 3, 4),
    "hard": (3, 4, 5),
}


# SimpleRL-Zoo's set per base model (paper, Sec. 2): easy for Llama-3.1-8B, Mistral-v0.1-7B and
# DeepSeek-Math-7B; medium for Qwen2.5-0.5B; hard for Mistral-Small-24B, Qwen2.5-Math-7B and
# Qwen2.5-1.5B/7B/14B/32B. The maintainers confirm 0.5B -> level1to4 and 1.5B -> level3to5 data
# (github.com/hkust-nlp/simpleRL-reason, thread #61). First match wins.
_FAMILY_DIFFICULTY: tuple[tuple[str, str], ...] = (
    (r"qwen[-_]?2[._]5[-_]0[._]5b", "medium"),
    (r"qwen", "hard"),
    (r"mistral[-_]?small", "hard"),
    (r"mistral|llama|deepseek", "easy"),
)


def default_difficulty(model_name: str) -> str:
    """SimpleRL-Zoo's difficulty for a base model, e.g. "Qwen2.5-0.5B" -> "medium"."""
    lowered = model_name.lower()
    for pattern, difficulty in _FAMILY_DIFFICULTY:
        if re.search(pattern, lowered):
            return difficulty
    raise ValueError(
        f"no default difficulty for model {model_name!r}; choose one of {sorted(MATH_LEVELS)}"
    )


def select_difficulty(
    math_examples: Sequence[Example],
    difficulty: str,
    *,
    gsm8k_examples: Sequence[Example] | None = None,
) -> list[Example]:
    """SimpleRL-Zoo's easy / medium / hard set from MATH-format examples carrying levels.

    Args:
      math_examples: examples with `level` set (e.g. `read_examples(..., level_field="level")`
        on MATH train); those without a level are dropped and counted in the log.
      difficulty: "easy", "medium" or "hard".
      gsm8k_examples: the GSM8K half of "easy"; defaults to the shipped GSM8K train split.

    Returns:
      The selected examples, in input order (GSM8K first for "easy").
    """
    if difficulty not in MATH_LEVELS:
        raise ValueError(f"unknown difficulty {difficulty!r}; valid: {sorted(MATH_LEVELS)}")
    if not math_examples:
        raise ValueError("select_difficulty got no MATH examples")
    without_level = sum(ex.level is None for ex in math_examples)
    if without_level == len(math_examples):
        raise ValueError("no example carries a level: read the MATH file with level_field='level'")
    if without_level:
        log.warning("select_difficulty: %d examples have no level, dropped", without_level)
    levels = MATH_LEVELS[difficulty]
    selected = [ex for ex in math_examples if ex.level in levels]
    if difficulty == "easy":
        gsm8k = load_benchmark("gsm8k_train") if gsm8k_examples is None else gsm8k_examples
        selected = [*gsm8k, *selected]
    return selected


def filter_by_pass_rate(
    examples: Sequence[Example],
    pass_rates: Mapping[str, float] | Sequence[float],
    low: float = 0.0,
    high: float = 1.0,
    *,
    inclusive: bool = False,
) -> list[Example]:
    """Keeps the examples whose pass rate lies in the band between `low` and `high`.

    With the default open band (0, 1) this drops the prompts the model always solves and those
    it never solves: under GRPO both give zero advantage for every sample, so they cost rollout
    time and teach nothing.

    Args:
      pass_rates: per-example fraction of correct samples, keyed by `Example.id` or aligned
        with `examples`.
      low, high: band limits in [0, 1].
      inclusive: keep `low <= rate <= high` instead of `low < rate < high`.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    if isinstance(pass_rates, Mapping):
        missing = [ex.id for ex in examples if ex.id not in pass_rates]
        if missing:
            raise ValueError(f"no pass rate for {len(missing)} examples, e.g. {missing[:3]}")
        rates = [pass_rates[ex.id] for ex in examples]
    else:
        if len(pass_rates) != len(examples):
            raise ValueError(f"{len(pass_rates)} pass rates for {len(examples)} examples")
        rates = list(pass_rates)
    for ex, rate in zip(examples, rates):
        if not (isinstance(rate, numbers.Real) and not math.isnan(rate) and 0.0 <= rate <= 1.0):
            raise ValueError(f"pass rate of {ex.id!r} is {rate!r}, expected a number in [0, 1]")
    if inclusive:
        return [ex for ex, r in zip(examples, rates) if low <= r <= high]
    return [ex for ex, r in zip(examples, rates) if low < r < high]
