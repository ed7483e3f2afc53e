"""Final-answer extraction from model responses, as the standard math graders do it.

In order: the last `<answer>...</answer>` span when the response ends with it (DeepSeek-R1-Zero's
template; a `\\boxed{}` inside it is the answer), the last non-empty `\\boxed{...}` /
`\\fbox{...}` (brace-matched; a box inside a box is one box; adjacent boxes joined only by
separators, as in `\\boxed{3}, \\boxed{5}` or `\\boxed{3} \\text{or} \\boxed{5}`, are one
multi-part answer, which a single gold answer never matches), Minerva's "final answer is X. I
hope", "the answer is X", GSM8K's `#### X`, and optionally the last number in the text. An
unboxed answer that offers alternatives (`$5$ or $6$`) is not an answer.

All of it is `str.rfind` plus bounded scans, so a 1 MB response or 10^5 nested braces costs
milliseconds. An answer longer than `MAX_ANSWER_CHARS` (a box that does not close within it, a
1 MB number) is over the verification budget: `extract_with_budget` reports it, and `score`
counts it as a timeout.
"""

from __future__ import annotations

import dataclasses
import re

from zero_rl.rewards.normalize import MAX_ANSWER_CHARS

_BOX_COMMANDS = ("\\boxed", "\\fbox", "\\framebox")
_MAX_JOINED_BOXES = 16
_MAX_SKIPPED_BOXES = 64
_MAX_BETWEEN_BOXES = 64
# What may stand between two boxes of one multi-part answer: math delimiters, punctuation,
# spacing, and "and"/"or" bare or in `\text{}`.
_BOX_SEPARATOR_RE = re.compile(
    r"^(?:\s|\$|,|;|~|\\[,;:! ]|\\q?quad(?![A-Za-z])|\\[()\[\]]"
    r"|\\(?:text|textrm|mbox|mathrm)\s*\{\s*(?:and|or|,)?\s*\}"
    r"|(?<![A-Za-z])(?:and|or)(?![A-Za-z]))*$"
)
_LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
# Math spans that may hold an unboxed answer: "$...$", "\(...\)", "\[...\]".
_MATH_SPAN_RE = re.compile(
    r"\$\$?((?:[^$\\]|\\.){1,1000})\$|\\\((.{1,1000}?)\\\)|\\\[(.{1,1000}?)\\\]", re.DOTALL
)
# After an unboxed answer's math span: a separator and another value, as in "$5$ or $6$".
_ANOTHER_VALUE_RE = re.compile(
    r"\s*(?:,|;|(?<![A-Za-z])(?:and|or)(?![A-Za-z])|\\text\s*\{\s*(?:and|or)\s*\})+\s*"
    r"(?:\$|\\\(|\\\[|[-+]?\d)"
)
_OR_RE = re.compile(r"(?<![A-Za-z\\])or(?![A-Za-z])")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_TAG_RE = re.compile(r"</?(?:think|answer)>")
# Sources whose answer is in the format the prompt asks for (see `Extraction.boxed`).
FORMATTED_SOURCES = frozenset({"answer_tag", "boxed"})


class _OverBudget(Exception):
    """An answer marker whose answer is longer than `MAX_ANSWER_CHARS`."""


@dataclasses.dataclass(frozen=True)
class Extraction:
    """A final answer and where it came from.

    `source` is one of "answer_tag" (a closed `<answer>` tag that ends the response), "boxed",
    "final_answer" (Minerva), "answer_is", "gsm8k", "last_number".
    """

    answer: str
    source: str

    @property
    def boxed(self) -> bool:
        """Whether the answer is in the required format: a `\\boxed{}`, or the `<answer>` tag of
        the R1-Zero template, which plays the same part there (the format-aware reward pays a
        tagged answer as a boxed one)."""
        return self.source in FORMATTED_SOURCES


_NOT_A_BOX = object()


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the `}` that closes the `{` at `open_index`; None if the text ends first.

    Raises _OverBudget when the box is still open after MAX_ANSWER_CHARS with text left.
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
        raise _OverBudget
    return None


def _box_at(text: str, start: int, command: str):
    """(content, end index) of the box whose command starts at `start`; None when it does not
    close (a truncated response); _NOT_A_BOX for e.g. `\\boxedsymbol`."""
    i = start + len(command)
    if i < len(text) and text[i].isalpha():
        return _NOT_A_BOX
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
            raise _OverBudget
    return (text[i:end], end) if end > i else _NOT_A_BOX


class _BoxFinder:
    """Box commands from the end of a text backwards; each `rfind` is re-run only once its
    previous hit has been passed, so a whole scan is linear in the text."""

    def __init__(self, text: str):
        self.text = text
        self.hits = {command: text.rfind(command) for command in _BOX_COMMANDS}

    def before(self, index: int) -> tuple[int, str] | None:
        for command, hit in self.hits.items():
            if hit >= index:
                self.hits[command] = self.text.rfind(command, 0, index)
        start, command = max((hit, command) for command, hit in self.hits.items())
        return (start, command) if start >= 0 else None


def _unwrap(content: str) -> str:
    """`\\boxed{\\boxed{5}}` is one box of 5."""
    for _ in range(8):
        stripped = content.strip()
        command = next((c for c in _BOX_COMMANDS if stripped.startswith(c)), None)
        if command is None:
            break
        box = _box_at(stripped, 0, command)
        if not isinstance(box, tuple) or box[1] != len(stripped):
            break
        content = box[0]
    return content.strip()


def _last_boxed(text: str) -> str | None:
    finder = _BoxFinder(text)
    before = len(text)
    # The last box with an answer: empty boxes and non-boxes are skipped (a few: more is
    # degenerate text, over budget); an unclosed last box (a truncated response) is no answer.
    for skipped in range(_MAX_SKIPPED_BOXES + 1):
        if skipped == _MAX_SKIPPED_BOXES:
            raise _OverBudget
        found = finder.before(before)
        if found is None:
            return None
        start, command = found
        box = _box_at(text, start, command)
        if box is None:
            return None
        if box is not _NOT_A_BOX and _unwrap(box[0]):
            break
        before = start
    parts = [_unwrap(box[0])]
    end = box[1]
    # Earlier boxes joined to this one only by separators: "$\boxed{3}$ and $\boxed{5}$".
    while len(parts) < _MAX_JOINED_BOXES:
        found = finder.before(start)
        if found is None:
            break
        earlier_start, earlier_command = found
        earlier = _box_at(text, earlier_start, earlier_command)
        if not isinstance(earlier, tuple):
            break
        if earlier[1] >= end:  # it encloses the box found so far: the outer one is the box
            parts[-1] = _unwrap(earlier[0])
            start, end = earlier_start, earlier[1]
            continue
        between = text[earlier[1] : start]
        content = _unwrap(earlier[0])
        if not content or len(between) > _MAX_BETWEEN_BOXES:
            break
        if not _BOX_SEPARATOR_RE.match(between):
            break
        parts.append(content)
        start = earlier_start
    # A repeated box ("$\boxed{5}$\n\n$\boxed{5}$") is one answer, not the set {5, 5}.
    return ", ".join(dict.fromkeys(reversed(parts)))


def _clean_inline_answer(candidate: str) -> str | None:
    """The answer in a sentence tail such as " $\\frac{1}{2}$. I hope" or ": **42**.".

    None when it offers alternatives ("$5$ or $6$", "5 or 6"): unboxed, a hedge is no answer.
    """
    candidate = candidate.strip().lstrip(":").strip().replace("**", "")
    tag = _TAG_RE.search(candidate)  # "so the answer is 18.</think> <answer> 1" (truncated)
    candidate = candidate if tag is None else candidate[: tag.start()]
    span = _MATH_SPAN_RE.match(candidate)
    if span is not None:
        if _ANOTHER_VALUE_RE.match(candidate, span.end()):
            return None
        candidate = next(group for group in span.groups() if group is not None)
    else:
        sentence_end = re.search(r"\.(?:\s|$)", candidate)
        if sentence_end is not None:
            candidate = candidate[: sentence_end.start()]
    candidate = candidate.strip().rstrip(".").strip()
    if len(candidate) > MAX_ANSWER_CHARS:
        raise _OverBudget
    if not candidate or _OR_RE.search(candidate):
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


def _answer_tag(text: str) -> str | None:
    """The content of the last `<answer>...</answer>` when nothing but whitespace follows it
    (the R1-Zero template's sampler stops at `</answer>`), its `\\boxed{}` if it has one; None
    without such a tag. Raises _OverBudget for a tag longer than MAX_ANSWER_CHARS."""
    close = text.rfind(_ANSWER_CLOSE)
    if close < 0 or text[close + len(_ANSWER_CLOSE) :].strip():
        return None
    open_index = text.rfind(_ANSWER_OPEN, max(0, close - 4 * MAX_ANSWER_CHARS), close)
    if open_index < 0:
        if text.rfind(_ANSWER_OPEN, 0, close) >= 0:
            raise _OverBudget
        return None
    content = text[open_index + len(_ANSWER_OPEN) : close].strip()
    boxed = _last_boxed(content)
    if boxed is not None:
        return boxed
    if len(content) > MAX_ANSWER_CHARS:
        raise _OverBudget
    phrase = _after_phrase(content, content.lower(), "answer is", None)
    if phrase is not None:
        return phrase
    span = _MATH_SPAN_RE.fullmatch(content)
    if span is not None:
        content = next(group for group in span.groups() if group is not None)
    return content.strip().rstrip(".").strip()


def _extract(text: str, last_number_fallback: bool) -> Extraction | None:
    tagged = _answer_tag(text)
    if tagged is not None:
        return Extraction(tagged, "answer_tag") if tagged else None
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
            if len(last.group(0)) > MAX_ANSWER_CHARS:
                raise _OverBudget
            return Extraction(last.group(0).rstrip(","), "last_number")
    return None


def extract_with_budget(
    text: str, *, last_number_fallback: bool = False
) -> tuple[Extraction | None, bool]:
    """(`extract(text)`, over_budget): over_budget is True when the response marks an answer
    that is longer than MAX_ANSWER_CHARS, which is then not read (and scored as a timeout)."""
    if not isinstance(text, str):
        raise TypeError(f"a response must be a str, got {type(text).__name__}")
    try:
        return _extract(text, last_number_fallback), False
    except _OverBudget:
        return None, True


def extract(text: str, *, last_number_fallback: bool = False) -> Extraction | None:
    """The final answer of a response and its source, or None when it has none.

    Args:
      text: a model response.
      last_number_fallback: also accept the last number anywhere in the text. Off for rewards: it
        pays a policy for any number it happens to end on.
    """
    return extract_with_budget(text, last_number_fallback=last_number_fallback)[0]


def extract_answer(text: str, *, last_number_fallback: bool = False) -> str | None:
    """The final answer of a response (see `extract`), or None."""
    extraction = extract(text, last_number_fallback=last_number_fallback)
    return None if extraction is None else extraction.answer
