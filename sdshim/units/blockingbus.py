"""systemd over the blocking connection (sdshim.units.connection): the thin I/O layer
that `sdshim create`, `run -d` and the other quick commands (sdshim.units.blockingmanager)
use, over the protocol core in sdshim.units.systemd1."""

from __future__ import annotations

import time

from sdshim import rundir
from sdshim.units.connection import Connection
from sdshim.units.systemd1 import (
    PROPERTIES,
    SERVICE,
    SUBSCRIBE,
    UNIT,
    BusCallError,
    Call,
    Job,
    UnitStart,
    add_match,
    get_all,
    kill_unit,
    list_units,
    properties_changed,
    properties_reply,
    service_state,
    stop_unit,
    unit_path,
    units_reply,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class BlockingSystemd:
    """PID 1 over a blocking connection: what creating a container and the quick
    commands need."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._subscribed = False
        self._matches: set[str] = set()

    @classmethod
    def connect(cls) -> BlockingSystemd:
        return cls(Connection.system())

    def __enter__(self) -> BlockingSystemd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def run_job(self, job: Job, timeout: float | None = None) -> None:
        """Make the job's call and follow the job to its end (job.result).

        The match goes first and both calls go out together: the bus handles one
        connection's messages in order, so the match is in place before systemd sees
        the call. Signals go to the job in the order they came, also those that came
        before the call's reply (the job keeps those, Job.signal).
        """
        match = self.conn.send(job.match)
        serial = self.conn.send(job.call)
        self.conn.reply(match, job.match)
        reply = self.conn.reply(serial, job.call)
        for msg in self.conn.signals:
            job.signal(msg.interface, msg.member, msg.body)
        self.conn.signals.clear()
        job.queued(reply)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.ended:
            msg = self.conn.next_signal(job.call, deadline, timeout)
            job.signal(msg.interface, msg.member, msg.body)

    def start_unit(self, start: UnitStart, timeout: float | None = None) -> None:
        """Start the unit; returns once its monitor is ready, raises why it is not."""
        try:
            self.run_job(start.job, timeout)
        except BusCallError as e:
            raise start.refused(e) from None
        if not start.job.ok:
            record = rundir.read_json(start.record_path)
            if not start.ran(record):
                failure = start.failure(record, self.properties(start.properties_call))
                cleanup = start.cleanup_call
                if cleanup is not None:
                    try:  # noqa: SIM105 (the blocking path does not import contextlib)
                        self.conn.call(cleanup)
                    except BusCallError:
                        pass
                raise failure

    def unit_properties(self, unit: str, interface: str = "") -> dict[str, Any] | None:
        """All properties of a loaded unit (interface '' = all), or None if not loaded."""
        return self.properties(get_all(unit, interface))

    def properties(self, call: Call) -> dict[str, Any] | None:
        """The answer to a GetAll call (systemd1.get_all)."""
        try:
            (props,) = self.conn.call(call)
        except BusCallError as e:
            return properties_reply(e, None, call.body[0])
        return properties_reply(None, props, call.body[0])

    def service_state(self, unit: str) -> dict[str, Any] | None:
        """Unit and Service properties of unit merged, or None if systemd does not know it."""
        unit_props = self.unit_properties(unit, UNIT)
        service = None
        if unit_props is not None:
            try:  # noqa: SIM105 (contextlib is not on the lean path)
                service = self.unit_properties(unit, SERVICE)
            except BusCallError:
                pass
        return service_state(unit_props, service)

    def list_units(self, patterns: list[str]) -> list[tuple[str, str, str]]:
        """(name, active_state, sub_state) of loaded units matching patterns."""
        return units_reply(self.conn.call(list_units(patterns)))

    def stop(self, unit: str) -> None:
        """Ask systemd to stop unit (no wait); a unit it does not have is stopped."""
        try:  # noqa: SIM105
            self.conn.call(stop_unit(unit))
        except BusCallError:
            pass

    def kill(self, unit: str, whom: str, signum: int) -> None:
        """KillUnit: signum to the unit's main process (whom 'main') or all of it."""
        self.conn.call(kill_unit(unit, whom, signum))

    def watch_unit(self, unit: str) -> None:
        """From now on, changed() sees the unit's property changes."""
        if not self._subscribed:
            self._subscribed = True
            self.conn.call(SUBSCRIBE)
        rule = properties_changed(unit)
        if rule not in self._matches:
            self._matches.add(rule)
            self.conn.call(add_match(rule))

    def changed(self, unit: str, seconds: float) -> bool:
        """Whether a watched unit changed within seconds."""
        return self.conn.signalled(Call(unit_path(unit), PROPERTIES, "PropertiesChanged",
                                        purpose=f"systemd to report on {unit}"), seconds)
