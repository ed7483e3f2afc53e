"""Readers of unmarked final answers, for the `lenient` extraction policy.

Benchmark outputs and other engines' generations state answers in many shapes: a bare
expression that is the whole response, "Answer: ...", "Final Answer: The smallest $k$ is 12.",
or only a last number. These readers find them. Each is one bounded scan of the text (regexes
without nested quantifiers; math spans and numbers only in the last `_TAIL_CHARS`
characters), so model text cannot make them slow.
"""

from __future__ import annotations

import dataclasses
import re

from zero_rl.rewards.markers import (
    ANOTHER_VALUE_RE,
    BOX_SEPARATOR_RE,
    MATH_SPAN_RE,
    OR_RE,
    TAG_RE,
    OverBudget,
)
from zero_rl.rewards.normalize import ASSIGNMENT, MAX_ANSWER_CHARS, clean_latex, relation_kind

# Answers sit at the end of a response: only its tail is scanned for math and numbers.
_TAIL_CHARS = 8 * MAX_ANSWER_CHARS
# "Answer:", "Final Answer:", "**Final Answer**", "the answer is", "the final answer would be",
# "the correct option is".
_CUE_RE = re.compile(
    r"(?<![A-Za-z])(?:final\s+answer|answer|(?:correct|right)\s+(?:option|choice))(?:\*\*)?\s*"
    r"(?::|\n|is\b|would\s+be\b|should\s+be\b)(?:\*\*)?",
    re.IGNORECASE,
)
_MAX_CUE_LINES = 3
_CUE_WORDS = ("answer", "option", "choice")
# Occurrences of a cue word tried from the end ("answers" in prose is not a cue).
_MAX_CUE_TRIES = 64
# A number in prose: digits (with thousands commas or 3-digit groups split by single spaces),
# a decimal part, a leading-dot decimal (".5"), a slash fraction. Not part of a word or an
# identifier ("x2", "H2O", "5th", "step3") nor of an expression ("x-3", "2^5", "a_1").
_NUMBER_RE = re.compile(
    r"(?<![\w.\\^_\-+/=])(?:(?<=\*\*)|(?<!\*))(-?)"
    r"(\d{1,3}(?: \d{3})+(?![\d,.])|\d[\d,]*(?:\.\d+)?|\.\d+)"
    r"(/\d+)?(?![\w\\^_])"
)
# A word of prose: two or more letters not part of a LaTeX command.
_PROSE_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
# A command with up to two arguments, as in `\text{cm}` or `\begin{array}{cc}`.
_MACRO_GROUP_RE = re.compile(r"\\[A-Za-z]+\s*(?:\{[^{}]*\}\s*){0,2}")
# "1 000 000": three-digit groups split by single spaces are one number.
_DIGIT_GROUPS_RE = re.compile(r"^-?\d{1,3}(?: \d{3})+(?:\.\d+)?$")
# The last side of an equation chain in a math span: "6 \times 7 = 42" states 42.
_LAST_SIDE_RE = re.compile(r"(?<![<>!\\])=\s*([^=]{1,200})$")
_MAX_BARE_CHARS = 300
# Math delimiters; `$$` before `$` so that display math pairs with itself.
_DELIMITER_RE = re.compile(r"(?<!\\)(?:\$\$|\$|\\\(|\\\)|\\\[|\\\])")
# Opening delimiter -> its closing one.
_CLOSERS = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
_MAX_JOINED_SPANS = 8


def _span_content(match: re.Match) -> str:
    return next(group for group in match.groups() if group is not None).strip()


def is_formula(text: str) -> bool:
    """Whether `text` reads as one expression rather than prose: no word of two or more
    letters outside LaTeX commands and their first argument, or a single word ("Evelyn")."""
    stripped = text.strip()
    if re.fullmatch(r"[A-Za-z]{2,30}", stripped):
        return True
    return _PROSE_WORD_RE.search(_MACRO_GROUP_RE.sub(" ", stripped)) is None


def _check_length(answer: str) -> str:
    if len(answer) > MAX_ANSWER_CHARS:
        raise OverBudget
    return answer


@dataclasses.dataclass(frozen=True)
class _Span:
    start: int
    end: int
    content: str


def _math_spans(text: str, offset: int) -> list[_Span]:
    """The math spans of `text[offset:]`, delimiters paired left to right in one pass (no
    regex backtracking over `$`-heavy text). A `$` count before `offset` that is odd means the
    window starts inside an inline span, whose closing `$` is skipped."""
    position = offset
    if (text.count("$", 0, offset) - text.count("\\$", 0, offset)) % 2:
        first = _DELIMITER_RE.search(text, offset)
        position = first.end() if first is not None else len(text)
    spans, opener = [], None
    for delimiter in _DELIMITER_RE.finditer(text, position):
        token = delimiter.group(0)
        if opener is None:
            if token in _CLOSERS:
                opener = delimiter
            continue
        if token != _CLOSERS[opener.group(0)]:
            if token in _CLOSERS and opener.group(0) not in "$$":
                opener = delimiter  # "\( ... \[": the later opener starts over
            continue
        content = text[opener.end() : delimiter.start()].strip()
        if content and len(content) <= MAX_ANSWER_CHARS:
            spans.append(_Span(opener.start(), delimiter.end(), content))
        opener = None
    return spans


def last_expression(text: str) -> str | None:
    """The last math span (`$...$`, `\\(...\\)`, `\\[...\\]`) or number in prose of `text`,
    whichever ends later; spans joined to it by separators ("$3$ and $5$") are one answer.
    None when there is neither, or when it offers alternatives ("$5$ or $6$", "5 or 6")."""
    offset = max(0, len(text) - _TAIL_CHARS)
    spans = _math_spans(text, offset)[-_MAX_JOINED_SPANS:]
    after = spans[-1].end if spans else offset
    number = None
    for number in _NUMBER_RE.finditer(text, after):  # noqa: B007 - only the last is kept
        pass
    if number is not None:
        previous = text[max(after, number.start() - 16) : number.start()]
        if OR_RE.search(previous) and _NUMBER_RE.search(previous):
            return None  # "5 or 6"
        sign, digits, fraction = number.groups()
        return _check_length(sign + digits.replace(" ", "").rstrip(",") + (fraction or ""))
    if not spans:
        return None
    parts = [_stated_value(spans[-1].content)]
    for earlier, later in zip(spans[-2::-1], spans[:0:-1]):
        between = text[earlier.end : later.start]
        if len(between) > 64 or not BOX_SEPARATOR_RE.match(between):
            break
        if OR_RE.search(between):
            return None
        if len(parts) == 1:
            parts = [spans[-1].content]  # a list of spans is kept whole: "$x = 2$ and $x = 3$"
        parts.append(earlier.content)
    answer = ", ".join(reversed(parts))
    return _check_length(answer)


def _stated_value(span: str) -> str:
    """A span that computes its value ends in it: `6 \\times 7 = 42` -> `42`. An assignment
    (`x = 5`) and anything without `=` are kept whole."""
    side = _LAST_SIDE_RE.search(span)
    if side is None or relation_kind(clean_latex(span)) == ASSIGNMENT:
        return span
    value = side.group(1).strip()
    return value if value and not _PROSE_WORD_RE.search(value) else span


def read_statement(statement: str) -> str | None:
    """The answer in the sentence after a cue: the whole of it when it is one expression
    ("$\\tfrac{2}{5}$", "y = -3", "(B)"), else its last expression ("The smallest $k$ is 12."
    reads 12). None for a hedge ("$5$ or $6$") or a statement with no answer in it."""
    statement = statement.strip().lstrip(":").strip().replace("**", "")
    tag = TAG_RE.search(statement)
    statement = statement if tag is None else statement[: tag.start()]
    span = MATH_SPAN_RE.match(statement)
    another = span is not None and ANOTHER_VALUE_RE.match(statement, span.end())
    if another and OR_RE.search(statement[span.end() : span.end() + 32]):
        return None  # "$5$ or $6$"
    sentence_end = re.search(r"\.(?:\s|$)", statement)
    sentence = statement if sentence_end is None else statement[: sentence_end.start()]
    sentence = sentence.strip().rstrip(".").strip()
    if not sentence:
        return None
    whole = MATH_SPAN_RE.fullmatch(sentence)
    if whole is not None:
        return _check_length(_span_content(whole)) or None
    if is_formula(sentence):
        return None if OR_RE.search(sentence) else _check_length(sentence)
    return last_expression(sentence)


def _last_cue_match(text: str, lowered: str) -> re.Match | None:
    """The last `_CUE_RE` match, found from the last occurrences of its key words backwards
    (`str.rfind`, then the regex in a small window), not by a scan of the whole text."""
    best = None
    for word in _CUE_WORDS:
        end = len(lowered)
        for _ in range(_MAX_CUE_TRIES):
            index = lowered.rfind(word, 0, end)
            if index < 0 or (best is not None and index < best.start()):
                break
            window_end = min(len(text), index + len(word) + 32)
            for match in _CUE_RE.finditer(text, max(0, index - 16), window_end):
                if match.start() <= index < match.end():
                    best = match if best is None or match.start() > best.start() else best
            if best is not None and best.start() >= index - 16:
                break
            end = index
    return best


def last_cue(text: str, start: int = 0) -> tuple[str, int] | None:
    """(answer, start of its cue) for the last answer cue of `text[start:]` ("Answer:", "Final
    Answer:", "the answer is", ...) whose statement holds an answer (`read_statement`); the
    statement is the rest of the cue's line, or the next non-empty line when that is empty."""
    tail = text[start:]
    cue = _last_cue_match(tail, tail.lower())
    if cue is None:
        return None
    lines = tail[cue.end() : cue.end() + 2 * MAX_ANSWER_CHARS].split("\n", _MAX_CUE_LINES)
    statement = next((line for line in lines[:_MAX_CUE_LINES] if line.strip()), "")
    answer = read_statement(statement)
    return None if answer is None else (answer, start + cue.start())


def bare_answer(text: str) -> str | None:
    """The whole response when it is one short expression (`$\\tfrac{2}{5}$`, `7/9`,
    `y = -3`, `\\text{(B)}`), else None."""
    stripped = text.strip()
    if not stripped or len(stripped) > _MAX_BARE_CHARS or stripped.count("\n") > 2:
        return None
    whole = MATH_SPAN_RE.fullmatch(stripped)
    if whole is not None:
        content = _span_content(whole).rstrip(".").strip()
        return content or None
    stripped = stripped.rstrip(".").strip()
    if _DIGIT_GROUPS_RE.match(stripped):
        return stripped.replace(" ", "")
    if not is_formula(stripped) or OR_RE.search(stripped):
        return None
    return stripped
