"""run_benchmarks on a tiny random model and the real benchmark files (a few problems each):
the files it writes, a recount of its summary, resume after an interruption, TensorBoard."""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
from flax import nnx

from zero_rl.data import load_benchmark
from zero_rl.data.templates import cut_at_stop_string, stop_token_ids
from zero_rl.eval import (
    RECORD_FIELDS,
    EvalSet,
    grade_outputs,
    harness,
    metrics,
    params_fingerprint,
    run_benchmarks,
    summarize,
)
from zero_rl.eval.metrics import REFLECTION_WORDS
from zero_rl.models import ModelConfig, create_model
from zero_rl.rewards import RewardConfig, VerifierPool, score
from zero_rl.sampling import SamplingOptions, with_template_stops
from zero_rl.summaries import SummaryWriter, read_scalars
from zero_rl.tokenizer import train_sentencepiece
from zero_rl.train.evaluate import evaluate

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


# Decoding keywords of `_run`, gathered into its `sampling` (a SamplingOptions).
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "max_prompt_len")


def _run(policy, tokenizer, pool, out_dir, **kwargs):
    decoding = dict(temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, max_prompt_len=512)
    decoding |= {k: kwargs.pop(k) for k in _SAMPLING_KEYS if k in kwargs}
    defaults = dict(
        tokenizer=tokenizer, out_dir=str(out_dir), template="plain", num_samples=2,
        sampling=SamplingOptions(**decoding), batch_size=1, reward=REWARD, pool=pool,
        progress=False,
    )  # fmt: skip
    return run_benchmarks(*policy, **(defaults | kwargs))


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def six_run(policy, tokenizer, pool, tmp_path_factory):
    """The six benchmarks, 2 problems x 3 samples each, with TensorBoard at step 7."""
    out = tmp_path_factory.mktemp("six")
    writer = SummaryWriter(str(out / "tb"))
    summary = _run(policy, tokenizer, pool, out, benchmarks=SIX, limit=2, num_samples=3,
                   batch_size=2, writer=writer, step=7)  # fmt: skip
    writer.close()
    return out, summary


def _whole_word_count(text, phrase):
    """Occurrences of `phrase` as whole words (any case), from a word split of `text`."""
    words = [(m.group().lower(), m.start(), m.end()) for m in re.finditer(r"\w+", text)]
    parts = phrase.split(" ")
    return sum(
        all(words[i + j][0] == part for j, part in enumerate(parts))
        and all(text[words[i + j][2] : words[i + j + 1][1]] == " " for j in range(len(parts) - 1))
        for i in range(len(words) - len(parts) + 1)
    )


def _coverage(text, tail_chars=2000, ngram=20, min_repeats=3):
    """Repeated-n-gram coverage of the tail, position by position."""
    tail = text[-tail_chars:]
    if len(tail) < ngram * min_repeats:
        return 0.0
    grams = [tail[i : i + ngram] for i in range(len(tail) - ngram + 1)]
    covered = np.zeros(len(tail), bool)
    for i, gram in enumerate(grams):
        if grams.count(gram) >= min_repeats:
            covered[i : i + ngram] = True
    return covered.mean()


def _majority_correct(answers, correct):
    """Vote by counting, for each answered sample, the samples with the same answer; the
    first sample with the most votes represents the vote."""
    votes = [
        -1 if a is None else sum(b is not None and metrics.same_answer(b, a) for b in answers)
        for a in answers
    ]
    best = int(np.argmax(votes))
    return votes[best] > 0 and correct[best]


def _recount(records, n):
    """Every number of `summarize` for records of problems with n samples each, recomputed."""
    correct_pn = np.array([r["correct"] for r in records]).reshape(-1, n)
    lengths = np.array([r["length"] for r in records], np.float64)
    right = correct_pn.reshape(-1)
    texts = [r["response"] for r in records]
    counts = [{w: _whole_word_count(t, w) for w in REFLECTION_WORDS} for t in texts]
    out = {
        "num_problems": correct_pn.shape[0],
        "num_responses": len(records),
        "samples_per_problem": n,
        "accuracy": correct_pn.mean(),
        f"avg@{n}": correct_pn.mean(),
        "mean_length": lengths.mean(),
        "mean_length_correct": lengths[right].mean() if right.any() else None,
        "mean_length_wrong": lengths[~right].mean() if (~right).any() else None,
        "truncated_ratio": np.mean([r["truncated"] for r in records]),
        "boxed_ratio": np.mean([r["boxed"] for r in records]),
        "no_answer_ratio": np.mean([r["extracted"] is None for r in records]),
        "reflection_ratio": np.mean([any(c.values()) for c in counts]),
        "reflection_words_per_response": {
            w: np.mean([c[w] for c in counts]) for w in REFLECTION_WORDS
        },
        "repetition_ratio": np.mean([_coverage(t) >= 0.8 for t in texts]),
        "verifier_timeouts": sum(r["timed_out"] for r in records),
    }
    for k in range(1, n + 1):
        out[f"pass@{k}"] = np.mean(
            [1 - math.comb(n - c, k) / math.comb(n, k) for c in correct_pn.sum(1)]
        )
    answers_pn = [[r["extracted"] for r in records[i : i + n]] for i in range(0, len(records), n)]
    for k in range(2, n + 1):
        out[f"maj@{k}"] = np.mean(
            [_majority_correct(a[:k], c[:k]) for a, c in zip(answers_pn, correct_pn)]
        )
    return out


def test_six_benchmarks_summary_equals_recount_from_jsonl(six_run, policy, pool):
    out, summary = six_run
    with open(out / "summary.json") as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    tb = read_scalars(str(out / "tb"))
    accuracies, answered = [], 0
    for name in SIX:
        records = _read_jsonl(out / name / "generations.jsonl")
        shipped = load_benchmark("gsm8k_test" if name == "gsm8k" else name, limit=2)
        assert [r["id"] for r in records] == [ex.id for ex in shipped for _ in range(3)]
        assert [r["sample"] for r in records] == [0, 1, 2] * 2
        assert [r["gold"] for r in records] == [ex.answer for ex in shipped for _ in range(3)]
        assert [r["prompt"] for r in records] == [ex.prompt for ex in shipped for _ in range(3)]
        assert all(tuple(r) == RECORD_FIELDS for r in records)
        for r in records:
            assert 1 <= r["length"] <= MAX_NEW_TOKENS
            assert r["length"] == MAX_NEW_TOKENS or not r["truncated"]
        # Independent regrading and recount of every number in the summary.
        verdicts = score([r["response"] for r in records], [r["gold"] for r in records],
                         config=REWARD, pool=pool)  # fmt: skip
        assert [v.correct for v in verdicts] == [r["correct"] for r in records]
        assert [v.extracted for v in verdicts] == [r["extracted"] for r in records]
        assert [v.boxed for v in verdicts] == [r["boxed"] for r in records]
        s = summary["benchmarks"][name]
        expected = _recount(records, 3)
        assert s.keys() == expected.keys()
        for key, value in expected.items():
            assert s[key] == pytest.approx(value), key
        assert summary["settings"][name]["num_samples"] == 3
        assert summary["settings"][name]["policy"] == params_fingerprint(policy[1])
        assert tb[f"eval/{name}/accuracy"] == [(7, pytest.approx(s["accuracy"]))]
        assert tb[f"eval/{name}/maj@3"] == [(7, pytest.approx(s["maj@3"]))]
        accuracies.append(s["accuracy"])
        answered += sum(r["extracted"] is not None for r in records)
    assert summary["step"] == 7 and list(summary["benchmarks"]) == SIX
    assert summary["average"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert tb["eval/average/accuracy"] == [(7, pytest.approx(np.mean(accuracies)))]
    assert answered > 0  # the grading path was exercised


def test_grading_the_harness_generations_reproduces_its_summary(six_run, pool, tmp_path):
    out, summary = six_run
    for name in SIX:
        graded = grade_outputs(str(out / name / "generations.jsonl"), str(tmp_path / name),
                               benchmark=name, reward=REWARD, pool=pool,
                               progress=False)  # fmt: skip
        assert graded["benchmarks"] == {name: summary["benchmarks"][name]}
        # The same lines, verdicts included, come back (the prompt is kept as the problem's).
        assert _read_jsonl(tmp_path / name / name / "generations.jsonl") == _read_jsonl(
            out / name / "generations.jsonl"
        )


def test_greedy_responses_equal_the_trainers_evaluate(policy, tokenizer, pool, tmp_path):
    examples = load_benchmark("amc23", limit=3)
    summary = _run(policy, tokenizer, pool, tmp_path, benchmarks=[EvalSet("amc", examples)],
                   num_samples=1, temperature=0.0, batch_size=2)  # fmt: skip
    reference = evaluate(
        *policy,
        examples,
        tokenizer=tokenizer,
        template="plain",
        sampling=with_template_stops(
            SamplingOptions(max_prompt_len=512, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0),
            tokenizer,
            "plain",
        ),
        batch_size=2,
        reward=REWARD,
        pool=pool,
    )
    records = _read_jsonl(tmp_path / "amc" / "generations.jsonl")
    assert [r["response"] for r in records] == reference.texts
    assert [r["length"] for r in records] == reference.lengths.tolist()
    assert summary["benchmarks"]["amc"]["accuracy"] == pytest.approx(reference.accuracy)


def test_summary_gathers_the_benchmarks_of_every_call(policy, tokenizer, pool, tmp_path):
    first = _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=2)
    # Another call, other sampling settings, the same policy: both benchmarks in summary.json.
    second = _run(policy, tokenizer, pool, tmp_path, benchmarks=["aime24"], limit=1,
                  num_samples=1, temperature=0.0)  # fmt: skip
    with open(tmp_path / "summary.json") as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(second))
    assert list(second["benchmarks"]) == ["amc23", "aime24"]
    assert second["benchmarks"]["amc23"] == first["benchmarks"]["amc23"]
    assert second["settings"]["amc23"]["num_samples"] == 2
    assert second["settings"]["aime24"]["num_samples"] == 1
    mean = first["benchmarks"]["amc23"]["accuracy"] + second["benchmarks"]["aime24"]["accuracy"]
    assert second["average"]["accuracy"] == pytest.approx(mean / 2)
    # Each benchmark's entry is what its own generations give.
    for name, n in (("amc23", 2), ("aime24", 1)):
        records = _read_jsonl(tmp_path / name / "generations.jsonl")
        assert second["benchmarks"][name] == summarize(records)
        assert len(records) == (2 if name == "amc23" else 1) * n
    # A benchmark whose directory was deleted drops out of the next summary.
    shutil.rmtree(tmp_path / "amc23")
    third = _run(policy, tokenizer, pool, tmp_path, benchmarks=["aime24"], limit=1,
                 num_samples=1, temperature=0.0)  # fmt: skip
    assert list(third["benchmarks"]) == ["aime24"]
    assert third["average"]["accuracy"] == third["benchmarks"]["aime24"]["accuracy"]


def test_bad_arguments(policy, tokenizer, pool, tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'; valid names: .*math500"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["gsm9k"])
    with pytest.raises(ValueError, match="names repeat"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23", "amc23"], limit=1)
    with pytest.raises(ValueError, match="unknown template"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], template="chatml")
    with pytest.raises(ValueError, match=r"ks=\[4\] must lie in \[1, num_samples=2\]"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], ks=[4])
    with pytest.raises(ValueError, match="temperature 0 is greedy decoding: all 2 samples"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], temperature=-1.0)
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
    assert stop_token_ids(tokenizer, "r1_zero") == [tokenizer.eos_id, answer_end]
    assert stop_token_ids(tokenizer, "plain") == [tokenizer.eos_id]


def test_responses_are_cut_at_a_multi_token_stop_string(tokenizer, pool):
    # "<|im_end|>" is not one token here, so the sampler runs on past it to the cap.
    assert tokenizer.token_to_id("<|im_end|>") is None
    text = "so \\boxed{5}<|im_end|> and then \\boxed{6}"
    ids = tokenizer.encode(text)
    sampling = with_template_stops(
        SamplingOptions(max_prompt_len=512, max_new_tokens=len(ids), temperature=0.0),
        tokenizer,
        "qwen_boxed",
    )
    assert sampling.stop_token_ids == (tokenizer.eos_id,)
    assert sampling.stop_strings == ("<|im_end|>",)
    run = harness._Run(
        graphdef=None, params=None, tokenizer=tokenizer, num_samples=1, sampling=sampling,
        batch_size=1, reward=REWARD, pool=pool, batch_sharding=None, is_main=True,
    )  # fmt: skip
    example = load_benchmark("amc23", limit=1)[0]
    (record,) = harness._grade(
        run, [example], "qwen_boxed", np.array([ids]), np.array([len(ids)]), np.array([False])
    )
    assert record["response"] == "so \\boxed{5}<|im_end|>"
    assert record["extracted"] == "5" and record["truncated"] is False
    assert record["length"] == len(tokenizer.encode("so \\boxed{5}<|im_end|>")) < len(ids)
    # The length counts the tokens up to the one that completed the stop string.
    n = record["length"]
    assert "<|im_end|>" in tokenizer.decode(ids[:n])
    assert "<|im_end|>" not in tokenizer.decode(ids[: n - 1])
