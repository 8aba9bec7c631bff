"""The quick commands (`status`, `list`, `kill`, `stop`) over the blocking client.

They make a few D-Bus calls and a control request; on the asyncio Manager they paid for
asyncio and dbus-fast first, which was most of their time. What the answers mean is
shared with the Manager (sdshim.units.status, sdshim.units.control, the protocol core
sdshim.units.systemd1); only the waiting is written twice, once per event model.
"""

from __future__ import annotations

import contextlib
import signal
import time

from sdshim import records
from sdshim.errors import ContainerStateError, NoSuchContainerError
from sdshim.units import control
from sdshim.units.blockingbus import BlockingSystemd
from sdshim.units.spec import seconds
from sdshim.units.status import (
    UNIT_PATTERN,
    boot_socket_unit,
    check_killable,
    check_reply,
    describe,
    names,
    record_stop,
    socket_unit,
    still_there,
    unit_of,
    without_monitor,
)
from sdshim.units.systemd1 import BusCallError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

POLL = 0.5  # seconds between looks at a unit while waiting, if it sends no signal


class BlockingManager:
    """Manager's status, list, kill, stop and wait, blocking (see Manager)."""

    def __init__(self, systemd: BlockingSystemd) -> None:
        self.systemd = systemd

    @classmethod
    def connect(cls) -> BlockingManager:
        return cls(BlockingSystemd.connect())

    def __enter__(self) -> BlockingManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.systemd.conn.close()

    def status(self, name: str) -> dict[str, Any]:
        unit = unit_of(name)
        props = self.systemd.service_state(unit)
        template = boot_socket_unit(name, unit, props)
        if template:
            found = self.systemd.service_state(template)
            if socket_unit(found):
                unit, props = template, found
        return describe(name, unit, props)

    def list(self) -> list[dict[str, Any]]:
        units = self.systemd.list_units([UNIT_PATTERN])
        statuses = []
        for name in names(unit for unit, _active, _sub in units):
            try:
                statuses.append(self.status(name))
            except NoSuchContainerError:
                continue
        return statuses

    def control(self, name: str, request: dict[str, Any]) -> dict[str, Any]:
        return control.request(records.container_dir(name), request, f"container {name}")

    def kill(self, name: str, signum: int = int(signal.SIGTERM)) -> None:
        status = self.status(name)
        check_killable(name, status)
        if without_monitor(status) and (status["state"] == "running" or status["direct"]):
            self.systemd.kill(status["unit"], "main", signum)  # the init is the main process
            return
        check_reply(name, self.control(name, {"op": "kill", "signal": signum}))

    def stop(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """Stop signal, then SIGKILL after timeout seconds; the final status."""
        seconds("--time", timeout)
        status = self.status(name)
        if status["socket"]:
            self.systemd.stop(status["socket"])  # or a connection starts it again
        if status["state"] in ("exited", "listening"):
            return status
        if without_monitor(status):
            return self._stop_unit(name, status, timeout)
        try:
            self.control(name, {"op": "stop", "timeout": timeout})
        except ContainerStateError:
            self.systemd.stop(status["unit"])  # no monitor to ask: systemd's way
        if status["restart"] != "no":
            # systemd's own stop also cancels a restart that is already scheduled.
            self.systemd.stop(status["unit"])
        return self.wait(name, timeout + 10)

    def _stop_unit(self, name: str, status: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Without a monitor (see Manager._stop_unit): systemd's stop, SIGKILL after."""
        record_stop(name, status, False)
        self.systemd.stop(status["unit"])
        try:
            return self.wait(name, timeout)
        except ContainerStateError:
            record_stop(name, status, True)
            with contextlib.suppress(BusCallError):  # ended meanwhile
                self.systemd.kill(status["unit"], "all", int(signal.SIGKILL))
        return self.wait(name, 30)

    def wait(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Until the container has exited; its status."""
        unit = self.status(name)["unit"]
        self.systemd.watch_unit(unit)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(name)
            if status["state"] == "exited":
                return status
            wait = POLL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise still_there(name, status, timeout)
            # The unit changes state when the monitor exits; the poll is a safety net.
            self.systemd.changed(unit, wait)
