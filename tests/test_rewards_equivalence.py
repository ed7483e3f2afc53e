"""Answer equivalence: the cheap path against independent references, then real MATH500 answers."""

import math
import random
from fractions import Fraction

import pytest

from zero_rl.rewards import extract_answer, fast_equivalence, is_equivalent, normalize_answer

R = r"We simplify step by step and check the conditions. Therefore, the answer is $\boxed{%s}$."

# (gold answer from MATH500, model response, expected). Positives use the forms models write.
MATH500_CASES = [
    (
        r"\left( 3, \frac{\pi}{2} \right)",
        r"The point lies on the positive $y$-axis, so $\boxed{\left(3, \frac{\pi}{2}\right)}$.",
        True,
    ),
    (r"\left( 3, \frac{\pi}{2} \right)", R % r"(3, \pi/2)", True),
    (r"\left( 3, \frac{\pi}{2} \right)", R % r"(3, \pi)", False),
    (r"\left( 3, \frac{\pi}{2} \right)", R % r"(0, 3)", False),
    ("p - q", r"Hence the double sum equals $\boxed{p - q}$.", True),
    ("p - q", R % "-q + p", True),
    ("p - q", R % "q - p", False),
    (r"\frac{14}{3}", r"$f(-2)+f(-1)+f(0) = 2 + \frac{5}{3} + 1 = \boxed{\frac{14}{3}}$", True),
    (r"\frac{14}{3}", R % r"4\frac{2}{3}", True),
    (r"\frac{14}{3}", R % "4.67", False),
    (r"\text{Evelyn}", r"Evelyn has the greatest average speed: $\boxed{\text{Evelyn}}$.", True),
    (r"\text{Evelyn}", R % "Evelyn", True),
    (r"\text{Evelyn}", R % r"\text{Briana}", False),
    (r"90^\circ", R % r"90^\circ", True),
    (r"90^\circ", R % "90", True),
    (r"90^\circ", R % r"45^{\circ}", False),
    (r"3\sqrt{13}", R % r"\sqrt{117}", True),
    (r"3\sqrt{13}", R % r"3 \sqrt{13}", True),
    (r"3\sqrt{13}", R % r"13\sqrt{3}", False),
    ("6 - 5i", R % "6-5i", True),
    ("6 - 5i", R % "6+5i", False),
    ("x=5", R % "5", True),
    ("x=5", R % "x = 5", True),
    ("x=5", R % "x=-5", False),
    ("1,-2", R % "-2, 1", True),
    ("1,-2", R % "1", False),
    ("52_8", R % "52_8", True),
    ("52_8", R % "52_{8}", True),
    ("52_8", R % "42_8", False),
    (r"11\sqrt2", R % r"11\sqrt{2}", True),
    (r"11\sqrt2", R % r"\sqrt{242}", True),
    ("3, 5, 7", R % "3, 5, 7", True),
    ("3, 5, 7", R % "7, 5, 3", True),
    ("3, 5, 7", R % "3, 5", False),
    ("1.25", R % r"\frac{5}{4}", True),
    ("1.25", R % "1.2", False),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", R % "x^5-x^4+x^3-x^2+x-1", True),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", R % "x^5 + x^4 + x^3 + x^2 + x + 1", False),
    (r"-\frac{\pi}{6}", R % r"-\frac{\pi}{6}", True),
    (r"-\frac{\pi}{6}", R % r"\frac{\pi}{6}", False),
    ("0.15", R % r"\frac{3}{20}", True),
    ("0.15", R % r"15\%", True),
    ("0.15", R % "0.25", False),
    ("(6,31,-1)", R % "(6, 31, -1)", True),
    ("(6,31,-1)", R % "(6, -31, 1)", False),
    (r"\frac{3\sqrt{3}}{4}", R % r"\frac{3}{4}\sqrt{3}", True),
    (r"\cot x", R % r"\cot x", True),
    (r"\cot x", R % r"\frac{\cos x}{\sin x}", True),
    (r"\cot x", R % r"\tan x", False),
    ("(-2,1)", R % "(-2, 1)", True),
    ("(-2,1)", R % "(1, -2)", False),
    (r"1 \pm \sqrt{19}", R % r"1 \pm \sqrt{19}", True),
    (r"1 \pm \sqrt{19}", R % r"1+\sqrt{19}, 1-\sqrt{19}", True),
    (r"1 \pm \sqrt{19}", R % r"1 + \sqrt{19}", False),
    (r"\text{east}", R % r"\text{east}", True),
    (r"\text{east}", R % r"\text{north}", False),
    (
        r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
        R % r"\begin{pmatrix} -\frac{1}{3} \\ \frac{2}{3} \\ \frac{5}{3} \end{pmatrix}",
        True,
    ),
    (
        r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
        R % r"\begin{pmatrix} 1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
        False,
    ),
    (
        r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}",
        R % r"\begin{pmatrix}-1&0\\0&-1\end{pmatrix}",
        True,
    ),
    (
        r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}",
        R % r"\begin{pmatrix}1&0\\0&1\end{pmatrix}",
        False,
    ),
    ("(a+5)(b+2)", R % "(b+2)(a+5)", True),
    ("(a+5)(b+2)", R % "(a+2)(b+5)", False),
    ("(3,4]", R % "(3, 4]", True),
    ("(3,4]", R % "[3, 4]", False),
    (r"\frac43", R % r"\frac{4}{3}", True),
    (r"\frac43", R % r"\dfrac{4}{3}", True),
    (r"\text{even}", R % "even", True),
    (r"\text{even}", R % r"\text{odd}", False),
    ("4210_{5}", R % "4210_5", True),
    (r"\frac{\sqrt{3}}{3}", R % r"\frac{1}{\sqrt{3}}", True),
    (r"10,\!080", R % "10080", True),
    (r"10,\!080", R % "10,080", True),
    (r"10,\!080", R % "10800", False),
    (r"\left( \frac{3}{2}, -13 \right)", R % r"\left(\frac32, -13\right)", True),
    (r"\left( \frac{3}{2}, -13 \right)", R % "(1.5,-13)", True),
    (r"11,\! 111,\! 111,\! 100", R % "11111111100", True),
    (r"\text{(C)}", R % r"\text{(C)}", True),
    (r"\text{(C)}", R % "C", True),
    (r"\text{(C)}", R % "(D)", False),
    (r"288 \pi", R % r"288\pi", True),
    (r"288 \pi", R % "288", False),
    (r"\$32,\!348", R % r"\$32,348", True),
    (r"\$32,\!348", R % "32348", True),
    (r"\$32,\!348", R % r"\$32,350", False),
    (r"864 \mbox{ inches}^2", R % "864", True),
    (r"864 \mbox{ inches}^2", R % r"864 \text{ square inches}", True),
    (r"864 \mbox{ inches}^2", R % "432", False),
    (r"1\frac{4}{5}", R % r"\frac{9}{5}", True),
    (r"1\frac{4}{5}", R % "1.8", True),
    (r"18+2\pi", R % r"2\pi + 18", True),
    (r"\left(\frac{3}{5},\frac{8}{3}\right]", R % r"(\frac{3}{5}, \frac{8}{3}]", True),
    (r"\left(\frac{3}{5},\frac{8}{3}\right]", R % r"[\frac{3}{5}, \frac{8}{3}]", False),
    (r"5.4 \text{ cents}", R % "5.4", True),
    (r"(-\infty, 0]", R % r"(-\infty, 0]", True),
    (r"(-\infty, 0]", R % r"(-\infty, 0)", False),
    (r"(-\infty, 2) \cup (3, \infty)", R % r"(-\infty,2)\cup(3,\infty)", True),
    (r"(-\infty, 2) \cup (3, \infty)", R % "(2, 3)", False),
    ("y = 2x + 3", R % "y=2x+3", True),
    ("y = 2x + 3", R % "y = 3x + 2", False),
    (r"\$18.90", R % "18.9", True),
    (r"\$18.90", R % r"\$18.09", False),
    (r"x \in [-2,7]", R % "[-2, 7]", True),
    (r"\{1\pm\sqrt{5},-2\}", R % r"-2, 1+\sqrt{5}, 1-\sqrt{5}", True),
    (r"\frac{20000}{\pi}", R % r"\frac{20000}{\pi}", True),
    (r"\frac{20000}{\pi}", R % r"20000\pi", False),
    (r"137 \frac{1}{2}", R % "137.5", True),
    (".35625", R % "0.35625", True),
    ("2k", R % "2k", True),
    ("2k", R % "k", False),
    ("5x - 7y + 11z + 4 = 0", R % "-5x + 7y - 11z - 4 = 0", True),
    (".0000672", R % r"6.72 \times 10^{-5}", True),
]


@pytest.mark.parametrize("gold, response, expected", MATH500_CASES)
def test_math500_answers(gold, response, expected):
    pred = extract_answer(response)
    assert pred is not None
    assert is_equivalent(pred, gold) is expected


def _fraction_strings(value: Fraction) -> list[str]:
    return [f"\\frac{{{value.numerator}}}{{{value.denominator}}}", f"{float(value):.6f}"]


def test_numbers_against_isclose_reference():
    """Decimals compare with relative tolerance 1e-4, as math.isclose would on float64."""
    rng = random.Random(0)
    for _ in range(300):
        gold = Fraction(rng.randint(-(10**6), 10**6), rng.randint(1, 1000))
        pred = float(gold) * (1 + rng.choice([0, 1e-7, 5e-5, 2e-4, 1e-2]) * rng.choice([-1, 1]))
        pred_text = repr(pred)
        expected = math.isclose(pred, float(gold), rel_tol=1e-4)
        for gold_text in _fraction_strings(gold):
            assert fast_equivalence(pred_text, gold_text) is expected, (pred_text, gold_text)


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("10000", "10001", False),  # integers are exact: no tolerance
        (r"\frac{1}{3}", r"\frac{2}{6}", True),
        ("0.3333", r"\frac{1}{3}", True),
        ("0.33", r"\frac{1}{3}", False),
        ("25", r"25\%", True),
        ("0.25", r"25\%", True),
        (r"25\%", "0.25", True),
        ("0.25", "25", False),  # no percent sign, no percent reading
        ("4.5e33", r"4.5 \times 10^{33}", True),
        ("1e400", "1.0001e400", True),
        ("1e400", "1", False),
        ("025", "25", True),
        ("-0", "0", True),
        (r"\frac{1}{0}", r"\frac{1}{0}", True),  # same string
        (r"-\infty", r"\infty", False),
        ("(1,2)", "[1,2]", False),
        ("(1,2)", "(1,2,3)", False),
        (r"\{2,1\}", r"\{1,2\}", True),
        (r"(1,2)\cup(3,4)", r"(3,4)\cup(1,2)", True),
        ("3, 5", "3", False),  # a hedge is not an answer
        ("(C)", "C", True),
        ("C", r"\text{(B)}", False),
        ("EVELYN", r"\text{Evelyn}", True),
        ("Eveyln", r"\text{Evelyn}", False),
    ],
)
def test_fast_path_rules(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


@pytest.mark.parametrize(
    "pred, gold",
    [(r"\sqrt{8}", r"2\sqrt{2}"), ("2", r"\frac{\pi}{2}"), ("(x+1)^2", "x^2+2x+1")],
)
def test_symbolic_answers_are_left_undecided(pred, gold):
    assert fast_equivalence(pred, gold) is None


@pytest.mark.parametrize(
    "answer, key",
    [
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\dfrac{17}{50}", r"\frac{17}{50}"),
        (r"\frac 34", r"\frac{3}{4}"),
        (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}"),
        (r"11,\! 111,\! 111,\! 100", "11111111100"),
        (r"x \in [-2,7]", "[-2,7]"),
        ("x=1, y=2", "x=1,y=2"),  # a tuple of assignments keeps its names
        ("70000 dollars", "70000"),
        ("5 or 6 apples", "5or6apples"),  # connectives are not units
        (r"\text{Evelyn}", "Evelyn"),
    ],
)
def test_normalize_answer(answer, key):
    assert normalize_answer(answer)[0] == key


def test_long_prediction_is_rejected_without_parsing():
    assert is_equivalent("1+" * 2000 + "1", "4001") is False


@pytest.mark.parametrize(
    "payload",
    [
        "__import__('os').system('touch {marker}')",
        "\\text{__import__('os').system('touch {marker}')}",
        "eval(\"__import__('os').system('touch {marker}')\")",
        "exec('import os; os.system(\"touch {marker}\")')",
        "(lambda: __import__('os').system('touch {marker}'))()",
    ],
)
def test_model_text_is_never_executed(payload, tmp_path, monkeypatch):
    import latex2sympy2_extended.latex2sympy2 as latex2sympy
    import math_verify.parser

    def forbidden(*args, **kwargs):
        raise AssertionError("parse_expr evaluates Python and must never see model text")

    # The two places in the parsing stack that could evaluate a string as Python.
    monkeypatch.setattr(math_verify.parser, "parse_expr", forbidden)
    monkeypatch.setattr(latex2sympy, "parse_expr", forbidden)
    marker = tmp_path / "pwned"
    text = payload.replace("{marker}", str(marker))
    response = f"The answer is $\\boxed{{{text}}}$. The answer is {text}."
    pred = extract_answer(response)
    assert is_equivalent(pred, "0") is False
    assert is_equivalent("0", pred) is False
    assert not marker.exists()


def test_non_string_input_is_a_clear_error():
    with pytest.raises(TypeError, match="answers must be str, got int and str"):
        is_equivalent(3, "3")
    with pytest.raises(TypeError, match="a response must be a str, got NoneType"):
        extract_answer(None)


@pytest.mark.parametrize(
    "pred, gold, different",
    [
        (r"11\sqrt{34}", r"34\sqrt{11}", True),
        (r"\frac{\pi}{6}", r"-\frac{\pi}{6}", True),
        ("(x+8)(x-25)", "(x+8)(x+25)", True),
        ("ab + 10", "(a+5)(b+2)", True),
        (r"\sqrt{4114}", r"11\sqrt{34}", False),
        ("x^2+33x+200", "(x+8)(x+25)", False),
        (r"\frac{\cos x}{\sin x}", r"\cot x", False),
        (r"0.3333333", r"\frac{1}{3}", False),  # within math-verify's 6-place rounding
        (r"25", r"25\%", False),  # percentages: math-verify's own rule
        ("Evelyn", r"\text{Evelyn}", False),  # words are symbols: math-verify's own rule
        ("x = 3", "3", False),  # relations are not probed
    ],
)
def test_numeric_probe_only_concludes_different(pred, gold, different):
    import math_verify

    from zero_rl.rewards.equivalence import _clearly_different, _parse_latex

    gold_parsed, pred_parsed = _parse_latex(gold), _parse_latex(pred)
    assert _clearly_different(gold_parsed[0], pred_parsed[0]) is different
    if different:  # math-verify itself, with its slow simplify, agrees
        assert not math_verify.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None)
