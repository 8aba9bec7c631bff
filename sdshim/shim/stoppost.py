"""The ExecStopPost= step of a zero-resident container (--supervisor systemd).

systemd runs it once after the container's init, the unit's main process, has ended:
it has the status in $EXIT_CODE/$EXIT_STATUS. It writes the exit record the monitor
would have written (status, signal, oom_killed from the container leaf's counter, read
before the runtime's delete removes that cgroup), deletes the runtime's state, logs the
exit event, and ends. Short-lived: nothing here outlives the unit's stop.

For units whose main process is the sdshim monitor (the template unit in monitor mode)
it does nothing: the monitor has done all of it.
"""

from __future__ import annotations

import itertools
import posix
import sys

from sdshim import leanos, rundir, spawn
from sdshim.shim import journal, lifecycle, oom, runtime
from sdshim.shim.handoff import SUPERVISOR
from sdshim.shim.notify import Notifier

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any
else:
    import _signal

# systemd's notification socket as the system manager (PID 1) listens on it.
SYSTEM_NOTIFY_SOCKET = "/run/systemd/notify"
# runc's init exits 1 (runc 1.1) or 255 (others) when the command's execve failed.
EXEC_FAILURE_STATUS = (1, 255)


def exit_result(code: str, status: str) -> dict[str, Any]:
    """The record's status fields from systemd's EXIT_CODE and EXIT_STATUS."""
    if code == "exited" and status.isdigit():
        return {"exit_code": int(status), "signal": None}
    if code in ("killed", "dumped"):
        name = status if status.startswith("SIG") else f"SIG{status}"
        num = int(status) if status.isdigit() else getattr(_signal, name, 0)
        if num:
            return {"exit_code": 128 + int(num), "signal": name if not status.isdigit()
                    else _signal_name(int(num))}
    return {"exit_code": None, "signal": None}


def _signal_name(num: int) -> str:
    from sdshim import signals

    return signals.signal_name(num)


def stop_handoff(state: dict[str, Any], unit: str) -> None:
    """The hand-off process, if it is still there (waiting for a start, or checking the
    exec), has nothing left to do: the container has ended."""
    pid = state.get("monitor_pid")
    if not isinstance(pid, int) or pid <= 1 or pid == posix.getpid():
        return
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            if unit and unit not in f.read():
                return  # not ours (pid reused)
        fd = posix.pidfd_open(pid)
    except OSError:
        return
    try:
        import select

        posix.kill(pid, _signal.SIGKILL)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(5000)
    except OSError:
        pass
    finally:
        posix.close(fd)


def sync(timeout: float = 5.0) -> bool:
    """Until journald has stored everything sent so far (io.systemd.Journal.Synchronize,
    see journal.synchronize; blocking here: this step has nothing else to do)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        sock.connect(journal.VARLINK_SOCKET)
        sock.sendall(journal.SYNCHRONIZE)
        reply = b""
        while not reply.endswith(b"\0"):
            chunk = sock.recv(4096)
            if not chunk:
                return False
            reply += chunk
        return b'"error"' not in reply
    except OSError:
        return False
    finally:
        sock.close()


def last_line(name: str) -> bytes:
    """The container's last line (where runc's init reports a failed execve: stdout and
    stderr are one stream here), from the journal, once stored."""
    sync()
    try:
        out = spawn.run(journal.stream_line_query(name),
                        check=False, timeout=10)
    except spawn.CommandError:
        return b""
    return bytes(out.stdout).rstrip(b"\n").strip()


def wait_for_start(directory: str, timeout: float = 10.0) -> None:
    """Until no `runc start` of the direct start's caller runs (sdshim.units.direct
    .Start.hold): a command that ended at once must not have its runtime state deleted
    under it. Bounded: a caller that hangs does not keep the unit from stopping."""
    import fcntl
    import time

    try:
        fd = posix.open(leanos.join(directory, "start.lock"), posix.O_RDWR | posix.O_CLOEXEC)
    except OSError:
        return  # never started by a caller
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)
    finally:
        posix.close(fd)


def parse(argv: list[str]) -> tuple[str, str]:
    """`--stop-post --name NAME --unit UNIT` (other options, a template's, are ignored):
    everything else is in the records the hand-off wrote."""
    values = {"--name": "", "--unit": leanos.getenv("SDSHIM_UNIT")}
    for key, value in itertools.pairwise(argv):
        if key in values:
            values[key] = value
    return values["--name"], values["--unit"]


def start_error(state: dict[str, Any], result: dict[str, Any], rt: runtime.Runtime,
                unit: str) -> str:
    """Why a container that systemd started itself (sdshim.units.direct) never ran its
    command: the runtime's logged error when `runc create` or `runc start` failed; ''
    if it started (or, killed while its command runs, cannot be told apart)."""
    if not state.get("direct") or state.get("exec_confirmed"):
        return ""
    logged = rt.last_error()
    if logged and (result["exit_code"] is None or result["signal"] is not None):
        return logged
    if result["exit_code"] is None:  # no main process ever: nothing got to the runtime
        return (f"the container's unit failed before {rt.name} created the container "
                f"({leanos.getenv('SERVICE_RESULT') or 'no result'}); see "
                f"`journalctl -u {unit}`")
    return ""


def record(name: str, state: dict[str, Any], directory: str, rt: runtime.Runtime,
           unit: str) -> dict[str, Any]:
    result: dict[str, Any] = {"error": None, **exit_result(
        leanos.getenv("EXIT_CODE"), leanos.getenv("EXIT_STATUS"))}
    failed = start_error(state, result, rt, unit)
    if failed:
        message = runtime.clean_message(failed)
        result.update(error=message, exit_code=runtime.classify(message), signal=None)
    code = result["exit_code"]
    if not failed and not state.get("exec_confirmed") and code in EXEC_FAILURE_STATUS \
            and result["signal"] is None:
        line = last_line(name)
        if runtime.is_exec_failure(line):
            message = runtime.clean_message(line.decode(errors="replace"))
            result.update(error=message, exit_code=runtime.classify(message))
    result["oom_killed"] = bool(oom.kills(str(state.get("cgroup") or "")))
    stop = rundir.read_json(leanos.join(directory, "stop.json"))
    if stop:
        result["stop_signal"] = stop.get("signal")
        result["stop_timed_out"] = bool(stop.get("timed_out"))
    elif leanos.getenv("SERVICE_RESULT") == "timeout":
        result["stop_timed_out"] = True
    pid = state.get("pid") or rundir.read_pid(leanos.join(directory, "pid"))
    result.update(name=name, id=state.get("id"), pid=pid,
                  restarts=state.get("restarts", 0), started_at=state.get("started_at"),
                  finished_at=rundir.now_iso(), monitor_exit_code=result["exit_code"],
                  supervisor=SUPERVISOR)
    return result


def main(argv: list[str]) -> int:
    name, unit = parse(argv)
    if not name:
        print("sdshim: --stop-post needs --name NAME", file=sys.stderr)
        return 2
    directory = rundir.container_dir(name)
    state = rundir.read_json(leanos.join(directory, "state.json")) or {}
    if state.get("supervisor") != SUPERVISOR:
        return 0  # the monitor's unit: it recorded and cleaned up itself
    stop_handoff(state, unit)
    exit_path = leanos.join(directory, "exit.json")
    # The hand-off's own record (a create or start error) is the one that counts.
    result = rundir.read_json(exit_path)
    fresh = result is None
    runtime_path = str(state.get("runtime") or "runc")
    rt = runtime.of_container(runtime_path, directory)
    if result is None:
        result = record(name, state, directory, rt, unit)
    wait_for_start(directory)
    try:
        spawn.call(rt.argv("delete", "--force", str(result.get("id") or state.get("id"))),
                  stdout=spawn.DEVNULL, stderr=spawn.DEVNULL)
    except spawn.CommandError as e:  # never fail the unit's stop over the leftovers
        print(f"sdshim: cannot delete the runtime's state: {e}", file=sys.stderr)
    if fresh:
        sync()  # the container's last lines are stored before its exit is
        rundir.write_json(exit_path, result)
        state["status"] = "exited"
        rundir.write_json(leanos.join(directory, "state.json"), state)
    text = lifecycle.describe(result, f"Container {result['name']}")
    # The direct start unsets NOTIFY_SOCKET for the runtime's sake (sdshim.units.direct);
    # NotifyAccess=all still takes this process's StatusText= at PID 1's socket.
    notifier = Notifier(SYSTEM_NOTIFY_SOCKET if state.get("direct") else "")
    notifier.send(STATUS=f"Error: {result['error']}" if result.get("error") else text)
    event = "failed" if result.get("error") else "exited"
    try:
        writer = journal.JournalWriter()
        writer.send(journal.encode_entry({
            "MESSAGE": text.encode(), "PRIORITY": b"6", "SYSLOG_IDENTIFIER": b"sdshim",
            "SDSHIM_CONTAINER_ID_FULL": str(result.get("id") or "").encode(),
            "SDSHIM_CONTAINER_NAME": name.encode(), "SDSHIM_EVENT": event.encode(),
            "SDSHIM_EXIT_CODE": str(result.get("exit_code")).encode()}))
        writer.close()
    except OSError:
        print(f"sdshim: {text}", file=sys.stderr)
    notifier.barrier()
    return 0
