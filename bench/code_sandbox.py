"""Code-task grading throughput: the shipped problems' reference solutions graded by
`CodeTask.check_batch` (every test its own sandboxed process), and what the sandbox costs per
program over a bare interpreter start.

    python bench/code_sandbox.py                 # 2 workers, each solution x 4, 3 rounds
    python bench/code_sandbox.py --repeat 8 --num-workers 4

The overhead is measured in this one process, back to back and alternating: `run_program` of an
empty program against `subprocess.run([python, "-I", "-S", "-c", "pass"])`, one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zero_rl import sandbox  # noqa: E402
from zero_rl.tasks.code import DEFAULT_FILE, CodeTask, read_code_problems  # noqa: E402


def overhead(runs: int) -> dict:
    """Median wall seconds of one empty program: sandboxed, and a bare interpreter."""
    bare, boxed = [], []
    command = [sys.executable, "-I", "-S", "-c", "pass"]
    for i in range(runs):
        for side in ("bare", "boxed") if i % 2 == 0 else ("boxed", "bare"):
            start = time.perf_counter()
            if side == "bare":
                subprocess.run(command, check=True, env={"PATH": "/usr/bin:/bin"})
                bare.append(time.perf_counter() - start)
            else:
                assert sandbox.run_program("pass").status == "ok"
                boxed.append(time.perf_counter() - start)
    return {"bare_s": statistics.median(bare), "sandbox_s": statistics.median(boxed)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=4, help="copies of each solution a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overhead-runs", type=int, default=40)
    parser.add_argument("--out", default="", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    if min(args.num_workers, args.repeat, args.rounds, args.overhead_runs) < 1:
        parser.error("--num-workers, --repeat, --rounds and --overhead-runs must be >= 1")

    problems = read_code_problems(DEFAULT_FILE)
    examples = problems * args.repeat
    responses = [f"```python\n{ex.meta['solution']}\n```" for ex in examples]
    tests = sum(len(ex.meta["tests"]) for ex in examples)
    task = CodeTask(num_workers=args.num_workers)
    print(
        f"isolation: {sandbox.isolation()}; {len(os.sched_getaffinity(0))} of "
        f"{os.cpu_count()} CPU cores; {len(examples)} programs ({tests} test runs) a round, "
        f"{args.num_workers} workers"
    )
    task.check_batch(responses[:4], examples[:4])  # warm-up
    rounds = []
    for r in range(args.rounds):
        start = time.perf_counter()
        checks = task.check_batch(responses, examples)
        seconds = time.perf_counter() - start
        assert all(c.correct for c in checks), [c.reason for c in checks if not c.correct]
        rounds.append(seconds)
        print(
            f"  round {r}: {len(examples) / seconds:6.1f} programs/s, "
            f"{tests / seconds:6.1f} test runs/s"
        )
    cost = overhead(args.overhead_runs)
    total = sum(rounds)
    summary = {
        "programs_per_s": len(examples) * len(rounds) / total,
        "test_runs_per_s": tests * len(rounds) / total,
        **cost,
        "overhead_s": cost["sandbox_s"] - cost["bare_s"],
    }
    print(
        f"graded: {summary['programs_per_s']:.1f} programs/s ({summary['test_runs_per_s']:.1f} "
        f"sandboxed test runs/s)\nempty program, median of {args.overhead_runs}: sandboxed "
        f"{cost['sandbox_s'] * 1e3:.1f} ms, bare `python -I -S -c pass` "
        f"{cost['bare_s'] * 1e3:.1f} ms: {summary['overhead_s'] * 1e3:.1f} ms of sandbox per "
        "program"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rounds_s": rounds, "summary": summary}, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
