"""Normalisation rules (both policies): each one's cases, and that switching it off is what
changes them; the rule report on hand-made pairs and on a shipped benchmark."""

import pytest

from zero_rl.rewards import RULES, clean_latex, fast_equivalence, is_equivalent, rules
from zero_rl.tools import rule_report

# (prediction, gold, expected, the rule that decides it or None).
NORMALIZATION_CASES = [
    # decimal_comma: a comma between digits is a decimal comma against a single number...
    ("3,75", "3.75", True, "decimal_comma"),
    ("0,5", r"\frac12", True, "decimal_comma"),
    ("-2,25", "-2.25", True, "decimal_comma"),
    ("3,75", "3.76", False, None),
    # ...but three digits after it are thousands, and a comma and a space are two numbers.
    ("3,750", "3750", True, None),
    ("3,750", "3.75", False, None),
    ("3, 75", "3.75", False, None),
    # percent_words
    ("50 pct", r"50\%", True, "percent_words"),
    ("12.5 percentage", r"12.5\%", True, "percent_words"),
    ("50 pct", "5", False, None),
    # text_tail: prose or units in a text macro after a number...
    (r"7 \text{ people can sit}", "7", True, "text_tail"),
    (r"12\textnormal{ apples in all}", "12", True, "text_tail"),
    (r"3.5 \mathrm{ hours exactly}", "3.5", True, "text_tail"),
    # ...unless a word hedges or scales it, or a single letter may be a variable.
    (r"5\text{ or more}", "5", False, None),
    (r"5 \text{ hundred}", "5", False, None),
    (r"5 \text{ is not right}", "5", False, None),
    (r"2\mathrm{i}", "2", False, None),
    (r"7 \text{ people}", "8", False, None),
    # approx_after_exact
    (r"\frac{\sqrt2}{2} \approx 0.707", r"\frac{\sqrt{2}}{2}", True, "approx_after_exact"),
    (r"\pi \approx 3.14", r"\pi", True, "approx_after_exact"),
    (r"x = \frac{\sqrt2}{2} \approx 0.7071", r"\frac{\sqrt{2}}{2}", True, "approx_after_exact"),
    (r"\frac{1}{2} \approx 0.707", r"\frac{\sqrt{2}}{2}", False, None),
    # decimal_of_exact: a decimal within rel_tol of an exact irrational gold.
    ("4.2426", r"3\sqrt{2}", True, "decimal_of_exact"),
    ("31.4159", r"10\pi", True, "decimal_of_exact"),
    (r"\pi", "3.1416", False, None),  # an exact answer for a rounded gold: math-verify's call
    ("4.24", r"3\sqrt{2}", False, None),  # 1e-3 off: beyond the 1e-4 tolerance
    ("56.0001", r"\binom{8}{3}", False, None),  # an integer gold stays exact
    # Already read before: solutions joined by \quad\text{and}\quad, choice letters in text.
    (r"x = 2 \quad\text{and}\quad x = -3", r"\{2,-3\}", True, "and_or_list"),
    (r"2 \quad\text{and}\quad 3", "2, -3", False, None),
    (r"\mathrm{(B)}", "B", True, None),
    (r"\textbf{(B)}", r"\text{(B)}", True, None),
    (r"\mathrm{(C)}", "B", False, None),
    ("D. x = 17", "D", True, None),
    ("(B): 12", "B", True, None),
    ("C. 12", "D", False, None),
    (r"\varnothing", r"\emptyset", True, None),
    ("infinity", r"\infty", True, None),
    ("-infinity", r"-\infty", True, None),
    # trailing_backslash (math-verify reads these too; the rule settles them without sympy)
    (r"\frac{1}{2}\ ", r"\frac12", True, None),
    (r"\frac{1}{3}\ ", r"\frac12", False, None),
]


@pytest.mark.parametrize("pred, gold, expected, rule", NORMALIZATION_CASES)
def test_normalization_rules(pred, gold, expected, rule):
    assert is_equivalent(pred, gold) is expected
    if rule is not None:  # switching the rule off is what changes the verdict
        with rules.disabled(rule):
            assert is_equivalent(pred, gold) is not expected
        assert is_equivalent(pred, gold) is expected  # and the caches are cleared after


@pytest.mark.parametrize(
    "pred, gold",
    [("2x + 1", "18"), ("50", "(x+8)(x+25)"), ("72", r"\text{Evelyn}"), ("5 m", "5"),
     ("y = 8x^2 - 70", r"\frac{14}{3}"), ("5", r"5\text{ m}")],
)  # fmt: skip
def test_a_free_symbol_against_a_plain_number_is_decided_without_sympy(pred, gold):
    assert fast_equivalence(pred, gold) is False
    assert is_equivalent(pred, gold) is False


@pytest.mark.parametrize(
    "pred, gold",
    [(r"e^{i\pi}", "-1"), (r"\sqrt{9}", "3"), ("2i", "2"), (r"(-\infty,\infty)", r"\mathbb{R}")],
)
def test_e_i_and_commands_are_not_free_symbols(pred, gold):
    assert fast_equivalence(pred, gold) is None  # left to sympy, which knows e, i and roots
    assert is_equivalent(pred, gold) is (pred in (r"\sqrt{9}", r"(-\infty,\infty)"))


def test_trailing_backslash_is_dropped_so_the_fast_path_decides():
    assert clean_latex("\\frac{1}{2}\\") == "\\frac{1}{2}"
    assert fast_equivalence("\\frac{1}{2}\\", "\\frac12") is True
    assert clean_latex(r"1 \\") == r"1 \\"  # a row break is not a stray backslash
    with rules.disabled("trailing_backslash"):
        assert clean_latex("\\frac{1}{2}\\") == "\\frac{1}{2}\\"
        assert fast_equivalence("\\frac{1}{2}\\", "\\frac12") is None  # left to sympy


def test_every_rule_is_described_and_checked():
    assert set(RULES) == set(rules.EXTRACTION_RULES) | set(rules.NORMALIZATION_RULES)
    assert all(isinstance(text, str) and text for text in RULES.values())
    with rules.disabled(*RULES):
        assert not any(rules.enabled(rule) for rule in RULES)
    assert all(rules.enabled(rule) for rule in RULES)


def test_rule_report_counts_what_each_rule_changes():
    pairs = [
        rule_report.Pair("hand", 0, "boxed", r"So $\boxed{0.5 \text{ pct}}$.", r"0.5\%"),
        rule_report.Pair("hand", 1, "bare", r"\text{(C)}", "C"),
        rule_report.Pair("hand", 2, "other_bare", r"\text{(D)}", "C"),
        rule_report.Pair("hand", 3, "boxed", r"So $\boxed{3,5}$.", "3.5"),
    ]
    baseline, effects = rule_report.rule_effects(pairs)
    assert baseline["lenient"] == [True, True, False, True]
    assert baseline["strict"] == [True, False, False, True]
    by_rule = {effect.rule: effect for effect in effects}
    assert dict(by_rule["percent_words"].changes["strict"]) == {"boxed:gained": 1}
    assert dict(by_rule["percent_words"].changes["lenient"]) == {"boxed:gained": 1}
    assert dict(by_rule["bare_answer"].changes["lenient"]) == {"bare:gained": 1}
    assert dict(by_rule["bare_answer"].changes["strict"]) == {}  # strict has no answer there
    assert dict(by_rule["decimal_comma"].changes["strict"]) == {"boxed:gained": 1}
    assert not by_rule["units"].changes["lenient"]


def test_rule_report_on_a_shipped_benchmark(capsys):
    assert rule_report.main(["--benchmarks", "amc23", "--limit", "8"]) == 0
    out = capsys.readouterr().out
    assert "pairs from the shipped benchmarks" in out
    assert "strict   solution 0/0, boxed 8/8, bare 0/8" in out  # amc23 ships no solutions
    assert "lenient  solution 0/0, boxed 8/8, bare 8/8" in out
    for rule in RULES:
        assert f"{rule}: " in out
    assert rule_report.main(["--benchmarks", "no_such_benchmark"]) == 2
