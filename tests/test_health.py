"""Health checks in the monitor (--health-*), on the booted systemd with real containers:
no timers, no unit per probe; one journal entry per change; hung probes leave nothing."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import SDSHIM, Bed
from tests.test_container import status
from tests.test_lifecycle import bed_processes, poll, zombies

FAST = ("--health-interval", "300ms", "--health-timeout", "5s")


def health(bed: Bed, name: str) -> dict[str, Any]:
    return status(bed, name)["health"] or {}


def health_soon(bed: Bed, name: str) -> dict[str, Any]:
    """health(), or {} while `run -d` has not made the container yet."""
    out = bed.sdshim("status", "--json", name)
    return (json.loads(out.stdout).get("health") or {}) if out.returncode == 0 else {}


def health_events(bed: Bed, name: str) -> list[str]:
    return [e["SDSHIM_HEALTH"] for e in bed.journal(f"SDSHIM_CONTAINER_NAME={name}",
                                                    "SDSHIM_EVENT=health")]


def in_container(bed: Bed, name: str, *argv: str) -> None:
    """A file operation in the container's /tmp (through /proc/PID/root)."""
    pid = status(bed, name)["pid"]
    args = [a.replace("/tmp/", f"/proc/{pid}/root/tmp/") for a in argv]
    assert bed.run(args).returncode == 0


def test_status_changes_are_one_entry_each_and_show_everywhere(
        bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "touch /tmp/ok; exec sleep 1000")
    out = bed.sdshim("run", "-d", "--name", name, "--health-cmd",
                     "echo probing; test -e /tmp/ok", "--health-retries", "2", *FAST,
                     str(bundle))
    assert out.returncode == 0, out
    assert health(bed, name)["status"] in ("starting", "healthy")
    poll("healthy", lambda: health(bed, name)["status"] == "healthy", 30)
    # Several probes, one change.
    poll("5 results", lambda: len(health(bed, name)["log"]) == 5, 30)
    in_container(bed, name, "rm", "/tmp/ok")
    h = poll("unhealthy", lambda: (x := health(bed, name))["status"] == "unhealthy" and x, 30)
    assert h["failing_streak"] >= 2
    last = h["log"][-1]
    assert last["exit_code"] == 1 and last["output"] == "probing\n" and not last["timed_out"]
    assert last["start"] <= last["end"]
    unit = f"sdshim-{name}.service"
    assert bed.show(unit, "StatusText")["StatusText"].endswith("(unhealthy)")
    in_container(bed, name, "touch", "/tmp/ok")
    poll("healthy again", lambda: health(bed, name)["status"] == "healthy", 30)
    poll("5 more results", lambda: all(r["exit_code"] == 0 for r in health(bed, name)["log"]),
         30)
    assert health_events(bed, name) == ["healthy", "unhealthy", "healthy"]
    shown = bed.sdshim("status", name).stdout.decode()
    assert "Health:     healthy; last check" in shown and "exit code 0: probing" in shown
    assert bed.show(unit, "StatusText")["StatusText"] == \
        f"Container {name} running, pid {status(bed, name)['pid']} (healthy)"
    # No timers, no units per probe: the monitor runs them.
    units = bed.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                     "--type=service,timer,scope"]).stdout
    others = [u for u in units.decode().splitlines() if name in u and unit not in u]
    assert others == [], others


def test_hung_probe_is_killed_at_its_timeout_leaving_nothing(
        bed: Bed, name: str, make_bundle: Any) -> None:
    # The first probe hangs (sleep 4242 under a shell), the next ones pass.
    check = "if [ -e /tmp/hung ]; then exit 0; fi; touch /tmp/hung; sleep 4242; true"
    out = bed.sdshim("run", "-d", "--name", name, "--health-cmd", check,
                     "--health-interval", "300ms", "--health-timeout", "1s",
                     str(make_bundle("sleep", "1000")))
    assert out.returncode == 0, out
    h = poll("the hung probe's verdict", lambda: (x := health(bed, name))["log"] and x, 60)
    first = h["log"][0]
    assert first["timed_out"] and first["exit_code"] is None
    assert "probe timed out after 1s and was killed" in first["output"]
    poll("healthy after it", lambda: health(bed, name)["status"] == "healthy", 30)
    assert not [p for p in bed_processes(bed) if "sleep 4242" in p[2]]
    assert not [z for z in zombies(bed) if z[0] != ""], zombies(bed)
    # Only the container and at most one quick probe at a time.
    execs = [p for p in bed_processes(bed) if " exec " in p[2] and name in p[2]]
    assert len(execs) <= 1, execs


def test_unhealthy_restart_makes_systemd_restart_it(bed: Bed, name: str,
                                                    make_bundle: Any) -> None:
    out = bed.sdshim("run", "-d", "--name", name, "--restart", "on-failure",
                     "--restart-delay", "0.2", "--health-cmd", "false",
                     "--health-retries", "1", "--health-on-failure", "restart", *FAST,
                     str(make_bundle("sh", "-c", "trap 'exit 0' TERM; "
                                     "while :; do sleep 0.1; done")))
    assert out.returncode == 0, out
    unit = f"sdshim-{name}.service"
    poll("a restart", lambda: int(bed.show(unit, "NRestarts")["NRestarts"] or 0) >= 1, 60)
    # The container stopped cleanly (status 0) and was restarted all the same.
    events = health_events(bed, name)
    assert events[:1] == ["unhealthy"], events


def test_unhealthy_kill(bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("run", "-d", "--name", name, "--health-cmd", "exit 3",
                     "--health-retries", "2", "--health-on-failure", "kill", *FAST,
                     str(make_bundle("sleep", "1000")))
    assert out.returncode == 0, out
    waited = bed.sdshim("wait", name, timeout=60)
    assert waited.returncode == 137, waited
    record = json.loads(bed.read(f"/run/sdshim/{name}/exit.json"))
    assert record["signal"] == "SIGKILL" and record["health"] == "unhealthy"
    h = health(bed, name)
    assert h["failing_streak"] == 2 and [r["exit_code"] for r in h["log"]] == [3, 3]


def test_healthy_mode_is_ready_at_the_first_passing_check(bed: Bed, name: str,
                                                          make_bundle: Any) -> None:
    run = bed.popen([*SDSHIM, "run", "-d", "--name", name, "--sdnotify", "healthy",
                     "--health-cmd", "test -e /tmp/ok", "--health-retries", "1000", *FAST,
                     str(make_bundle("sleep", "1000"))],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    unit = f"sdshim-{name}.service"
    try:
        poll("failing probes", lambda: health_soon(bed, name).get("failing_streak", 0) >= 2,
             30)
        assert bed.show(unit, "ActiveState")["ActiveState"] == "activating"
        assert run.poll() is None
        in_container(bed, name, "touch", "/tmp/ok")
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0 and out.decode().strip() == name, err
    assert bed.show(unit, "ActiveState")["ActiveState"] == "active"
    assert health(bed, name)["status"] == "healthy"


def test_template_unit_health_check(bed: Bed, name: str, make_bundle: Any,
                                    template_unit: Any) -> None:
    # A command with spaces comes in SDSHIM_HEALTH_CMD (SDSHIM_OPTIONS splits at spaces).
    unit = template_unit(name, make_bundle("sh", "-c", "touch /tmp/ok; exec sleep 1000"),
                         "--sdnotify healthy --health-interval 300ms",
                         'Environment="SDSHIM_HEALTH_CMD=test -e /tmp/ok"\n')
    started = bed.run(["systemctl", "start", unit])
    assert started.returncode == 0, started
    assert bed.show(unit, "ActiveState")["ActiveState"] == "active"
    assert health(bed, name)["status"] == "healthy"
    assert bed.show(unit, "StatusText")["StatusText"].endswith("(healthy)")
