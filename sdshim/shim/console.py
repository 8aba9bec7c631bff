"""The runtime's console socket (`--console-socket`), and the terminal it hands over.

In terminal mode runc and crun create the pty inside the container and connect to a
path-based stream unix socket to pass the master with SCM_RIGHTS; the monitor keeps
the master, reads the container's output from it and writes its input to it.
"""

from __future__ import annotations

import _socket
import fcntl
import posix
import socket
import struct
import termios

from sdshim.shim.listener import Listener

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdshim.shim.poller import Poller


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on the master: the kernel sends SIGWINCH to the foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ConsoleSocket(Listener):
    """Listens at path for the runtime; calls on_master(fd) with the pty master."""

    def __init__(self, poller: Poller, path: str, on_master: Callable[[int], None]) -> None:
        super().__init__(poller, path, _socket.SOCK_STREAM, 1, self._accepted)
        self.on_master = on_master

    def _accepted(self, conn: _socket.socket) -> None:
        try:
            conn.settimeout(2.0)  # the runtime sends right after connecting
            # (socket only here, for recv_fds: terminal mode is the rare case.)
            _msg, fds, _flags, _addr = socket.recv_fds(
                conn, 4096, 4, socket.MSG_CMSG_CLOEXEC)  # type: ignore[arg-type]
        except OSError:
            return  # a runtime that died half-way: create fails and says why
        finally:
            conn.close()
        for extra in fds[1:]:
            posix.close(extra)
        if fds:
            self.close()  # one terminal per container
            self.on_master(fds[0])
