"""The loop run by each `VerifierPool` worker process."""

from __future__ import annotations

import logging
import resource
import signal
import time

from zero_rl.rewards.equivalence import is_equivalent, symbolic_equivalence

STATUS_OK = 0
# Over the verification budget: out of time, out of memory, or too deeply nested.
STATUS_TIMEOUT = 1
STATUS_ERROR = 2


class _SoftTimeout(BaseException):
    """Raised by SIGALRM inside a check. A BaseException so that math-verify's and sympy's
    `except Exception` blocks cannot swallow it and carry on with the slow work."""


def _on_alarm(signum, frame):
    raise _SoftTimeout


# One answer of each common shape: ANTLR builds its prediction tables per construct, lazily, so
# parsing these once in the fork server saves every forked worker ~50 ms on its first of each.
_WARM_UP_ANSWERS = (
    r"\frac{\sqrt{2}}{2}",
    r"\left( 3, \frac{\pi}{2} \right)",
    r"(-\infty, 2) \cup [3, \infty)",
    r"\{1 \pm \sqrt{5}, -2\}",
    r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
    r"y = 2x^2 - 3x + 1",
    r"k \geq 2",
    r"6 - 5i",
    r"\sin^2 \theta + \log_2 8",
    r"\binom{2n}{n} + 3!",
    r"52_8",
    r"\text{(C)}",
)


def warm_up() -> None:
    """Import sympy and math-verify and build the LaTeX parser's tables (~2 s the first time)."""
    for answer in _WARM_UP_ANSWERS:
        symbolic_equivalence(answer, answer + "+1")


def _limit_memory(memory_limit_mb: int | None) -> None:
    if memory_limit_mb is None:
        return
    limit = memory_limit_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def check_one(pred: str, gold: str, rel_tol: float, soft_timeout_s: float) -> tuple[bool, int]:
    """(correct, status) of one pair, interrupted by SIGALRM after `soft_timeout_s`.

    The alarm lets pure-Python sympy loops stop without losing the worker; a check stuck in C
    (a huge integer power) ignores it and is killed by the parent's wall clock instead. Running
    out of memory (the worker's address-space limit) or of stack is over budget too, like the
    alarm: STATUS_TIMEOUT. Any other exception is STATUS_ERROR.
    """
    try:
        signal.setitimer(signal.ITIMER_REAL, soft_timeout_s)
        try:
            return is_equivalent(pred, gold, rel_tol=rel_tol), STATUS_OK
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except (_SoftTimeout, MemoryError, RecursionError):
        return False, STATUS_TIMEOUT
    except Exception:
        return False, STATUS_ERROR


def worker_main(conn, memory_limit_mb: int | None) -> None:
    """Serve chunks `(soft_timeout_s, rel_tol, [(task_id, pred, gold), ...])` until None or EOF,
    answering each task as `(task_id, correct, status)` as soon as it is done."""
    logging.disable(logging.CRITICAL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, _on_alarm)
    warm_up()  # instant when forked from the preloaded fork server
    _limit_memory(memory_limit_mb)
    conn.send(("ready", time.monotonic()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        soft_timeout_s, rel_tol, tasks = message
        for task_id, pred, gold in tasks:
            correct, status = check_one(pred, gold, rel_tol, soft_timeout_s)
            conn.send((task_id, correct, status))
