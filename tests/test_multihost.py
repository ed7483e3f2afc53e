"""Multi-host runs. When `jax.distributed` is initialised (SLURM through the environment; Cloud
TPU slices through fakes of JAX's cluster detectors, and GCE TPU VMs and GKE pods through the
environment and a fake metadata server), and two JAX processes on
localhost (2 CPU devices each, gloo collectives) running the tiny config through
launch/train.py, which must agree with one process of 4 devices: same final metrics, same
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

from zero_rl import sharding

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


_CLUSTER_VARS = (
    "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NUM_NODES", "JAX_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID", "TPU_SKIP_MDS_QUERY",
    "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID", "MEGASCALE_COORDINATOR_ADDRESS",
)  # fmt: skip
UNSET = dict(coordinator_address=None, num_processes=None, process_id=None)


@pytest.fixture
def initialize_calls(monkeypatch) -> list[dict]:
    """A machine that describes no cluster, with jax.distributed.initialize recording its
    arguments instead of connecting anywhere."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    for var in _CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    return calls


class _FakeTpuCluster:
    """Stands in for one of JAX's TPU cluster detectors that `sharding._tpu_clusters` returns:
    a cluster of `processes` hosts, or None for an environment that is not one."""

    def __init__(self, processes: int | None):
        self.processes = processes

    def is_env_present(self) -> bool:
        return self.processes is not None

    def get_process_count(self) -> int:
        assert self.processes is not None, "asked for the size of a cluster that is not there"
        return self.processes


def _tpu_slice(monkeypatch, gke: int | None = None, gce: int | None = None) -> None:
    """This process in a Cloud TPU slice as JAX's detectors would report it: `gke` hosts seen
    as a GKE pod, `gce` as a GCE TPU VM (None: not seen as one)."""
    fakes = (_FakeTpuCluster(gke), _FakeTpuCluster(gce))
    monkeypatch.setattr(sharding, "_tpu_clusters", lambda: fakes)


def test_auto_initialises_on_several_slurm_tasks_only(initialize_calls, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")  # set in one-node jobs too: not the signal
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not sharding.initialize_distributed("auto")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert sharding.initialize_distributed("auto")
    assert initialize_calls == [UNSET]  # JAX reads the coordinator and ranks from SLURM


@pytest.mark.parametrize(
    "gke,gce,processes",
    [
        (None, None, 1),  # no TPU slice at all
        (None, 1, 1),  # a one-host TPU VM (v5p-8)
        (None, 4, 4),  # a TPU VM of a four-host slice (v5p-32)
        (2, 1, 2),  # a GKE pod of two hosts: its node VM alone looks like a one-host slice
    ],
)
def test_auto_initialises_on_tpu_slices_of_several_hosts(
    initialize_calls, monkeypatch, gke, gce, processes
):
    _tpu_slice(monkeypatch, gke=gke, gce=gce)
    assert sharding.environment_process_count() == processes
    assert sharding.initialize_distributed("auto") == (processes > 1)
    assert initialize_calls == ([UNSET] if processes > 1 else [])


def test_slurm_decides_before_the_tpu_detectors(initialize_calls, monkeypatch):
    _tpu_slice(monkeypatch, gce=4)
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert sharding.environment_process_count() == 1
    assert not sharding.initialize_distributed("auto") and initialize_calls == []


def _cloud_tpu_cluster():
    """JAX's private Cloud TPU detection module, which `sharding._tpu_clusters` returns the
    detectors of; the tests of what they read from a TPU VM skip when JAX has moved it."""
    try:
        from jax._src.clusters import cloud_tpu_cluster  # noqa: PLC0415
    except ImportError as err:
        pytest.skip(f"JAX's private jax._src.clusters.cloud_tpu_cluster is gone ({err})")
    for name in ("running_in_cloud_tpu_vm", "get_metadata", "GceTpuCluster", "GkeTpuCluster"):
        if not hasattr(cloud_tpu_cluster, name):
            pytest.skip(f"jax._src.clusters.cloud_tpu_cluster has no {name} to fake a TPU VM with")
    return cloud_tpu_cluster


def _tpu_vm(monkeypatch, endpoints: str, tpu_env: str = "") -> None:
    """This process on a Cloud TPU VM whose metadata server lists `endpoints`."""
    cloud_tpu_cluster = _cloud_tpu_cluster()
    metadata = {"agent-worker-number": "0", "worker-network-endpoints": endpoints,
                "tpu-env": tpu_env}  # fmt: skip
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    monkeypatch.setattr(
        cloud_tpu_cluster, "get_metadata", lambda key: (metadata[key], 200) if key in metadata
        else ("", 404)
    )  # fmt: skip


@pytest.mark.parametrize(
    "endpoints,tpu_env,processes",
    [
        ("10.0.0.1", "", 1),  # a one-host slice (v5p-8)
        ("10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4", "", 4),  # a v5p-32: four hosts
        ("w-0:0:10.0.0.1,w-1:1:10.0.0.2", "", 2),  # the older name:id:ip endpoint format
        ("10.0.0.1", "MEGASCALE_NUM_SLICES: '2'\nACCELERATOR_TYPE: 'v5p-8'", 2),  # multislice
    ],
)
def test_auto_initialises_on_tpu_vms_of_several_hosts(
    initialize_calls, monkeypatch, endpoints, tpu_env, processes
):
    """gcloud TPU VMs set no host list in the environment; JAX's detection reads the metadata
    server, and the count is the one `jax.distributed.initialize()` would act on."""
    _tpu_vm(monkeypatch, endpoints, tpu_env)
    assert sharding.environment_process_count() == processes
    assert sharding.initialize_distributed("auto") == (processes > 1)
    assert initialize_calls == ([UNSET] if processes > 1 else [])


def test_auto_initialises_on_gke_tpu_pods(initialize_calls, monkeypatch):
    _tpu_vm(monkeypatch, "10.0.0.1")  # the node VM's own metadata: one host
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "job-0,job-1")  # the pod's: two
    assert sharding.environment_process_count() == 2
    assert sharding.initialize_distributed("auto")
    assert initialize_calls == [UNSET]


def test_explicit_processes_modes_and_plain_machines(initialize_calls, monkeypatch):
    assert sharding.environment_process_count() == 1
    assert not sharding.initialize_distributed("auto")  # one machine, nothing to join
    assert not sharding.initialize_distributed("auto", num_processes=1)
    assert sharding.initialize_distributed("auto", "10.0.0.1:1234", 2, 1)
    assert initialize_calls == [
        dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
    ]
    assert sharding.initialize_distributed("on")  # JAX finds the rest, or names what is missing
    assert initialize_calls[-1] == UNSET
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    assert sharding.initialize_distributed("auto")
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert not sharding.initialize_distributed("off")
    assert len(initialize_calls) == 3
    with pytest.raises(ValueError, match="'yes' is not one of"):
        sharding.initialize_distributed("yes")


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
