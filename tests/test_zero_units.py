"""Zero-resident containers without a test bed: the unit's properties, the refusals,
and how the stop step reads systemd's exit status."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from sdshim import spawn
from sdshim.errors import UsageError
from sdshim.shim import options, stoppost
from sdshim.shim.handoff import unsupported
from sdshim.units import cgrouptrim, direct
from sdshim.units.cli import build_parser
from sdshim.units.spec import ContainerSpec

CID = "ab" * 32


def spec(**kw: Any) -> ContainerSpec:
    return ContainerSpec(**{"name": "web", "id": CID, "bundle": Path("/srv/web"),
                            "runtime": "/usr/sbin/runc", **kw})


def props(s: ContainerSpec) -> dict[str, Any]:
    """The unit's properties, without the cgroup trim step (sdshim.units.cgrouptrim),
    which every unit has last on a host with v1 hierarchies, and only there."""
    found: dict[str, Any] = {}
    for name, _sig, value in s.unit_properties():
        assert name not in found or name == "Environment", f"{name} twice"
        found[name] = value
    trim = [cgrouptrim.SH, cgrouptrim.transient_argv(), True]
    stop_post = found.pop("ExecStopPost", [])
    trimmed = not cgrouptrim.unified_only()
    assert (stop_post[-1:] == [trim]) == trimmed, stop_post
    if trimmed:
        stop_post = stop_post[:-1]
    if stop_post:
        found["ExecStopPost"] = stop_post
    return found


def test_zero_resident_unit_properties() -> None:
    # crun: the hand-off moves its init into the container's cgroup.
    p = props(spec(supervisor="systemd", stop_timeout=7, stop_signal=int(signal.SIGUSR1),
                   tag="front", runtime="/usr/bin/crun"))
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


# --- the direct start: no sdshim process in the unit (sdshim.units.direct) -------------


def test_direct_start_unit_runs_the_runtime_itself() -> None:
    s = spec(supervisor="systemd", tag="front")
    assert s.direct
    p = props(s)
    assert (p["Type"], p["GuessMainPID"], p["NotifyAccess"]) == ("forking", False, "all")
    assert p["PIDFile"] == "/run/sdshim/web/pid"
    [(path, argv, ignore)] = p["ExecStart"]
    assert path == argv[0] and ignore is False
    if cgrouptrim.unified_only():
        assert argv[:2] == ["/bin/sh", "-c"]
        argv = argv[argv.index("/usr/sbin/runc"):]
    assert argv[0] == "/usr/sbin/runc"
    assert argv[argv.index("create"):] == [
        "create", "--bundle", "/run/sdshim/web/bundle", "--pid-file", "/run/sdshim/web/pid",
        CID]
    assert argv[argv.index("--log"):argv.index("--log") + 4] == [
        "--log", "/run/sdshim/web/runtime.log", "--log-format", "json"]
    # The caller runs `runc start` once systemd has the init (direct.Start).
    assert "ExecStartPost" not in p
    assert direct.Start("web", {"runtime": "/usr/sbin/runc", "id": CID}).argv[-2:] == \
        ["start", CID]
    assert spec(supervisor="systemd", start=False).direct  # created: nothing resident
    # The container's lines are the unit's: named, verbatim; the runtime never sees
    # NOTIFY_SOCKET.
    assert (p["SyslogIdentifier"], p["SyslogLevelPrefix"]) == ("web", False)
    assert p["UnsetEnvironment"] == ["NOTIFY_SOCKET"]
    [(_, stop_post, _)] = p["ExecStopPost"]
    assert stoppost.parse(stop_post) == ("web", "sdshim-web.service")
    assert p["LogExtraFields"][2:] == [b"CONTAINER_NAME=web", b"CONTAINER_TAG=front"]


@pytest.mark.parametrize(("kw", "why"), [
    ({"restart": "on-failure"}, "a failed create must not be retried"),
    ({"runtime": "/usr/bin/crun"}, "crun's cgroup move"),
    ({"supervisor": "sdshim"}, "the monitor's unit"),
])
def test_what_keeps_the_hand_off(kw: dict[str, Any], why: str) -> None:
    args = {"name": "web", "id": CID, "bundle": Path("/srv/web"),
            "runtime": "/usr/sbin/runc", "supervisor": "systemd", **kw}
    assert not ContainerSpec(**args).direct, why


def test_slice_paths() -> None:
    assert direct.slice_path("sdshim.slice") == "/sdshim.slice"
    assert direct.slice_path("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert direct.slice_path("-.slice") == ""
    s = spec(supervisor="systemd", properties=[("Slice", "s", "web-prod.slice")])
    assert direct.cgroups_path(s) == "/web.slice/web-prod.slice/sdshim-web.service/container"
    assert direct.cgroups_path(spec(supervisor="systemd")) == \
        "/sdshim.slice/sdshim-web.service/container"


def test_exec_check_states() -> None:
    check = direct.ExecCheck("/usr/sbin/runc", 100.0)
    assert check.look("/memfd:runc_cloned:/proc/self/exe (deleted)", 100.0) == direct.PENDING
    assert check.look("", 100.1) == direct.PENDING  # unreadable for a moment
    assert check.look("/usr/bin/sleep", 100.2) == direct.RUNNING
    assert direct.ExecCheck("/usr/sbin/runc", 0).look(None, 0.5) == direct.ENDED
    late = direct.ExecCheck("/usr/sbin/runc", 0)
    assert late.look("/usr/sbin/runc", direct.EXEC_TIMEOUT) == direct.RUNNING
    assert direct.read_exe(0) is None


def test_leaf_script_moves_the_runtime_and_runs_the_command(tmp_path: Path) -> None:
    # The script as systemd runs it ($$ is its escape for $), on a fake hierarchy.
    unit = "sdshim-web.service"
    procs = tmp_path / "cgroup"
    procs.write_text("1:name=systemd:/sdshim.slice/sdshim-web.service\n"
                     "0::/sdshim.slice/sdshim-web.service\n")
    script = direct.LEAF_SCRIPT.replace("$$", "$").replace("/proc/self/cgroup", str(procs))
    root = tmp_path / "fs"
    out = spawn.run(["/bin/sh", "-c", script, "sdshim-leaf", str(root), unit,
                     "sh", "-c", "echo $$"])
    leaf = root / "sdshim.slice" / unit / "supervisor" / "cgroup.procs"
    # Moved in the unified hierarchy only (the v1 line is not the unified one), and the
    # command is the same process (exec).
    assert leaf.read_text().strip() == out.stdout.decode().strip()
    assert sorted(p.name for p in (root / "sdshim.slice" / unit).iterdir()) == ["supervisor"]
    blocked = tmp_path / "blocked"
    blocked.write_text("")  # a file where the hierarchy should be: mkdir fails
    failed = spawn.run(["/bin/sh", "-c", script, "sdshim-leaf", str(blocked), unit, "true"],
                       check=False)
    assert failed.returncode == 1
    assert b"sdshim: cannot move the runtime to" in failed.stderr
