"""A listening unix socket in the container's directory, served by the monitor's loop."""

from __future__ import annotations

import _socket

from sdshim.privapi import accept, posix
from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdshim.shim.poller import Poller


def unix_socket(kind: int) -> _socket.socket:
    """A new close-on-exec unix socket of kind (SOCK_STREAM, ...); the monitor's sockets
    are _socket's: socket's wrappers (with enum) would cost it ~1.3 MB and 1.5 ms."""
    return _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)


class Listener:
    """Calls on_connection(conn) with each accepted connection (blocking, close-on-exec)."""

    def __init__(self, poller: Poller, path: str, kind: int, backlog: int,
                 on_connection: Callable[[_socket.socket], None]) -> None:
        self.poller = poller
        self.path = path
        self.on_connection = on_connection
        _unlink(path)  # left by a monitor that was killed
        self.sock: _socket.socket | None = unix_socket(kind)
        self.sock.bind(path)
        posix.chmod(path, 0o600)  # root-only, like the directory
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        poller.register(self.sock, EVENT_READ, self._on_ready)

    def _on_ready(self, _fileobj: object) -> None:
        if self.sock is None:
            return
        try:
            fd = accept(self.sock)
        except BlockingIOError:
            return
        self.on_connection(_socket.socket(fileno=fd))

    def close(self) -> None:
        if self.sock is None:
            return
        self.poller.unregister(self.sock)
        self.sock.close()
        self.sock = None
        _unlink(self.path)


def _unlink(path: str) -> None:
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
