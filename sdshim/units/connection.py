"""A blocking connection to the system bus, standard library only.

`sdshim create` and `run -d` make three D-Bus calls; dbus-fast would make them pay for
asyncio and its own imports (~30 ms) first. This speaks the protocol directly: the
EXTERNAL authentication, Hello, method calls matched to replies by serial, and signals
kept in arrival order for whoever waits for one.
"""

from __future__ import annotations

# _socket, not socket: the wrapper module's enums and selectors cost every `sdshim
# create` ~1 ms, and this needs only connect, sendall, recv and timeouts.
import _socket
import os
import re
import time

from sdshim.errors import SystemdError
from sdshim.units.wire import (
    ERROR,
    HEADER_SIZE,
    METHOD_RETURN,
    SIGNAL,
    Message,
    WireError,
    message_length,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SYSTEM_BUS_ADDRESS = "unix:path=/run/dbus/system_bus_socket"
BUS = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
# What libdbus waits for a reply by default; systemd answers in milliseconds.
CALL_TIMEOUT = 25.0


class BusTimeoutError(SystemdError):
    """No answer on the bus before the deadline."""


class BusCallError(SystemdError):
    """An error reply: name is its D-Bus error name, the message its text."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def unreachable(e: Exception) -> SystemdError:
    """The error for a system bus that cannot be reached (both clients say this)."""
    return SystemdError(
        f"cannot connect to the system bus ({e}); is systemd running as PID 1 with dbus? "
        "(on a host without it, use the test bed: python3 -m sdshim.testbed -- sdshim ...)")


def system_bus_socket(address: str | None = None) -> str:
    """The socket path (abstract: with a leading NUL) of the first unix address in
    DBUS_SYSTEM_BUS_ADDRESS, as libdbus reads it."""
    address = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS_ADDRESS
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        keys = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        if "path" in keys:
            return _unescape(keys["path"])
        if "abstract" in keys:
            return "\0" + _unescape(keys["abstract"])
    raise SystemdError(f"no unix socket in the system bus address {address!r}; set "
                       "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket")


def _unescape(value: str) -> str:
    """D-Bus addresses escape bytes as %XX (urllib's unquote would cost an import)."""
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), value.encode())
    return raw.decode(errors="surrogateescape")


class Connection:
    """One authenticated connection; not thread-safe, one caller at a time."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.serial = 0
        self.buffer = bytearray()
        self.replies: dict[int, Message] = {}
        self.signals: list[Message] = []

    @classmethod
    def system(cls, timeout: float = CALL_TIMEOUT) -> Connection:
        """Connected to the system bus, authenticated and registered (Hello)."""
        path = system_bus_socket()
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise unreachable(e) from None
        conn = cls(sock)
        try:
            conn._authenticate(timeout)
        except BaseException:
            sock.close()
            raise
        return conn

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _authenticate(self, timeout: float) -> None:
        # Sent in one go, as sd-bus does: the server handles the lines in order, so
        # BEGIN and Hello may follow AUTH before its OK comes back.
        uid = str(os.geteuid()).encode().hex().encode()
        hello = self._message(BUS_PATH, BUS, "Hello", destination=BUS)
        self.sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\nBEGIN\r\n" + hello.to_bytes())
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buffer:
            self._fill(deadline, "authenticate")
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        if not line.startswith(b"OK "):
            raise unreachable(OSError(f"the bus refused authentication as uid "
                                      f"{os.geteuid()}: {line.decode(errors='replace')}"))
        self.buffer = bytearray(rest)
        self.reply(hello.serial, deadline)

    def _message(self, path: str, interface: str, member: str, signature: str = "",
                 body: list[Any] | None = None, destination: str = "") -> Message:
        self.serial += 1
        return Message(path=path, interface=interface, member=member,
                       destination=destination, signature=signature, body=body,
                       serial=self.serial)

    def send(self, path: str, interface: str, member: str, signature: str = "",
             body: list[Any] | None = None, destination: str = "") -> int:
        """Send a method call; its serial, for reply()."""
        msg = self._message(path, interface, member, signature, body, destination)
        try:
            self.sock.sendall(msg.to_bytes())
        except OSError as e:
            raise SystemdError(f"lost the system bus connection: {e}") from None
        return msg.serial

    def reply(self, serial: int, deadline: float | None = None) -> list[Any]:
        """The body of the reply to call serial; BusCallError if it is an error."""
        if deadline is None:
            deadline = time.monotonic() + CALL_TIMEOUT
        while serial not in self.replies:
            self._receive(deadline, f"the reply to call {serial}")
        msg = self.replies.pop(serial)
        if msg.type == ERROR:
            text = msg.body[0] if msg.signature.startswith("s") and msg.body else ""
            raise BusCallError(msg.error_name, str(text or msg.error_name))
        return msg.body

    def call(self, path: str, interface: str, member: str, signature: str = "",
             body: list[Any] | None = None, destination: str = "") -> list[Any]:
        return self.reply(self.send(path, interface, member, signature, body, destination))

    def add_match(self, rule: str) -> int:
        """Ask the bus for signals matching rule; the call's serial (its reply says
        nothing, but calls sent after it are routed after the match is in place)."""
        return self.send(BUS_PATH, BUS, "AddMatch", "s", [rule], destination=BUS)

    def wait_signal(self, wanted: Callable[[Message], bool],
                    deadline: float | None) -> Message:
        """The first signal, received already or to come, for which wanted() is true.
        Signals are kept from the start of the connection, so one that came before the
        reply of the call that caused it is found too."""
        while True:
            for i, msg in enumerate(self.signals):
                if wanted(msg):
                    del self.signals[i]
                    return msg
            self.signals.clear()
            self._receive(deadline, "a signal")

    def _receive(self, deadline: float | None, what: str) -> None:
        """Read one message and file it under replies or signals."""
        while len(self.buffer) < HEADER_SIZE:
            self._fill(deadline, what)
        try:
            length = message_length(self.buffer)
            while len(self.buffer) < length:
                self._fill(deadline, what)
            msg = Message.from_bytes(bytes(self.buffer[:length]))
        except (WireError, UnicodeDecodeError) as e:
            raise SystemdError(f"garbled message on the system bus: {e}") from None
        del self.buffer[:length]
        if msg.type in (METHOD_RETURN, ERROR):
            self.replies[msg.reply_serial] = msg
        elif msg.type == SIGNAL:
            self.signals.append(msg)

    def _fill(self, deadline: float | None, what: str) -> None:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise BusTimeoutError(f"no {what} on the system bus in time; is systemd busy?")
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise BusTimeoutError(f"no {what} on the system bus in time; is systemd "
                                  "busy?") from None
        except OSError as e:
            raise SystemdError(f"lost the system bus connection: {e}") from None
        if not data:
            raise SystemdError("the system bus closed the connection")
        self.buffer += data
