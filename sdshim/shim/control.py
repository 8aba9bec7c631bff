"""The control socket (/run/sdshim/NAME/control): start, kill and stop requests.

A client connects, sends one JSON object ({"op": "kill", "signal": 9}) and reads one
JSON line back. Connections are read without blocking as their bytes come; a request
is handled once what arrived parses, and answered when the lifecycle says (a start
only once the command runs). A connection that sends nothing parseable before EOF,
more than MAX_REQUEST bytes, or takes longer than IDLE_TIMEOUT, is closed unanswered;
one that is malformed in shape is answered with what is wrong. No request can take
the monitor down: whatever goes wrong with one costs that one connection.

The monitor listens on the socket from set-up (sdshim.shim.listener) and loads this
module on the first connection, from the file pinned at start-up (sdshim.shim.pinned).
"""

from __future__ import annotations

import _socket

from sdshim import leanjson
from sdshim.shim.lifecycle import Request
from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sdshim.shim.poller import Poller

MAX_REQUEST = 4096
IDLE_TIMEOUT = 5.0
OPS = ("start", "kill", "stop", "reload")
_SEND_FLAGS = _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL


class InvalidRequest(ValueError):
    pass


def parse_request(obj: object, ident: int = 0) -> Request:
    """A lifecycle Request from a decoded request; InvalidRequest naming the problem."""
    if not isinstance(obj, dict):
        raise InvalidRequest("a request is a JSON object")
    op = obj.get("op")
    if not isinstance(op, str):
        raise InvalidRequest("op must be a string")
    signal = obj.get("signal", 0)
    if isinstance(signal, bool) or not isinstance(signal, int) or not 0 <= signal < 65:
        raise InvalidRequest(f"signal must be a signal number, not {signal!r}")
    timeout = obj.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 <= timeout < float("inf"):  # NaN fails both
            raise InvalidRequest(f"timeout must be a number of seconds, not {timeout!r}")
        timeout = float(timeout)
    return Request(op, signal, timeout, ident)


class Connection:
    def __init__(self, sock: _socket.socket, ident: int) -> None:
        self.sock = sock
        self.ident = ident
        self.data = b""
        self.handled = False


class ControlServer:
    """Calls on_request(Request) for each request; reply(ident, reply) answers it."""

    def __init__(self, poller: Poller, on_request: Callable[[Request], None],
                 on_lost: Callable[[str], None]) -> None:
        """on_lost(what): a connection was given up because of an unexpected error.
        The connections come from a Listener, to accepted()."""
        self.poller = poller
        self.on_request = on_request
        self.on_lost = on_lost
        self.connections: dict[int, Connection] = {}

    def accepted(self, sock: _socket.socket) -> None:
        sock.setblocking(False)
        conn = Connection(sock, sock.fileno())
        self.connections[conn.ident] = conn

        def failed(e: BaseException) -> None:
            self._close(conn)
            self.on_lost(f"a control request ({e!r})")

        self.poller.register(sock, EVENT_READ, lambda _f: self._readable(conn), failed)
        self.poller.arm(f"control-{conn.ident}", IDLE_TIMEOUT, lambda: self._close(conn),
                        on_error=failed)

    def _readable(self, conn: Connection) -> None:
        try:
            chunk = conn.sock.recv(MAX_REQUEST + 1)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            if not conn.handled:
                self._close(conn)  # what came was no request: nothing to answer
            return
        if conn.handled:
            return  # one request per connection; the rest is ignored
        conn.data += chunk
        if len(conn.data) > MAX_REQUEST:
            self._close(conn)
            return
        try:
            obj = leanjson.loads(conn.data.decode())
        except ValueError:  # incomplete (or never JSON): wait for more, or EOF
            return
        conn.handled = True
        self.poller.cancel(f"control-{conn.ident}")  # a start is answered once it ran
        try:
            request = parse_request(obj, conn.ident)
        except InvalidRequest as e:
            self.reply(conn.ident, {"ok": False, "error": f"invalid request: {e}"})
            return
        if request.op not in OPS:
            self.reply(conn.ident, {"ok": False, "error": f"unknown request {request.op!r}"})
            return
        self.on_request(request)

    def reply(self, ident: int, reply: dict[str, Any]) -> None:
        conn = self.connections.get(ident)
        if conn is None:
            return  # the client went away meanwhile
        try:
            # One small line into an empty socket buffer: it fits, never blocks.
            conn.sock.send(leanjson.dumps(reply).encode() + b"\n", _SEND_FLAGS)
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn: Connection) -> None:
        if self.connections.pop(conn.ident, None) is None:
            return
        self.poller.cancel(f"control-{conn.ident}")
        self.poller.unregister(conn.sock)
        conn.sock.close()

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
