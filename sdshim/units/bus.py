"""A small client for systemd's D-Bus API (org.freedesktop.systemd1), on dbus-fast.

Calls are made with explicit signatures rather than through introspected proxies:
one round trip per call, which keeps the CLI fast.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from sdshim.units.connection import BusCallError, unreachable
from sdshim.units.systemd1 import (
    JOB_REMOVED_MATCH,
    MANAGER,
    NO_SUCH_UNIT,
    NOT_LOADED,
    PROPERTIES,
    SERVICE,
    START_TRANSIENT,
    SYSTEMD,
    SYSTEMD_PATH,
    UNIT,
    loaded,
    unit_path,
)

if TYPE_CHECKING:
    from sdshim.units.spec import Property

# dbus-daemon refuses calls beyond max_replies_per_connection (128 by default) awaiting
# replies on one connection; above this many, calls wait for a slot instead of failing.
MAX_PENDING_CALLS = 64


class Systemd:
    """One connection to the system bus, talking to PID 1."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._job_waiters: dict[str, asyncio.Future[str]] = {}
        self._unit_watchers: dict[str, list[asyncio.Event]] = {}
        self._matches: set[str] = set()
        self._call_slots = asyncio.Semaphore(MAX_PENDING_CALLS)
        self._subscribed = False
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls) -> Systemd:
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, Exception) as e:
            raise unreachable(e) from e
        return cls(bus)

    def close(self) -> None:
        self.bus.disconnect()

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, destination: str = SYSTEMD) -> list[Any]:
        async with self._call_slots:
            reply = await self.bus.call(Message(
                destination=destination, path=path, interface=interface, member=member,
                signature=signature, body=body or [],
            ))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else reply.error_name
            raise BusCallError(str(reply.error_name), str(text))
        return list(reply.body)

    async def manager(self, member: str, signature: str = "",
                      body: list[Any] | None = None) -> list[Any]:
        return await self.call(SYSTEMD_PATH, MANAGER, member, signature, body)

    async def add_match(self, rule: str) -> None:
        if rule in self._matches:
            return
        self._matches.add(rule)
        await self.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                        [rule], destination="org.freedesktop.DBus")

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type != MessageType.SIGNAL:
            return False
        if msg.member == "JobRemoved" and msg.interface == MANAGER:
            _id, job, _unit, result = msg.body
            fut = self._job_waiters.pop(job, None)
            if fut is not None and not fut.done():
                fut.set_result(result)
        elif msg.member == "PropertiesChanged" and msg.path in self._unit_watchers:
            for event in self._unit_watchers[msg.path]:
                event.set()
        return False

    async def start_transient(self, unit: str, properties: list[Property],
                              timeout: float | None = None) -> str:
        """StartTransientUnit and wait for its job; the job's result ('done', 'failed'...).

        For Type=notify the job is done only once the monitor has sent READY=1.
        """
        variants = [(name, Variant(sig, value)) for name, sig, value in properties]
        return await self._job("StartTransientUnit", START_TRANSIENT,
                               [unit, "fail", variants, []], timeout)

    async def stop_and_wait(self, unit: str, timeout: float | None = 60) -> str:
        try:
            return await self._job("StopUnit", "ss", [unit, "replace"], timeout)
        except BusCallError as e:
            if e.name in (NO_SUCH_UNIT, "org.freedesktop.systemd1.LoadFailed"):
                return "done"
            raise

    async def _job(self, member: str, signature: str, body: list[Any],
                   timeout: float | None) -> str:
        # systemd sends job signals to the client that queued the job; the match makes
        # dbus-daemon route them to us. The job may end before the call returns.
        await self.add_match(JOB_REMOVED_MATCH)
        early: dict[str, str] = {}

        def catch_early(msg: Message) -> bool:
            if msg.message_type == MessageType.SIGNAL and msg.member == "JobRemoved":
                early[msg.body[1]] = msg.body[3]
            return False

        self.bus.add_message_handler(catch_early)
        try:
            (job,) = await self.manager(member, signature, body)
        finally:
            self.bus.remove_message_handler(catch_early)
        if job in early:
            return early[job]
        pending: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._job_waiters[job] = pending
        try:
            return await asyncio.wait_for(pending, timeout)
        finally:
            self._job_waiters.pop(job, None)

    async def unit_properties(self, unit: str, interface: str = "") -> dict[str, Any] | None:
        """All properties of a loaded unit (interface '' = all), or None if not loaded."""
        path = unit_path(unit)
        try:
            (props,) = await self.call(path, PROPERTIES, "GetAll", "s", [interface])
        except BusCallError as e:
            if e.name in NOT_LOADED:
                return None
            raise
        return loaded({k: v.value for k, v in props.items()}, interface)

    async def service_state(self, unit: str) -> dict[str, Any] | None:
        """Unit and Service properties of unit merged, or None if systemd does not know it."""
        unit_props = await self.unit_properties(unit, UNIT)
        if unit_props is None:
            return None
        with contextlib.suppress(BusCallError):
            service = await self.unit_properties(unit, SERVICE)
            if service:
                unit_props.update(service)
        return unit_props

    async def watch_unit(self, unit: str) -> asyncio.Event:
        """An event set whenever the unit's properties change."""
        if not self._subscribed:
            # systemd emits unit signals only while some client is subscribed.
            self._subscribed = True
            await self.manager("Subscribe")
        path = unit_path(unit)
        await self.add_match(f"type='signal',sender='{SYSTEMD}',path='{path}',"
                             f"interface='{PROPERTIES}',member='PropertiesChanged'")
        event = asyncio.Event()
        self._unit_watchers.setdefault(path, []).append(event)
        return event

    async def list_units(self, patterns: list[str]) -> list[tuple[str, str, str]]:
        """(name, active_state, sub_state) of loaded units matching patterns."""
        (units,) = await self.manager("ListUnitsByPatterns", "asas", [[], patterns])
        return [(u[0], u[3], u[4]) for u in units]

    async def kill(self, unit: str, whom: str, signum: int) -> None:
        await self.manager("KillUnit", "ssi", [unit, whom, signum])

    async def stop(self, unit: str) -> None:
        with contextlib.suppress(BusCallError):
            await self.manager("StopUnit", "ss", [unit, "replace"])

    async def reset_failed(self, unit: str) -> None:
        with contextlib.suppress(BusCallError):
            await self.manager("ResetFailedUnit", "s", [unit])

