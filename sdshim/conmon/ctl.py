"""The control FIFO `<bundle>/ctl`: lines `TYPE A B`, `1 ROWS COLS` resizes the
terminal, `2 0 0` reopens the log file. podman opens it O_WRONLY|O_NONBLOCK, which
needs a reader: the monitor keeps it open for reading, and a writer of its own so that
a client closing it is no EOF. `winsz` is made too, as conmon does (podman removes it).
"""

from __future__ import annotations

import posix

from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdshim.shim.poller import Poller


def _fifo(path: str) -> tuple[int, int]:
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
    posix.mkfifo(path, 0o660)
    r = posix.open(path, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    w = posix.open(path, posix.O_WRONLY | posix.O_CLOEXEC)
    return r, w


class ControlFifo:
    def __init__(self, poller: Poller, directory: str,
                 on_resize: Callable[[int, int], None], on_reopen: Callable[[], None]) -> None:
        self.poller = poller
        self.on_resize = on_resize
        self.on_reopen = on_reopen
        self.buf = b""
        self.fds = [*_fifo(directory + "/ctl"), *_fifo(directory + "/winsz")]
        poller.register(self.fds[0], EVENT_READ, self._on_ready)
        poller.register(self.fds[2], EVENT_READ, self._on_winsz)

    def _on_ready(self, _f: object) -> None:
        try:
            self.buf += posix.read(self.fds[0], 4096)
        except BlockingIOError:
            return
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            self.handle(line)

    def _on_winsz(self, _f: object) -> None:
        # conmon's own older resize channel: `ROWS COLS` lines
        try:
            data = posix.read(self.fds[2], 4096)
        except BlockingIOError:
            return
        for line in data.splitlines():
            parts = line.split()
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                self.on_resize(int(parts[0]), int(parts[1]))

    def handle(self, line: bytes) -> None:
        parts = line.split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return  # conmon ignores what it cannot parse
        kind, a, b = (int(p) for p in parts)
        if kind == 1:
            self.on_resize(a, b)
        elif kind == 2:
            self.on_reopen()

    def close(self) -> None:
        for fd in (self.fds[0], self.fds[2]):
            self.poller.unregister(fd)
        for fd in self.fds:
            posix.close(fd)
