"""The monitor's I/O shell, part by part, in-process and without root: the loop and its
timers, the reaper, the control socket, journald back-pressure, the exec check."""

from __future__ import annotations

import _socket
import compileall
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sdshim.errors import EXIT_NO_RESTART
from sdshim.shim import runtime
from sdshim.shim.attach import FrameQueue
from sdshim.shim.control import ControlServer, InvalidRequest, parse_request
from sdshim.shim.lifecycle import Request
from sdshim.shim.listener import Listener
from sdshim.shim.output import Output
from sdshim.shim.poller import EVENT_READ, Poller
from sdshim.shim.reaper import ChildReaper


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timers_fire_once_in_order_and_earlier_keeps_the_sooner() -> None:
    clock = FakeClock()
    errors: list[BaseException] = []
    poller = Poller(errors.append, clock=clock)
    fired: list[str] = []
    poller.arm("b", 2.0, lambda: fired.append("b"))
    poller.arm("a", 1.0, lambda: fired.append("a"))
    poller.arm("a", 5.0, lambda: fired.append("late a"), earlier=True)  # keeps 1.0
    clock.now += 3.0
    poller.once()
    assert fired == ["a", "b"] and not poller.armed("a")
    poller.arm("c", 1.0, lambda: fired.append("c"))
    poller.cancel("c")
    poller.arm("d", 2.0, lambda: fired.append("d"))
    clock.now += 2.0
    poller.once()
    assert fired == ["a", "b", "d"] and errors == []


def test_a_callback_that_raises_costs_its_part_not_the_loop() -> None:
    errors: list[BaseException] = []
    poller = Poller(errors.append)
    r, w = os.pipe()
    part_errors: list[BaseException] = []

    def broken(_f: object) -> None:
        raise RuntimeError("attach bug")

    poller.register(r, EVENT_READ, broken, on_error=part_errors.append)
    poller.arm("t", 0.0, lambda: (_ for _ in ()).throw(KeyError("timer bug")))
    os.write(w, b"x")
    poller.once()
    assert [str(e) for e in part_errors] == ["attach bug"]
    assert [repr(e) for e in errors] == ["KeyError('timer bug')"]
    os.close(r)
    os.close(w)


def test_the_reaper_continues_its_own_and_hands_on_the_others() -> None:
    others: list[tuple[int, int]] = []
    reaper = ChildReaper(lambda pid, status: others.append((pid, status)),
                         lambda e: pytest.fail(repr(e)))
    order: list[str] = []
    mine = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], os.environ)
    other = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 4"], os.environ)
    reaper.expect(mine, lambda status: order.append(f"mine {os.waitstatus_to_exitcode(status)}"))
    # This process may have children of earlier tests that ended meanwhile: the reaper
    # hands those on too, so only these two pids count here.
    reaper.on_other = lambda pid, status: order.extend(
        [f"other {os.waitstatus_to_exitcode(status)}"] if pid == other else [])
    for pid in (mine, other):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # both ended, not yet reaped
    reaper.reap()
    # The others first: a container's exit is known when its runtime command's result is.
    assert order == ["other 4", "mine 3"] and reaper.waiting == {}


@pytest.mark.parametrize("obj, problem", [
    ([], "a request is a JSON object"),
    ({"op": 1}, "op must be a string"),
    ({"op": "kill", "signal": None}, "signal must be a signal number"),
    ({"op": "kill", "signal": "x"}, "signal must be a signal number"),
    ({"op": "kill", "signal": True}, "signal must be a signal number"),
    ({"op": "kill", "signal": 99}, "signal must be a signal number"),
    ({"op": "stop", "timeout": math.nan}, "timeout must be a number"),
    ({"op": "stop", "timeout": math.inf}, "timeout must be a number"),
    ({"op": "stop", "timeout": -1}, "timeout must be a number"),
    ({"op": "stop", "timeout": "5"}, "timeout must be a number"),
])
def test_control_requests_are_checked_for_shape(obj: Any, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        parse_request(obj)


def test_control_request_fields() -> None:
    req = parse_request({"op": "stop", "timeout": 3, "signal": 2}, ident=7)
    assert (req.op, req.signal, req.timeout, req.ident) == ("stop", 2, 3.0, 7)


def test_control_socket_reads_without_blocking_and_answers_later(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    poller = Poller(errors.append)
    requests: list[Request] = []
    lost: list[str] = []
    server = ControlServer(poller, requests.append, lost.append)
    Listener(poller, str(tmp_path / "control"), _socket.SOCK_STREAM, 16, server.accepted)

    def connect() -> _socket.socket:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.connect(str(tmp_path / "control"))
        return s

    def serve(rounds: int = 4) -> None:
        for _ in range(rounds):
            poller.arm("tick", 0.05, lambda: None)  # bounds each round's wait
            poller.once()

    slow = connect()
    slow.send(b'{"op": "st')  # half a request: the loop goes on meanwhile
    bad = connect()
    bad.sendall(b'{"op": "kill", "signal": "x"}')
    unknown = connect()
    unknown.sendall(b'{"op": "nope"}')
    garbage = connect()
    garbage.sendall(b"not json")
    garbage.shutdown(_socket.SHUT_WR)
    serve()
    assert requests == []
    slow.sendall(b'art"}')
    serve()
    assert [r.op for r in requests] == ["start"]
    assert json.loads(bad.recv(4096))["error"].startswith("invalid request: signal")
    assert "unknown request 'nope'" in json.loads(unknown.recv(4096))["error"]
    assert garbage.recv(4096) == b""  # closed unanswered
    server.reply(requests[0].ident, {"ok": True, "pid": 1})  # once it ran
    assert json.loads(slow.recv(4096)) == {"ok": True, "pid": 1}
    assert errors == [] and lost == []
    for s in (slow, bad, unknown, garbage):
        s.close()
    server.close()


@pytest.mark.parametrize("exe, is_runtime", [
    ("/usr/sbin/runc", True),
    ("/usr/bin/crun", True),
    ("/usr/sbin/runc (deleted)", True),
    ("/memfd:runc_cloned:/proc/self/exe (deleted)", True),
    ("/", True),
    ("", True),
    ("/usr/bin/crunch", False),  # a command whose name merely contains a runtime's
    ("/bin/runcible", False),
    ("/bin/busybox", False),
    ("/opt/my-runc-wrapper", False),
])
def test_exec_check_compares_the_executable_exactly(exe: str, is_runtime: bool) -> None:
    assert runtime.is_runtime_exe(exe, "/usr/sbin/runc") is is_runtime


def test_frame_queue_is_fifo() -> None:
    q = FrameQueue()
    for i in range(1000):
        q.append(bytes([i % 256]))
    out = [q.popleft() for _ in range(600)]
    q.append(b"end")
    out += [q.popleft() for _ in range(len(q))]
    assert out == [bytes([i % 256]) for i in range(1000)] + [b"end"] and not q


class FlakyJournal:
    """A journald that refuses entries while down."""

    def __init__(self) -> None:
        self.down = False
        self.entries: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "journald is down")
        self.entries.append(data)

    try_send = send


def test_journald_away_holds_output_back_and_loses_nothing() -> None:
    clock = FakeClock()
    poller = Poller(lambda e: None, clock=clock)
    journal = FlakyJournal()
    held: list[bool] = []
    out = Output(journal, b"F=1\n", poller=poller, on_lost=lambda w: None)  # type: ignore[arg-type]
    out.on_backlog = held.append
    out.emit("stdout", b"P=6\n", [(b"one", False)])
    journal.down = True
    out.emit("stdout", b"P=6\n", [(b"two", False), (b"three", True)])
    assert held == [True] and len(out.backlog) == 2
    for _ in range(3):  # retries while down: nothing lost, nothing waits
        clock.now += 2.0
        poller.once()
    assert held == [True]
    journal.down = False
    clock.now += 2.0
    poller.once()
    assert held == [True, False] and out.backlog == []
    messages = [e.split(b"\n")[0] for e in journal.entries]
    assert messages == [b"MESSAGE=one", b"MESSAGE=two", b"MESSAGE=three"]
    assert journal.entries[2].endswith(b"CONTAINER_PARTIAL_MESSAGE=true\n")


def test_monitor_loads_or_pins_every_module_at_set_up(tmp_path: Path) -> None:
    """Every module the monitor's parts can need is loaded at set-up or pinned then:
    the modules of a container with -i, -t and a log file (the most a container can
    need); the attach and control servers and the end are pinned, not loaded."""
    root = Path(__file__).resolve().parent.parent
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from sdshim.shim import monitor\n"
            "from sdshim.shim.container import ContainerLifecycle\n"
            "opts = monitor.parse_args(['--name', 'n', '--id', 'i', '--bundle', '/b', "
            "'--runtime', '/bin/true', '--tty', '--interactive', '--log-path', '/x'])\n"
            "life = ContainerLifecycle('n', start=True, run_detached=True, restart='no', "
            "stop_signal=15, stop_timeout=1)\n"
            "shell = monitor.Shell(opts, life)\n"
            "shell.pinned.pin(monitor.PINNED)\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('sdshim'))))\n"
            "print(' '.join(sorted(shell.pinned.pins)))\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(root)],
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "SDSHIM_RUN_DIR": str(tmp_path)})
    loaded_line, pinned_line = out.stdout.splitlines()
    loaded, pinned = set(loaded_line.split()), set(pinned_line.split())
    assert {"sdshim.shim.stdin", "sdshim.shim.console", "sdshim.shim.crilog"} <= loaded, loaded
    assert pinned == {"sdshim.shim.attach", "sdshim.shim.control", "sdshim.shim.ending"}, pinned
    assert not pinned & loaded


def test_cri_rotation_that_cannot_reopen_leaves_no_stale_fd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from sdshim.privapi import posix  # crilog's
    from sdshim.shim import crilog

    log = crilog.CriLog(str(tmp_path / "ctr.log"), size_max=64)
    log.write("stdout", [(b"x" * 40, False)])
    real_open = posix.open
    monkeypatch.setattr(posix, "open", lambda *a: (_ for _ in ()).throw(
        OSError(24, "Too many open files")))
    log.write("stdout", [(b"y" * 40, False)])  # rotates; the new file cannot be opened
    assert log.fd == -1  # the old number is not kept: it may belong to another file now
    assert "cannot write log file" in capsys.readouterr().err
    monkeypatch.setattr(posix, "open", real_open)
    log.write("stdout", [(b"z" * 10, False)])  # opened again, and written
    assert log.fd >= 0 and (tmp_path / "ctr.log").read_bytes().endswith(b" F " + b"z" * 10 + b"\n")
    log.close()


def test_a_failed_cgroup_move_names_the_path_and_errno(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdshim.shim import cgroup

    monkeypatch.setattr(cgroup, "CGROUP_FS", str(tmp_path))
    (tmp_path / "cgroup.controllers").write_text("")  # a unified (v2) host
    leaf = tmp_path / "unit.service" / "container"
    (leaf / "cgroup.procs").mkdir(parents=True)  # writing it fails: EISDIR
    with pytest.raises(cgroup.CgroupError) as exc:
        cgroup._move([str(leaf)], 12345)
    assert str(exc.value) == (f"cannot move pid 12345 to {leaf}/cgroup.procs: "
                              "Is a directory (EISDIR)")


def test_the_split_of_another_process_and_of_one_split_already(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sdshim-conmon's launcher splits the unit for its monitor (pid given): a v1
    hierarchy's failure goes to warn, not to stderr; a monitor then finds itself in
    supervisor/ and is not moved again."""
    from sdshim.shim import cgroup

    monkeypatch.setattr(cgroup, "CGROUP_FS", str(tmp_path))
    unit = "/machine.slice/u.service"
    (tmp_path / "systemd" / unit.lstrip("/")).mkdir(parents=True)
    (tmp_path / "pids" / unit.lstrip("/") / "supervisor" / "cgroup.procs").mkdir(parents=True)
    where = {"name=systemd": unit, "pids": unit, "": unit}  # hybrid, no v2 mount here
    monkeypatch.setattr(cgroup, "own_cgroups", lambda pid="self": dict(where))
    warned: list[str] = []
    assert cgroup.split("u.service", 4242, warned.append) == f"{unit}/container"
    assert (tmp_path / "systemd" / unit.lstrip("/") / "supervisor" / "cgroup.procs"
            ).read_text() == "4242"
    assert len(warned) == 1 and "pids" in warned[0] and "(EISDIR)" in warned[0], warned
    where.update({key: f"{unit}/supervisor" for key in where})
    monkeypatch.setattr(cgroup, "_move", lambda *a: pytest.fail("moved again"))
    assert cgroup.split("u.service") == f"{unit}/container"


def test_spawn_launch_with_preexec_forks_without_subprocess(tmp_path: Path) -> None:
    from sdshim import spawn

    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pid = spawn.launch(["sh", "-c", "echo $MARK; grep SigIgn /proc/self/status"],
                           env={"PATH": os.environ["PATH"], "MARK": "env-ok"},
                           stdin=spawn.DEVNULL, stdout=fd,
                           preexec=lambda: os.environ.update(X="child"))
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "env-ok"
    assert not int(lines[1].split()[-1], 16) & (1 << (13 - 1))  # SIGPIPE not ignored

    def broken() -> None:
        raise OSError(13, "cannot move pid 1 to /sys/fs/cgroup/x/cgroup.procs")

    with pytest.raises(spawn.CommandError, match="cannot move pid 1 to"):
        spawn.launch(["true"], preexec=broken)
    with pytest.raises(spawn.CommandError, match="program not found"):
        spawn.launch(["no-such-program-here"], preexec=lambda: None)


# Run in a copy of the package: pin, then "upgrade" the pinned module on disk the way
# dpkg does (a new file renamed over the old one, .py and .pyc), then import it.
PIN_PROBE = """
import os, py_compile, sys
sys.path.insert(0, sys.argv[1])
from sdshim.shim import monitor
from sdshim.shim.pinned import PinnedModules
pinned = PinnedModules()
pinned.pin(["sdshim.shim.attach"])
pin = pinned.pins["sdshim.shim.attach"]
print("compiled" if pin.compiled else "source")
import fcntl
print("cloexec", bool(fcntl.fcntl(pin.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
source = pin.path
with open(source) as f:
    new = f.read() + "\\nVERSION = 'next'\\n"
with open(source + ".new", "w") as f:
    f.write(new)
os.utime(source + ".new", (1, 1))  # another mtime and size: another version
os.replace(source + ".new", source)
if sys.argv[2] == "pyc":
    py_compile.compile(source, doraise=True)  # written beside, renamed over the old
monitor.freeze_imports(pinned)
from sdshim.shim import attach
print("version", getattr(attach, "VERSION", "started"), attach.__file__ == source)
print("server", callable(attach.AttachServer))
try:
    import sdshim.shim.execprocess
except ModuleNotFoundError as e:
    print("refused", e.name)
try:
    import json
except ModuleNotFoundError as e:
    print("refused", e.name)
"""


@pytest.mark.parametrize("kind", ["pyc", "source"])
def test_a_pinned_module_runs_the_started_version_and_nothing_else_loads(
        tmp_path: Path, kind: str) -> None:
    """After set-up the monitor loads no module from disk: a pinned one is executed
    from the file held since start-up even after an upgrade replaced it (from its .pyc,
    or its source where no .pyc matches); any other import fails loudly."""
    root = Path(__file__).resolve().parent.parent
    copy = tmp_path / "tree"
    shutil.copytree(root / "sdshim", copy / "sdshim",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if kind == "pyc":
        compileall.compile_dir(copy / "sdshim", quiet=1)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", PIN_PROBE, str(copy), kind],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == [
        "compiled" if kind == "pyc" else "source", "cloexec True", "version started True",
        "server True", "refused sdshim.shim.execprocess", "refused json"], out


def test_a_pinned_file_changed_in_place_is_refused(tmp_path: Path) -> None:
    """Not dpkg's way, but never another version's code: the held file itself changed."""
    root = Path(__file__).resolve().parent.parent
    copy = tmp_path / "tree"
    shutil.copytree(root / "sdshim", copy / "sdshim",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from sdshim.shim import monitor\n"
            "from sdshim.shim.pinned import PinnedModules\n"
            "pinned = PinnedModules(); pinned.pin(['sdshim.shim.attach'])\n"
            "path = pinned.pins['sdshim.shim.attach'].path\n"
            "open(path, 'a').write('\\nVERSION = 1\\n')\n"
            "monitor.freeze_imports(pinned)\n"
            "try:\n"
            "    import sdshim.shim.attach\n"
            "except ImportError as e:\n"
            "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(copy)],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith("refused: ") and "changed in place" in out.stdout, out


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_monitor_refuses_timeouts_that_are_no_durations(value: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from sdshim.shim import monitor

    with pytest.raises(SystemExit) as exc:
        monitor.parse_args(["--name", "n", "--id", "i", "--bundle", "/b", "--runtime", "runc",
                            "--stop-timeout", value])
    assert exc.value.code == EXIT_NO_RESTART  # the same argv would fail again (options.py)
    assert "--stop-timeout must be a number of seconds" in capsys.readouterr().err


def test_a_module_that_cannot_be_pinned_is_loaded_at_once(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a module's file cannot be held (a zip, say), set-up loads it instead:
    still before the loop, so still the started version."""
    from sdshim.shim import pinned

    def refuse(path: str) -> int:
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(pinned, "_open", refuse)
    monkeypatch.delitem(sys.modules, "sdshim.shim.ending", raising=False)
    modules = pinned.PinnedModules()
    modules.pin(["sdshim.shim.ending"])
    assert modules.pins == {}
    assert "sdshim.shim.ending" in sys.modules
