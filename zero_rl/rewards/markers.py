"""Readers of marked final answers: `<answer>` tags, `\\boxed{}` groups and answer phrases.

All of it is `str.rfind` plus bounded scans, so a 1 MB response or 10^5 nested braces costs
milliseconds. A marked answer longer than `MAX_ANSWER_CHARS` raises `OverBudget`.
"""

from __future__ import annotations

import dataclasses
import re

from zero_rl.rewards.normalize import MAX_ANSWER_CHARS

BOX_COMMANDS = ("\\boxed", "\\fbox", "\\framebox")
_MAX_JOINED_BOXES = 16
_MAX_SKIPPED_BOXES = 64
_MAX_BETWEEN_BOXES = 64
# What may stand between two boxes of one multi-part answer: math delimiters, punctuation,
# spacing, and "and"/"or" bare or in `\text{}`.
BOX_SEPARATOR_RE = re.compile(
    r"^(?:\s|\$|,|;|~|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\[()\[\]]"
    r"|\\(?:text|textrm|mbox|mathrm)\s*\{\s*(?:and|or|,)?\s*\}"
    r"|(?<![A-Za-z])(?:and|or)(?![A-Za-z]))*$"
)
LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
# Math spans that may hold an unboxed answer: "$...$", "\(...\)", "\[...\]".
MATH_SPAN_RE = re.compile(
    r"\$\$?((?:[^$\\]|\\.){1,1000})\$|\\\((.{1,1000}?)\\\)|\\\[(.{1,1000}?)\\\]", re.DOTALL
)
# After an unboxed answer's math span: a separator and another value, as in "$5$ or $6$".
ANOTHER_VALUE_RE = re.compile(
    r"\s*(?:,|;|(?<![A-Za-z])(?:and|or)(?![A-Za-z])|\\text\s*\{\s*(?:and|or)\s*\})+\s*"
    r"(?:\$|\\\(|\\\[|[-+]?\d)"
)
OR_RE = re.compile(r"(?<![A-Za-z\\])or(?![A-Za-z])")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
TAG_RE = re.compile(r"</?(?:think|answer)>")


class OverBudget(Exception):
    """An answer marker whose answer is longer than `MAX_ANSWER_CHARS`."""


NOT_A_BOX = object()


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the `}` that closes the `{` at `open_index`; None if the text ends first.

    Raises OverBudget when the box is still open after MAX_ANSWER_CHARS with text left.
    """
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
    if end < len(text):
        raise OverBudget
    return None


def box_at(text: str, start: int, command: str):
    """(content, end index) of the box whose command starts at `start`; None when it does not
    close (a truncated response); NOT_A_BOX for e.g. `\\boxedsymbol`."""
    i = start + len(command)
    if i < len(text) and text[i].isalpha():
        return NOT_A_BOX
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        close = _matching_brace(text, i)
        return None if close is None else (text[i + 1 : close], close + 1)
    # `\boxed 5`: a single token, as TeX reads it.
    end = i
    while end < len(text) and not text[end].isspace() and text[end] != "$":
        end += 1
        if end - i > MAX_ANSWER_CHARS:
            raise OverBudget
    return (text[i:end], end) if end > i else NOT_A_BOX


class BoxFinder:
    """Box commands from the end of a text backwards; each `rfind` is re-run only once its
    previous hit has been passed, so a whole scan is linear in the text."""

    def __init__(self, text: str):
        self.text = text
        self.hits = {command: text.rfind(command) for command in BOX_COMMANDS}

    def before(self, index: int) -> tuple[int, str] | None:
        for command, hit in self.hits.items():
            if hit >= index:
                self.hits[command] = self.text.rfind(command, 0, index)
        start, command = max((hit, command) for command, hit in self.hits.items())
        return (start, command) if start >= 0 else None


def unwrap_box(content: str) -> str:
    """`\\boxed{\\boxed{5}}` is one box of 5."""
    for _ in range(8):
        stripped = content.strip()
        command = next((c for c in BOX_COMMANDS if stripped.startswith(c)), None)
        if command is None:
            break
        box = box_at(stripped, 0, command)
        if not isinstance(box, tuple) or box[1] != len(stripped):
            break
        content = box[0]
    return content.strip()


@dataclasses.dataclass(frozen=True)
class Boxed:
    """The last boxed answer of a text: `answer` (boxes joined by separators are one answer,
    "3, 5"), the span [start, end) of its boxes, and `earlier`, the contents of up to the
    requested number of separate boxes before it, in text order."""

    answer: str
    start: int
    end: int
    earlier: tuple[str, ...] = ()


def last_boxed(text: str, *, earlier: int = 0) -> Boxed | None:
    """The last non-empty box of `text` with the boxes joined to it only by separators
    (`BOX_SEPARATOR_RE`); None when there is none or the last one does not close."""
    finder = BoxFinder(text)
    before = len(text)
    # The last box with an answer: empty boxes and non-boxes are skipped (a few: more is
    # degenerate text, over budget); an unclosed last box (a truncated response) is no answer.
    for skipped in range(_MAX_SKIPPED_BOXES + 1):
        if skipped == _MAX_SKIPPED_BOXES:
            raise OverBudget
        found = finder.before(before)
        if found is None:
            return None
        start, command = found
        box = box_at(text, start, command)
        if box is None:
            return None
        if box is not NOT_A_BOX and unwrap_box(box[0]):
            break
        before = start
    parts = [unwrap_box(box[0])]
    group_start, end = start, box[1]
    last_end = end
    # Earlier boxes joined to this one only by separators: "$\boxed{3}$ and $\boxed{5}$".
    separate = []
    while len(parts) < _MAX_JOINED_BOXES and len(separate) < earlier + 1:
        found = finder.before(start)
        if found is None:
            break
        earlier_start, earlier_command = found
        earlier_box = box_at(text, earlier_start, earlier_command)
        if not isinstance(earlier_box, tuple):
            break
        if earlier_box[1] >= end:  # it encloses the box found so far: the outer one is the box
            if separate:
                break
            parts[-1] = unwrap_box(earlier_box[0])
            start = group_start = earlier_start
            end = earlier_box[1]
            last_end = max(last_end, end)
            continue
        between = text[earlier_box[1] : start]
        content = unwrap_box(earlier_box[0])
        if not content:
            break
        joined = len(between) <= _MAX_BETWEEN_BOXES and BOX_SEPARATOR_RE.match(between)
        if joined and not separate:
            parts.append(content)
            group_start = earlier_start
        elif len(separate) < earlier:
            separate.append(content)
        else:
            break
        start, end = earlier_start, earlier_box[1]
    # A repeated box ("$\boxed{5}$\n\n$\boxed{5}$") is one answer, not the set {5, 5}.
    answer = ", ".join(dict.fromkeys(reversed(parts)))
    return Boxed(answer, group_start, last_end, tuple(reversed(separate)))


def clean_inline_answer(candidate: str) -> str | None:
    """The answer in a sentence tail such as " $\\frac{1}{2}$. I hope" or ": **42**.".

    None when it offers alternatives ("$5$ or $6$", "5 or 6"): unboxed, a hedge is no answer.
    """
    candidate = candidate.strip().lstrip(":").strip().replace("**", "")
    tag = TAG_RE.search(candidate)  # "so the answer is 18.</think> <answer> 1" (truncated)
    candidate = candidate if tag is None else candidate[: tag.start()]
    span = MATH_SPAN_RE.match(candidate)
    if span is not None:
        if ANOTHER_VALUE_RE.match(candidate, span.end()):
            return None
        candidate = next(group for group in span.groups() if group is not None)
    else:
        sentence_end = re.search(r"\.(?:\s|$)", candidate)
        if sentence_end is not None:
            candidate = candidate[: sentence_end.start()]
    candidate = candidate.strip().rstrip(".").strip()
    if len(candidate) > MAX_ANSWER_CHARS:
        raise OverBudget
    if not candidate or OR_RE.search(candidate):
        return None
    return candidate


def after_phrase(text: str, lowered: str, phrase: str, stop: str | None) -> str | None:
    index = lowered.rfind(phrase)
    if index < 0:
        return None
    start = index + len(phrase)
    end = lowered.find("\n", start)
    end = len(text) if end < 0 else end
    if stop is not None:
        stop_index = lowered.find(stop, start, end)
        end = stop_index if stop_index >= 0 else end
    return clean_inline_answer(text[start : min(end, start + 2 * MAX_ANSWER_CHARS)])


def answer_tag(text: str) -> str | None:
    """The content of the last `<answer>...</answer>` when nothing but whitespace follows it
    (the R1-Zero template's sampler stops at `</answer>`), its `\\boxed{}` if it has one; None
    without such a tag. Raises OverBudget for a tag longer than MAX_ANSWER_CHARS."""
    close = text.rfind(_ANSWER_CLOSE)
    if close < 0 or text[close + len(_ANSWER_CLOSE) :].strip():
        return None
    open_index = text.rfind(_ANSWER_OPEN, max(0, close - 4 * MAX_ANSWER_CHARS), close)
    if open_index < 0:
        if text.rfind(_ANSWER_OPEN, 0, close) >= 0:
            raise OverBudget
        return None
    content = text[open_index + len(_ANSWER_OPEN) : close].strip()
    boxed = last_boxed(content)
    if boxed is not None:
        return boxed.answer
    if len(content) > MAX_ANSWER_CHARS:
        raise OverBudget
    phrase = after_phrase(content, content.lower(), "answer is", None)
    if phrase is not None:
        return phrase
    span = MATH_SPAN_RE.fullmatch(content)
    if span is not None:
        content = next(group for group in span.groups() if group is not None)
    return content.strip().rstrip(".").strip()
