"""The lenient extraction policy: each of its rules on responses written for it, what strict
makes of the same responses, and the same speed on adversarial input."""

import time

import pytest

from zero_rl.rewards import (
    Extraction,
    RewardConfig,
    answer_for_gold,
    extract,
    extract_with_budget,
    is_equivalent,
    rules,
)

# (response, lenient answer, lenient source, the rule that reads it). None: no answer.
LENIENT_CASES = [
    # bare_answer: the whole response is one expression.
    (r"$\tfrac{2}{5}$", r"\tfrac{2}{5}", "bare_answer", "bare_answer"),
    ("7/9", "7/9", "bare_answer", "bare_answer"),
    ("y = -3", "y = -3", "bare_answer", "bare_answer"),
    (r"\text{(B)}", r"\text{(B)}", "bare_answer", "bare_answer"),
    ("  42.  ", "42", "bare_answer", "bare_answer"),
    ("Evelyn", "Evelyn", "bare_answer", "bare_answer"),
    ("1 000 000", "1000000", "bare_answer", "bare_answer"),
    ("I am not sure about this one.", None, None, None),
    ("$5$ or $6$", None, None, None),
    # answer_cue: the statement after a cue, read as a sentence.
    ("Adding up: 8 + 9 = 17.\nAnswer: 17", "17", "answer_cue", "answer_cue"),
    ("Final Answer: The smallest $k$ is 12.", "12", "answer_cue", "answer_cue"),
    (r"**Answer:** $\frac{3}{4}$", r"\frac{3}{4}", "answer_cue", "answer_cue"),
    ("Checking each option, the correct option is **(C)**.", "(C)", "answer_cue", "answer_cue"),
    ("**Final Answer**\n\n$x = 4$", "x = 4", "answer_cue", "answer_cue"),
    ("so the answer is 12 because both sides agree", "12", "answer_cue", "answer_cue"),
    ("Answer: $5$ or $6$", None, None, None),
    # final_after_box: a final statement after the last box wins over it.
    (
        "First $\\boxed{x = 2}$ from the first equation, then $y = 3x + 3 = 9$.\nFinal Answer: 9",
        "9",
        "answer_cue",
        "final_after_box",
    ),
    (r"So $\boxed{5}$. I hope the answer is correct.", "5", "boxed", None),
    (r"The answer is $\boxed{7}$.", "7", "boxed", None),
    # last_expression: the last math span or number, number-aware.
    ("so the result is 1 000 000 in total", "1000000", "last_expression", "last_expression"),
    ("the probability is .5", ".5", "last_expression", "last_expression"),
    ("it is 3,75 euros", "3,75", "last_expression", "last_expression"),
    ("thus 3, 75", "75", "last_expression", "last_expression"),
    ("The roots are $2$ and $-3$", "2, -3", "last_expression", "last_expression"),
    ("Multiplying, we get $6 \\times 7 = 42$", "42", "last_expression", "last_expression"),
    ("so $x = 2$ and $x = 3$", "x = 2, x = 3", "last_expression", "last_expression"),
    ("Therefore $x = 5$", "x = 5", "last_expression", "last_expression"),
    ("So the remainder is **3**.", "3", "last_expression", "last_expression"),
    ("H2O has three atoms, as 2 + 1 = 3", "3", "last_expression", "last_expression"),
    ("we use x2 and step3 and the 5th term", None, None, None),
    ("it is either 3 or 4", None, None, None),
    ("gives $3$ or $4$", None, None, None),
    # Marked answers read as strict reads them.
    ("<think>12 * 2 = 24</think> <answer>24</answer>", "24", "answer_tag", None),
    ("So it is 12.\n#### 12", "12", "gsm8k", None),
]


@pytest.mark.parametrize("response, answer, source, rule", LENIENT_CASES)
def test_lenient_extraction(response, answer, source, rule):
    extraction = extract(response, policy="lenient")
    if answer is None:
        assert extraction is None or (source is not None and extraction.source != source)
        return
    assert (extraction.answer, extraction.source) == (answer, source)
    if rule is not None:  # the rule is what reads it: without it, another one or none does
        with rules.disabled(rule):
            without = extract(response, policy="lenient")
        assert without is None or (without.answer, without.source) != (answer, source)


@pytest.mark.parametrize("response, answer, source, rule", LENIENT_CASES)
def test_strict_reads_only_marked_answers(response, answer, source, rule):
    extraction = extract(response)  # strict, the reward default
    if source in ("bare_answer", "answer_cue", "last_expression") and "answer is" not in response:
        assert extraction is None or extraction.source == "boxed"
    if rule == "final_after_box":
        assert extraction == Extraction("x = 2", "boxed")  # strict keeps the box


def test_bare_matrix_is_the_answer():
    # A column spec ("{cc}") is not prose, so the whole matrix is the answer.
    matrix = r"\left[\begin{array}{cc}1&0\\0&1\end{array}\right]"
    assert extract(matrix, policy="lenient") == Extraction(matrix, "bare_answer")
    assert is_equivalent(matrix, r"\begin{pmatrix}1&0\\0&1\end{pmatrix}")


SEPARATE_BOXES = (
    r"For part (a), the first root is $\boxed{3}$. For part (b), completing the square and "
    r"taking the positive root gives $\boxed{5}$."
)


@pytest.mark.parametrize(
    "gold, answer",
    [
        ("(3, 5)", "(3, 5)"),
        ("3, 5", "3, 5"),
        (r"\{3, 5\}", r"\{3, 5\}"),
        ("5", "5"),  # one part: the last box
        ("(1, 3, 5)", "5"),  # more parts than boxes: the last box, as strict reads it
    ],
)
def test_boxes_separated_by_prose_answer_a_gold_with_that_many_parts(gold, answer):
    extraction = extract(SEPARATE_BOXES, policy="lenient")
    assert (extraction.answer, extraction.earlier_boxes) == ("5", ("3",))
    assert answer_for_gold(extraction, gold) == answer
    with rules.disabled("boxes_as_tuple"):
        assert answer_for_gold(extract(SEPARATE_BOXES, policy="lenient"), gold) == "5"
    # Strict keeps no earlier boxes, so the tuple rule never applies to rewards.
    assert answer_for_gold(extract(SEPARATE_BOXES), gold) == "5"


def test_an_intermediate_box_with_a_tuple_answer_is_kept_whole():
    text = r"First $\boxed{7}$, then the point is $\boxed{(3, 5)}$."
    extraction = extract(text, policy="lenient")
    assert answer_for_gold(extraction, "(3, 5)") == "(3, 5)"


def test_policy_is_checked():
    with pytest.raises(ValueError, match=r"extraction policy must be one of \('strict', 'lenient'"):
        extract("5", policy="loose")
    with pytest.raises(ValueError, match="extraction policy"):
        RewardConfig(extraction="loose")
    with pytest.raises(ValueError, match=r"unknown rule\(s\) \['no_such_rule'\]"):
        rules.disabled("no_such_rule").__enter__()


@pytest.mark.parametrize(
    "response, over_budget",
    [
        ("\\$" * 500_000, False),
        ("$" * 1_000_000, False),
        (("$" + "x" * 1001) * 1000, False),
        ("1 " * 500_000, False),
        ("answer: " * 125_000, False),
        ("\\(" * 500_000, False),
        ("answer is " + "9" * 1_000_000, True),
        ("Final Answer: " + "1+" * 500_000 + "1", True),
        ("x" * 1_000_000 + " " + "7" * 2000, True),
    ],
    ids=["escaped-dollars", "dollars", "long-spans", "numbers", "cues", "parens", "1MB-number",
         "1MB-cue", "long-last-number"],
)  # fmt: skip
def test_adversarial_responses_stay_fast_under_lenient(response, over_budget):
    start = time.perf_counter()
    extraction, flagged = extract_with_budget(response, policy="lenient")
    assert time.perf_counter() - start < 0.5
    assert flagged is over_budget
    if over_budget:
        assert extraction is None
