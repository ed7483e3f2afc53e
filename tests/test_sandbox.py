"""The sandbox against programs that try to get out: each is contained, ends with a status
that says why, and the next program runs as usual."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from zero_rl import sandbox
from zero_rl.sandbox import Limits, run_program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS = Limits(wall_s=2.5, cpu_s=2, memory_mb=256, processes=8, output_bytes=1 << 16)
isolated = pytest.mark.skipif(
    sandbox.isolation() == "none",
    reason="no namespaces here (not root, unprivileged user namespaces off): the sandbox "
    "refuses to run, which test_refuses_without_network_isolation checks",
)


# What a program sees of the project's directory: an empty tmpfs over it, or nothing at all when
# the checkout lies under /tmp (the sandbox's own tmpfs).
LIST_REPO = f"""try:
    listing = os.listdir({REPO!r})
except FileNotFoundError:
    listing = []"""


def run(source, **kwargs):
    start = time.monotonic()
    result = run_program(source, limits=kwargs.pop("limits", LIMITS), **kwargs)
    # Every run, however hostile, ends within its wall budget plus the clean-up.
    assert time.monotonic() - start < LIMITS.wall_s + 2.0
    return result


def assert_still_works():
    result = run("print(sum(range(10)))")
    assert (result.status, result.stdout) == ("ok", b"45\n")


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_a_program_reads_stdin_and_prints():
    result = run("print(input()[::-1])", stdin=b"abc\n")
    assert (result.status, result.stdout, result.returncode) == ("ok", b"cba\n", 0)


@pytest.mark.parametrize(
    ("source", "status"),
    [
        ("raise ValueError('no')", "error"),
        ("import sys\nsys.exit(3)", "error"),
        ("def f(:\n    pass", "syntax_error"),
        ("x = 'unterminated", "syntax_error"),
        ("x = bytearray(2 * 1024**3)", "memory"),
        ("x = []\nwhile True:\n    x.append('a' * 10**6)", "memory"),
        ("while True:\n    pass", "timeout"),
        ("import time\ntime.sleep(60)", "timeout"),
        ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "output_limit"),
        ("import sys\nwhile True:\n    sys.stderr.write('y' * 65536)", "output_limit"),
        (
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\nimport time\ntime.sleep(5)",
            None,
        ),
    ],
    ids=[
        "raises",
        "exit_code",
        "syntax",
        "unterminated",
        "big_alloc",
        "balloon",
        "loop",
        "sleep",
        "stdout_gigabytes",
        "stderr_gigabytes",
        "segv",
    ],
)
def test_failures_end_with_their_status(source, status):
    result = run(source)
    if status is None:  # SIGSEGV to process 1 of a PID namespace is ignored: it sleeps out
        assert result.status in ("killed", "timeout")
    else:
        assert result.status == status, result.stderr[-300:]
    assert len(result.stdout) <= LIMITS.output_bytes and len(result.stderr) <= LIMITS.output_bytes
    assert_still_works()


@isolated
def test_fork_bomb_is_contained():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert run(bomb).status == "timeout"
    assert_still_works()


@isolated
def test_processes_left_behind_are_killed():
    marker = "31.4159"  # a sleep no other process runs
    source = (
        f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], "
        "start_new_session=True)\nprint('left')"
    )
    assert run(source).stdout == b"left\n"
    time.sleep(0.2)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    assert marker.encode() not in f.read()
            except OSError:
                pass


@isolated
def test_program_cannot_kill_the_grading_process():
    me = os.getpid()
    source = f"""import os, signal
for target in (os.getppid(), {me}, -1, 0):
    try:
        os.kill(target, signal.SIGKILL)
        print(target, "sent")
    except OSError as error:
        print(target, type(error).__name__)
"""
    result = run(source)
    assert os.getpid() == me  # still here
    assert_still_works()
    # The grader's own pid names nothing the program may signal.
    assert f"{me} sent".encode() not in result.stdout


@isolated
def test_program_does_not_see_the_environment(monkeypatch):
    monkeypatch.setenv("ZERO_RL_TEST_SECRET", "hunter2-token")
    source = """import os
print(dict(os.environ))
for pid in os.listdir('/proc'):
    try:
        print(open(f'/proc/{pid}/environ', 'rb').read())
    except OSError:
        pass
"""
    result = run(source)
    assert result.status == "ok"
    assert b"hunter2" not in result.stdout + result.stderr
    assert set(eval(result.stdout.splitlines()[0])) <= {
        "PATH",
        "HOME",
        "LANG",
        "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE",
    }


@isolated
def test_program_cannot_connect_to_the_host():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        source = f"""import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1)
    print("connected")
except OSError as error:
    print("blocked", error)
"""
        result = run(source)
        assert result.stdout.startswith(b"blocked"), result.stdout
        with pytest.raises(TimeoutError):
            server.accept()


@isolated
def test_writes_outside_the_sandbox_leave_no_trace(tmp_path):
    (tmp_path / "kept.txt").write_text("mine")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    before = snapshot(tmp_path)
    probe = os.path.join(REPO, "sandbox_escape_probe.txt")
    targets = [
        str(tmp_path / "kept.txt"),
        str(open_dir / "new.txt"),
        probe,
        os.path.join(REPO, "zero_rl", "__init__.py"),
    ]
    source = f"""import os
for path in {targets!r}:
    try:
        with open(path, "a") as f:
            f.write("pwned")
        print("wrote", path)
    except OSError as error:
        print("refused", type(error).__name__)
{LIST_REPO}
print(listing)
"""
    result = run(source)
    assert result.status == "ok" and b"wrote" not in result.stdout, result.stdout
    assert result.stdout.splitlines()[-1] == b"[]"  # the project's directory shows empty
    assert snapshot(tmp_path) == before
    assert not os.path.exists(probe)
    with open(os.path.join(REPO, "zero_rl", "__init__.py")) as f:
        assert "pwned" not in f.read()


@isolated
def test_a_hidden_directory_shows_empty_to_every_later_program(monkeypatch):
    # A trainer's workdir (checkpoints, logs), beside the project: /tmp, which holds pytest's
    # tmp_path, is the sandbox's own tmpfs, so a directory there is never visible anyway.
    workdir = tempfile.mkdtemp(prefix="zero_rl_hidden_", dir=os.path.dirname(REPO))
    try:
        os.chmod(workdir, 0o755)
        os.mkdir(os.path.join(workdir, "checkpoints"))
        source = f"import os\nprint(os.listdir({workdir!r}))"
        before = run(source)
        if before.stdout != b"['checkpoints']\n":
            pytest.skip(f"the project's parent is not visible to programs here: {before}")
        monkeypatch.setattr(sandbox, "_ALWAYS_HIDDEN", set())
        sandbox.hide_always(workdir)
        assert workdir in sandbox._hidden(LIMITS)
        assert run(source).stdout == b"[]\n"
        assert os.listdir(workdir) == ["checkpoints"]  # hidden from programs, not removed
    finally:
        shutil.rmtree(workdir)


@isolated
def test_a_spawned_shell_is_held_by_the_same_walls(tmp_path, monkeypatch):
    monkeypatch.setenv("ZERO_RL_TEST_SECRET", "hunter2-token")
    target = tmp_path / "from_shell.txt"
    script = (
        f"echo pwned > {target}; echo pwned > {REPO}/shell_probe.txt; env; "
        "cat /proc/*/environ; ls /proc | wc -l; id -u"
    )
    source = f"import os, subprocess\nos.system({script!r})\nprint('done')"
    result = run(source)
    assert result.status == "ok" and result.stdout.endswith(b"done\n")
    assert not target.exists() and not os.path.exists(f"{REPO}/shell_probe.txt")
    assert b"hunter2" not in result.stdout
    if sandbox.isolation() == "root":  # not the caller's uid 0
        assert result.stdout.splitlines()[-2] != b"0"


def test_refuses_without_network_isolation(monkeypatch):
    """Where no namespace can be made, a run that did not accept the network refuses."""
    monkeypatch.setattr(sandbox, "isolation", lambda: "none")
    with pytest.raises(sandbox.SandboxUnavailable, match="network='host'"):
        run_program("print(1)", limits=LIMITS)
    accepted = Limits(wall_s=2.5, cpu_s=2, memory_mb=256, network="host")
    assert run_program("print(1)", limits=accepted).stdout == b"1\n"


def test_limits_are_checked():
    with pytest.raises(ValueError, match="network must be one of"):
        Limits(network="none")
    with pytest.raises(ValueError, match="Limits.wall_s must be > 0"):
        Limits(wall_s=0)
    assert run_program(b"#" * (sandbox.MAX_SOURCE_BYTES + 1)).status == "refused"


def _userns_works():
    try:
        return sandbox._run(b"pass", b"", LIMITS, "userns", network=False).status == "ok"
    except sandbox.SandboxError:
        return False


@pytest.mark.skipif(not _userns_works(), reason="no unprivileged user namespaces here")
def test_the_user_namespace_mode_holds_too(monkeypatch):
    """What a non-root grader gets: the same network, PID and mount walls, without the uid."""
    monkeypatch.setattr(sandbox, "isolation", lambda: "userns")
    monkeypatch.setenv("ZERO_RL_TEST_SECRET", "hunter2-token")
    me = os.getpid()
    source = f"""import os, socket
{LIST_REPO}
print(listing, dict(os.environ).get("ZERO_RL_TEST_SECRET"), flush=True)
try:
    socket.create_connection(("1.1.1.1", 80), timeout=1)
except OSError as error:
    print(error, flush=True)
for target in ({me}, -1, os.getppid()):  # the last ends the program itself (its own group)
    try:
        os.kill(target, 9)
        print(target, "sent", flush=True)
    except OSError as error:
        print(target, type(error).__name__, flush=True)
"""
    result = run(source)
    lines = result.stdout.splitlines()
    assert lines[:2] == [b"[] None", b"[Errno 101] Network is unreachable"], lines
    assert lines[2:4] == [f"{me} ProcessLookupError".encode(), b"-1 ProcessLookupError"]
    assert os.getpid() == me
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert run(bomb).status == "timeout"
    assert_still_works()


def test_processes_grading_at_once_never_share_a_uid(tmp_path):
    # Root's sandboxes run each program as a uid of its own and kill that uid's processes after
    # the run: two grading processes (test workers, hosts' pools) holding one would kill each
    # other's programs.
    slots = sandbox._Slots(lock_dir=str(tmp_path))
    slots._next = 0  # both start their search at the same slot: only the locks keep them apart
    mine = {slots.take(), slots.take()}
    other = subprocess.run(
        [sys.executable, "-c", "from zero_rl import sandbox\n"
         f"s = sandbox._Slots(lock_dir={str(tmp_path)!r})\ns._next = 0\n"
         "print(s.take(), s.take())"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(mine) == 2 and not mine & {int(uid) for uid in other}, (mine, other)
    for uid in mine:
        slots.give(uid)
    again = subprocess.run(
        [sys.executable, "-c", "from zero_rl import sandbox\n"
         f"s = sandbox._Slots(lock_dir={str(tmp_path)!r})\ns._next = 0\nprint(s.take())"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert int(again[0]) == sandbox.UID_BASE  # released: the first slot is free again
