"""VerifierPool: wall-clock timeouts, recovery from hung and dead workers, safety, batching."""

import os
import shutil
import signal
import tempfile
import threading
import time

import pytest
from test_rewards_cases import HACK_CASES, REAL_CASES
from test_rewards_equivalence import MATH500_CASES, model_texts, payloads

from zero_rl.rewards import MAX_ANSWER_CHARS, RewardConfig, VerifierPool, normalize_gold, score
from zero_rl.rewards import worker as worker_module

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
    for response, gold, correct in HACK_CASES:
        responses.append(response)
        answers.append(gold)
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


# Responses over the verification budget, each incorrect and counted as a timeout.
OVER_BUDGET = {
    "power tower": f"Let me compute. $\\boxed{{{EXPLOSIVE[0]}}}$",
    "huge factorial": "\\boxed{100000000000000000000!}",
    "factorial of a power": "\\boxed{(10^{7})!}",
    "10^5 nested braces": "The answer is $\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}$",
    "1 MB box never closed": "$\\boxed{" + "{" * 1_000_000,
    "1 MB answer": "$\\boxed{" + "1+" * 500_000 + "1}$",
    "1 MB number": "So the answer is " + "9" * 1_000_000,
    "1 MB answer tag": "<think>x</think> <answer>" + "1" * 1_000_000 + "</answer>",
}


def test_over_budget_responses_are_incorrect_timeouts_and_the_pool_keeps_working(pool):
    timeouts_before = pool.timeouts
    responses = list(OVER_BUDGET.values()) + ["x" * 1_000_000 + " so the answer is $\\boxed{4}$"]
    start = time.perf_counter()
    config = RewardConfig(timeout_s=TIMEOUT_S, mode="format_aware")
    verdicts = score(responses, ["1"] * len(OVER_BUDGET) + ["4"], config=config, pool=pool)
    # Three checks reach the workers (two at a time); the rest stop at extraction.
    assert time.perf_counter() - start < 2 * TIMEOUT_S + 2.0
    for name, verdict in zip(OVER_BUDGET, verdicts):
        assert verdict.timed_out and not verdict.correct, name
        assert verdict.reward == config.no_answer_reward or verdict.boxed, name
    assert verdicts[-1].correct and not verdicts[-1].timed_out  # 1 MB, but a short answer
    assert pool.timeouts - timeouts_before == 3  # the checks that ran out of time
    again = pool.check([p for p, _ in SYMBOLIC_TRUE], [g for _, g in SYMBOLIC_TRUE])
    assert all(r.correct and not r.timed_out for r in again)


def test_a_prediction_over_the_cap_is_a_timeout_without_a_worker(pool):
    before = (pool.timeouts, pool.symbolic)
    [result] = pool.check(["1+" * MAX_ANSWER_CHARS + "1"], ["1"])
    assert result.timed_out and not result.correct
    assert (pool.timeouts, pool.symbolic) == (before[0] + 1, before[1])


@pytest.mark.parametrize(
    "error, status",
    [
        (MemoryError, worker_module.STATUS_TIMEOUT),
        (RecursionError, worker_module.STATUS_TIMEOUT),
        (ValueError, worker_module.STATUS_ERROR),
    ],
)
def test_running_out_of_memory_or_stack_is_over_budget(monkeypatch, error, status):
    def explode(*args, **kwargs):
        raise error

    monkeypatch.setattr(worker_module, "is_equivalent", explode)
    assert worker_module.check_one("1", "1", 1e-4, 5.0) == (False, status)


def test_a_worker_dying_mid_check_is_a_timeout(pool):
    crashes_before, timeouts_before = pool.crashes, pool.timeouts
    victims = pool.worker_pids()

    def kill_them():
        time.sleep(0.3)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would

    killer = threading.Thread(target=kill_them)
    killer.start()
    results = pool.check(EXPLOSIVE[:2], ["1", "1"], timeout_s=5.0)
    killer.join()
    assert all(r.timed_out and not r.correct for r in results)
    assert pool.crashes - crashes_before == 2 and pool.timeouts - timeouts_before == 2
    assert not set(victims) & set(pool.worker_pids())


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


def test_model_text_is_not_executed_in_workers(pool):
    directory = tempfile.mkdtemp(prefix="zero_rl_safety_")
    try:
        responses = [text for payload in payloads(directory) for text in model_texts(payload)]
        symbolic_before = pool.symbolic
        # A symbolic gold, so that the cheap checks leave them to the workers.
        verdicts = score(responses, [r"\sqrt{2}"] * len(responses), pool=pool)
        assert not any(v.correct for v in verdicts)
        assert pool.symbolic - symbolic_before >= len(responses) // 2  # the sympy stage saw them
        assert os.listdir(directory) == []
    finally:
        shutil.rmtree(directory)


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
