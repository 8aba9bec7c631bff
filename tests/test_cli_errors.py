"""The CLI's edge: every failure is one line on stderr and an exit code that cannot pass
for a container's (125 for sdshim's own trouble, 2 for bad usage), never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from sdshim.units import cli, wire
from tests.conftest import SDSHIM
from tests.fakebus import HANGUP, FakeBus, fake_bus

REPO = Path(__file__).resolve().parent.parent
JOB = "/org/freedesktop/systemd1/job/7"

# --- durations: NaN, infinite, negative and absurd values are usage errors ------------

# OPTION=VALUE: argparse takes `--time -inf` for two options.
DURATIONS = [
    (["stop", "--time={}", "web"], "--time"),
    (["stop", "-t{}", "web"], "--time"),
    (["exec", "--timeout={}", "web", "--", "true"], "--timeout"),
    (["run", "--stop-timeout={}", "/b"], "--stop-timeout"),
    (["create", "--stop-timeout={}", "/b"], "--stop-timeout"),
    (["run", "-d", "--restart-delay={}", "/b"], "--restart-delay"),
    (["create", "--restart-delay={}", "/b"], "--restart-delay"),
]
BAD = ["nan", "NaN", "inf", "-inf", "infinity", "-1", "-0.5", "1e10", "ten", "1s"]


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("argv, option", DURATIONS, ids=lambda x: " ".join(x) if
                         isinstance(x, list) else x)
def test_a_bad_duration_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str], argv: list[str], option: str,
        value: str) -> None:
    code = cli.main([a.replace("{}", value) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err == (f"sdshim: invalid {option} {value!r}: give a number of seconds, 0 or "
                   "more (at most 1000000000), e.g. 10 or 0.5\n")


@pytest.mark.parametrize("value, seconds", [("0", 0.0), ("0.5", 0.5), ("10", 10.0),
                                            ("1e9", 1e9)])
@pytest.mark.parametrize("argv, option", DURATIONS, ids=lambda x: " ".join(x) if
                         isinstance(x, list) else x)
def test_a_good_duration_parses(argv: list[str], option: str, value: str,
                                seconds: float) -> None:
    argv = [a.replace("{}", value) for a in argv]
    args = cli.build_parser(argv[0]).parse_args(argv)
    assert getattr(args, option.lstrip("-").replace("-", "_")) == seconds


def test_the_python_api_refuses_a_nan_stop_timeout_too() -> None:
    from sdshim.errors import UsageError
    from sdshim.units.spec import ContainerSpec

    with pytest.raises(UsageError, match="invalid --stop-timeout nan"):
        ContainerSpec("web", "0" * 64, Path("/b"), "/usr/bin/runc", stop_timeout=float("nan"))
    with pytest.raises(UsageError, match="invalid --restart-delay -1"):
        ContainerSpec("web", "0" * 64, Path("/b"), "/usr/bin/runc", restart_delay=-1)


# --- unexpected exceptions -------------------------------------------------------------

UNEXPECTED = [
    (RuntimeError("boom\nsecond line"), "RuntimeError: boom"),
    (TimeoutError(), "TimeoutError"),
    (EOFError(), "EOFError"),
    (OSError(5, "Input/output error"), "OSError: [Errno 5] Input/output error"),
    (KeyError("ExecStart"), "KeyError: 'ExecStart'"),
]


@pytest.mark.parametrize("command", [["create", "/b"], ["status", "web"], ["wait", "web"]])
@pytest.mark.parametrize("error, said", UNEXPECTED, ids=lambda x: type(x).__name__)
def test_an_unexpected_exception_is_one_line_and_125(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        error: Exception, said: str, command: list[str]) -> None:
    monkeypatch.delenv("SDSHIM_DEBUG", raising=False)

    def fail(*args: Any, **kw: Any) -> Any:
        raise error

    # Each path: create and run -d, the quick commands, and the asyncio one.
    monkeypatch.setattr(cli, "detached_create", fail)
    monkeypatch.setattr(cli, "quick_command", fail)
    monkeypatch.setattr(cli, "run_command", fail)
    code = cli.main(command)
    out, err = capsys.readouterr()
    assert code == 125
    assert out == ""
    assert err == (f"sdshim: unexpected error ({said}); this is a bug in sdshim, please "
                   "report it (SDSHIM_DEBUG=1 shows the traceback)\n")


def test_sdshim_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "detached_create", fail)
    monkeypatch.setenv("SDSHIM_DEBUG", "1")
    assert cli.main(["create", "/b"]) == 125
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in fail\n" in err and "RuntimeError: boom\n" in err
    assert err.endswith("(SDSHIM_DEBUG=1 shows the traceback)\n")


# --- the bus going away under the real CLI ----------------------------------------------


def hang_up_at(bus: FakeBus, at: str) -> Any:
    """systemd as far as the call named at, where the bus hangs up ("JobRemoved": the
    start is queued, and the bus goes before the job ends)."""

    def script(msg: Any) -> list[bytes] | None:
        if msg.member == at:
            return [HANGUP]
        if msg.member == "StartTransientUnit":
            return [bus.reply(msg, "o", [JOB]), HANGUP]
        return None

    return script


def sdshim(argv: list[str], bus: FakeBus) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address, PYTHONPATH=str(REPO))
    env.pop("SDSHIM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "sdshim", *argv], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "config.json").write_text(json.dumps({"process": {"args": ["true"]}}))
    return b


@pytest.mark.parametrize("argv, at, said", [
    # The blocking client (create, run -d) and dbus-fast (attached run), mid-start.
    (["create"], "JobRemoved", "systemd to start sdshim-sdt-cut.service; container "
     "sdt-cut may have started anyway: see `sdshim status sdt-cut`"),
    (["run", "-d"], "StartTransientUnit", "systemd to start sdshim-sdt-cut.service; "
     "container sdt-cut may have started anyway: see `sdshim status sdt-cut`"),
    (["run"], "JobRemoved", "systemd to start sdshim-sdt-cut.service; container "
     "sdt-cut may have started anyway: see `sdshim status sdt-cut`"),
    (["run"], "StartTransientUnit", "systemd to start sdshim-sdt-cut.service; "
     "container sdt-cut may have started anyway: see `sdshim status sdt-cut`"),
])
def test_a_lost_bus_during_a_start_is_one_line_and_125(
        tmp_path: Path, bundle: Path, argv: list[str], at: str, said: str) -> None:
    with fake_bus(tmp_path, lambda msg: script(msg)) as bus:
        script = hang_up_at(bus, at)
        out = sdshim([*argv, "--name", "sdt-cut", "--runtime", "/bin/true", str(bundle)],
                     bus)
    assert out.returncode == 125, out.stderr
    assert out.stderr == f"sdshim: the system bus closed the connection while waiting " \
                         f"for {said}\n"
    assert out.stdout == ""


@pytest.mark.parametrize("argv", [["status", "sdt-cut"], ["stop", "sdt-cut"],
                                  ["wait", "sdt-cut"], ["kill", "sdt-cut"],
                                  ["delete", "sdt-cut"], ["list"]])
def test_a_lost_bus_in_other_commands_is_one_line_and_125(tmp_path: Path,
                                                          argv: list[str]) -> None:
    with fake_bus(tmp_path, lambda msg: script(msg)) as bus:
        script = hang_up_at(bus, "GetAll" if argv != ["list"] else "ListUnitsByPatterns")
        out = sdshim(argv, bus)
    assert out.returncode == 125, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("sdshim: the system bus closed the connection while "
                               "waiting for systemd"), lines[0]
    assert "is dbus running?" in lines[0]


def test_a_bus_that_never_answers_is_a_timeout_not_a_hang(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str],
                                                          bundle: Path) -> None:
    from sdshim.units import connection

    monkeypatch.setattr(connection, "CALL_TIMEOUT", 0.3)
    with fake_bus(tmp_path, lambda msg: [] if msg.member == "StartTransientUnit"
                  else None) as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        code = cli.main(["create", "--name", "sdt-cut", "--runtime", "/bin/true",
                         str(bundle)])
    assert code == 125
    assert capsys.readouterr().err == (
        "sdshim: timed out after 0.3 s waiting for systemd to start "
        "sdshim-sdt-cut.service; container sdt-cut may have started anyway: see "
        "`sdshim status sdt-cut`\n")



# --- and against the test bed's real bus -----------------------------------------------


class CuttingProxy:
    """Relays clients to the real system bus and hangs up on each right after passing
    on the reply to its StartTransientUnit call: the job is queued, and the client
    loses the bus before the job ends."""

    def __init__(self, listen: Path, upstream: Path) -> None:
        self.upstream = upstream
        self.cuts = 0
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(listen))
        self.server.listen(4)
        self.address = f"unix:path={listen}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(10)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            bus = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bus.connect(str(self.upstream))
            with client, bus, contextlib.suppress(OSError):
                self._relay(client, bus)

    def _relay(self, client: socket.socket, bus: socket.socket) -> None:
        up, down = Stream(), Stream()
        start_serial = None
        while True:
            readable, _, _ = select.select([client, bus], [], [], 60)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client:
                    bus.sendall(data)
                    for call in up.feed(data):
                        if call.member == "StartTransientUnit":
                            start_serial = call.serial
                    continue
                for raw, msg in down.feed_raw(data):
                    client.sendall(raw)
                    if msg is not None and start_serial is not None and \
                            msg.type == wire.METHOD_RETURN and msg.reply_serial == start_serial:
                        self.cuts += 1
                        client.shutdown(socket.SHUT_RDWR)
                        return


class Stream:
    """One direction of a D-Bus connection: authentication lines, then messages."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.authenticating = True

    def feed(self, data: bytes) -> list[wire.Message]:
        return [msg for _raw, msg in self.feed_raw(data) if msg is not None]

    def feed_raw(self, data: bytes) -> list[tuple[bytes, wire.Message | None]]:
        """The messages data completes, each with its bytes; the auth lines pass as
        raw bytes with a None message."""
        self.buf += data
        out: list[tuple[bytes, wire.Message | None]] = []
        while self.authenticating and b"\r\n" in self.buf:
            line, _, rest = bytes(self.buf).partition(b"\r\n")
            self.buf[:] = rest
            out.append((line + b"\r\n", None))
            # The client's BEGIN, or the bus's OK (neither client negotiates fds).
            if line.lstrip(b"\0").startswith((b"BEGIN", b"OK ")):
                self.authenticating = False
        while not self.authenticating and len(self.buf) >= wire.HEADER_SIZE:
            length = wire.message_length(self.buf)
            if len(self.buf) < length:
                break
            raw = bytes(self.buf[:length])
            del self.buf[:length]
            out.append((raw, wire.Message.from_bytes(raw)))
        return out


@pytest.mark.parametrize("argv", [["create"], ["run"]], ids=["blocking", "asyncio"])
def test_the_real_bus_going_away_mid_start_is_one_line_and_125(
        bed: Any, name: str, make_bundle: Any, argv: list[str]) -> None:
    proxy = CuttingProxy(bed.scratch / f"cut-{name}", bed.path("/run/dbus/system_bus_socket"))
    try:
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=proxy.address)
        env.pop("SDSHIM_DEBUG", None)
        out = bed.run([*SDSHIM, *argv, "--name", name, str(make_bundle("sleep", "100"))],
                      env=env)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert out.returncode == 125, out.stderr.decode()
    assert out.stderr.decode() == (
        f"sdshim: the system bus closed the connection while waiting for systemd to "
        f"start sdshim-{name}.service; container {name} may have started anyway: see "
        f"`sdshim status {name}`\n")
    # What it says to do works: the container's unit went on without the CLI.
    status = bed.sdshim("status", "--json", name)
    assert status.returncode == 0, status.stderr.decode()
    assert json.loads(status.stdout)["name"] == name


def test_the_python_api_refuses_a_nan_stop_time() -> None:
    import asyncio

    from sdshim.errors import UsageError
    from sdshim.units.blockingmanager import BlockingManager
    from sdshim.units.manager import Manager

    # Refused before any call: neither manager needs a bus for it.
    with pytest.raises(UsageError, match="invalid --time nan"):
        BlockingManager(None).stop("web", float("nan"))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="invalid --time -1"):
        asyncio.run(Manager(None).stop("web", -1))  # type: ignore[arg-type]


# --- the console script's quick exit (cli.entry) ---------------------------------------


def test_the_lean_path_exits_quickly_with_its_output_flushed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As the console script runs it: one line, sdshim's exit code.
    out = subprocess.run([sys.executable, "-m", "sdshim", "create", "--name", "sdt-quick",
                          str(tmp_path / "nothing")], capture_output=True, timeout=60)
    assert out.returncode == 125, out
    assert out.stderr.decode().splitlines() == [
        f"sdshim: bundle {tmp_path / 'nothing'} does not exist or is not a directory; give "
        "the directory that holds config.json and the rootfs"]
    # os._exit skips Python's finalization: stdout and stderr are flushed before it.
    flushed: list[str] = []

    class Stream:
        def __init__(self, name: str) -> None:
            self.name = name

        def flush(self) -> None:
            flushed.append(self.name)

    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(cli, "main", lambda: 7)
    monkeypatch.setattr(sys, "stdout", Stream("stdout"))
    monkeypatch.setattr(sys, "stderr", Stream("stderr"))
    monkeypatch.delitem(sys.modules, "asyncio", raising=False)
    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(Exited) as e:
        cli.entry()
    assert (e.value.args, flushed) == ((7,), ["stdout", "stderr"])
    # What loaded asyncio ends the ordinary way.
    monkeypatch.setitem(sys.modules, "asyncio", object())
    with pytest.raises(SystemExit) as ended:
        cli.entry()
    assert ended.value.code == 7
