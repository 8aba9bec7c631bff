"""A listening unix socket in the container's directory, served by the monitor's loop."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
from pathlib import Path


class Listener:
    """Subclasses say what to do with each connection in accepted()."""

    def __init__(self, sel: selectors.BaseSelector, path: Path, kind: int, backlog: int) -> None:
        self.sel = sel
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a monitor that was killed
        self.sock: socket.socket | None = socket.socket(socket.AF_UNIX,
                                                        kind | socket.SOCK_CLOEXEC)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)  # root-only, like the directory
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        sel.register(self.sock, selectors.EVENT_READ, self._on_ready)

    def _on_ready(self, _fileobj: object) -> None:
        if self.sock is None:
            return
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        self.accepted(conn)

    def accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.sock is None:
            return
        self.sel.unregister(self.sock)
        self.sock.close()
        self.sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
