"""Grading accuracy: agreement with expected labels on answer-equivalence suites, zero-rl's two
extraction policies against math-verify called directly, in the same process.

    python bench/grader_agreement.py                 # the suites in tests/data/grader_suites
    python bench/grader_agreement.py --show-misses   # and every disagreement of `lenient`
    python bench/grader_agreement.py --suites my_dir --json out.json

A suite is a JSONL file of {"response", "gold", "expected"} lines (see the suites' README).
zero-rl grades through `score` with a `VerifierPool`, as evaluation does. math-verify grades as
its documentation shows, `verify(parse(gold), parse(response))`, with the gold wrapped in `$`;
a response in which it finds nothing is parsed again wrapped in `$` (the bare answers of the
extracted-answer suites), which only ever helps it. Its default extraction includes its
plain-expression parser, which evaluates Python: run it on trusted suites only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zero_rl.rewards import POLICIES, RewardConfig, VerifierPool, score  # noqa: E402

DEFAULT_SUITES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "grader_suites"


def read_suite(path: pathlib.Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"response", "gold", "expected"} - set(row)
            if missing or not isinstance(row["expected"], bool):
                raise ValueError(f"{path}:{line_number}: need response, gold and a bool expected")
            rows.append(row)
    return rows


def math_verify_verdicts(rows: list[dict]) -> list[bool]:
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    verdicts = []
    for row in rows:
        gold = math_verify.parse("$" + row["gold"] + "$") or math_verify.parse(row["gold"])
        pred = math_verify.parse(row["response"]) or math_verify.parse("$" + row["response"] + "$")
        verdicts.append(bool(gold) and bool(pred) and bool(math_verify.verify(gold, pred)))
    return verdicts


def zero_rl_verdicts(rows: list[dict], policy: str, pool: VerifierPool) -> list[bool]:
    config = RewardConfig(extraction=policy, timeout_s=5.0)
    responses = [row["response"] for row in rows]
    verdicts = score(responses, [row["gold"] for row in rows], config=config, pool=pool)
    return [verdict.correct for verdict in verdicts]


def agreement(suites_dir: pathlib.Path, *, pool: VerifierPool) -> dict:
    """{suite: {"cases": n, "strict": rate, "lenient": rate, "math_verify": rate,
    "misses": [rows lenient got wrong]}} for every `*.jsonl` under `suites_dir`."""
    paths = sorted(suites_dir.glob("*.jsonl"))
    if not paths:
        raise ValueError(f"no *.jsonl suites in {suites_dir}")
    results = {}
    for path in paths:
        rows = read_suite(path)
        verdicts = {policy: zero_rl_verdicts(rows, policy, pool) for policy in POLICIES}
        verdicts["math_verify"] = math_verify_verdicts(rows)
        result = {"cases": len(rows)}
        for name, got in verdicts.items():
            result[name] = sum(g == row["expected"] for g, row in zip(got, rows)) / len(rows)
        result["misses"] = [
            row for got, row in zip(verdicts["lenient"], rows) if got != row["expected"]
        ]
        results[path.stem] = result
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suites", default=str(DEFAULT_SUITES), help="folder of *.jsonl suites")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    with VerifierPool(args.workers) as pool:
        results = agreement(pathlib.Path(args.suites), pool=pool)
    print(f"{'suite':16s} {'cases':>5s} {'strict':>7s} {'lenient':>8s} {'math-verify':>12s}")
    for name, r in results.items():
        print(
            f"{name:16s} {r['cases']:5d} {r['strict']:7.3f} {r['lenient']:8.3f} "
            f"{r['math_verify']:12.3f}"
        )
        if args.show_misses:
            for row in r["misses"]:
                response = " ".join(row["response"].split())[-100:]
                print(f"    miss: expected {row['expected']}: {response!r} vs {row['gold']!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
