"""Final-answer extraction from model responses, as the standard math graders do it.

In order: the last `\\boxed{...}` / `\\fbox{...}` (brace-matched; adjacent boxes such as
`\\boxed{3}, \\boxed{5}` are one multi-part answer), Minerva's "final answer is X. I hope",
"the answer is X", GSM8K's `#### X`, and optionally the last number in the text.

All of it is `str.rfind` plus bounded scans, so a 1 MB response or 10^5 nested braces costs
milliseconds: a box that does not close within `MAX_ANSWER_CHARS` is not an answer.
"""

from __future__ import annotations

import dataclasses
import re

from zero_rl.rewards.normalize import MAX_ANSWER_CHARS

_BOX_COMMANDS = ("\\boxed", "\\fbox", "\\framebox")
_MAX_JOINED_BOXES = 16
_BOX_SEPARATORS = ("$", ",", ";", "and", "or", "\\quad", "\\qquad", "\\text{and}", "\\text{or}")
_LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
# Math spans that may hold an unboxed answer: "$...$", "\(...\)", "\[...\]".
_MATH_SPAN_RE = re.compile(
    r"\$\$?((?:[^$\\]|\\.){1,1000})\$|\\\((.{1,1000}?)\\\)|\\\[(.{1,1000}?)\\\]", re.DOTALL
)


@dataclasses.dataclass(frozen=True)
class Extraction:
    """A final answer and where it came from.

    `source` is one of "boxed", "final_answer" (Minerva), "answer_is", "gsm8k", "last_number".
    """

    answer: str
    source: str

    @property
    def boxed(self) -> bool:
        return self.source == "boxed"


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the `}` that closes the `{` at `open_index`, scanning at most MAX_ANSWER_CHARS."""
    depth = 0
    end = min(len(text), open_index + MAX_ANSWER_CHARS + 2)
    i = open_index
    while i < end:
        char = text[i]
        if char == "\\":
            i += 2  # `\{`, `\}` and `\\` are not grouping braces
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_at(text: str, start: int, command: str) -> tuple[str, int] | None:
    """(content, end index) of the box whose command starts at `start`, or None if malformed."""
    i = start + len(command)
    if i < len(text) and text[i].isalpha():
        return None  # e.g. `\boxedsymbol`, not a box
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        close = _matching_brace(text, i)
        return None if close is None else (text[i + 1 : close], close + 1)
    # `\boxed 5`: a single token, as TeX reads it.
    end = i
    while end < len(text) and end - i <= MAX_ANSWER_CHARS and not text[end].isspace():
        if text[end] == "$":
            break
        end += 1
    return (text[i:end], end) if end > i else None


def _last_box_start(text: str, before: int) -> tuple[int, str] | None:
    best = max((text.rfind(command, 0, before), command) for command in _BOX_COMMANDS)
    return best if best[0] >= 0 else None


def _last_boxed(text: str) -> str | None:
    found = _last_box_start(text, len(text))
    if found is None:
        return None
    start, command = found
    box = _box_at(text, start, command)
    if box is None or not box[0].strip():
        return None
    parts = [box[0].strip()]
    # Gather earlier boxes joined to this one only by separators: "$\boxed{3}$ and $\boxed{5}$".
    while len(parts) < _MAX_JOINED_BOXES:
        found = _last_box_start(text, start)
        if found is None:
            break
        earlier_start, earlier_command = found
        earlier = _box_at(text, earlier_start, earlier_command)
        if earlier is None or not earlier[0].strip():
            break
        between = text[earlier[1] : start]
        if len(between) > 64:
            break
        for separator in _BOX_SEPARATORS:
            between = between.replace(separator, "")
        if between.strip():
            break
        parts.append(earlier[0].strip())
        start = earlier_start
    # A repeated box ("$\boxed{5}$\n\n$\boxed{5}$") is one answer, not the set {5, 5}.
    return ", ".join(dict.fromkeys(reversed(parts)))


def _clean_inline_answer(candidate: str) -> str | None:
    """The answer in a sentence tail such as " $\\frac{1}{2}$. I hope" or ": **42**."."""
    candidate = candidate.strip().lstrip(":").strip().replace("**", "")
    span = _MATH_SPAN_RE.match(candidate)
    if span is not None:
        candidate = next(group for group in span.groups() if group is not None)
    else:
        sentence_end = re.search(r"\.(?:\s|$)", candidate)
        if sentence_end is not None:
            candidate = candidate[: sentence_end.start()]
    candidate = candidate.strip().rstrip(".").strip()
    if not candidate or len(candidate) > MAX_ANSWER_CHARS:
        return None
    return candidate


def _after_phrase(text: str, lowered: str, phrase: str, stop: str | None) -> str | None:
    index = lowered.rfind(phrase)
    if index < 0:
        return None
    start = index + len(phrase)
    end = lowered.find("\n", start)
    end = len(text) if end < 0 else end
    if stop is not None:
        stop_index = lowered.find(stop, start, end)
        end = stop_index if stop_index >= 0 else end
    return _clean_inline_answer(text[start : min(end, start + 2 * MAX_ANSWER_CHARS)])


def extract(text: str, *, last_number_fallback: bool = False) -> Extraction | None:
    """The final answer of a response and its source, or None when it has none.

    Args:
      text: a model response.
      last_number_fallback: also accept the last number anywhere in the text. Off for rewards: it
        pays a policy for any number it happens to end on.
    """
    if not isinstance(text, str):
        raise TypeError(f"a response must be a str, got {type(text).__name__}")
    boxed = _last_boxed(text)
    if boxed is not None:
        return Extraction(boxed, "boxed")
    lowered = text.lower()
    for phrase, stop, source in (
        ("final answer is", "i hope", "final_answer"),
        ("answer is", None, "answer_is"),
        ("####", None, "gsm8k"),
    ):
        answer = _after_phrase(text, lowered, phrase, stop)
        if answer is not None:
            return Extraction(answer, source)
    if last_number_fallback:
        last = None
        for last in _LAST_NUMBER_RE.finditer(text):  # noqa: B007 - only the last match is kept
            pass
        if last is not None:
            return Extraction(last.group(0).rstrip(","), "last_number")
    return None


def extract_answer(text: str, *, last_number_fallback: bool = False) -> str | None:
    """The final answer of a response (see `extract`), or None."""
    extraction = extract(text, last_number_fallback=last_number_fallback)
    return None if extraction is None else extraction.answer
