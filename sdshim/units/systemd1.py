"""systemd's D-Bus API (org.freedesktop.systemd1) as both of sdshim's clients use it:
names, paths, what replies mean; and the blocking client behind `sdshim create` and
`run -d` (sdshim.units.bus is the asyncio one, on dbus-fast, for everything else)."""

from __future__ import annotations

import time

from sdshim.units.connection import BusCallError, Connection

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sdshim.units.spec import Property
    from sdshim.units.wire import Message

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
# What GetAll says about a unit systemd does not have loaded.
NOT_LOADED = (NO_SUCH_UNIT, "org.freedesktop.DBus.Error.UnknownObject",
              "org.freedesktop.DBus.Error.UnknownMethod")
START_TRANSIENT = "ssa(sv)a(sa(sv))"  # name, mode, properties, auxiliary units
# systemd sends job signals to the client that queued the job (no Subscribe needed);
# this match makes the bus route them to us.
JOB_REMOVED_MATCH = (f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',"
                     "member='JobRemoved'")


def unit_path(unit: str) -> str:
    """The object path systemd gives a unit (sd_bus_path_encode)."""
    out = []
    for ch in unit:
        if ch.isascii() and (ch.isalnum()):
            out.append(ch)
        else:
            out.append(f"_{ord(ch):02x}")
    return f"{SYSTEMD_PATH}/unit/{''.join(out)}"


def loaded(values: dict[str, Any], interface: str) -> dict[str, Any] | None:
    """GetAll's values, or None when they describe a unit systemd could not find."""
    if values.get("LoadState") in ("not-found", None) and interface in ("", UNIT):
        return None
    return values


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

    def start_transient(self, unit: str, properties: list[Property],
                        timeout: float | None = None) -> str:
        """StartTransientUnit and wait for its job; the job's result ('done', 'failed'...).

        The match goes first and both calls go out together: the bus handles one
        connection's messages in order, so the match is in place before systemd
        sees the call. JobRemoved may come before the call's reply; the connection
        keeps it (Connection.wait_signal).
        """
        match = self.conn.add_match(JOB_REMOVED_MATCH)
        call = self.conn.send(SYSTEMD_PATH, MANAGER, "StartTransientUnit", START_TRANSIENT,
                              [unit, "fail", [(n, (sig, v)) for n, sig, v in properties], []],
                              destination=SYSTEMD)
        self.conn.reply(match)
        (job,) = self.conn.reply(call)
        deadline = None if timeout is None else time.monotonic() + timeout

        def removed(msg: Message) -> bool:
            return (msg.member == "JobRemoved" and msg.interface == MANAGER
                    and len(msg.body) == 4 and msg.body[1] == job)

        return str(self.conn.wait_signal(removed, deadline).body[3])

    def unit_properties(self, unit: str, interface: str = "") -> dict[str, Any] | None:
        """All properties of a loaded unit (interface '' = all), or None if not loaded."""
        try:
            (props,) = self.conn.call(unit_path(unit), PROPERTIES, "GetAll", "s",
                                      [interface], destination=SYSTEMD)
        except BusCallError as e:
            if e.name in NOT_LOADED:
                return None
            raise
        return loaded(props, interface)
