"""Zero-resident containers without a test bed: the unit's properties, the refusals,
and how the stop step reads systemd's exit status."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from sdshim.errors import UsageError
from sdshim.shim import options, stoppost
from sdshim.shim.handoff import unsupported
from sdshim.units.cli import build_parser
from sdshim.units.spec import ContainerSpec

CID = "ab" * 32


def spec(**kw: Any) -> ContainerSpec:
    return ContainerSpec(name="web", id=CID, bundle=Path("/srv/web"), runtime="/usr/sbin/runc",
                         **kw)


def props(s: ContainerSpec) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, _sig, value in s.unit_properties():
        assert name not in found or name == "Environment", f"{name} twice"
        found[name] = value
    return found


def test_zero_resident_unit_properties() -> None:
    p = props(spec(supervisor="systemd", stop_timeout=7, stop_signal=int(signal.SIGUSR1),
                   tag="front"))
    assert (p["Type"], p["NotifyAccess"], p["KillMode"]) == ("notify", "all", "mixed")
    assert (p["KillSignal"], p["TimeoutStopUSec"]) == (int(signal.SIGUSR1), 7_000_000)
    assert p["LogExtraFields"] == [b"CONTAINER_ID=" + CID[:12].encode(),
                                   b"CONTAINER_ID_FULL=" + CID.encode(),
                                   b"CONTAINER_NAME=web", b"CONTAINER_TAG=front"]
    [(path, argv, ignore)] = p["ExecStopPost"]
    assert path == argv[0] and ignore is False
    assert argv[argv.index("--stop-post"):] == [
        "--stop-post", "--name", "web", "--unit", "sdshim-web.service"]
    assert stoppost.parse(argv) == ("web", "sdshim-web.service")
    [(_, start_argv, _)] = p["ExecStart"]
    parsed = options.parse(start_argv[start_argv.index("--name"):])
    assert (parsed.supervisor, parsed.log_driver, parsed.start) == ("systemd", "stream", True)
    assert (p["RemainAfterExit"], p["Delegate"]) == (True, True)


def test_monitor_units_keep_their_properties() -> None:
    p = props(spec())
    assert (p["NotifyAccess"], p["TimeoutStopUSec"]) == ("main", 15_000_000)
    assert "KillSignal" not in p and "ExecStopPost" not in p and "LogExtraFields" not in p
    stream = props(spec(log_driver="stream"))
    assert stream["LogExtraFields"][2] == b"CONTAINER_NAME=web"
    assert stream["NotifyAccess"] == "main"


@pytest.mark.parametrize(("kw", "words"), [
    ({"interactive": True}, "-i needs the sdshim monitor"),
    ({"tty": True}, "-t needs the sdshim monitor"),
    ({"log_path": "/tmp/x.log"}, "--log-path needs the sdshim monitor"),
    ({"log_driver": "native"}, "--log-driver native needs the sdshim monitor"),
    ({"supervisor": "podman"}, "invalid --supervisor 'podman'"),
])
def test_what_needs_a_monitor_is_refused(kw: dict[str, Any], words: str) -> None:
    kw = {"supervisor": "systemd", **kw}
    with pytest.raises(UsageError) as e:
        spec(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_defaults_follow_the_supervisor() -> None:
    assert spec().log_driver == "native"
    assert spec(supervisor="systemd").log_driver == "stream"
    args = build_parser("run").parse_args(["run", "-d", "--supervisor", "systemd", "/b"])
    assert (args.supervisor, args.log_driver) == ("systemd", "")
    assert build_parser("run").parse_args(["run", "/b"]).supervisor == "sdshim"


def test_handoff_refuses_monitor_options_from_a_template() -> None:
    base = ["--name", "web", "--bundle", "/b", "--runtime", "runc", "--supervisor", "systemd"]
    assert unsupported(options.parse([*base, "--log-driver", "stream"])) == ""
    assert "native log driver" in unsupported(options.parse(base))
    assert "-i and -t" in unsupported(options.parse([*base, "--log-driver", "stream", "--tty"]))


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("exited", "0", {"exit_code": 0, "signal": None}),
    ("exited", "3", {"exit_code": 3, "signal": None}),
    ("killed", "KILL", {"exit_code": 137, "signal": "SIGKILL"}),
    ("killed", "TERM", {"exit_code": 143, "signal": "SIGTERM"}),
    ("dumped", "SEGV", {"exit_code": 139, "signal": "SIGSEGV"}),
    ("", "", {"exit_code": None, "signal": None}),
])
def test_stop_step_reads_systemds_exit_status(code: str, status: str,
                                              expected: dict[str, Any]) -> None:
    assert stoppost.exit_result(code, status) == expected
