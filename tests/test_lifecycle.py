"""Lifecycle under faults and load: races, signals, OOM, crashes, restarts, concurrency.

Every test runs on the booted systemd; faults are real (SIGKILL, journald and systemd
restarts, a runtime that is killed mid-create). Counts can be raised for a longer soak
with SDSHIM_STRESS_ROUNDS (default 2).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PREFIX, SDSHIM, Bed, assert_clean, run_while_creating, slow_runtime
from tests.test_container import one_line_error, status, wait_state

STRESS_ROUNDS = int(os.environ.get("SDSHIM_STRESS_ROUNDS", "2"))


# --- helpers ----------------------------------------------------------------------------


def parallel(bed: Bed, argvs: Sequence[Sequence[str]],
             timeout: float = 300) -> list[subprocess.CompletedProcess[bytes]]:
    """Run every argv inside the bed at the same time; their results, in order."""
    procs = [bed.popen(list(a), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for a in argvs]
    results = []
    deadline = time.monotonic() + timeout
    for argv, proc in zip(argvs, procs, strict=True):
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        results.append(subprocess.CompletedProcess(list(argv), proc.returncode, out, err))
    return results


def all_ok(results: Sequence[subprocess.CompletedProcess[bytes]]) -> None:
    failed = [(r.args[3:], r.returncode, r.stderr.decode()[-300:])
              for r in results if r.returncode != 0]
    assert not failed, failed[:5]


def poll(what: str, check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def bed_processes(bed: Bed) -> list[tuple[str, str, str]]:
    """(pid, state, command line) of every process in the bed."""
    out = bed.run(["ps", "-e", "-o", "pid=,stat=,args="]).stdout.decode()
    rows = []
    for line in out.splitlines():
        pid, stat, args = [*line.strip().split(None, 2), "", ""][:3]
        rows.append((pid, stat, args))
    return rows


def zombies(bed: Bed) -> list[tuple[str, str, str]]:
    return [p for p in bed_processes(bed) if p[1].startswith("Z")]


def without_pid_namespace(bundle: Path) -> Path:
    """The container shares the bed's pid namespace, so its orphans reach the monitor."""
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"]
                                     if ns["type"] != "pid"]
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def with_annotations(bundle: Path, **annotations: str) -> Path:
    config = json.loads((bundle / "config.json").read_text())
    config["annotations"] = annotations
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def with_bind(bundle: Path, source: Path, target: str) -> Path:
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"].append({"destination": target, "type": "bind", "source": str(source),
                             "options": ["rbind", "rw"]})
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def monitor_pid(bed: Bed, name: str) -> int:
    return int(bed.show(f"sdshim-{name}.service", "MainPID")["MainPID"])


def kill_in_bed(bed: Bed, pid: int | str, sig: str = "KILL") -> None:
    assert bed.run(["kill", f"-{sig}", str(pid)]).returncode == 0


def cleanup_names(bed: Bed, names: Sequence[str]) -> None:
    for i in range(0, len(names), 50):
        bed.sdshim("delete", "--force", *names[i:i + 50], timeout=300)


def assert_nothing_leaked(bed: Bed) -> None:
    """No test container's unit, record, runtime state, cgroup or process is left."""
    units = bed.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                     f"sdshim-{PREFIX}*"]).stdout.decode()
    assert units.strip() == "", units
    run_dir = bed.path("/run/sdshim")
    left = [p.name for p in run_dir.iterdir() if p.name.startswith(PREFIX)] \
        if run_dir.is_dir() else []
    assert left == [], left
    runc = bed.run(["runc", "--root", "/run/sdshim/.runtime/runc", "list", "-q"])
    assert runc.stdout.decode().split() == []
    for hierarchy in ("unified", "memory", "pids", "systemd"):
        sl = bed.path(f"/sys/fs/cgroup/{hierarchy}/sdshim.slice")
        if sl.is_dir():
            leftover = [p.name for p in sl.iterdir()
                        if p.is_dir() and p.name.startswith(f"sdshim-{PREFIX}")]
            assert leftover == [], (hierarchy, leftover)
    procs = [p for p in bed_processes(bed)
             if "sdshim.shim" in p[2] or "sdshim/shim/__main__" in p[2]
             or "runc" in p[2].split(" ", 1)[0]
             or p[2].startswith("sleep ")]
    assert procs == [], procs
    assert zombies(bed) == []


# --- early exits and orphans ------------------------------------------------------------

EARLY_EXIT_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from sdshim.units.manager import Manager

async def main(bundle, prefix, count):
    seen = []
    async with await Manager.connect() as m:
        for i in range(count):
            name = f"{prefix}-{i}"
            await m.create(Path(bundle), name=name, start=True)
            states = [(await m.status(name))["state"]]
            final = await m.wait(name, 30)
            states.append((await m.status(name))["state"])
            seen.append({"states": states, "exit_code": final["exit_code"],
                         "signal": final["signal"], "error": final["error"]})
            await m.delete(name)
    print(json.dumps(seen))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_early_exit_200_in_a_row(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("true")
    out = bed.run([sys.executable, "-c", EARLY_EXIT_SCRIPT, str(bundle), name, "200"],
                  timeout=600)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    seen = json.loads(out.stdout)
    assert len(seen) == 200
    for i, run in enumerate(seen):
        # Right after start it may still be running (or draining); once ended, always
        # ended, with the true status.
        assert run["states"][0] in ("running", "exiting", "exited"), (i, run)
        assert run["states"][1] == "exited", (i, run)
        assert (run["exit_code"], run["signal"], run["error"]) == (0, None, None), (i, run)
    assert zombies(bed) == []
    assert_nothing_leaked(bed)


def test_early_exit_50_at_once(bed: Bed, name: str, make_bundle: Any) -> None:
    names = [f"{name}-{i}" for i in range(50)]
    bundles = [make_bundle("sh", "-c", f"exit {i % 7}") for i in range(50)]
    results = parallel(bed, [[*SDSHIM, "run", "--name", n, str(b)]
                             for n, b in zip(names, bundles, strict=True)])
    for i, r in enumerate(results):
        assert r.returncode == i % 7, (i, r.returncode, r.stderr)
        assert b"Traceback" not in r.stderr
    listed = {s["name"]: s for s in json.loads(bed.sdshim("list", "--json").stdout)}
    for i, n in enumerate(names):
        s = listed[n]
        assert (s["state"], s["exit_code"], s["error"]) == ("exited", i % 7, None), s
    assert zombies(bed) == []
    all_ok(parallel(bed, [[*SDSHIM, "delete", n] for n in names]))
    assert_nothing_leaked(bed)


def test_orphans_are_reaped_and_not_taken_for_the_container(bed: Bed, name: str,
                                                            make_bundle: Any) -> None:
    # Without a pid namespace, the container's orphans are reparented to the monitor
    # (child subreaper): one that exits first with another status, and one that is
    # still running, detached from the output pipes, when the container's init exits.
    bundle = without_pid_namespace(make_bundle("sh", "-c", (
        "(sleep 0.1; exit 9) & "
        "sh -c 'sleep 77 </dev/null >/dev/null 2>&1 &'; "
        "sleep 0.5; echo done; exit 3")))
    out = bed.sdshim("run", "--name", name, str(bundle))
    assert out.returncode == 3, out.stderr
    assert out.stdout == b"done\n"
    s = status(bed, name)
    assert (s["state"], s["exit_code"], s["signal"], s["error"]) == ("exited", 3, None, None)
    # The runtime's delete killed the straggler; the monitor reaped it and the first one.
    poll("the orphan to be gone",
         lambda: not [p for p in bed_processes(bed) if p[2] == "sleep 77"])
    assert zombies(bed) == []


# --- signals and stop -------------------------------------------------------------------


def test_stop_signal_comes_from_the_bundle_annotation(bed: Bed, name: str,
                                                      make_bundle: Any) -> None:
    script = ("trap 'echo got-usr1; exit 5' USR1; trap 'echo got-term; exit 6' TERM; "
              "echo up; while :; do sleep 0.05; done")
    cases = [("SIGUSR1", [], 5, "SIGUSR1"), ("10", [], 5, "SIGUSR1"),
             ("SIGUSR1", ["--stop-signal", "TERM"], 6, "SIGTERM")]
    for i, (annotation, extra, code, sent) in enumerate(cases):
        n = f"{name}-{i}"
        bundle = with_annotations(make_bundle("sh", "-c", script),
                                  **{"org.opencontainers.image.stopSignal": annotation})
        assert bed.sdshim("run", "-d", "--name", n, *extra, str(bundle)).returncode == 0
        poll("the container's output", lambda n=n: bed.sdshim("logs", n).stdout == b"up\n")
        assert bed.sdshim("stop", "--time", "10", n).returncode == 0
        s = status(bed, n)
        assert (s["exit_code"], s["signal"]) == (code, None), s
        assert s["stop_signal"] == sent and s["stop_timed_out"] is False, s
    # systemctl stop asks with SIGTERM; the container gets its own stop signal.
    n = f"{name}-systemctl"
    bundle = with_annotations(make_bundle("sh", "-c", script),
                              **{"org.opencontainers.image.stopSignal": "USR1"})
    assert bed.sdshim("run", "-d", "--name", n, str(bundle)).returncode == 0
    poll("the container's output", lambda: bed.sdshim("logs", n).stdout == b"up\n")
    assert bed.run(["systemctl", "stop", f"sdshim-{n}.service"]).returncode == 0
    s = status(bed, n)
    assert s["exit_code"] == 5 and s["stop_signal"] == "SIGUSR1", s


def test_bad_stop_signal_annotation_is_refused(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = with_annotations(make_bundle("true"),
                              **{"org.opencontainers.image.stopSignal": "SIGNOPE"})
    out = bed.sdshim("run", "--name", name, str(bundle))
    assert out.returncode == 125
    err = one_line_error(out)
    assert "org.opencontainers.image.stopSignal" in err and "SIGNOPE" in err
    assert_clean(bed, name)


def test_stop_of_a_container_ignoring_sigterm_ends_within_timeout(bed: Bed, name: str,
                                                                  make_bundle: Any) -> None:
    # PID 1 of a pid namespace without a handler ignores SIGTERM.
    assert bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "1000"))
                      ).returncode == 0
    started = time.monotonic()
    out = bed.sdshim("stop", "--time", "2", name)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert elapsed < 3.0, elapsed  # N + 1 s, the CLI's own start-up included
    s = status(bed, name)
    assert (s["state"], s["exit_code"], s["signal"]) == ("exited", 137, "SIGKILL"), s
    assert s["stop_signal"] == "SIGTERM" and s["stop_timed_out"] is True, s
    assert "did not stop on SIGTERM in time" in s["status_text"]
    record = json.loads(bed.path(f"/run/sdshim/{name}/exit.json").read_text())
    assert record["stop_timed_out"] is True and record["signal"] == "SIGKILL"


def test_kill_signal_is_recorded(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "trap 'echo hup' HUP; echo up; while :; do sleep 0.05; "
                                     "done")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    poll("the container's output", lambda: bed.sdshim("logs", name).stdout == b"up\n")
    # systemctl kill's default (all processes of the unit) reaches the container too.
    assert bed.run(["systemctl", "kill", "-s", "HUP", f"sdshim-{name}.service"]
                   ).returncode == 0
    poll("the trap's output", lambda: b"hup" in bed.sdshim("logs", name).stdout)
    assert status(bed, name)["state"] == "running"
    assert bed.sdshim("kill", "--signal", "KILL", name).returncode == 0
    s = wait_state(bed, name, "exited")
    assert (s["exit_code"], s["signal"], s["oom_killed"]) == (137, "SIGKILL", False), s
    assert "stop_signal" not in s
    assert "killed by SIGKILL" in s["status_text"]


# --- OOM --------------------------------------------------------------------------------


def test_oom_kill_is_reported(bed: Bed, name: str, make_bundle: Any) -> None:
    # `tail` keeps the whole last "line" of an endless stream without newlines.
    bundle = make_bundle("tail", "/dev/zero")
    out = bed.sdshim("run", "--name", name, "-p", "MemoryMax=40M", "-p", "MemorySwapMax=0",
                     str(bundle), timeout=60)
    assert out.returncode == 137, out.stderr
    s = status(bed, name)
    assert (s["exit_code"], s["signal"], s["oom_killed"]) == (137, "SIGKILL", True), s
    assert "out of memory" in s["status_text"]
    show = bed.show(f"sdshim-{name}.service", "StatusText")
    assert "out of memory" in show["StatusText"]
    record = json.loads(bed.path(f"/run/sdshim/{name}/exit.json").read_text())
    assert record["oom_killed"] is True
    # A process of the container other than its init: still an OOM kill in its cgroup.
    n = f"{name}-child"
    out = bed.sdshim("run", "--name", n, "-p", "MemoryMax=40M", "-p", "MemorySwapMax=0",
                     str(make_bundle("sh", "-c", "tail /dev/zero; exit 4")), timeout=60)
    assert out.returncode == 4, out.stderr
    s = status(bed, n)
    assert (s["exit_code"], s["signal"], s["oom_killed"]) == (4, None, True), s
    # A plain SIGKILL is not an OOM kill.
    n = f"{name}-plain"
    assert bed.sdshim("run", "-d", "--name", n, "-p", "MemoryMax=40M",
                      str(make_bundle("sleep", "100"))).returncode == 0
    assert bed.sdshim("kill", "-s", "KILL", n).returncode == 0
    s = wait_state(bed, n, "exited")
    assert s["signal"] == "SIGKILL" and s["oom_killed"] is False, s


# --- monitor crashes and runtime faults -------------------------------------------------


def test_monitor_killed_during_create(bed: Bed, name: str, make_bundle: Any) -> None:
    proc = run_while_creating(bed, name, make_bundle("sleep", "1000"), 1.5)
    kill_in_bed(bed, monitor_pid(bed, name))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 125, err
    assert b"Traceback" not in err
    s = wait_state(bed, name, "exited")
    assert s["exit_code"] is None and "monitor died (killed by SIGKILL)" in s["error"], s
    poll("the container's processes to go",
         lambda: not [p for p in bed_processes(bed) if p[2] == "sleep 1000"])
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name, s["id"])


def test_monitor_killed_after_exit_before_record(bed: Bed, name: str,
                                                 make_bundle: Any) -> None:
    # The container has ended; the monitor is cleaning up (a slow runtime `delete`) and
    # has not recorded the exit: the state says "exiting", not "running". Killed then,
    # the monitor leaves no record, and no status is made up.
    runtime = slow_runtime(bed, 20, "delete")
    assert bed.sdshim("run", "-d", "--runtime", str(runtime), "--name", name,
                      str(make_bundle("sh", "-c", "echo bye; exit 3"))).returncode == 0
    s = wait_state(bed, name, "exiting")
    assert s["exit_code"] is None
    kill_in_bed(bed, s["monitor_pid"])
    s = wait_state(bed, name, "exited")
    assert s["exit_code"] is None and "monitor died" in s["error"], s
    poll("the runtime to go", lambda: not [p for p in bed_processes(bed)
                                           if "slow-delete" in p[2]])
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name, s["id"])


def test_runtime_killed_during_create(bed: Bed, name: str, make_bundle: Any) -> None:
    runtime = slow_runtime(bed, 30)
    proc = bed.popen([*SDSHIM, "run", "-d", "--runtime", str(runtime), "--name", name,
                      str(make_bundle("true"))], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wrapper() -> list[str]:
        return [p[0] for p in bed_processes(bed)
                if p[2].startswith("/bin/sh ") and "slow-create-30 " in p[2]]

    pid = poll("the runtime to start", wrapper)[0]
    children = poll("its sleep", lambda: bed.run(["pgrep", "-P", pid]).stdout.split())
    kill_in_bed(bed, pid)
    for child in children:  # the sleep, which holds the output pipes
        kill_in_bed(bed, child.decode())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 125, err
    message = b"slow-create-30 run was killed by SIGKILL"  # run -d: create and start
    assert b"Traceback" not in err and message in err, err
    s = status(bed, name)
    assert s["state"] == "exited" and s["exit_code"] == 125, s
    assert message.decode() in s["error"]
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name, s["id"])


@pytest.mark.parametrize("units", [
    # journald alone: its socket stays (systemd holds it) and keeps what is sent meanwhile.
    ["systemd-journald.service"],
    # A new socket: the monitor reconnects and goes on. Entries that sat unread in the
    # old socket's queue when it was closed are lost, as for every journald client.
    ["systemd-journald.socket", "systemd-journald.service"],
])
def test_journald_restart_is_survived(bed: Bed, name: str, make_bundle: Any,
                                      units: list[str]) -> None:
    expected = [f"line{i}" for i in range(80)]
    bundle = make_bundle("sh", "-c", "i=0; while [ $i -lt 80 ]; do echo line$i; i=$((i+1)); "
                                     "sleep 0.02; done")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    poll("some output", lambda: bed.sdshim("logs", name).stdout)
    assert bed.run(["systemctl", "restart", *units]).returncode == 0
    assert bed.sdshim("wait", name, timeout=60).stdout == b"0\n"
    assert status(bed, name)["error"] is None
    got = bed.sdshim("logs", name).stdout.decode().split()
    if units == ["systemd-journald.service"]:
        assert got == expected
    else:
        assert got[-1] == "line79" and got == sorted(got, key=expected.index), got
    assert len(got) >= 70, got


# --- systemd reloads and re-executions --------------------------------------------------


def test_daemon_reload_and_reexec_change_nothing(bed: Bed, name: str,
                                                 make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "trap 'echo term; exit 7' TERM; echo up; "
                                     "while :; do sleep 0.05; done")
    short = make_bundle("sh", "-c", "sleep 1.5; exit 4")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    assert bed.sdshim("run", "-d", "--name", f"{name}-short", str(short)).returncode == 0
    waiter = bed.popen([*SDSHIM, "wait", f"{name}-short"], stdout=subprocess.PIPE)
    before = status(bed, name)
    for command in ("daemon-reload", "daemon-reexec", "daemon-reload"):
        assert bed.run(["systemctl", command]).returncode == 0, command
    poll("the system manager", lambda: bed.run(["systemctl", "is-system-running"]
                                                ).stdout.strip() == b"running")
    after = status(bed, name)
    for key in ("state", "pid", "monitor_pid", "id", "unit_state", "status_text"):
        assert after[key] == before[key], key
    assert after["state"] == "running"
    # The container that ended across the re-execution: its status, to the waiter too.
    out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 4 and out == b"4\n"
    assert bed.show(f"sdshim-{name}-short.service", "ExecMainStatus")["ExecMainStatus"] == "4"
    assert bed.sdshim("logs", name).stdout == b"up\n"
    assert bed.sdshim("kill", "-s", "USR1", name).returncode == 0
    assert bed.sdshim("stop", "--time", "5", name).returncode == 0
    s = status(bed, name)
    assert (s["state"], s["exit_code"]) == ("exited", 7), s
    assert bed.sdshim("logs", name).stdout == b"up\nterm\n"


def test_daemon_reload_during_start(bed: Bed, name: str, make_bundle: Any) -> None:
    proc = run_while_creating(bed, name, make_bundle("sleep", "1000"), 1)
    assert bed.run(["systemctl", "daemon-reload"]).returncode == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == name.encode()
    s = status(bed, name)
    assert s["state"] == "running" and s["unit_state"] == "active/running", s
    assert bed.sdshim("stop", "--time", "1", name).returncode == 0
    assert status(bed, name)["signal"] == "SIGKILL"


# --- restart policies -------------------------------------------------------------------


def test_restart_on_failure_until_success(bed: Bed, name: str, make_bundle: Any) -> None:
    counter = bed.scratch / f"counter-{name}"
    counter.mkdir()
    bundle = with_bind(make_bundle("sh", "-c", (
        "n=$(cat /state/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /state/n; "
        "echo run$n; [ $n -ge 3 ] && exit 0; exit 1")), counter, "/state")
    out = bed.sdshim("run", "-d", "--name", name, "--restart", "on-failure",
                     "--restart-delay", "0.1", str(bundle))
    assert out.returncode == 0, out.stderr
    # `wait` means the final exit: after the two failures that were restarted.
    out = bed.sdshim("wait", name, timeout=60)
    assert out.stdout == b"0\n", out.stderr
    s = status(bed, name)
    assert (s["state"], s["exit_code"], s["restart"], s["restarts"]) == \
        ("exited", 0, "on-failure", 2), s
    show = bed.show(f"sdshim-{name}.service", "NRestarts", "Restart", "ActiveState")
    assert show == {"NRestarts": "2", "Restart": "on-failure", "ActiveState": "active"}
    assert bed.sdshim("logs", name).stdout == b"run1\nrun2\nrun3\n"
    assert "on-failure (2 restarts so far)" in bed.sdshim("status", name).stdout.decode()


def test_restart_always_and_stop(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "echo run; sleep 0.2")
    assert bed.sdshim("run", "-d", "--name", name, "--restart", "always",
                      "--restart-delay", "0.1", str(bundle)).returncode == 0
    poll("two restarts", lambda: status(bed, name)["restarts"] >= 2, timeout=30)
    # Between runs, never a final "exited" while systemd is about to restart it.
    assert status(bed, name)["state"] in ("creating", "created", "running", "exiting", "restarting")
    out = bed.sdshim("stop", "--time", "5", name)
    assert out.returncode == 0, out.stderr
    s = status(bed, name)
    assert s["state"] == "exited", s
    restarts = s["restarts"]
    time.sleep(0.5)  # would have been restarted by now (delay 0.1 s)
    s = status(bed, name)
    assert s["state"] == "exited" and s["restarts"] == restarts, s
    assert not bed.path(f"/run/sdshim/{name}/control").exists()


def test_restart_is_not_tried_when_the_container_cannot_run(bed: Bed, name: str,
                                                            make_bundle: Any) -> None:
    out = bed.sdshim("run", "--name", name, "--restart", "always", "--restart-delay", "0.1",
                     str(make_bundle("bahs")), timeout=60)
    assert out.returncode == 127
    assert "executable file not found" in one_line_error(out)
    s = status(bed, name)
    assert (s["state"], s["exit_code"], s["restarts"]) == ("exited", 127, 0), s
    assert bed.show(f"sdshim-{name}.service", "NRestarts")["NRestarts"] == "0"


def test_restart_on_failure_keeps_a_clean_exit(bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("run", "--name", name, "--restart", "on-failure",
                     str(make_bundle("true")))
    assert out.returncode == 0
    s = status(bed, name)
    assert (s["state"], s["exit_code"], s["restarts"], s["unit_state"]) == \
        ("exited", 0, 0, "active/exited"), s


# --- delete --force from every partial state --------------------------------------------


def _running(bed: Bed, name: str, make_bundle: Any) -> dict[str, Any]:
    assert bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "1000"))
                      ).returncode == 0
    return status(bed, name)


def _no_container_process(bed: Bed) -> bool:
    return not [p for p in bed_processes(bed) if p[2] == "sleep 1000"]


@pytest.mark.parametrize("damage", ["monitor-killed", "records-removed", "unit-reset",
                                    "runtime-state-removed", "only-runtime-state-left",
                                    "created-not-started"])
def test_delete_force_from_partial_state(bed: Bed, name: str, make_bundle: Any,
                                         damage: str) -> None:
    unit = f"sdshim-{name}.service"
    if damage == "created-not-started":
        assert bed.sdshim("create", "--name", name, str(make_bundle("sleep", "1000"))
                          ).returncode == 0
        s = status(bed, name)
        assert s["state"] == "created"
    else:
        s = _running(bed, name, make_bundle)
    cid = s["id"]
    if damage in ("monitor-killed", "unit-reset", "only-runtime-state-left"):
        kill_in_bed(bed, s["monitor_pid"])
        wait_state(bed, name, "exited")
    if damage == "records-removed":
        bed.run(["rm", "-rf", f"/run/sdshim/{name}"])
    if damage in ("unit-reset", "only-runtime-state-left"):
        bed.run(["systemctl", "reset-failed", unit])
    if damage == "only-runtime-state-left":
        bed.run(["rm", "-rf", f"/run/sdshim/{name}"])
        assert bed.path(f"/run/sdshim/.runtime/runc/{cid}").exists()
        out = bed.sdshim("delete", name)
        assert out.returncode == 125 and "no such container" in one_line_error(out)
    if damage == "runtime-state-removed":
        assert bed.run(["runc", "--root", "/run/sdshim/.runtime/runc", "delete", "--force",
                        cid]).returncode == 0
    out = bed.sdshim("delete", "--force", name)
    assert out.returncode == 0, out.stderr
    assert_clean(bed, name, cid)
    poll("the container's processes to go", lambda: _no_container_process(bed))
    # Deleting again: nothing is left to find.
    out = bed.sdshim("delete", "--force", name)
    assert out.returncode == 125 and "no such container" in one_line_error(out)


# --- concurrency ------------------------------------------------------------------------


def _hundred(bed: Bed, prefix: str, make_bundle: Any, count: int = 100) -> None:
    """count containers created, started, stopped and deleted by parallel CLI calls."""
    names = [f"{prefix}-{i}" for i in range(count)]
    # Each stops with its own status, so a mix-up between containers would show.
    bundles = [make_bundle("sh", "-c", f"trap 'exit {i % 100 + 1}' TERM; echo up; "
                                       "sleep 1000 & wait") for i in range(count)]
    all_ok(parallel(bed, [[*SDSHIM, "create", "--name", n, str(b)]
                          for n, b in zip(names, bundles, strict=True)]))
    all_ok(parallel(bed, [[*SDSHIM, "start", n] for n in names]))
    listed = {s["name"]: s for s in json.loads(bed.sdshim("list", "--json").stdout)}
    assert sorted(n for n in listed if n.startswith(prefix + "-")) == sorted(names)
    assert {listed[n]["state"] for n in names} == {"running"}
    assert len({listed[n]["pid"] for n in names}) == count
    all_ok(parallel(bed, [[*SDSHIM, "stop", "--time", "20", n] for n in names]))
    listed = {s["name"]: s for s in json.loads(bed.sdshim("list", "--json").stdout)}
    for i, n in enumerate(names):
        s = listed[n]
        assert (s["state"], s["exit_code"], s["signal"], s["error"]) == \
            ("exited", i % 100 + 1, None, None), s
    all_ok(parallel(bed, [[*SDSHIM, "delete", n] for n in names]))


def test_hundred_containers_in_parallel(bed: Bed, name: str, make_bundle: Any) -> None:
    tasks_max = bed.show("sdshim.slice", "TasksMax")["TasksMax"]
    assert tasks_max == "infinity" or int(tasks_max) > 500, tasks_max
    _hundred(bed, name, make_bundle)
    assert_nothing_leaked(bed)


def test_no_global_lock_serialises_creates(bed: Bed, name: str, make_bundle: Any) -> None:
    # Ten creates whose runtime takes 2 s each: together they take about 2 s, not 20.
    runtime = slow_runtime(bed, 2)
    bundle = make_bundle("true")
    names = [f"{name}-{i}" for i in range(10)]
    started = time.monotonic()
    all_ok(parallel(bed, [[*SDSHIM, "create", "--runtime", str(runtime), "--name", n,
                           str(bundle)] for n in names]))
    assert time.monotonic() - started < 12  # generous: serialised would be >= 20 s
    all_ok(parallel(bed, [[*SDSHIM, "delete", "--force", n] for n in names]))
    assert_nothing_leaked(bed)


# --- stress -------------------------------------------------------------------------------


def test_stress_parallel_and_early_exits_leak_nothing(bed: Bed, name: str,
                                                      make_bundle: Any) -> None:
    early = make_bundle("true")
    for round_ in range(STRESS_ROUNDS):
        prefix = f"{name}-r{round_}"
        _hundred(bed, prefix, make_bundle, count=40)
        names = [f"{prefix}-e{i}" for i in range(40)]
        results = parallel(bed, [[*SDSHIM, "run", "--rm", "--name", n, str(early)]
                                 for n in names])
        all_ok(results)
        # Early exits with a monitor SIGKILLed at a random point of its life.
        victims = [f"{prefix}-k{i}" for i in range(10)]
        procs = [bed.popen([*SDSHIM, "run", "-d", "--name", v, str(early)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for v in victims]
        time.sleep(secrets.randbelow(500) / 1000)
        for v in victims:
            pid = bed.show(f"sdshim-{v}.service", "MainPID").get("MainPID", "0")
            if pid not in ("", "0"):
                bed.run(["kill", "-KILL", pid])
        for p in procs:
            p.wait(timeout=120)
        for v in victims:
            s = wait_state(bed, v, "exited", timeout=30)
            # Either its true status, or an honest "the monitor died": nothing invented.
            assert (s["exit_code"] == 0 and s["error"] is None) or \
                (s["exit_code"] is None and "monitor died" in s["error"]), s
        all_ok(parallel(bed, [[*SDSHIM, "delete", "--force", v] for v in victims]))
        assert_nothing_leaked(bed)


def test_malformed_control_requests_are_answered_not_fatal(bed: Bed, name: str,
                                                           make_bundle: Any) -> None:
    assert bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "30"))).returncode == 0
    client = (
        "import socket, sys\n"
        "for req in sys.argv[2:]:\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    s.connect(sys.argv[1])\n"
        "    s.sendall(req.encode())\n"
        "    s.shutdown(socket.SHUT_WR)\n"
        "    print(s.makefile().readline().strip() or '-')\n"
    )
    out = bed.run([sys.executable, "-c", client, f"/run/sdshim/{name}/control",
                   "[]", '{"op": "kill", "signal": null}', '{"op": "kill", "signal": "x"}',
                   "not json", '{"op": "nope"}'])
    replies = out.stdout.decode().splitlines()
    assert len(replies) == 5, out
    for reply in (replies[0], replies[1], replies[2]):
        assert '"ok": false' in reply and "invalid request" in reply, replies
    assert replies[3] == "-"  # no JSON: nothing to answer, connection closed
    assert "unknown request" in replies[4]
    assert status(bed, name)["state"] == "running"
    assert bed.sdshim("kill", "-s", "KILL", name).returncode == 0
    poll("exit", lambda: status(bed, name)["state"] == "exited")
    assert status(bed, name)["signal"] == "SIGKILL"
