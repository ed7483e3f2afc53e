"""Loading a policy from a trainer checkpoint, and launch/eval.py end to end in a subprocess."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from zero_rl import sharding
from zero_rl.eval import load_policy, restore_params
from zero_rl.models import create_model
from zero_rl.tokenizer import load_tokenizer
from zero_rl.train import config as config_lib
from zero_rl.train.checkpoint import Checkpointer
from zero_rl.train.optim import make_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "tiny.py")
TINY_TOKENIZER = os.path.join(REPO, "zero_rl", "assets", "tiny_addition.model")


@pytest.fixture(scope="module")
def config():
    return config_lib.load_config(TINY_CONFIG)


@pytest.fixture(scope="module")
def model_cfg(config):
    return config_lib.model_config(config, load_tokenizer(TINY_TOKENIZER).vocab_size)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, config, model_cfg):
    """A run directory as the trainer leaves it: steps 5 and 10 with params and Adam state."""
    workdir = tmp_path_factory.mktemp("run")
    tx, _ = make_optimizer(config.optim, 10)
    ckpt = Checkpointer(str(workdir / "checkpoints"), async_save=False)
    params_by_step = {}
    for step, seed in ((5, 1), (10, 2)):
        params = nnx.split(create_model(model_cfg, seed=seed))[1]
        ckpt.save(step, {"params": params, "opt_state": tx.init(params)}, {"step": step})
        params_by_step[step] = params
    ckpt.close()
    return workdir, params_by_step


def _assert_same(params, reference):
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_restore_params_latest_or_chosen_step(workdir, model_cfg):
    path, params_by_step = workdir
    step, _, params = restore_params(str(path), model_cfg)
    assert step == 10
    _assert_same(params, params_by_step[10])
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    step, graphdef, params = restore_params(str(path / "checkpoints"), model_cfg, step=5, mesh=mesh)
    _assert_same(params, params_by_step[5])
    embed = params["embed"].get_value()
    assert embed.sharding.mesh.shape == mesh.shape and not embed.sharding.is_fully_replicated
    assert nnx.merge(graphdef, params).cfg == model_cfg


def test_restore_params_errors(workdir, model_cfg, tmp_path):
    path, _ = workdir
    with pytest.raises(ValueError, match=r"no checkpoint for step 7 .* saved steps: \[5, 10\]"):
        restore_params(str(path), model_cfg, step=7)
    with pytest.raises(ValueError, match="has shape .* is this the run's config"):
        restore_params(str(path), model_cfg.replace(mlp_dim=96))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore_params(str(tmp_path / "nowhere"), model_cfg)
    with pytest.raises(FileNotFoundError, match="no checkpoints in"):
        restore_params(str(tmp_path), model_cfg)


def test_load_policy_needs_exactly_one_source(config, workdir):
    policy = load_policy(config, checkpoint=str(workdir[0]))
    assert policy.step == 10 and policy.tokenizer.vocab_size == 48
    with pytest.raises(ValueError, match="exactly one"):
        load_policy(config)
    with pytest.raises(ValueError, match="exactly one"):
        load_policy(config, checkpoint=str(workdir[0]), hf_model=str(workdir[0]))
    with pytest.raises(FileNotFoundError, match="HF model directory"):
        load_policy(config, hf_model="/nonexistent/model")


def _cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "eval.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_evaluates_a_checkpoint(workdir, tmp_path):
    out = tmp_path / "out"
    result = _cli(f"--checkpoint={workdir[0]}", f"--out_dir={out}", "--limit=8",
                  "--batch_size=8", "--max_new_tokens=8", "--progress=false")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "synthetic_addition" in result.stdout and "step 10" in result.stderr
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["step"] == 10
    assert summary["settings"]["synthetic_addition"]["template"] == "plain"
    assert summary["benchmarks"]["synthetic_addition"]["num_problems"] == 8
    with open(out / "synthetic_addition" / "generations.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 8 and all(r["length"] <= 8 for r in records)
    assert os.listdir(out / "tb")


def test_cli_rejects_an_unknown_benchmark_before_loading(workdir, tmp_path):
    result = _cli(f"--checkpoint={workdir[0]}", f"--out_dir={tmp_path}", "--benchmarks=gsm9k")
    assert result.returncode == 2
    assert "error: unknown benchmark 'gsm9k'; valid names:" in result.stderr
    assert "math500" in result.stderr and not os.listdir(tmp_path)


def test_cli_grade_only(tmp_path):
    path = tmp_path / "vllm.jsonl"
    rows = [
        {"prompt": "Q1", "response": "\\boxed{4}", "answer": "4", "finish_reason": "stop"},
        {"prompt": "Q1", "response": "\\boxed{5}", "answer": "4", "finish_reason": "length"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _cli("--grade_only", f"--input={path}", f"--out_dir={tmp_path / 'out'}",
                  "--progress=false", "--notensorboard")  # fmt: skip
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "summary.json") as f:
        summary = json.load(f)
    vllm = summary["benchmarks"]["vllm"]
    assert vllm["accuracy"] == 0.5 and vllm["pass@2"] == 1.0 and vllm["truncated_ratio"] == 0.5
    assert not os.path.exists(tmp_path / "out" / "tb")
