"""The container's stdin, held open by the monitor (`-i`).

Input from attach clients is queued here and written as the container reads it, so
nothing sent before the container reads (or before it even started) is lost: the
pipe buffer holds the first 64 KiB and the queue the rest, up to LIMIT, after which
the attach server stops reading its clients until the container catches up.
"""

from __future__ import annotations

import errno

from sdshim.privapi import posix
from sdshim.shim.poller import EVENT_WRITE

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdshim.shim.poller import Poller

LIMIT = 1 << 20


class Stdin:
    def __init__(self, poller: Poller, fd: int, *, close_on_eof: bool,
                 on_drain: Callable[[], None],
                 on_failed: Callable[[BaseException], None]) -> None:
        """fd: the pipe's write end, or (terminal) a duplicate of the pty master."""
        self.poller = poller
        self.fd = fd
        posix.set_blocking(fd, False)
        # A pipe is closed at the client's EOF; a terminal gets its EOF as a ^D typed
        # in raw mode, and closing the master would hang up the container's terminal.
        self.close_on_eof = close_on_eof
        self.on_drain = on_drain
        self.on_failed = on_failed  # an unexpected error: the owner closes it, says so
        self.pending = bytearray()
        self.eof = False
        self.registered = False

    @property
    def open(self) -> bool:
        return self.fd >= 0

    @property
    def full(self) -> bool:
        return len(self.pending) >= LIMIT

    def write(self, data: bytes) -> None:
        if not self.open or self.eof:
            return
        self.pending += data
        self._guarded_flush()

    def end(self) -> None:
        """The input ended: close the container's stdin once the queue is written."""
        if not self.close_on_eof:
            return
        self.eof = True
        self._guarded_flush()

    def _guarded_flush(self) -> None:
        # Called from an attach client's callback: a failure here is stdin's, not the
        # client's.
        try:
            self._flush()
        except Exception as e:
            self.on_failed(e)

    def _flush(self, _fileobj: object = None) -> None:
        while self.pending and self.open:
            try:
                n = posix.write(self.fd, self.pending[:65536])
            except BlockingIOError:
                break
            except OSError as e:
                # EPIPE: the container closed its stdin or exited; EIO: the terminal hung
                # up. Either way nobody will read what is queued.
                if e.errno not in (errno.EPIPE, errno.EIO):
                    raise
                self.pending.clear()
                self.close()
                return
            del self.pending[:n]
        want = bool(self.pending) and self.open
        if want != self.registered:
            if want:
                self.poller.register(self.fd, EVENT_WRITE, self._flush,
                                     on_error=self.on_failed)
            else:
                self.poller.unregister(self.fd)
            self.registered = want
        if not self.pending:
            if self.eof:
                self.close()
            self.on_drain()

    def close(self) -> None:
        if not self.open:
            return
        if self.registered:
            self.poller.unregister(self.fd)
            self.registered = False
        try:
            posix.close(self.fd)
        except OSError:
            pass
        self.fd = -1
