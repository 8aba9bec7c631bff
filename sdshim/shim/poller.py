"""The monitor's event loop's core: epoll, and a callback per registered file.

The part of selectors the monitor uses, on select.epoll directly: selectors (with
collections, math, and its key objects) would cost every container ~0.6 MB and 1 ms.
"""

from __future__ import annotations

import select

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    class FileLike(Protocol):
        def fileno(self) -> int: ...

    File = int | FileLike
    Callback = Callable[[File], None]

EVENT_READ = select.EPOLLIN
EVENT_WRITE = select.EPOLLOUT


def _fd(fileobj: File) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


class Poller:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._files: dict[int, tuple[File, Callback]] = {}  # fd -> (file, its callback)

    def register(self, fileobj: File, events: int, callback: Callback) -> None:
        fd = _fd(fileobj)
        self._epoll.register(fd, events)
        self._files[fd] = (fileobj, callback)

    def modify(self, fileobj: File, events: int, callback: Callback) -> None:
        fd = _fd(fileobj)
        self._epoll.modify(fd, events)
        self._files[fd] = (fileobj, callback)

    def unregister(self, fileobj: File) -> None:
        fd = _fd(fileobj)
        del self._files[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed already: the kernel forgot it (as selectors does)

    def poll(self, timeout: float | None) -> list[tuple[Callback, File]]:
        """(callback, file) for each ready file, after waiting at most timeout seconds
        (None: for ever). Errors and hang-ups count as ready, so reads see them."""
        events = self._epoll.poll(-1 if timeout is None else max(timeout, 0.0))
        ready = []
        for fd, _mask in events:
            entry = self._files.get(fd)
            if entry is not None:
                ready.append((entry[1], entry[0]))
        return ready
