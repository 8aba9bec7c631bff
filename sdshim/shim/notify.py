"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import os
import socket

# systemd ignores notification datagrams larger than this.
MAX_NOTIFY = 4096


class Notifier:
    def __init__(self) -> None:
        path = os.environ.pop("NOTIFY_SOCKET", "")
        self.addr = "\0" + path[1:] if path.startswith("@") else path
        self.sock: socket.socket | None = None
        if self.addr:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, **fields: str | int) -> None:
        if self.sock is None:
            return
        lines = [f"{k}={_one_line(str(v))}" for k, v in fields.items()]
        msg = "\n".join(lines).encode()[:MAX_NOTIFY]
        # No manager listening (run by hand): nothing to tell.
        with contextlib.suppress(OSError):
            self.sock.sendto(msg, self.addr)


def _one_line(value: str) -> str:
    return value.replace("\n", " ").strip()
