"""Zero-resident containers (--supervisor systemd): the container's init is the unit's
main process, no sdshim process stays, and systemd records the container's status.

Every test runs on the booted systemd with runc; see sdshim/shim/handoff.py and
sdshim/shim/stoppost.py for what the two short-lived programs do.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PREFIX, REPO, SDSHIM, Bed, assert_clean, foreign_bundle
from tests.test_container import one_line_error, status, wait_state
from tests.test_lifecycle import (
    all_ok,
    assert_nothing_leaked,
    bed_processes,
    cleanup_names,
    parallel,
    poll,
)

ZERO = ("--supervisor", "systemd")


def run_d(bed: Bed, name: str, bundle: Path, *extra: str) -> Any:
    return bed.sdshim("run", "-d", *ZERO, "--name", name, *extra, str(bundle))


def sdshim_processes(bed: Bed) -> list[tuple[str, str, str]]:
    """Every process of sdshim's own (monitor, hand-off, stop step) in the bed."""
    return [p for p in bed_processes(bed)
            if "sdshim.shim" in p[2] or "sdshim/shim/__main__" in p[2]]


def unit_pids(bed: Bed, name: str) -> list[int]:
    """The pids in the unit's cgroup, all leaves (unified hierarchy)."""
    out = bed.run(["systemd-cgls", "--no-pager", "-l", "-u", f"sdshim-{name}.service"])
    pids = []
    for line in out.stdout.decode().splitlines():
        word = line.strip().lstrip("├└│─ ").split(" ", 1)[0]
        if word.isdigit():
            pids.append(int(word))
    return pids


def main_status(bed: Bed, name: str) -> tuple[str, str]:
    show = bed.show(f"sdshim-{name}.service", "ExecMainCode", "ExecMainStatus")
    return show["ExecMainCode"], show["ExecMainStatus"]


# --- the hand-off ---------------------------------------------------------------------


def test_the_init_becomes_the_main_process_and_nothing_of_sdshim_stays(
        bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "echo hello; echo oops >&2; exec sleep 1000")
    out = run_d(bed, name, bundle, "--log-tag", "web")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == name
    s = status(bed, name)
    assert (s["state"], s["supervisor"], s["log_driver"]) == ("running", "systemd", "stream")
    show = bed.show(f"sdshim-{name}.service", "MainPID", "NotifyAccess", "ActiveState",
                    "SubState", "StatusText", "KillSignal", "TimeoutStopUSec")
    assert int(show["MainPID"]) == s["pid"], (show, s)
    assert (show["ActiveState"], show["SubState"], show["NotifyAccess"]) == \
        ("active", "running", "all")
    # Started by systemd itself (sdshim.units.direct): no process of sdshim's is there
    # to set a status text; systemd's own Active and Main PID lines say it.
    assert show["StatusText"] == ""
    assert (show["KillSignal"], show["TimeoutStopUSec"]) == ("15", "10s")
    # No sdshim process anywhere, and the unit holds the container's init alone.
    assert sdshim_processes(bed) == []
    assert unit_pids(bed, name) == [s["pid"]]
    cmdline = bed.read(f"/proc/{s['pid']}/cmdline")
    assert cmdline.split("\0")[:2] == ["sleep", "1000"]
    # Output: journald streams with the podman field set, found by both ways.
    poll("both lines", lambda: len(bed.journal(f"CONTAINER_NAME={name}")) >= 2)
    entries = bed.journal(f"CONTAINER_NAME={name}")
    # One stream, as a native service's: the order is kept, stderr is not told apart.
    assert [(e["MESSAGE"], e["PRIORITY"]) for e in entries] == [("hello", "6"), ("oops", "6")]
    for e in entries:
        assert e["CONTAINER_ID_FULL"] == s["id"] and e["CONTAINER_ID"] == s["id"][:12]
        assert (e["CONTAINER_TAG"], e["SYSLOG_IDENTIFIER"]) == ("web", name)
        assert e["_SYSTEMD_UNIT"] == f"sdshim-{name}.service"
    logs = bed.sdshim("logs", name)
    assert (logs.stdout, logs.stderr) == (b"hello\noops\n", b"")
    listed = json.loads(bed.sdshim("list", "--json").stdout)
    assert [x["state"] for x in listed if x["name"] == name] == ["running"]
    cid = s["id"]
    out = bed.sdshim("delete", "--force", name)
    assert out.returncode == 0, out.stderr
    assert_clean(bed, name, cid)
    assert sdshim_processes(bed) == []


@pytest.mark.parametrize(("code", "signal_"), [(0, None), (3, None), (137, "SIGKILL")])
def test_exit_status_is_the_containers_own(bed: Bed, name: str, make_bundle: Any,
                                           code: int, signal_: str | None) -> None:
    # An init without handlers ignores every signal but SIGKILL (from outside).
    script = {0: "sleep 0.3", 3: "sleep 0.3; exit 3", 137: "exec sleep 1000"}[code]
    out = run_d(bed, name, make_bundle("sh", "-c", script))
    assert out.returncode == 0, out.stderr
    if signal_:
        assert bed.run(["kill", "-KILL", str(status(bed, name)["pid"])]).returncode == 0
    waited = bed.sdshim("wait", name)
    assert (waited.returncode, waited.stdout) == (code, f"{code}\n".encode())
    s = status(bed, name)
    assert (s["state"], s["exit_code"], s["signal"], s["error"]) == \
        ("exited", code, signal_, None), s
    expected = ("2", "9") if signal_ else ("1", str(code))
    assert main_status(bed, name) == expected
    assert sdshim_processes(bed) == []
    cid = s["id"]
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name, cid)


def test_attached_run_streams_output_and_returns_status(bed: Bed, name: str,
                                                        make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "echo out-1; echo err-1 >&2; exit 3")
    out = bed.sdshim("run", *ZERO, "--rm", "--name", name, str(bundle))
    # One stream (see test_the_init_becomes_the_main_process...): both on stdout.
    assert (out.returncode, out.stdout, out.stderr) == (3, b"out-1\nerr-1\n", b"")
    assert_clean(bed, name)


@pytest.mark.parametrize(("command", "code", "words"), [
    (["/nonexistent"], 127, "no such file or directory"),
    (["/etc/passwd"], 126, "permission denied"),
])
def test_create_errors_as_in_monitor_mode(bed: Bed, name: str, make_bundle: Any,
                                          command: list[str], code: int, words: str) -> None:
    out = run_d(bed, name, make_bundle(*command))
    assert out.returncode == code, out.stderr
    assert words in one_line_error(out).lower()
    s = status(bed, name)
    assert (s["state"], s["exit_code"]) == ("exited", code), s
    assert s["error"] and words in s["error"].lower()
    show = bed.show(f"sdshim-{name}.service", "StatusText", "ExecMainStatus")
    assert show["StatusText"].startswith("Error: ") and words in show["StatusText"].lower()
    cid = s["id"]
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name, cid)


def test_exec_format_error_after_start_is_reported(bed: Bed, name: str,
                                                   make_bundle: Any) -> None:
    out = run_d(bed, name, foreign_bundle(bed, make_bundle, "/foreign"))
    assert out.returncode == 126, out.stderr
    assert "exec format error" in one_line_error(out)
    s = status(bed, name)
    assert (s["state"], s["exit_code"]) == ("exited", 126), s
    assert "exec format error" in s["error"]
    cid = s["id"]
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name, cid)


def test_runtime_failure_is_125(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("true")
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["namespaces"].append({"type": "bogus"})
    (bundle / "config.json").write_text(json.dumps(config))
    out = run_d(bed, name, bundle)
    assert out.returncode == 125, out.stderr
    assert "bogus" in one_line_error(out)
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name)


@pytest.mark.parametrize("options", [["-i"], ["-t"], ["--log-driver", "native"],
                                     ["--log-path", "/tmp/x.log"]])
def test_what_needs_a_monitor_is_refused(bed: Bed, name: str, make_bundle: Any,
                                         options: list[str]) -> None:
    out = bed.sdshim("run", "-d", *ZERO, *options, "--name", name, str(make_bundle("true")))
    assert out.returncode == 2, out.stderr
    err = one_line_error(out)
    assert "needs the sdshim monitor" in err and options[0] in err
    assert_clean(bed, name)


# --- early exits ------------------------------------------------------------------------

EARLY_EXITS = """
import asyncio, json, subprocess, sys
from pathlib import Path
from sdshim.units.manager import Manager

async def main(base, prefix, count):
    seen = []
    async with await Manager.connect() as m:
        for i in range(count):
            name = f"{prefix}-{i}"
            await m.create(Path(base) / str(i % 7), name=name, start=True,
                           supervisor="systemd")
            final = await m.wait(name, 60)
            show = subprocess.run(["systemctl", "show", f"sdshim-{name}.service", "-p",
                                   "ExecMainStatus", "--value"], capture_output=True)
            seen.append([final["exit_code"], final["error"], int(show.stdout)])
            await m.delete(name)
    print(json.dumps(seen))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def early_exit_bundles(make_bundle: Any, base: Path) -> Path:
    """base/K runs `exit K` at once, K = 0..6."""
    base.mkdir(exist_ok=True)
    for k in range(7):
        target = base / str(k)
        if not target.exists():
            make_bundle("sh", "-c", f"exit {k}").rename(target)
    return base


def test_early_exit_200_in_a_row(bed: Bed, name: str, make_bundle: Any) -> None:
    base = early_exit_bundles(make_bundle, bed.scratch / "early")
    script = bed.scratch / "early_exits.py"
    script.write_text(EARLY_EXITS)
    out = bed.run([SDSHIM[0], str(script), str(base), name, "200"], timeout=900)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    seen = json.loads(out.stdout)
    assert seen == [[i % 7, None, i % 7] for i in range(200)]
    assert_nothing_leaked(bed)


def test_early_exit_50_at_once(bed: Bed, name: str, make_bundle: Any) -> None:
    base = early_exit_bundles(make_bundle, bed.scratch / "early")
    names = [f"{name}-{i}" for i in range(50)]
    all_ok(parallel(bed, [[*SDSHIM, "run", "-d", *ZERO, "--name", n, str(base / str(i % 7))]
                          for i, n in enumerate(names)]))
    try:
        waits = parallel(bed, [[*SDSHIM, "wait", n] for n in names])
        assert [w.returncode for w in waits] == [i % 7 for i in range(50)]
        for i, n in enumerate(names):
            s = status(bed, n)
            assert (s["state"], s["exit_code"], s["error"]) == ("exited", i % 7, None), s
            assert main_status(bed, n) == ("1", str(i % 7))
    finally:
        cleanup_names(bed, names)
    assert_nothing_leaked(bed)


# --- stop, kill, limits, restart --------------------------------------------------------

TRAP = "trap 'echo got-$SIG; exit 0' {sig}; echo ready; while :; do sleep 0.05; done"


def trapping(make_bundle: Any, sig: str) -> Path:
    bundle: Path = make_bundle("sh", "-c", TRAP.replace("$SIG", sig).format(sig=sig))
    return bundle


def wait_line(bed: Bed, name: str, line: bytes) -> None:
    poll(f"{line!r} in the logs", lambda: line in bed.sdshim("logs", name).stdout, 30)


def test_stop_sends_the_stop_signal(bed: Bed, name: str, make_bundle: Any) -> None:
    out = run_d(bed, name, trapping(make_bundle, "USR1"), "--stop-signal", "USR1")
    assert out.returncode == 0, out.stderr
    assert bed.show(f"sdshim-{name}.service", "KillSignal")["KillSignal"] == "10"
    wait_line(bed, name, b"ready")
    out = bed.sdshim("stop", "--time", "20", name)
    assert out.returncode == 0, out.stderr
    s = status(bed, name)
    assert (s["exit_code"], s["signal"], s["stop_signal"], s["stop_timed_out"]) == \
        (0, None, "SIGUSR1", False), s
    assert b"got-USR1" in bed.sdshim("logs", name).stdout


def test_stop_time_kills_after_n_seconds(bed: Bed, name: str, make_bundle: Any) -> None:
    out = run_d(bed, name, make_bundle("sh", "-c", "trap '' TERM; echo ready; "
                                       "while :; do sleep 0.05; done"))
    assert out.returncode == 0, out.stderr
    wait_line(bed, name, b"ready")
    began = time.monotonic()
    out = bed.sdshim("stop", "--time", "1", name)
    took = time.monotonic() - began
    assert out.returncode == 0, out.stderr
    s = status(bed, name)
    assert (s["exit_code"], s["signal"], s["stop_signal"], s["stop_timed_out"]) == \
        (137, "SIGKILL", "SIGTERM", True), s
    assert took < 9, took  # the unit's own timeout is 10 s: --time 1 was applied
    assert main_status(bed, name) == ("2", "9")


def test_systemctl_stop_uses_kill_signal_and_timeout(bed: Bed, name: str,
                                                     make_bundle: Any) -> None:
    out = run_d(bed, name, trapping(make_bundle, "TERM"))
    assert out.returncode == 0, out.stderr
    wait_line(bed, name, b"ready")
    assert bed.run(["systemctl", "stop", f"sdshim-{name}.service"]).returncode == 0
    s = wait_state(bed, name, "exited")
    assert (s["exit_code"], s["signal"]) == (0, None), s
    assert b"got-TERM" in bed.sdshim("logs", name).stdout
    other = f"{name}-hard"
    try:
        out = run_d(bed, other, make_bundle("sh", "-c", "trap '' TERM; echo ready; "
                                            "while :; do sleep 0.05; done"),
                    "--stop-timeout", "1")
        assert out.returncode == 0, out.stderr
        wait_line(bed, other, b"ready")
        assert bed.run(["systemctl", "stop", f"sdshim-{other}.service"]).returncode == 0
        s = wait_state(bed, other, "exited")
        assert (s["exit_code"], s["signal"], s["stop_timed_out"]) == (137, "SIGKILL", True)
    finally:
        bed.sdshim("delete", "--force", other)


def test_kill_reaches_the_container(bed: Bed, name: str, make_bundle: Any) -> None:
    out = run_d(bed, name, make_bundle("sh", "-c", "trap 'echo got-HUP' HUP; echo ready; "
                                       "while :; do sleep 0.05; done"))
    assert out.returncode == 0, out.stderr
    wait_line(bed, name, b"ready")
    assert bed.sdshim("kill", "--signal", "HUP", name).returncode == 0
    wait_line(bed, name, b"got-HUP")
    assert status(bed, name)["state"] == "running"
    assert bed.sdshim("kill", "--signal", "KILL", name).returncode == 0
    s = wait_state(bed, name, "exited")
    assert (s["exit_code"], s["signal"]) == (137, "SIGKILL"), s
    assert main_status(bed, name) == ("2", "9")


def test_memory_limit_and_oom_are_recorded(bed: Bed, name: str, make_bundle: Any) -> None:
    # `tail` keeps the whole last "line" of an endless stream without newlines.
    out = run_d(bed, name, make_bundle("tail", "/dev/zero"), "-p", "MemoryMax=40M",
                "-p", "MemorySwapMax=0")
    assert out.returncode == 0, out.stderr
    s = wait_state(bed, name, "exited", timeout=60)
    assert (s["exit_code"], s["signal"], s["oom_killed"]) == (137, "SIGKILL", True), s
    record = json.loads(bed.path(f"/run/sdshim/{name}/exit.json").read_text())
    assert record["oom_killed"] is True
    assert "out of memory" in bed.show(f"sdshim-{name}.service", "StatusText")["StatusText"]


def test_restart_on_failure_through_systemd(bed: Bed, name: str, make_bundle: Any) -> None:
    counter = bed.scratch / f"{name}.count"
    counter.write_text("")
    script = (f"echo x >> {counter}; n=$(wc -l < {counter}); echo run$n; "
              "[ $n -ge 3 ] && exec sleep 1000; exit 1")
    bundle = make_bundle("sh", "-c", script)
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"].append({"destination": str(bed.scratch), "type": "bind",
                             "source": str(bed.scratch), "options": ["rbind", "rw"]})
    (bundle / "config.json").write_text(json.dumps(config))
    out = run_d(bed, name, bundle, "--restart", "on-failure", "--restart-delay", "0.1")
    assert out.returncode == 0, out.stderr
    poll("the third run", lambda: status(bed, name)["restarts"] >= 2
         and status(bed, name)["state"] == "running", 60)
    assert bed.show(f"sdshim-{name}.service", "NRestarts")["NRestarts"] == "2"
    assert bed.sdshim("logs", name).stdout == b"run1\nrun2\nrun3\n"
    assert bed.sdshim("stop", "--time", "5", name).returncode == 0
    s = status(bed, name)
    assert s["state"] == "exited", s
    time.sleep(0.5)
    assert status(bed, name)["state"] == "exited"


def test_create_then_start(bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("create", *ZERO, "--name", name, str(make_bundle("sh", "-c", "exit 5")))
    assert out.returncode == 0, out.stderr
    s = status(bed, name)
    assert s["state"] == "created", s
    assert int(bed.show(f"sdshim-{name}.service", "MainPID")["MainPID"]) == s["pid"]
    out = bed.sdshim("start", name)
    assert out.returncode == 0, out.stderr
    waited = bed.sdshim("wait", name)
    assert waited.returncode == 5
    assert main_status(bed, name) == ("1", "5")
    poll("the hand-off to leave", lambda: sdshim_processes(bed) == [])


def test_create_then_start_an_exec_failure(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = foreign_bundle(bed, make_bundle, "/foreign")
    assert bed.sdshim("create", *ZERO, "--name", name, str(bundle)).returncode == 0
    out = bed.sdshim("start", name)
    assert out.returncode == 126, out.stderr
    assert "exec format error" in one_line_error(out)


def test_created_container_is_deleted(bed: Bed, name: str, make_bundle: Any) -> None:
    assert bed.sdshim("create", *ZERO, "--name", name,
                      str(make_bundle("sleep", "1000"))).returncode == 0
    cid = status(bed, name)["id"]
    out = bed.sdshim("delete", "--force", name)
    assert out.returncode == 0, out.stderr
    assert_clean(bed, name, cid)
    poll("no process left", lambda: sdshim_processes(bed) == [] and not [
        p for p in bed_processes(bed) if p[2] == "sleep 1000"])


def test_exec_runs_in_its_own_unit(bed: Bed, name: str, make_bundle: Any) -> None:
    assert run_d(bed, name, make_bundle("sleep", "1000")).returncode == 0
    out = bed.sdshim("exec", name, "--", "sh", "-c", "echo in-exec; exit 4")
    assert (out.returncode, out.stdout) == (4, b"in-exec\n"), out.stderr
    assert status(bed, name)["state"] == "running"


# --- logs: the stream driver's fields, in monitor mode too ------------------------------


def test_monitor_stream_driver_lines_carry_the_container_fields(
        bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("run", "--log-driver", "stream", "--name", name,
                     str(make_bundle("sh", "-c", "echo one; echo two >&2")))
    assert out.returncode == 0, out.stderr
    s = status(bed, name)
    entries = bed.journal(f"CONTAINER_NAME={name}", "_TRANSPORT=stdout")
    # stdout and stderr are two journald stream connections: no order between them.
    assert sorted(e["MESSAGE"] for e in entries) == ["one", "two"]
    assert {e["CONTAINER_ID_FULL"] for e in entries} == {s["id"]}
    assert {e["SYSLOG_IDENTIFIER"] for e in entries} == {name}


# --- the template unit ------------------------------------------------------------------


def template_for_checkout(bed: Bed) -> Path:
    """systemd/sdshim@.service as the package installs it, run from this checkout."""
    text = (REPO / "systemd/sdshim@.service").read_text().replace(
        "/usr/bin/python3 -I -m sdshim.shim",
        f"{sys.executable} -I -S {REPO}/sdshim/shim/__main__.py")
    assert str(REPO) in text
    unit = bed.path("/run/systemd/system/sdshim@.service")
    unit.write_text(text)
    return unit


def test_template_unit_with_supervisor_systemd(bed: Bed, name: str, make_bundle: Any) -> None:
    unit = template_for_checkout(bed)
    bundle = make_bundle("sh", "-c", "trap 'echo got-TERM; exit 0' TERM; "
                         "echo from-template; while :; do sleep 0.05; done")
    dropin = bed.path(f"/run/systemd/system/sdshim@{name}.service.d")
    dropin.mkdir(parents=True)
    (dropin / "zero.conf").write_text(
        f"[Service]\nEnvironment=SDSHIM_BUNDLE={bundle}\n"
        "Environment=\"SDSHIM_OPTIONS=--supervisor systemd --log-driver stream\"\n"
        "LogExtraFields=CONTAINER_NAME=%i\n")
    service = f"sdshim@{name}.service"
    try:
        assert bed.run(["systemctl", "daemon-reload"]).returncode == 0
        out = bed.run(["systemctl", "start", service])
        assert out.returncode == 0, out.stderr
        s = status(bed, name)
        assert (s["state"], s["supervisor"], s["unit"]) == ("running", "systemd", service), s
        assert int(bed.show(service, "MainPID")["MainPID"]) == s["pid"]
        assert sdshim_processes(bed) == []
        wait_line(bed, name, b"from-template")
        entries = bed.journal(f"CONTAINER_NAME={name}")
        assert "from-template" in [e["MESSAGE"] for e in entries]
        assert bed.run(["systemctl", "stop", service]).returncode == 0
        s = status(bed, name)
        assert (s["state"], s["exit_code"], s["signal"]) == ("exited", 0, None), s
        assert b"got-TERM" in bed.sdshim("logs", name).stdout
        assert sdshim_processes(bed) == []
    finally:
        bed.run(["systemctl", "stop", service])
        shutil.rmtree(dropin, ignore_errors=True)
        unit.unlink()
        bed.run(["systemctl", "daemon-reload"])
        bed.run(["rm", "-rf", f"/run/sdshim/{name}"])


assert PREFIX  # names come from the `name` fixture
