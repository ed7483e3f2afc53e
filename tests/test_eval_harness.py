"""run_benchmarks on a tiny random model and the real benchmark files (a few problems each):
the files it writes, a recount of its summary, resume after an interruption, TensorBoard."""

import json
import math
import os

import numpy as np
import pytest
from flax import nnx

from zero_rl.data import load_benchmark
from zero_rl.data.templates import cut_at_stop_string
from zero_rl.eval import RECORD_FIELDS, EvalSet, harness, run_benchmarks
from zero_rl.models import ModelConfig, create_model
from zero_rl.rewards import RewardConfig, VerifierPool, score
from zero_rl.tokenizer import train_sentencepiece
from zero_rl.train.evaluate import evaluate
from zero_rl.train.metrics import SummaryWriter, read_scalars

SIX = ["gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23"]
MAX_NEW_TOKENS = 12
# Picks up a number in most random responses, so that verdicts are not all "no answer".
REWARD = RewardConfig(last_number_fallback=True, num_workers=1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    names = ["gsm8k_test", "math500", "minerva_math", "olympiadbench", "aime24", "amc23"]
    texts = [f"{ex.prompt} {ex.answer}" for n in names for ex in load_benchmark(n, limit=20)]
    texts += ["Wait, let me recheck. The answer is \\boxed{5}. </answer>"] * 5
    return train_sentencepiece(
        texts, vocab_size=400, model_prefix=tmp_path_factory.mktemp("tok") / "bench"
    )


@pytest.fixture(scope="module")
def policy(tokenizer):
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16, mlp_dim=64, max_position=1024)  # fmt: skip
    return nnx.split(create_model(cfg, seed=0))


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(1) as p:
        yield p


def _run(policy, tokenizer, pool, out_dir, **kwargs):
    defaults = dict(
        tokenizer=tokenizer, out_dir=str(out_dir), template="plain", num_samples=2,
        temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, max_prompt_len=512, batch_size=1,
        reward=REWARD, pool=pool, progress=False,
    )  # fmt: skip
    return run_benchmarks(*policy, **(defaults | kwargs))


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_six_benchmarks_summary_equals_recount_from_jsonl(policy, tokenizer, pool, tmp_path):
    writer = SummaryWriter(str(tmp_path / "tb"))
    summary = _run(policy, tokenizer, pool, tmp_path, benchmarks=SIX, limit=2, num_samples=3,
                   batch_size=2, writer=writer, step=7)  # fmt: skip
    writer.close()
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    tb = read_scalars(str(tmp_path / "tb"))
    accuracies = []
    for name in SIX:
        records = _read_jsonl(tmp_path / name / "generations.jsonl")
        shipped = load_benchmark("gsm8k_test" if name == "gsm8k" else name, limit=2)
        assert [r["id"] for r in records] == [ex.id for ex in shipped for _ in range(3)]
        assert [r["gold"] for r in records] == [ex.answer for ex in shipped for _ in range(3)]
        assert all(tuple(r) == RECORD_FIELDS for r in records)
        for r in records:
            assert 1 <= r["length"] <= MAX_NEW_TOKENS
            assert r["length"] == MAX_NEW_TOKENS or not r["truncated"]
        # Independent regrading and recount.
        verdicts = score([r["response"] for r in records], [r["gold"] for r in records],
                         config=REWARD, pool=pool)  # fmt: skip
        assert [v.correct for v in verdicts] == [r["correct"] for r in records]
        assert [v.extracted for v in verdicts] == [r["extracted"] for r in records]
        correct_pn = np.array([r["correct"] for r in records]).reshape(2, 3)
        s = summary["benchmarks"][name]
        assert s["accuracy"] == pytest.approx(correct_pn.mean())
        for k in (1, 2, 3):
            per_problem = [1 - math.comb(3 - c, k) / math.comb(3, k) for c in correct_pn.sum(1)]
            assert s[f"pass@{k}"] == pytest.approx(np.mean(per_problem))
        lengths = np.array([r["length"] for r in records], np.float64)
        assert s["mean_length"] == pytest.approx(lengths.mean())
        assert s["truncated_ratio"] == pytest.approx(np.mean([r["truncated"] for r in records]))
        assert s["boxed_ratio"] == pytest.approx(np.mean([r["boxed"] for r in records]))
        assert s["no_answer_ratio"] == pytest.approx(
            np.mean([r["extracted"] is None for r in records])
        )
        assert tb[f"eval/{name}/accuracy"] == [(7, pytest.approx(s["accuracy"]))]
        accuracies.append(s["accuracy"])
    assert summary["average"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert tb["eval/average/accuracy"] == [(7, pytest.approx(np.mean(accuracies)))]
    assert any(r["extracted"] is not None for r in records)  # the grading path was exercised


def test_greedy_responses_equal_the_trainers_evaluate(policy, tokenizer, pool, tmp_path):
    examples = load_benchmark("amc23", limit=3)
    summary = _run(policy, tokenizer, pool, tmp_path, benchmarks=[EvalSet("amc", examples)],
                   num_samples=1, temperature=0.0, batch_size=2)  # fmt: skip
    reference = evaluate(
        *policy,
        examples,
        tokenizer=tokenizer,
        template="plain",
        max_prompt_len=512,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=2,
        stop_token_ids=tokenizer.stop_token_ids,
        reward=REWARD,
        pool=pool,
    )
    records = _read_jsonl(tmp_path / "amc" / "generations.jsonl")
    assert [r["response"] for r in records] == reference.texts
    assert [r["length"] for r in records] == reference.lengths.tolist()
    assert summary["benchmarks"]["amc"]["accuracy"] == pytest.approx(reference.accuracy)


def test_resume_after_interruption_writes_no_duplicates(
    policy, tokenizer, pool, tmp_path, monkeypatch
):
    kwargs = dict(benchmarks=["aime24", "math500"], limit=3)
    full = _run(policy, tokenizer, pool, tmp_path / "full", **kwargs)

    real_generate, calls = harness._generate, []

    def interrupted_generate(*args):
        calls.append(1)
        if len(calls) == 5:  # aime24's three batches and math500's first are written by now
            raise KeyboardInterrupt
        return real_generate(*args)

    monkeypatch.setattr(harness, "_generate", interrupted_generate)
    with pytest.raises(KeyboardInterrupt):
        _run(policy, tokenizer, pool, tmp_path / "resumed", **kwargs)
    partial = tmp_path / "resumed" / "math500" / "generations.jsonl"
    assert len(_read_jsonl(partial)) == 2
    with open(partial, "a") as f:  # a crash in the middle of an append
        f.write('{"id": "math500/test/precalculus/80')
    calls.clear()
    resumed = _run(policy, tokenizer, pool, tmp_path / "resumed", **kwargs)
    assert len(calls) == 2  # only math500's last two problems are generated again
    for name in ("aime24", "math500"):
        got = _read_jsonl(tmp_path / "resumed" / name / "generations.jsonl")
        want = _read_jsonl(tmp_path / "full" / name / "generations.jsonl")
        assert got == want
        assert len({(r["id"], r["sample"]) for r in got}) == len(got) == 6
    assert resumed["benchmarks"] == full["benchmarks"]

    calls.clear()  # a finished run does nothing but summarise
    assert _run(policy, tokenizer, pool, tmp_path / "resumed", **kwargs) == resumed
    assert not calls


def test_rerun_with_other_settings_is_refused(policy, tokenizer, pool, tmp_path):
    _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=1)
    with pytest.raises(ValueError, match=r"other settings \(temperature: 1.0 -> 0.5"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=1, temperature=0.5)
    with pytest.raises(ValueError, match=r"other settings \(step: 0 -> 100"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=1, step=100)


def test_bad_arguments(policy, tokenizer, pool, tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'; valid names: .*math500"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["gsm9k"])
    with pytest.raises(ValueError, match="names repeat"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23", "amc23"], limit=1)
    with pytest.raises(ValueError, match="unknown template"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], template="chatml")
    with pytest.raises(ValueError, match=r"ks=\[4\] must lie in \[1, num_samples=2\]"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], ks=[4])
    with pytest.raises(ValueError, match="batch_size >= 1"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], batch_size=0)
    with pytest.raises(ValueError, match=r"problem amc23/\d+ of amc23 has a prompt of \d+ tokens"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], max_prompt_len=64)
    assert not os.path.exists(tmp_path / "summary.json")


def test_stop_strings(tokenizer):
    assert cut_at_stop_string("a </answer> b </x>", ["</x>", "</answer>"]) == "a </answer>"
    assert cut_at_stop_string("no stop here", ["</answer>"]) is None
    # "</answer>" is one token of this vocabulary, so r1_zero's stop string stops the sampler.
    answer_end = tokenizer.token_to_id("</answer>")
    assert harness.default_stop_token_ids(tokenizer, "r1_zero") == [tokenizer.eos_id, answer_end]
    assert harness.default_stop_token_ids(tokenizer, "plain") == [tokenizer.eos_id]


def test_responses_are_cut_at_a_multi_token_stop_string(tokenizer, pool):
    # "<|im_end|>" is not one token here, so the sampler runs on past it to the cap.
    assert tokenizer.token_to_id("<|im_end|>") is None
    text = "so \\boxed{5}<|im_end|> and then \\boxed{6}"
    ids = tokenizer.encode(text)
    run = harness._Run(
        graphdef=None, params=None, tokenizer=tokenizer, num_samples=1, temperature=0.0,
        top_p=1.0, top_k=0, max_new_tokens=len(ids), max_prompt_len=512, batch_size=1,
        stop_token_ids=(tokenizer.eos_id,), reward=REWARD, pool=pool, batch_sharding=None,
        is_main=True,
    )  # fmt: skip
    example = load_benchmark("amc23", limit=1)[0]
    (record,) = harness._grade(
        run, [example], "qwen_boxed", np.array([ids]), np.array([len(ids)]), np.array([False])
    )
    assert record["response"] == "so \\boxed{5}<|im_end|>"
    assert record["extracted"] == "5" and record["truncated"] is False
    assert record["length"] == len(tokenizer.encode("so \\boxed{5}<|im_end|>")) < len(ids)
