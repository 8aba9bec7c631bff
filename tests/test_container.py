"""End to end on a real systemd: a container as sdshim-NAME.service."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SDSHIM, Bed, assert_clean, foreign_bundle, run_while_creating


def status(bed: Bed, name: str) -> dict[str, Any]:
    out = bed.sdshim("status", "--json", name)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def wait_state(bed: Bed, name: str, state: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = status(bed, name)
        if s["state"] == state or time.monotonic() > deadline:
            assert s["state"] == state, s
            return s
        time.sleep(0.05)


def one_line_error(out: Any) -> str:
    """The CLI's error: one line on stderr, named, never a traceback."""
    err = out.stderr.decode()
    assert "Traceback" not in err, err
    assert err.startswith("sdshim: "), err
    assert err.count("\n") == 1, err
    return str(err)


def test_run_attached_streams_output_and_returns_status(bed: Bed, name: str,
                                                        make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "echo out-1; echo err-1 >&2; echo out-2; exit 3")
    out = bed.sdshim("run", "--name", name, str(bundle))
    assert out.returncode == 3, out.stderr
    assert out.stdout == b"out-1\nout-2\n"
    assert out.stderr == b"err-1\n"
    show = bed.show(f"sdshim-{name}.service", "ExecMainStatus", "StatusText", "Type",
                    "RemainAfterExit", "Slice", "Delegate", "Description")
    assert show["ExecMainStatus"] == "3"
    assert show["Type"] == "notify" and show["RemainAfterExit"] == "yes"
    assert show["Slice"] == "sdshim.slice" and show["Delegate"] == "yes"
    assert name in show["Description"]
    assert "exited with status 3" in show["StatusText"]
    s = status(bed, name)
    assert s["state"] == "exited" and s["exit_code"] == 3 and s["signal"] is None
    assert s["error"] is None and s["unit"] == f"sdshim-{name}.service"
    assert len(s["id"]) == 64 and s["pid"] > 0
    assert s["started_at"] <= s["finished_at"]


def test_journal_fields_and_order(bed: Bed, name: str, make_bundle: Any) -> None:
    script = "i=0; while [ $i -lt 500 ]; do echo o$i; echo e$i >&2; i=$((i+1)); done"
    bundle = make_bundle("sh", "-c", script)
    assert bed.sdshim("run", "--name", name, str(bundle)).returncode == 0
    cid = status(bed, name)["id"]
    by_unit = [e for e in bed.journal("-u", f"sdshim-{name}.service")
               if e.get("CONTAINER_NAME") == name]
    by_name = bed.journal(f"CONTAINER_NAME={name}")
    assert len(by_unit) == len(by_name) == 1000
    out = [e["MESSAGE"] for e in by_name if e["PRIORITY"] == "6"]
    err = [e["MESSAGE"] for e in by_name if e["PRIORITY"] == "3"]
    assert out == [f"o{i}" for i in range(500)]
    assert err == [f"e{i}" for i in range(500)]
    for e in by_name:
        assert e["CONTAINER_ID"] == cid[:12]
        assert e["CONTAINER_ID_FULL"] == cid
        assert e["SYSLOG_IDENTIFIER"] == name
        assert e["_SYSTEMD_UNIT"] == f"sdshim-{name}.service"
        assert e["_TRANSPORT"] == "journal"


def test_detached_container_runs_inside_its_unit(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "echo started; exec sleep 1000")
    out = bed.sdshim("run", "-d", "--name", name, "-p", "MemoryMax=64M", "-p", "TasksMax=20",
                     "-p", "CPUQuota=50%", str(bundle))
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == name
    s = status(bed, name)
    assert s["state"] == "running"
    pid = s["pid"]
    unit = f"sdshim-{name}.service"
    show = bed.show(unit, "StatusText", "MainPID", "ActiveState", "MemoryMax", "TasksMax",
                    "CPUQuotaPerSecUSec", "ControlGroup")
    assert f"pid {pid}" in show["StatusText"]
    assert show["ActiveState"] == "active" and int(show["MainPID"]) == s["monitor_pid"]
    state = json.loads(bed.path(f"/run/sdshim/{name}/state.json").read_text())
    assert state["pid"] == pid and state["status"] == "running"
    assert show["MemoryMax"] == str(64 << 20) and show["TasksMax"] == "20"
    assert show["CPUQuotaPerSecUSec"] == "500ms"
    # The container lives in the unit's cgroup, in a leaf beside the monitor's.
    cg = show["ControlGroup"]
    procs = bed.read(f"/sys/fs/cgroup/unified{cg}/container/cgroup.procs").split()
    assert str(pid) in procs
    monitor = bed.read(f"/sys/fs/cgroup/unified{cg}/supervisor/cgroup.procs")
    assert str(s["monitor_pid"]) in monitor.split()
    # ... so the unit's limits cover it, and systemctl status lists it.
    limit = bed.path(f"/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes").read_text()
    assert int(limit) == 64 << 20
    assert bed.path(f"/sys/fs/cgroup/pids{cg}/pids.max").read_text().strip() == "20"
    text = bed.run(["systemctl", "status", "--no-pager", "-l", unit]).stdout.decode()
    assert re.search(rf"{pid} sleep 1000", text), text
    tasks = bed.show(unit, "TasksCurrent")["TasksCurrent"]
    assert int(tasks) >= 2  # monitor and container
    logs = bed.sdshim("logs", name)
    assert logs.stdout == b"started\n"


def test_stop_forwards_sigterm_and_records_result(bed: Bed, name: str,
                                                  make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "trap 'echo got-term; exit 7' TERM; echo up; "
                                     "while :; do sleep 0.05; done")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    out = bed.sdshim("stop", "--time", "5", name)
    assert out.returncode == 0, out.stderr
    s = status(bed, name)
    assert s["state"] == "exited" and s["exit_code"] == 7, s
    assert bed.sdshim("logs", name).stdout == b"up\ngot-term\n"
    assert bed.show(f"sdshim-{name}.service", "ExecMainStatus")["ExecMainStatus"] == "7"


def test_systemctl_stop_forwards_and_kills_after_timeout(bed: Bed, name: str,
                                                         make_bundle: Any) -> None:
    # PID 1 of a pid namespace ignores SIGTERM without a handler: only SIGKILL ends it.
    bundle = make_bundle("sleep", "1000")
    assert bed.sdshim("run", "-d", "--stop-timeout", "1", "--name", name,
                      str(bundle)).returncode == 0
    cg = bed.show(f"sdshim-{name}.service", "ControlGroup")["ControlGroup"]
    started = time.monotonic()
    out = bed.run(["systemctl", "stop", f"sdshim-{name}.service"])
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 4
    s = status(bed, name)
    assert s["state"] == "exited" and s["signal"] == "SIGKILL" and s["exit_code"] == 137, s
    assert not bed.path(f"/sys/fs/cgroup/unified{cg}").exists()


def test_signals_reach_the_container(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "trap 'echo usr1' USR1; trap 'echo int; exit 0' INT; "
                                     "echo up; while :; do sleep 0.05; done")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    assert bed.sdshim("kill", "--signal", "USR1", name).returncode == 0
    deadline = time.monotonic() + 5
    while b"usr1" not in bed.sdshim("logs", name).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    # SIGINT to the monitor (systemctl kill) is forwarded to the container.
    out = bed.run(["systemctl", "kill", "--kill-whom=main", "-s", "INT",
                   f"sdshim-{name}.service"])
    assert out.returncode == 0, out.stderr
    s = wait_state(bed, name, "exited")
    assert s["exit_code"] == 0
    assert bed.sdshim("logs", name).stdout == b"up\nusr1\nint\n"


def test_signal_during_create_is_delivered_once_running(bed: Bed, name: str,
                                                        make_bundle: Any) -> None:
    # No pid namespace: as a namespace's PID 1 the command would ignore a SIGTERM that
    # arrives before it sets a handler; as an ordinary process it dies of it.
    bundle = make_bundle("sleep", "1000")
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"]
                                     if ns["type"] != "pid"]
    (bundle / "config.json").write_text(json.dumps(config))
    proc = run_while_creating(bed, name, bundle, 1)
    unit = f"sdshim-{name}.service"
    # The runtime is still creating: the monitor must keep the signal for later.
    assert bed.run(["systemctl", "kill", "--kill-whom=main", "-s", "TERM", unit]).returncode == 0
    proc.wait(timeout=30)
    s = wait_state(bed, name, "exited", timeout=5)
    assert s["signal"] == "SIGTERM" and s["exit_code"] == 143, s


@pytest.mark.parametrize("args, code", [(["true"], 0), (["sh", "-c", "exit 3"], 3),
                                        (["sh", "-c", "exit 255"], 255)])
def test_immediate_exit_is_never_lost(bed: Bed, name: str, make_bundle: Any,
                                      args: list[str], code: int) -> None:
    bundle = make_bundle(*args)
    for i in range(5):
        n = f"{name}-{i}"
        out = bed.sdshim("run", "--name", n, str(bundle))
        assert out.returncode == code, out.stderr
        s = status(bed, n)
        assert s["state"] == "exited" and s["exit_code"] == code, s
        show = bed.show(f"sdshim-{n}.service", "ExecMainStatus")
        assert show["ExecMainStatus"] == str(code)
        detached = bed.sdshim("run", "-d", "--name", f"{n}-d", str(bundle))
        assert detached.returncode == 0, detached.stderr
        waited = bed.sdshim("wait", f"{n}-d")
        assert waited.returncode == code and waited.stdout.decode().strip() == str(code)


def test_create_then_start(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "echo hi; exit 4")
    out = bed.sdshim("create", "--name", name, str(bundle))
    assert out.returncode == 0, out.stderr
    s = status(bed, name)
    assert s["state"] == "created" and s["pid"] > 0 and s["started_at"] is None
    assert bed.sdshim("start", name).returncode == 0
    waited = bed.sdshim("wait", name)
    assert waited.returncode == 4 and waited.stdout == b"4\n"
    again = bed.sdshim("start", name)
    assert again.returncode != 0 and "not created" in one_line_error(again)
    assert bed.sdshim("logs", name).stdout == b"hi\n"


@pytest.mark.parametrize("args, code, message", [
    (["bahs"], 127, 'exec: "bahs": executable file not found in $PATH'),
    (["/etc/passwd"], 126, "permission denied"),
])
def test_command_errors_reach_the_user(bed: Bed, name: str, make_bundle: Any,
                                       args: list[str], code: int, message: str) -> None:
    bundle = make_bundle(*args)
    for detach in ([], ["-d"]):
        out = bed.sdshim("run", *detach, "--name", name, str(bundle))
        assert out.returncode == code
        err = one_line_error(out)
        assert message in err
        show = bed.show(f"sdshim-{name}.service", "ActiveState", "StatusText")
        assert show["ActiveState"] == "failed" and message in show["StatusText"]
        s = status(bed, name)
        assert s["state"] == "exited" and s["exit_code"] == code and message in s["error"]
        cid = s["id"]
        assert bed.sdshim("delete", name).returncode == 0
        assert_clean(bed, name, cid)


def test_exec_format_error_is_reported(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = foreign_bundle(bed, make_bundle, "/foreign")
    out = bed.sdshim("run", "--name", name, str(bundle))
    assert out.returncode == 126
    assert "exec format error" in one_line_error(out)
    s = status(bed, name)
    assert s["exit_code"] == 126 and "exec format error" in s["error"]


def test_missing_rootfs_is_a_runtime_error(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("true")
    (bundle / "rootfs").unlink()
    out = bed.sdshim("run", "--name", name, str(bundle))
    assert out.returncode == 125
    assert "rootfs" in one_line_error(out)
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name)


def test_bad_input_is_refused_and_leaves_nothing(bed: Bed, name: str,
                                                 make_bundle: Any) -> None:
    bundle = make_bundle("true")
    empty = bed.scratch / "empty-bundle"
    empty.mkdir(exist_ok=True)
    cases = [
        (["run", "--name", name, "/nonexistent/bundle"], 125, "does not exist"),
        (["run", "--name", name, str(empty)], 125, "has no config.json"),
        (["run", "--name", name, "--runtime", "no-such-runtime", str(bundle)], 125,
         "runtime 'no-such-runtime' not found"),
        (["run", "--name", "bad/name", str(bundle)], 2, "invalid container name"),
        (["run", "--name", "x;reboot", str(bundle)], 2, "invalid container name"),
        (["run", "--name", name, "-p", "Bogus=1", str(bundle)], 2, "unsupported property"),
        (["status", "sdt-nosuch"], 125, "no such container"),
        (["stop", "sdt-nosuch"], 125, "no such container"),
        (["kill", "sdt-nosuch"], 125, "no such container"),
        (["wait", "sdt-nosuch"], 125, "no such container"),
        (["logs", "sdt-nosuch"], 125, "no such container"),
        (["delete", "sdt-nosuch"], 125, "no such container"),
    ]
    # create and run -d take the blocking path, attached run the asyncio one: same errors.
    cases += [([*quick, *args[1:]], code, message) for args, code, message in cases
              if args[0] == "run" for quick in (["create"], ["run", "-d"])]
    for args, code, message in cases:
        out = bed.sdshim(*args)
        assert out.returncode == code, (args, out.stderr)
        assert message in one_line_error(out), args
        assert_clean(bed, name)
    # A duplicate name is refused and the first container is untouched.
    assert bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "100"))
                      ).returncode == 0
    for command in (["run"], ["create"], ["run", "-d"]):
        dup = bed.sdshim(*command, "--name", name, str(bundle))
        assert dup.returncode == 125 and "already exists" in one_line_error(dup)
    assert status(bed, name)["state"] == "running"


def test_a_unit_systemd_still_has_is_an_existing_container(bed: Bed, name: str,
                                                            make_bundle: Any) -> None:
    # No records (they are gone), but systemd still has the unit: UnitExists from
    # StartTransientUnit, said the same way as for records that exist.
    bundle = make_bundle("sleep", "100")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    assert bed.run(["rm", "-rf", f"/run/sdshim/{name}"]).returncode == 0
    for command in (["run"], ["create"], ["run", "-d"]):
        dup = bed.sdshim(*command, "--name", name, str(bundle))
        assert dup.returncode == 125, dup.stderr
        assert f"container {name} already exists; delete it" in one_line_error(dup)
    assert bed.show(f"sdshim-{name}.service", "ActiveState")["ActiveState"] == "active"


def test_systemds_refusal_reaches_the_user_as_one_line(bed: Bed, name: str,
                                                       make_bundle: Any) -> None:
    bundle = make_bundle("true")
    for command in (["create"], ["run", "-d"], ["run"]):
        # -p checks the form; systemd checks the range and answers with a D-Bus error.
        out = bed.sdshim(*command, "--name", name, "-p", "Nice=100", str(bundle))
        assert out.returncode == 125, out.stderr
        err = one_line_error(out)
        assert f"systemd refused to start sdshim-{name}.service: " in err
        assert "nice" in err.lower(), err
        assert_clean(bed, name)


def test_delete_refuses_running_without_force(bed: Bed, name: str, make_bundle: Any) -> None:
    assert bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "100"))
                      ).returncode == 0
    cid = status(bed, name)["id"]
    out = bed.sdshim("delete", name)
    assert out.returncode == 125 and "--force" in one_line_error(out)
    assert status(bed, name)["state"] == "running"
    assert bed.sdshim("delete", "--force", name).returncode == 0
    assert_clean(bed, name, cid)


def test_monitor_sigkill_leaves_no_container_and_no_made_up_status(
        bed: Bed, name: str, make_bundle: Any) -> None:
    assert bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "1000"))
                      ).returncode == 0
    s = status(bed, name)
    unit = f"sdshim-{name}.service"
    cg = bed.show(unit, "ControlGroup")["ControlGroup"]
    assert bed.run(["systemctl", "kill", "--kill-whom=main", "-s", "KILL", unit]
                   ).returncode == 0
    s = wait_state(bed, name, "exited")
    assert s["exit_code"] is None and "monitor died" in s["error"], s
    deadline = time.monotonic() + 10
    while bed.path(f"/sys/fs/cgroup/unified{cg}").exists():
        assert time.monotonic() < deadline, "container processes outlived the unit"
        time.sleep(0.05)
    assert not Path(f"/proc/{s['pid']}").exists() or bed.box is not None
    assert bed.sdshim("delete", name).returncode == 0
    assert_clean(bed, name, s["id"])


def test_list_and_python_api_across_processes(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sleep", "100")
    script = (
        "import asyncio, sys, json\n"
        "from pathlib import Path\n"
        "from sdshim.units.manager import Manager\n"
        "async def main():\n"
        "    async with await Manager.connect() as m:\n"
        f"        n = await m.create(Path({str(bundle)!r}), name={name!r}, start=True)\n"
        "        print(json.dumps(await m.status(n)))\n"
        "asyncio.run(main())\n"
    )
    import sys

    out = bed.run([sys.executable, "-c", script])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "running"
    listed = json.loads(bed.sdshim("list", "--json").stdout)
    assert [c["name"] for c in listed if c["name"] == name] == [name]
    table = bed.sdshim("list").stdout.decode()
    assert name in table and "running" in table
    assert bed.sdshim("stop", "--time", "1", name).returncode == 0
    assert status(bed, name)["state"] == "exited"


def test_logs_follow_until_exit(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "echo one; sleep 0.5; echo two >&2; sleep 0.5; echo three")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    out = bed.sdshim("logs", "-f", name, timeout=30)
    assert out.returncode == 0
    assert out.stdout == b"one\nthree\n" and out.stderr == b"two\n"


def test_attached_run_forwards_signals_to_the_container(bed: Bed, name: str,
                                                        make_bundle: Any) -> None:
    import signal
    import subprocess

    bundle = make_bundle("sh", "-c", "trap 'echo got-int; exit 5' INT; echo up; "
                                     "while :; do sleep 0.05; done")
    proc = bed.popen([*SDSHIM, "run", "--name", name, str(bundle)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    # Ctrl-C's SIGINT, to the CLI itself (in the bed, nsenter's child).
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    cli = int(children.read_text().split()[0]) if bed.box else proc.pid
    os.kill(cli, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, err
    assert out == b"got-int\n"
    assert status(bed, name)["exit_code"] == 5


def test_crun_runs_in_the_unit_too(bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("run", "--runtime", "crun", "--name", name,
                     str(make_bundle("sh", "-c", "echo via-crun; exit 6")))
    assert out.returncode == 6 and out.stdout == b"via-crun\n", out.stderr
    missing_cmd = bed.sdshim("run", "--runtime", "crun", "--name", f"{name}-x",
                             str(make_bundle("bahs")))
    assert missing_cmd.returncode == 127 and "bahs" in one_line_error(missing_cmd)
    assert bed.sdshim("run", "-d", "--runtime", "crun", "--name", f"{name}-d",
                      str(make_bundle("sleep", "100"))).returncode == 0
    s = status(bed, f"{name}-d")
    cg = bed.show(f"sdshim-{name}-d.service", "ControlGroup")["ControlGroup"]
    assert str(s["pid"]) in bed.read(f"/sys/fs/cgroup/unified{cg}/container/cgroup.procs")


def test_attached_run_prints_lines_written_just_before_exit(bed: Bed, name: str,
                                                           make_bundle: Any) -> None:
    # A quiet spell, then the last line right before exit: the follower's idle check
    # must not mistake the recorded exit for the end of the output.
    bundle = make_bundle("sh", "-c", "echo hello; sleep 1; echo bye")
    for i in range(3):
        out = bed.sdshim("run", "--name", f"{name}-{i}", str(bundle))
        assert out.returncode == 0 and out.stdout == b"hello\nbye\n", out


def test_monitor_refuses_a_name_another_unit_uses(bed: Bed, name: str,
                                                  make_bundle: Any) -> None:
    import sys

    bundle = make_bundle("sleep", "100")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    before = status(bed, name)
    # E.g. `systemctl start sdshim@NAME.service` while a transient NAME exists.
    other = f"{name}-other.service"
    out = bed.run(["systemd-run", "--wait", "--unit", other, "-p", "Type=notify", "--",
                   sys.executable, "-I", "-m", "sdshim.shim", "--start", "--name", name,
                   "--bundle", str(bundle), "--runtime", "runc", "--unit", other])
    assert out.returncode != 0
    assert "in use by" in bed.show(other, "StatusText")["StatusText"]
    bed.run(["systemctl", "reset-failed", other])
    after = status(bed, name)
    assert after["state"] == "running" and after["pid"] == before["pid"]
