"""sdshim-conmon's parts that need no test bed: the command line, messages, files."""

from __future__ import annotations

import _socket
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sdshim.conmon import exitfile, handover, launcher, logsinks, options, syncpipe, unit

PODMAN_ARGV = [
    "--api-version", "1", "-c", "a" * 64, "-u", "a" * 64, "-r", "/usr/bin/runc",
    "-b", "/b", "-p", "/b/pidfile", "-n", "web", "--exit-dir", "/run/libpod/exits",
    "--full-attach", "-s", "-l", "journald", "--log-level", "warning",
    "--runtime-arg", "--log-format=json", "--runtime-arg", "--log",
    "--runtime-arg=/b/oci-log", "--conmon-pidfile", "/b/conmon.pid",
    "--exit-command", "/usr/bin/podman", "--exit-command-arg", "--root",
    "--exit-command-arg", "container", "--exit-command-arg", "cleanup",
    "--runtime-opt", "--preserve-fds", "--runtime-opt", "2", "--timeout=7", "-it",
]


def test_podman_command_line_by_glib_rules() -> None:
    opts = options.parse(PODMAN_ARGV)
    assert opts.api_version and opts.cid == "a" * 64 and opts.name == "web"
    # --runtime-arg=VALUE: the value is what follows the first =
    assert opts.runtime_arg == ["--log-format=json", "--log", "/b/oci-log"]
    assert opts.exit_command_arg == ["--root", "container", "cleanup"]
    assert opts.systemd_cgroup and opts.full_attach and opts.terminal and opts.stdin
    assert opts.timeout == 7 and opts.preserved_fds() == 2
    assert opts.logs() == [("journald", "")]


def test_log_drivers() -> None:
    opts = options.parse(["-l", "k8s-file:/x/log", "-l", "/y/log", "-l", "off",
                          "-l", "passthrough"])
    assert opts.logs() == [("k8s-file", "/x/log"), ("k8s-file", "/y/log"), ("none", ""),
                           ("passthrough", "")]
    with pytest.raises(options.UsageError, match="No such log driver bogus"):
        options.parse(["-l", "bogus:x"]).logs()


@pytest.mark.parametrize(("argv", "message"), [
    (["--bogus"], "Unknown option --bogus"),
    (["-Z"], "Unknown option -Z"),
    (["--timeout", "soon"], "Cannot parse integer value \u201csoon\u201d for --timeout"),
    (["-c"], "Missing argument for -c"),
    (["--exec=yes"], "Unexpected argument to option --exec"),
])
def test_bad_command_lines(argv: list[str], message: str) -> None:
    with pytest.raises(options.OptionError, match=re.escape(message)):
        options.parse(argv)


def test_required_options_in_conmons_order() -> None:
    with pytest.raises(options.UsageError, match="Container ID not provided"):
        options.check(options.parse([]))
    with pytest.raises(options.UsageError, match="Container UUID not provided"):
        options.check(options.parse(["-c", "x"]))
    with pytest.raises(options.UsageError, match="Runtime path not provided"):
        options.check(options.parse(["-c", "x", "-u", "x"]))
    with pytest.raises(options.UsageError, match="Runtime path /no/such is not valid"):
        options.check(options.parse(["-c", "x", "-u", "x", "-r", "/no/such"]))
    with pytest.raises(options.UsageError, match="Log driver not provided"):
        options.check(options.parse(["-c", "x", "-u", "x", "-r", "/bin/true"]))
    with pytest.raises(options.UsageError, match=r"--restore .* is not supported"):
        options.check(options.parse(["-c", "x", "-u", "x", "-r", "/bin/true", "-l", "none",
                                     "--restore", "/b/checkpoint"]))


def test_version_is_what_podman_parses(capsys: pytest.CaptureFixture[str]) -> None:
    assert launcher.main(["--version"]) == 0
    out = capsys.readouterr().out
    # libpod/oci_conmon_common.go: the regexp and the minimum podman 4.3 wants
    m = re.match(r"^(version:|conmon version)? (\d+).(\d+).(\d+)", out)
    assert m is not None and tuple(map(int, m.groups()[1:])) >= (2, 0, 1)


def test_option_errors_exit_1_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert launcher.main(["--bogus"]) == 1
    out = capsys.readouterr()
    assert out.out == "conmon: option parsing failed: Unknown option --bogus\n"
    assert launcher.main(["-c", "x", "-u", "x", "-r", "/bin/true"]) == 1
    assert capsys.readouterr().err == "[conmon:e] Log driver not provided. Use --log-path\n"


def test_sync_messages() -> None:
    r, w = os.pipe()
    assert syncpipe.write(w, 42)
    assert syncpipe.write(w, -1, "exec: \"x\": not found")
    assert os.read(r, 4096) == \
        b'{"data": 42}\n{"data": -1, "message": "exec: \\"x\\": not found"}\n'
    assert syncpipe.write(w, -1, "y" * 10000)
    line = os.read(r, 65536)
    assert line.endswith(b"\n") and len(line) <= syncpipe.MAX_MESSAGE
    os.close(r)
    assert not syncpipe.write(w, 0)  # podman stopped reading: no exception
    os.close(w)


def test_exit_file_is_whole(tmp_path: Path) -> None:
    exitfile.write_exit([str(tmp_path)], "cid", 137)
    assert (tmp_path / "cid").read_bytes() == b"137"
    assert [p.name for p in tmp_path.iterdir()] == ["cid"]


def test_k8s_file_format_and_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    log = logsinks.K8sFile(str(path), 400)
    log.write("stdout", [(b"one", False), (b"tw", True)])
    log.write("stderr", [(b"o", False)])
    text = path.read_text()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d"
    assert re.fullmatch(rf"{stamp} stdout F one\n{stamp} stdout P tw\n{stamp} stderr F o\n",
                        text), text
    log.write("stdout", [(b"x" * 300, False)])  # would pass 400 bytes: a new file
    assert path.read_text().endswith("stdout F " + "x" * 300 + "\n")
    assert path.read_text().count("\n") == 1
    log.close()


def test_unit_names() -> None:
    assert unit.unit_name("web", "f" * 64) == "sdshim-podman-web.service"
    assert unit.unit_name("a b", "0123456789abcdef") == "sdshim-podman-0123456789ab.service"
    assert unit.slice_of("machine.slice:libpod:abc") == "machine.slice"
    assert unit.slice_of("/some/path") == "machine.slice"
    assert unit.unit_name("w" * 200, "f" * 64) == f"sdshim-podman-{'w' * 200}.service"
    assert unit.unit_name("w" * 201, "f" * 64) == "sdshim-podman-ffffffffffff.service"
    assert unit.unit_name("", "f" * 64) == "sdshim-podman-ffffffffffff.service"
    assert unit.slice_of("machine-libpod_pod_ab.slice:libpod:x") == "machine-libpod_pod_ab.slice"
    assert unit.slice_of(".slice:libpod:x") == "machine.slice"
    assert unit.slice_of("a/b.slice:libpod:x") == "machine.slice"


def test_what_holds_a_units_name() -> None:
    """A unit of the name a container's unit wants: this container's finishing monitor
    (a restart), an ended container's unit about to go (wait for it), or taken."""
    cid = "ab12" * 16
    mine = {"Description": f"podman container web ({cid[:12]})", "ActiveState": "active",
            "MainPID": 40}
    other = {**mine, "Description": "podman container web (0123456789ab)"}
    assert unit.clash(mine, cid) == unit.OURS
    assert unit.clash({**mine, "MainPID": 0}, cid) == unit.OURS
    assert unit.clash(other, cid) == unit.TAKEN  # its monitor runs
    # Its monitor has exited: the exit command runs on (ExitType=cgroup), or the
    # ExecStopPost= cgroup trim, or the unit is inactive and not yet collected.
    assert unit.clash({**other, "MainPID": 0}, cid) == unit.ENDED
    for state in ("deactivating", "inactive", "failed"):
        assert unit.clash({**other, "ActiveState": state}, cid) == unit.ENDED
    assert unit.clash(None, cid) == unit.ENDED  # gone meanwhile: the name again
    # Not a podman container's unit: never waited for, never shadowed by an instance.
    assert unit.clash({"Description": "my own web", "ActiveState": "inactive",
                       "MainPID": 0}, cid) == unit.TAKEN
    assert unit.properties("u", "web", cid, "machine.slice", ["/m"], [], "/")[0] == (
        "Description", "s", f"podman container web ({cid[:12]})")


def test_handover_passes_fds_and_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sock")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.listen(1)
    r, w = os.pipe()
    got: dict[str, object] = {}

    def monitor() -> None:
        conn, payload, fds = handover.receive(path)
        got.update(payload=payload, fds=fds)
        conn.send(handover.ACK)
        conn.close()

    t = threading.Thread(target=monitor)
    t.start()
    fd, _ = sock._accept()  # type: ignore[attr-defined]
    conn = _socket.socket(fileno=fd)
    assert handover.peer_pid(conn) == os.getpid()
    handover.send(conn, {"argv": ["-c", "x"], "env": ["A=1"]}, [w])
    handover.wait_ack(conn, 10)
    t.join(10)
    fds = got["fds"]
    assert isinstance(fds, dict) and list(fds) == [w] and fds[w] != w
    os.write(fds[w], b"through")  # the monitor's copy is the same pipe
    assert os.read(r, 100) == b"through"
    assert got["payload"] == {"argv": ["-c", "x"], "env": ["A=1"]}
    for fd in (r, w, fds[w]):
        os.close(fd)
    conn.close()
    sock.close()


def test_the_libexec_front_answers_version_and_execs_the_script(tmp_path: Path) -> None:
    """/usr/libexec/sdshim/conmon (packaging/libexec/conmon) answers podman's --version
    without Python, as the launcher would, and hands anything else, fds included, to
    ../../bin/sdshim-conmon in the same process."""
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    front = tmp_path / "libexec" / "sdshim" / "conmon"
    front.parent.mkdir(parents=True)
    shutil.copy2(repo / "packaging" / "libexec" / "conmon", front)
    out = subprocess.run([str(front), "--version"], capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout == options.version()
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "sdshim-conmon"
    stand_in.write_text('#!/bin/sh\necho "$$ $*"; [ -e /proc/self/fd/"$FD" ] && echo held\n')
    stand_in.chmod(0o755)
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([str(front), "--version", "--cid", "x y"], pass_fds=(r,),
                                env={"FD": str(r), "PATH": "/usr/bin:/bin"},
                                stdout=subprocess.PIPE, text=True)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        os.close(r)
        os.close(w)
    assert stdout == f"{proc.pid} --version --cid x y\nheld\n"


TERMINAL_PROBE = r"""
import posix, sys, _socket
sys.path.insert(0, sys.argv[1])
from sdshim import leanos
from sdshim.conmon import handover, options
from sdshim.conmon.monitor import Monitor

handover.HANDOVER_DIR = sys.argv[2]  # /run/sdshim-conmon needs root
opts = options.parse(["-c", "a" * 64, "-u", "a" * 64, "-r", "/bin/true", "-b", sys.argv[2],
                      "-l", "none", "-t"])
monitor = Monitor(opts, {"env": []}, {})
_flag, path = monitor.console_socket()
master, slave = posix.openpty()
runtime = posix.fork()
if runtime == 0:  # what runc does with --console-socket
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.connect(path)
    s.sendmsg([b"/dev/ptmx"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                master.to_bytes(4, sys.byteorder))])
    posix._exit(0)
error = monitor.take_terminal()
posix.waitpid(runtime, 0)
same = posix.fstat(monitor.master).st_rdev == posix.fstat(master).st_rdev
print(repr(error), same, leanos.exists(path), "socket" in sys.modules)
"""


def test_the_terminal_is_taken_without_the_socket_module(tmp_path: Path) -> None:
    """runc's --console-socket hands the pty master over; the monitor takes it with
    _socket: the standard socket module (with enum and selectors, ~1.1 MB) would stay
    in every -t container's monitor."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-I", "-S", "-c", TERMINAL_PROBE, str(root),
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["''", "True", "False", "False"], out
