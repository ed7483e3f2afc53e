"""Verifier throughput: `zero_rl.rewards.score` (pool, timeouts, cheap checks first) against
math-verify called directly in one process, on the same responses.

    python bench/verifier.py                    # synthetic RL-like mix, 2 workers, 3 rounds
    python bench/verifier.py --input out.jsonl  # real model outputs: {"response", "answer"} lines
    python bench/verifier.py --extraction lenient   # grading's policy instead of the reward's

Each round times both sides back to back on one fresh batch, alternating which goes first, so
that the load of a shared machine falls on both; the ratio is over all rounds.

The synthetic mix mimics a zero-RL batch: chain-of-thought text of ~0.5-3 KB with inline math,
ending in a boxed answer (right in the gold's own form or another equivalent form, or wrong), an
unboxed "the answer is", or nothing (truncated). A quarter of the prompts use real MATH500,
GSM8K, OlympiadBench, AMC and AIME answers; the rest draw fresh answers of the same shapes
(integers, fractions, radicals, multiples of pi, tuples, intervals, polynomials, degrees), so the
timed batch shares no answers with the warm-up batch, as consecutive RL steps share none. Each
prompt is sampled `--group-size` times, as in GRPO.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zero_rl.rewards import POLICIES, RewardConfig, VerifierPool, normalize_gold, score  # noqa: E402

# (gold answer, equivalent forms a model might write, wrong answers a model might write).
GOLDS = [
    ("18", ["18.00", "\\$18"], ["16", "20"]),
    ("70000", ["70,000", "\\$70,000"], ["120000", "7000"]),
    ("540", ["540 \\text{ meters}"], ["180", "520"]),
    ("1248", ["1,248"], ["1284", "1200"]),
    ("25000", ["25,000"], ["2500", "30000"]),
    ("288", ["288.0"], ["144", "298"]),
    ("47", ["47"], ["46", "48"]),
    ("4400", ["4,400"], ["4000", "400"]),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", ["(3, \\frac{\\pi}{2})"], ["(3, \\pi)", "(0, 3)"]),
    ("\\frac{14}{3}", ["\\dfrac{14}{3}", "4\\frac{2}{3}"], ["\\frac{3}{14}", "5"]),
    ("p - q", ["-q + p"], ["p + q", "q - p"]),
    ("\\text{Evelyn}", ["Evelyn"], ["\\text{Brian}", "Diana"]),
    ("90^\\circ", ["90", "90^{\\circ}"], ["45^\\circ", "180"]),
    ("3\\sqrt{13}", ["\\sqrt{117}"], ["13\\sqrt{3}", "3\\sqrt{11}"]),
    ("6 - 5i", ["-5i + 6"], ["6 + 5i", "5 - 6i"]),
    ("3, 5, 7", ["7, 5, 3", "\\{3, 5, 7\\}"], ["3, 5", "2, 3, 5"]),
    ("\\frac{243}{625}", ["0.3888"], ["\\frac{81}{625}", "\\frac{243}{3125}"]),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", ["x^5-x^4+x^3-x^2+x-1"], ["x^5 + x^4 - 1", "x^4 - 1"]),
    ("0.15", ["\\frac{3}{20}", "15\\%"], ["0.25", "1.5"]),
    ("(6,31,-1)", ["(6, 31, -1)"], ["(6,-31,1)", "(1,6,31)"]),
    ("\\frac{11}{36}", ["\\frac{22}{72}"], ["\\frac{5}{36}", "\\frac{11}{32}"]),
    ("1 \\pm \\sqrt{19}", ["1 + \\sqrt{19}, 1 - \\sqrt{19}"], ["1 + \\sqrt{19}", "\\pm\\sqrt{19}"]),
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
        ["\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}"],
        ["\\begin{pmatrix} 1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}"],
    ),
    ("(a+5)(b+2)", ["(b+2)(a+5)"], ["(a+2)(b+5)", "ab + 10"]),
    ("10,\\!080", ["10080"], ["10800", "1008"]),
    ("30^\\circ", ["30"], ["60^\\circ", "150"]),
    ("\\dfrac{17}{50}", ["0.34"], ["\\frac{17}{25}", "0.35"]),
    (
        "(-\\infty, 2) \\cup (3, \\infty)",
        ["(-\\infty,2)\\cup(3,\\infty)"],
        ["(2, 3)", "(-\\infty, 3)"],
    ),
    ("y = 2x + 3", ["2x + 3"], ["y = 3x + 2", "2x - 3"]),
    ("\\$18.90", ["18.90", "18.9"], ["19.80", "18"]),
    ("1\\frac{4}{5}", ["\\frac{9}{5}", "1.8"], ["\\frac{4}{5}", "2"]),
    ("(5,\\infty)", ["(5, \\infty)"], ["[5, \\infty)", "(-\\infty, 5)"]),
    ("\\text{(C)}", ["C", "(C)"], ["(B)", "D"]),
    ("2\\sqrt{5}", ["\\sqrt{20}"], ["5\\sqrt{2}", "4"]),
    ("x \\in [-2,7]", ["[-2, 7]"], ["(-2, 7)", "[-7, 2]"]),
    ("(0,2), (0,-2), (4,23), (4,-23)", ["(4,23), (4,-23), (0,2), (0,-2)"], ["(0,2), (4,23)"]),
    ("2n-2", ["2(n-1)"], ["2n", "n-2"]),
    ("\\frac{n(n+1)(2 n+1)}{6}", ["\\frac{2n^3+3n^2+n}{6}"], ["\\frac{n(n+1)}{2}"]),
    ("3986729", ["3,986,729"], ["3986728", "398672"]),
    ("17.5%", ["17.5", "0.175"], ["175", "1.75"]),
    ("-1,0,1", ["1, 0, -1"], ["0, 1", "-1, 1"]),
    ("\\frac{2016}{2017^{2}}", ["\\frac{2016}{4068289}"], ["\\frac{2017}{2016^2}"]),
    ("4 \\pi^{2}-1", ["4\\pi^2 - 1"], ["4\\pi^2 + 1", "2\\pi - 1"]),
    ("27", ["27.0"], ["30", "54"]),
    ("3159", ["3,159"], ["3159.5", "2916"]),
    ("36", ["36.0"], ["18", "6"]),
    ("025", ["25"], ["52", "250"]),
    ("204", ["204"], ["240", "3.4"]),
]

_SENTENCES = [
    "Let's think step by step about what the problem is asking.",
    "We are given that $x + {a} = {b}$, so $x = {b} - {a} = {c}$.",
    "Substituting $x = {a}$ into $y = {b}x^2 + {c}$ gives $y = {b} \\cdot {a}^2 + {c}$.",
    "The total is therefore ${a} \\times {b} = {ab}$.",
    "Simplifying the fraction, $\\frac{{{ab}}}{{{b}}} = {a}$.",
    "Next, we compute ${a}^2 = {aa}$ and add ${b}$ to obtain ${aab}$.",
    "By the Pythagorean theorem, $c^2 = {a}^2 + {b}^2 = {sq}$.",
    "This means each of the {a} groups contains {b} items, for {ab} items in all.",
    "Wait, let me double-check this calculation: ${ab} / {a} = {b}$, which is consistent.",
    "Hmm, that does not look right. Let me reconsider the second condition.",
    "Since the function is increasing on $[{a}, {b}]$, its maximum is attained at $x = {b}$.",
    "Using the formula $S_n = \\frac{{n(a_1 + a_n)}}{{2}}$ with $n = {a}$, we get $S = {s}$.",
]


def _body(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(6, 36)):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        sentences.append(
            rng.choice(_SENTENCES).format(
                a=a,
                b=b,
                c=b - a,
                ab=a * b,
                aa=a * a,
                aab=a * a + b,
                sq=a * a + b * b,
                s=a * (a + b) // 2,
            )
        )
    paragraphs = [" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3)]
    return "\n\n".join(paragraphs)


def _fresh_answer(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold, equivalent forms, wrong answers) of a random shape, mostly integers as in MATH."""
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    kind = rng.choices(
        ["int", "frac", "radical", "pi", "tuple", "interval", "poly", "degrees"],
        weights=[55, 12, 8, 4, 6, 5, 6, 4],
    )[0]
    if kind == "int":
        n = rng.randint(1, 100_000)
        return str(n), [f"{n:,}", f"{n}.0", f"\\${n}"], [str(n + rng.randint(1, 9)), str(2 * n)]
    if kind == "frac":
        q = rng.choice([3, 7, 9, 11, 13])
        p = rng.choice([k for k in range(1, 3 * q) if k % q])
        return (
            f"\\frac{{{p}}}{{{q}}}",
            [f"\\dfrac{{{p}}}{{{q}}}", f"{2 * p}/{2 * q}"],
            [f"\\frac{{{q}}}{{{p}}}", f"\\frac{{{p + 1}}}{{{q}}}"],
        )
    if kind == "radical":
        r = rng.choice([2, 3, 5, 6, 7, 10, 11, 13])
        return (
            f"{a}\\sqrt{{{r}}}",
            [f"\\sqrt{{{a * a * r}}}"],
            [f"{r}\\sqrt{{{a}}}", f"{a}\\sqrt{{{r + 1}}}"],
        )
    if kind == "pi":
        return f"{a}\\pi", [f"\\pi \\cdot {a}"], [f"{a + 1}\\pi", str(a)]
    if kind == "tuple":
        return f"({a}, -{b})", [f"\\left({a},-{b}\\right)"], [f"(-{b}, {a})", f"({a}, {b})"]
    if kind == "interval":
        return (
            f"[{a}, {a + b})",
            [f"\\left[{a},{a + b}\\right)"],
            [f"({a}, {a + b})", f"[{a}, {a + b}]"],
        )
    if kind == "poly":
        return (
            f"(x+{a})(x+{b})",
            [f"x^2+{a + b}x+{a * b}"],
            [f"(x+{a})(x-{b})", f"x^2+{a * b}x+{a + b}"],
        )
    return f"{a + b}^\\circ", [str(a + b)], [f"{a + b + 10}^\\circ"]


def synthetic_mix(
    num_prompts: int, group_size: int, seed: int, real_golds: list
) -> tuple[list[str], list[str]]:
    """(responses, gold answers): `group_size` samples for each of `num_prompts` prompts."""
    rng = random.Random(seed)
    responses, golds = [], []
    for _ in range(num_prompts):
        use_real = rng.random() < 0.25
        gold, equivalents, wrongs = rng.choice(real_golds) if use_real else _fresh_answer(rng)
        for _ in range(group_size):
            body = _body(rng)
            outcome = rng.random()
            if outcome < 0.40:
                ending = f"Therefore, the final answer is $\\boxed{{{gold}}}$."
            elif outcome < 0.55:
                ending = f"So the answer is $\\boxed{{{rng.choice(equivalents)}}}$."
            elif outcome < 0.85:
                ending = f"Thus the answer is $\\boxed{{{rng.choice(wrongs)}}}$."
            elif outcome < 0.92:
                ending = f"The answer is ${rng.choice(equivalents + wrongs)}$."
            else:
                ending = body[: rng.randint(0, len(body))]  # truncated, no answer
            responses.append(f"{body}\n\n{ending}")
            golds.append(normalize_gold(gold))
    return responses, golds


def read_jsonl(path: str) -> tuple[list[str], list[str]]:
    responses, golds = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                responses.append(row["response"])
                golds.append(normalize_gold(row["answer"]))
    return responses, golds


def math_verify_direct(responses: list[str], golds: list[str], gold_cache: dict) -> list[bool]:
    """math-verify as commonly called: parse the response with its default extractors, verify
    against the parsed gold. Gold parses are cached in `gold_cache` across calls, as `score`'s
    workers cache theirs, which if anything favours the baseline."""
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    verdicts = []
    for response, gold in zip(responses, golds):
        if gold not in gold_cache:
            gold_cache[gold] = math_verify.parse("$" + gold + "$")
        verdicts.append(bool(math_verify.verify(gold_cache[gold], math_verify.parse(response))))
    return verdicts


def _batches(args) -> list[tuple[list[str], list[str]]]:
    """The warm-up batch, then one fresh batch per round (as consecutive RL steps share no
    responses). Warm-up and timed batches split the real answers so that no cached parse of a
    gold carries over from warm-up; both sides reach steady state (warm parsers) first."""
    if args.input:
        batch = read_jsonl(args.input)
        return [batch] * (args.rounds + 1)
    warmup = synthetic_mix(args.num_prompts, args.group_size, args.seed + 1000, GOLDS[0::2])
    rounds = [
        synthetic_mix(args.num_prompts, args.group_size, args.seed + r, GOLDS[1::2])
        for r in range(args.rounds)
    ]
    return [warmup, *rounds]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", help="JSONL of {'response', 'answer'}; default: synthetic")
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timed batches, each side per batch")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extraction", choices=POLICIES, default="strict")
    parser.add_argument("--out", default="", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    if min(args.num_prompts, args.group_size, args.rounds, args.num_workers) < 1:
        parser.error("--num-prompts, --group-size, --rounds and --num-workers must be >= 1")

    (warmup_responses, warmup_golds), *timed = _batches(args)
    count = len(timed[0][0])
    mean_chars = sum(len(r) for responses, _ in timed for r in responses) / (count * len(timed))
    print(
        f"{args.rounds} rounds of {count} responses ({mean_chars:.0f} characters on average), "
        f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPU cores, "
        f"{args.num_workers} verifier workers, {args.extraction} extraction"
    )
    config = RewardConfig(timeout_s=args.timeout_s, extraction=args.extraction)
    gold_cache: dict = {}
    start = time.perf_counter()
    with VerifierPool(args.num_workers, timeout_s=args.timeout_s) as pool:
        startup_s = time.perf_counter() - start
        start = time.perf_counter()
        score(warmup_responses, warmup_golds, config=config, pool=pool)
        cold_s = time.perf_counter() - start
        math_verify_direct(warmup_responses, warmup_golds, gold_cache)
        rows = []
        for r, (responses, golds) in enumerate(timed):
            # Back to back on the same batch, in alternating order, so that a load change on
            # the shared machine hits both sides alike.
            sides = ("zero_rl", "math-verify") if r % 2 == 0 else ("math-verify", "zero_rl")
            row = {"round": r}
            symbolic_before, timeouts_before = pool.symbolic, pool.timeouts
            for side in sides:
                start = time.perf_counter()
                if side == "zero_rl":
                    verdicts = score(responses, golds, config=config, pool=pool)
                else:
                    baseline = math_verify_direct(responses, golds, gold_cache)
                row[side] = time.perf_counter() - start
            row |= {
                "ratio": row["math-verify"] / row["zero_rl"],
                "symbolic": (pool.symbolic - symbolic_before) / len(responses),
                "timeouts": pool.timeouts - timeouts_before,
                "accuracy": sum(v.correct for v in verdicts) / len(verdicts),
                "baseline_accuracy": sum(baseline) / len(baseline),
                "disagree": sum(v.correct != b for v, b in zip(verdicts, baseline)),
            }
            rows.append(row)
            print(
                f"  round {r}: zero_rl {count / row['zero_rl']:6.0f} responses/s, math-verify "
                f"{count / row['math-verify']:6.0f} responses/s, ratio {row['ratio']:.2f}x "
                f"(sympy for {row['symbolic']:.1%}, {row['timeouts']} timeouts; "
                f"accuracy {row['accuracy']:.3f} vs {row['baseline_accuracy']:.3f}, "
                f"{row['disagree']} verdicts differ)"
            )

    ours_s = sum(row["zero_rl"] for row in rows)
    baseline_s = sum(row["math-verify"] for row in rows)
    ratios = sorted(row["ratio"] for row in rows)
    summary = {
        "responses": count * len(rows),
        "zero_rl_responses_per_s": count * len(rows) / ours_s,
        "math_verify_responses_per_s": count * len(rows) / baseline_s,
        "ratio": baseline_s / ours_s,
        "ratio_min": ratios[0],
        "ratio_max": ratios[-1],
        "pool_startup_s": startup_s,
        "first_batch_responses_per_s": len(warmup_responses) / cold_s,
    }
    print(
        f"zero_rl score, {args.num_workers} workers + parent (pool, timeouts, safety): "
        f"{summary['zero_rl_responses_per_s']:.0f} responses/s\n"
        f"math-verify direct, 1 process:                      "
        f"{summary['math_verify_responses_per_s']:.0f} responses/s\n"
        f"ratio zero_rl / math-verify: {summary['ratio']:.2f}x over all rounds "
        f"(per round {ratios[0]:.2f}x-{ratios[-1]:.2f}x)\n"
        f"  first batch on fresh workers: {summary['first_batch_responses_per_s']:.0f} "
        f"responses/s; pool start-up {startup_s:.1f} s (once per process, not counted)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rounds": rows, "summary": summary}, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
