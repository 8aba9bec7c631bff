"""A container's status, from its unit's properties and the monitor's records, without
the bus: both managers (sdshim.units.manager on asyncio, sdshim.units.blockingmanager
for the quick commands) fetch the properties their way and ask here what they mean."""

from __future__ import annotations

import signal

from sdshim import naming, records
from sdshim.errors import (
    EXIT_NO_RESTART,
    ContainerStateError,
    CreateError,
    NoSuchContainerError,
)

TYPE_CHECKING = False  # `typing` costs the CLI's start ~2 ms; it needs it only for mypy
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

UNIT_PATTERN = f"{naming.UNIT_PREFIX}*{naming.UNIT_SUFFIX}"


def unit_of(name: str) -> str:
    """The container's unit: the monitor records it (sdshim@NAME.service for a boot-time
    container), else sdshim-NAME.service."""
    naming.validate_name(name)
    owner = (records.read_json(records.container_dir(name) / "state.json") or {}).get("unit")
    return str(owner or naming.unit_name(name))


def describe(name: str, unit: str, props: dict[str, Any] | None) -> dict[str, Any]:
    """The status of container name, whose unit has props (None: not loaded).

    The unit first, the records after (read here): a monitor writes its exit record
    before it ends, so an ended unit seen with no record really left none.
    """
    cdir = records.container_dir(name)
    state = records.read_json(cdir / "state.json")
    exit_record = records.read_json(cdir / "exit.json")
    if props is None and state is None and exit_record is None:
        raise NoSuchContainerError(f"no such container: {name} (see `sdshim list`)")
    never_ran = state is None and exit_record is None
    state = {**_monitor_args(props), **(state or {})}
    info: dict[str, Any] = {
        "name": name, "id": state.get("id"), "unit": unit, "state": "unknown",
        "pid": state.get("pid"), "exit_code": None, "signal": None,
        "oom_killed": False,
        "created_at": state.get("created_at"), "started_at": state.get("started_at"),
        "finished_at": None, "error": None, "bundle": state.get("bundle"),
        "runtime": state.get("runtime"), "monitor_pid": None,
        "restart": state.get("restart", "no"),
        "restarts": (exit_record or state).get("restarts", 0),
        "log_driver": state.get("log_driver"),
        "invocation_ids": state.get("invocation_ids", []),
        "tty": bool(state.get("tty")), "stdin": bool(state.get("stdin")),
        "supervisor": state.get("supervisor", "sdshim"),
        "direct": bool(state.get("direct")),
        "unit_state": None, "status_text": None, "unit_result": None,
        "socket": socket_unit(props), "watchdog": False,
        # --health-cmd: status, failing_streak, log (the last results); else None.
        "health": records.read_json(cdir / "health.json"),
    }
    if props is not None:
        info["unit_state"] = f"{props.get('ActiveState')}/{props.get('SubState')}"
        info["status_text"] = props.get("StatusText") or None
        info["monitor_pid"] = props.get("MainPID") or None
        if info["supervisor"] == "systemd":
            info["monitor_pid"] = None  # MainPID is the container's init
            info["kill_signal"] = props.get("KillSignal")
        info["restart"] = props.get("Restart") or info["restart"]
        info["restarts"] = props.get("NRestarts", info["restarts"])
        info["unit_result"] = props.get("Result") or None
    if exit_record is not None:
        info.update(state="exited", exit_code=exit_record.get("exit_code"),
                    signal=exit_record.get("signal"),
                    oom_killed=bool(exit_record.get("oom_killed")),
                    finished_at=exit_record.get("finished_at"),
                    error=exit_record.get("error"), pid=exit_record.get("pid"))
        info["watchdog"] = bool(exit_record.get("watchdog"))
        for key in ("stop_signal", "stop_timed_out"):
            if key in exit_record:
                info[key] = exit_record[key]
        if _restarting(props, exit_record):
            info["state"] = "restarting"
    elif never_ran and info["socket"] and not _unit_running(props):
        info["state"] = "listening"  # its socket starts it on the first connection
    elif props is not None and props.get("SubState") == "auto-restart":
        info.update(state="restarting", error=_monitor_death(props))
    elif props is not None and _unit_ended(props) and info["supervisor"] == "systemd":
        # No monitor: a clean exit leaves the unit active (exited) and its stop step
        # runs only at delete; systemd's own record is the container's status.
        info.update(state="exited", **_main_exit(props))
    elif _unit_ended(props):
        info.update(state="exited", error=_monitor_death(props))
    elif props is not None and state.get("direct") and state.get("status") == "creating" \
            and props.get("ActiveState") == "active" and props.get("SubState") == "running":
        # No sdshim process in the unit (sdshim.units.direct): the caller that made it
        # had no time to record it; the init waits for its start as the main process.
        info.update(state="created", pid=props.get("MainPID") or None)
    else:
        info["state"] = {"created": "created", "running": "running", "started": "running",
                         "exiting": "exiting"}.get(str(state.get("status")), "creating")
    return info


PODMAN_UNIT_PREFIX = "sdshim-podman-"  # sdshim.conmon.unit.PREFIX (not imported: lean)


def boot_socket_unit(name: str, unit: str, props: dict[str, Any] | None) -> str:
    """The unit to look at next when unit is not loaded and left no records: a boot
    container whose sdshim@NAME.socket has not started it yet; '' if none."""
    cdir = records.container_dir(name)
    if props is not None or unit != naming.unit_name(name) or cdir.exists():
        return ""
    return naming.template_unit_name(name)


def socket_unit(props: dict[str, Any] | None) -> str | None:
    """The socket unit that starts this container's service (--socket, or
    sdshim@NAME.socket), if any."""
    for unit in (props or {}).get("TriggeredBy") or []:
        if str(unit).endswith(".socket"):
            return str(unit)
    return None


def _unit_running(props: dict[str, Any] | None) -> bool:
    return (props or {}).get("ActiveState") in ("active", "activating", "reloading",
                                                "deactivating")


def names(units: Iterable[str]) -> list[str]:
    """Every container's name: from its loaded unit (units: ListUnitsByPatterns of
    UNIT_PATTERN) or its records."""
    # sdshim-podman-*.service are podman's containers on sdshim-conmon: podman's to list
    found = {n for n in (naming.name_from_unit(u) for u in units
                         if not u.startswith(PODMAN_UNIT_PREFIX)) if n}
    if records.RUN_DIR.is_dir():
        found.update(p.name for p in records.RUN_DIR.iterdir()
                     if naming.is_name(p.name))
    return sorted(found)


def check_killable(name: str, status: dict[str, Any]) -> None:
    if status["state"] not in ("running", "created"):
        raise ContainerStateError(f"container {name} is {status['state']}, not running")


def check_reply(name: str, reply: dict[str, Any]) -> None:
    """A control request's reply (kill): an error it carries is the container's state."""
    if not reply.get("ok"):
        raise ContainerStateError(f"container {name}: {reply.get('error')}")


def without_monitor(status: dict[str, Any]) -> bool:
    """Whether the container runs with --supervisor systemd: its init is the unit's
    main process, and systemd, not a monitor, signals and stops it."""
    return bool(status.get("supervisor") == "systemd")


def record_stop(name: str, status: dict[str, Any], timed_out: bool) -> None:
    """What `sdshim stop` sent a container without a monitor, for the exit record its
    stop step writes: the stop signal (the unit's KillSignal=), then maybe SIGKILL."""
    try:
        signame = signal.Signals(int(status.get("kill_signal") or signal.SIGTERM)).name
    except (TypeError, ValueError):
        signame = "SIGTERM"
    records.write_json(records.container_dir(name) / "stop.json",
                       {"signal": signame, "timed_out": timed_out})


def check_started(status: dict[str, Any]) -> None:
    """After a start whose command ended at once: raise the error its exit record holds
    (an exec failure, say), with its exit code; its own exit is none."""
    if status.get("error"):
        raise CreateError(str(status["error"]), int(status.get("exit_code") or 125))


def still_there(name: str, status: dict[str, Any],
                timeout: float | None) -> ContainerStateError:
    """What waiting for the container's exit says when the time is up."""
    return ContainerStateError(f"container {name} still {status['state']} after {timeout}s")


def _restarting(props: dict[str, Any] | None, exit_record: dict[str, Any]) -> bool:
    """Whether systemd restarts the container whose exit exit_record holds."""
    if props is None:
        return False
    if props.get("SubState") == "auto-restart":
        return True
    active = props.get("ActiveState")
    if active not in ("active", "activating", "deactivating") or \
            props.get("SubState") == "exited":
        return False
    job = props.get("Job") or (0, "/")
    if active == "deactivating" and job[0]:
        return False  # a stop job: systemd does not restart what it was asked to stop
    # The monitor recorded the exit and has not ended yet, or the unit is winding down
    # after it (or a new monitor is starting): systemd applies the policy to its
    # status, unless the monitor marked it final.
    policy, code = props.get("Restart", "no"), exit_record.get("monitor_exit_code")
    if policy == "no" or code == EXIT_NO_RESTART:
        return False
    return policy == "always" or code != 0


def _monitor_args(props: dict[str, Any] | None) -> dict[str, Any]:
    """id and runtime from the monitor's command line, for when its records are gone."""
    try:
        argv = list(props["ExecStart"][0][1]) if props else []
    except (KeyError, IndexError, TypeError):
        return {}
    found = {}
    for key in ("id", "runtime"):
        if f"--{key}" in argv[:-1]:
            found[key] = str(argv[argv.index(f"--{key}") + 1])
    return found


def _unit_ended(props: dict[str, Any] | None) -> bool:
    if props is None:
        return True
    active, sub = props.get("ActiveState"), props.get("SubState")
    return active in ("inactive", "failed") or (active == "active" and sub == "exited")


def _main_exit(props: dict[str, Any]) -> dict[str, Any]:
    """exit_code and signal of the unit's main process: without a monitor, the
    container's init. ExecMainCode is a siginfo si_code: 1 exited, 2 killed, 3 dumped."""
    code, status = props.get("ExecMainCode"), int(props.get("ExecMainStatus") or 0)
    if code in (2, 3):
        try:
            name = signal.Signals(status).name
        except ValueError:
            name = str(status)
        return {"exit_code": 128 + status, "signal": name}
    if code == 1:
        return {"exit_code": status, "signal": None}
    return {"exit_code": None, "signal": None,
            "error": "the container's unit ended with no exit status"}


def _monitor_death(props: dict[str, Any] | None) -> str:
    """Why there is no exit record: the monitor ended without writing one."""
    if props is None:
        return "the container's unit is gone and its monitor left no exit record"
    code, status = props.get("ExecMainCode"), props.get("ExecMainStatus")
    # ExecMainCode is a siginfo si_code: 1 exited, 2 killed, 3 dumped core.
    if code in (2, 3) and status:
        try:
            how = "killed by " + signal.Signals(int(status)).name
        except ValueError:
            pass
        else:
            return f"the monitor died ({how}) before the container's exit was recorded; " \
                   "the container's exit status is unknown"
    return (f"the monitor ended (status {status}) without recording the container's exit; "
            "the container's exit status is unknown")
