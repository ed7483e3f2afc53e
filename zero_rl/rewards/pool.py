"""A persistent pool of verifier processes with a wall-clock timeout on every check.

Why processes and a parent-side clock: a policy under RL writes answers that hang sympy
(`9^{9^{9^{9}}}`, `10^{10^{10}}!`), some of them inside a single C call that no in-process
mechanism can interrupt, and `signal.alarm` only works on the main thread anyway. So each check
runs in a worker; the parent watches the time, kills a worker that overruns, marks its check
timed out and starts a replacement; the rest of the batch carries on.

Workers start with 'forkserver' by default: forking the parent is unsafe once JAX's threads are
running, and the fork server preloads the verifier so a replacement is ready in milliseconds.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import wait

from zero_rl.rewards import worker
from zero_rl.rewards.equivalence import DEFAULT_REL_TOL, fast_equivalence
from zero_rl.rewards.normalize import MAX_ANSWER_CHARS

_STARTUP_TIMEOUT_S = 120.0
_PRELOAD_MODULE = "zero_rl.rewards.worker_preload"
# Workers interrupt themselves (SIGALRM) a little before the parent's kill, which keeps the
# process alive; the kill remains for checks stuck in C.
_SOFT_TIMEOUT_FRACTION = 0.8
_MAX_CHUNK = 32


class _OverBudget(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Outcome of one (prediction, gold) check.

    `timed_out` means over the verification budget, which is always incorrect: out of time,
    out of memory or stack in the worker, a worker that died mid-check, or a prediction longer
    than `MAX_ANSWER_CHARS`.
    """

    correct: bool
    timed_out: bool = False


@dataclasses.dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    in_flight: collections.deque  # task ids sent and not yet answered, oldest first
    head_started: float = 0.0  # when the oldest in-flight task started (parent's clock)
    checks_done: int = 0


class VerifierPool:
    """Persistent worker processes that check answer equivalence under a per-check timeout.

    Use as a context manager or call `close()`. As with any 'forkserver'/'spawn' process, a
    script that starts a pool must guard its entry point with `if __name__ == "__main__":`.

    Counters: `timeouts` (checks over budget, see `CheckResult`), `restarts` (workers replaced
    after a timeout or crash), `crashes` (workers that died), `recycles` (workers retired after
    `max_checks_per_worker`), `errors` (checks that raised something else), `symbolic` (pairs
    that needed a worker: the cheap checks could not decide them).

    Args:
      num_workers: worker processes; default min(os.cpu_count(), 8).
      timeout_s: default wall-clock limit per check, in seconds.
      max_checks_per_worker: retire a worker after this many checks (sympy's caches only grow).
      memory_limit_mb: address-space limit per worker, so a runaway expansion fails fast with a
        MemoryError instead of swapping the host; None for no limit.
      start_method: 'forkserver' or 'spawn' ('fork' is refused: unsafe under JAX's threads).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = 2.0,
        *,
        max_checks_per_worker: int = 50_000,
        memory_limit_mb: int | None = 4096,
        start_method: str = "forkserver",
    ):
        if num_workers is None:
            num_workers = min(os.cpu_count() or 1, 8)
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_checks_per_worker < 1:
            raise ValueError(f"max_checks_per_worker must be >= 1, got {max_checks_per_worker}")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', got {start_method!r}")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.max_checks_per_worker = max_checks_per_worker
        self.memory_limit_mb = memory_limit_mb
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Takes effect when the (process-wide) fork server first starts.
            self._context.set_forkserver_preload([_PRELOAD_MODULE])
        self._lock = threading.Lock()
        self._closed = False
        self.timeouts = self.restarts = self.crashes = self.recycles = self.errors = 0
        self.symbolic = 0
        self._workers: list[_Worker] = []
        launched = [self._launch() for _ in range(num_workers)]
        try:
            self._workers = [self._await_ready(process, conn) for process, conn in launched]
        except BaseException:
            for process, _ in launched:
                process.kill()
            self._closed = True
            raise

    # Worker lifecycle.

    def _launch(self):
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker.worker_main,
            args=(child_conn, self.memory_limit_mb),
            daemon=True,
            name="zero_rl-verifier",
        )
        process.start()
        child_conn.close()
        return process, parent_conn

    def _await_ready(self, process, conn) -> _Worker:
        if not conn.poll(_STARTUP_TIMEOUT_S):
            process.kill()
            raise RuntimeError(f"verifier worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")
        try:
            conn.recv()
        except EOFError:
            raise RuntimeError(
                f"verifier worker exited during start-up (exit code {process.exitcode})"
            ) from None
        return _Worker(process, conn, collections.deque())

    def _stop(self, w: _Worker, *, graceful: bool) -> None:
        if graceful:
            with contextlib.suppress(OSError):
                w.conn.send(None)
            w.process.join(timeout=1.0)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5.0)
        w.conn.close()

    def _replace(self, index: int, *, graceful: bool) -> None:
        self._stop(self._workers[index], graceful=graceful)
        self._workers[index] = self._await_ready(*self._launch())

    # Checking.

    def check(
        self,
        preds: Sequence[str],
        golds: Sequence[str],
        *,
        timeout_s: float | None = None,
        rel_tol: float = DEFAULT_REL_TOL,
    ) -> list[CheckResult]:
        """Whether each `preds[i]` (an extracted answer) is equivalent to `golds[i]`.

        Cheap checks (`fast_equivalence`, linear time) run here; the rest are de-duplicated and
        sent to the workers, each under a wall-clock limit of `timeout_s` (default: the pool's).
        A check over the budget (see `CheckResult`) is incorrect and `timed_out`.
        """
        if len(preds) != len(golds):
            raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
        timeout_s = self.timeout_s if timeout_s is None else float(timeout_s)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if self._closed:
            raise RuntimeError("VerifierPool is closed")
        results: list[CheckResult | None] = [None] * len(preds)
        undecided: dict[tuple[str, str], list[int]] = {}
        over_budget = 0
        for i, (pred, gold) in enumerate(zip(preds, golds)):
            if not isinstance(pred, str) or not isinstance(gold, str):
                raise TypeError(
                    f"preds[{i}] and golds[{i}] must be str, got "
                    f"{type(pred).__name__} and {type(gold).__name__}"
                )
            try:
                if len(pred) > MAX_ANSWER_CHARS:
                    raise _OverBudget
                verdict = fast_equivalence(pred, gold, rel_tol=rel_tol)
            except (_OverBudget, RecursionError, MemoryError):
                results[i] = CheckResult(False, timed_out=True)
                over_budget += 1
                continue
            if verdict is None:
                undecided.setdefault((pred, gold), []).append(i)
            else:
                results[i] = CheckResult(verdict)
        with self._lock:
            self.timeouts += over_budget
        if undecided:
            # Grouped by gold so that a worker's chunk reuses its cached parse of the gold.
            pairs = sorted(undecided, key=lambda pair: pair[1])
            with self._lock:
                if self._closed:
                    raise RuntimeError("VerifierPool is closed")
                self.symbolic += len(pairs)
                outcomes = self._run(pairs, timeout_s, rel_tol)
            for pair, outcome in zip(pairs, outcomes):
                for i in undecided[pair]:
                    results[i] = outcome
        return results

    def _run(
        self, pairs: list[tuple[str, str]], timeout_s: float, rel_tol: float
    ) -> list[CheckResult]:
        for index, w in enumerate(self._workers):
            if w.in_flight:  # left busy by an interrupted call: its answers would be stale
                self.restarts += 1
                self._replace(index, graceful=False)
        outcomes: list[CheckResult | None] = [None] * len(pairs)
        pending = collections.deque(range(len(pairs)))
        chunk = max(1, min(_MAX_CHUNK, len(pairs) // (4 * self.num_workers)))
        soft_timeout_s = _SOFT_TIMEOUT_FRACTION * timeout_s
        while pending or any(w.in_flight for w in self._workers):
            for index, w in enumerate(self._workers):
                if pending and not w.in_flight:
                    ids = [pending.popleft() for _ in range(min(chunk, len(pending)))]
                    tasks = [(task_id, *pairs[task_id]) for task_id in ids]
                    try:
                        w.conn.send((soft_timeout_s, rel_tol, tasks))
                    except OSError:  # died while idle; nothing of this chunk ran
                        pending.extendleft(reversed(ids))
                        self.crashes += 1
                        self.restarts += 1
                        self._replace(index, graceful=False)
                        continue
                    w.in_flight.extend(ids)
                    w.head_started = time.monotonic()
            busy = {w.conn: index for index, w in enumerate(self._workers) if w.in_flight}
            if not busy:
                continue  # a worker was replaced before it took work; dispatch again
            deadline = min(self._workers[i].head_started for i in busy.values()) + timeout_s
            for conn in wait(list(busy), timeout=max(0.0, deadline - time.monotonic())):
                self._collect(busy[conn], outcomes, pending)
            now = time.monotonic()
            for index, w in enumerate(self._workers):
                if w.in_flight and now - w.head_started > timeout_s:
                    # Stuck beyond the soft alarm (in C code, or ignoring signals): kill it.
                    self.timeouts += 1
                    outcomes[w.in_flight.popleft()] = CheckResult(False, timed_out=True)
                    pending.extendleft(reversed(w.in_flight))
                    w.in_flight.clear()
                    self.restarts += 1
                    self._replace(index, graceful=False)
            for index, w in enumerate(self._workers):
                if not w.in_flight and w.checks_done >= self.max_checks_per_worker:
                    self.recycles += 1
                    self._replace(index, graceful=True)
        return outcomes

    def _collect(self, index: int, outcomes: list, pending: collections.deque) -> None:
        w = self._workers[index]
        try:
            while w.in_flight and w.conn.poll():
                task_id, correct, status = w.conn.recv()
                if task_id != w.in_flight[0]:
                    raise RuntimeError(f"verifier worker answered task {task_id} out of order")
                w.in_flight.popleft()
                w.head_started = time.monotonic()
                w.checks_done += 1
                self.timeouts += status == worker.STATUS_TIMEOUT
                self.errors += status == worker.STATUS_ERROR
                outcomes[task_id] = CheckResult(correct, status == worker.STATUS_TIMEOUT)
        except (EOFError, OSError):
            # The worker died mid-check (e.g. killed by the OOM killer): that check is over
            # budget.
            self.crashes += 1
            self.restarts += 1
            if w.in_flight:
                self.timeouts += 1
                outcomes[w.in_flight.popleft()] = CheckResult(False, timed_out=True)
            pending.extendleft(reversed(w.in_flight))
            w.in_flight.clear()
            self._replace(index, graceful=False)

    # Shutdown.

    def close(self) -> None:
        """Stop all workers; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for w in self._workers:
                self._stop(w, graceful=True)
            self._workers = []

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and tests)."""
        return [w.process.pid for w in self._workers]

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()
