"""Two JAX processes on localhost (2 CPU devices each, gloo collectives) run the tiny config
through launch/train.py and must agree with one process of 4 devices: same final metrics, same
checkpointed params. Only process 0 logs; both write the checkpoint together.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2
# Small enough for two CPU cores; entropy and KL terms give a gradient even when every reward
# is 0 (3 SFT steps leave the model far from solving additions), and make the reference used.
OVERRIDES = [
    f"total_steps={STEPS}",
    f"checkpoint_every={STEPS}",
    f"eval_every={STEPS}",
    "data.eval_size=16",
    "sft.steps=3",
    "sft.batch_size=16",
    "sft.log_every=3",
    "sft.checkpoint_every=3",
    "rl.num_prompts=16",
    "rl.num_samples=4",
    "rl.minibatch_size=32",
    "sampling.max_new_tokens=16",
    "rl.loss.entropy_coef=0.01",
    "rl.loss.kl_coef=0.001",
    "reward.num_workers=1",
]
TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, devices: int, extra_flags=()) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
    cmd = [
        sys.executable,
        os.path.join(_REPO, "launch", "train.py"),
        f"--workdir={workdir}",
        *(f"--config.{o}" for o in OVERRIDES),
        *extra_flags,
    ]
    return subprocess.Popen(
        cmd, cwd=_REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(procs: dict[str, subprocess.Popen]) -> dict[str, str]:
    outputs = {}
    try:
        for name, proc in procs.items():
            outputs[name] = proc.communicate(timeout=TIMEOUT_S)[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name} failed:\n{outputs.get(name, '')[-4000:]}"
    return outputs


def _params(workdir) -> dict:
    """The final checkpoint's params as NumPy, read without a mesh."""
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=args)["params"]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    port = _free_port()
    distributed = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    procs = {
        "single": _launch(tmp_path / "single", devices=4),
        "process 0": _launch(tmp_path / "multi", 2, [*distributed, "--process_id=0"]),
        "process 1": _launch(tmp_path / "multi", 2, [*distributed, "--process_id=1"]),
    }
    out = _finish(procs)

    # Only process 0 reports and writes logs.
    assert f"step {STEPS}/{STEPS}" in out["process 0"]
    assert f"step {STEPS}/{STEPS}" not in out["process 1"]
    assert len(os.listdir(tmp_path / "multi" / "tb")) == 1

    with open(tmp_path / "single" / "final_metrics.json") as f:
        expected = json.load(f)
    with open(tmp_path / "multi" / "final_metrics.json") as f:
        got = json.load(f)
    assert set(got) == set(expected)
    assert expected["train/kept_groups"] == 16  # statistics cover both processes' prompts
    assert expected["train/grad_norm"] > 0
    for key in sorted(k for k in expected if not k.startswith("perf/")):
        # Only the order of cross-process float32 sums differs (measured: below 1e-6 relative).
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-7, err_msg=key)

    expected_params, got_params = _params(tmp_path / "single"), _params(tmp_path / "multi")
    assert jax.tree.structure(got_params) == jax.tree.structure(expected_params)
    for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(expected_params)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
