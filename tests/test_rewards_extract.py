"""Answer extraction and gold-answer normalisation."""

import time

import pytest

from zero_rl.rewards import (
    MAX_ANSWER_CHARS,
    Extraction,
    extract,
    extract_answer,
    extract_with_budget,
    normalize_gold,
)

# (response, expected answer, expected source). None: no answer.
EXTRACTION_CASES = [
    (
        r"So $r = 3$, $\theta = \frac{\pi}{2}$: $\boxed{\left( 3, \frac{\pi}{2} \right)}$.",
        r"\left( 3, \frac{\pi}{2} \right)",
        "boxed",
    ),
    (r"First $\boxed{4}$... wait, that is wrong. Redoing it: $\boxed{5}$.", "5", "boxed"),
    (r"The set is $\boxed{\{1, 2\}}$.", r"\{1, 2\}", "boxed"),
    (
        r"Escaped braces \boxed{\left\{ x \mid x > 0 \right\}} count once.",
        r"\left\{ x \mid x > 0 \right\}",
        "boxed",
    ),
    (r"Nested: $\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt{3}}{2}", "boxed"),
    (r"The answer is $\boxed 5$.", "5", "boxed"),
    (r"AIME style: $\fbox{204}$ minutes.", "204", "boxed"),
    (r"$\framebox{113}$", "113", "boxed"),
    (r"The solutions are $\boxed{(1,1)}$ and $\boxed{(3,2)}$.", "(1,1), (3,2)", "boxed"),
    (r"Angles: $\boxed{90^\circ}$, $\boxed{60^\circ}$", r"90^\circ, 60^\circ", "boxed"),
    (r"I tried $\boxed{2}$ but then found $\boxed{7}$.", "7", "boxed"),
    ("Final answer: $\\boxed{5}$\n\n$\\boxed{5}$", "5", "boxed"),
    (r"Truncated before the end: \boxed{\frac{3}{", None, None),
    (r"Empty: \boxed{}", None, None),
    (r"A box in a box: $\boxed{\boxed{5}}$", "5", "boxed"),
    (r"The answer is \boxed{5}. \boxed{}", "5", "boxed"),
    (r"\boxed{7} and then \boxed{ } and \boxedsymbol", "7", "boxed"),
    (r"$\boxed{3} \text{or} \boxed{4}$", "3, 4", "boxed"),
    (r"$\boxed{3}$ \text{ and } $\boxed{4}$", "3, 4", "boxed"),
    (r"$\boxed{3}$ \quad or \quad $\boxed{4}$", "3, 4", "boxed"),
    (r"$\boxed{3}$; then \boxed{4}", "4", "boxed"),
    ("<think>6 * 7</think> <answer> 42 </answer>", "42", "answer_tag"),
    ("<think>x</think> <answer>$\\frac{1}{2}$</answer>\n", r"\frac{1}{2}", "answer_tag"),
    ("<think>\\boxed{1}</think><answer>so \\boxed{2}</answer>", "2", "answer_tag"),
    ("<answer>1</answer> <answer>The answer is 3.</answer>", "3", "answer_tag"),
    ("<answer>5</answer> but wait, \\boxed{6}", "6", "boxed"),  # text after the tag
    ("<think>truncated <answer> 5", None, None),
    ("<think>x</think> <answer> </answer>", None, None),
    (
        "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.",
        r"\frac{1}{2}",
        "final_answer",
    ),
    ("Final Answer: The final answer is 1.6. I hope it is correct.", "1.6", "final_answer"),
    ("The final answer is $x = 5$. I hope it is correct.", "x = 5", "final_answer"),
    ("Adding them up gives 30 apples.\nThe answer is 30.", "30", "answer_is"),
    ("So the answer is: $\\$18.90$.", r"\$18.90", "answer_is"),
    ("Thus the answer is \\(\\frac{7}{4}\\).", r"\frac{7}{4}", "answer_is"),
    ("The answer is **42**.", "42", "answer_is"),
    ("Therefore the answer is 18 dollars.\nDone.", "18 dollars", "answer_is"),
    ("The answer is $5$, since $2 + 3 = 5$.", "5", "answer_is"),
    ("The answer is $5$ or $6$.", None, None),
    ("The answer is $5$, $6$.", None, None),
    (r"The answer is $5$ \text{or} $6$.", None, None),
    ("The answer is 5 or 6.", None, None),
    ("Final Answer: The final answer is $5$ or $6$. I hope it is correct.", None, None),
    ("He makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18", "gsm8k"),
    ("Profit: 200,000 - 130,000\n#### 70,000", "70,000", "gsm8k"),
    ("Let me think. 3 + 4 = 7, and 7 * 2 = 14.", None, None),
    ("", None, None),
]


@pytest.mark.parametrize("response, answer, source", EXTRACTION_CASES)
def test_extract(response, answer, source):
    extraction = extract(response)
    if answer is None:
        assert extraction is None
    else:
        assert (extraction.answer, extraction.source) == (answer, source)
        assert extraction.boxed == (source in ("boxed", "answer_tag"))
        assert extract_answer(response) == answer


@pytest.mark.parametrize(
    "response, answer",
    [
        ("Let me think. 3 + 4 = 7, and 7 * 2 = 14.", "14"),
        ("She has 1,250 marbles left", "1,250"),
        ("The ratio is 3/4", "3/4"),
        ("Temperature drops to -12.5 degrees", "-12.5"),
        ("No digits at all", None),
    ],
)
def test_last_number_fallback(response, answer):
    assert extract_answer(response, last_number_fallback=True) == answer
    if answer is not None:
        assert extract_answer(response) is None  # off by default: rewards must not guess
        assert extract(response, last_number_fallback=True).source == "last_number"


def test_boxed_beats_other_markers():
    response = "The answer is 3.\n#### 4\nActually $\\boxed{5}$."
    assert extract(response).answer == "5"


def test_phrase_search_is_case_insensitive():
    assert extract_answer("THE ANSWER IS 12.") == "12"


@pytest.mark.parametrize(
    "response, over_budget",
    [
        ("\\boxed{" + "{" * 100_000 + "}" * 100_000 + "}", True),  # 10^5 nested braces
        ("\\boxed{" + "{" * 100_000, True),  # never closes, past the cap
        ("x" * 1_000_000 + "\\boxed{" + "1+" * 500_000 + "1}", True),  # 1 MB answer
        ("answer is " + "9" * 1_000_000, True),
        ("<answer>" + "1+" * 500_000 + "1</answer>", True),
        ("\\boxed{}" * 100_000, True),  # only empty boxes
        ("\\boxed{" * 200_000, False),  # the last box is cut off by the end: truncated
        ("x" * 1_000_000, False),
    ],
    ids=["nested", "unclosed", "1MB-box", "1MB-number", "1MB-tag", "empty", "open", "1MB-text"],
)
def test_adversarial_responses_are_fast_and_over_budget(response, over_budget):
    start = time.perf_counter()
    extraction, flagged = extract_with_budget(response, last_number_fallback=True)
    assert time.perf_counter() - start < 0.5
    assert (extraction, flagged) == (None, over_budget)
    assert extract(response) is None


def test_a_1mb_response_with_a_short_answer_is_read():
    assert extract_with_budget("x" * 1_000_000 + " so $\\boxed{4}$") == (
        Extraction("4", "boxed"),
        False,
    )


def test_answer_just_under_the_cap_is_kept():
    content = "1+" * (MAX_ANSWER_CHARS // 2 - 1) + "1"
    assert extract_answer("\\boxed{" + content + "}") == content


# (raw gold field as the dataset stores it, dataset, normalised gold).
GOLD_CASES = [
    # GSM8K: the solution ends in "#### N".
    (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = "
        "$<<9*2=18>>18 every day at the farmer’s market.\n#### 18",
        "gsm8k",
        "18",
    ),
    (
        "So he made a profit of 200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000",
        "gsm8k",
        "70000",
    ),
    ("Total is 4000-3500 = <<4000-3500=500>>500.\n#### 500", None, "500"),
    ("#### 1,000", "gsm8k", "1000"),
    ("3430", "gsm8k", "3430"),
    # MATH500: a LaTeX answer, or a full solution whose last box is the answer.
    (r"\left( 3, \frac{\pi}{2} \right)", "math500", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\text{Evelyn}", "math500", r"\text{Evelyn}"),
    (r"10,\!080", None, r"10,\!080"),
    (r"\$18.90", "math", r"\$18.90"),
    (
        "Thus the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
        "math",
        r"\left( 3, \frac{\pi}{2} \right)",
    ),
    (r"We get $\boxed{\frac{1}{2}}$", None, r"\frac{1}{2}"),
    # OlympiadBench: final_answer is a list of "$...$" strings, several answers in one string.
    (["2"], "olympiadbench", "2"),
    (["$2n-2$"], "olympiadbench", "2n-2"),
    (["$(0,2),(0,-2),(4,23),(4,-23)$"], "olympiadbench", "(0,2),(0,-2),(4,23),(4,-23)"),
    (["$f(x)=x$,$f(x)=2-x$"], "olympiadbench", "f(x)=x, f(x)=2-x"),
    (["$(-\\infty, 0) \\cup\\{1\\}$."], "olympiadbench", r"(-\infty, 0) \cup\{1\}"),
    (["$90^{\\circ}$,$60^{\\circ}$"], "olympiadbench", r"90^{\circ}, 60^{\circ}"),
    (["-1,0,1"], "olympiadbench", "-1,0,1"),
    (["$100,\\frac{1}{100}$"], "olympiadbench", r"100,\frac{1}{100}"),
    (["17.5%"], "olympiadbench", "17.5%"),
    (["\\(\\frac{4}{9}\\)"], None, r"\frac{4}{9}"),
    # AMC23 stores floats, AIME24 zero-padded strings.
    (27.0, "amc23", "27"),
    (3159.0, "amc23", "3159"),
    (-1.0, "amc23", "-1"),
    (0.5, None, "0.5"),
    (36, None, "36"),
    ("025", "aime24", "025"),
    # Minerva math: a LaTeX answer.
    ("4.5e33", "minerva_math", "4.5e33"),
]


@pytest.mark.parametrize("raw, dataset, expected", GOLD_CASES)
def test_normalize_gold(raw, dataset, expected):
    assert normalize_gold(raw, dataset) == expected


@pytest.mark.parametrize(
    "raw, dataset, error, message",
    [
        ("18", "mnist", ValueError, "unknown dataset 'mnist'"),
        ("Janet sells eggs.", "gsm8k", ValueError, "no '#### N' line"),
        ("", None, ValueError, "empty"),
        ([], None, ValueError, "empty list"),
        (True, None, TypeError, "bool"),
        (float("nan"), None, ValueError, "finite"),
        ({"a": 1}, None, TypeError, "dict"),
        ("see \\boxed{1", "math", ValueError, "unterminated"),
    ],
)
def test_normalize_gold_rejects_bad_input(raw, dataset, error, message):
    with pytest.raises(error, match=message):
        normalize_gold(raw, dataset)
