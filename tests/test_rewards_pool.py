"""VerifierPool: wall-clock timeouts, recovery from hung and dead workers, safety, batching."""

import os
import signal
import threading
import time

import pytest
from test_rewards_cases import REAL_CASES
from test_rewards_equivalence import MATH500_CASES

from zero_rl.rewards import RewardConfig, VerifierPool, normalize_gold, score

TIMEOUT_S = 1.0
# Distinct pairs that only sympy can settle, so that each one reaches a worker.
SYMBOLIC_TRUE = [
    (r"\sqrt{8}", r"2\sqrt{2}"),
    (r"\sqrt{12}", r"2\sqrt{3}"),
    (r"\sqrt{18}", r"3\sqrt{2}"),
    (r"\sqrt{20}", r"2\sqrt{5}"),
    (r"\sqrt{27}", r"3\sqrt{3}"),
    (r"\sqrt{28}", r"2\sqrt{7}"),
]
EXPLOSIVE = [r"9^{9^{9^{9}}}", r"(10^{7})!", r"10^{10^{9}}", r"2^{2^{40}}"]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2, timeout_s=TIMEOUT_S) as pool:
        yield pool


def _wait_until_dead(pid: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive")


def test_score_agrees_with_the_real_answer_tables(pool):
    responses = [response for _, response, _ in MATH500_CASES]
    answers = [gold for gold, _, _ in MATH500_CASES]
    expected = [correct for _, _, correct in MATH500_CASES]
    for raw, dataset, response, correct in REAL_CASES:
        responses.append(response)
        answers.append(normalize_gold(raw, dataset))
        expected.append(correct)
    verdicts = score(responses, answers, config=RewardConfig(timeout_s=5.0), pool=pool)
    assert [v.correct for v in verdicts] == expected
    assert not any(v.timed_out for v in verdicts)


def test_explosive_answers_time_out_and_the_pool_keeps_working(pool):
    timeouts_before = pool.timeouts
    preds = EXPLOSIVE + [pred for pred, _ in SYMBOLIC_TRUE]
    golds = ["1"] * len(EXPLOSIVE) + [gold for _, gold in SYMBOLIC_TRUE]
    start = time.perf_counter()
    results = pool.check(preds, golds)
    elapsed = time.perf_counter() - start
    # Four one-second timeouts on two workers, plus the fast checks and any restart.
    assert elapsed < len(EXPLOSIVE) / 2 * TIMEOUT_S + 2.0
    assert all(r.timed_out and not r.correct for r in results[: len(EXPLOSIVE)])
    assert all(r.correct and not r.timed_out for r in results[len(EXPLOSIVE) :])
    assert pool.timeouts - timeouts_before == len(EXPLOSIVE)
    again = pool.check([pred for pred, _ in SYMBOLIC_TRUE], [gold for _, gold in SYMBOLIC_TRUE])
    assert all(r.correct for r in again)


def test_adversarial_responses_score_incorrect_quickly(pool):
    responses = [
        f"Let me compute. $\\boxed{{{EXPLOSIVE[0]}}}$",
        "The answer is $\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}$",
        "x" * 1_000_000 + " so the answer is $\\boxed{4}$",  # 1 MB, but well-formed and right
        "$\\boxed{" + "1+" * 500_000 + "1}$",  # a 1 MB answer
        "\\boxed{100000000000000000000!}",
    ]
    answers = ["1", "1", "4", "3", "2"]
    start = time.perf_counter()
    verdicts = score(responses, answers, config=RewardConfig(timeout_s=TIMEOUT_S), pool=pool)
    assert time.perf_counter() - start < 2 * TIMEOUT_S + 2.0
    assert [v.correct for v in verdicts] == [False, False, True, False, False]
    assert verdicts[0].timed_out and verdicts[4].timed_out
    assert [v.reward for v in verdicts] == [0.0, 0.0, 1.0, 0.0, 0.0]


def test_a_stuck_worker_is_killed_and_replaced(pool):
    restarts_before, victim = pool.restarts, pool.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)  # frozen: not even the in-worker alarm can fire
    try:
        results = pool.check([p for p, _ in SYMBOLIC_TRUE], [g for _, g in SYMBOLIC_TRUE])
    finally:
        if victim in pool.worker_pids():
            os.kill(victim, signal.SIGCONT)
    assert victim not in pool.worker_pids()
    assert pool.restarts == restarts_before + 1
    assert sum(r.timed_out for r in results) == 1
    assert all(r.correct for r in results if not r.timed_out)


def test_a_dead_worker_is_replaced_without_losing_checks(pool):
    crashes_before, victim = pool.crashes, pool.worker_pids()[1]
    os.kill(victim, signal.SIGKILL)
    _wait_until_dead(victim)
    results = pool.check([p for p, _ in SYMBOLIC_TRUE], [g for _, g in SYMBOLIC_TRUE])
    assert victim not in pool.worker_pids()
    assert pool.crashes == crashes_before + 1
    assert all(r.correct for r in results)


def test_model_text_is_not_executed_in_workers(pool, tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"(lambda: __import__('os').system('touch {marker}'))()",
        f"exec('import os; os.system(\"touch {marker}\")')",
    ]
    responses = [f"The answer is $\\boxed{{{payload}}}$." for payload in payloads]
    verdicts = score(responses, ["0"] * len(payloads), pool=pool)
    assert not any(v.correct for v in verdicts)
    assert not marker.exists()


def test_concurrent_callers_share_the_pool(pool):
    results = {}

    def run(name, pairs):
        results[name] = pool.check([p for p, _ in pairs], [g for _, g in pairs])

    threads = [threading.Thread(target=run, args=(i, SYMBOLIC_TRUE[i::2])) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.correct for i in range(2) for r in results[i])


def test_duplicate_pairs_are_checked_once(pool):
    pred, gold = SYMBOLIC_TRUE[0]
    results = pool.check([pred] * 50 + ["2"], [gold] * 50 + ["2"])
    assert all(r.correct for r in results)


def test_workers_are_recycled():
    with VerifierPool(1, timeout_s=5.0, max_checks_per_worker=2) as pool:
        first = pool.worker_pids()
        results = pool.check([p for p, _ in SYMBOLIC_TRUE], [g for _, g in SYMBOLIC_TRUE])
        assert all(r.correct for r in results)
        assert pool.recycles == 3 and pool.worker_pids() != first
        pids = pool.worker_pids()
    assert pool.closed
    for pid in pids:
        _wait_until_dead(pid)
    with pytest.raises(RuntimeError, match="closed"):
        pool.check(["1"], ["1"])


class _Interrupt(Exception):
    pass


def test_an_interrupted_call_leaves_no_stale_answers():
    def interrupt(signum, frame):
        raise _Interrupt

    with VerifierPool(1, timeout_s=5.0) as pool:
        (victim,) = pool.worker_pids()
        os.kill(victim, signal.SIGSTOP)
        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            with pytest.raises(_Interrupt):  # e.g. Ctrl-C in the trainer mid-check
                pool.check([r"\sqrt{8}"], [r"2\sqrt{2}"])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            os.kill(victim, signal.SIGCONT)  # it now answers the abandoned check
        result = pool.check([r"\sqrt{8}"], [r"3\sqrt{2}"])[0]
        assert not result.correct and pool.restarts == 1


def test_spawn_start_method():
    with VerifierPool(1, timeout_s=5.0, start_method="spawn") as pool:
        assert pool.check([r"\sqrt{8}"], [r"2\sqrt{2}"])[0].correct


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_workers": 0}, "num_workers"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_checks_per_worker": 0}, "max_checks_per_worker"),
        ({"start_method": "fork"}, "start_method"),
    ],
)
def test_pool_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VerifierPool(**kwargs)


def test_check_rejects_mismatched_lengths(pool):
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        pool.check(["1", "2"], ["1"])
