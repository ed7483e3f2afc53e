"""Gold answers from their dataset formats, brought to one LaTeX answer string."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from zero_rl.rewards.extract import extract

# Datasets whose gold answers need no special handling beyond the generic path.
_LATEX_DATASETS = frozenset({"math", "math500", "minerva_math", "aime24", "aime25", "amc23"})
DATASETS = frozenset({"gsm8k", "olympiadbench"} | _LATEX_DATASETS)


def _strip_math_delimiters(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        return answer[2:-2].strip()
    if answer.startswith("\\[") and answer.endswith("\\]"):
        return answer[2:-2].strip()
    answer = answer.lstrip("$")
    if answer.endswith("$") and not answer.endswith("\\$"):
        answer = answer.rstrip("$")
    return answer.strip()


def _from_number(value: numbers.Real) -> str:
    if isinstance(value, bool):
        raise TypeError(f"gold answer is a bool ({value}), not a number or string")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"gold answer is not a finite number: {value}")
    # AMC23 stores integers as floats ("27.0"); keep them integers.
    return str(int(value)) if value.is_integer() else repr(value)


def _from_string(raw: str, dataset: str | None) -> str:
    text = raw.strip()
    if dataset == "gsm8k" or "####" in text:
        marker = text.rfind("####")
        if marker < 0:
            if dataset == "gsm8k" and text.replace(",", "").lstrip("-").replace(".", "").isdigit():
                return text.replace(",", "")
            raise ValueError(f"gsm8k gold answer has no '#### N' line: {raw[:80]!r}")
        return text[marker + 4 :].strip().splitlines()[0].strip().replace(",", "")
    if "\\boxed" in text or "\\fbox" in text:
        # A full MATH solution rather than its final answer.
        extraction = extract(text)
        if extraction is None or not extraction.boxed:
            raise ValueError(f"gold solution has an unterminated \\boxed: {raw[:80]!r}")
        return extraction.answer
    # OlympiadBench writes several answers as "$a$,$b$" within one string.
    return ", ".join(_strip_math_delimiters(part) for part in text.split("$,$"))


def normalize_gold(
    raw: str | numbers.Real | Sequence[str | numbers.Real], dataset: str | None = None
) -> str:
    """One gold answer string from any supported dataset format.

    Handles MATH/MATH500 LaTeX answers (or a full solution, whose last `\\boxed` is taken), GSM8K
    solutions ending in `#### N`, OlympiadBench `final_answer` lists (several answers are joined
    with ", " and compared as a set), and AMC/AIME numbers (`27.0` -> `27`).

    Args:
      raw: the dataset's answer field.
      dataset: optional name, one of `DATASETS`; "gsm8k" requires the `####` format.

    Raises:
      ValueError / TypeError: an unknown dataset, or an answer that is empty or malformed.
    """
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    if isinstance(raw, str):
        answer = _from_string(raw, dataset)
    elif isinstance(raw, numbers.Real):
        answer = _from_number(raw)
    elif isinstance(raw, Sequence):
        if not raw:
            raise ValueError("gold answer is an empty list")
        answer = ", ".join(normalize_gold(item, dataset) for item in raw)
    else:
        raise TypeError(f"gold answer must be a string, number or list, got {type(raw).__name__}")
    if not answer:
        raise ValueError(f"gold answer is empty after normalisation: {raw!r}")
    return answer
