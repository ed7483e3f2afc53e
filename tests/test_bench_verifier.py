"""bench/verifier.py at a tiny size: both sides run on the same batches and the record adds up."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import verifier  # noqa: E402
from zero_rl.rewards import normalize_gold  # noqa: E402


def test_synthetic_mix_is_a_grpo_batch():
    responses, golds = verifier.synthetic_mix(16, 4, 0, verifier.GOLDS)
    assert len(responses) == len(golds) == 64
    assert all(golds[i] == golds[i - i % 4] for i in range(64))  # 4 samples per prompt
    assert all(normalize_gold(gold) == gold for gold in golds)
    assert (responses, golds) == verifier.synthetic_mix(16, 4, 0, verifier.GOLDS)
    assert responses != verifier.synthetic_mix(16, 4, 1, verifier.GOLDS)[0]
    boxed = sum("\\boxed{" in r for r in responses)
    assert 0.6 * len(responses) < boxed < 0.95 * len(responses)  # 85% box an answer


def test_warm_up_and_timed_batches_share_no_real_answer():
    warm, timed = verifier.GOLDS[0::2], verifier.GOLDS[1::2]
    assert not {gold for gold, _, _ in warm} & {gold for gold, _, _ in timed}


def test_main_writes_a_consistent_record(tmp_path, capsys):
    out = tmp_path / "verifier.json"
    argv = ["--num-prompts", "4", "--group-size", "2", "--rounds", "2", "--num-workers", "1"]
    summary = verifier.main([*argv, "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["summary"] == pytest.approx(summary)
    rounds = record["rounds"]
    assert [row["round"] for row in rounds] == [0, 1] and summary["responses"] == 16
    for row in rounds:
        assert row["zero_rl"] > 0 and row["math-verify"] > 0
        assert row["ratio"] == pytest.approx(row["math-verify"] / row["zero_rl"])
        assert 0 <= row["symbolic"] <= 1 and row["timeouts"] == 0
    total = sum(row["math-verify"] for row in rounds) / sum(row["zero_rl"] for row in rounds)
    assert summary["ratio"] == pytest.approx(total)
    printed = capsys.readouterr().out
    assert "ratio zero_rl / math-verify" in printed and "round 1:" in printed
