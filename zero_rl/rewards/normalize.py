"""Cheap, linear-time normalisation of final answers, and exact values for plain numbers.

This is the fast path of the verifier: it settles most real answers (integers, decimals, fractions,
percentages, numeric tuples and sets, choice letters, words) with string and `Fraction` arithmetic,
so sympy is only needed where an answer is genuinely symbolic. Every regex here is free of nested
quantifiers and runs on strings capped at `MAX_ANSWER_CHARS`, so model text cannot make it slow.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from fractions import Fraction

from zero_rl.rewards import rules
from zero_rl.rewards.units import strip_unit

# Real gold answers are at most a few hundred characters (the longest in MATH500 and OlympiadBench
# is ~200); anything longer from a policy is degenerate text, scored incorrect without parsing.
MAX_ANSWER_CHARS = 1000
# Integers longer than this are not compared numerically (and never reach `int()` on huge strings).
_MAX_DIGITS = 200
_MAX_EXPONENT = 400
_MAX_ELEMENTS = 64

# Thin spaces, as in MATH's thousands separators ("10,\!080", "1\,000"), join what they separate;
# real spaces do not: `3 \quad 6` is not 36.
# (Not the second backslash of `\\`, a matrix row break.)
_JOINING_RE = re.compile(r"(?<!\\)\\[!,]|\\displaystyle(?![A-Za-z])")
_SPACING_RE = re.compile(r"\\q?quad(?![A-Za-z])|(?<!\\)\\[;: ]|~")
_TEXT_MACROS = r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|operatorname)"
_TEXT_RE = re.compile(_TEXT_MACROS + r"\s*\{([^{}]*)\}")
# "x = 5 or x = 6", "3 \text{ and } 5": several answers, written as a list.
_AND_OR_RE = re.compile(r"\s*,?\s*(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])\s*")
_PERCENT_WORD_RE = re.compile(r"\s*(?<![A-Za-z\\])percent(?![A-Za-z])|(?<!\\)%")
_PERCENT_WORDS_RE = re.compile(
    r"\s*(?<![A-Za-z\\])(?:percent|percentage|pct)(?![A-Za-z])\.?|(?<!\\)%"
)
# A stray backslash that ends an answer (`\frac{1}{2}\`), not the `\\` of a row break.
_TRAILING_BACKSLASH_RE = re.compile(r"(?<!\\)\\\s*$")
# `A \approx 0.707`: an exact value followed by its decimal approximation.
_APPROX_TAIL_RE = re.compile(
    r"\s*(?:\\approx(?![A-Za-z])|≈)\s*[-+]?\d*\.?\d+(?:\\ldots|\.\.\.)?\s*$"
)
# A number followed by one group of words in a text macro: `7 \text{ people can sit}`.
_NUMBER_TEXT_TAIL_RE = re.compile(
    r"^([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+|\\frac\{\d+\}\{\d+\}))\s*"
    r"\\(?:text|textnormal|textrm|mathrm|mbox)\s*\{([A-Za-z .,;:'!-]*)\}\s*\.?$"
)
# Words after a number that hedge it ("or more", "is not right") or change its value
# ("hundred", "squared", "times"): with one of them the tail is part of the answer.
_VALUE_WORD_LIST = """
    or not no nor neither more less than least most fewer greater smaller larger over under
    above below plus minus times and to between from except if unless approximately about
    roughly nearly almost hundred hundreds thousand thousands million millions billion
    billions trillion dozen dozens half halves quarter quarters third thirds tenth tenths
    squared cubed square cubic power powers percent percentage pct per pi factorial mod
    modulo root roots inverse negative positive
"""
_VALUE_WORDS = frozenset(_VALUE_WORD_LIST.split())
_DEGREE_RE = re.compile(
    r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degrees?(?![A-Za-z]))"
    r"(?:\s*(?:\\mathrm\s*\{\s*[CF]\s*\}|[CF])\s*$)?"  # "928^\circ C": degrees Celsius
)
_EMPTY_SET_RE = re.compile(r"\\varnothing(?![A-Za-z])|^\s*\\\{\s*\\\}\s*$")
_INFINITY_WORD_RE = re.compile(r"(?<![A-Za-z\\])infinity(?![A-Za-z])", re.IGNORECASE)
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\.?")
_GREEK = (
    "alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|"
    "xi|rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Sigma|Phi|"
    "Psi|Omega"
)
# A single variable: `x`, `a_1`, `x_{12}`, `\theta`, `y'` (not `\pi`: a number, nor `f(x)`).
_VARIABLE = r"(?:[A-Za-z]|\\(?:" + _GREEK + r")(?![A-Za-z]))(?:_\{?[A-Za-z0-9]{1,8}\}?)?'?"
_VARIABLE_RE = re.compile(r"^\s*" + _VARIABLE + r"\s*$")
# Relations whose sides are values: "=" (not "<=", ">=", "!="), and `\approx`.
_RELATION_RE = re.compile(r"(?<![<>!\\])=|\\approx(?![A-Za-z])")
_ASSIGNMENT_RE = re.compile(
    r"^(" + _VARIABLE + r")\s*(?:=|\\approx(?![A-Za-z])|\\in(?![A-Za-z]))\s*"
)
_FRAC_SHORT_RE = (
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\w)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\w)\s*\{"), r"\\frac{\1}{"),
    (re.compile(r"\\sqrt\s*(\w)"), r"\\sqrt{\1}"),
    (re.compile(r"([_^])\{(\w)\}"), r"\1\2"),
)
PLAIN, ASSIGNMENT, EQUATION = 0, 1, 2
# Whitespace between two digits is kept (as one space): "1 2" is not 12.
_SPACED_DIGITS_RE = re.compile(r"(?<=\d)\s+(?=\d)")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL_COMMA_RE = re.compile(r"^([-+]?\d+),(\d+)$")

_INT_RE = re.compile(r"^([-+]?)(\d+)$")
_DECIMAL_RE = re.compile(r"^([-+]?)(\d*)\.(\d+)$")
_SCI_RE = re.compile(r"^([-+]?\d*\.?\d+)(?:[eE]|\\times10\^|\\cdot10\^|\*10\^)\{?([-+]?\d+)\}?$")
_FRAC_RE = re.compile(r"^([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}$")
_SLASH_RE = re.compile(r"^([-+]?\d+)/(\d+)$")
_MIXED_RE = re.compile(r"^(\d+)\\frac\{(\d+)\}\{(\d+)\}$|^(\d+) (\d+)/(\d+)$")
_CHOICE_RE = re.compile(r"^\(?([A-E])\)?$")
# A choice letter followed by the option's text: "D. x = 17", "(B): 12".
_CHOICE_WITH_TEXT_RE = re.compile(r"^\(?([A-E])(?:\)[.:]?|[.:])\s*\S")
_WORD_RE = re.compile(r"^[A-Za-z]{3,}$")
_INFINITIES = {"\\infty": 1, "+\\infty": 1, "-\\infty": -1, "∞": 1, "-∞": -1}


@dataclasses.dataclass(frozen=True)
class Number:
    """An exactly parsed number; `approximate` when written as a decimal (so tolerance applies).

    `infinite` is +1/-1 for `\\infty`/`-\\infty` (then `value` is unused).
    """

    value: Fraction
    approximate: bool = False
    percent: bool = False
    infinite: int = 0


@dataclasses.dataclass(frozen=True)
class Collection:
    """A tuple, interval, set, union or bare list, written with brackets `opening`/`closing`.

    `ordered` is False for sets (`\\{...\\}`), unions of intervals (`opening == "\\cup"`) and bare
    comma lists (several answers to one question, as OlympiadBench writes them).
    """

    elements: tuple[Value, ...]
    ordered: bool
    opening: str = ""
    closing: str = ""


# A plain number, a collection, or (as its normalised key) a symbolic part only sympy can compare.
Value = Number | Collection | str


@functools.lru_cache(maxsize=8192)
def clean_latex(answer: str) -> str:
    """An answer with what does not change its value removed, still LaTeX (spaces kept).

    Removes math delimiters, `\\$`, `\\left`/`\\right`, thin spaces and `\\displaystyle`;
    turns `\\dfrac`/`\\tfrac` into `\\frac`, spacing macros into spaces, "percent" and `%` into
    `\\%` ("pct" and "percentage" too); drops degree signs, a stray trailing backslash, a
    decimal approximation after an exact value (`A \\approx 0.707`), prose after a number in a
    text macro (`_drop_text_tail`) and a trailing unit (`zero_rl.rewards.units`); unwraps
    `\\text{}` and friends; writes "a and b" / "a or b" as the list "a, b". This is the form the
    symbolic stage parses too, so both stages read an answer the same way. Each optional step
    is a named rule (`zero_rl.rewards.rules`).
    """
    s = answer.strip().replace("\n", " ").replace("\\$", "").replace("$", "")
    if rules.enabled("trailing_backslash"):
        s = _TRAILING_BACKSLASH_RE.sub("", s)
    for opening, closing in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(opening) and s.endswith(closing):
            s = s[len(opening) : -len(closing)]
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _JOINING_RE.sub("", s)
    s = _SPACING_RE.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = _EMPTY_SET_RE.sub("\\\\emptyset", s)
    s = _INFINITY_WORD_RE.sub("\\\\infty", s)
    s = _DEGREE_RE.sub("", s)
    percent_re = _PERCENT_WORDS_RE if rules.enabled("percent_words") else _PERCENT_WORD_RE
    s = percent_re.sub("\\\\%", s.replace("\\text{percent}", "%"))
    s = s.strip().rstrip(".").strip()
    if rules.enabled("approx_after_exact"):
        s = _drop_approximation(s)
    if rules.enabled("text_tail"):
        s = _drop_text_tail(s)
    unit = strip_unit if rules.enabled("units") else str
    s = unit(s)
    without_text = _TEXT_RE.sub(r"\1", s).strip()
    s = unit(without_text) if without_text else s
    if rules.enabled("and_or_list"):
        s = _AND_OR_RE.sub(", ", s).strip(" ,")
    return " ".join(s.split())


def _drop_approximation(s: str) -> str:
    """`\\frac{\\sqrt2}{2} \\approx 0.707` -> `\\frac{\\sqrt2}{2}`; `x \\approx 0.7` (an
    assignment) and a bare `\\approx 0.7` are kept."""
    match = _APPROX_TAIL_RE.search(s)
    if match is None:
        return s
    exact = s[: match.start()].strip()
    if not exact or _VARIABLE_RE.match(exact) or exact.endswith(("=", ",")):
        return s
    return exact


def _drop_text_tail(s: str) -> str:
    """`7 \\text{ people can sit}` -> `7`: prose or a unit in a text macro after a plain
    number, unless a word in it hedges or scales the number (`_VALUE_WORDS`) or is a single
    letter (`5 \\text{ m}`, `2\\mathrm{i}` stay)."""
    match = _NUMBER_TEXT_TAIL_RE.match(s)
    if match is None:
        return s
    words = re.findall(r"[A-Za-z']+", match.group(2))
    if not words or any(len(w) < 2 or w.lower() in _VALUE_WORDS for w in words):
        return s
    return match.group(1)


def relation_kind(cleaned: str) -> int:
    """PLAIN (no relation), ASSIGNMENT (each relation is `variable = value`, as in `x = 3` or
    `x = 1, y = 2`), or EQUATION (anything else with `=`/`\\approx`: `3 = 5`, `x = 5 = 6`,
    `y - 2x = 3`) for an answer after `clean_latex`."""
    enclosed = _enclosing_brackets(cleaned)
    body = enclosed[1] if enclosed is not None else cleaned
    kind = PLAIN
    for part in _split_top_level(body) or [body]:
        sides = _RELATION_RE.split(part)
        if len(sides) == 1:
            continue
        if len(sides) == 2 and _VARIABLE_RE.match(sides[0]) and sides[1].strip():
            kind = ASSIGNMENT
        else:
            return EQUATION
    return kind


def _strip_assignments(s: str) -> str:
    """The values of `x = 3` and of `x = 5, x = 6` (one variable, several values); a tuple of
    different variables ("x=1, y=2") keeps its names."""
    assignment = _ASSIGNMENT_RE.match(s)
    if assignment and not _RELATION_RE.search(s, assignment.end()):
        return s[assignment.end() :]
    parts = _split_top_level(s)
    if parts is None or len(parts) < 2:
        return s
    names, values = set(), []
    for part in parts:
        match = _ASSIGNMENT_RE.match(part.strip())
        if match is None or _RELATION_RE.search(part.strip(), match.end()):
            return s
        names.add(match.group(1).replace(" ", ""))
        values.append(part.strip()[match.end() :])
    return ", ".join(values) if len(names) == 1 else s


@functools.lru_cache(maxsize=8192)
def normalize_answer(answer: str) -> tuple[str, bool]:
    """Canonical string key of a final answer, and whether it carried a percent sign.

    `clean_latex`, then also `x =` in front, short forms (`\\frac12`, `\\sqrt2`), thousands
    separators and whitespace are removed, so that equal answers written in the usual different
    ways compare equal as strings. Whitespace between two digits is kept as one space.
    """
    s = clean_latex(answer)
    percent = "\\%" in s
    s = s.replace("\\%", "").strip().rstrip(".").strip()
    s = _strip_assignments(s)
    for pattern, replacement in _FRAC_SHORT_RE:
        s = pattern.sub(replacement, s)
    s = "".join(_SPACED_DIGITS_RE.sub("\0", s).split()).replace("\0", " ").rstrip(".")
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    return s, percent


rules.register_cache(clean_latex)
rules.register_cache(normalize_answer)


def decimal_comma(answer: str) -> Number | None:
    """`3,75` read with a decimal comma (3.75), for comparing against a single number; None
    for anything else: `3,750` (which `normalize_answer` reads as 3750) and `3, 75`, where a
    comma and a space separate two numbers."""
    if not rules.enabled("decimal_comma"):
        return None
    cleaned = clean_latex(answer)
    percent = "\\%" in cleaned
    match = _DECIMAL_COMMA_RE.match(cleaned.replace("\\%", "").strip())
    if match is None or _THOUSANDS_RE.match(match.group(0)):
        return None
    return parse_number(f"{match.group(1)}.{match.group(2)}", percent)


def parse_number(key: str, percent: bool = False) -> Number | None:
    """Exact value of a normalised key that is a plain number, else None.

    Accepts integers, decimals, scientific notation, `\\frac{a}{b}`, `a/b` and mixed numbers
    (`1\\frac{4}{5}`); anything with symbols is left to sympy.
    """
    if len(key) > _MAX_DIGITS + 20:
        return None
    if key in _INFINITIES:
        return Number(Fraction(0), infinite=_INFINITIES[key])
    if m := _INT_RE.match(key):
        return Number(Fraction(int(m.group(1) + m.group(2))), percent=percent)
    if m := _DECIMAL_RE.match(key):
        return Number(Fraction(f"{m.group(1)}{m.group(2) or '0'}.{m.group(3)}"), True, percent)
    if m := _FRAC_RE.match(key):
        numerator, denominator = int(m.group(2)), int(m.group(3))
        if denominator == 0:
            return None
        sign = -1 if m.group(1) == "-" else 1
        return Number(sign * Fraction(numerator, denominator), percent=percent)
    if m := _SLASH_RE.match(key):
        if int(m.group(2)) == 0:
            return None
        return Number(Fraction(int(m.group(1)), int(m.group(2))), percent=percent)
    if m := _MIXED_RE.match(key):  # `1\frac{4}{5}`, or "3 1/2" as GSM8K answers write it
        whole, numerator, denominator = (int(g) for g in m.groups() if g is not None)
        # Only a proper fraction reads as a mixed number; `2\frac{3}{2}` is left to sympy.
        if 0 < numerator < denominator:
            return Number(whole + Fraction(numerator, denominator), percent=percent)
        return None
    if m := _SCI_RE.match(key):
        exponent = int(m.group(2))
        if abs(exponent) > _MAX_EXPONENT:
            return None
        return Number(Fraction(m.group(1)) * Fraction(10) ** exponent, True, percent)
    return None


def _split_top_level(body: str) -> list[str] | None:
    """Split on commas outside brackets; None when the brackets do not balance."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(body):
        char = body[i]
        if char == "\\" and body.startswith(("\\{", "\\}"), i):
            depth += 1 if body[i + 1] == "{" else -1
            i += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
        if depth < 0:
            return None
        i += 1
    if depth != 0:
        return None
    parts.append(body[start:])
    return parts


def _enclosing_brackets(key: str) -> tuple[str, str, str] | None:
    """(opening, body, closing) when one bracket pair encloses the whole key."""
    if key.startswith("\\{") and key.endswith("\\}"):
        opening, closing = "\\{", "\\}"
    elif key[:1] in "([" and key[-1:] in ")]" and len(key) >= 2:
        opening, closing = key[0], key[-1]
    else:
        return None
    body = key[len(opening) : -len(closing)]
    # "(1,2)\cup(3,4)" starts and ends with brackets that are not a pair: the body must balance.
    return (opening, body, closing) if _split_top_level(body) is not None else None


def _split_union(key: str) -> list[str] | None:
    """Parts of a union of intervals `A\\cupB\\cup...` at bracket depth 0, or None."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(key):
        char = key[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and key.startswith("\\cup", i):
            parts.append(key[start:i])
            start = i = i + len("\\cup")
            continue
        i += 1
    parts.append(key[start:])
    return parts if len(parts) > 1 else None


def parse_value(key: str, percent: bool = False, depth: int = 0) -> Value:
    """The structure of a normalised key: a number, a (nested) collection, or the key itself
    where it is symbolic."""
    number = parse_number(key, percent)
    if number is not None or depth > 3 or not key:
        return key if number is None else number
    union = _split_union(key)
    if union is not None and len(union) <= _MAX_ELEMENTS:
        elements = tuple(parse_value(part, percent, depth + 1) for part in union)
        return Collection(elements, ordered=False, opening="\\cup")
    enclosed = _enclosing_brackets(key)
    if enclosed is not None:
        opening, body, closing = enclosed
        parts = _split_top_level(body)
        if len(parts) == 1 and opening == "(":
            return parse_value(body, percent, depth + 1)
        ordered = opening != "\\{"
    else:
        parts = _split_top_level(key)
        if parts is None or len(parts) < 2:
            return key
        opening, closing, ordered = "", "", False
    if len(parts) > _MAX_ELEMENTS:
        return key
    elements = tuple(parse_value(part, percent, depth + 1) for part in parts)
    return Collection(elements, ordered, opening, closing)


def choice_letter(answer: str) -> str | None:
    """The letter of a multiple-choice answer such as `(C)`, `\\text{(C)}`, `C` or the letter
    with its option's text (`D. x = 17`), else None."""
    key, _ = normalize_answer(answer)
    match = _CHOICE_RE.match(key) or _CHOICE_WITH_TEXT_RE.match(clean_latex(answer))
    return match.group(1) if match else None


def is_word(key: str) -> bool:
    """True for a normalised key that is a plain word ("Evelyn", "even", "ellipse")."""
    return bool(_WORD_RE.match(key))
