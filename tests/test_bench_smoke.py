"""The benchmark scripts run end to end at tiny sizes, and their arithmetic is right.

Each script runs once in a subprocess (one CPU device, as a user would run it) and must write a
JSON record with the expected keys and positive numbers; timings are not thresholded, but the
checks that the scripts carry are: greedy tokens equal to HF's, first-step gradient norms equal
to torch's, no compilation after the warm-up step.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from zero_rl.models import ModelConfig, abstract_params

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import common  # noqa: E402
from bench.sampler import greedy_agreement  # noqa: E402

TINY_MODEL = [
    "--vocab=64", "--embed=32", "--layers=1", "--heads=2", "--kv-heads=1", "--head-dim=16",
    "--mlp=64", "--peak-dim=64", "--bandwidth-mb=1", "--repeats=1",
]  # fmt: skip


def _run(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # One host device: the 8 fake devices of the test process are not what a user runs on.
    env = os.environ | {"XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )  # fmt: skip


def _results(script: str, args: list[str], tmp_path: Path) -> dict:
    out = tmp_path / f"{script}.json"
    proc = _run(script, [*args, f"--out={out}"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["platform"] == "cpu" and record["device"].startswith("CPU")
    return record["results"]


def _assert_positive(results: dict, keys: list[str]) -> None:
    missing = [k for k in keys if k not in results]
    assert not missing, f"missing keys {missing}"
    bad = {k: results[k] for k in keys if not (math.isfinite(results[k]) and results[k] > 0)}
    assert not bad, f"not positive: {bad}"


@pytest.mark.parametrize("sampling", [[], ["--temperature=0.8", "--top-p=0.9", "--top-k=5"]])
def test_sampler_bench(tmp_path, sampling):
    args = [*TINY_MODEL, "--batch=2", "--prompt-len=4", "--new-tokens=4", "--cpus=1", *sampling]
    results = _results("sampler.py", args, tmp_path)
    _assert_positive(
        results,
        ["peak_flops", "bandwidth_bytes_per_s", "prefill_tokens_per_s", "decode_tokens_per_s",
         "decode_roofline_fraction", "prefill_roofline_fraction", "generate_s", "hf_generate_s",
         "generate_speedup_vs_hf"],
    )  # fmt: skip
    assert results["torch_threads"] == 1
    if sampling:  # two random streams: nothing to compare token by token
        assert "greedy_agreement_with_hf" not in results
    else:  # same weights, greedy, float32: the two implementations pick the same tokens
        assert results["greedy_agreement_with_hf"] == 1.0


def test_train_step_bench(tmp_path):
    args = [*TINY_MODEL, "--prompts=1", "--group-size=2", "--prompt-len=4", "--response-len=4"]
    results = _results("train_step.py", args, tmp_path)
    _assert_positive(
        results,
        ["peak_flops", "step_s", "tokens_per_s", "mfu", "torch_step_s", "speedup_vs_torch",
         "first_grad_norm", "torch_first_grad_norm"],
    )  # fmt: skip
    # The same loss of the same weights on both sides.
    np.testing.assert_allclose(
        results["first_grad_norm"], results["torch_first_grad_norm"], rtol=1e-4
    )


@pytest.mark.parametrize("engine", ["continuous", "static"])
def test_rl_step_bench(tmp_path, engine):
    overrides = [
        "rl.num_prompts=4", "rl.num_samples=2", "rl.minibatch_size=8",
        "sampling.max_new_tokens=8", "reward.num_workers=1", f"sampling.engine={engine}",
        "sampling.slots=4",  # a pool of half the batch: the engine refills its slots
    ]  # fmt: skip
    args = [*(f"--set={o}" for o in overrides), "--steps=1", "--responses=synthetic"]
    results = _results("rl_step.py", args, tmp_path)
    _assert_positive(
        results,
        ["sample_s", "verify_s", "logprobs_s", "update_s", "step_s", "sampled_tokens",
         "compiles_after_warmup", "rollout_share"],
    )  # fmt: skip
    assert 0.0 <= results["device_idle_share"] <= 1.0
    assert results["rollout_share"] <= 1.0
    assert results["compiles_during_timed_steps"] == 0
    assert results["rows"] == 8 and len(results["steps"]) == 1
    # Live slot-steps over all slot-steps of the engine; the static sampler has no slots.
    if engine == "continuous":
        assert 0.0 < results["slot_utilisation"] <= 1.0
    else:
        assert math.isnan(results["slot_utilisation"])


def test_rollout_bench(tmp_path):
    args = [
        "--vocab=64", "--embed=32", "--layers=1", "--heads=2", "--kv-heads=1", "--head-dim=16",
        "--mlp=64", "--prompts=8", "--samples=2", "--slots=4", "--prompt-len=8", "--mean=8",
        "--cap=32", "--repeats=1", "--distributions=lognormal,fixed",
    ]  # fmt: skip
    results = _results("rollout.py", args, tmp_path)
    assert set(results) == {"lognormal", "fixed"}
    for kind, r in results.items():
        _assert_positive(
            r,
            ["useful_tokens", "mean_length", "static_s", "continuous_s", "static_tokens_per_s",
             "continuous_tokens_per_s", "speedup", "static_utilisation",
             "continuous_utilisation", "continuous_decode_steps"],
        )  # fmt: skip
        assert r["rows"] == 16 and r["useful_tokens"] == pytest.approx(16 * r["mean_length"])
        assert 1 <= r["max_length"] <= 32
        assert 0 < r["static_utilisation"] <= 1 and 0 < r["continuous_utilisation"] <= 1, kind
        # One prefill per prompt (one prompt per prefill); the longest response takes as many
        # steps as it has tokens, and 4 slots produce at most 4 tokens a step.
        assert r["continuous_prefills"] == 8
        assert r["continuous_decode_steps"] >= max(r["max_length"], r["useful_tokens"] / 4)
        assert r["speedup"] == pytest.approx(r["static_s"] / r["continuous_s"])
    # Every response at the cap: each static call's rows all run to the end.
    assert results["fixed"]["max_length"] == 32 and results["fixed"]["mean_length"] == 32
    assert results["fixed"]["static_utilisation"] == 1.0
    # Long-tailed lengths: the engine's refilled slots are busier than the static calls' rows.
    lognormal = results["lognormal"]
    assert lognormal["continuous_utilisation"] >= lognormal["static_utilisation"]


def test_bad_flags_fail_with_a_clear_message(tmp_path):
    proc = _run("sampler.py", ["--batch=0"], tmp_path)
    assert proc.returncode != 0 and "--batch must be >= 1" in proc.stderr
    proc = _run("rl_step.py", ["--set=rl.no_such_key=1"], tmp_path)
    assert proc.returncode != 0 and "unknown key 'no_such_key'" in proc.stderr


# --------------------------------------------------------------------------------------------
# The arithmetic behind the rooflines, against independent counts.

CFG = ModelConfig(
    vocab_size=10, embed_dim=4, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=2, mlp_dim=5
)


@pytest.mark.parametrize("tie", [False, True])
def test_body_and_head_params_partition_the_model(tie):
    cfg = CFG.replace(tie_embeddings=tie, qkv_bias=True)
    _, abstract = abstract_params(cfg)
    sizes = {
        ".".join(map(str, path)): math.prod(v.get_value().shape)
        for path, v in nnx.to_flat_state(abstract)
    }
    tables = {k: n for k, n in sizes.items() if k.startswith(("embed", "lm_head"))}
    assert common.body_matmul_params(cfg) == sum(sizes.values()) - sum(tables.values())
    assert common.head_params(cfg) == 10 * 4


def test_forward_flops_and_decode_bytes_by_hand():
    # Per layer: q 4*2*2, k 4*2, v 4*2, o 2*2*4 = 48; MLP 3*4*5 = 60; two norms 8 -> 116.
    # Plus the final norm (4): body = 2 * 116 + 4 = 236; head = 10 * 4 = 40.
    assert common.body_matmul_params(CFG) == 236
    assert common.forward_flops(CFG, body_tokens=6, logit_tokens=2) == 2 * (236 * 6 + 40 * 2)
    # float32 weights (236 + 40) * 4 bytes; bfloat16 cache: 2 (k, v) * 2 layers * 3 rows
    # * 7 slots * 1 kv head * 2 dims * 2 bytes.
    expected = (236 + 40) * 4 + 2 * 2 * 3 * 7 * 1 * 2 * 2
    assert common.decode_bytes_per_step(CFG, 3, 7, "bfloat16") == expected
    # float32 master weights, bf16 compute: the decode steps read the bf16 copy.
    mixed = CFG.replace(param_dtype="float32", dtype="bfloat16")
    expected = (236 + 40) * 2 + 2 * 2 * 3 * 7 * 1 * 2 * 2
    assert common.decode_bytes_per_step(mixed, 3, 7, "bfloat16") == expected


def test_greedy_agreement_counts_tokens_before_the_first_difference():
    a = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]])
    b = np.array([[1, 2, 3, 4], [1, 9, 3, 4], [0, 6, 7, 8]])
    assert greedy_agreement(a, b) == pytest.approx((1.0 + 0.25 + 0.0) / 3)


def test_time_call_times_only_fn_and_counts_calls():
    calls = {"setup": 0, "fn": 0}

    def setup():
        calls["setup"] += 1
        return jax.numpy.ones(3)

    def fn(x):
        calls["fn"] += 1
        return x * 2

    timing = common.time_call(fn, setup=setup, warmup=2, repeats=3)
    assert calls == {"setup": 5, "fn": 5} and len(timing.seconds) == 3
    assert timing.best <= timing.median
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        common.time_call(fn, repeats=0)


def test_measured_limits_are_positive():
    assert common.measure_peak_flops("float32", 64, chain=2, repeats=1) > 0
    assert common.measure_bandwidth(1, chain=2, repeats=1) > 0
