"""The monitor's event loop: epoll, a callback per registered file, named timers.

The part of selectors the monitor uses, on select.epoll directly: selectors (with
collections, math, and its key objects) would cost every container ~0.6 MB and 1 ms.
One loop, run once: callbacks never run it again, so nothing waits inside one; a
wait is a timer or a continuation. A callback that raises is the fault of the part
that registered it: its on_error disables that part, and the loop goes on.
"""

from __future__ import annotations

import select
import time

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    class FileLike(Protocol):
        def fileno(self) -> int: ...

    File = int | FileLike
    Callback = Callable[[File], None]
    OnError = Callable[[BaseException], None]

EVENT_READ = select.EPOLLIN
EVENT_WRITE = select.EPOLLOUT


def _fd(fileobj: File) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


class Poller:
    def __init__(self, on_error: OnError,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """on_error: for a callback that raised and whose part named no on_error."""
        self._epoll = select.epoll()
        # fd -> (file, its callback, its part's on_error)
        self._files: dict[int, tuple[File, Callback, OnError]] = {}
        self._timers: dict[str, tuple[float, Callable[[], None], OnError]] = {}
        self.on_error = on_error
        self.clock = clock
        self.stopped = False

    # --- files ------------------------------------------------------------------------

    def register(self, fileobj: File, events: int, callback: Callback,
                 on_error: OnError | None = None) -> None:
        fd = _fd(fileobj)
        self._epoll.register(fd, events)
        self._files[fd] = (fileobj, callback, on_error or self.on_error)

    def modify(self, fileobj: File, events: int, callback: Callback,
               on_error: OnError | None = None) -> None:
        fd = _fd(fileobj)
        self._epoll.modify(fd, events)
        self._files[fd] = (fileobj, callback, on_error or self._files[fd][2])

    def unregister(self, fileobj: File) -> None:
        fd = _fd(fileobj)
        self._files.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed already: the kernel forgot it (as selectors does)

    # --- timers -----------------------------------------------------------------------

    def arm(self, name: str, seconds: float, callback: Callable[[], None],
            earlier: bool = False, on_error: OnError | None = None) -> None:
        """callback() in seconds (once). earlier: keep an armed timer that fires sooner."""
        when = self.clock() + max(0.0, seconds)
        armed = self._timers.get(name)
        if earlier and armed is not None and armed[0] <= when:
            return
        self._timers[name] = (when, callback, on_error or self.on_error)

    def cancel(self, name: str) -> None:
        self._timers.pop(name, None)

    def armed(self, name: str) -> bool:
        return name in self._timers

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve files and timers until stop()."""
        while not self.stopped:
            self.once()

    def once(self) -> None:
        wait: float | None = None
        if self._timers:
            wait = max(0.0, min(t[0] for t in self._timers.values()) - self.clock())
        events = self._epoll.poll(-1 if wait is None else wait)
        for fd, _mask in events:
            entry = self._files.get(fd)
            if entry is not None:  # an earlier callback may have unregistered it
                self._call(entry[1], entry[0], entry[2])
        if self._timers:
            now = self.clock()
            for name, (when, callback, on_error) in sorted(self._timers.items(),
                                                           key=lambda t: t[1][0]):
                if when <= now and self._timers.get(name, (0.0,))[0] == when:
                    del self._timers[name]
                    self._call(callback, None, on_error)

    def _call(self, callback: Callable[..., None], arg: object, on_error: OnError) -> None:
        try:
            if arg is None:
                callback()
            else:
                callback(arg)
        except Exception as e:
            try:
                on_error(e)
            except Exception as again:
                self.on_error(again)

    def stop(self) -> None:
        self.stopped = True
