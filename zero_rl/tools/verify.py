"""Grade any model's outputs offline.

    python -m zero_rl.tools.verify < outputs.jsonl > verdicts.jsonl
    python -m zero_rl.tools.verify --input outputs.jsonl --mode format_aware --dataset gsm8k
    python -m zero_rl.tools.verify --extraction strict < rollouts.jsonl   # as RL rewards them

Answers are found with the `lenient` extraction policy by default (also unmarked answers:
"Answer: 5", a bare expression, the last number), as benchmark graders read them; `strict`
requires a marked answer, as the RL reward does (`zero_rl.rewards.extract`).

Reads JSONL lines `{"response": str, "answer": str | number | list}` (answers in any dataset
format `normalize_gold` accepts) and writes one line per input line, in order:
`{"correct": bool, "extracted": str | null, "reward": float, "timed_out": bool}`, where
`timed_out` means over the verification budget (out of time or memory, or a marked answer
longer than the cap), hence incorrect. A summary (count, accuracy, timeouts, throughput) goes
to stderr. Blank lines are skipped; a malformed
line stops the run with an error naming its line number, before anything is graded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

from zero_rl.rewards import DATASETS, POLICIES, RewardConfig, VerifierPool, normalize_gold, score
from zero_rl.rewards.reward import MODES

_CHUNK = 4096


class InputError(ValueError):
    """A malformed input line."""


def read_examples(stream: TextIO, dataset: str | None) -> list[tuple[str, str]]:
    """(response, normalised gold answer) per non-blank line; InputError names a bad line."""
    examples = []
    for line_number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"line {line_number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise InputError(
                f"line {line_number}: expected a JSON object, got {type(row).__name__}"
            )
        missing = [key for key in ("response", "answer") if key not in row]
        if missing:
            raise InputError(f"line {line_number}: missing key(s) {', '.join(missing)}")
        if not isinstance(row["response"], str):
            raise InputError(
                f"line {line_number}: 'response' must be a string, "
                f"got {type(row['response']).__name__}"
            )
        try:
            answer = normalize_gold(row["answer"], dataset)
        except (TypeError, ValueError) as error:
            raise InputError(f"line {line_number}: bad 'answer': {error}") from None
        examples.append((row["response"], answer))
    return examples


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m zero_rl.tools.verify", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--input", help="JSONL file to grade (default: stdin)")
    parser.add_argument("--output", help="where to write verdicts (default: stdout)")
    parser.add_argument("--mode", choices=MODES, default="correctness")
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="format of the answers")
    parser.add_argument(
        "--extraction",
        choices=POLICIES,
        default="lenient",
        help="lenient (default) also reads unmarked answers; strict needs a \\boxed{} or tag",
    )
    parser.add_argument("--timeout-s", type=float, default=RewardConfig.timeout_s)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument(
        "--last-number-fallback",
        action="store_true",
        help="strict only: take the last number of a response that has no marked answer",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        config = RewardConfig(
            mode=args.mode,
            extraction=args.extraction,
            timeout_s=args.timeout_s,
            num_workers=args.num_workers,
            last_number_fallback=args.last_number_fallback,
        )
        if args.input:
            with open(args.input) as stream:
                examples = read_examples(stream, args.dataset)
        else:
            examples = read_examples(sys.stdin, args.dataset)
    except (InputError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        # Opened before the pool starts, so that a bad path costs nothing and loses nothing.
        output = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115
    except OSError as error:
        print(f"error: cannot write --output {args.output}: {error.strerror}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    correct = timeouts = 0
    try:
        with VerifierPool(config.num_workers, timeout_s=config.timeout_s) as pool:
            for offset in range(0, len(examples), _CHUNK):
                chunk = examples[offset : offset + _CHUNK]
                responses, answers = [r for r, _ in chunk], [a for _, a in chunk]
                for verdict in score(responses, answers, config=config, pool=pool):
                    correct += verdict.correct
                    timeouts += verdict.timed_out
                    record = {
                        "correct": verdict.correct,
                        "extracted": verdict.extracted,
                        "reward": verdict.reward,
                        "timed_out": verdict.timed_out,
                    }
                    output.write(json.dumps(record) + "\n")
                output.flush()
    finally:
        if output is not sys.stdout:
            output.close()
    elapsed = time.perf_counter() - start
    count = len(examples)
    accuracy = correct / count if count else 0.0
    print(
        f"graded {count} responses: accuracy {accuracy:.4f} ({correct}/{count}), "
        f"timeouts {timeouts}, {count / max(elapsed, 1e-9):.0f} responses/s "
        f"({elapsed:.2f} s with pool start-up)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
