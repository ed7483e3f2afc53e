"""Rejection sampling: the selection rules on hand-written responses, then whole runs, graded by
the real verifier, on a tiny model built to answer in a few known ways (so some responses are
right, some repeat, some are cut at the token budget); resume and refusal; bad input; the
launcher, whose output SFT reads."""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zero_rl import config as config_lib
from zero_rl.checkpoint import Checkpointer
from zero_rl.eval.pass_rate import Sampling, load_source, sample_pass_rates, settings_path
from zero_rl.eval.rejection import (
    PAIR_FIELDS,
    SAMPLE_FIELDS,
    default_samples_path,
    load_prompts,
    read_samples,
    rejection_sample,
    select_responses,
)
from zero_rl.models import create_model
from zero_rl.rewards import RewardConfig, VerifierPool, score
from zero_rl.sampling import SamplingOptions
from zero_rl.tasks import make_task
from zero_rl.tokenizer import load_tokenizer
from zero_rl.train.sft import read_sft_pairs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TOKENIZER = os.path.join(REPO, "zero_rl", "assets", "tiny_addition.model")
K = 6
GOLDS = ["5", "7", "5", "5", "7", "5"]  # the model always answers 5: the 7s get nothing kept
REWARD = RewardConfig(num_workers=1)  # strict: a \boxed{} answer is required
# What the model writes: an optional "W", then \boxed{5}, then an end of text, a space and an
# end of text, or newlines up to the token budget (a right answer, but a truncated response).
RESPONSE = re.compile(r"W?\\boxed\{5\}( |\n*)")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY_TOKENIZER)


@pytest.fixture(scope="module")
def policy(tokenizer):
    """The tiny config's model with its layers' outputs zeroed and one-hot embeddings: the
    next token depends on the last one only, by the table below, at even odds."""
    config = config_lib.load_config(os.path.join(REPO, "configs", "tiny.py"))
    model_cfg = config_lib.model_config(config, tokenizer.vocab_size)
    graphdef, params = nnx.split(create_model(model_cfg, seed=0))
    ids = {tokenizer.decode([i]): i for i in range(tokenizer.vocab_size)}
    successors = {"?\n": ["\\", "W"], "W": ["\\"], "\\": ["boxed"], "boxed": ["{"], "{": ["5"],
                  "5": ["}"], "}": [None, " ", "\n"], " ": [None], "\n": ["\n"]}  # fmt: skip
    vocab, dim = tokenizer.vocab_size, model_cfg.embed_dim
    head = np.zeros((dim, vocab), np.float32)
    head[:vocab, tokenizer.eos_id] = 10.0  # any other token: end the response
    for token, nexts in successors.items():
        head[ids[token]] = 0.0
        head[ids[token], [tokenizer.eos_id if n is None else ids[n] for n in nexts]] = 10.0
    # The final norm scales a one-hot row by sqrt(dim) = 8: logits of 80 against 0.
    new = {("embed",): jnp.eye(vocab, dim), ("lm_head",): jnp.asarray(head)}
    for path, var in nnx.to_flat_state(params):
        if path[-1] in ("o_proj", "down_proj"):
            new[tuple(path)] = jnp.zeros_like(var.get_value())
    params = nnx.map_state(
        lambda path, var: var.replace(new[tuple(path)]) if tuple(path) in new else var, params
    )
    return graphdef, params


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(1) as p:
        yield p


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    rows = [{"problem": f"What is {i} + {g}?\n", "answer": g} for i, g in enumerate(GOLDS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _options(**changes):
    return SamplingOptions(
        **(dict(max_new_tokens=10, max_prompt_len=16, temperature=1.0) | changes)
    )


def _sampling(**changes):
    options = _options(**{k: changes.pop(k) for k in ("temperature",) if k in changes})
    # Batches of 4 and 2 prompts: the second repeats a prompt to keep its shape.
    kwargs = dict(template="plain", k=K, batch_size=4, options=options, seed=0, reward=REWARD)
    return Sampling(**(kwargs | changes))


def _run(policy, tokenizer, pool, source, directory, **kwargs):
    kwargs = dict(output_path=directory / "pairs.jsonl", max_per_prompt=1, pool=pool,
                  progress=False, policy_name="chain model") | kwargs  # fmt: skip
    sampling = kwargs.pop("sampling", _sampling())
    return rejection_sample(policy, tokenizer, source, sampling, **kwargs)


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return _read_jsonl_text(f.read())


def _read_jsonl_text(text):
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    "responses, correct, stopped, cap, kept, counts",
    [
        # verified only
        (["a", "b", "c"], [True, False, True], [True] * 3, None, (0, 2), (2, 0, 0, 0)),
        # duplicates after whitespace normalisation; case still tells texts apart
        (["x  y", " x y\n", "x\ty", "X y"], [True] * 4, [True] * 4, None, (0, 3), (4, 0, 2, 0)),
        # a truncated response is dropped even when right, and does not claim its text
        (["p", "p", "q"], [True] * 3, [False, True, False], None, (1,), (3, 2, 0, 0)),
        # the cap keeps the first distinct ones; a repeat past the cap is a duplicate
        (["a", "a", "b", "c", "d"], [True] * 5, [True] * 5, 2, (0, 2), (5, 0, 1, 2)),
        (["a", "b"], [True, True], [True, True], 1, (0,), (2, 0, 0, 1)),
        (["a", "b"], [False, False], [True, True], 1, (), (0, 0, 0, 0)),
        ([], [], [], 3, (), (0, 0, 0, 0)),
    ],
)
def test_select_responses(responses, correct, stopped, cap, kept, counts):
    chosen = select_responses(responses, correct, stopped, max_per_prompt=cap)
    assert chosen.kept == kept
    assert (chosen.num_verified, chosen.num_truncated, chosen.num_duplicates,
            chosen.num_capped) == counts  # fmt: skip
    assert len(kept) == counts[0] - sum(counts[1:])


def test_select_responses_rejects_bad_input():
    with pytest.raises(ValueError, match="2 responses, 1 verdicts and 2 stop flags"):
        select_responses(["a", "b"], [True], [True, True])
    with pytest.raises(ValueError, match="max_per_prompt must be >= 1 or None, got 0"):
        select_responses(["a"], [True], [True], max_per_prompt=0)


def test_kept_pairs_are_the_verified_finished_distinct_responses(
    policy, tokenizer, pool, data_file, tmp_path
):
    source = load_source(str(data_file))
    summary = _run(policy, tokenizer, pool, source, tmp_path)
    samples = _read_jsonl(default_samples_path(tmp_path / "pairs.jsonl"))
    assert [s["id"] for s in samples] == [ex.id for ex in source.examples]
    for line, example in zip(samples, source.examples):
        assert list(line) == list(SAMPLE_FIELDS) and line["k"] == K
        assert all(RESPONSE.fullmatch(text) for text in line["responses"]), line["responses"]
        # Truncated exactly when the newline loop ran into the token budget.
        assert line["stopped"] == [not text.endswith("\n") for text in line["responses"]]
        verdicts = score(line["responses"], [example.answer] * K, config=REWARD, pool=pool)
        assert line["correct"] == [v.correct for v in verdicts] == [example.answer == "5"] * K
        assert line["num_correct"] == sum(line["correct"])

    pairs = _read_jsonl(tmp_path / "pairs.jsonl")
    expected = []
    for line, example in zip(samples, source.examples):
        finished = [i for i, ok in enumerate(line["stopped"]) if ok and line["correct"][i]]
        if finished:  # the cap of 1 keeps the first
            i = finished[0]
            expected.append({"id": example.id, "prompt": example.prompt,
                             "response": line["responses"][i], "answer": example.answer,
                             "extracted": "5", "template": "plain", "sample": i})  # fmt: skip
    assert pairs == expected and all(list(p) == list(PAIR_FIELDS) for p in pairs)
    assert all(p["prompt"].startswith("What is") for p in pairs)  # the raw question

    verified = [(line["responses"][i], line["stopped"][i]) for line in samples
                for i in range(K) if line["correct"][i]]  # fmt: skip
    assert (summary.num_prompts, summary.num_sampled_now, summary.num_responses) == (6, 6, 36)
    assert summary.num_verified == len(verified) == 4 * K
    assert summary.num_truncated == sum(not finished for _, finished in verified)
    assert summary.num_kept == len(pairs) == 4 and summary.num_prompts_without == 2
    assert (summary.num_kept + summary.num_truncated + summary.num_duplicates
            + summary.num_capped) == summary.num_verified  # fmt: skip
    # This run must drop some of each kind, or the checks above could not fail.
    assert min(summary.num_truncated, summary.num_duplicates, summary.num_capped) > 0, summary
    assert "kept 4 in" in summary.format() and "2 prompts with none kept" in summary.format()

    # SFT reads the file with its default fields.
    read = read_sft_pairs(tmp_path / "pairs.jsonl", prompt_field="prompt",
                          response_field="response")  # fmt: skip
    assert read.pairs == [(p["prompt"], p["response"]) for p in pairs]

    # The responses and pass rates are pass-rate filtering's for the same sampling.
    rates = [r for batch in sample_pass_rates(policy, tokenizer, source.examples, _sampling(),
                                              pool=pool) for r in batch]  # fmt: skip
    assert [list(r.responses) for r in rates] == [s["responses"] for s in samples]
    assert [r.num_correct for r in rates] == [s["num_correct"] for s in samples]


def test_resume_refusal_and_overwrite(policy, tokenizer, pool, data_file, tmp_path):
    source = load_source(str(data_file))
    samples_path = default_samples_path(tmp_path / "pairs.jsonl")
    first = _run(policy, tokenizer, pool, source, tmp_path)
    complete, pairs = samples_path.read_text(), (tmp_path / "pairs.jsonl").read_text()

    # Cut after the first batch of 4, with a torn line: the rerun samples the last batch only,
    # and draws what the uninterrupted run did.
    lines = complete.splitlines(keepends=True)
    samples_path.write_text("".join(lines[:4]) + lines[4][:20])
    resumed = _run(policy, tokenizer, pool, source, tmp_path)
    assert resumed.num_sampled_now == 2 and samples_path.read_text() == complete
    assert (tmp_path / "pairs.jsonl").read_text() == pairs and resumed.num_kept == first.num_kept
    assert _run(policy, tokenizer, pool, source, tmp_path).num_sampled_now == 0

    # Fewer prompts: nothing sampled, the samples of the others kept, their pairs left out.
    fewer = _run(policy, tokenizer, pool, load_source(str(data_file), limit=2), tmp_path)
    assert fewer.num_sampled_now == 0 and samples_path.read_text() == complete
    assert _read_jsonl(tmp_path / "pairs.jsonl") == _read_jsonl_text(pairs)[:1]

    with pytest.raises(ValueError, match=r"other settings \(temperature: 1.0 -> 0.7\)"):
        _run(policy, tokenizer, pool, source, tmp_path, sampling=_sampling(temperature=0.7))
    with pytest.raises(ValueError, match=r"other settings \(max_per_prompt: 1 -> 2\)"):
        _run(policy, tokenizer, pool, source, tmp_path, max_per_prompt=2)
    with pytest.raises(ValueError, match=r"other settings \(policy: 'chain model' -> 'other'\)"):
        _run(policy, tokenizer, pool, source, tmp_path, policy_name="other")
    assert samples_path.read_text() == complete  # a refused run writes nothing

    settings = settings_path(samples_path)
    saved = settings.read_text()
    settings.unlink()
    with pytest.raises(ValueError, match="pairs.samples.settings.json does not"):
        _run(policy, tokenizer, pool, source, tmp_path)
    settings.write_text(saved)
    samples_path.rename(tmp_path / "moved.jsonl")
    with pytest.raises(FileExistsError, match="pairs.jsonl exists but its samples file"):
        _run(policy, tokenizer, pool, source, tmp_path)

    again = _run(policy, tokenizer, pool, source, tmp_path, overwrite=True, max_per_prompt=2)
    assert again.num_sampled_now == 6 and samples_path.read_text() == complete
    assert again.num_kept > first.num_kept  # the second distinct answers are kept now


def test_bad_inputs_give_clear_errors(policy, tokenizer, pool, data_file, tmp_path):
    source = load_source(str(data_file))
    for kwargs, error, message in (
        ({"output_path": tmp_path / "pairs.txt"}, ValueError, "pairs.txt must end in .jsonl"),
        ({"samples_path": tmp_path / "pairs.jsonl"}, ValueError, "cannot both go to"),
        ({"max_per_prompt": 0}, ValueError, "max_per_prompt must be >= 1 or None, got 0"),
        ({"sampling": _sampling(reward=RewardConfig(extraction="lenient"))}, ValueError,
         "extraction is 'lenient': training targets must be graded strictly"),
        ({"sampling": _sampling(options=_options(max_prompt_len=4))}, ValueError,
         r"problem problems/1 of problems has a prompt of 9 tokens, more than max_prompt_len=4"),
    ):  # fmt: skip
        with pytest.raises(error, match=message):
            _run(policy, tokenizer, pool, source, tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())  # every check comes before anything is written
    with pytest.raises(ValueError, match="k must be >= 1"):
        _sampling(k=0)
    with pytest.raises(ValueError, match=r"unknown data 'math501'"):
        load_source("math501")
    rates = tmp_path / "rates.jsonl"  # pass-rate filtering's file, saved without responses
    rates.write_text('{"id": "a", "pass_rate": 0.5, "num_correct": 2, "k": 4}\n')
    with pytest.raises(ValueError, match="not a rejection-sampling samples file"):
        read_samples(rates)


def test_load_prompts_reads_a_task_training_split(data_file):
    options = dict(min_numbers=3, max_numbers=3, max_number=15, train_size=20, eval_size=5)
    source = load_prompts("countdown", task_options=options, limit=4)
    assert list(source.examples) == make_task("countdown", options).split("train")[:4]
    assert {ex.source for ex in source.examples} == {"countdown"}  # graded by its verifier
    other = load_prompts("countdown", task_options=options | {"seed": 1}, limit=4)
    assert other.origin != source.origin  # a resume with other problems is refused
    # Anything else is pass-rate filtering's data.
    assert load_prompts(str(data_file)).examples == load_source(str(data_file)).examples
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_prompts("countdown", limit=0)


def _launch(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "rejection_sample.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_launcher_writes_pairs_sft_reads(policy, data_file, tmp_path):
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
    ckpt.save(3, {"params": policy[1]}, {"step": 3})
    ckpt.close()
    output = tmp_path / "out" / "rft.jsonl"
    args = [f"--checkpoint={tmp_path / 'run'}", f"--data={data_file}", f"--output={output}",
            f"--k={K}", "--batch_size=8", "--max_per_prompt=2", "--progress=false",
            "--config.sampling.max_new_tokens=10",
            "--config.data.answer_from_solution=false"]  # fmt: skip
    result = _launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "template=plain k=6" in result.stderr and "step 3" in result.stderr
    pairs = _read_jsonl(output)
    read = read_sft_pairs(output, prompt_field="prompt", response_field="response")
    assert read.pairs == [(p["prompt"], p["response"]) for p in pairs] and read.num_skipped == 0
    # Only the prompts answered 5, at most 2 distinct finished responses each.
    by_prompt = {}
    for p in pairs:
        assert p["answer"] == "5" and p["template"] == "plain"
        assert re.fullmatch(r"W?\\boxed\{5\} ?", p["response"]), p["response"]
        by_prompt.setdefault(p["id"], set()).add(" ".join(p["response"].split()))
    assert sorted(by_prompt) == ["problems/1", "problems/3", "problems/4", "problems/6"]
    assert all(len(texts) == sum(p["id"] == i for p in pairs) <= 2
               for i, texts in by_prompt.items())  # fmt: skip
    assert f"kept {len(pairs)} in {output}" in result.stdout
    assert f"--config.data.source={output} --config.data.template=plain" in result.stdout

    # A rerun with another cap is refused, naming only the cap: the policy's fingerprint and the
    # other settings read the same in a new process, so the same command would resume.
    refused = _launch(*[a.replace("max_per_prompt=2", "max_per_prompt=1") for a in args])
    assert refused.returncode == 2 and _read_jsonl(output) == pairs
    assert "other settings (max_per_prompt: 2 -> 1);" in refused.stderr, refused.stderr[-2000:]


def test_launcher_bad_input(tmp_path):
    output = f"--output={tmp_path / 'out.jsonl'}"
    for args, message in (
        (["--data=math501", "--hf_model=/nowhere"], "error: unknown data 'math501'"),
        (["--data=amc23", "--k=0", f"--checkpoint={tmp_path}"], "error: k must be >= 1, got 0"),
    ):
        result = _launch(*args, output)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not list(tmp_path.iterdir())
