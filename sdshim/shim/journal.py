"""journald's native protocol (binary-safe), and splitting output into entries."""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
PRIORITY_STDOUT = 6  # info
PRIORITY_STDERR = 3  # err
# journald's socket was replaced (its socket unit restarted): connect to the new one,
# trying for this long while it comes back, before giving up on the entry.
RECONNECT_TIMEOUT = 10.0
_GONE = (errno.ECONNREFUSED, errno.ENOTCONN, errno.ENOENT, errno.EPIPE, errno.ECONNRESET)


def encode_field(key: str, value: bytes) -> bytes:
    """KEY=value\\n, or the length-prefixed form when value has a newline."""
    if b"\n" in value:
        return key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return key.encode() + b"=" + value + b"\n"


def encode_entry(fields: Mapping[str, bytes]) -> bytes:
    return b"".join(encode_field(k, v) for k, v in fields.items())


class JournalWriter:
    """Sends entries to journald, blocking rather than dropping when it falls behind."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        for opt in (32, socket.SO_SNDBUF):  # 32 = SO_SNDBUFFORCE (root may exceed wmem_max)
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 * 1024 * 1024)
                break
            except OSError:
                continue
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock

    def send(self, data: bytes) -> None:
        try:
            self._send(data)
        except OSError as e:
            if e.errno not in _GONE:
                raise
            self._reconnect()
            self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _reconnect(self) -> None:
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while True:
            try:
                sock = self._connect()
                break
            except OSError as e:
                if e.errno not in _GONE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.close()
        self.sock = sock

    def _send_memfd(self, data: bytes) -> None:
        # Entries larger than a datagram go in a sealed memfd, as the protocol allows.
        fd = os.memfd_create("sdshim-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            fds = array.array("i", [fd])
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()


class LineSplitter:
    """Cuts a byte stream into lines of at most max_line bytes.

    Yields (bytes without the newline, partial): partial is True for every chunk of
    a line longer than max_line except its last, so readers can join them exactly.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        self.buf += data
        start = 0
        buf = self.buf
        while True:
            nl = buf.find(b"\n", start, start + self.max_line + 1)
            if nl >= 0:
                yield bytes(buf[start:nl]), False
                start = nl + 1
            elif len(buf) - start > self.max_line:
                yield bytes(buf[start:start + self.max_line]), True
                start += self.max_line
            else:
                break
        del buf[:start]

    def flush(self) -> Iterator[tuple[bytes, bool]]:
        """At end of stream: what is left is a last line without a newline."""
        if self.buf:
            yield bytes(self.buf), False
            self.buf.clear()
