"""Is a predicted final answer equivalent to the gold answer?

Two stages. `fast_equivalence` settles most real answers with string keys and exact `Fraction`
arithmetic in microseconds and bounded time; only what it cannot decide goes to
`symbolic_equivalence`: math-verify parses both (LaTeX -> sympy through its ANTLR grammar), a
numeric probe rejects clearly different values, and math-verify's `verify` decides the rest. That
stage has no time bound of its own: `VerifierPool` runs it in workers under a wall-clock timeout.

Nothing here executes model text: no `eval`, no `sympify`/`parse_expr` on strings. math-verify's
plain-expression extractor is deliberately not used because it calls sympy's `parse_expr`, which
evaluates Python; only its LaTeX extractor is.
"""

from __future__ import annotations

import cmath
import functools
import logging
import re
from fractions import Fraction

from zero_rl.rewards import rules
from zero_rl.rewards.normalize import (
    EQUATION,
    MAX_ANSWER_CHARS,
    PLAIN,
    Collection,
    Number,
    Value,
    choice_letter,
    clean_latex,
    decimal_comma,
    is_word,
    normalize_answer,
    parse_number,
    parse_value,
    relation_kind,
)

# Relative tolerance for answers written as decimals, as in the Qwen2.5-Math grader that
# SimpleRL-Zoo evaluates with (so 0.3333 matches 1/3); integers and fractions compare exactly.
DEFAULT_REL_TOL = 1e-4
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_FREE_SYMBOL_RE = re.compile(r"[A-Za-df-hj-z]|[ei]{2,}")


def _numbers_match(pred: Number, gold: Number, rel_tol: float) -> bool:
    """Plain numbers: exact, or within `rel_tol` relative where a decimal is involved.

    An integer gold is matched exactly even by a decimal ("18.00" is 18, "3987000.0" is not
    3986729): a count within 1e-4 is a wrong count. Fractions and decimal golds keep the
    tolerance, so 0.3333 matches 1/3.

    A percent sign on one side only is read two ways. Its meaning, /100, always: "15%" is 0.15,
    and 0.25 answers "25%". And as the label of a percentage the other side states bare, which
    is how MATH and OlympiadBench write "what percent" answers (gold 15 for "15%", gold "17.5%"
    for 17.5) and how every standard grader reads them: "15%" is 15. The label reading needs
    the number to be at least 1 in size. Below 1 a bare number is a proportion, and the two
    readings are 100x apart: "0.15%" does not answer 0.15 (it is 0.0015), nor 0.15 "0.15%".
    """
    if pred.infinite or gold.infinite:
        return pred.infinite == gold.infinite
    candidates = [gold.value]
    if gold.percent != pred.percent:
        # The value reading, then the label reading where the bare number is >= 1.
        candidates = [gold.value / 100 if gold.percent else gold.value * 100]
        if abs(gold.value) >= 1:
            candidates.append(gold.value)
    tolerance = Fraction(rel_tol)  # exact: a float product overflows for 1e400
    for value in candidates:
        if pred.value == value:
            return True
        if value.denominator == 1 and not gold.approximate:
            continue  # an integer gold: exact only
        if pred.approximate or gold.approximate:
            scale = max(abs(pred.value), abs(value))
            if abs(pred.value - value) <= tolerance * scale:
                return True
    return False


def _all(verdicts) -> bool | None:
    """Three-valued AND: False if any is False, True if all are True, else None (undecided)."""
    undecided = False
    for verdict in verdicts:
        if verdict is False:
            return False
        undecided |= verdict is None
    return None if undecided else True


def _values_match(pred: Value, gold: Value, rel_tol: float) -> bool | None:
    """True/False where numbers and structure decide; None where a symbolic part needs sympy."""
    if isinstance(pred, str) or isinstance(gold, str):
        return True if pred == gold else None
    if isinstance(pred, Number) and isinstance(gold, Number):
        return _numbers_match(pred, gold, rel_tol)
    if isinstance(gold, Number) and not pred.ordered and pred.opening == "":
        # Several numbers for one: a hedge such as "3, 5" for 3 is wrong; the same value twice
        # ("15\frac{39}{40}, \frac{639}{40}", as a MATH solution boxes it) is that value.
        return _all(_values_match(p, gold, rel_tol) is True for p in pred.elements)
    if isinstance(pred, Number) or isinstance(gold, Number):
        return False  # a number against a tuple, interval or set
    if pred.ordered != gold.ordered or (pred.opening == "\\cup") != (gold.opening == "\\cup"):
        return None  # a tuple written for a list of answers, or one interval for a union
    if gold.ordered:
        if (pred.opening, pred.closing, len(pred.elements)) != (
            gold.opening,
            gold.closing,
            len(gold.elements),
        ):
            return False  # (1, 2) is neither [1, 2] nor (1, 2, 3)
        return _all(_values_match(p, g, rel_tol) for p, g in zip(pred.elements, gold.elements))
    # Sets: every element on each side equals one on the other. Symbolic elements, or unions
    # (whose overlapping parts can be split differently), decide only when they match.
    covered = _all(_any(_values_match(p, g, rel_tol) for p in pred.elements) for g in gold.elements)
    covering = _all(
        _any(_values_match(p, g, rel_tol) for g in gold.elements) for p in pred.elements
    )
    verdict = _all((covered, covering))
    symbolic = gold.opening == "\\cup" or not all(map(_is_numeric, gold.elements + pred.elements))
    return None if verdict is False and symbolic else verdict


def _any(verdicts) -> bool | None:
    """Three-valued OR."""
    undecided = False
    for verdict in verdicts:
        if verdict is True:
            return True
        undecided |= verdict is None
    return None if undecided else False


def _is_numeric(value: Value) -> bool:
    if isinstance(value, Collection):
        return all(map(_is_numeric, value.elements))
    return isinstance(value, Number)


def _has_free_symbol(key: str) -> bool:
    """Whether a key holds a letter outside any LaTeX command other than `e` and `i` (which
    can make numbers: `e^{i\\pi}`): a word ("5isnotright"), a variable ("2x+1"), a unit
    left in ("5m"). Such a value is never equal to a plain number, as sympy would find."""
    if "\\mathbb" in key:
        return False  # `\mathbb{R}` is a set sympy knows, not a symbol
    return _FREE_SYMBOL_RE.search(_COMMAND_RE.sub(" ", key)) is not None


def _hedged_relation(pred_clean: str, gold_clean: str) -> bool:
    """True when `pred` is an equation that cannot answer a gold that is not one.

    math-verify keeps only the last right-hand side of an equation, so `3 = 5`, `1 + 1 = 3` and
    `x = 5 = 6` would answer 5, 3 and 6. An equation answers a plain gold only as an assignment
    to a single variable (`x = 3` for 3); against a gold that is itself an equation, both are
    compared whole.
    """
    return relation_kind(pred_clean) == EQUATION and relation_kind(gold_clean) == PLAIN


def fast_equivalence(pred: str, gold: str, *, rel_tol: float = DEFAULT_REL_TOL) -> bool | None:
    """True/False when cheap checks decide, None when a symbolic check is needed.

    Decides: equal normalised strings; plain numbers (exact, or within `rel_tol` relative when a
    decimal is involved, see `_numbers_match`; percentages); tuples, intervals, unions and sets
    by their structure and numeric elements (sets and bare lists order-insensitive);
    multiple-choice letters; plain words (case-insensitive); and rejects equations that are not
    assignments against plain golds, digits separated by spaces, and words against a number.
    Runs in time linear in the input; a prediction longer than `MAX_ANSWER_CHARS` is False.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        raise TypeError(f"answers must be str, got {type(pred).__name__} and {type(gold).__name__}")
    if len(pred) > MAX_ANSWER_CHARS:
        return False
    gold_choice = choice_letter(gold)
    if gold_choice is not None:
        return choice_letter(pred) == gold_choice
    if _hedged_relation(clean_latex(pred), clean_latex(gold)):
        return False
    pred_key, pred_percent = normalize_answer(pred)
    gold_key, gold_percent = normalize_answer(gold)
    if not pred_key:
        return False
    if pred_key == gold_key and pred_percent == gold_percent:
        return True
    if is_word(gold_key) and is_word(pred_key):
        return pred_key.casefold() == gold_key.casefold()
    gold_value = parse_value(gold_key, gold_percent)
    pred_value = parse_value(pred_key, pred_percent)
    # "3,75" against one number is 3.75 with a decimal comma, not the list (3, 75).
    if isinstance(gold_value, Number):
        pred_value = decimal_comma(pred) or pred_value
    if isinstance(pred_value, Number):
        gold_value = decimal_comma(gold) or gold_value
    if isinstance(pred_value, str) and " " in pred_value:
        return False  # "1 2", "3 \quad 6": two numbers side by side are not one value
    for number, other in ((gold_value, pred_value), (pred_value, gold_value)):
        if _is_numeric(number) and isinstance(other, str) and _has_free_symbol(other):
            return False  # "2x + 1" for 18, 50 or [93, 6] for "(x+8)(x+25)", 72 for "Evelyn"
    if is_word(gold_key) and not is_word(pred_key):
        return False  # a word ("Evelyn", "even") is only ever equal to the same word
    return _values_match(pred_value, gold_value, rel_tol)


@functools.lru_cache(maxsize=4096)
def _parse_latex(answer: str) -> tuple:
    """math-verify's parse of one answer after `clean_latex` (a sympy object and its normalised
    string), cached because a batch scores many samples against the same few gold answers."""
    import math_verify

    # It warns that its own timeout is disabled; ours is enforced by the pool.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Wrapped in \boxed so that math-verify reads the whole answer as one LaTeX expression.
    return tuple(
        math_verify.parse(
            "\\boxed{" + answer + "}",
            extraction_config=[_latex_config()],
            parsing_timeout=None,  # its signal-based timeout breaks off the main thread
        )
    )


@functools.cache
def _latex_config():
    """math-verify's LaTeX extraction without its unit stripping: that drops any trailing
    `\\text{...}` and single letters ("3t", "5 m", `2\\mathrm{i}` would all read as numbers).
    Units are removed by `clean_latex` instead, from a fixed list."""
    import math_verify

    return math_verify.LatexExtractionConfig(
        normalization_config=math_verify.LatexNormalizationConfig(
            basic_latex=True,
            units=False,
            malformed_operators=True,
            nits=True,
            boxed="all",
            equations=False,
        )
    )


# Generic positive points at which to compare expressions in up to eight free symbols.
_PROBE_POINTS = (
    (0.5377, 1.8339, 2.2588, 0.8622, 0.3188, 1.3077, 0.4336, 0.3426),
    (1.5784, 2.7694, 1.3499, 3.0349, 0.7254, 0.0631, 0.7147, 0.2050),
    (0.1241, 1.4897, 1.4090, 1.4172, 0.6715, 1.2075, 0.7172, 1.6302),
)
# math-verify never accepts two values further apart than this (it rounds floats to 6 places).
_PROBE_TOLERANCE = 1e-6


def _clearly_different(gold, pred) -> bool:
    """True when two scalar sympy expressions evaluate to clearly different numbers.

    math-verify's last resort is `simplify(gold - pred)`, which takes 0.1-0.8 s for wrong answers
    such as 11*sqrt(34) against 34*sqrt(11); evaluating both at a few points settles those in
    milliseconds. Only "different" is concluded here, never "equal", and only for plain
    expressions: not symbols (math-verify matches words letter by letter), not percentages, not
    relations, sets or matrices, which it compares in other ways.
    """
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return False
    if gold.is_Symbol or pred.is_Symbol or gold.has(sympy.UnevaluatedExpr, sympy.Function):
        return False
    if pred.has(sympy.UnevaluatedExpr, sympy.Function):
        return False
    symbols = sorted(gold.free_symbols | pred.free_symbols, key=str)
    if len(symbols) > len(_PROBE_POINTS[0]):
        return False
    for point in _PROBE_POINTS if symbols else _PROBE_POINTS[:1]:
        values = dict(zip(symbols, point))
        try:
            a, b = complex(gold.evalf(30, subs=values)), complex(pred.evalf(30, subs=values))
        except (TypeError, ValueError, ArithmeticError):
            return False  # not a number at this point: leave it to math-verify
        if not (cmath.isfinite(a) and cmath.isfinite(b)):
            return False
        if abs(a - b) > _PROBE_TOLERANCE * max(1.0, abs(a), abs(b)):
            return True
    return False


def decimal_answer(pred: str) -> Number | None:
    """A prediction written as a plain decimal ("4.2426"), else None: the answers that
    `symbolic_equivalence` compares numerically with an exact symbolic gold (`3\\sqrt{2}`)."""
    if not rules.enabled("decimal_of_exact"):
        return None
    key, percent = normalize_answer(pred)
    number = parse_number(key, percent)
    return number if number is not None and number.approximate and not percent else None


def _decimal_matches(decimal: Number, gold, rel_tol: float) -> bool:
    """Whether a decimal is within `rel_tol` of a real, non-integer number sympy holds exactly
    (`10\\pi`, `3\\sqrt{2}`): 4.2426 answers 3*sqrt(2) as 0.3333 answers 1/3. An integer gold
    stays exact, as in `fast_equivalence`."""
    import sympy

    if not isinstance(gold, sympy.Expr) or gold.free_symbols or not gold.is_number:
        return False
    try:
        if gold.is_Integer:
            return False
        value = complex(gold.evalf(30))
    except (TypeError, ValueError, ArithmeticError):
        return False
    if value.imag or not cmath.isfinite(value):
        return False
    pred = float(decimal.value)
    return abs(pred - value.real) <= rel_tol * max(abs(pred), abs(value.real))


def symbolic_equivalence(pred: str, gold: str, *, rel_tol: float = DEFAULT_REL_TOL) -> bool:
    """math-verify's verdict (sympy: symbolic, numeric, sets, intervals, matrices, equations)
    on both answers after `clean_latex`, with the same equation rule as `fast_equivalence`; a
    decimal answer within `rel_tol` of an exact numeric gold (`4.2426` for `3\\sqrt{2}`) is
    equal.

    Has no time limit: some inputs (`9^{9^{9^{9}}}`) never finish, so call it through
    `VerifierPool` unless the input is trusted.
    """
    import math_verify

    if len(pred) > MAX_ANSWER_CHARS:
        return False
    pred_clean, gold_clean = clean_latex(pred), clean_latex(gold)
    if not pred_clean or _hedged_relation(pred_clean, gold_clean):
        return False
    gold_parsed, pred_parsed = _parse_latex(gold_clean), _parse_latex(pred_clean)
    if not gold_parsed or not pred_parsed:
        return False
    # A decimal answer for an exact gold (4.2426 for 3\sqrt{2}). The other way round, an exact
    # answer for a rounded gold (\pi for 3.1416), is left to math-verify, as it always was.
    decimal = decimal_answer(pred)
    if decimal is not None and _decimal_matches(decimal, gold_parsed[0], rel_tol):
        return True
    if _clearly_different(gold_parsed[0], pred_parsed[0]):
        return False
    return bool(math_verify.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def is_equivalent(pred: str, gold: str, *, rel_tol: float = DEFAULT_REL_TOL) -> bool:
    """Whether `pred` (an extracted final answer) is equivalent to `gold`, in-process.

    `gold` is a normalised gold answer (`normalize_gold`; `score` applies it to raw dataset
    answers). Cheap exact and numeric checks first, then math-verify/sympy. No timeout:
    untrusted input should go through `VerifierPool.check`, which wraps this function.
    """
    verdict = fast_equivalence(pred, gold, rel_tol=rel_tol)
    if verdict is not None:
        return verdict
    return symbolic_equivalence(pred, gold, rel_tol=rel_tol)
