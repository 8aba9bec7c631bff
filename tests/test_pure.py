"""Unit tests for the parts that need no systemd: names, encodings, properties, parsing."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sdshim import leanjson, leanos, naming, rundir, spawn
from sdshim.errors import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_RUNTIME,
    InvalidNameError,
    UsageError,
)
from sdshim.shim import framing, runtime
from sdshim.shim.crilog import CriLog
from sdshim.shim.journal import LineSplitter, encode_entry, encode_field
from sdshim.units import spec
from sdshim.units.cliargs import parse_signal
from sdshim.units.detachkeys import DetachKeys, parse_detach_keys
from sdshim.units.logs import ExportParser, Reassembler, parse_export
from sdshim.units.systemd1 import unit_path


@pytest.mark.parametrize("good", ["web", "a", "db-1", "x.y_z", "A" * 63, "0abc"])
def test_valid_names(good: str) -> None:
    assert naming.validate_name(good) == good


@pytest.mark.parametrize("bad", ["", "-x", ".x", "_x", "a b", "a/b", "../etc", "a;b", "a@b",
                                 "a\\x2d", "a" * 64, "x.", "a..b", "é", "a\nb"])
def test_invalid_names(bad: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid container name"):
        naming.validate_name(bad)


def test_generated_names_and_ids_are_valid_and_distinct() -> None:
    names = {naming.generate_name() for _ in range(50)}
    assert len(names) == 50
    for n in names:
        naming.validate_name(n)
    cid = naming.generate_id()
    assert len(cid) == 64 and int(cid, 16) >= 0


def test_unit_name_round_trip() -> None:
    assert naming.unit_name("web") == "sdshim-web.service"
    assert naming.name_from_unit("sdshim-web.service") == "web"
    assert naming.name_from_unit("other.service") is None


def test_unit_path_escapes_like_sd_bus() -> None:
    assert unit_path("sdshim-a.b_c.service") == \
        "/org/freedesktop/systemd1/unit/sdshim_2da_2eb_5fc_2eservice"


def test_encode_simple_and_binary_fields() -> None:
    assert encode_field("MESSAGE", b"hello") == b"MESSAGE=hello\n"
    value = b"two\nlines\x00\xff"
    assert encode_field("MESSAGE", value) == \
        b"MESSAGE\n" + struct.pack("<Q", len(value)) + value + b"\n"
    assert encode_entry({"A": b"1", "B": b"2"}) == b"A=1\nB=2\n"


def test_line_splitter_lines_partials_and_rest() -> None:
    s = LineSplitter(4)
    assert list(s.feed(b"ab\ncd")) == [(b"ab", False)]
    assert list(s.feed(b"efghij\n\n")) == [(b"cdef", True), (b"ghij", False), (b"", False)]
    assert list(s.feed(b"xyz")) == []
    # No newline followed: partial, so readers do not add one.
    assert list(s.flush()) == [(b"xyz", True)]
    assert list(s.flush()) == []


def test_line_splitter_exact_max_and_cr() -> None:
    s = LineSplitter(3)
    assert list(s.feed(b"abc\nab\r\n")) == [(b"abc", False), (b"ab\r", False)]


def test_line_splitter_reassembles_exactly() -> None:
    data = bytes(range(256)).replace(b"\n", b"") * 50 + b"\n"
    s = LineSplitter(1000)
    chunks = list(s.feed(data))
    assert all(p for _, p in chunks[:-1]) and not chunks[-1][1]
    assert b"".join(c for c, _ in chunks) + b"\n" == data


def test_properties_parse_to_dbus_names_and_types() -> None:
    parsed = spec.parse_properties(["MemoryMax=64M", "CPUQuota=50%", "TasksMax=20",
                                     "MemoryHigh=infinity"])
    assert {sig for _name, sig, _value in parsed} == {"t"}
    props = {name: value for name, _sig, value in parsed}
    assert props["MemoryMax"] == 64 << 20
    assert props["CPUQuotaPerSecUSec"] == 500_000
    assert props["TasksMax"] == 20
    assert props["MemoryHigh"] == spec.UINT64_MAX


@pytest.mark.parametrize("item, message", [
    ("MemoryMax", "KEY=VALUE"), ("Bogus=1", "unsupported property"),
    ("MemoryMax=lots", "invalid value for MemoryMax"), ("CPUQuota=50", "percentage"),
])
def test_bad_properties_name_the_problem(item: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        spec.parse_properties([item])


def test_unit_properties_shape() -> None:
    s = spec.ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="/usr/sbin/runc")
    props = {name: value for name, _sig, value in s.unit_properties()}
    assert props["Type"] == "notify"
    assert props["RemainAfterExit"] is True
    assert props["Delegate"] is True
    assert props["Slice"] == "sdshim.slice"
    assert "web" in props["Description"]
    (path, argv, ignore), = props["ExecStart"]
    assert argv[0] == path and argv[1:3] == ["-I", "-S"] and ignore is False
    assert argv[3].endswith("/sdshim/shim/__main__.py")
    assert props["LogRateLimitBurst"] >= 10_000_000


@pytest.mark.parametrize("message, code", [
    ('exec: "bahs": executable file not found in $PATH', EXIT_NOT_FOUND),
    ('exec: "/etc/passwd": permission denied', EXIT_NOT_EXECUTABLE),
    ("exec /foreign: exec format error", EXIT_NOT_EXECUTABLE),
    ("rootfs (/x/rootfs) does not exist", EXIT_RUNTIME),
])
def test_runtime_errors_map_to_docker_exit_codes(message: str, code: int) -> None:
    assert runtime.classify(message) == code


def test_clean_message_drops_runc_prefixes() -> None:
    msg = 'runc create failed: unable to start container process: exec: "x": not found'
    assert runtime.clean_message(msg) == 'exec: "x": not found'


def test_parse_signal() -> None:
    assert parse_signal("TERM") == 15 and parse_signal("sigkill") == 9 and parse_signal("2") == 2
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_signal("NOPE")


def test_line_splitter_long_line_across_reads() -> None:
    s = LineSplitter(4)
    out = [*s.feed(b"abcdef"), *s.feed(b"ghij"), *s.feed(b"kl\nm")]
    assert out == [(b"abcd", True), (b"efgh", True), (b"ijkl", False)]
    assert list(s.flush()) == [(b"m", True)]


def test_reassembler_joins_partials_per_stream() -> None:
    r = Reassembler()
    out = [r.add({b"MESSAGE": b"ab", b"PRIORITY": b"6", b"CONTAINER_PARTIAL_MESSAGE": b"true",
                  b"__REALTIME_TIMESTAMP": b"1"}),
           r.add({b"MESSAGE": b"E", b"PRIORITY": b"3", b"__REALTIME_TIMESTAMP": b"2"}),
           r.add({b"MESSAGE": b"c\xff", b"PRIORITY": b"6", b"__REALTIME_TIMESTAMP": b"3"})]
    assert out[0] is None
    assert out[1] is not None and (out[1].stream, out[1].data) == ("stderr", b"E")
    assert out[2] is not None and (out[2].stream, out[2].data) == ("stdout", b"abc\xff")
    assert out[2].usec == 1 and out[2].newline
    # A partial chunk nothing followed: output that ended without a newline.
    assert r.add({b"MESSAGE": b"end", b"PRIORITY": b"6",
                  b"CONTAINER_PARTIAL_MESSAGE": b"true"}) is None
    (rest,) = r.rest()
    assert (rest.data, rest.newline) == (b"end", False)


def test_oom_kill_counter_of_v1_and_v2_cgroups(tmp_path: Path) -> None:
    from sdshim.shim import oom

    v2 = tmp_path / "unified/sdshim.slice/u.service/container"
    v2.mkdir(parents=True)
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n")
    assert oom.kills("/sdshim.slice/u.service/container", root=tmp_path) == 1
    v1 = tmp_path / "memory/sdshim.slice/w.service/container"
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert oom.kills("/sdshim.slice/w.service/container", root=tmp_path) == 3
    # Kernels before 4.13 have no counter; outside a unit there is no cgroup of our own.
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert oom.kills("/sdshim.slice/w.service/container", root=tmp_path) is None
    assert oom.kills("", root=tmp_path) is None


@pytest.mark.parametrize("policy, remain", [("no", True), ("on-failure", True),
                                            ("always", False)])
def test_restart_policy_properties(policy: str, remain: bool) -> None:
    from sdshim.errors import EXIT_NO_RESTART

    s = spec.ContainerSpec(name="x", id="0" * 64, bundle=Path("/b"), runtime="/usr/bin/runc",
                           restart=policy, restart_delay=0.5)
    props = {name: value for name, _sig, value in s.unit_properties()}
    assert props["RemainAfterExit"] is remain
    argv = props["ExecStart"][0][1]
    assert argv[argv.index("--restart") + 1] == policy
    if policy == "no":
        assert "Restart" not in props
    else:
        assert props["Restart"] == policy and props["RestartUSec"] == 500_000
        assert props["StartLimitIntervalUSec"] == 0
        assert props["RestartPreventExitStatus"] == ([EXIT_NO_RESTART], [])


def test_stop_signal_from_annotation() -> None:
    from sdshim.errors import BundleError
    from sdshim.units.creation import STOP_SIGNAL_ANNOTATION, bundle_stop_signal

    path = "/b/config.json"
    assert bundle_stop_signal({}, path) == 15
    assert bundle_stop_signal({"annotations": {STOP_SIGNAL_ANNOTATION: "SIGQUIT"}}, path) == 3
    assert bundle_stop_signal({"annotations": {STOP_SIGNAL_ANNOTATION: "usr2"}}, path) == 12
    assert bundle_stop_signal({"annotations": {STOP_SIGNAL_ANNOTATION: "9"}}, path) == 9
    with pytest.raises(BundleError, match="--stop-signal"):
        bundle_stop_signal({"annotations": {STOP_SIGNAL_ANNOTATION: "SIGNOPE"}}, path)


def test_reassembler_understands_journald_line_breaks() -> None:
    r = Reassembler()
    entries = [(b"a" * 3, b"line-max"), (b"b", None), (b"x", b"nul"), (b"y", b"pid-change"),
               (b"z", None), (b"last", b"eof")]
    lines = [r.add({b"MESSAGE": m, b"PRIORITY": b"6",
                    **({b"_LINE_BREAK": brk} if brk else {})}) for m, brk in entries]
    done = [ln for ln in lines if ln is not None]
    assert [(ln.data, ln.newline) for ln in done] == \
        [(b"aaab", True), (b"x\0yz", True), (b"last", False)]
    assert r.rest() == []


def test_export_parser_text_binary_and_split_reads() -> None:
    binary = b"two\nlines\0\xff"
    data = (b"__CURSOR=c1\nMESSAGE=plain\n\n"
            + b"__CURSOR=c2\nMESSAGE\n" + struct.pack("<Q", len(binary)) + binary + b"\n"
            + b"PRIORITY=3\n\n")
    assert parse_export(data) == [{b"__CURSOR": b"c1", b"MESSAGE": b"plain"},
                                  {b"__CURSOR": b"c2", b"MESSAGE": binary, b"PRIORITY": b"3"}]
    parser = ExportParser()
    got = []
    for i in range(len(data)):  # byte by byte: every cut point
        got += parser.feed(data[i:i + 1])
    assert got == parse_export(data)


def test_cri_log_format_partial_tags_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    log = CriLog(str(path), size_max=200)
    log.write("stdout", [(b"x" * 10, True), (b"y", False)])
    log.write("stderr", [(b"e" * 150, False)])  # does not fit: rotate first
    log.close()
    old = (tmp_path / "ctr.log.1").read_bytes().splitlines()
    new = path.read_bytes().splitlines()
    stamp = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"
    assert [re.fullmatch(stamp + rb" stdout ([PF]) (.*)", ln).groups()  # type: ignore[union-attr]
            for ln in old] == [(b"P", b"x" * 10), (b"F", b"y")]
    assert re.fullmatch(stamp + rb" stderr F " + b"e" * 150, new[0]) and len(new) == 1
    # A line longer than the limit is written whole, in a file of its own.
    log = CriLog(str(path), size_max=200)
    log.write("stdout", [(b"z" * 500, False)])
    log.close()
    assert (tmp_path / "ctr.log.1").read_bytes() == b"\n".join(new) + b"\n"
    assert path.read_bytes().endswith(b" stdout F " + b"z" * 500 + b"\n")


@pytest.mark.parametrize("options, message", [
    ({"log_driver": "journald"}, "invalid --log-driver"),
    ({"log_max_line": spec.LOG_MAX_LINE_LIMIT + 1}, "invalid --log-max-line"),
    ({"log_path": "/nonexistent/dir/x.log"}, "does not exist"),
    ({"log_path": "/tmp/x.log", "log_driver": "stream"}, "needs --log-driver native"),
    ({"log_size_max": 10}, "needs --log-path"),
    ({"log_rate_limit": "100"}, "BURST/INTERVAL"),
    ({"log_rate_limit": "100/0s"}, "longer than 0s"),
    ({"log_rate_limit": "x/30s"}, "invalid --log-rate-limit"),
])
def test_bad_log_options_name_the_problem(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        spec.ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="runc",
                           **options)


def test_log_options_reach_the_monitor_and_the_unit() -> None:
    s = spec.ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="runc",
                           log_driver="native", log_path="/tmp/web.log", log_size_max=4096,
                           log_max_line=1000, log_rate_limit="500/10s")
    argv = s.monitor_argv()
    for option, value in (("--log-path", "/tmp/web.log"), ("--log-size-max", "4096"),
                          ("--log-max-line", "1000")):
        assert argv[argv.index(option) + 1] == value
    props = {name: value for name, _sig, value in s.unit_properties()}
    assert props["LogRateLimitBurst"] == 500
    assert props["LogRateLimitIntervalUSec"] == 10_000_000
    stream = spec.ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="runc",
                                log_driver="stream")
    assert stream.monitor_argv()[-2:] == ["--log-driver", "stream"]


@pytest.mark.parametrize("spec_text, keys", [
    ("ctrl-p,ctrl-q", b"\x10\x11"), ("ctrl-a,d", b"\x01d"), ("CTRL-X", b"\x18"),
    ("ctrl-@,ctrl-_", b"\x00\x1f"), ("", b""),
])
def test_detach_keys_parse(spec_text: str, keys: bytes) -> None:
    assert parse_detach_keys(spec_text) == keys


@pytest.mark.parametrize("bad", ["ctrl-", "ctrl-pq", "ctrl-1", "p,,q", "é", "alt-x"])
def test_detach_keys_refuse_nonsense(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid detach keys"):
        parse_detach_keys(bad)


def test_detach_keys_hold_back_only_a_possible_sequence() -> None:
    d = DetachKeys(b"\x10\x11")
    assert d.feed(b"ab\x10") == (b"ab", False)  # ^P held: it may start the sequence
    assert d.feed(b"c") == (b"\x10c", False)  # it did not: passed on, nothing lost
    assert d.feed(b"\x10\x10") == (b"\x10", False)  # a second ^P restarts the attempt
    assert d.feed(b"\x11rest") == (b"", True)
    assert d.feed(b"x\x10") == (b"x", False)
    assert d.feed(b"\x11") == (b"", True)  # split across reads
    assert DetachKeys(b"").feed(b"\x10\x11") == (b"\x10\x11", False)
    assert DetachKeys(b"q").feed(b"abqz") == (b"ab", True)


def test_attach_frames() -> None:
    frames = framing.split(framing.STDOUT, bytes(framing.MAX_PAYLOAD * 2 + 1))
    assert [len(f) for f in frames] == [framing.MAX_PAYLOAD + 1] * 2 + [2]
    assert all(f[0] == framing.STDOUT for f in frames)
    resize = framing.resize(50, 132)
    assert resize[0] == framing.RESIZE and framing.parse_resize(resize[1:]) == (50, 132)
    assert framing.parse_resize(b"\x01") is None


def test_exec_units_are_never_taken_for_containers() -> None:
    unit = naming.exec_unit_name("web", "0123abcd")
    assert unit == "sdshim-web:exec-0123abcd.service"
    assert naming.name_from_unit(unit) is None


JSON_VALUES = [
    {"name": "web", "pid": 42, "tty": False, "error": None, "cpu": 0.125,
     "ids": ["a", "b"], "text": "é \u2028 \x00 \"q\" \n", "nested": {"x": [1, {"y": []}]}},
    [], {}, "", 0, -7, 10**30, 1e-300, float("inf"), True,
]


@pytest.mark.parametrize("value", JSON_VALUES)
def test_lean_json_is_json_byte_for_byte(value: Any) -> None:
    text = json.dumps(value)
    assert leanjson.dumps(value) == text
    for framed in (text, f" \n\t{text}\r\n "):
        assert repr(leanjson.loads(framed)) == repr(json.loads(framed))


@pytest.mark.parametrize("bad", ["", " ", "{", "[1,]", "1 2", "{'a': 1}", "\ufeff{}",
                                 '{"a": 1} x', "nul"])
def test_lean_json_refuses_what_json_refuses_with_its_error(bad: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(bad)
    with pytest.raises(json.JSONDecodeError) as got:
        leanjson.loads(bad)
    assert str(got.value) == str(expected.value)
    with pytest.raises(TypeError, match="not JSON serializable"):
        leanjson.dumps({"x": object()})


def test_records_round_trip_and_missing_or_broken_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    rundir.write_json(path, {"status": "running", "pid": 7})
    assert json.loads(path.read_text()) == {"status": "running", "pid": 7}
    assert rundir.read_json(str(path)) == {"status": "running", "pid": 7}
    assert rundir.read_json(tmp_path / "missing.json") is None
    for broken in (b"{", b"[1]", b"\xff"):
        path.write_bytes(broken)
        assert rundir.read_json(path) is None


def test_spawn_launch_redirects_and_leaves_reaping_to_the_caller(tmp_path: Path) -> None:
    assert (spawn.PIPE, spawn.DEVNULL) == (subprocess.PIPE, subprocess.DEVNULL)
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # Python ignores SIGPIPE; the program must not inherit that (subprocess resets it).
        pid = spawn.launch(["sh", "-c", "cat; grep SigIgn /proc/self/status"],
                           stdin=spawn.DEVNULL, stdout=fd)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ignored = int(out.read_text().split()[-1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), out.read_text()
    with pytest.raises(spawn.CommandError, match="program not found"):
        spawn.launch(["/nonexistent/runc"])


@pytest.mark.parametrize("parts", [
    ("/a", "b"), ("/a/", "b"), ("/a", "/b"), ("", "b"), ("/a", ""), ("/", "a", "b/"),
    ("a", "b", "/c", "d"),
])
def test_leanos_join_is_posixpath_join(parts: tuple[str, ...]) -> None:
    assert leanos.join(*parts) == os.path.join(*parts)


@pytest.mark.parametrize("path", ["/a/b", "/a/b/", "/", "//a", "a", "", "/a//b", "///a/b"])
def test_leanos_paths_are_posixpath_paths(path: str) -> None:
    assert leanos.split(path) == os.path.split(path)
    assert leanos.dirname(path) == os.path.dirname(path)
    assert leanos.basename(path) == os.path.basename(path)


@pytest.mark.parametrize("path", ["/a/b", "/a/b/", "/", "a", "", "./a", "a/./b/", "/a//b",
                                  "///a/b", "../a", "/a/../b", "."])
def test_leanos_absolute_is_pathlib_absolute(path: str) -> None:
    # (pathlib keeps a leading "//", which POSIX leaves to the system: leanos does not.)
    assert leanos.absolute(path) == str(Path(path).absolute())


def test_leanos_files(tmp_path: Path) -> None:
    deep = str(tmp_path / "a" / "b" / "c")
    leanos.makedirs(deep, 0o700)
    leanos.makedirs(deep, 0o700)  # exists: fine
    assert leanos.isdir(deep) and leanos.exists(deep)
    (tmp_path / "f").write_text("")
    assert leanos.exists(str(tmp_path / "f")) and not leanos.isdir(str(tmp_path / "f"))
    assert leanos.isfile(str(tmp_path / "f")) and not leanos.isfile(deep)
    assert not leanos.isfile(str(tmp_path / "nope"))
    assert not leanos.exists(str(tmp_path / "nope"))
    with pytest.raises(FileExistsError):
        leanos.makedirs(str(tmp_path / "f"))


LEANOS_ENV_PROBE = """
import os, sys
sys.path.append(sys.argv[1])
from sdshim import leanos
k = "SDSHIM_T"
print(repr([leanos.getenv(k), leanos.environ() == dict(os.environ), k in leanos.environ(k),
            leanos.popenv(k), k in leanos.environ(), leanos.getenv(k, "gone")]), flush=True)
os.execv("/usr/bin/env", ["env"])  # what programs started now inherit
"""


def test_leanos_environment() -> None:
    """The environment the process started with, undecodable bytes and all."""
    repo = str(Path(__file__).parents[1])
    out = subprocess.run([sys.executable, "-I", "-c", LEANOS_ENV_PROBE, repo],
                         env={b"SDSHIM_T": b"v\xff", b"PATH": b"/usr/bin:/bin"},
                         capture_output=True, check=True).stdout.decode(errors="replace")
    first, *inherited = out.splitlines()
    assert first == repr(["v\udcff", True, False, "v\udcff", False, "gone"])
    assert not any(line.startswith("SDSHIM_T=") for line in inherited)


def test_leanos_realpath_is_posixpath_realpath(tmp_path: Path) -> None:
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "rel").symlink_to("real/deep")
    (tmp_path / "abs").symlink_to(tmp_path / "real")
    (tmp_path / "chain").symlink_to("abs/../rel")
    (tmp_path / "loop").symlink_to("loop")
    for path in ("rel", "abs/deep", "chain", "chain/../rel/x", "missing/y", "real/./deep/..",
                 "abs/deep/../../rel", "."):
        full = f"{tmp_path}/{path}"
        assert leanos.realpath(full) == os.path.realpath(full), path
    assert leanos.realpath("/") == "/"
    with pytest.raises(OSError):
        leanos.realpath(f"{tmp_path}/loop")


def test_which_is_shutil_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from sdshim import spawn

    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    plain = tmp_path / "plain"
    plain.write_text("")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"/nonexistent:{tmp_path}")
    for program in ("tool", str(tool), str(plain), "plain", str(tmp_path), "sh", "nope"):
        assert spawn.which(program) == shutil.which(program), program
