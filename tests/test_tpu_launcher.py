"""launch/tpu.py against a fake `gcloud` on PATH that records its arguments (no network)."""

import importlib.util
import json
import os
import shlex
import stat
import sys
import tarfile

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("launch_tpu", f"{_REPO}/launch/tpu.py")
tpu = sys.modules["launch_tpu"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpu)

# Records argv; `describe` answers the next state from FAKE_STATES; `scp` keeps the upload;
# FAKE_FAIL=<subcommand word> makes that call exit 1.
FAKE_GCLOUD = """#!{python}
import json, os, shutil, sys
root = os.environ["FAKE_GCLOUD_DIR"]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_FAIL") in sys.argv:
    sys.exit(1)
if "describe" in sys.argv:
    states = os.environ["FAKE_STATES"].split(",")
    count_file = os.path.join(root, "describes")
    n = int(open(count_file).read()) if os.path.exists(count_file) else 0
    open(count_file, "w").write(str(n + 1))
    print(states[min(n, len(states) - 1)])
if "scp" in sys.argv:
    shutil.copy(sys.argv[5], os.path.join(root, "upload.tar.gz"))
"""
TRAIN_ARGS = ["--config=configs/mistral7b.py", "--workdir=/mnt/runs/m7", "--config.seed=3"]


@pytest.fixture
def gcloud(tmp_path, monkeypatch):
    """Puts the fake gcloud first on PATH; returns a function reading its recorded calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(FAKE_GCLOUD.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_DIR", str(tmp_path))
    monkeypatch.setenv("FAKE_STATES", "WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE")

    def calls():
        path = tmp_path / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return calls


def _main(action, *argv):
    tpu.main([action, "--poll_s=0", *argv])


def test_up_on_a_queued_spot_v5p_slice(gcloud, tmp_path):
    common = ["--name=zr", "--zone=us-east5-a", "--project=proj"]
    _main("up", *common, "--accelerator=v5p-256", "--spot", "--queued", "--", *TRAIN_ARGS)
    calls = gcloud()
    where = ["--zone=us-east5-a", "--project=proj"]
    assert calls[0] == ["compute", "tpus", "queued-resources", "create", "zr", *where,
                        "--node-id=zr", "--accelerator-type=v5p-256",
                        "--runtime-version=v2-alpha-tpuv5", "--spot"]  # fmt: skip
    describe = ["compute", "tpus", "queued-resources", "describe", "zr", *where,
                "--format=value(state.state)"]  # fmt: skip
    assert calls[1:4] == [describe] * 3  # polled until ACTIVE
    scp, install, start, follow = calls[4:]
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert scp[5:] == ["zr:~/zero-rl.tar.gz", *where, "--worker=all"]
    assert install[:5] == ["compute", "tpus", "tpu-vm", "ssh", "zr"]
    assert "--worker=all" in install and "jax[tpu]" in install[-1]
    assert start[-2] == "--worker=all"
    remote = start[-1].removeprefix("--command=")
    # The same launch/train.py arguments on every worker, plus jax.distributed on 32 hosts.
    expected_train = [".venv/bin/python", "launch/train.py", *TRAIN_ARGS, "--distributed=on"]
    assert shlex.join(expected_train) in remote
    assert "setsid nohup" in remote and "> ~/zero-rl/train.log" in remote
    assert follow[-2:] == ["--worker=0", "--command=tail -n +1 -F ~/zero-rl/train.log"]

    with tarfile.open(tmp_path / "upload.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"launch/train.py", "zero_rl/__init__.py", "configs/mistral7b.py"} <= names
    assert not any(part in {".git", "__pycache__"} for n in names for part in n.split("/"))


def test_dry_run_prints_the_exact_commands_and_runs_nothing(gcloud, capsys):
    argv = ["--name=zr", "--zone=us-central2-b", "--accelerator=v4-32", "--preemptible"]
    _main("up", *argv, "--dry_run", "--", *TRAIN_ARGS)
    assert gcloud() == []
    printed = [
        shlex.split(line[2:])[1:]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("$ ")
    ]
    _main("up", *argv, "--", *TRAIN_ARGS)
    recorded = gcloud()
    # The tarball path is the same in both; every printed command is what runs.
    assert printed == recorded
    assert recorded[0] == ["compute", "tpus", "tpu-vm", "create", "zr", "--zone=us-central2-b",
                           "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
                           "--preemptible"]  # fmt: skip


@pytest.mark.parametrize(
    "accelerator,version,multi_host",
    [
        ("v4-8", "tpu-ubuntu2204-base", False),  # 4 chips, one host
        ("v4-16", "tpu-ubuntu2204-base", True),
        ("v5p-8", "v2-alpha-tpuv5", False),
        ("v5p-16", "v2-alpha-tpuv5", True),
        ("v5litepod-8", "v2-alpha-tpuv5-lite", False),  # 8 chips on one host
        ("v5litepod-16", "v2-alpha-tpuv5-lite", True),
        ("v6e-8", "v2-alpha-tpuv6e", False),
        ("v6e-256", "v2-alpha-tpuv6e", True),
    ],
)
def test_generations_runtime_versions_and_hosts(gcloud, accelerator, version, multi_host):
    s = tpu.Slice(name="zr", zone="z", accelerator=accelerator)
    assert s.version() == version
    assert s.multi_host() == multi_host
    _main("train", "--name=zr", "--zone=z", f"--accelerator={accelerator}", "--no_follow", "--",
          *TRAIN_ARGS)  # fmt: skip
    (start,) = gcloud()
    assert ("--distributed=on" in start[-1]) == multi_host


def test_run_logs_stop_and_delete(gcloud):
    _main("run", "--name=zr", "--zone=z", "--", "mkdir -p ~/bucket &&", "gcsfuse b ~/bucket")
    _main("logs", "--name=zr", "--zone=z", "--worker=all")
    _main("stop", "--name=zr", "--zone=z")
    _main("delete", "--name=zr", "--zone=z")
    _main("delete", "--name=zr", "--zone=z", "--queued")
    run, logs, stop, delete, delete_queued = gcloud()
    assert run[-2:] == ["--worker=all", "--command=mkdir -p ~/bucket && gcsfuse b ~/bucket"]
    assert logs == ["compute", "tpus", "tpu-vm", "ssh", "zr", "--zone=z", "--worker=all",
                    "--command=tail -n +1 -F ~/zero-rl/train.log"]  # fmt: skip
    assert stop[-1] == "--command=kill -TERM $(cat ~/zero-rl/train.pid)"
    assert delete == ["compute", "tpus", "tpu-vm", "delete", "zr", "--zone=z", "--quiet"]
    assert delete_queued == ["compute", "tpus", "queued-resources", "delete", "zr", "--zone=z",
                             "--force", "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    "argv,message",
    [
        (["create", "--accelerator=v5e-8"], "v5e is v5litepod"),
        (["create", "--accelerator=v5p-8", "--spot", "--preemptible"], "one of --spot"),
        (["create", "--accelerator=v5p-8", "--queued", "--preemptible"], "take --spot"),
        (["train", "--accelerator=v5p-8", "--", "--config=configs/tiny.py"], "--workdir"),
        (["delete", "--", "--workdir=/x"], "takes no launch/train.py arguments"),
        (["run"], "needs the shell command"),
    ],
)
def test_bad_requests_name_the_problem(gcloud, argv, message):
    action, *rest = argv
    with pytest.raises(SystemExit, match=message):
        _main(action, "--name=zr", "--zone=z", *rest)
    assert gcloud() == []


def test_failures_stop_with_the_failing_command(gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_STATES", "WAITING_FOR_RESOURCES,FAILED")
    with pytest.raises(SystemExit, match="queued resource zr is FAILED"):
        _main("create", "--name=zr", "--zone=z", "--accelerator=v6e-64", "--queued")
    monkeypatch.setenv("FAKE_FAIL", "scp")
    with pytest.raises(SystemExit, match="tpu-vm scp .* exited with 1"):
        _main("setup", "--name=zr", "--zone=z")
    assert not any("ssh" in call for call in gcloud())  # nothing runs after the failure
