"""Running untrusted Python programs (a policy's code answers) in a contained child process.

`run_program(source, stdin=..., limits=...)` runs one program and returns what it printed and
how it ended. What contains it, in the order the child sets it up (a small launcher run as
`python -I -S`, so no user site, PYTHON* variables or working directory on `sys.path`):

- a new session (`setsid`): the program leads its own process group, which the parent kills
  (SIGKILL) on time-out, on too much output, and after every run (orphans);
- an environment holding only PATH, HOME (the sandbox's directory) and LANG, no inherited file
  descriptors, stdin read from a file of the given bytes;
- namespaces (`unshare`): a new network namespace (only a downed loopback: no connection
  anywhere, 127.0.0.1 of the host included), a new mount namespace and a new PID namespace, in
  which the program is process 1: it cannot see or signal the grading process or anything else
  on the host, and when it exits the kernel kills every process it left. As root these are
  plain namespaces and the program then runs as an unprivileged uid of its own
  (`UID_BASE` + a slot per concurrent run), so the file permissions of the host block its writes
  (outside world-writable places) and RLIMIT_NPROC, counted per uid, counts only its processes.
  As another user a user namespace comes first (mapping the caller's uid, whose writes the
  host's permissions then allow or block as they would the caller's; the kernel counts
  RLIMIT_NPROC per uid within that namespace), and every capability is dropped before the
  program runs;
- in the mount namespace, a fresh size-limited tmpfs over /tmp, /var/tmp and /dev/shm (the
  program's working directory is on it: its files vanish with the namespace and cannot fill
  the disk), a fresh /proc, and an empty read-only tmpfs over the project's own directory and
  every path of `Limits.hide` (a checkpoint directory, a data directory);
- resource limits: CPU seconds, address space, file size, processes, open files, no core dumps,
  and no_new_privs (a setuid binary gains nothing);
- the parent's wall clock and output caps (the program is killed once it writes more than
  `Limits.output_bytes` to stdout or stderr).

Not blocked: reading world-readable files outside the hidden paths (system files, other users'
public files), using CPU and memory up to the limits, and writing where the host's permissions
let the program's uid write outside the tmpfs mounts. Without namespaces (neither root nor a
user namespace available) `run_program` raises SandboxUnavailable unless the caller accepts
`Limits(network="host")`, and then only the rlimits, the session and the cleared environment
hold: no PID, mount or network isolation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STATUSES = ("ok", "error", "syntax_error", "timeout", "memory", "output_limit", "killed", "refused")
NETWORK_MODES = ("isolated", "host")
UID_BASE = 62000  # uids UID_BASE.. run programs as root's sandbox; keep them free of accounts
_MAX_SLOTS = 1000
MAX_SOURCE_BYTES = 1 << 20
_PROJECT_DIR = str(Path(__file__).resolve().parent.parent)
_STDLIB_DIR = os.path.dirname(os.__file__)
_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000

# The child's side. It reports on a pipe that the program never holds: "R" just before the
# program runs, "S" when it does not compile; no report means the sandbox itself failed to set
# up, which the parent raises rather than scoring (a program cannot forge either).
# It imports no more than it needs (json and signal alone would add ~25 ms a program): its
# config is the repr of a dict of plain values, written by `_run`.
_LAUNCHER = r"""
import _signal, ctypes, os, resource, sys
cfg = eval(sys.argv[1])
report = cfg["report_fd"]
libc = ctypes.CDLL(None, use_errno=True)
def need(ret, what):
    if ret != 0:
        sys.stderr.write(f"sandbox set-up: {what}: {os.strerror(ctypes.get_errno())}\n")
        os._exit(125)
def mount(src, target, fstype, flags, data):
    need(libc.mount(src, target.encode(), fstype, flags, data), f"mount {target}")
with open("main.py", "rb") as f:
    source = f.read()
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
uid, gid = os.geteuid(), os.getegid()
if cfg["flags"]:
    need(libc.unshare(cfg["flags"]), "unshare")
if cfg["mode"] == "userns":
    for name, text in (("setgroups", "deny"), ("uid_map", f"1000 {uid} 1"),
                       ("gid_map", f"1000 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
if cfg["mode"] != "none":
    mount(None, "/", None, (1 << 14) | (1 << 18), None)  # MS_REC | MS_PRIVATE
    for path in cfg["hide"]:
        if os.path.isdir(path):
            mount(b"hidden", path, b"tmpfs", 1 | 2 | 4 | 8, b"size=4k,mode=0755")
    scratch = f"size={cfg['disk_mb']}m,mode=1777".encode()
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(path):
            mount(b"scratch", path, b"tmpfs", 2 | 4, scratch)  # MS_NOSUID | MS_NODEV
    if cfg["mode"] == "root" and cfg["closed"]:
        # The library lies under a directory the program's uid cannot enter (/root): cover that
        # directory with an empty tmpfs that holds only the library, read-only, at its path.
        lib = cfg["stdlib"]
        os.mkdir("/tmp/.stdlib")
        mount(lib.encode(), "/tmp/.stdlib", None, 4096 | (1 << 14), None)  # MS_BIND | MS_REC
        mount(b"closed", cfg["closed"], b"tmpfs", 2 | 4, b"size=4k,mode=0755")
        os.makedirs(lib)
        mount(b"/tmp/.stdlib", lib, None, 4096 | (1 << 14), None)
        mount(None, lib, None, 4096 | 32 | 1 | 2 | 4, None)  # remounted read-only
        need(libc.umount2(b"/tmp/.stdlib", 2), "umount /tmp/.stdlib")
        os.rmdir("/tmp/.stdlib")
    pid = os.fork()
    if pid:  # outside the PID namespace: wait and pass the program's ending on
        os.close(report)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            _signal.signal(os.WTERMSIG(status), _signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    mount(b"proc", "/proc", b"proc", 2 | 4 | 8, None)
    os.mkdir("/tmp/work", 0o700)
    os.chdir("/tmp/work")
    with open("main.py", "wb") as f:
        f.write(source)
    if cfg["mode"] == "root":
        os.chown("/tmp/work", cfg["uid"], cfg["uid"])
        os.chown("main.py", cfg["uid"], cfg["uid"])
os.environ["HOME"] = os.getcwd()
for name, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value + (name == "RLIMIT_CPU")))
if cfg["mode"] == "root":
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
elif cfg["mode"] == "userns":  # capset(v3 header, zeroed sets): no capability left
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    need(libc.syscall(126 if os.uname().machine == "x86_64" else 91, header, data), "capset")
need(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
need(libc.prctl(1, 9, 0, 0, 0), "pdeathsig")  # after setuid, which clears it
try:
    code = compile(source, "main.py", "exec", dont_inherit=True)
except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
    os.write(report, b"S")
    sys.stderr.write(f"{type(error).__name__}: {error}\n")
    os._exit(1)
os.write(report, b"R")
os.close(report)
import types
main = types.ModuleType("__main__")
main.__file__ = "main.py"
sys.modules["__main__"], sys.argv = main, ["main.py"]
del cfg, libc, need, mount, source, report
exec(code, main.__dict__)
"""


class SandboxUnavailable(RuntimeError):
    """The isolation a run asked for cannot be had on this machine."""


class SandboxError(RuntimeError):
    """The sandbox failed to set up (not the program's fault)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one program may use. Times in seconds, sizes in MiB unless named bytes.

    `cpu_s` is RLIMIT_CPU (whole seconds); `wall_s` the parent's clock; `memory_mb` the address
    space (a CPython interpreter needs ~40 MiB of it to start); `file_mb` the largest file;
    `disk_mb` the tmpfs that holds /tmp and the working directory; `processes` RLIMIT_NPROC;
    `output_bytes` the cap on stdout and on stderr. `network="host"` accepts running without a
    network namespace (and, where no namespace works, without any isolation beyond the limits);
    `hide` names more directories to cover (the project's own always is).
    """

    wall_s: float = 5.0
    cpu_s: int = 4
    memory_mb: int = 512
    file_mb: int = 8
    disk_mb: int = 16
    processes: int = 16
    open_files: int = 64
    output_bytes: int = 1 << 20
    network: str = "isolated"
    hide: tuple[str, ...] = ()

    def __post_init__(self):
        if self.network not in NETWORK_MODES:
            raise ValueError(f"network must be one of {NETWORK_MODES}, got {self.network!r}")
        for name in (
            "wall_s",
            "cpu_s",
            "memory_mb",
            "file_mb",
            "disk_mb",
            "processes",
            "open_files",
            "output_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a program ended: `status` one of STATUSES, its output (each capped at
    `Limits.output_bytes`), its exit code (negative: the signal that ended it) and wall time."""

    status: str
    stdout: bytes
    stderr: bytes
    returncode: int | None
    wall_s: float


class _Slots:
    """Per-run uids for root's sandboxes, so that RLIMIT_NPROC and the clean-up by uid see one
    program's processes only. A uid is held with an exclusive `flock` on a file of its own, so
    that processes grading at the same time (data-parallel hosts' pools, test workers) never
    share one: the lock goes with the file descriptor, also when its holder dies."""

    def __init__(self, lock_dir: str = os.path.join(tempfile.gettempdir(), "zero_rl_sandbox")):
        self._lock, self._lock_dir = threading.Lock(), lock_dir
        self._held: dict[int, int] = {}  # uid -> the descriptor that holds its lock
        self._next = os.getpid() % _MAX_SLOTS  # processes start their search apart

    def take(self) -> int:
        with self._lock:
            os.makedirs(self._lock_dir, mode=0o700, exist_ok=True)
            for i in range(_MAX_SLOTS):
                slot = (self._next + i) % _MAX_SLOTS
                uid = UID_BASE + slot
                if uid in self._held:
                    continue
                fd = os.open(os.path.join(self._lock_dir, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held[uid], self._next = fd, slot + 1
                return uid
            raise RuntimeError(f"over {_MAX_SLOTS} programs running at once")

    def give(self, uid: int) -> None:
        with self._lock:
            os.close(self._held.pop(uid))  # closing the descriptor releases the lock


_SLOTS = _Slots()


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (a root sandbox's own uid), whatever group it moved to."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


# Directories hidden from every program this process runs (`hide_always`).
_ALWAYS_HIDDEN: set[str] = set()


def hide_always(path: str | os.PathLike) -> None:
    """Hides the directory `path` from every program this process runs from now on, as if it
    were in each run's `Limits.hide`: the trainer hides its workdir (checkpoints, logs)."""
    _ALWAYS_HIDDEN.add(os.path.abspath(path))


def _hidden(limits: Limits) -> list[str]:
    paths = [_PROJECT_DIR, *sorted(_ALWAYS_HIDDEN), *map(os.path.abspath, limits.hide)]
    # Never the interpreter's own library: the program imports from it after the mounts.
    return [p for p in paths if not (_STDLIB_DIR + os.sep).startswith(p.rstrip(os.sep) + os.sep)]


@functools.cache
def _closed_ancestor(path: str) -> str | None:
    """The outermost directory above `path` that other users cannot enter, if any."""
    for parent in reversed(Path(path).parents):
        if not os.stat(parent).st_mode & 0o001:
            return str(parent)
    return None


@functools.cache
def isolation() -> str:
    """The namespaces this machine gives: "root" (plain namespaces and a uid drop), "userns"
    (an unprivileged user namespace) or "none"; found once by running a program in each."""
    modes = (["root"] if os.geteuid() == 0 else []) + ["userns"]
    for mode in modes:
        try:
            result = _run(b"print(6 * 7)", b"", Limits(wall_s=10.0), mode, network=False)
        except SandboxError:
            continue
        if result.status == "ok" and result.stdout == b"42\n":
            return mode
    return "none"


def run_program(source: str | bytes, *, stdin: bytes = b"", limits: Limits = Limits()) -> RunResult:
    """Runs `source` as a Python program under `limits` (see the module docstring); never
    raises on the program's behaviour. Raises SandboxUnavailable when network isolation is
    required (the default) and this machine gives no namespaces, SandboxError when the
    sandbox fails to set up."""
    source = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
    if len(source) > MAX_SOURCE_BYTES:
        return RunResult("refused", b"", b"program over %d bytes" % MAX_SOURCE_BYTES, None, 0.0)
    mode = isolation()
    if mode == "none" and limits.network == "isolated":
        raise SandboxUnavailable(
            "no network namespace can be made here (not root, and unprivileged user namespaces "
            "are off): programs would run with network access; pass Limits(network='host') to "
            "accept that"
        )
    return _run(source, stdin, limits, mode, network=limits.network == "host")


def _run(source: bytes, stdin: bytes, limits: Limits, mode: str, *, network: bool) -> RunResult:
    flags = {
        "none": 0,
        "root": _CLONE_NEWNS | _CLONE_NEWPID,
        "userns": _CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID,
    }[mode]
    if mode != "none" and not network:
        flags |= _CLONE_NEWNET
    uid = _SLOTS.take() if mode == "root" else None
    workdir = tempfile.mkdtemp(prefix="zero_rl-sandbox-")
    report_r, report_w = os.pipe()
    try:
        Path(workdir, "main.py").write_bytes(source)
        Path(workdir, "stdin").write_bytes(stdin)
        mib = 1 << 20
        config = {
            "mode": mode,
            "flags": flags,
            "uid": uid,
            "report_fd": report_w,
            "hide": _hidden(limits),
            "stdlib": _STDLIB_DIR,
            "closed": _closed_ancestor(_STDLIB_DIR),
            "disk_mb": limits.disk_mb,
            "rlimits": {
                "RLIMIT_CPU": limits.cpu_s,
                "RLIMIT_AS": limits.memory_mb * mib,
                "RLIMIT_FSIZE": limits.file_mb * mib,
                "RLIMIT_NPROC": limits.processes,
                "RLIMIT_NOFILE": limits.open_files,
            },
        }
        command = [sys.executable, "-I", "-S", "-c", _LAUNCHER, repr(config)]
        with open(os.path.join(workdir, "stdin"), "rb") as stdin_file:
            start = time.monotonic()
            process = subprocess.Popen(
                command,
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env={**_ENV, "HOME": workdir},
                close_fds=True,
                pass_fds=(report_w,),
                start_new_session=True,
            )
        os.close(report_w)
        report_w = -1
        try:
            out, err, cause = _collect(process, start + limits.wall_s, limits.output_bytes)
        finally:
            _kill_group(process, uid)
        wall_s = time.monotonic() - start
        os.set_blocking(report_r, False)
        try:
            report = os.read(report_r, 16)
        except BlockingIOError:
            report = b""
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
        if uid is not None:
            _SLOTS.give(uid)
    code = process.returncode
    if cause is None and not report and code != 0:
        raise SandboxError(
            f"the sandbox did not start the program ({mode}, exit code {code}): "
            f"{err.decode(errors='replace')[-500:]}"
        )
    return RunResult(_status(cause, report, code, err), out, err, code, wall_s)


def _collect(process: subprocess.Popen, deadline: float, cap: int):
    """(stdout, stderr, None | "timeout" | "output_limit"): reads both pipes until they close,
    the deadline passes or either exceeds `cap` bytes."""
    chunks = {process.stdout: [], process.stderr: []}
    sizes = dict.fromkeys(chunks, 0)
    cause = None
    with selectors.DefaultSelector() as selector:
        for pipe in chunks:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map() and cause is None:
            left = deadline - time.monotonic()
            if left <= 0:
                cause = "timeout"
                break
            for key, _ in selector.select(timeout=left):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                chunks[key.fileobj].append(data)
                sizes[key.fileobj] += len(data)
                if sizes[key.fileobj] > cap:
                    cause = "output_limit"
    if cause is None:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            cause = "timeout"
    for pipe in chunks:
        pipe.close()
    out, err = (b"".join(chunks[p])[:cap] for p in (process.stdout, process.stderr))
    return out, err, cause


def _kill_group(process: subprocess.Popen, uid: int | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if uid is not None:  # a process that left the group (setsid) still has the run's uid
        _kill_uid(uid)
    process.wait()


def _status(cause: str | None, report: bytes, code: int | None, err: bytes) -> str:
    if cause is not None:
        return cause
    if report == b"S":
        return "syntax_error"
    if code == 0:
        return "ok"
    if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout"
    if code == -signal.SIGXFSZ:
        return "output_limit"
    if code is not None and code < 0:
        return "killed"
    last = err.rstrip().rpartition(b"\n")[2]
    return "memory" if last.startswith(b"MemoryError") else "error"
