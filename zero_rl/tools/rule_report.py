"""What each verifier rule decides on the shipped benchmark answers.

    python -m zero_rl.tools.rule_report                  # all shipped test benchmarks
    python -m zero_rl.tools.rule_report --benchmarks math500,gsm8k_test --examples 5

Grades six kinds of pairs per problem, under both extraction policies: its reference solution,
its gold answer boxed ("The answer is $\\boxed{...}$.") and its gold answer bare, each against
its gold (all should be correct); and the same three of the next problem against this gold
("other_*": all should be incorrect; skipped where the two golds are written the same).
Then, for each rule of `zero_rl.rewards.RULES`, it switches the rule off and prints how many
verdicts change, in which direction, with examples. A normalisation rule that changes `strict`
verdicts changes what RL rewards; one that turns "other" pairs correct accepts wrong answers.

Only the pairs a rule can affect are re-graded: a verdict is a function of the extracted answer
and of what the rules make of both answers (`_signature`), so a pair whose signature is the
same with the rule off keeps its verdict. Checks run in this process with a SIGALRM timeout
(`--timeout-s`); the inputs are the project's own data, not model text.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import signal
import sys

from zero_rl.data.records import read_benchmark
from zero_rl.rewards import RULES, extract, is_equivalent, rules
from zero_rl.rewards.equivalence import decimal_answer
from zero_rl.rewards.extract import answer_for_gold
from zero_rl.rewards.normalize import clean_latex, decimal_comma

DEFAULT_BENCHMARKS = ("gsm8k_test", "math500", "minerva_math", "olympiadbench", "aime24", "amc23")
KINDS = ("solution", "boxed", "bare", "other_solution", "other_boxed", "other_bare")
_BOXED = "The answer is $\\boxed{%s}$."


@dataclasses.dataclass(frozen=True)
class Pair:
    """One graded pair: `response` against `gold`; `kind` is one of KINDS."""

    benchmark: str
    index: int
    kind: str
    response: str
    gold: str


def benchmark_pairs(names) -> list[Pair]:
    """The pairs of `names` (see the module docstring)."""
    pairs = []
    for name in names:
        result = read_benchmark(name, keep_records=True)
        solutions = []
        for record in result.records:
            solution = record.get("solution", record.get("answer") if "gsm8k" in name else None)
            if isinstance(solution, list):
                solution = solution[0] if solution else None
            solutions.append(solution if isinstance(solution, str) else None)
        golds = [example.answer for example in result.examples]
        for i, gold in enumerate(golds):
            j = (i + 1) % len(golds)
            candidates = [("", solutions[i], golds[i])]
            if golds[j] != gold:  # the next problem's answer, when it is written differently
                candidates.append(("other_", solutions[j], golds[j]))
            for prefix, solution, answer in candidates:
                for kind, response in (
                    ("solution", solution),
                    ("boxed", _BOXED % answer),
                    ("bare", answer),
                ):
                    if response is not None:
                        pairs.append(Pair(name, i, prefix + kind, response, gold))
    return pairs


class _Timeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def _signature(pair: Pair, policy: str):
    """Everything a verdict depends on that the rules can change."""
    extraction = extract(pair.response, policy=policy)
    if extraction is None:
        return None
    answer = answer_for_gold(extraction, pair.gold)
    return (
        answer,
        clean_latex(answer),
        clean_latex(pair.gold),
        decimal_comma(answer),
        decimal_comma(pair.gold),
        decimal_answer(answer),
    )


def _verdict(pair: Pair, policy: str, timeout_s: float) -> bool | None:
    """Correct, incorrect, or None when the check ran out of time."""
    extraction = extract(pair.response, policy=policy)
    if extraction is None:
        return False
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return is_equivalent(answer_for_gold(extraction, pair.gold), pair.gold)
    except _Timeout:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@dataclasses.dataclass
class RuleEffect:
    """How one rule's verdicts differ from those with it switched off, per policy."""

    rule: str
    # policy -> kind -> Counter of "gained" (correct only with the rule) / "lost".
    changes: dict = dataclasses.field(
        default_factory=lambda: collections.defaultdict(lambda: collections.defaultdict(int))
    )
    examples: list = dataclasses.field(default_factory=list)


def rule_effects(
    pairs: list[Pair], *, timeout_s: float = 2.0, max_examples: int = 3, progress=None
) -> tuple[dict, list[RuleEffect]]:
    """(baseline verdicts per policy, one RuleEffect per rule of RULES)."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        baseline, signatures = {}, {}
        for policy in rules.POLICIES:
            baseline[policy] = [_verdict(pair, policy, timeout_s) for pair in pairs]
            signatures[policy] = [_signature(pair, policy) for pair in pairs]
        effects = []
        for rule in RULES:
            effect = RuleEffect(rule)
            with rules.disabled(rule):
                for policy in rules.POLICIES:
                    for i, pair in enumerate(pairs):
                        if _signature(pair, policy) == signatures[policy][i]:
                            continue
                        without = _verdict(pair, policy, timeout_s)
                        with_rule = baseline[policy][i]
                        if without == with_rule or None in (without, with_rule):
                            continue
                        direction = "gained" if with_rule else "lost"
                        effect.changes[policy][f"{pair.kind}:{direction}"] += 1
                        if len(effect.examples) < max_examples:
                            effect.examples.append((policy, direction, pair))
            if progress is not None:
                progress(rule)
            effects.append(effect)
        return baseline, effects
    finally:
        signal.signal(signal.SIGALRM, previous)


def _shorten(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def format_report(pairs: list[Pair], baseline: dict, effects: list[RuleEffect]) -> str:
    lines = [f"{len(pairs)} pairs from the shipped benchmarks", ""]
    lines.append("correct per kind of pair (all rules on):")
    for policy in rules.POLICIES:
        counts = collections.Counter()
        totals = collections.Counter()
        for pair, verdict in zip(pairs, baseline[policy]):
            totals[pair.kind] += 1
            counts[pair.kind] += bool(verdict)
        row = ", ".join(f"{kind} {counts[kind]}/{totals[kind]}" for kind in KINDS)
        timeouts = sum(verdict is None for verdict in baseline[policy])
        lines.append(f"  {policy:8s} {row}; timeouts {timeouts}")
    lines += ["", "verdicts each rule changes (gained: correct only with the rule; lost: the"]
    lines += ["reverse); 'other_*' gains would be wrong answers accepted:", ""]
    for effect in effects:
        lines.append(f"{effect.rule}: {RULES[effect.rule]}")
        for policy in rules.POLICIES:
            changes = effect.changes[policy]
            text = ", ".join(f"{key} {n}" for key, n in sorted(changes.items())) or "none"
            lines.append(f"  {policy:8s} {text}")
        for policy, direction, pair in effect.examples:
            lines.append(
                f"    e.g. [{policy}, {direction}] {pair.benchmark}#{pair.index} {pair.kind}: "
                f"{_shorten(pair.response)!r} vs gold {_shorten(pair.gold, 40)!r}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zero_rl.tools.rule_report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--benchmarks", default=",".join(DEFAULT_BENCHMARKS))
    parser.add_argument("--examples", type=int, default=3, help="examples printed per rule")
    parser.add_argument("--timeout-s", type=float, default=2.0)
    parser.add_argument("--limit", type=int, default=0, help="problems per benchmark (0 = all)")
    args = parser.parse_args(argv)
    names = [name for name in args.benchmarks.split(",") if name]
    try:
        pairs = benchmark_pairs(names)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.limit:
        pairs = [pair for pair in pairs if pair.index < args.limit]
    baseline, effects = rule_effects(
        pairs,
        timeout_s=args.timeout_s,
        max_examples=args.examples,
        progress=lambda rule: print(f"  {rule} done", file=sys.stderr),
    )
    print(format_report(pairs, baseline, effects))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
