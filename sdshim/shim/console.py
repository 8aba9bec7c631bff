"""The runtime's console socket (`--console-socket`), and the terminal it hands over.

In terminal mode runc and crun create the pty inside the container and connect to a
path-based stream unix socket to pass the master with SCM_RIGHTS; the monitor keeps
the master, reads the container's output from it and writes its input to it.
"""

from __future__ import annotations

import _socket
import fcntl
import sys
import termios

from sdshim import fdpassing
from sdshim.privapi import posix
from sdshim.shim.listener import Listener
from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdshim.shim.poller import Poller


def receive_fds(conn: _socket.socket) -> list[int]:
    """The fds the runtime sent on conn (the master, or more by mistake); recvmsg's
    OSError (BlockingIOError on a non-blocking conn with nothing yet)."""
    return fdpassing.receive(conn, 4096, 4)[1]


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on the master: the kernel sends SIGWINCH to the foreground group."""
    size = b"".join(v.to_bytes(2, sys.byteorder) for v in (rows, cols, 0, 0))  # struct winsize
    fcntl.ioctl(fd, termios.TIOCSWINSZ, size)


class ConsoleSocket(Listener):
    """Listens at path for the runtime; calls on_master(fd) with the pty master."""

    def __init__(self, poller: Poller, path: str, on_master: Callable[[int], None],
                 on_lost: Callable[[str], None]) -> None:
        super().__init__(poller, path, _socket.SOCK_STREAM, 1, self._accepted)
        self.on_master = on_master
        self.on_lost = on_lost
        self.conn: _socket.socket | None = None

    def _accepted(self, conn: _socket.socket) -> None:
        # Not blocking: the runtime sends right after connecting, and a runtime that
        # died half-way must not hold the monitor up (create fails and says why).
        if self.conn is not None:
            conn.close()
            return
        conn.setblocking(False)
        self.conn = conn

        def failed(e: BaseException) -> None:
            self._drop()
            self.on_lost(f"the console socket failed ({e!r})")

        self.poller.register(conn, EVENT_READ, self._readable, on_error=failed)

    def _drop(self) -> None:
        if self.conn is not None:
            self.poller.unregister(self.conn)
            self.conn.close()
            self.conn = None

    def _readable(self, _fileobj: object) -> None:
        assert self.conn is not None
        try:
            fds = receive_fds(self.conn)
        except BlockingIOError:
            return
        except OSError:
            fds = []
        self._drop()
        for extra in fds[1:]:
            posix.close(extra)
        if fds:
            self.close()  # one terminal per container
            self.on_master(fds[0])
