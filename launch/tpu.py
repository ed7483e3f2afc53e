"""Run a config on a Cloud TPU VM slice (v4, v5e, v5p, v6e) through `gcloud`.

    python launch/tpu.py up --name=zr --zone=us-east5-a --accelerator=v5p-256 --spot -- \\
        --config=configs/mistral7b.py --workdir=/mnt/runs/mistral7b ...

`up` = `create` (a TPU VM, or a queued resource with --queued, then waits for it) + `setup`
(copies this checkout to every worker, installs it with jax[tpu] into a Python 3.11 venv) +
`train` (starts launch/train.py with the same arguments on all workers, detached so a dropped
connection does not stop it, then streams process 0's log). `logs` streams again, `run` runs a
shell command on every worker (e.g. mounting a bucket), `stop` sends SIGTERM (the trainer
checkpoints and exits), `delete` releases the slice. Every subcommand takes --dry_run, which
prints the exact commands instead of running them.

Only the standard library is used: this runs on a laptop with just the gcloud CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "~/zero-rl"  # the checkout on every worker
LOG = f"{REMOTE_DIR}/train.log"
PID = f"{REMOTE_DIR}/train.pid"

# generation -> (default runtime version, chips per host in multi-host slices, N counts cores)
GENERATIONS = {
    "v4": ("tpu-ubuntu2204-base", 4, True),
    "v5litepod": ("v2-alpha-tpuv5-lite", 4, False),
    "v5p": ("v2-alpha-tpuv5", 4, True),
    "v6e": ("v2-alpha-tpuv6e", 4, False),
}
# v5e and v6e slices of up to 8 chips sit on one host; larger ones use 4-chip hosts.
_SINGLE_HOST_MAX_CHIPS = {"v4": 4, "v5litepod": 8, "v5p": 4, "v6e": 8}

# TPU VM images ship Python 3.10; uv fetches a standalone 3.11 without touching the system.
SETUP = (
    f"set -euo pipefail; mkdir -p {REMOTE_DIR}; tar -xzf ~/zero-rl.tar.gz -C {REMOTE_DIR}; "
    "command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || "
    "curl -LsSf https://astral.sh/uv/install.sh | sh; "
    'UV="$(command -v uv || echo ~/.local/bin/uv)"; '
    f"[ -x {REMOTE_DIR}/.venv/bin/python ] || $UV venv --python 3.11 {REMOTE_DIR}/.venv; "
    f'$UV pip install --python {REMOTE_DIR}/.venv/bin/python -e {REMOTE_DIR} "jax[tpu]"'
)
_PACK_EXCLUDE = {
    ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    zone: str
    project: str | None = None
    accelerator: str = ""
    runtime_version: str = ""
    spot: bool = False
    preemptible: bool = False
    queued: bool = False

    def generation(self) -> str:
        match = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-(\d+)", self.accelerator)
        if not match:
            raise ValueError(
                f"--accelerator={self.accelerator!r} is not a TPU VM type; expected "
                f"<generation>-<N> with generation one of {sorted(GENERATIONS)} "
                "(v5e is v5litepod), e.g. v5p-128, v4-32, v5litepod-16, v6e-64"
            )
        return match[1]

    def chips(self) -> int:
        n = int(self.accelerator.rsplit("-", 1)[1])
        return n // 2 if GENERATIONS[self.generation()][2] else n

    def multi_host(self) -> bool:
        return self.chips() > _SINGLE_HOST_MAX_CHIPS[self.generation()]

    def version(self) -> str:
        return self.runtime_version or GENERATIONS[self.generation()][0]


def _gcloud(s: Slice, *args: str) -> list[str]:
    return ["gcloud", *args, f"--zone={s.zone}"] + ([f"--project={s.project}"] if s.project else [])


def create_command(s: Slice) -> list[str]:
    """`tpu-vm create`, or `queued-resources create` (waits in Cloud TPU's queue for capacity)."""
    if s.spot and s.preemptible:
        raise ValueError("choose one of --spot and --preemptible")
    if s.queued and s.preemptible:
        raise ValueError("queued resources take --spot, not --preemptible")
    s.generation()  # validates the accelerator type
    if s.queued:
        cmd = _gcloud(s, "compute", "tpus", "queued-resources", "create", s.name)
        cmd += [f"--node-id={s.name}", f"--accelerator-type={s.accelerator}",
                f"--runtime-version={s.version()}"]  # fmt: skip
    else:
        cmd = _gcloud(s, "compute", "tpus", "tpu-vm", "create", s.name)
        cmd += [f"--accelerator-type={s.accelerator}", f"--version={s.version()}"]
    return cmd + (["--spot"] if s.spot else []) + (["--preemptible"] if s.preemptible else [])


def queued_state_command(s: Slice) -> list[str]:
    cmd = _gcloud(s, "compute", "tpus", "queued-resources", "describe", s.name)
    return cmd + ["--format=value(state.state)"]


def ssh_command(s: Slice, command: str, worker: str = "all") -> list[str]:
    cmd = _gcloud(s, "compute", "tpus", "tpu-vm", "ssh", s.name)
    return cmd + [f"--worker={worker}", f"--command={command}"]


def scp_command(s: Slice, local: str, remote: str) -> list[str]:
    cmd = _gcloud(s, "compute", "tpus", "tpu-vm", "scp", local, f"{s.name}:{remote}")
    return cmd + ["--worker=all"]


def train_command(s: Slice, train_args: list[str]) -> str:
    """The shell line each worker runs: launch/train.py in the background, its pid saved."""
    args = list(train_args)
    if s.multi_host() and not any(a.startswith("--distributed") for a in args):
        args.append("--distributed=on")
    train = shlex.join([".venv/bin/python", "launch/train.py", *args])
    return f"cd {REMOTE_DIR} && (setsid nohup {train} > {LOG} 2>&1 < /dev/null & echo $! > {PID})"


def delete_command(s: Slice) -> list[str]:
    if s.queued:  # --force also deletes the TPU VM the queued resource created
        cmd = _gcloud(s, "compute", "tpus", "queued-resources", "delete", s.name)
        return cmd + ["--force", "--quiet"]
    return _gcloud(s, "compute", "tpus", "tpu-vm", "delete", s.name) + ["--quiet"]


def pack_repo(destination: str, root: str = _REPO) -> str:
    """This checkout (without .git, caches, venvs) as a .tar.gz to copy to the workers."""

    def keep(info: tarfile.TarInfo):
        return None if set(info.name.split("/")) & _PACK_EXCLUDE else info

    with tarfile.open(destination, "w:gz") as tar:
        for entry in sorted(os.listdir(root)):
            tar.add(os.path.join(root, entry), arcname=entry, filter=keep)
    return destination


class Runner:
    """Runs commands (output streams to this terminal), or prints them with --dry_run."""

    def __init__(self, dry_run: bool, poll_s: float = 30.0):
        self.dry_run = dry_run
        self.poll_s = poll_s

    def run(self, cmd: list[str]) -> None:
        print("$ " + shlex.join(cmd), flush=True)
        if not self.dry_run:
            subprocess.run(cmd, check=True)

    def wait_until_active(self, s: Slice) -> None:
        cmd = queued_state_command(s)
        if self.dry_run:
            print(f"# repeated every {self.poll_s:.0f}s until ACTIVE:\n$ {shlex.join(cmd)}")
            return
        while True:
            state = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            state = state.strip()
            print(f"queued resource {s.name}: {state}", flush=True)
            if state == "ACTIVE":
                return
            if state in ("FAILED", "SUSPENDED"):
                raise RuntimeError(f"queued resource {s.name} is {state}; see `{shlex.join(cmd)}`")
            time.sleep(self.poll_s)


def create(s: Slice, runner: Runner) -> None:
    runner.run(create_command(s))
    if s.queued:
        runner.wait_until_active(s)


def setup(s: Slice, runner: Runner) -> None:
    tarball = os.path.join(tempfile.gettempdir(), f"zero-rl-{s.name}.tar.gz")
    print(f"# pack {_REPO} -> {tarball}", flush=True)
    if not runner.dry_run:
        pack_repo(tarball)
    runner.run(scp_command(s, tarball, "~/zero-rl.tar.gz"))
    runner.run(ssh_command(s, SETUP))


def train(s: Slice, runner: Runner, train_args: list[str], follow: bool) -> None:
    if not any(a.startswith("--workdir") for a in train_args):
        raise ValueError(
            "pass launch/train.py's --workdir after `--`; on several hosts it must be a "
            "directory every worker sees (e.g. a gcsfuse mount of a bucket)"
        )
    runner.run(ssh_command(s, train_command(s, train_args)))
    if follow:
        logs(s, runner, worker="0")


def logs(s: Slice, runner: Runner, worker: str = "0") -> None:
    runner.run(ssh_command(s, f"tail -n +1 -F {LOG}", worker=worker))


def stop(s: Slice, runner: Runner) -> None:
    runner.run(ssh_command(s, f"kill -TERM $(cat {PID})"))


def delete(s: Slice, runner: Runner) -> None:
    runner.run(delete_command(s))


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
    common.add_argument("--zone", required=True, help="e.g. us-east5-a (v5p), us-east1-d (v6e)")
    common.add_argument("--project", help="GCP project (default: gcloud's configured one)")
    common.add_argument("--queued", action="store_true", help="the slice is a queued resource")
    common.add_argument("--dry_run", action="store_true", help="print commands, run nothing")
    common.add_argument("--poll_s", type=float, default=30.0, help="queued-resource polling")
    slice_flags = argparse.ArgumentParser(add_help=False)
    slice_flags.add_argument("--accelerator", required=True, help="e.g. v5p-128, v6e-64, v4-32")
    slice_flags.add_argument("--runtime_version", default="", help="default: per generation")
    slice_flags.add_argument("--spot", action="store_true", help="Spot VMs (preemptible)")
    slice_flags.add_argument("--preemptible", action="store_true", help="legacy preemptible")
    follow = argparse.ArgumentParser(add_help=False)
    follow.add_argument("--no_follow", action="store_true", help="do not stream the log")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("create", parents=[common, slice_flags], help="create the slice")
    sub.add_parser("setup", parents=[common], help="copy and install this checkout")
    sub.add_parser(
        "train", parents=[common, slice_flags, follow], help="start launch/train.py -- ARGS"
    )
    sub.add_parser("up", parents=[common, slice_flags, follow], help="create + setup + train")
    sub.add_parser("logs", parents=[common], help="stream process 0's log").add_argument(
        "--worker", default="0", help="worker index, or all"
    )
    sub.add_parser("run", parents=[common], help="run a shell command on all workers: -- CMD")
    sub.add_parser("stop", parents=[common], help="SIGTERM the trainer (it checkpoints)")
    sub.add_parser("delete", parents=[common], help="delete the slice")
    return parser


def main(argv: list[str]) -> None:
    train_args = []
    if "--" in argv:  # everything after `--` goes to launch/train.py
        argv, train_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = _parser().parse_args(argv)
    s = Slice(
        name=args.name,
        zone=args.zone,
        project=args.project,
        accelerator=getattr(args, "accelerator", ""),
        runtime_version=getattr(args, "runtime_version", ""),
        spot=getattr(args, "spot", False),
        preemptible=getattr(args, "preemptible", False),
        queued=args.queued,
    )
    if train_args and args.action not in ("train", "up", "run"):
        raise SystemExit(f"`{args.action}` takes no launch/train.py arguments after --")
    if args.action == "run" and not train_args:
        raise SystemExit("`run` needs the shell command after --")
    runner = Runner(args.dry_run, poll_s=args.poll_s)
    follow = not getattr(args, "no_follow", True)
    try:
        if args.action in ("create", "up"):
            create(s, runner)
        if args.action in ("setup", "up"):
            setup(s, runner)
        if args.action in ("train", "up"):
            train(s, runner, train_args, follow)
        if args.action == "logs":
            logs(s, runner, args.worker)
        if args.action == "run":
            runner.run(ssh_command(s, " ".join(train_args)))
        if args.action == "stop":
            stop(s, runner)
        if args.action == "delete":
            delete(s, runner)
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from None
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"error: `{shlex.join(err.cmd)}` exited with {err.returncode}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
