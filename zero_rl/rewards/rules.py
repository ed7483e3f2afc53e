"""The named rules of the verifier, each of which can be switched off to see what it decides.

Extraction rules apply to the `lenient` policy only (grading benchmark outputs and other
engines' generations); `strict`, the reward default, requires a marked answer and uses none of
them. Normalisation rules apply under both policies. `python -m zero_rl.tools.rule_report`
grades the shipped benchmark answers with each rule switched off in turn and prints how many
verdicts it changes, so a rule that would change reward semantics shows.

Switching rules off is for that report and for tests: `with disabled("decimal_comma"): ...` is
process-wide (not thread-safe) and does not reach `VerifierPool` workers, so grade in-process
(`is_equivalent`) under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

POLICIES = ("strict", "lenient")

# name -> what the rule reads; the order is the report's.
EXTRACTION_RULES = {
    "final_after_box": "a final answer statement after the last \\boxed{} wins over that box",
    "answer_cue": "'Answer:', 'Final Answer:' and '**Answer**' cues, read as a sentence",
    "boxes_as_tuple": "several boxes separated by prose answer a gold with that many parts",
    "bare_answer": "a response that is a single short expression is the answer",
    "last_expression": "the last math span or number of the response, as the final fallback",
}
NORMALIZATION_RULES = {
    "decimal_comma": "'3,75' is 3.75 against a single number ('3,750' stays 3750)",
    "percent_words": "'pct' and 'percentage' after a number are a percent sign",
    "text_tail": "words in \\text{} after a number are dropped unless they hedge or scale it",
    "trailing_backslash": "a stray backslash at the end of an answer is dropped",
    "approx_after_exact": "'A \\approx 0.707' is the exact value A",
    "decimal_of_exact": "a decimal answer within rel_tol of an exact irrational gold equals it",
    "units": "a trailing unit from a fixed vocabulary is dropped ('12 cm', '91 trees')",
    "and_or_list": "'a and b' / 'a or b' is the list 'a, b'",
}
RULES = {**EXTRACTION_RULES, **NORMALIZATION_RULES}

_disabled: frozenset[str] = frozenset()
# Functions whose results depend on the rules (lru caches), cleared when the set changes.
_cache_clearers: list[Callable[[], None]] = []


def enabled(name: str) -> bool:
    """Whether rule `name` is on (all are, unless switched off by `disabled`)."""
    return name not in _disabled


def register_cache(function) -> None:
    """Clear `function`'s lru cache whenever the set of disabled rules changes."""
    _cache_clearers.append(function.cache_clear)


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"extraction policy must be one of {POLICIES}, got {policy!r}")
    return policy


@contextlib.contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Switch rules off inside the block (nested blocks add to the set)."""
    global _disabled
    unknown = sorted(set(names) - set(RULES))
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; rules are {list(RULES)}")
    previous = _disabled
    _disabled = previous | frozenset(names)
    for clear in _cache_clearers:
        clear()
    try:
        yield
    finally:
        _disabled = previous
        for clear in _cache_clearers:
            clear()
