"""Readiness and status from inside (--sdnotify container|healthy), on the booted
systemd with real containers that send sd_notify datagrams (tests/helpers/sdhelper.c)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.conftest import SDSHIM, Bed
from tests.test_container import one_line_error, status
from tests.test_lifecycle import poll

# Sends STATUS=warming, waits for /tmp/go (the test makes it through /proc/PID/root),
# says READY=1 with a status, then runs.
WAIT_FOR_GO = ("{h} notify STATUS=warming; while [ ! -e /tmp/go ]; do sleep 0.05; done; "
               "{h} notify READY=1 'STATUS=serving 3 clients'; exec sleep 1000")


def unit_props(bed: Bed, unit: str) -> dict[str, str]:
    return bed.show(unit, "ActiveState", "SubState", "StatusText", "MainPID", "Result",
                    "ExecMainStatus")


def container_pid(bed: Bed, name: str) -> int:
    return int(poll("the container's pid", lambda: status(bed, name).get("pid")))


def go(bed: Bed, name: str) -> None:
    """Let a WAIT_FOR_GO container say it is ready."""
    pid = container_pid(bed, name)
    assert bed.run(["touch", f"/proc/{pid}/root/tmp/go"]).returncode == 0


def refusals(bed: Bed, name: str) -> list[str]:
    return [e["MESSAGE"] for e in bed.journal(f"SDSHIM_CONTAINER_NAME={name}",
                                              "SDSHIM_EVENT=notify-refused")]


def test_container_mode_is_active_only_once_the_container_says_ready(
        bed: Bed, name: str, make_bundle: Any, sdhelper: str) -> None:
    bundle = make_bundle("sh", "-c", WAIT_FOR_GO.format(h=sdhelper))
    unit = f"sdshim-{name}.service"
    run = bed.popen([*SDSHIM, "run", "-d", "--sdnotify", "container", "--name", name,
                     str(bundle)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The container's STATUS= shows while the unit is still activating.
        props = poll("STATUS=warming", lambda: (p := unit_props(bed, unit))["StatusText"]
                     == "warming" and p)
        assert props["ActiveState"] == "activating", props
        assert run.poll() is None  # `run -d` waits for READY=1
        assert status(bed, name)["status_text"] == "warming"
        go(bed, name)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0 and out.decode().strip() == name, err
    props = unit_props(bed, unit)
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["StatusText"] == "serving 3 clients"
    # Still the monitor's unit: MainPID is the monitor's.
    s = status(bed, name)
    assert s["monitor_pid"] == int(props["MainPID"]) and s["state"] == "running"
    shown = bed.sdshim("status", name).stdout.decode()
    assert "Status:     serving 3 clients" in shown, shown
    assert "Container" not in shown.split("Status:")[1].splitlines()[0]
    # The container sees the socket in its own environment and mount table.
    env = bed.read(f"/proc/{s['pid']}/environ").split("\0")
    assert "NOTIFY_SOCKET=/run/notify/notify.sock" in env
    assert refusals(bed, name) == []


def test_checked_not_trusted_mainpid_fds_fd_store_size_and_outsiders(
        bed: Bed, name: str, make_bundle: Any, sdhelper: str) -> None:
    h = sdhelper
    script = (f"{h} notify MAINPID=1 STATUS=one; {h} notify MAINPID=1; "
              f"{h} notify-fd STATUS=with-fd; {h} notify FDSTORE=1 FDNAME=db; "
              f"{h} notify-size 5000; {h} notify X_ODD=1 STATUS=two; "
              "while [ ! -e /tmp/go ]; do sleep 0.05; done; "
              f"{h} notify READY=1 STATUS=three; exec sleep 1000")
    unit = f"sdshim-{name}.service"
    run = bed.popen([*SDSHIM, "run", "-d", "--sdnotify", "container", "--name", name,
                     str(make_bundle("sh", "-c", script))],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        poll("STATUS=two", lambda: unit_props(bed, unit)["StatusText"] == "two", 30)
        # A process outside the container, with access to the host side: refused. It
        # stays alive a while, so that its cgroup can be looked at.
        outsider = bed.run([
            "python3", "-c",
            "import socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
            f"s.sendto(b'READY=1\\nSTATUS=outsider', '/run/sdshim/{name}/notify/notify.sock');"
            " time.sleep(2)"])
        assert outsider.returncode == 0, outsider.stderr
        poll("the outsider's refusal", lambda: any("outside the container" in m
                                                   for m in refusals(bed, name)))
        assert unit_props(bed, unit)["ActiveState"] == "activating"
        go(bed, name)
        _out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    props = unit_props(bed, unit)
    assert props["StatusText"] == "three" and props["ActiveState"] == "active"
    assert int(props["MainPID"]) == status(bed, name)["monitor_pid"]  # MAINPID=1 dropped
    messages = refusals(bed, name)
    # One line per kind, however often it came.
    kinds = {"MAINPID": 1, "file descriptors": 1, "more than 4096 bytes": 1,
             "'X_ODD'": 1, "outside the container": 1}
    for kind, count in kinds.items():
        assert sum(kind in m for m in messages) == count, (kind, messages)
    assert len(messages) == len(kinds), messages


def test_exit_before_ready_gives_the_true_status(bed: Bed, name: str,
                                                 make_bundle: Any, sdhelper: str) -> None:
    bundle = make_bundle("sh", "-c", f"{sdhelper} notify STATUS=trying; exit 7")
    out = bed.sdshim("run", "-d", "--sdnotify", "container", "--name", name, str(bundle))
    assert out.returncode == 7, out
    line = one_line_error(out)
    assert f"container {name} exited with status 7 before it was ready" in line
    assert "never sent READY=1" in line
    s = status(bed, name)
    assert s["state"] == "exited" and s["exit_code"] == 7 and s["error"] is None
    assert bed.show(f"sdshim-{name}.service", "ExecMainStatus")["ExecMainStatus"] == "7"


def test_never_ready_fails_at_timeout_start_sec(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done")
    out = bed.sdshim("run", "-d", "--sdnotify", "container", "-p", "TimeoutStartSec=2s",
                     "--name", name, str(bundle))
    assert out.returncode == 125, out
    line = one_line_error(out)
    assert f"container {name} did not get ready within TimeoutStartSec (2s)" in line, line
    assert "never sent READY=1" in line and "it was stopped" in line
    s = poll("the exit record", lambda: (st := status(bed, name))["state"] == "exited" and st)
    assert s["stop_signal"] == "SIGTERM"
    props = bed.show(f"sdshim-{name}.service", "Result")
    assert props["Result"] == "timeout"


def test_create_then_start_returns_once_ready(bed: Bed, name: str, make_bundle: Any,
                                              sdhelper: str) -> None:
    bundle = make_bundle("sh", "-c", WAIT_FOR_GO.format(h=sdhelper))
    created = bed.sdshim("create", "--sdnotify", "container", "--name", name, str(bundle))
    assert created.returncode == 0, created
    start = bed.popen([*SDSHIM, "start", name], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    try:
        poll("STATUS=warming", lambda: status(bed, name)["status_text"] == "warming", 30)
        assert start.poll() is None  # waits for READY=1
        go(bed, name)
        _out, err = start.communicate(timeout=60)
    finally:
        if start.poll() is None:
            start.kill()
    assert start.returncode == 0, err
    assert status(bed, name)["status_text"] == "serving 3 clients"


def test_monitor_mode_is_as_before(bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "1000")))
    assert out.returncode == 0, out
    props = unit_props(bed, f"sdshim-{name}.service")
    assert props["ActiveState"] == "active"
    assert props["StatusText"].startswith(f"Container {name} running, pid")
    s = status(bed, name)
    env = bed.read(f"/proc/{s['pid']}/environ").split("\0")
    assert not any(v.startswith("NOTIFY_SOCKET=") for v in env)
    assert not bed.path(f"/run/sdshim/{name}/notify").exists()
    assert s["health"] is None


def test_template_unit_with_container_readiness(bed: Bed, name: str, make_bundle: Any,
                                                template_unit: Any, sdhelper: str) -> None:
    bundle = make_bundle("sh", "-c", WAIT_FOR_GO.format(h=sdhelper))
    unit = template_unit(name, bundle, "--sdnotify container")
    start = bed.popen(["systemctl", "start", unit], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    try:
        props = poll("STATUS=warming", lambda: (p := unit_props(bed, unit))["StatusText"]
                     == "warming" and p, 30)
        assert props["ActiveState"] == "activating"
        assert start.poll() is None  # systemctl start waits for READY=1
        go(bed, name)
        _out, err = start.communicate(timeout=60)
    finally:
        if start.poll() is None:
            start.kill()
    assert start.returncode == 0, err
    props = unit_props(bed, unit)
    assert props["ActiveState"] == "active" and props["StatusText"] == "serving 3 clients"
    shown = bed.run(["systemctl", "status", "--no-pager", unit]).stdout.decode()
    assert "Status: \"serving 3 clients\"" in shown, shown


def test_template_unit_exit_before_ready_and_timeout(bed: Bed, name: str, make_bundle: Any,
                                                     template_unit: Any) -> None:
    unit = template_unit(name, make_bundle("sh", "-c", "exit 5"), "--sdnotify container")
    assert bed.run(["systemctl", "start", unit]).returncode != 0
    props = unit_props(bed, unit)
    assert props["ActiveState"] == "failed" and props["ExecMainStatus"] == "5", props
    record = json.loads(bed.read(f"/run/sdshim/{name}/exit.json"))
    assert record["exit_code"] == 5

    other = f"{name}x"
    unit = template_unit(other, make_bundle("sleep", "1000"), "--sdnotify container",
                         "TimeoutStartSec=2\n")
    assert bed.run(["systemctl", "start", unit]).returncode != 0
    assert unit_props(bed, unit)["Result"] == "timeout"
