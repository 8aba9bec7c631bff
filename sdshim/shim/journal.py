"""journald's protocols: native datagrams (binary-safe), stdout stream connections, and
the varlink Synchronize call; and splitting output into entries."""

from __future__ import annotations

import _socket
import errno
import fcntl
import sys

from sdshim import leanos
from sdshim.privapi import posix
from sdshim.shim.listener import unix_socket
from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from sdshim.shim.poller import Poller

JOURNAL_SOCKET = "/run/systemd/journal/socket"
STREAM_SOCKET = "/run/systemd/journal/stdout"
VARLINK_SOCKET = "/run/systemd/journal/io.systemd.journal"
SO_SNDBUFFORCE = 32  # root may exceed net.core.wmem_max
# What systemd gives the stdout streams of services (SNDBUF_SIZE in src/basic/socket-util.h).
SEND_BUFFER = 8 * 1024 * 1024
PRIORITY_STDOUT = 6  # info
PRIORITY_STDERR = 3  # err
# How long a send may wait for journald to make room: it blocks rather than drops (see
# JournalWriter), but beyond this the monitor holds the output back instead (see
# sdshim.shim.output) and serves everything else meanwhile.
SEND_WAIT = 1.0
SYNCHRONIZE = b'{"method": "io.systemd.Journal.Synchronize", "parameters": {}}\0'
_GONE = (errno.ECONNREFUSED, errno.ENOTCONN, errno.ENOENT, errno.EPIPE, errno.ECONNRESET)


def encode_field(key: str, value: bytes) -> bytes:
    """KEY=value\\n, or the length-prefixed form when value has a newline."""
    if b"\n" in value:
        return key.encode() + b"\n" + len(value).to_bytes(8, "little") + value + b"\n"
    return key.encode() + b"=" + value + b"\n"


def encode_entry(fields: Mapping[str, bytes]) -> bytes:
    return b"".join(encode_field(k, v) for k, v in fields.items())


class JournalWriter:
    """Sends entries to journald, blocking rather than dropping when it falls behind.

    (Tried: a non-blocking socket that, on a full queue, waits for room and then 50 us
    more, so journald is not woken into a sender for every datagram. It cut journald's
    CPU per entry a little, but with net.unix.max_dgram_qlen=10, as on hosts without
    systemd's sysctl defaults, journald's queue holds 0.2 ms of work and it sat idle
    meanwhile: slower overall. Plain blocking sends keep it busy.)
    """

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self.sock = self._connect()

    def _connect(self) -> _socket.socket:
        sock = unix_socket(_socket.SOCK_DGRAM)
        _grow_send_buffer(sock)
        try:
            sock.connect(self.path)  # a datagram socket's connect never waits
        except OSError:
            sock.close()
            raise
        sock.settimeout(SEND_WAIT)
        return sock

    def send(self, data: bytes) -> None:
        """Send one entry, waiting at most SEND_WAIT for room; OSError (TimeoutError
        included) if journald did not take it."""
        try:
            self._send(data)
        except OSError as e:
            if e.errno not in _GONE:
                raise
            self._reconnect()  # journald's socket was replaced (journald restarted)
            self._send(data)

    def try_send(self, data: bytes) -> None:
        """send() without waiting for room (BlockingIOError if there is none)."""
        self.sock.settimeout(0.0)
        try:
            self.send(data)
        finally:
            self.sock.settimeout(SEND_WAIT)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _reconnect(self) -> None:
        """Once, at once: while journald is away, the caller tries again later."""
        sock = self._connect()
        timeout = self.sock.gettimeout()
        self.sock.close()
        self.sock = sock
        sock.settimeout(timeout)

    def _send_memfd(self, data: bytes) -> None:
        # Entries larger than a datagram go in a sealed memfd, as the protocol allows.
        fd = posix.memfd_create("sdshim-journal", posix.MFD_CLOEXEC | posix.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[posix.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self.sock.sendmsg([], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                    fd.to_bytes(4, sys.byteorder, signed=True))])
        finally:
            posix.close(fd)

    def close(self) -> None:
        self.sock.close()


def _grow_send_buffer(sock: _socket.socket) -> None:
    for opt in (SO_SNDBUFFORCE, _socket.SO_SNDBUF):
        try:
            sock.setsockopt(_socket.SOL_SOCKET, opt, SEND_BUFFER)
            return
        except OSError:
            continue


def open_stream(identifier: str, unit: str, priority: int, path: str = STREAM_SOCKET) -> int:
    """A journald stdout stream connection (what systemd gives a service as its stdout).

    Whatever is written to the returned fd becomes journal entries, one per line, with
    SYSLOG_IDENTIFIER=identifier and PRIORITY=priority. The header is journald's stream
    protocol (src/journal/journald-stream.c): identifier, unit id (honoured from root:
    lines stay attributed to the unit even after the writer is gone), priority,
    level prefix, forward to syslog, kmsg, console.
    """
    sock = unix_socket(_socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.shutdown(_socket.SHUT_RD)
        _grow_send_buffer(sock)
        sock.sendall(f"{identifier}\n{unit}\n{priority}\n0\n0\n0\n0\n".encode())
    except OSError:
        sock.close()
        raise
    return sock.detach()


def open_streams(identifier: str, unit: str) -> tuple[int, int]:
    """Stream connections for a container's stdout (priority info) and stderr (err)."""
    out = open_stream(identifier, unit, PRIORITY_STDOUT)
    try:
        return out, open_stream(identifier, unit, PRIORITY_STDERR)
    except OSError:
        posix.close(out)
        raise


def synchronize(poller: Poller, done: Callable[[bool], None], timeout: float = 5.0,
                path: str = VARLINK_SOCKET) -> None:
    """done(True) once journald has processed everything sent to it so far; done(False)
    if it cannot say so within timeout. Served by the loop: nothing waits.

    journald answers io.systemd.Journal.Synchronize from a low-priority event, after
    every pending datagram and stream byte: lines a container wrote to a stream
    connection are in the journal before an entry sent after done() is called.
    """
    sock = unix_socket(_socket.SOCK_STREAM)
    reply = bytearray()
    timer = "journal-sync"

    def end(ok: bool) -> None:
        poller.cancel(timer)
        poller.unregister(sock)
        sock.close()
        done(ok)

    def readable(_fileobj: object) -> None:
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            end(False)
            return
        reply.extend(chunk)
        if reply.endswith(b"\0"):
            end(b'"error"' not in reply)

    try:
        sock.setblocking(False)
        sock.connect(path)  # a unix socket connects at once, or fails (EAGAIN: busy)
        sock.send(SYNCHRONIZE)  # a few bytes into an empty buffer: they fit
    except OSError:
        sock.close()
        done(False)
        return
    poller.register(sock, EVENT_READ, readable, on_error=lambda _e: end(False))
    poller.arm(timer, timeout, lambda: end(False))


def stream_line_query(identifier: str, priority: int | None = None) -> list[str]:
    """journalctl's argv for the last line this unit's invocation wrote with identifier
    (and priority, if given) through a stream connection (the monitor never saw it)."""
    return ["journalctl", "--quiet", "--all", "-o", "cat", "-n", "1",
            f"_SYSTEMD_INVOCATION_ID={leanos.getenv('INVOCATION_ID')}",
            f"SYSLOG_IDENTIFIER={identifier}", "_TRANSPORT=stdout",
            *([f"PRIORITY={priority}"] if priority is not None else [])]


class LineSplitter:
    """Cuts a byte stream into lines of at most max_line bytes.

    Returns (bytes without the newline, partial): partial is True when no newline
    follows the bytes: for every chunk of a line longer than max_line except its last,
    and for output that ends without a newline, so readers can join them exactly.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.buf = bytearray()  # the start of a line whose newline has not come yet

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        limit = self.max_line
        if b"\n" not in data:
            self.buf += data
            return self._cut_long()
        if self.buf:
            data = bytes(self.buf) + data
            self.buf.clear()
        # bytes.split is the fast path: one C call for a whole read of short lines.
        lines = data.split(b"\n")
        self.buf += lines.pop()
        if max(map(len, lines)) <= limit:
            out = [(line, False) for line in lines]
        else:
            out = []
            for line in lines:
                while len(line) > limit:
                    out.append((line[:limit], True))
                    line = line[limit:]
                out.append((line, False))
        out += self._cut_long()
        return out

    def _cut_long(self) -> list[tuple[bytes, bool]]:
        """Chunks of max_line from a line that has grown past it without a newline."""
        out = []
        limit = self.max_line
        while len(self.buf) > limit:
            out.append((bytes(self.buf[:limit]), True))
            del self.buf[:limit]
        return out

    def flush(self) -> Iterator[tuple[bytes, bool]]:
        """At end of stream: what is left is output without a trailing newline."""
        if self.buf:
            yield bytes(self.buf), True
            self.buf.clear()
