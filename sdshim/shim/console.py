"""The runtime's console socket (`--console-socket`), and the terminal it hands over.

In terminal mode runc and crun create the pty inside the container and connect to a
path-based stream unix socket to pass the master with SCM_RIGHTS; the monitor keeps
the master, reads the container's output from it and writes its input to it.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import socket
import struct
import termios
from collections.abc import Callable
from pathlib import Path

from sdshim.shim.listener import Listener

# Until a client says otherwise: a terminal without a size confuses full-screen
# programs (and busybox stty), so start with the classic one.
DEFAULT_SIZE = (24, 80)


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on the master: the kernel sends SIGWINCH to the foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ConsoleSocket(Listener):
    """Listens at path for the runtime; calls on_master(fd) with the pty master."""

    def __init__(self, sel: selectors.BaseSelector, path: Path,
                 on_master: Callable[[int], None]) -> None:
        super().__init__(sel, path, socket.SOCK_STREAM, 1)
        self.on_master = on_master

    def accepted(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2.0)  # the runtime sends right after connecting
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 4,
                                                           socket.MSG_CMSG_CLOEXEC)
            except OSError:
                return  # a runtime that died half-way: create fails and says why
        for extra in fds[1:]:
            os.close(extra)
        if fds:
            self.close()  # one terminal per container
            self.on_master(fds[0])
