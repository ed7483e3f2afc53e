"""End to end on real GSM8K, OlympiadBench, AMC, AIME and Minerva answers in their raw formats:
extraction, gold normalisation and equivalence, with model-style responses."""

import json
import pathlib

import pytest

from zero_rl.rewards import extract_answer, is_equivalent, normalize_gold

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "zero_rl" / "data" / "benchmarks"

B = r"Putting everything together, the final answer is $\boxed{%s}$."

# (raw gold as the dataset stores it, dataset, model response, expected).
REAL_CASES = [
    # GSM8K: gold solutions end in "#### N"; responses come boxed, with "The answer is", or ####.
    (
        "600-407 = <<600-407=193>>193 newspapers\n#### 193",
        "gsm8k",
        "District B gets $600 - 198 - 209 = 193$ newspapers.\n\nThe answer is $\\boxed{193}$.",
        True,
    ),
    ("600-407 = <<600-407=193>>193 newspapers\n#### 193", "gsm8k", B % "194", False),
    (
        "You will save $4 + $2 = $6\n#### 6",
        "gsm8k",
        r"Savings are $2 \times \$2 + 4 \times \$0.5 = \$6$, so $\boxed{\$6}$.",
        True,
    ),
    (
        "The party started with 12 gallons of tea.\n#### 12",
        "gsm8k",
        "That is 48 quarts, or $48 / 4 = 12$ gallons. $\\boxed{12 \\text{ gallons}}$",
        True,
    ),
    ("The party started with 12 gallons of tea.\n#### 12", "gsm8k", B % "48", False),
    (
        "Brittany's mom gave the cashier 22+8=<<22+8=30>>30 dollars.\n#### 30",
        "gsm8k",
        "She paid $22 + 8 = 30$ dollars.\nThe answer is 30.",
        True,
    ),
    (
        "60 people + 420 people = <<60+420=480>>480 people.\n#### 480",
        "gsm8k",
        "Buses carried 12 * 35 = 420 people and cars 60, so 480 in total.\n#### 480",
        True,
    ),
    (
        "That means he had 130-39=<<130-39=91>>91 trees\n#### 91",
        "gsm8k",
        "After 10 years he has 130 trees and 30% die: 130 - 39 = 91.\nThe answer is 91 trees.",
        True,
    ),
    ("That means he had 130-39=<<130-39=91>>91 trees\n#### 91", "gsm8k", B % "130", False),
    (
        "Carl and Cal have 112+224 = <<112+224=336>>336 marbles combined.\n#### 336",
        "gsm8k",
        B % "336",
        True,
    ),
    (
        "Carl and Cal have 112+224 = <<112+224=336>>336 marbles combined.\n#### 336",
        "gsm8k",
        B % "280",
        False,
    ),
    (
        "Jason made 3+1.50+1.50+3 = $<<3+1.5+1.5+3=9.00>>9.00\n#### 9",
        "gsm8k",
        r"He earns $3 + 1.50 + 1.50 + 3 = \$9.00$. $\boxed{9.00}$",
        True,
    ),
    (
        "80 square feet/piece * 2 pieces = <<80*2=160>>160 square feet\n#### 160",
        "gsm8k",
        B % r"160 \text{ square feet}",
        True,
    ),
    (
        "80 square feet/piece * 2 pieces = <<80*2=160>>160 square feet\n#### 160",
        "gsm8k",
        B % "80",
        False,
    ),
    ("12+5=<<12+5=17>>17 minutes before Wayne\n#### 17", "gsm8k", B % "17", True),
    ("550 / 110 = <<550/110=5>>5 bags\n#### 5", "gsm8k", B % "5", True),
    ("160-60 = 100 girls in the Chinese team.\n#### 100", "gsm8k", B % "100", True),
    ("160-60 = 100 girls in the Chinese team.\n#### 100", "gsm8k", B % "160", False),
    ("50/5 = <<50/5=10>>10 cookies in each jar.\n#### 10", "gsm8k", B % "10", True),
    (
        "Mr. Jackson must buy 7 packs of glue sticks.\n#### 7",
        "gsm8k",
        "He needs 54 glue sticks, and 54 / 8 = 6.75, so he must buy $\\boxed{7}$ packs.",
        True,
    ),
    ("Mr. Jackson must buy 7 packs of glue sticks.\n#### 7", "gsm8k", B % "6.75", False),
    ("the total cost is 5+10+1=$<<5+10+1=16>>16\n#### 16", "gsm8k", B % r"\$16", True),
    ("Sally spends $8 + $24 = $<<8+24=32>>32 in all.\n#### 32", "gsm8k", B % "32", True),
    ("Vince age now is 7 + 2 = <<7+2=9>>9 years old.\n#### 9", "gsm8k", B % "9", True),
    ("Vince age now is 7 + 2 = <<7+2=9>>9 years old.\n#### 9", "gsm8k", B % "7", False),
    ("$4000-$3500 = $<<4000-3500=500>>500.\n#### 500", "gsm8k", B % r"\$500", True),
    ("5 + 10 + 8 + 4 = <<5+10+8+4=27>>27 fruits in total.\n#### 27", "gsm8k", B % "27", True),
    ("11500 - 4200 = 7300 bottles of juices.\n#### 7300", "gsm8k", B % "7,300", True),
    ("11500 - 4200 = 7300 bottles of juices.\n#### 7300", "gsm8k", B % "730", False),
    ("12 + 6 = <<12+6=18>>18\n#### 18", "gsm8k", B % "18", True),
    ("75 - 30 = <<75-30=45>>45 fairies that remained.\n#### 45", "gsm8k", B % "45", True),
    ("Dylan bought 38 + 44 = <<38+44=82>>82 sausages in all.\n#### 82", "gsm8k", B % "82", True),
    ("x=<<20=20>>20\n#### 20", "gsm8k", B % "x = 20", True),
    ("each person gets 8/4=<<8/4=2>>2 gallons\n#### 2", "gsm8k", B % "2", True),
    ("S=150 miles/3 hours = <<150/3=50>>50 mph\n#### 50", "gsm8k", B % r"50 \text{ mph}", True),
    ("S=150 miles/3 hours = <<150/3=50>>50 mph\n#### 50", "gsm8k", B % "45", False),
    (
        "120 - 80 = <<120-80=40>>40 girls are not in the girl scout.\n#### 40",
        "gsm8k",
        "So 40 girls are not girl scouts. The answer is 41.",
        False,
    ),
    ("490 + 2940 = 3430 infected people after three days.\n#### 3430", "gsm8k", B % "3,430", True),
    ("490 + 2940 = 3430 infected people after three days.\n#### 3430", "gsm8k", B % "3340", False),
    ("60 x 6 = <<60*6=360>>360 girls.\n#### 360", "gsm8k", B % "360", True),
    (
        "60 x 6 = <<60*6=360>>360 girls.\n#### 360",
        "gsm8k",
        "The school has 600 students, so there are 600 - 240 = 360 girls, i.e. 360",
        False,
    ),
    # OlympiadBench: final_answer lists; several answers compare as a set.
    (["2"], "olympiadbench", "Sergey can always succeed in $\\boxed{2}$ moves.", True),
    (["2"], "olympiadbench", B % "1", False),
    (["$2n-2$"], "olympiadbench", B % "2(n-1)", True),
    (["$2n-2$"], "olympiadbench", B % "2n", False),
    (["$\\binom{2n}{n}$"], "olympiadbench", B % r"\binom{2n}{n}", True),
    (["$3 n$"], "olympiadbench", B % "3n", True),
    (["$f(n)=n$"], "olympiadbench", B % "f(n) = n", True),
    (["3986729"], "olympiadbench", B % "3,986,729", True),
    (["3986729"], "olympiadbench", B % "3986728", False),
    (["$M=2^{N-2}+1$"], "olympiadbench", B % "2^{N-2}+1", True),
    (
        ["$(0,2),(0,-2),(4,23),(4,-23)$"],
        "olympiadbench",
        B % "(4, 23), (4, -23), (0, 2), (0, -2)",
        True,
    ),
    (["$(0,2),(0,-2),(4,23),(4,-23)$"], "olympiadbench", B % "(0,2), (4,23)", False),
    (["$\\frac{4}{9}$"], "olympiadbench", B % r"\dfrac{4}{9}", True),
    (
        ["$(1,1), (3,2)$"],
        "olympiadbench",
        r"The solutions are $\boxed{(1,1)}$ and $\boxed{(3,2)}$.",
        True,
    ),
    (["$(1,1), (3,2)$"], "olympiadbench", r"The only solution is $\boxed{(3,2)}$.", False),
    (["$f(x)=x$,$f(x)=2-x$"], "olympiadbench", B % "f(x)=x, f(x)=2-x", True),
    (["$k \\geqslant 2$"], "olympiadbench", B % r"k \geq 2", True),
    (["$(-\\infty, 0) \\cup\\{1\\}$."], "olympiadbench", B % r"(-\infty, 0) \cup \{1\}", True),
    (["$\\frac{2016}{2017^{2}}$"], "olympiadbench", B % r"\frac{2016}{4068289}", True),
    (["$90^{\\circ}$,$60^{\\circ}$"], "olympiadbench", B % r"60^\circ, 90^\circ", True),
    (["$90^{\\circ}$,$60^{\\circ}$"], "olympiadbench", B % r"60^\circ", False),
    (["$2^{k-n}$"], "olympiadbench", B % "2^{k-n}", True),
    (["$2^{k-n}$"], "olympiadbench", B % "2^{n-k}", False),
    (["$k=3$"], "olympiadbench", B % "3", True),
    (["-1,0,1"], "olympiadbench", B % "1, 0, -1", True),
    (["-1,0,1"], "olympiadbench", B % "0, 1", False),
    (["(-\\infty,-5)"], "olympiadbench", B % r"(-\infty, -5)", True),
    (["(-\\infty,-5)"], "olympiadbench", B % r"(-5, \infty)", False),
    (["17.5%"], "olympiadbench", B % r"17.5\%", True),
    (["17.5%"], "olympiadbench", B % "17.5", True),
    (["$4 \\pi^{2}-1$"], "olympiadbench", B % r"4\pi^2 - 1", True),
    (["$100,\\frac{1}{100}$"], "olympiadbench", B % r"\frac{1}{100}, 100", True),
    (["$0,-1,-\\frac{3}{2}$"], "olympiadbench", B % r"-\frac{3}{2}, -1, 0", True),
    (["$3,1,-1,1+\\sqrt{2}, 1-\\sqrt{2}$"], "olympiadbench", B % r"-1, 1, 3, 1 \pm \sqrt{2}", True),
    (["$20 \\sqrt{7}$"], "olympiadbench", B % r"\sqrt{2800}", True),
    (["$\\frac{15-8 \\sqrt{3}}{33}$"], "olympiadbench", B % r"\frac{15 - 8\sqrt{3}}{33}", True),
    (["$5 \\sqrt[3]{4}$"], "olympiadbench", B % r"\sqrt[3]{500}", True),
    (["$g(x)=x^2-2x+2$"], "olympiadbench", B % "g(x) = (x-1)^2 + 1", True),
    (["1,2"], "olympiadbench", B % "2, 1", True),
    # AMC23 (float golds) and AIME24 (zero-padded).
    (27.0, "amc23", B % "27", True),
    (3159.0, "amc23", B % "3159", True),
    (36.0, "amc23", B % "36.5", False),
    (-1.0, "amc23", B % "-1", True),
    ("025", "aime24", B % "25", True),
    ("073", "aime24", B % "73", True),
    ("204", "aime24", "Walking takes 3.4 hours, i.e. $\\boxed{204}$ minutes.", True),
    ("204", "aime24", B % "240", False),
    # Minerva: the Minerva prompt's "I hope" sentence; scientific notation.
    ("1.6", "minerva_math", "Final Answer: The final answer is 1.6. I hope it is correct.", True),
    (
        "4.5e33",
        "minerva_math",
        "Final Answer: The final answer is $4.5 \\times 10^{33}$. I hope it is correct.",
        True,
    ),
    (
        "4.5e33",
        "minerva_math",
        "Final Answer: The final answer is $4.5 \\times 10^{30}$. I hope it is correct.",
        False,
    ),
]


# What a policy under RL writes to collect a reward it has not earned, and the honest forms
# next to each: (response, gold, expected). Every False row was accepted by an earlier version.
HACK_CASES = [
    # Equations: math-verify keeps the last right-hand side. Only `variable = value` answers a
    # plain gold; against an equation, equations compare whole.
    (B % "3=5", "5", False),
    (B % "1+1=3", "3", False),
    (B % "x=5=6", "6", False),
    (B % "x = 2 \\cdot 3 = 6", "6", False),
    (B % r"\frac{22}{7} \approx 3.14", "3.14", False),
    (B % "f(x) = 5", "5", False),
    (B % "3 = 5", "x=5", False),
    (B % "x = 3", "3", True),
    (B % "y=5", "5", True),
    (B % r"\theta = 30^\circ", "30", True),
    (B % "x_1 = 4", "4", True),
    (B % "-2x + y = 3", "y = 2x + 3", True),
    (B % "x = 5 \\text{ or } x = -5", "5, -5", True),
    (B % "x = 5 \\text{ or } x = -5", "5", False),
    # Words and \text after a number: only known units are dropped.
    (B % "3 x", "3", False),
    (B % "2 i", "2", False),
    (B % "5 pi", "5", False),
    (B % "3 squared", "3", False),
    (B % "5 hundred", "5", False),
    (B % r"5 \text{ is not right}", "5", False),
    (B % r"5\text{ or more}", "5", False),
    (B % r"2\mathrm{i}", "2", False),
    (B % r"2\mathrm{e}", "2", False),
    (B % "3t", "3", False),
    (B % r"5 \text{ m}", "5", False),
    (B % r"12 \text{ cm}", "12", True),
    (B % "5 meters", "5", True),
    (B % r"30 \text{ dollars}", "30", True),
    (B % r"6 \text{ cm}^2", "6", True),
    (B % r"7 \text{ square units}", "7", True),
    (B % r"300 \mathrm{~km} / \mathrm{s}", "300", True),
    (B % r"90 \text{ degrees}", r"90^\circ", True),
    ("The answer is 91 trees.", "91", True),
    # A decimal answers an integer gold only when it is that integer.
    (B % "3987000.0", "3986729", False),
    (B % "10000.5", "10000", False),
    (B % "18.00", "18", True),
    (B % "0.3333", r"\frac{1}{3}", True),
    (B % "3.1416", "3.14159", True),
    # Unboxed alternatives are no answer; boxed ones are a list, which a single gold rejects.
    ("The answer is $5$ or $6$.", "6", False),
    ("The answer is $5$ or $6$.", "5", False),
    ("The answer is 5 or 6.", "5", False),
    ("The answer is $5$, since $2 + 3 = 5$.", "5", True),
    (r"So $\boxed{3} \text{or} \boxed{4}$.", "4", False),
    (r"So $\boxed{3} \text{ or } \boxed{4}$.", "3", False),
    (r"So $\boxed{3}$ or $\boxed{4}$.", "4", False),
    (r"So $\boxed{3} \text{or} \boxed{4}$.", "3, 4", True),
    (r"So $\boxed{3}$ and $\boxed{4}$.", "4, 3", True),
    # Percent: /100 always; the bare label only for a number of at least 1.
    (B % r"0.15\%", "0.15", False),
    (B % "0.15", r"0.15\%", False),
    (B % r"15\%", "15", True),
    (B % r"15\%", "0.15", True),
    (B % "15 percent", "15", True),
    (B % "17.5", "17.5%", True),
    (B % r"1500\%", "15", True),
    (B % r"150\%", "15", False),
    # Spaces between digits do not join them; thin spaces in thousands do.
    (B % "1 2", "12", False),
    (B % r"3 \quad 6", "36", False),
    (B % "3~6", "36", False),
    (B % r"1\,000", "1000", True),
    (B % r"10,\!080", "10080", True),
    (B % "3 1/2", "3.5", True),
    # Boxes: a box in a box is one box; an empty last box is ignored.
    (r"So $\boxed{\boxed{5}}$.", "5", True),
    (r"The answer is \boxed{5}. \boxed{}", "5", True),
    (r"\boxed{\fbox{12}}", "12", True),
    # One value written twice, as the MATH500 solution of number_theory/459 boxes it.
    (B % r"15\frac{39}{40}, \frac{639}{40}", r"\frac{639}{40}", True),
    (B % r"15\frac{39}{40}, \frac{639}{41}", r"\frac{639}{40}", False),
    # \tfrac reads as \frac.
    (B % r"\tfrac{1}{2}", "0.5", True),
    (B % r"\tfrac{3}{4}", r"\frac34", True),
    (B % r"\tfrac{1}{3}", "0.5", False),
    # The R1-Zero template: the last <answer> tag that ends the response.
    ("<think>3 * 14 = 42</think> <answer> 42 </answer>", "42", True),
    ("<think>\\boxed{41}?</think> <answer>$\\boxed{42}$</answer>", "42", True),
    ("<think>\\boxed{41}?</think> <answer>The answer is $42$.</answer>", "42", True),
    ("<think>so 42</think> <answer> 41 </answer>", "42", False),
    ("<think>so 42</think> <answer> 3 = 42 </answer>", "42", False),
]


@pytest.mark.parametrize("response, gold, expected", HACK_CASES)
def test_hacks_and_honest_forms(response, gold, expected):
    pred = extract_answer(response)
    assert (pred is not None and is_equivalent(pred, gold)) is expected


def test_hack_table_has_both_kinds():
    expected = [case[-1] for case in HACK_CASES]
    assert sum(expected) >= 30 and len(expected) - sum(expected) >= 35


@pytest.mark.parametrize("raw, dataset, response, expected", REAL_CASES)
def test_real_answers(raw, dataset, response, expected):
    gold = normalize_gold(raw, dataset)
    pred = extract_answer(response)
    assert (pred is not None and is_equivalent(pred, gold)) is expected


def test_table_has_positives_and_negatives():
    expected = [case[-1] for case in REAL_CASES]
    assert sum(expected) >= 40 and len(expected) - sum(expected) >= 25


def _rows(name):
    with open(BENCHMARKS / name) as f:
        return [json.loads(line) for line in f]


def test_shipped_golds_normalise_once_and_match_themselves():
    """Every gold of the shipped sets is a fixed point of normalize_gold (so `score` may
    normalise golds that are already normalised) and is equivalent to itself."""
    golds = [normalize_gold(r["answer"], "gsm8k") for r in _rows("gsm8k/test.jsonl")]
    golds += [normalize_gold(r["final_answer"], "olympiadbench") for r in _rows(
        "olympiadbench/test.jsonl")]  # fmt: skip
    golds += [normalize_gold(r["solution"], "minerva_math") for r in _rows(
        "minerva_math/test.jsonl")]  # fmt: skip
    golds += [normalize_gold(r["answer"], "math500") for r in _rows("math500/test.jsonl")]
    golds += [normalize_gold(r["answer"], "amc23") for r in _rows("amc23/test.jsonl")]
    assert len(golds) == 1319 + 675 + 272 + 500 + 40
    for gold in golds:
        assert normalize_gold(gold) == gold
        assert is_equivalent(gold, gold), gold
