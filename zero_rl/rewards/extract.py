"""Final-answer extraction from model responses, under one of two policies.

`strict` (the reward default) requires a marked answer, as the standard math graders read one:
in order, the last `<answer>...</answer>` span when the response ends with it (DeepSeek-R1-Zero's
template; a `\\boxed{}` inside it is the answer), the last non-empty `\\boxed{...}` /
`\\fbox{...}` (brace-matched; a box inside a box is one box; adjacent boxes joined only by
separators, as in `\\boxed{3}, \\boxed{5}` or `\\boxed{3} \\text{or} \\boxed{5}`, are one
multi-part answer, which a single gold answer never matches), Minerva's "final answer is X. I
hope", "the answer is X", GSM8K's `#### X`, and optionally the last number in the text. An
unboxed answer that offers alternatives (`$5$ or $6$`) is not an answer.

`lenient` (the grading default of evaluation and `python -m zero_rl.tools.verify`) also reads
answers stated without a marker (`zero_rl.rewards.cues`), each a named rule
(`zero_rl.rewards.rules`): a final statement after the last box wins over it
(`final_after_box`), "Answer:" / "Final Answer:" cues read as a sentence (`answer_cue`),
several boxes separated by prose answer a gold with that many parts (`boxes_as_tuple`, see
`answer_for_gold`), a response that is one short expression is the answer (`bare_answer`), and
last the last math span or number of the text (`last_expression`).

An answer longer than `MAX_ANSWER_CHARS` (a box that does not close within it, a 1 MB number)
is over the verification budget: `extract_with_budget` reports it, and `score` counts it as a
timeout.
"""

from __future__ import annotations

import dataclasses

from zero_rl.rewards import cues, rules
from zero_rl.rewards.markers import (
    LAST_NUMBER_RE,
    OverBudget,
    after_phrase,
    answer_tag,
    last_boxed,
)
from zero_rl.rewards.normalize import (
    MAX_ANSWER_CHARS,
    Collection,
    normalize_answer,
    parse_value,
)

# Sources whose answer is in the format the prompt asks for (see `Extraction.boxed`).
FORMATTED_SOURCES = frozenset({"answer_tag", "boxed"})
# Up to this many separate earlier boxes are kept for `answer_for_gold`.
_MAX_EARLIER_BOXES = 7
_PHRASES = (
    ("final answer is", "i hope", "final_answer"),
    ("answer is", None, "answer_is"),
    ("####", None, "gsm8k"),
)


@dataclasses.dataclass(frozen=True)
class Extraction:
    """A final answer and where it came from.

    `source` is one of "answer_tag" (a closed `<answer>` tag that ends the response), "boxed",
    "final_answer" (Minerva), "answer_is", "gsm8k", "last_number"; and under the lenient
    policy "answer_cue", "bare_answer", "last_expression". `earlier_boxes` (lenient, boxed
    answers only): the contents of the separate boxes before the answer's, in text order.
    """

    answer: str
    source: str
    earlier_boxes: tuple[str, ...] = ()

    @property
    def boxed(self) -> bool:
        """Whether the answer is in the required format: a `\\boxed{}`, or the `<answer>` tag of
        the R1-Zero template, which plays the same part there (the format-aware reward pays a
        tagged answer as a boxed one)."""
        return self.source in FORMATTED_SOURCES


def _strict(text: str, last_number_fallback: bool) -> Extraction | None:
    tagged = answer_tag(text)
    if tagged is not None:
        return Extraction(tagged, "answer_tag") if tagged else None
    boxed = last_boxed(text)
    if boxed is not None:
        return Extraction(boxed.answer, "boxed")
    lowered = text.lower()
    for phrase, stop, source in _PHRASES:
        answer = after_phrase(text, lowered, phrase, stop)
        if answer is not None:
            return Extraction(answer, source)
    if last_number_fallback:
        last = None
        for last in LAST_NUMBER_RE.finditer(text):  # noqa: B007 - only the last match is kept
            pass
        if last is not None:
            if len(last.group(0)) > MAX_ANSWER_CHARS:
                raise OverBudget
            return Extraction(last.group(0).rstrip(","), "last_number")
    return None


def _states_a_value(answer: str) -> bool:
    """Whether a cue's answer can stand for a box before it: it holds a digit or a LaTeX
    command ("Final answer: 7", not "I hope the answer is correct")."""
    return any(char.isdigit() or char == "\\" for char in answer)


def _lenient(text: str) -> Extraction | None:
    tagged = answer_tag(text)
    if tagged is not None:
        return Extraction(tagged, "answer_tag") if tagged else None
    earlier = _MAX_EARLIER_BOXES if rules.enabled("boxes_as_tuple") else 0
    boxed = last_boxed(text, earlier=earlier)
    reads_cues = rules.enabled("answer_cue")
    if boxed is not None:
        # Only a statement after the box can win over it.
        cue = None
        if reads_cues and rules.enabled("final_after_box"):
            cue = cues.last_cue(text, start=boxed.end)
        if cue is not None and _states_a_value(cue[0]):
            return Extraction(cue[0], "answer_cue")
        return Extraction(boxed.answer, "boxed", boxed.earlier)
    cue = cues.last_cue(text) if reads_cues else None
    strict = _strict(text, last_number_fallback=False)
    if cue is not None:
        return Extraction(cue[0], "answer_cue")
    if strict is not None:
        return strict
    if rules.enabled("bare_answer"):
        bare = cues.bare_answer(text)
        if bare is not None:
            return Extraction(bare, "bare_answer")
    if rules.enabled("last_expression"):
        last = cues.last_expression(text)
        if last is not None:
            return Extraction(last, "last_expression")
    return None


def extract_with_budget(
    text: str, *, policy: str = "strict", last_number_fallback: bool = False
) -> tuple[Extraction | None, bool]:
    """(`extract(text)`, over_budget): over_budget is True when the response marks an answer
    that is longer than MAX_ANSWER_CHARS, which is then not read (and scored as a timeout)."""
    if not isinstance(text, str):
        raise TypeError(f"a response must be a str, got {type(text).__name__}")
    rules.check_policy(policy)
    try:
        if policy == "lenient":
            return _lenient(text), False
        return _strict(text, last_number_fallback), False
    except OverBudget:
        return None, True


def extract(
    text: str, *, policy: str = "strict", last_number_fallback: bool = False
) -> Extraction | None:
    """The final answer of a response and its source, or None when it has none.

    Args:
      text: a model response.
      policy: "strict" (a marked answer is required; the reward default) or "lenient" (also
        unmarked answers, for grading; see the module docstring).
      last_number_fallback: strict only: also accept the last number anywhere in the text.
        Off for rewards: it pays a policy for any number it happens to end on.
    """
    return extract_with_budget(text, policy=policy, last_number_fallback=last_number_fallback)[0]


def extract_answer(
    text: str, *, policy: str = "strict", last_number_fallback: bool = False
) -> str | None:
    """The final answer of a response (see `extract`), or None."""
    extraction = extract(text, policy=policy, last_number_fallback=last_number_fallback)
    return None if extraction is None else extraction.answer


def _parts(answer: str) -> tuple[int, str, str]:
    """(number of top-level parts, opening, closing bracket) of an answer: (3, "(", ")") for
    "(1, 2, 3)", (2, "", "") for "3, 5", (1, "", "") for "5"."""
    key, percent = normalize_answer(answer)
    value = parse_value(key, percent)
    if isinstance(value, Collection) and value.opening in ("", "(", "\\{"):
        return len(value.elements), value.opening, value.closing
    return 1, "", ""


def answer_for_gold(extraction: Extraction, gold: str) -> str:
    """The answer to check against `gold`: the extracted one, or under the lenient policy's
    `boxes_as_tuple` rule, when `gold` has k > 1 parts, the answer has fewer, and the
    response boxed one part at a time, its last k boxes as one answer in the gold's brackets
    ("$\\boxed{3}$ ... and so $\\boxed{5}$" answers "(3, 5)"). A single box can never match a
    k-part gold, so this only reads answers the plain rule would mark wrong."""
    if not extraction.earlier_boxes or not rules.enabled("boxes_as_tuple"):
        return extraction.answer
    parts, opening, closing = _parts(gold)
    if parts < 2 or parts > len(extraction.earlier_boxes) + 1:
        return extraction.answer
    if _parts(extraction.answer)[0] >= parts:
        return extraction.answer
    boxes = [*extraction.earlier_boxes, extraction.answer][-parts:]
    return opening + ", ".join(boxes) + closing
