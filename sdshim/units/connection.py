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
import posix
import time

from sdshim import leanos
from sdshim.errors import SystemdError
from sdshim.units.systemd1 import (
    BUS,
    BUS_PATH,
    BusCallError,
    BusLostError,
    BusTimeoutError,
    Call,
    unreachable,
)
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
    from typing import Any

SYSTEM_BUS_ADDRESS = "unix:path=/run/dbus/system_bus_socket"
# What libdbus waits for a reply by default; systemd answers in milliseconds.
CALL_TIMEOUT = 25.0
HELLO = Call(BUS_PATH, BUS, "Hello", destination=BUS,
             purpose="the system bus to accept the connection (Hello)")
# Re-exported: callers catch these as the blocking client's errors.
__all__ = ["BusCallError", "BusLostError", "BusTimeoutError", "Connection", "unreachable"]


def system_bus_socket(address: str | None = None) -> str:
    """The socket path (abstract: with a leading NUL) of the first unix address in
    DBUS_SYSTEM_BUS_ADDRESS, as libdbus reads it."""
    address = address or leanos.getenv("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS_ADDRESS
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
    if "%" not in value:
        return value
    import re  # rare: the lean path does without it

    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), value.encode())
    return raw.decode(errors="surrogateescape")


class Connection:
    """One authenticated connection; not thread-safe, one caller at a time. Errors name
    the call they waited for (Call.purpose): BusTimeoutError, BusLostError, and
    BusCallError for an error reply."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.serial = 0
        self.buffer = bytearray()
        self.replies: dict[int, Message] = {}
        self.signals: list[Message] = []

    @classmethod
    def system(cls, timeout: float | None = None) -> Connection:
        """Connected to the system bus, authenticated and registered (Hello)."""
        timeout = CALL_TIMEOUT if timeout is None else timeout
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
        uid = str(posix.geteuid()).encode().hex().encode()
        hello = self._message(HELLO)
        self._sendall(b"\0AUTH EXTERNAL " + uid + b"\r\nBEGIN\r\n" + hello.to_bytes(), HELLO)
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buffer:
            self._fill(deadline, HELLO, timeout)
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        if not line.startswith(b"OK "):
            raise unreachable(OSError(f"the bus refused authentication as uid "
                                      f"{posix.geteuid()}: {line.decode(errors='replace')}"))
        self.buffer = bytearray(rest)
        self.reply(hello.serial, HELLO, timeout)

    def _message(self, call: Call) -> Message:
        self.serial += 1
        return Message(path=call.path, interface=call.interface, member=call.member,
                       destination=call.destination, signature=call.signature,
                       body=call.body, serial=self.serial)

    def _sendall(self, data: bytes, call: Call) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise call.lost(e.strerror or str(e)) from None

    def send(self, call: Call) -> int:
        """Send a method call; its serial, for reply()."""
        msg = self._message(call)
        self._sendall(msg.to_bytes(), call)
        return msg.serial

    def reply(self, serial: int, call: Call, timeout: float | None = None) -> list[Any]:
        """The body of the reply to call, sent as serial (within timeout seconds, by
        default CALL_TIMEOUT); BusCallError if it is an error."""
        timeout = CALL_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while serial not in self.replies:
            self._receive(deadline, call, timeout)
        msg = self.replies.pop(serial)
        if msg.type == ERROR:
            text = msg.body[0] if msg.signature.startswith("s") and msg.body else ""
            raise BusCallError(msg.error_name, str(text or msg.error_name))
        return msg.body

    def call(self, call: Call, timeout: float | None = None) -> list[Any]:
        return self.reply(self.send(call), call, timeout)

    def next_signal(self, call: Call, deadline: float | None,
                    timeout: float | None) -> Message:
        """The oldest signal not taken yet, received already or to come before deadline
        (timeout seconds from when the wait began); call is what it is awaited for.
        Signals are kept from the start of the connection, so one that came before the
        reply of the call that caused it is here too."""
        while not self.signals:
            self._receive(deadline, call, timeout)
        return self.signals.pop(0)

    def signalled(self, call: Call, seconds: float) -> bool:
        """Whether a signal came, or comes within seconds (waiting for call's sake);
        takes them all."""
        deadline = time.monotonic() + seconds
        try:
            while not self.signals:
                self._receive(deadline, call, seconds)
        except BusTimeoutError:
            return False
        self.signals.clear()
        return True

    def _receive(self, deadline: float | None, call: Call, timeout: float | None) -> None:
        """Read one message and file it under replies or signals."""
        while len(self.buffer) < HEADER_SIZE:
            self._fill(deadline, call, timeout)
        try:
            length = message_length(self.buffer)
            while len(self.buffer) < length:
                self._fill(deadline, call, timeout)
            msg = Message.from_bytes(bytes(self.buffer[:length]))
        except (WireError, UnicodeDecodeError) as e:
            raise SystemdError(f"garbled message on the system bus while waiting for "
                               f"{call.purpose}: {e}") from None
        del self.buffer[:length]
        if msg.type in (METHOD_RETURN, ERROR):
            self.replies[msg.reply_serial] = msg
        elif msg.type == SIGNAL:
            self.signals.append(msg)

    def _fill(self, deadline: float | None, call: Call, timeout: float | None) -> None:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise call.timed_out(timeout or 0)
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise call.timed_out(timeout or 0) from None
        except OSError as e:
            raise call.lost(e.strerror or str(e)) from None
        if not data:
            raise call.lost()
        self.buffer += data
