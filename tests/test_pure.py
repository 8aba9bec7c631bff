"""Unit tests for the parts that need no systemd: names, encodings, properties, parsing."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sdshim import naming
from sdshim.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_RUNTIME, UsageError
from sdshim.shim import runtime
from sdshim.shim.journal import LineSplitter, encode_entry, encode_field
from sdshim.units import spec
from sdshim.units.bus import unit_path
from sdshim.units.cli import parse_signal
from sdshim.units.logs import Reassembler


@pytest.mark.parametrize("good", ["web", "a", "db-1", "x.y_z", "A" * 63, "0abc"])
def test_valid_names(good: str) -> None:
    assert naming.validate_name(good) == good


@pytest.mark.parametrize("bad", ["", "-x", ".x", "_x", "a b", "a/b", "../etc", "a;b", "a@b",
                                 "a\\x2d", "a" * 64, "x.", "a..b", "é", "a\nb"])
def test_invalid_names(bad: str) -> None:
    with pytest.raises(naming.InvalidNameError, match="invalid container name"):
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
    assert list(s.flush()) == [(b"xyz", False)]
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
    props = dict(spec.parse_properties(["MemoryMax=64M", "CPUQuota=50%", "TasksMax=20",
                                        "MemoryHigh=infinity"]))
    assert props["MemoryMax"].signature == "t" and props["MemoryMax"].value == 64 << 20
    assert props["CPUQuotaPerSecUSec"].value == 500_000
    assert props["TasksMax"].value == 20
    assert props["MemoryHigh"].value == spec.UINT64_MAX


@pytest.mark.parametrize("item, message", [
    ("MemoryMax", "KEY=VALUE"), ("Bogus=1", "unsupported property"),
    ("MemoryMax=lots", "invalid value for MemoryMax"), ("CPUQuota=50", "percentage"),
])
def test_bad_properties_name_the_problem(item: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        spec.parse_properties([item])


def test_unit_properties_shape() -> None:
    from pathlib import Path

    s = spec.ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="/usr/sbin/runc")
    props = dict(s.unit_properties())
    assert props["Type"].value == "notify"
    assert props["RemainAfterExit"].value is True
    assert props["Delegate"].value is True
    assert props["Slice"].value == "sdshim.slice"
    assert "web" in props["Description"].value
    (path, argv, ignore), = props["ExecStart"].value
    assert argv[0] == path and argv[1:3] == ["-I", "-S"] and ignore is False
    assert argv[3].endswith("/sdshim/shim/__main__.py")
    assert props["LogRateLimitBurst"].value >= 10_000_000


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


def test_reassembler_joins_partials_per_stream() -> None:
    r = Reassembler()
    out = [r.add({"MESSAGE": "ab", "PRIORITY": "6", "CONTAINER_PARTIAL_MESSAGE": "true",
                  "__REALTIME_TIMESTAMP": "1"}),
           r.add({"MESSAGE": "E", "PRIORITY": "3", "__REALTIME_TIMESTAMP": "2"}),
           r.add({"MESSAGE": [99, 255], "PRIORITY": "6", "__REALTIME_TIMESTAMP": "3"})]
    assert out[0] is None
    assert out[1] is not None and (out[1].stream, out[1].data) == ("stderr", b"E")
    assert out[2] is not None and (out[2].stream, out[2].data) == ("stdout", b"abc\xff")
    assert out[2].usec == 1


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
    props = {k: v.value for k, v in s.unit_properties()}
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
    from sdshim.units.manager import STOP_SIGNAL_ANNOTATION, bundle_stop_signal

    path = Path("/b/config.json")
    assert bundle_stop_signal({}, path) == 15
    assert bundle_stop_signal({"annotations": {STOP_SIGNAL_ANNOTATION: "SIGQUIT"}}, path) == 3
    assert bundle_stop_signal({"annotations": {STOP_SIGNAL_ANNOTATION: "usr2"}}, path) == 12
    assert bundle_stop_signal({"annotations": {STOP_SIGNAL_ANNOTATION: "9"}}, path) == 9
    with pytest.raises(BundleError, match="--stop-signal"):
        bundle_stop_signal({"annotations": {STOP_SIGNAL_ANNOTATION: "SIGNOPE"}}, path)
