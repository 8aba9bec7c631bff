"""systemd over the blocking connection (sdshim.units.connection): the thin I/O layer
that `sdshim create` and `run -d` use, over the protocol core in sdshim.units.systemd1."""

from __future__ import annotations

import time

from sdshim import records
from sdshim.units.connection import Connection
from sdshim.units.systemd1 import (
    BusCallError,
    Call,
    Job,
    UnitStart,
    get_all,
    properties_reply,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class BlockingSystemd:
    """PID 1 over a blocking connection: only what creating a container needs."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

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
            raise start.failure(records.read_json(start.record_path),
                                self.properties(start.properties_call))

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
