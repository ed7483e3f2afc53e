"""Resuming run_benchmarks: an interrupted or torn run gives the files of an uninterrupted one,
progress is shown from where it resumes, and generations of other settings or another policy
are never mixed in."""

import json
import re

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from zero_rl import sharding
from zero_rl.data import load_benchmark
from zero_rl.eval import OutputDirError, harness, params_fingerprint, run_benchmarks
from zero_rl.models import ModelConfig, create_model
from zero_rl.rewards import RewardConfig, VerifierPool
from zero_rl.sampling import SamplingOptions
from zero_rl.tokenizer import train_sentencepiece

REWARD = RewardConfig(last_number_fallback=True, num_workers=1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [f"{ex.prompt} {ex.answer}" for n in ("aime24", "math500", "amc23")
             for ex in load_benchmark(n, limit=20)]  # fmt: skip
    return train_sentencepiece(
        texts, vocab_size=400, model_prefix=tmp_path_factory.mktemp("tok") / "resume"
    )


def _policy(tokenizer, seed):
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=16, mlp_dim=64, max_position=1024)  # fmt: skip
    return nnx.split(create_model(cfg, seed=seed))


@pytest.fixture(scope="module")
def policy(tokenizer):
    return _policy(tokenizer, 0)


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(1) as p:
        yield p


def _run(policy, tokenizer, pool, out_dir, temperature=1.0, **kwargs):
    defaults = dict(
        tokenizer=tokenizer, out_dir=str(out_dir), template="plain", num_samples=2,
        sampling=SamplingOptions(max_prompt_len=512, max_new_tokens=8, temperature=temperature),
        batch_size=1, reward=REWARD, pool=pool, progress=False,
    )  # fmt: skip
    return run_benchmarks(*policy, **(defaults | kwargs))


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def count_generate(monkeypatch):
    """The list that gets one entry per sampler call: the first problem id of its batch."""
    real_generate, calls = harness._generate, []

    def counted(run, examples, template, rng):
        calls.append(examples[0].id)
        return real_generate(run, examples, template, rng)

    monkeypatch.setattr(harness, "_generate", counted)
    return calls


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


def test_resume_of_a_batch_torn_between_its_problems(
    policy, tokenizer, pool, tmp_path, count_generate
):
    # Five problems in batches of two: [0, 1], [2, 3], [4]. The crash tore the write of the
    # second batch inside problem 3's records: problem 2 is complete, 3 is not.
    kwargs = dict(benchmarks=["amc23"], limit=5, batch_size=2)
    full = _run(policy, tokenizer, pool, tmp_path / "full", **kwargs)
    want = _read_jsonl(tmp_path / "full" / "amc23" / "generations.jsonl")
    assert len(want) == 10
    path = tmp_path / "torn" / "amc23" / "generations.jsonl"
    _run(policy, tokenizer, pool, tmp_path / "torn", **kwargs)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:7]) + lines[7][: len(lines[7]) // 2])
    ids = [ex.id for ex in load_benchmark("amc23", limit=5)]
    count_generate.clear()
    resumed = _run(policy, tokenizer, pool, tmp_path / "torn", **kwargs)
    # The batch [2, 3] is sampled whole again (its rows and key as before), keeping only 3.
    assert count_generate == [ids[2], ids[4]]
    assert _read_jsonl(path) == want
    assert resumed["benchmarks"] == full["benchmarks"]


def test_progress_counts_from_where_a_resumed_run_starts(policy, tokenizer, pool, tmp_path, capsys):
    _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=2)
    capsys.readouterr()
    _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=3, progress=True)
    err = capsys.readouterr().err
    assert "amc23:" in err and "4/6" in err  # two problems of two samples were on disk
    # The finished bar: responses done of all, elapsed < remaining, and the rate.
    assert re.search(r"6/6 \[\d\d:\d\d<\d\d:\d\d, +\d+(\.\d+)?(resp/s|s/resp)\]", err), err


def test_rerun_with_other_settings_is_refused(policy, tokenizer, pool, tmp_path):
    _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=1)
    with pytest.raises(OutputDirError, match=r"other settings \(temperature: 1.0 -> 0.5"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=1, temperature=0.5)
    with pytest.raises(OutputDirError, match=r"other settings \(step: 0 -> 100"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=1, step=100)


def test_resume_with_another_policy_is_refused(policy, tokenizer, pool, tmp_path, count_generate):
    other = _policy(tokenizer, 1)  # another model at the same step, as two HF models are
    mine, theirs = params_fingerprint(policy[1]), params_fingerprint(other[1])
    assert mine != theirs
    _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=2)
    before = (tmp_path / "amc23" / "generations.jsonl").read_text()
    count_generate.clear()
    with pytest.raises(OutputDirError, match=rf"other settings \(policy: '{mine}' -> '{theirs}'"):
        _run(other, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=2)
    # Nor may another benchmark of the other policy join this directory's summary.
    with pytest.raises(OutputDirError, match="holds results of another policy"):
        _run(other, tokenizer, pool, tmp_path, benchmarks=["aime24"], limit=1)
    assert not count_generate and not (tmp_path / "aime24").exists()
    assert (tmp_path / "amc23" / "generations.jsonl").read_text() == before
    # An explicit policy id replaces the fingerprint.
    _run(other, tokenizer, pool, tmp_path / "named", benchmarks=["amc23"], limit=1,
         policy_id="run-b step 0")  # fmt: skip
    with open(tmp_path / "named" / "amc23" / "settings.json") as f:
        assert json.load(f)["policy"] == "run-b step 0"


def test_a_generations_file_of_unknown_origin_is_refused(policy, tokenizer, pool, tmp_path):
    (tmp_path / "amc23").mkdir()
    (tmp_path / "amc23" / "generations.jsonl").write_text('{"id": "x", "sample": 0}\n')
    with pytest.raises(OutputDirError, match="without settings.json"):
        _run(policy, tokenizer, pool, tmp_path, benchmarks=["amc23"], limit=1)


def test_params_fingerprint_sees_every_element_and_no_sharding():
    rng = np.random.default_rng(0)
    params = nnx.State({"a": {"w": rng.normal(size=(8, 6)).astype(np.float32)},
                        "b": rng.normal(size=(16,)).astype(np.float32)})  # fmt: skip
    params = jax.tree.map(jax.numpy.asarray, params)
    base = params_fingerprint(params)
    assert len(base) == 16 and base == params_fingerprint(jax.tree.map(lambda x: x + 0, params))
    # The same values sharded over 8 devices: the same fingerprint.
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    spread = jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec(("data", "fsdp")))), params
    )
    assert not spread["b"].sharding.is_fully_replicated
    assert params_fingerprint(spread) == base
    # One element one ulp away, two elements swapped, another dtype, another name: all differ.
    w = np.asarray(params["a"]["w"])
    nudged = w.copy()
    nudged[5, 3] = np.nextafter(nudged[5, 3], np.float32(np.inf))
    swapped = w.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    variants = [
        nnx.State({"a": {"w": jax.numpy.asarray(nudged)}, "b": params["b"]}),
        nnx.State({"a": {"w": jax.numpy.asarray(swapped)}, "b": params["b"]}),
        nnx.State({"a": {"w": params["a"]["w"].astype("bfloat16")}, "b": params["b"]}),
        nnx.State({"a": {"v": params["a"]["w"]}, "b": params["b"]}),
    ]
    prints = {params_fingerprint(v) for v in variants}
    assert len(prints) == 4 and base not in prints
