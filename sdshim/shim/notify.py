"""What the monitor tells systemd: sd_notify(3) without libsystemd (one datagram to
$NOTIFY_SOCKET), and lines on its stderr (the unit's journal stream)."""

from __future__ import annotations

import _socket
import posix
import sys

from sdshim import leanos
from sdshim.shim.listener import unix_socket

# systemd ignores notification datagrams larger than this.
MAX_NOTIFY = 4096


class Notifier:
    def __init__(self, fallback: str = "") -> None:
        """fallback: the socket to use when NOTIFY_SOCKET is not set."""
        path = leanos.popenv("NOTIFY_SOCKET") or fallback  # not for the programs it starts
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


    def barrier(self, timeout: float = 5.0) -> bool:
        """Until systemd has processed every message sent so far (sd_notify_barrier(3):
        BARRIER=1 with a pipe's write end, which systemd closes once it got there).

        Needed before anything that depends on a message having arrived: systemd reads
        notifications after it has reaped children, so MAINPID must be taken before the
        new main process can end, and a message from a process that is gone by then
        cannot be attributed to the unit and is dropped."""
        if self.sock is None:
            return False
        import select

        r, w = posix.pipe2(posix.O_CLOEXEC)
        try:
            try:
                self.sock.sendmsg([b"BARRIER=1"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                                    w.to_bytes(4, sys.byteorder))],
                                  0, self.addr)
            except OSError:
                return False
            posix.close(w)
            w = -1
            poller = select.poll()
            poller.register(r, select.POLLIN)
            return bool(poller.poll(int(timeout * 1000)))  # POLLHUP: systemd closed it
        finally:
            posix.close(r)
            if w >= 0:
                posix.close(w)


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
