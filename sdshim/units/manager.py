"""The Python API: containers as systemd units.

State lives in systemd (the unit) and in the monitor's records under /run/sdshim,
never in this process, so any number of managers see and control the same containers.

    async with await Manager.connect() as m:
        name = await m.create(Path("/srv/bundle"), start=True)
        status = await m.wait(name)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
from pathlib import Path
from typing import Any

from sdshim import naming, records, spawn
from sdshim.errors import (
    EXIT_NO_RESTART,
    ContainerStateError,
    CreateError,
    NoSuchContainerError,
)
from sdshim.units.bus import Systemd
from sdshim.units.creation import container_spec, unit_start
from sdshim.units.systemd1 import BusCallError

CONTROL_TIMEOUT = 10.0


class Manager:
    def __init__(self, systemd: Systemd) -> None:
        self.systemd = systemd

    @classmethod
    async def connect(cls) -> Manager:
        return cls(await Systemd.connect())

    async def __aenter__(self) -> Manager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.systemd.close()

    # --- create and start ------------------------------------------------------------

    async def create(self, bundle: Path, *, name: str | None = None, runtime: str = "runc",
                     start: bool = False, **options: Any) -> str:
        """Create (and with start=True, start) a container; its name.

        options: properties (from spec.parse_properties), stop_timeout, stop_signal
        (default: the bundle's annotation org.opencontainers.image.stopSignal, else
        SIGTERM), tag, log_max_line, log_driver, log_path, log_size_max,
        log_rate_limit, restart (no, on-failure, always), restart_delay, interactive
        (keep stdin open), tty (give it a terminal) (see spec.ContainerSpec).
        """
        spec = container_spec(bundle, name, runtime, start, options)
        await self.systemd.start_unit(unit_start(spec))
        return spec.name

    async def start(self, name: str) -> None:
        status = await self.status(name)
        if status["state"] != "created":
            raise ContainerStateError(f"container {name} is {status['state']}, not created; "
                                      "only a created container can be started")
        await start_monitored(records.container_dir(name), f"container {name}")

    async def control(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the container's monitor over its control socket."""
        return await control_request(records.container_dir(name), request, f"container {name}")

    # --- state ---------------------------------------------------------------------

    async def status(self, name: str) -> dict[str, Any]:
        naming.validate_name(name)
        cdir = records.container_dir(name)
        # The monitor records its unit: sdshim@NAME.service for a boot-time container.
        owner = (records.read_json(cdir / "state.json") or {}).get("unit")
        unit = str(owner or naming.unit_name(name))
        # The unit first, the records after: a monitor writes its exit record before it
        # ends, so an ended unit seen here with no record really left none.
        props = await self.systemd.service_state(unit)
        state = records.read_json(cdir / "state.json")
        exit_record = records.read_json(cdir / "exit.json")
        if props is None and state is None and exit_record is None:
            raise NoSuchContainerError(f"no such container: {name} (see `sdshim list`)")
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
            "unit_state": None, "status_text": None,
        }
        if props is not None:
            info["unit_state"] = f"{props.get('ActiveState')}/{props.get('SubState')}"
            info["status_text"] = props.get("StatusText") or None
            info["monitor_pid"] = props.get("MainPID") or None
            info["restart"] = props.get("Restart") or info["restart"]
            info["restarts"] = props.get("NRestarts", info["restarts"])
        if exit_record is not None:
            info.update(state="exited", exit_code=exit_record.get("exit_code"),
                        signal=exit_record.get("signal"),
                        oom_killed=bool(exit_record.get("oom_killed")),
                        finished_at=exit_record.get("finished_at"),
                        error=exit_record.get("error"), pid=exit_record.get("pid"))
            for key in ("stop_signal", "stop_timed_out"):
                if key in exit_record:
                    info[key] = exit_record[key]
            if _restarting(props, exit_record):
                info["state"] = "restarting"
        elif props is not None and props.get("SubState") == "auto-restart":
            info.update(state="restarting", error=_monitor_death(props))
        elif _unit_ended(props):
            info.update(state="exited", error=_monitor_death(props))
        else:
            info["state"] = {"created": "created", "running": "running",
                             "exiting": "exiting"}.get(str(state.get("status")), "creating")
        return info

    async def list(self) -> list[dict[str, Any]]:
        names = set()
        for unit, _active, _sub in await self.systemd.list_units(
                [f"{naming.UNIT_PREFIX}*{naming.UNIT_SUFFIX}"]):
            name = naming.name_from_unit(unit)
            if name:
                names.add(name)
        if records.RUN_DIR.is_dir():
            names.update(p.name for p in records.RUN_DIR.iterdir()
                         if naming.NAME_RE.fullmatch(p.name))
        statuses = []
        for name in sorted(names):
            with contextlib.suppress(NoSuchContainerError):
                statuses.append(await self.status(name))
        return statuses

    async def wait(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Until the container has exited; its status."""
        changed = await self.systemd.watch_unit((await self.status(name))["unit"])
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            changed.clear()
            status = await self.status(name)
            if status["state"] == "exited":
                return status
            wait = 0.5
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    raise ContainerStateError(f"container {name} still {status['state']} "
                                              f"after {timeout}s")
            # The unit changes state when the monitor exits; the poll is a safety net.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)

    # --- signals, stop, delete ---------------------------------------------------------

    async def kill(self, name: str, signum: int = int(signal.SIGTERM)) -> None:
        status = await self.status(name)
        if status["state"] not in ("running", "created"):
            raise ContainerStateError(f"container {name} is {status['state']}, not running")
        reply = await self.control(name, {"op": "kill", "signal": signum})
        if not reply.get("ok"):
            raise ContainerStateError(f"container {name}: {reply.get('error')}")

    async def stop(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """Stop signal, then SIGKILL after timeout seconds; the final status."""
        status = await self.status(name)
        if status["state"] == "exited":
            return status
        try:
            await self.control(name, {"op": "stop", "timeout": timeout})
        except ContainerStateError:
            await self.systemd.stop(status["unit"])  # no monitor to ask: systemd's way
        if status["restart"] != "no":
            # systemd's own stop also cancels a restart that is already scheduled (the
            # monitor keeps the timeout asked for, within the unit's TimeoutStopSec).
            await self.systemd.stop(status["unit"])
        return await self.wait(name, timeout + 10)

    async def delete(self, name: str, force: bool = False) -> None:
        """Remove a container: its unit, records and runtime state.

        With force, whatever part of it is left is stopped and removed, also when other
        parts (records, unit, runtime state, the monitor) are already gone.
        """
        try:
            status = await self.status(name)
        except NoSuchContainerError:
            if force and self._remove_runtime_state(name, {}):
                return
            raise
        unit = status["unit"]
        if status["state"] != "exited":
            if not force:
                raise ContainerStateError(
                    f"container {name} is {status['state']}; stop it first "
                    f"(`sdshim stop {name}`) or use `sdshim delete --force {name}`")
            try:
                await self.control(name, {"op": "stop", "timeout": 0,
                                          "signal": int(signal.SIGKILL)})
            except ContainerStateError:
                # No monitor to ask: the records go anyway, so kill everything at once.
                with contextlib.suppress(BusCallError):
                    await self.systemd.kill(unit, "all", int(signal.SIGKILL))
        await self.systemd.stop_and_wait(unit)
        await self.systemd.reset_failed(unit)
        self._remove_runtime_state(name, status)
        shutil.rmtree(records.container_dir(name), ignore_errors=True)

    def _remove_runtime_state(self, name: str, status: dict[str, Any]) -> bool:
        """Runtime state a dead monitor left behind; whether there was any.

        Found by id, or, when the records that name the id are gone, by the bundle
        path the monitor gives every container of this name.
        """
        bundle = str(records.container_dir(name) / "bundle")
        found = False
        for root in records.runtime_roots():
            runtime = shutil.which(root.name)
            if status.get("id"):
                ids = {status["id"]} if (root / status["id"]).exists() else set()
            else:
                ids = _runtime_ids_by_bundle(runtime, root, bundle) if runtime else set()
            for cid in ids:
                found = True
                if runtime:
                    with contextlib.suppress(spawn.CommandError):
                        spawn.run([runtime, "--root", str(root), "delete", "--force", cid],
                                  check=False)
                shutil.rmtree(root / cid, ignore_errors=True)
        return found


def _runtime_ids_by_bundle(runtime: str, root: Path, bundle: str) -> set[str]:
    if not root.is_dir() or not any(root.iterdir()):
        return set()
    try:
        out = spawn.run([runtime, "--root", str(root), "list", "--format", "json"],
                        check=False).stdout
        entries = json.loads(out or b"null") or []
    except (spawn.CommandError, ValueError):
        return set()
    return {str(e.get("id")) for e in entries
            if isinstance(e, dict) and e.get("bundle") == bundle and e.get("id")}


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
        with contextlib.suppress(ValueError, IndexError):
            found[key] = str(argv[argv.index(f"--{key}") + 1])
    return found


async def start_monitored(directory: Path, what: str) -> None:
    """Ask the monitor whose records are in directory to start its process."""
    reply = await control_request(directory, {"op": "start"}, what)
    if not reply.get("ok"):
        # The exit record has the message cleaned up and classified.
        exit_record = await wait_exit_record(directory, 2.0) or {}
        raise CreateError(str(exit_record.get("error") or reply.get("error") or "start failed"),
                          int(exit_record.get("exit_code") or 125))


async def wait_exit_record(directory: Path, timeout: float) -> dict[str, Any] | None:
    path = directory / "exit.json"
    for _ in range(int(timeout / 0.02)):
        record = records.read_json(path)
        if record:
            return record
        await asyncio.sleep(0.02)
    return None


async def control_request(directory: Path, request: dict[str, Any],
                          what: str) -> dict[str, Any]:
    """One request to the monitor whose records are in directory, over its control socket."""
    path = directory / "control"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path)), CONTROL_TIMEOUT)
    except (OSError, TimeoutError):
        raise ContainerStateError(
            f"{what} has no running monitor (no control socket at {path})") from None
    try:
        writer.write(json.dumps(request).encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), CONTROL_TIMEOUT)
    except TimeoutError:
        raise ContainerStateError(f"{what}: its monitor did not answer within "
                                  f"{CONTROL_TIMEOUT:g} s; it may be busy or stuck, "
                                  "try again") from None
    except OSError as e:
        raise ContainerStateError(f"{what}: monitor did not answer: {e}") from None
    finally:
        writer.close()
    try:
        reply: dict[str, Any] = json.loads(line)
    except ValueError:
        raise ContainerStateError(f"{what}: monitor closed the control "
                                  "connection without an answer") from None
    return reply


def _unit_ended(props: dict[str, Any] | None) -> bool:
    if props is None:
        return True
    active, sub = props.get("ActiveState"), props.get("SubState")
    return active in ("inactive", "failed") or (active == "active" and sub == "exited")


def _monitor_death(props: dict[str, Any] | None) -> str:
    """Why there is no exit record: the monitor ended without writing one."""
    if props is None:
        return "the container's unit is gone and its monitor left no exit record"
    code, status = props.get("ExecMainCode"), props.get("ExecMainStatus")
    # ExecMainCode is a siginfo si_code: 1 exited, 2 killed, 3 dumped core.
    if code in (2, 3) and status:
        with contextlib.suppress(ValueError):
            how = "killed by " + signal.Signals(int(status)).name
            return f"the monitor died ({how}) before the container's exit was recorded; " \
                   "the container's exit status is unknown"
    return (f"the monitor ended (status {status}) without recording the container's exit; "
            "the container's exit status is unknown")

