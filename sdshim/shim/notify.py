"""What the monitor tells systemd: sd_notify(3) without libsystemd (one datagram to
$NOTIFY_SOCKET), and lines on its stderr (the unit's journal stream)."""

from __future__ import annotations

import _socket
import sys

from sdshim import leanos
from sdshim.shim.listener import unix_socket

# systemd ignores notification datagrams larger than this.
MAX_NOTIFY = 4096


class Notifier:
    def __init__(self) -> None:
        path = leanos.popenv("NOTIFY_SOCKET")  # not for the programs it starts
        self.addr = "\0" + path[1:] if path.startswith("@") else path
        self.sock: _socket.socket | None = None
        if self.addr:
            self.sock = unix_socket(_socket.SOCK_DGRAM)

    def send(self, **fields: str | int) -> None:
        lines = [f"{k}={_one_line(str(v))}" for k, v in fields.items()]
        self.forward("\n".join(lines).encode()[:MAX_NOTIFY])

    def forward(self, msg: bytes) -> None:
        """One datagram as it is (the container's, checked by notifyfilter)."""
        if self.sock is None or not msg:
            return
        try:
            self.sock.sendto(msg, self.addr)
        except OSError:
            pass  # no manager listening (run by hand): nothing to tell


def _one_line(value: str) -> str:
    return value.replace("\n", " ").strip()


def say(message: str) -> None:
    """One line on stderr (the unit's journal). Never an exception: a journald that is
    away (its stream broken, EPIPE) must not cost anything but the line."""
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
