"""Answer equivalence: the cheap path against independent references, then real MATH500 answers."""

import math
import os
import random
import shutil
import tempfile
from fractions import Fraction

import pytest

from zero_rl.rewards import (
    extract,
    extract_answer,
    fast_equivalence,
    is_equivalent,
    normalize_answer,
    symbolic_equivalence,
)

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
        ("10000.5", "10000", False),  # nor for a decimal against an integer gold
        ("3987000.0", "3986729", False),
        ("10000.0", "10000", True),
        ("10000.5", "10000.0", True),  # a decimal gold keeps the relative tolerance
        (r"\tfrac{1}{3}", r"\frac{2}{6}", True),
        (r"\frac{1}{3}", r"\frac{2}{6}", True),
        ("0.3333", r"\frac{1}{3}", True),
        ("0.33", r"\frac{1}{3}", False),
        ("25", r"25\%", True),
        ("0.25", r"25\%", True),
        (r"25\%", "0.25", True),
        ("0.25", "25", False),  # no percent sign, no percent reading
        (r"15\%", "15", True),  # the label of a "what percent" answer
        (r"0.15\%", "0.15", False),  # below 1 the sign is /100: 0.0015
        ("0.15", r"0.15\%", False),
        (r"17.5\%", "17.5", True),
        (r"50\%", r"\frac{1}{2}", True),
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
        ("5 or 6 apples", "5,6"),  # several answers are a list
        (r"\text{Evelyn}", "Evelyn"),
        ("x = 5 or x = -5", "5,-5"),  # one variable, two values
        ("1 2", "1 2"),  # a space between digits stays
        (r"3 \quad 6", "3 6"),
        (r"1\,000", "1000"),  # a thin space in a number does not
        (r"5 \text{ is not right}", "5isnotright"),  # words that are not units stay
        (r"2\mathrm{i}", "2i"),
        (r"\tfrac{1}{2}", r"\frac{1}{2}"),
        (r"928^{\circ} \mathrm{C}", "928"),
        (r"\left[ 2, 5 \right)", "[2,5)"),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    ],
)
def test_normalize_answer(answer, key):
    assert normalize_answer(answer)[0] == key


def test_long_prediction_is_rejected_without_parsing():
    assert is_equivalent("1+" * 2000 + "1", "4001") is False


class _Executed(BaseException):
    """Raised by the guards below; a BaseException so that no `except Exception` hides it."""


def payloads(directory: str) -> list[str]:
    """Python that would create a file or directory under `directory` if anything ran it.
    Without spaces, so that no extraction or normalisation step can cut it short."""
    assert " " not in directory and directory.startswith("/")
    return [
        f"__import__('pathlib').Path('{directory}/a').touch()",
        f"__import__('os').mkdir('{directory}/b')",
        f"eval(\"__import__('os').mkdir('{directory}/c')\")",
        f"exec(\"__import__('os').mkdir('{directory}/d')\")",
        f"(lambda:__import__('os').mkdir('{directory}/e'))()",
        f"getattr(__import__('os'),'mkdir')('{directory}/f')",
        f"\\text{{__import__('pathlib').Path('{directory}/g').touch()}}",
        f"open('{directory}/h','w').write('1')",
    ]


def model_texts(payload: str) -> list[str]:
    return [
        f"So $\\boxed{{{payload}}}$.",
        f"The answer is {payload}",
        f"<think>x</think> <answer>{payload}</answer>",
        f"$\\boxed{{x={payload}}}$",
    ]


@pytest.fixture
def guarded(monkeypatch):
    """`eval`, `exec`, `sympify` and `parse_expr` that raise when given text holding a payload,
    wherever the parsing stack imported them from; yields the list of calls they refused."""
    import builtins
    import sys

    import latex2sympy2_extended.latex2sympy2  # noqa: F401 - its modules must be loaded
    import math_verify.parser  # noqa: F401
    import sympy
    import sympy.parsing.sympy_parser as sympy_parser
    from sympy.core.singleton import SingletonRegistry

    is_equivalent(r"\sqrt{8}", r"2\sqrt{2}")  # load every module the symbolic stage uses
    refused = []
    # What only model text holds. (latex2sympy does hand its lexer's number tokens, digits
    # only, to `sympy.Number`, which parses them with `parse_expr`: that is not model text.)
    markers = ("__import__", "mkdir", "open(", "zero_rl_safety_")

    def guard(name, original):
        def guarded_call(*args, **kwargs):
            for arg in (*args, *kwargs.values()):
                if isinstance(arg, str) and any(marker in arg for marker in markers):
                    refused.append((name, arg[:80]))
                    raise _Executed(f"{name} was called with model text: {arg[:80]!r}")
            return original(*args, **kwargs)

        return guarded_call

    originals = {"sympify": sympy.sympify, "parse_expr": sympy_parser.parse_expr}
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith(
            ("sympy", "latex2sympy2_extended", "math_verify", "zero_rl")
        ):
            continue
        for name, original in originals.items():
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, guard(name, original))
    monkeypatch.setattr(SingletonRegistry, "__call__", staticmethod(guard("S", sympy.sympify)))
    monkeypatch.setattr(builtins, "eval", guard("eval", builtins.eval))
    monkeypatch.setattr(builtins, "exec", guard("exec", builtins.exec))
    assert sympy.sympify is not originals["sympify"]  # the guards are in place
    yield refused


def test_model_text_is_never_executed(guarded):
    directory = tempfile.mkdtemp(prefix="zero_rl_safety_")
    try:
        for payload in payloads(directory):
            for text in model_texts(payload):
                pred = extract_answer(text)
                assert pred is not None and "import" in pred or "open(" in pred, text
                assert is_equivalent(pred, "0") is False
                assert symbolic_equivalence(pred, "0") is False  # the sympy stage itself
                assert symbolic_equivalence("0", pred) is False
        assert os.listdir(directory) == []
        assert guarded == []
    finally:
        shutil.rmtree(directory)


def test_model_text_is_never_executed_under_the_lenient_policy(guarded):
    directory = tempfile.mkdtemp(prefix="zero_rl_safety_")
    try:
        for payload in payloads(directory):
            texts = [payload, f"Answer: {payload}", f"Final Answer: ${payload}$",
                     f"We compute it.\n\n${payload}$", *model_texts(payload)]  # fmt: skip
            for text in texts:
                extraction = extract(text, policy="lenient")
                if extraction is not None:
                    assert is_equivalent(extraction.answer, "0") is False
                    assert is_equivalent(extraction.answer, "(1, 2)") is False
        assert os.listdir(directory) == []
        assert guarded == []
    finally:
        shutil.rmtree(directory)


def test_the_payloads_are_live():
    """Evaluated, each payload does create its file: the test above would see one run."""
    directory = tempfile.mkdtemp(prefix="zero_rl_safety_")
    try:
        live = [p for p in payloads(directory) if not p.startswith("\\text")]
        for payload in live:
            eval(payload)  # noqa: S307 - the point of the test
        assert len(os.listdir(directory)) == len(live)
    finally:
        shutil.rmtree(directory)


def test_the_guards_would_catch_an_evaluation(guarded):
    import sympy

    with pytest.raises(_Executed):
        sympy.sympify("__import__('os').getcwd()")
    with pytest.raises(_Executed):
        eval("__import__('os').getcwd()")
    assert len(guarded) == 2


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
