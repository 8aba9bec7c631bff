"""The monitor stays lean: one runs per container, so every import and every MB counts.

Timings and the long memory soak are benchmarks (bench/); these tests hold the line on
what can be checked without a stopwatch.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest

from sdshim.errors import EXIT_RUNTIME
from sdshim.units.spec import monitor_command
from tests.conftest import Bed

# What a monitor may have imported once its container runs: what every container pays
# for, in start-up time and private memory, besides the interpreter's own start-up
# modules. The lean path keeps to C modules and the sdshim modules below (see
# sdshim/shim/monitor.py); a module that only some containers need is imported at
# set-up by those, or pinned (sdshim.shim.pinned) and loaded when first needed.
# Adding one here costs every container: measure it first
# (bench/footprint.py), e.g. json with re ~1.2 MB, pathlib ~2 MB, subprocess ~2 MB,
# socket or signal (enum) ~0.9-1.3 MB, selectors, contextlib or collections ~0.5-0.9 MB,
# os (with _collections_abc, stat, posixpath) 0.28 MB: sdshim.leanos stands in for it.
STDLIB_ALLOWED = {
    "__future__",
    "errno", "fcntl", "select", "_socket", "_json", "_ctypes",
}
SDSHIM_ALLOWED = {
    "sdshim", "sdshim.exits", "sdshim.leanjson", "sdshim.leanos", "sdshim.privapi",
    "sdshim.rundir", "sdshim.signals", "sdshim.spawn",
    "sdshim.shim", "sdshim.shim.cgroup", "sdshim.shim.container", "sdshim.shim.entry",
    "sdshim.shim.framing", "sdshim.shim.journal", "sdshim.shim.lifecycle",
    "sdshim.shim.listener", "sdshim.shim.monitor", "sdshim.shim.notify", "sdshim.shim.oom",
    "sdshim.shim.options", "sdshim.shim.output", "sdshim.shim.pinned", "sdshim.shim.poller",
    "sdshim.shim.reaper", "sdshim.shim.runtime", "sdshim.shim.stdio", "sdshim.shim.streams",
}
# Not in the list: pinned at start-up and loaded from the held file when first needed
# (sdshim.shim.monitor.PINNED: the attach server, the control server, the end), or
# loaded at set-up only for the containers that need them (sdshim.shim.inherited: with
# sockets, credentials or a watchdog from systemd).
# D-Bus and other third-party libraries: the monitor is standard library only.
DBUS = ("dbus_fast", "dbus", "dbus_next", "jeepney", "gi", "pydbus", "systemd")
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.M)


def interpreter_modules() -> set[str]:
    """What the interpreter imports on its own, started as the monitor's is."""
    command = monitor_command()
    out = subprocess.run([command[0], "-X", "importtime", *command[1:3], "-c", "pass"],
                         capture_output=True, timeout=60, check=True)
    return set(IMPORT_LINE.findall(out.stderr.decode()))


def unexpected(names: list[str]) -> list[str]:
    allowed = interpreter_modules() | STDLIB_ALLOWED | SDSHIM_ALLOWED
    return [n for n in names if n not in allowed]


def monitor_imports() -> list[str]:
    """Every module the monitor imports before it starts work, started as systemd
    starts it.

    A runtime that does not exist makes it stop right after parsing its arguments, when
    all its module-level imports have run (--help would import what only help text
    needs); -X importtime lists them on stderr.
    """
    command = monitor_command()
    argv = [command[0], "-X", "importtime", *command[1:], "--name", "footprint",
            "--id", "0" * 64, "--bundle", "/nonexistent", "--runtime", "/nonexistent/runc"]
    out = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert out.returncode == EXIT_RUNTIME, out.stderr.decode()
    assert b"runtime /nonexistent/runc not found" in out.stderr
    names = IMPORT_LINE.findall(out.stderr.decode())
    assert "sdshim.shim.monitor" in names, out.stderr.decode()
    return names


def test_monitor_starts_without_site_and_imports_no_dbus_library() -> None:
    command = monitor_command()
    assert command[1:3] == ["-I", "-S"], command
    names = monitor_imports()
    assert "site" not in names
    dbus = [n for n in names if n.split(".")[0] in DBUS]
    assert not dbus, f"the monitor imports a D-Bus/third-party library: {dbus}"


def test_monitor_imports_only_what_it_needs() -> None:
    extra = unexpected(monitor_imports())
    assert not extra, (f"the monitor imports {extra} at start-up: import them lazily "
                       "where they are used, or drop them")


def test_a_running_monitor_holds_only_the_lean_path(bed: Bed, name: str,
                                                    make_bundle: Any) -> None:
    """Everything a monitor imported by the time its container runs (READY=1), started
    by systemd as the manager starts it, on the plain path: no -i, -t or log file."""
    bundle = make_bundle("sleep", "1000")
    unit = f"sdshim-{name}.service"
    log = bed.scratch / f"{name}.importtime"
    command = monitor_command()
    runc = shutil.which("runc")
    assert runc is not None
    out = bed.run(["systemd-run", "--unit", unit, "-p", "Type=notify", "-p", "Delegate=yes",
                   "-p", f"StandardError=file:{log}", "--", command[0], "-X", "importtime",
                   *command[1:], "--start", "--name", name, "--id", secrets.token_hex(32),
                   "--bundle", str(bundle),
                   "--runtime", runc, "--unit", unit])
    try:
        # systemd-run returns once the unit is active: after READY=1.
        assert out.returncode == 0, out.stderr.decode()
        assert bed.show(unit, "ActiveState")["ActiveState"] == "active"
        names = IMPORT_LINE.findall(log.read_text())
    finally:
        bed.run(["systemctl", "stop", unit])
    assert "sdshim.shim.monitor" in names
    extra = unexpected(names)
    assert not extra, (f"a running monitor has imported {extra}: import them lazily "
                       "where they are used, or drop them")


# What --sdnotify container and --health-cmd load, at start-up and only when asked for.
FEATURE_ALLOWED = {"sdshim.shim.amendments", "sdshim.shim.notifyproxy",
                   "sdshim.shim.notifyfilter", "sdshim.shim.health", "sdshim.shim.healthprobe",
                   "sdshim.shim.healthchecks"}


def test_notify_and_health_load_at_start_up_and_never_later(bed: Bed, name: str,
                                                            make_bundle: Any,
                                                            sdhelper: str) -> None:
    """A monitor with a notify proxy and health checks: its imports are done when the
    container is ready, and serving datagrams (refused ones too), probes and a change
    of health adds none."""
    script = (f"{sdhelper} notify READY=1; while :; do {sdhelper} notify STATUS=tick "
              "MAINPID=1; sleep 0.1; done")
    bundle = make_bundle("sh", "-c", script)
    unit = f"sdshim-{name}.service"
    log = bed.scratch / f"{name}.importtime"
    command = monitor_command()
    runc = shutil.which("runc")
    assert runc is not None
    out = bed.run(["systemd-run", "--unit", unit, "-p", "Type=notify", "-p", "Delegate=yes",
                   "-p", f"StandardError=file:{log}", "--", command[0], "-X", "importtime",
                   *command[1:], "--start", "--name", name, "--id", secrets.token_hex(32),
                   "--bundle", str(bundle), "--runtime", runc, "--unit", unit,
                   "--sdnotify", "container", "--health-cmd", "true",
                   "--health-interval", "0.2"])
    try:
        assert out.returncode == 0, out.stderr.decode()
        at_ready = IMPORT_LINE.findall(log.read_text())
        health = bed.path(f"/run/sdshim/{name}/health.json")
        deadline = time.monotonic() + 60
        while len(json.loads(health.read_text() or "{}").get("log", [])) < 5:
            assert time.monotonic() < deadline, "no health checks ran"
            time.sleep(0.1)
        assert bed.show(unit, "StatusText")["StatusText"] == "tick (healthy)"
        later = IMPORT_LINE.findall(log.read_text())
    finally:
        bed.run(["systemctl", "stop", unit])
    assert later == at_ready, f"imported while running: {later[len(at_ready):]}"
    assert FEATURE_ALLOWED - {"sdshim.shim.amendments"} <= set(at_ready)
    extra = [n for n in unexpected(at_ready) if n not in FEATURE_ALLOWED]
    assert not extra, f"notify and health checks import {extra}"


def smaps(bed: Bed, pid: int) -> dict[str, int]:
    text = bed.read(f"/proc/{pid}/smaps_rollup")
    return {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB$", text, re.M)}


def test_monitor_memory_stays_bounded_under_a_log_stream(bed: Bed, name: str,
                                                         make_bundle: Any) -> None:
    # 32 MB in 1 KB lines, after a pause that lets the test read the idle footprint.
    # A monitor that kept output (or leaked per line) would grow by tens of MB; the
    # steady-state growth is measured over minutes by bench/footprint.py (soak).
    total = 32 << 20
    bundle = make_bundle("sh", "-c", "sleep 2; line=$(printf '%01023d' 0); "
                         f"yes $line | head -c {total}; echo stream-done; exec sleep 1000")
    out = bed.sdshim("run", "-d", "--name", name, str(bundle))
    assert out.returncode == 0, out.stderr
    unit = f"sdshim-{name}.service"
    pid = int(bed.show(unit, "MainPID")["MainPID"])
    idle = smaps(bed, pid)
    peak = dict(idle)
    deadline = time.monotonic() + 120
    while True:
        now = smaps(bed, pid)
        peak = {k: max(v, now[k]) for k, v in peak.items()}
        # By unit, not CONTAINER_NAME: whichever way the monitor sends output (native
        # entries or a stream), journald files it under the unit.
        done = bed.journal(f"_SYSTEMD_UNIT={unit}", "MESSAGE=stream-done")
        if done or time.monotonic() > deadline:
            assert done, "the container's output did not reach the journal in 120 s"
            break
        time.sleep(0.1)
    lines = bed.run(["journalctl", "--no-pager", "-o", "cat", f"_SYSTEMD_UNIT={unit}"])
    assert lines.stdout.count(b"\n") >= total // 1024, "output went missing"
    growth = peak["Private_Dirty"] - idle["Private_Dirty"]
    assert growth < 8 * 1024, f"monitor Private_Dirty grew {growth} kB during 32 MB of output"


# --- the CLI's quick path: create and run -d ------------------------------------------

# Run the CLI in-process after a snapshot of what the interpreter loaded by itself, so
# what site and the test's interpreter bring in does not count.
CLI_PROBE = """
import json, sys
before = set(sys.modules)
from sdshim.units.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"code": code, "new": sorted(set(sys.modules) - before)}))
"""
# What `create` and `run -d` must not import: asyncio and a D-Bus library cost ~30 ms
# of every start; the others are convenience imports worth ~1-4 ms each.
CLI_FORBIDDEN = {"asyncio", "concurrent", "ssl", "dbus_fast", "typing", "dataclasses",
                 "inspect", "secrets", "hashlib", "subprocess"}


@pytest.mark.parametrize("command", [["run", "-d"], ["create"]])
def test_create_and_run_d_import_no_asyncio_or_dbus_library(
        bed: Bed, name: str, make_bundle: Any, command: list[str]) -> None:
    bundle = make_bundle("sleep", "100")
    out = bed.run([sys.executable, "-c", CLI_PROBE, *command, "--name", name, str(bundle)])
    assert out.returncode == 0, out.stderr.decode()
    printed, probe = out.stdout.decode().splitlines()
    assert printed == name
    result = json.loads(probe)
    assert result["code"] == 0
    heavy = sorted(n for n in result["new"] if n.split(".")[0] in CLI_FORBIDDEN)
    assert not heavy, (f"`sdshim {' '.join(command)}` imports {heavy}: import them lazily "
                       "where the other commands need them")
    assert "sdshim.units.creation" in result["new"]


def test_status_list_kill_and_stop_import_no_asyncio_or_dbus_library(
        bed: Bed, name: str, make_bundle: Any) -> None:
    started = bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "100")))
    assert started.returncode == 0, started.stderr.decode()
    for command in (["status", "--json", name], ["list"], ["kill", "-s", "CONT", name],
                    ["stop", "--time", "0", name]):
        out = bed.run([sys.executable, "-c", CLI_PROBE, *command])
        assert out.returncode == 0, out.stderr.decode()
        result = json.loads(out.stdout.decode().splitlines()[-1])
        assert result["code"] == 0
        heavy = sorted(n for n in result["new"] if n.split(".")[0] in CLI_FORBIDDEN)
        assert not heavy, f"`sdshim {' '.join(command)}` imports {heavy}"
        assert "sdshim.units.blockingmanager" in result["new"]
    status = json.loads(bed.sdshim("status", "--json", name).stdout)
    assert (status["state"], status["exit_code"]) == ("exited", 137), status
