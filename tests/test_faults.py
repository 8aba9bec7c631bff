"""Faults injected into the monitor's optional parts: the container must not notice.

Each test breaks one part (the attach socket, the control socket, the CRI log file,
journald, an attach client) while a container runs, and checks that the container
keeps running, that the journal has every line it could keep, and that the container
ends with its own exit code. The monitor is the container's lifeline: only the
container's exit may end it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import Any

from tests.conftest import Bed
from tests.test_container import status
from tests.test_lifecycle import monitor_pid, poll


def counter(make_bundle: Any, n: int, code: int, pause: float = 0.01,
            then: str = "") -> Any:
    """A bundle writing line0..line{n-1}, then (then, or) exiting with code."""
    script = f"i=0; while [ $i -lt {n} ]; do echo line$i; i=$((i+1)); sleep {pause}; done; "
    script += then or f"exit {code}"
    return make_bundle("sh", "-c", script)


def lines_of(bed: Bed, name: str) -> list[str]:
    return bed.sdshim("logs", name).stdout.decode().split()


def assert_ends_with(bed: Bed, name: str, code: int) -> None:
    out = bed.sdshim("wait", name, timeout=180)
    assert out.stdout == f"{code}\n".encode(), out
    s = status(bed, name)
    assert s["exit_code"] == code and s["error"] is None, s


def degraded_events(bed: Bed, name: str) -> list[str]:
    return [e["MESSAGE"] for e in bed.journal(f"SDSHIM_CONTAINER_NAME={name}",
                                              "SDSHIM_EVENT=degraded")]


def test_malformed_attach_frames_cost_nothing(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = counter(make_bundle, 50, 7, pause=0.05, then="sleep 3; exit 7")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    path = str(bed.path(f"/run/sdshim/{name}/attach"))
    frames = [b"", b"\x99unknown kind", b"\x01short", b"\x01" + b"x" * 100,
              b"\x00" + b"stdin without -i", b"\x02", b"\x03", b"\x07forged skip",
              b"\x06{forged exit", b"\x00" + b"y" * 40000]
    for frame in frames:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        client.connect(path)
        with contextlib.suppress(OSError):  # too big for a frame: refused, fine too
            client.send(frame)
        client.close()
    # And one client that sends them all on one connection, then goes away rudely.
    client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client.connect(path)
    for frame in frames[:-1]:
        # The monitor may drop this client at its first bad frame: then the rest bounce.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            client.send(frame)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()
    assert status(bed, name)["state"] == "running"
    assert_ends_with(bed, name, 7)
    assert lines_of(bed, name) == [f"line{i}" for i in range(50)]


def test_malformed_control_requests_cost_nothing(bed: Bed, name: str,
                                                 make_bundle: Any) -> None:
    bundle = counter(make_bundle, 20, 5, pause=0.05, then="sleep 6; exit 5")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    path = str(bed.path(f"/run/sdshim/{name}/control"))

    def send(data: bytes, close_write: bool = True) -> bytes:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        if data:
            s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        try:
            reply = s.makefile("rb").readline()
        except ConnectionResetError:  # closed with what it did not read: no answer
            reply = b""
        s.close()
        return reply

    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(path)  # connects and never sends: must not hold anything up
    assert send(b'{"a" 1}') == b""  # a JSON error deep in the scanner: no answer
    assert send(b"\xff\xfe not utf-8") == b""
    assert send(b"[" * 5000) == b""  # too long
    assert send(b'{"op": "st') == b""  # half a request, then EOF
    assert b"invalid request" in send(b'{"op": "stop", "timeout": NaN}')
    assert b"invalid request" in send(b'{"op": "stop", "timeout": -1}')
    assert b"cannot start" in send(b'{"op": "start"}')
    assert b"invalid request" in send(b'{"op": "kill", "signal": 1e9}')
    assert status(bed, name)["state"] == "running"
    idle.close()
    assert_ends_with(bed, name, 5)
    assert lines_of(bed, name) == [f"line{i}" for i in range(20)]


def test_log_file_on_a_full_tmpfs(bed: Bed, name: str, make_bundle: Any) -> None:
    full = bed.scratch / f"full-{name}"
    full.mkdir()
    assert bed.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)]).returncode == 0
    try:
        bed.run(["sh", "-c", f"cat /dev/zero > {full}/filler"])  # fills it: ENOSPC
        bundle = counter(make_bundle, 300, 3, pause=0.0)
        out = bed.sdshim("run", "-d", "--log-path", f"{full}/ctr.log", "--log-size-max", "8192",
                         "--name", name, str(bundle))
        assert out.returncode == 0, out.stderr
        assert_ends_with(bed, name, 3)
        assert lines_of(bed, name) == [f"line{i}" for i in range(300)]
        unit = f"sdshim-{name}.service"
        complaints = [e["MESSAGE"] for e in bed.journal(f"_SYSTEMD_UNIT={unit}")
                      if "cannot write log file" in str(e.get("MESSAGE"))]
        assert len(complaints) == 1, complaints  # said once, not per line
    finally:
        bed.run(["umount", "-l", str(full)])


def control(bed: Bed, name: str, request: bytes) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)  # a monitor stuck in a send to journald would not answer in time
    s.connect(str(bed.path(f"/run/sdshim/{name}/control")))
    s.sendall(request)
    reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
    s.close()
    return reply


def test_journald_stopped_for_30s_and_started_again(bed: Bed, name: str,
                                                    make_bundle: Any) -> None:
    # journald frozen (SIGSTOP) for 30 s: its socket stays, its queue fills, sends
    # would block. The monitor holds the output back instead (the container's pipe
    # holds it meanwhile), goes on serving, and loses no line.
    bundle = counter(make_bundle, 400, 9, pause=0.1)
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    poll("some output", lambda: lines_of(bed, name))
    pid = monitor_pid(bed, name)
    journald = ["systemctl", "kill", "--kill-whom=main", "systemd-journald.service"]
    assert bed.run([*journald, "-s", "STOP"]).returncode == 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # The monitor lives on and answers at once.
            assert bed.run(["kill", "-0", str(pid)]).returncode == 0
            reply = control(bed, name, b'{"op": "start"}')
            assert reply == {"ok": False, "error": f"Container {name} is running: "
                                                   "cannot start"}, reply
            time.sleep(3)
    finally:
        assert bed.run([*journald, "-s", "CONT"]).returncode == 0
    assert_ends_with(bed, name, 9)
    assert lines_of(bed, name) == [f"line{i}" for i in range(400)]


def test_an_attach_client_that_stalls(bed: Bed, name: str, make_bundle: Any) -> None:
    # 8 MB of output while a client reads none of it: it is dropped, the journal gets
    # every line, the container its real status.
    script = ("i=0; while [ $i -lt 8 ]; do yes $(printf %0999d $i) | head -n 1024; "
              "i=$((i+1)); sleep 0.5; done; echo done; exit 4")
    bundle = make_bundle("sh", "-c", f"sleep 2; {script}")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stalled.connect(str(bed.path(f"/run/sdshim/{name}/attach")))
    assert_ends_with(bed, name, 4)
    got = bed.sdshim("logs", name).stdout.decode().split()
    assert got[-1] == "done" and len(got) == 8 * 1024 + 1
    stalled.close()


def test_an_orphaning_container_keeps_the_monitor_flat(bed: Bed, name: str,
                                                       make_bundle: Any) -> None:
    # Without a PID namespace, whatever the container orphans becomes the monitor's
    # child (it is the subreaper): thousands of reaped pids must not be kept.
    bundle = make_bundle("sh", "-c", "n=0; while :; do (true &); n=$((n+1)); "
                                     "[ $((n % 1000)) = 0 ] && echo $n; done")
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"]
                                     if n["type"] != "pid"]
    (bundle / "config.json").write_text(json.dumps(config))
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    pid = monitor_pid(bed, name)

    def private_dirty() -> int:
        text = bed.read(f"/proc/{pid}/smaps_rollup")
        return int(text.split("Private_Dirty:")[1].split()[0])

    def orphans() -> int:
        got = lines_of(bed, name)
        return int(got[-1]) if got else 0

    time.sleep(5)
    before, orphaned = private_dirty(), orphans()
    time.sleep(30)
    after = private_dirty()
    assert orphans() - orphaned >= 3000, "too few orphans to tell"
    assert status(bed, name)["state"] == "running"
    assert after - before < 256, f"monitor Private_Dirty grew {after - before} kB"
    assert bed.sdshim("kill", "-s", "KILL", name).returncode == 0
    assert_ends_with(bed, name, 137)
