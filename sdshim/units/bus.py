"""A small client for systemd's D-Bus API (org.freedesktop.systemd1), on dbus-fast:
the asyncio transport over the protocol core (sdshim.units.systemd1).

Calls are made with explicit signatures rather than through introspected proxies:
one round trip per call, which keeps the CLI fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from sdshim import records
from sdshim.units.systemd1 import (
    NO_SUCH_UNIT,
    SERVICE,
    SUBSCRIBE,
    SYSTEMD,
    UNIT,
    BusCallError,
    Call,
    Job,
    UnitStart,
    add_match,
    get_all,
    list_units,
    manager_call,
    properties_changed,
    properties_reply,
    reload_unit,
    service_state,
    stop_unit,
    unit_path,
    units_reply,
    unreachable,
)
from sdshim.units.wire import complete_types

# dbus-daemon refuses calls beyond max_replies_per_connection (128 by default) awaiting
# replies on one connection; above this many, calls wait for a slot instead of failing.
MAX_PENDING_CALLS = 64


SO_SNDBUFFORCE = 32  # root may exceed net.core.wmem_max
SEND_BUFFER = 4 << 20


def _grow_send_buffer(bus: MessageBus) -> None:
    """Room for every call in flight. dbus-fast 1.84's writer treats EAGAIN from a full
    socket as a broken connection (it fails every call), which 64 StartTransientUnit
    calls in flight can reach on a loaded machine, with the default ~200 KB buffer."""
    sock = getattr(bus, "_sock", None)
    if sock is None:
        return
    for opt in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SEND_BUFFER)
            return
        except OSError:
            continue


class Systemd:
    """One connection to the system bus, talking to PID 1: the asyncio I/O layer over
    the protocol core (sdshim.units.systemd1). A call, or a job, that the bus's end
    interrupts raises BusLostError naming what it waited for; none waits forever."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._jobs: dict[Job, asyncio.Future[None]] = {}
        self._unit_watchers: dict[str, list[asyncio.Event]] = {}
        self._matches: set[str] = set()
        self._call_slots = asyncio.Semaphore(MAX_PENDING_CALLS)
        self._subscribed = False
        self._gone: BaseException | None = None  # what ended the bus, if it ended
        bus.add_message_handler(self._on_message)
        disconnected = asyncio.ensure_future(
            bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        disconnected.add_done_callback(self._on_disconnect)

    @classmethod
    async def connect(cls) -> Systemd:
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except (OSError, Exception) as e:
            raise unreachable(e) from e
        _grow_send_buffer(bus)
        return cls(bus)

    def close(self) -> None:
        self.bus.disconnect()

    def _on_disconnect(self, done: asyncio.Future[None]) -> None:
        if not done.cancelled():
            self._gone = done.exception()
        for pending in self._jobs.values():
            if not pending.done():
                pending.set_result(None)

    def _lost_error(self, call: Call) -> Exception:
        return call.lost(_reason(self._gone))

    async def request(self, call: Call) -> list[Any]:
        """Make the call; the reply's body. BusCallError for an error reply."""
        msg = Message(destination=call.destination, path=call.path,
                      interface=call.interface, member=call.member,
                      signature=call.signature, body=_variants(call.signature, call.body))
        async with self._call_slots:
            if not self.bus.connected:
                raise self._lost_error(call)
            try:
                reply = await self.bus.call(msg)
            except Exception as e:
                if self.bus.connected:
                    raise
                raise call.lost(_reason(e)) from None
        if reply is None:  # what dbus-fast gives pending calls when the bus goes cleanly
            raise self._lost_error(call)
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else reply.error_name
            raise BusCallError(str(reply.error_name), str(text))
        return list(reply.body)

    async def call(self, path: str, interface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, destination: str = SYSTEMD) -> list[Any]:
        return await self.request(Call(path, interface, member, signature, body,
                                       destination=destination))

    async def manager(self, member: str, signature: str = "",
                      body: list[Any] | None = None) -> list[Any]:
        return await self.request(manager_call(member, signature, body))

    async def add_match(self, rule: str) -> None:
        if rule in self._matches:
            return
        self._matches.add(rule)
        await self.request(add_match(rule))

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type != MessageType.SIGNAL:
            return False
        # Only JobRemoved ends a job (Job.signal): with 200 starts at once, handing
        # every PropertiesChanged to every job was a good part of the Manager's CPU.
        if msg.member == "JobRemoved":
            for job, pending in list(self._jobs.items()):
                job.signal(msg.interface or "", msg.member, msg.body)
                if job.ended and not pending.done():
                    pending.set_result(None)
        if msg.member == "PropertiesChanged" and msg.path in self._unit_watchers:
            for event in self._unit_watchers[msg.path]:
                event.set()
        return False

    async def run_job(self, job: Job, timeout: float | None = None) -> None:
        """Make the job's call and follow the job to its end (job.result).

        Every signal goes to the job from before the call goes out: the job itself
        keeps a JobRemoved that comes before the call's reply (Job.signal)."""
        await self.add_match(job.match.body[0])
        pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs[job] = pending
        try:
            job.queued(await self.request(job.call))
            if not job.ended:
                try:
                    await asyncio.wait_for(pending, timeout)
                except TimeoutError:
                    raise job.call.timed_out(timeout or 0) from None
                if not job.ended:  # woken by the bus's end
                    raise self._lost_error(job.call)
        finally:
            del self._jobs[job]

    async def start_unit(self, start: UnitStart, timeout: float | None = None) -> None:
        """Start the unit; returns once its monitor is ready, raises why it is not.

        For Type=notify the job is done only once the monitor has sent READY=1.
        """
        try:
            await self.run_job(start.job, timeout)
        except BusCallError as e:
            raise start.refused(e) from None
        if not start.job.ok:
            record = records.read_json(start.record_path)
            if not start.ran(record):
                failure = start.failure(record, await self.properties(start.properties_call))
                cleanup = start.cleanup_call
                if cleanup is not None:
                    with contextlib.suppress(BusCallError):
                        await self.request(cleanup)
                raise failure

    async def reload(self, unit: str) -> str:
        """ReloadUnit (ExecReload=), waited for; the job's result."""
        job = Job(reload_unit(unit))
        await self.run_job(job, None)
        return job.result

    async def stop_and_wait(self, unit: str, timeout: float | None = 60) -> str:
        job = Job(stop_unit(unit))
        try:
            await self.run_job(job, timeout)
        except BusCallError as e:
            if e.name in (NO_SUCH_UNIT, "org.freedesktop.systemd1.LoadFailed"):
                return "done"
            raise
        return job.result

    async def unit_properties(self, unit: str, interface: str = "") -> dict[str, Any] | None:
        """All properties of a loaded unit (interface '' = all), or None if not loaded."""
        return await self.properties(get_all(unit, interface))

    async def properties(self, call: Call) -> dict[str, Any] | None:
        """The answer to a GetAll call (systemd1.get_all), values unwrapped."""
        try:
            (props,) = await self.request(call)
        except BusCallError as e:
            return properties_reply(e, None, call.body[0])
        return properties_reply(None, {k: v.value for k, v in props.items()}, call.body[0])
    async def service_state(self, unit: str) -> dict[str, Any] | None:
        """Unit and Service properties of unit merged, or None if systemd does not know it."""
        unit_props = await self.unit_properties(unit, UNIT)
        service = None
        if unit_props is not None:
            with contextlib.suppress(BusCallError):
                service = await self.unit_properties(unit, SERVICE)
        return service_state(unit_props, service)

    async def watch_unit(self, unit: str) -> asyncio.Event:
        """An event set whenever the unit's properties change."""
        if not self._subscribed:
            self._subscribed = True
            await self.request(SUBSCRIBE)
        await self.add_match(properties_changed(unit))
        event = asyncio.Event()
        self._unit_watchers.setdefault(unit_path(unit), []).append(event)
        return event

    async def list_units(self, patterns: list[str]) -> list[tuple[str, str, str]]:
        """(name, active_state, sub_state) of loaded units matching patterns."""
        return units_reply(await self.request(list_units(patterns)))

    async def kill(self, unit: str, whom: str, signum: int) -> None:
        await self.manager("KillUnit", "ssi", [unit, whom, signum])

    async def stop(self, unit: str) -> None:
        with contextlib.suppress(BusCallError):
            await self.request(stop_unit(unit))

    async def reset_failed(self, unit: str) -> None:
        with contextlib.suppress(BusCallError):
            await self.manager("ResetFailedUnit", "s", [unit])


def _reason(error: BaseException | None) -> str:
    """What ended the bus, for the user; nothing when it simply closed (EOF)."""
    if error is None or isinstance(error, EOFError):
        return ""
    return str(error) or type(error).__name__


def _variants(signature: str, body: list[Any]) -> list[Any]:
    """A body in the core's form (sdshim.units.wire: a variant as a (signature, value)
    pair) as dbus-fast takes it: Variant objects."""
    if "v" not in signature:
        return body
    return [_variant(t, v) for t, v in zip(complete_types(signature), body, strict=True)]


def _variant(t: str, value: Any) -> Any:
    code = t[0]
    if code == "v":
        inner, v = value
        return Variant(inner, _variant(inner, v))
    if "v" not in t:
        return value
    if code == "a" and t[1] == "{":
        _key, item = complete_types(t[2:-1])
        return {k: _variant(item, v) for k, v in value.items()}
    if code == "a":
        return [_variant(t[1:], v) for v in value]
    return [_variant(it, v) for it, v in zip(complete_types(t[1:-1]), value, strict=True)]
