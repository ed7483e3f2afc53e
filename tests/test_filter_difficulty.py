"""Pass-rate filtering on a tiny random model: pass rates against a recount by the verifier and
the sampler, the kept set against the band, resume and re-filtering, errors, and the launcher."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from zero_rl import config as config_lib
from zero_rl.checkpoint import Checkpointer
from zero_rl.data import FieldMapping, RecordError, read_examples
from zero_rl.eval.pass_rate import (
    PASS_RATE_FIELDS,
    Sampling,
    filter_difficulty,
    load_source,
    read_pass_rates,
    sample_pass_rates,
    settings_path,
)
from zero_rl.models import ModelConfig, create_model
from zero_rl.rewards import RewardConfig, VerifierPool, score
from zero_rl.sampling import SamplingOptions, finish_responses, generate, with_template_stops
from zero_rl.tokenizer import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TOKENIZER = os.path.join(REPO, "zero_rl", "assets", "tiny_addition.model")
K = 4
# A random model writes stray digits: with the last-number fallback some are right, so pass
# rates spread over 0/k and the band instead of all being 0.
REWARD = RewardConfig(last_number_fallback=True, num_workers=1)
GOLDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY_TOKENIZER)


@pytest.fixture(scope="module")
def policy(tokenizer):
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16, mlp_dim=64, max_position=64)  # fmt: skip
    return nnx.split(create_model(cfg, seed=0))


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(1) as p:
        yield p


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """MATH-style records with an extra field, which the kept file must carry through."""
    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    rows = [{"problem": f"What is {i} + {g}?\n", "answer": str(g), "note": f"row {i}"}
            for i, g in enumerate(GOLDS)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


# Decoding keywords of `_sampling`, gathered into its `options` (a SamplingOptions).
_OPTION_KEYS = ("max_new_tokens", "max_prompt_len", "temperature", "top_p", "top_k")


def _options(**changes):
    return SamplingOptions(**(dict(max_new_tokens=8, max_prompt_len=16, temperature=1.0) | changes))


def _sampling(**changes):
    # Batches of 5, 5 and 2 prompts: the last repeats a prompt to keep its shape.
    options = {k: changes.pop(k) for k in _OPTION_KEYS if k in changes}
    kwargs = dict(template="plain", k=K, batch_size=5, options=_options(**options), seed=3,
                  reward=REWARD)  # fmt: skip
    return Sampling(**(kwargs | changes))


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _filter(policy, tokenizer, pool, source, directory, **kwargs):
    kwargs = dict(pass_rates_path=directory / "rates.jsonl", output_path=directory / "kept.jsonl",
                  pool=pool, progress=False) | kwargs  # fmt: skip
    sampling = kwargs.pop("sampling", _sampling())
    return filter_difficulty(policy, tokenizer, source, sampling, **kwargs)


def test_pass_rates_match_a_recount_and_the_kept_set_is_the_band(
    policy, tokenizer, pool, data_file, tmp_path
):
    path, rows = data_file
    source = load_source(str(path))
    summary = _filter(policy, tokenizer, pool, source, tmp_path, with_responses=True)
    lines = _read_jsonl(tmp_path / "rates.jsonl")
    assert [r["id"] for r in lines] == [ex.id for ex in source.examples]
    for line, example in zip(lines, source.examples):
        assert set(PASS_RATE_FIELDS) <= set(line) and line["k"] == K == len(line["responses"])
        recount = sum(v.correct for v in score(line["responses"], [example.answer] * K,
                                               config=REWARD, pool=pool))  # fmt: skip
        assert line["num_correct"] == recount == sum(line["correct"])
        assert line["pass_rate"] == recount / K
    counts = np.array([r["num_correct"] for r in lines])
    # The random model must give both kinds of prompt, or the band below could not fail.
    assert (counts == 0).any() and ((counts > 0) & (counts < K)).any(), counts
    assert summary.histogram == tuple(np.bincount(counts, minlength=K + 1))
    assert (summary.num_prompts, summary.num_sampled) == (len(rows), len(rows))

    # The kept file is the source's own records with 0 < num_correct < k, in source order.
    kept = _read_jsonl(tmp_path / "kept.jsonl")
    assert kept == [row for row, c in zip(rows, counts) if 0 < c < K]
    assert summary.num_kept == len(kept)
    # ...and reads back as training data (the default problem / answer fields).
    again = read_examples(tmp_path / "kept.jsonl").examples
    assert [(ex.prompt, ex.answer) for ex in again] == [(r["problem"], r["answer"]) for r in kept]

    # The responses are the sampler's: batch 0 again, with the same key and shape.
    prompts = tokenizer.batch_encode(
        [ex.prompt for ex in source.examples[:5]], add_bos=tokenizer.add_bos_default
    )
    options = with_template_stops(_options(), tokenizer, "plain")
    assert options.stop_token_ids == tokenizer.stop_token_ids
    out = generate(
        policy, prompts, options, num_samples=K, rng=jax.random.fold_in(jax.random.key(3), 0),
        tokenizer=tokenizer,
    ).output  # fmt: skip
    tokens_bn, lengths_b, stopped_b = (np.asarray(x) for x in (out.tokens_bn, out.lengths_b,
                                                               out.stopped_b))  # fmt: skip
    responses = finish_responses(tokenizer, tokens_bn, lengths_b, stopped_b, options.stop_strings)
    assert responses.texts == [text for line in lines[:5] for text in line["responses"]]


def test_resume_refilter_and_overwrite(policy, tokenizer, pool, data_file, tmp_path):
    path, rows = data_file
    source = load_source(str(path))
    first = _filter(policy, tokenizer, pool, source, tmp_path)
    complete = (tmp_path / "rates.jsonl").read_text()
    assert [set(r) for r in _read_jsonl(tmp_path / "rates.jsonl")] == [set(PASS_RATE_FIELDS)] * 12

    # Cut after two batches of 5, with a torn line: the rerun samples the last batch only, and
    # draws what the uninterrupted run did.
    lines = complete.splitlines(keepends=True)
    (tmp_path / "rates.jsonl").write_text("".join(lines[:10]) + lines[10][:10])
    (tmp_path / "kept.jsonl").unlink()
    resumed = _filter(policy, tokenizer, pool, source, tmp_path)
    assert resumed.num_sampled == 2 and (tmp_path / "rates.jsonl").read_text() == complete
    assert resumed.histogram == first.histogram

    # Another band to another output: nothing sampled again.
    refiltered = _filter(policy, tokenizer, pool, source, tmp_path, low=0.25, high=1.0,
                         inclusive=True, output_path=tmp_path / "kept_any.jsonl")  # fmt: skip
    counts = [r["num_correct"] for r in _read_jsonl(tmp_path / "rates.jsonl")]
    assert refiltered.num_sampled == 0
    assert _read_jsonl(tmp_path / "kept_any.jsonl") == [r for r, c in zip(rows, counts) if c >= 1]

    with pytest.raises(FileExistsError, match="kept.jsonl exists; pass --overwrite"):
        _filter(policy, tokenizer, pool, source, tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(temperature: 1.0 -> 0.7\)"):
        _filter(policy, tokenizer, pool, source, tmp_path, output_path=tmp_path / "new.jsonl",
                sampling=_sampling(temperature=0.7))  # fmt: skip
    assert json.loads(settings_path(tmp_path / "rates.jsonl").read_text())["temperature"] == 1.0
    again = _filter(policy, tokenizer, pool, source, tmp_path, overwrite=True)
    assert again.num_sampled == 12 and (tmp_path / "rates.jsonl").read_text() == complete


def test_load_source_keeps_records(tmp_path):
    amc = load_source("amc23", limit=3)
    with open(os.path.join(REPO, "zero_rl/data/benchmarks/amc23/test.jsonl")) as f:
        raw = [json.loads(next(f)) for _ in range(3)]
    assert list(amc.records) == raw and [ex.id for ex in amc.examples][0].startswith("amc23/")
    synthetic = load_source("synthetic_addition", limit=5)
    path = tmp_path / "synthetic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic.records))
    back = read_examples(path).examples
    assert [(e.prompt, e.answer) for e in back] == [(e.prompt, e.answer)
                                                    for e in synthetic.examples]  # fmt: skip
    parquet = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    parquet.write_table(pa.Table.from_pylist([{"q": "1+1?", "a": 2, "level": "Level 2"}]),
                        tmp_path / "m.parquet")  # fmt: skip
    mapped = load_source(
        str(tmp_path / "m.parquet"),
        FieldMapping(question_field="q", answer_field="a", level_field="level"),
    )
    assert mapped.records == [{"q": "1+1?", "a": 2, "level": "Level 2"}]
    assert (mapped.examples[0].answer, mapped.examples[0].level) == ("2", 2)


def test_bad_inputs_give_clear_errors(policy, tokenizer, pool, data_file, tmp_path):
    path, _ = data_file
    with pytest.raises(ValueError, match=r"unknown data 'math501'.*'math500'"):
        load_source("math501")
    with pytest.raises(FileNotFoundError, match="no data file"):
        load_source(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "no answer"}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:line 2: no answer"):
        load_source(str(bad))
    assert len(load_source(str(bad), on_error="skip").examples) == 1
    for changes, message in (({"k": 0}, "k must be >= 1"),
                             ({"temperature": 0.0}, "greedy: all k=4 samples"),
                             ({"top_p": 0.0}, "top_p must be in"),
                             ({"template": "chatml"}, "unknown template 'chatml'")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            _sampling(**changes)
    source = load_source(str(path))
    with pytest.raises(ValueError, match=r"prompt 'problems/1' has \d+ tokens, more than"):
        list(sample_pass_rates(policy, tokenizer, source.examples, _sampling(max_prompt_len=4)))
    for kwargs, error, message in (
        ({"output_path": tmp_path / "kept.txt"}, ValueError, "must end in .jsonl"),
        ({"output_path": tmp_path / "rates.jsonl"}, ValueError, "cannot both go to"),
        ({"low": 0.6, "high": 0.4}, ValueError, "need 0 <= low <= high <= 1"),
    ):
        with pytest.raises(error, match=message):
            _filter(policy, tokenizer, pool, source, tmp_path, **kwargs)
    rates = tmp_path / "old.jsonl"
    rates.write_text('{"id": "a", "pass_rate": 0.5, "num_correct": 2, "k": 4}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"old.jsonl:2: not a pass-rate record"):
        read_pass_rates(rates)
    rates.write_text('{"id": "a", "pass_rate": 0.5, "num_correct": 2, "k": 4}\n')
    with pytest.raises(ValueError, match="old.jsonl:1: has k=4, this run samples k=8"):
        read_pass_rates(rates, k=8)
    with pytest.raises(ValueError, match="old.settings.json does not"):
        _filter(policy, tokenizer, pool, source, tmp_path, pass_rates_path=rates)


def test_launcher_filters_a_checkpoint(data_file, tmp_path):
    path, rows = data_file
    config = config_lib.load_config(os.path.join(REPO, "configs", "tiny.py"))
    model_cfg = config_lib.model_config(config, load_tokenizer(TINY_TOKENIZER).vocab_size)
    params = nnx.split(create_model(model_cfg, seed=1))[1]
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
    ckpt.save(7, {"params": params}, {"step": 7})
    ckpt.close()
    output = tmp_path / "out" / "kept.jsonl"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "filter_difficulty.py"),
         f"--checkpoint={tmp_path / 'run'}", f"--data={path}", f"--output={output}", f"--k={K}",
         "--config.sampling.max_new_tokens=8", "--batch_size=8", "--progress=false",
         "--save_responses", "--config.reward.last_number_fallback=true"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "template=plain k=4" in result.stderr and "step 7" in result.stderr
    lines = _read_jsonl(tmp_path / "out" / "kept.pass_rates.jsonl")
    assert len(lines) == len(rows) and all(len(r["responses"]) == K for r in lines)
    counts = [r["num_correct"] for r in lines]
    assert _read_jsonl(output) == [r for r, c in zip(rows, counts) if 0 < c < K]
    assert f"kept {sum(0 < c < K for c in counts)} in {output}" in result.stdout
