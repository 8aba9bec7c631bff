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
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from sdshim import records, spawn
from sdshim.errors import (
    ContainerStateError,
    CreateError,
    NoSuchContainerError,
    SystemdError,
)
from sdshim.units import control, direct
from sdshim.units.bus import Systemd
from sdshim.units.creation import container_spec, unit_start
from sdshim.units.spec import seconds
from sdshim.units.status import (
    UNIT_PATTERN,
    boot_socket_unit,
    check_killable,
    check_reply,
    check_started,
    describe,
    names,
    record_stop,
    socket_unit,
    still_there,
    unit_of,
    without_monitor,
)
from sdshim.units.systemd1 import (
    JOB_NOT_APPLICABLE,
    BusCallError,
    BusLostError,
    BusTimeoutError,
)

CONTROL_TIMEOUT = control.TIMEOUT
# How long `wait` rides out a systemd that does not answer (daemon-reexec drops its bus
# connection for a moment) before it gives up with that error.
BUS_GRACE = 30.0


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
        (keep stdin open), tty (give it a terminal), sdnotify (monitor, container,
        healthy), health (spec.HealthOptions) (see spec.ContainerSpec).
        """
        spec = container_spec(bundle, name, runtime, start, options)
        if not spec.direct:
            await self.systemd.start_unit(unit_start(spec))
            return spec.name
        # No sdshim process in the unit (sdshim.units.direct): the records, `runc start`
        # and the exec check are the caller's.
        direct.prepare(spec)
        starting = unit_start(spec)
        try:
            await self.systemd.start_unit(starting)
        except BaseException:
            if starting.refused_call:
                direct.discard(spec)
            raise
        pid = direct.record_created(spec.name)
        if start:
            await self.start_direct(spec.name, pid, {"runtime": spec.runtime, "id": spec.id})
        return spec.name

    async def start_direct(self, name: str, pid: int, state: dict[str, Any]) -> None:
        """creation.start_direct on asyncio: `runc start`, the exec check, and why the
        command did not run."""
        start = direct.Start(name, state)
        lock = start.hold()  # blocks only behind another start of the same container
        try:
            code = await spawn.call_async(start.argv, env=start.env)
        finally:
            os.close(lock)
        failed = start.error(code)
        if failed is not None:
            with contextlib.suppress(BusCallError):  # it ended meanwhile
                await self.systemd.kill(unit_of(name), "main", int(signal.SIGKILL))
            raise failed
        loop = asyncio.get_running_loop()
        check = direct.ExecCheck(start.rt.path, loop.time())
        while check.look(direct.read_exe(pid), loop.time()) == direct.PENDING:
            await asyncio.sleep(0.001)
        if check.state == direct.RUNNING:
            direct.record_running(name, pid)
            return
        check_started(await self.wait(name, 30))

    async def start(self, name: str) -> None:
        status = await self.status(name)
        if status["state"] != "created":
            raise ContainerStateError(f"container {name} is {status['state']}, not created; "
                                      "only a created container can be started")
        if status["direct"]:  # its runtime and id are in the status
            await self.start_direct(name, int(status["pid"] or 0), status)
            return
        try:
            reply = await start_monitored(records.container_dir(name), f"container {name}")
        except ContainerStateError:
            if not without_monitor(status):
                raise
            # The hand-off is ended by the stop step once the container has: it may not
            # have answered. What happened is in the exit record.
            reply = {"ended": True}
        if reply.get("ended"):
            # No monitor: the command ended before its exec was seen. An exec failure
            # is in the stop step's record; anything else is the container's own exit.
            check_started(await self.wait(name, 30))

    async def control(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the container's monitor over its control socket."""
        return await control_request(records.container_dir(name), request, f"container {name}")

    # --- state ---------------------------------------------------------------------

    async def status(self, name: str) -> dict[str, Any]:
        unit = unit_of(name)
        props = await self.systemd.service_state(unit)
        template = boot_socket_unit(name, unit, props)
        if template:
            found = await self.systemd.service_state(template)
            if socket_unit(found):
                unit, props = template, found
        return describe(name, unit, props)

    async def list(self) -> list[dict[str, Any]]:
        units = await self.systemd.list_units([UNIT_PATTERN])
        statuses = []
        for name in names(unit for unit, _active, _sub in units):
            with contextlib.suppress(NoSuchContainerError):
                statuses.append(await self.status(name))
        return statuses

    async def wait(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Until the container has exited; its status.

        A systemd that stops answering for a while (daemon-reexec) or a lost bus
        connection does not end the wait: it asks again, on a new connection if need be,
        for up to BUS_GRACE seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        changed: asyncio.Event | None = None
        trouble_since: float | None = None
        while True:
            try:
                if changed is None:
                    changed = await self.systemd.watch_unit((await self.status(name))["unit"])
                changed.clear()
                status = await self.status(name)
            except (BusCallError, BusTimeoutError, BusLostError) as e:
                now = loop.time()
                trouble_since = now if trouble_since is None else trouble_since
                if now - trouble_since > BUS_GRACE or (deadline is not None and now > deadline):
                    raise
                if isinstance(e, BusLostError):
                    self.systemd.close()
                    with contextlib.suppress(SystemdError):
                        self.systemd = await Systemd.connect()
                    changed = None
                await asyncio.sleep(0.5)
                continue
            trouble_since = None
            if status["state"] == "exited":
                return status
            wait = 0.5
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    raise still_there(name, status, timeout)
            # The unit changes state when the monitor exits; the poll is a safety net.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)

    # --- signals, stop, delete ---------------------------------------------------------

    async def reload(self, name: str) -> None:
        """What `systemctl reload` does: ExecReload=, which sends the container its
        reload signal; with --sdnotify container, done once it said READY=1 again."""
        status = await self.status(name)
        unit = status["unit"]
        if status["state"] != "running":
            raise ContainerStateError(f"container {name} is {status['state']}, not running")
        try:
            result = await self.systemd.reload(unit)
        except BusCallError as e:
            if e.name == JOB_NOT_APPLICABLE:
                raise ContainerStateError(
                    f"container {name} has no reload signal; create it with "
                    "--reload-signal SIGNAL") from None
            raise SystemdError(f"systemd refused to reload {unit}: {e}") from None
        if result != "done":
            raise ContainerStateError(f"reloading container {name} failed ({result}); "
                                      f"see `journalctl -u {unit}`")

    async def kill(self, name: str, signum: int = int(signal.SIGTERM)) -> None:
        status = await self.status(name)
        check_killable(name, status)
        if without_monitor(status) and (status["state"] == "running" or status["direct"]):
            # The container's init is the unit's main process: systemd signals it.
            await self.systemd.kill(status["unit"], "main", signum)
            return
        check_reply(name, await self.control(name, {"op": "kill", "signal": signum}))

    async def stop(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """Stop signal, then SIGKILL after timeout seconds; the final status."""
        seconds("--time", timeout)
        status = await self.status(name)
        if status["socket"]:
            await self.systemd.stop(status["socket"])  # or a connection starts it again
        if status["state"] in ("exited", "listening"):
            return status
        if without_monitor(status):
            return await self._stop_unit(name, status, timeout)
        try:
            await self.control(name, {"op": "stop", "timeout": timeout})
        except ContainerStateError:
            await self.systemd.stop(status["unit"])  # no monitor to ask: systemd's way
        if status["restart"] != "no":
            # systemd's own stop also cancels a restart that is already scheduled (the
            # monitor keeps the timeout asked for, within the unit's TimeoutStopSec).
            await self.systemd.stop(status["unit"])
        return await self.wait(name, timeout + 10)

    async def _stop_unit(self, name: str, status: dict[str, Any],
                         timeout: float) -> dict[str, Any]:
        """Without a monitor: systemd's stop job sends KillSignal= (the stop signal) to
        the init and cancels any restart; SIGKILL to all after timeout (at the latest
        after the unit's TimeoutStopSec, the stop timeout it was created with)."""
        record_stop(name, status, False)
        await self.systemd.stop(status["unit"])
        try:
            return await self.wait(name, timeout)
        except ContainerStateError:
            record_stop(name, status, True)
            with contextlib.suppress(BusCallError):
                await self.systemd.kill(status["unit"], "all", int(signal.SIGKILL))
        return await self.wait(name, 30)

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
        if status["socket"]:
            await self.systemd.stop_and_wait(status["socket"])
            await self.systemd.reset_failed(status["socket"])
        if status["state"] not in ("exited", "listening"):
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


async def start_monitored(directory: Path, what: str) -> dict[str, Any]:
    """Ask the monitor whose records are in directory to start its process; its reply."""
    # No time limit of our own: with --sdnotify container|healthy the monitor answers
    # once the container is ready, or after its --ready-timeout.
    reply = await control_request(directory, {"op": "start"}, what, reply_timeout=None)
    if not reply.get("ok"):
        # The exit record has the message cleaned up and classified.
        exit_record = await wait_exit_record(directory, 2.0) or {}
        raise CreateError(str(exit_record.get("error") or reply.get("error") or "start failed"),
                          int(exit_record.get("exit_code") or 125))
    return reply


async def wait_exit_record(directory: Path, timeout: float) -> dict[str, Any] | None:
    path = directory / "exit.json"
    for _ in range(int(timeout / 0.02)):
        record = records.read_json(path)
        if record:
            return record
        await asyncio.sleep(0.02)
    return None


async def control_request(directory: Path, request: dict[str, Any], what: str,
                          reply_timeout: float | None = CONTROL_TIMEOUT) -> dict[str, Any]:
    """One request to the monitor whose records are in directory, over its control socket
    (the protocol: sdshim.units.control)."""
    path = directory / "control"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path)), CONTROL_TIMEOUT)
    except (OSError, TimeoutError):
        raise control.no_monitor(what, path) from None
    try:
        writer.write(control.encode(request))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), reply_timeout)
    except OSError as e:  # TimeoutError too
        raise control.no_answer(what, e) from None
    finally:
        writer.close()
    return control.decode(line, what)
