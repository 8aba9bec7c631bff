"""Interactive containers on a real systemd: stdin, terminals, attach and exec.

Terminal tests give the CLI the slave side of a pty the test opened (as its stdin,
stdout, stderr and controlling terminal, via `setsid -c`) and play the user on the
master side.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SDSHIM, Bed, foreign_bundle
from tests.test_container import one_line_error, status
from tests.test_lifecycle import poll


class Terminal:
    """A pty whose slave side is the CLI's terminal; the test types on the master."""

    def __init__(self, bed: Bed, args: list[str], rows: int = 24, cols: int = 80, *,
                 cli: Sequence[str] = SDSHIM, env: dict[str, str] | None = None) -> None:
        self.master, self.slave = os.openpty()
        self.set_size(rows, cols)
        self.saved = termios.tcgetattr(self.slave)
        # setsid -c: a session of its own with this pty as the controlling terminal, so
        # the CLI is its foreground process group and gets SIGWINCH on resize.
        self.proc = bed.popen(["setsid", "-c", *cli, *args], stdin=self.slave,
                              stdout=self.slave, stderr=self.slave, env=env)
        self.buf = b""

    def set_size(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout: float = 15) -> re.Match[bytes]:
        """Read until pattern (a regex) matches what came since the last match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} not seen; got {self.buf!r}"
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    self.buf += os.read(self.master, 65536)
                except OSError:  # EIO: every slave fd closed
                    assert self.proc.poll() is None or m, f"{pattern!r} not seen: {self.buf!r}"
                    time.sleep(0.05)

    def wait(self, timeout: float = 30) -> int:
        """The CLI's exit code; whatever it wrote meanwhile is kept for expect()."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"CLI still running; output {self.buf!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.buf += os.read(self.master, 65536)
                except OSError:
                    time.sleep(0.05)
        return int(self.proc.returncode)

    def drain(self) -> bytes:
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                break
            if not data:
                break
            self.buf += data
        return self.buf

    def restored(self) -> bool:
        return termios.tcgetattr(self.slave) == self.saved

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminals() -> Any:
    opened: list[Terminal] = []

    def open_terminal(bed: Bed, *args: str, rows: int = 24, cols: int = 80) -> Terminal:
        t = Terminal(bed, list(args), rows, cols)
        opened.append(t)
        return t

    yield open_terminal
    for t in opened:
        t.close()


def assert_size(t: Terminal, size: bytes) -> None:
    """`stty size` in the container shows size, once the resize has travelled there."""
    deadline = time.monotonic() + 15
    while True:
        t.send(b"stty size\r")
        m = t.expect(rb"\r\n(\d+ \d+)\r\n")
        if m[1] == size or time.monotonic() > deadline:
            break
    assert m[1] == size


def journal_messages(bed: Bed, *matches: str) -> list[str]:
    return [e["MESSAGE"] for e in bed.journal(*matches) if isinstance(e.get("MESSAGE"), str)]


# --- stdin ------------------------------------------------------------------------------

def test_stdin_pipe_through_cat(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("cat")
    for i in range(3):
        out = bed.sdshim("run", "-i", "--name", f"{name}-{i}", str(bundle), input=b"foo\n")
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"foo\n" and out.stderr == b""


def test_stdin_sent_before_the_container_reads_is_kept(bed: Bed, name: str,
                                                       make_bundle: Any) -> None:
    # 3 MiB: more than the pipe and the monitor's queue hold, so the monitor must stop
    # reading the client until the container catches up, and lose nothing.
    bundle = make_bundle("sh", "-c", "sleep 1; wc -c; read x || echo eof")
    data = os.urandom(3 << 20)
    out = bed.sdshim("run", "-i", "--name", name, str(bundle), input=data)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(data)).encode(), b"eof"]


def test_without_i_stdin_is_empty(bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("run", "--name", name, str(make_bundle("wc", "-c")), input=b"ignored")
    assert out.returncode == 0 and out.stdout.strip() == b"0"


def test_detached_interactive_takes_input_through_attach(bed: Bed, name: str,
                                                         make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "while read l; do echo got $l; done; echo done; exit 4")
    out = bed.sdshim("run", "-d", "-i", "--name", name, str(bundle))
    assert out.returncode == 0, out.stderr
    assert status(bed, name)["stdin"] is True
    first = bed.sdshim("attach", name, input=b"a\nb\n")
    # EOF on attach's stdin closed the container's: it ended, attach returned its code.
    assert first.returncode == 4, first.stderr
    assert first.stdout == b"got a\ngot b\ndone\n"
    assert bed.sdshim("logs", name).stdout == b"got a\ngot b\ndone\n"


# --- terminals --------------------------------------------------------------------------

def test_tty_shell_session_prompt_resize_and_journal(bed: Bed, name: str, make_bundle: Any,
                                                     terminals: Any) -> None:
    bundle = make_bundle("sh")
    t = terminals(bed, "run", "-it", "--name", name, str(bundle), rows=24, cols=80)
    t.expect(rb"/ # ")
    t.send(b"stty size\r")
    t.expect(rb"\r\n24 80\r\n")  # the initial size
    t.set_size(30, 100)  # SIGWINCH to the CLI, which passes the size on
    assert_size(t, b"30 100")
    t.send(b"echo $((6*7))-answer\r")
    t.expect(rb"\r\n42-answer\r\n")
    t.send(b"exit 3\r")
    assert t.wait() == 3
    assert t.restored()
    s = status(bed, name)
    assert s["tty"] is True and s["exit_code"] == 3
    # The terminal's output is in the journal too, a line per entry, without the CR.
    messages = journal_messages(bed, f"CONTAINER_NAME={name}")
    assert "42-answer" in messages and "30 100" in messages


ERRORS = [
    (["bahs"], 127, 'exec: "bahs": executable file not found in $PATH'),
    (["/etc/passwd"], 126, "permission denied"),
    (["/foreign"], 126, "exec /foreign: exec format error"),
]


@pytest.mark.parametrize("args, code, message", ERRORS)
def test_command_errors_in_tty_mode_as_in_pipe_mode(bed: Bed, name: str, make_bundle: Any,
                                                    terminals: Any, args: list[str],
                                                    code: int, message: str) -> None:
    bundle = foreign_bundle(bed, make_bundle, *args)
    for i, mode in enumerate(([], ["-t"])):
        n = f"{name}-{i}"
        out = bed.sdshim("run", *mode, "--name", n, str(bundle))
        assert out.returncode == code, (mode, out.stderr)
        assert message in one_line_error(out)
        assert out.stdout == b""
        s = status(bed, n)
        assert s["exit_code"] == code and message in s["error"], s
    # And from a real terminal, which gets its settings back.
    t = terminals(bed, "run", "-it", "--name", f"{name}-t", str(bundle))
    assert t.wait() == code
    assert t.restored()
    shown = t.drain()
    assert shown.startswith(b"sdshim: ") and shown.count(b"\n") == 1, shown
    assert message.encode() in shown


def test_raw_mode_restored_when_the_cli_is_killed(bed: Bed, name: str, make_bundle: Any,
                                                  terminals: Any) -> None:
    t = terminals(bed, "run", "-it", "--name", name, str(make_bundle("sh")))
    t.expect(rb"/ # ")
    assert not t.restored()  # raw while attached
    cli = cli_pid(t.proc.pid)
    os.kill(cli, signal.SIGTERM)
    assert t.wait() == 128 + signal.SIGTERM
    assert t.restored()
    assert status(bed, name)["state"] == "running"  # only the CLI went


def cli_pid(nsenter: int) -> int:
    """The sdshim process (host pid) below nsenter (and setsid, which may fork)."""
    pid = nsenter
    deadline = time.monotonic() + 10
    while True:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"sdshim" in cmdline and cmdline[0] != b"nsenter" and cmdline[0] != b"setsid":
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            pid = int(children[0])
        assert time.monotonic() < deadline
        time.sleep(0.02)


# --- attach -----------------------------------------------------------------------------

def test_attach_detach_and_several_sessions(bed: Bed, name: str, make_bundle: Any,
                                            terminals: Any) -> None:
    out = bed.sdshim("run", "-d", "-it", "--name", name, str(make_bundle("sh")))
    assert out.returncode == 0, out.stderr
    a = terminals(bed, "attach", name)
    b = terminals(bed, "attach", "--detach-keys", "ctrl-x,x", name)
    # A watcher without a terminal and without input.
    watcher = bed.popen([*SDSHIM, "attach", "--no-stdin", name], stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    poll("3 attach clients", lambda: attach_clients(bed, name) == 3)
    a.send(b"echo from-$((20+1))\r")
    a.expect(rb"from-21")
    b.expect(rb"from-21")
    b.send(b"\x18x")  # b's own sequence
    assert b.wait() == 0
    assert b"detached" in b.drain()
    assert b.restored()
    a.send(b"\x10\x11")
    assert a.wait() == 0
    assert a.restored()
    assert status(bed, name)["state"] == "running"
    c = terminals(bed, "attach", name)
    poll("c attached", lambda: attach_clients(bed, name) == 2)
    c.send(b"exit 5\r")
    assert c.wait() == 5
    out_w, err_w = watcher.communicate(timeout=30)
    assert watcher.returncode == 5, err_w
    assert b"from-21" in out_w
    assert status(bed, name)["exit_code"] == 5


def attach_clients(bed: Bed, name: str) -> int:
    """Connections to the container's attach socket, counted in the monitor's fds."""
    monitor = status(bed, name)["monitor_pid"]
    out = bed.run(["ss", "-x", "-p", "-H", "state", "connected"])
    return sum(1 for line in out.stdout.decode().splitlines()
               if f"/run/sdshim/{name}/attach" in line and f"pid={monitor}," in line)


def read_frames(sock: socket.socket, until: int, timeout: float = 30) -> list[bytes]:
    """Frames from a raw attach connection, up to one of kind `until` (or its end)."""
    sock.settimeout(timeout)
    frames = []
    while frame := sock.recv(65536):
        frames.append(frame)
        if frame[0] == until:
            break
    return frames


def test_slow_client_misses_output_but_not_its_session(bed: Bed, name: str,
                                                       make_bundle: Any) -> None:
    size = 8 << 20  # far more than a client's queue and socket buffer hold
    script = f"read go; yes $(printf %0999d 0) | head -c {size}; echo end; read x; exit 6"
    out = bed.sdshim("run", "-d", "-i", "--name", name, str(make_bundle("sh", "-c", script)))
    assert out.returncode == 0, out.stderr
    path = str(bed.path(f"/run/sdshim/{name}/attach"))
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    slow.connect(path)
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    gone.connect(path)
    gone.close()
    slow.send(b"\x00go\n")  # a STDIN frame; then it reads nothing for a while
    # The container is not held back: all its output reaches the journal meanwhile.
    poll("the whole flood in the journal",
         lambda: bed.sdshim("logs", "--tail", "1", name).stdout.endswith(b"end\n"))
    slow.send(b"\x00x\n")
    frames = read_frames(slow, until=6)
    assert frames[-1][0] == 6 and json.loads(frames[-1][1:])["exit_code"] == 6
    data = sum(len(f) - 1 for f in frames if f[0] == 4)
    skipped = sum(int(f[1:]) for f in frames if f[0] == 7)
    assert skipped > 0 and data + skipped == size + len(b"end\n")
    assert status(bed, name)["exit_code"] == 6


def test_stalled_client_is_dropped(bed: Bed, name: str, make_bundle: Any) -> None:
    script = "read go; while :; do yes $(printf %0999d 0) | head -c 262144; sleep 0.1; done"
    out = bed.sdshim("run", "-d", "-i", "--name", name, str(make_bundle("sh", "-c", script)))
    assert out.returncode == 0, out.stderr
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stalled.connect(str(bed.path(f"/run/sdshim/{name}/attach")))
    stalled.send(b"\x00go\n")
    poll("the stalled client dropped", lambda: attach_clients(bed, name) == 0, timeout=60)
    lines = len(bed.sdshim("logs", name).stdout.splitlines())
    poll("output going on after the drop",
         lambda: len(bed.sdshim("logs", name).stdout.splitlines()) > lines)
    assert status(bed, name)["state"] == "running"
    frames = read_frames(stalled, until=6)
    assert frames and frames[-1][0] != 6  # cut off: no exit record
    stalled.close()
    assert bed.sdshim("stop", "--time", "1", name).returncode == 0


def test_attach_and_resize_for_a_container_from_another_process(
        bed: Bed, name: str, make_bundle: Any, terminals: Any) -> None:
    bundle = make_bundle("sh")
    script = (
        "import asyncio\n"
        "from pathlib import Path\n"
        "from sdshim.units.manager import Manager\n"
        "async def main():\n"
        "    async with await Manager.connect() as m:\n"
        f"        await m.create(Path({str(bundle)!r}), name={name!r}, start=True,\n"
        "                       tty=True, interactive=True)\n"
        "asyncio.run(main())\n"
    )
    assert bed.run([sys.executable, "-c", script]).returncode == 0
    t = terminals(bed, "attach", name, rows=33, cols=111)
    poll("attached", lambda: attach_clients(bed, name) == 1)
    t.send(b"stty size\r")
    t.expect(rb"\r\n33 111\r\n")  # attach gave the terminal its size
    t.set_size(40, 120)
    assert_size(t, b"40 120")
    t.send(b"exit\r")
    assert t.wait() == 0
    assert t.restored()


# --- exec -------------------------------------------------------------------------------

@pytest.fixture
def running(bed: Bed, name: str, make_bundle: Any) -> str:
    """A running container (sleeping) to exec in."""
    bundle = foreign_bundle(bed, make_bundle, "sleep", "1000")
    out = bed.sdshim("run", "-d", "--name", name, str(bundle))
    assert out.returncode == 0, out.stderr
    return name


def test_exec_output_status_journal_and_cgroup(bed: Bed, running: str) -> None:
    name = running
    out = bed.sdshim("exec", name, "--", "sh", "-c", "echo out-1; echo err-1 >&2; exit 3")
    assert out.returncode == 3, out.stderr
    assert out.stdout == b"out-1\n" and out.stderr == b"err-1\n"
    entries = [e for e in bed.journal(f"CONTAINER_NAME={name}") if e.get("SDSHIM_EXEC_ID")]
    assert sorted(e["MESSAGE"] for e in entries) == ["err-1", "out-1"]
    s = status(bed, name)
    exec_id = entries[0]["SDSHIM_EXEC_ID"]
    for e in entries:
        assert e["CONTAINER_ID_FULL"] == s["id"] and e["SDSHIM_EXEC_ID"] == exec_id
        assert e["_SYSTEMD_UNIT"] == f"sdshim-{name}:exec-{exec_id}.service"
    # The container's own log stays its own, and the exec left nothing behind.
    assert bed.sdshim("logs", name).stdout == b""
    units = bed.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                     f"sdshim-{name}:exec-*"]).stdout.decode()
    assert units.strip() == ""
    assert not list(bed.path(f"/run/sdshim/{name}").glob("exec-*"))
    assert [c["name"] for c in json.loads(bed.sdshim("list", "--json").stdout)
            if c["name"].startswith(name)] == [name]
    # The process runs in the container's cgroup, as the container's limits cover it.
    cg = bed.show(f"sdshim-{name}.service", "ControlGroup")["ControlGroup"]
    inside = bed.sdshim("exec", name, "--", "cat", "/proc/self/cgroup")
    assert f"0::{cg}/container" in inside.stdout.decode(), inside.stdout


def test_exec_stdin_and_env(bed: Bed, running: str) -> None:
    out = bed.sdshim("exec", "-i", "-e", "GREETING=hello", "-w", "/tmp", running, "--",
                     "sh", "-c", 'read x; echo "$GREETING $x from $(pwd)"', input=b"foo\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello foo from /tmp\n"


def test_exec_in_a_terminal(bed: Bed, running: str, terminals: Any) -> None:
    t = terminals(bed, "exec", "-it", running, "--", "sh", rows=20, cols=70)
    t.expect(rb"/ # ")
    t.send(b"tty; stty size\r")
    t.expect(rb"/dev/pts/\d+\r\n20 70\r\n")
    t.send(b"exit 4\r")
    assert t.wait() == 4
    assert t.restored()
    assert status(bed, running)["state"] == "running"


def test_exec_timeout(bed: Bed, running: str) -> None:
    started = time.monotonic()
    out = bed.sdshim("exec", "--timeout", "1", running, "--", "sh", "-c",
                     "echo begun; exec sleep 100")
    assert out.returncode == 124, out.stderr
    assert time.monotonic() - started < 30
    assert out.stdout == b"begun\n"
    assert "timed out after 1.0s" in one_line_error(out)
    assert status(bed, running)["state"] == "running"


@pytest.mark.parametrize("args, code, message", ERRORS)
def test_exec_errors(bed: Bed, running: str, args: list[str], code: int,
                     message: str) -> None:
    for mode in ([], ["-t"]):
        out = bed.sdshim("exec", *mode, running, "--", *args)
        assert out.returncode == code, (mode, out.stderr)
        assert message in one_line_error(out)
        assert out.stdout == b""
    assert not list(bed.path(f"/run/sdshim/{running}").glob("exec-*"))


def test_tty_refuses_the_stream_log_driver(bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("run", "-t", "--log-driver", "stream", "--name", name,
                     str(make_bundle("true")))
    assert out.returncode == 2 and "does not go with -t" in one_line_error(out)
    assert not bed.path(f"/run/sdshim/{name}").exists()


def test_exec_needs_a_running_container(bed: Bed, name: str, make_bundle: Any) -> None:
    assert bed.sdshim("run", "--name", name, str(make_bundle("true"))).returncode == 0
    out = bed.sdshim("exec", name, "--", "true")
    assert out.returncode == 125 and "not running" in one_line_error(out)
    out = bed.sdshim("exec", "sdt-nosuch", "--", "true")
    assert out.returncode == 125 and "no such container" in one_line_error(out)
    out = bed.sdshim("exec", name)
    assert out.returncode == 2 and "needs a command" in one_line_error(out)


def test_exec_with_crun_joins_the_container_cgroup(bed: Bed, name: str,
                                                   make_bundle: Any) -> None:
    out = bed.sdshim("run", "-d", "--runtime", "crun", "--name", name,
                     str(make_bundle("sleep", "1000")))
    assert out.returncode == 0, out.stderr
    cg = bed.show(f"sdshim-{name}.service", "ControlGroup")["ControlGroup"]
    inside = bed.sdshim("exec", name, "--", "sh", "-c", "cat /proc/self/cgroup; exit 7")
    assert inside.returncode == 7, inside.stderr
    assert f"0::{cg}/container" in inside.stdout.decode(), inside.stdout
    missing = bed.sdshim("exec", "-t", name, "--", "bahs")
    assert missing.returncode == 127 and "bahs" in one_line_error(missing)


def test_exec_forwards_signals_like_run(bed: Bed, running: str) -> None:
    script = "trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.05; done"
    proc = bed.popen([*SDSHIM, "exec", running, "--", "sh", "-c", script],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    os.kill(cli_pid(proc.pid), signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 9, err
    assert out == b"got-int\n"
    assert status(bed, running)["state"] == "running"
