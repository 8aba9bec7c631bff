"""The child reaper: every child of the monitor (it is a child subreaper) is reaped here.

The runtime commands the shell started are continuations on their pids: their
status goes to the callback waiting for it, once. Every other child (the
container's process, whatever it orphaned) goes to on_other, which decides what to
keep (sdshim.shim.lifecycle.Supervision keeps statuses only while the container's
pid is unknown): the reaper itself keeps nothing, so the table cannot grow.
"""

from __future__ import annotations

from sdshim.privapi import posix

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable


class ChildReaper:
    def __init__(self, on_other: Callable[[int, int], None],
                 on_error: Callable[[BaseException], None]) -> None:
        """on_error: a callback raised; the others still run."""
        self.on_other = on_other
        self.on_error = on_error
        self.waiting: dict[int, Callable[[int], None]] = {}  # pid -> continuation(status)

    def expect(self, pid: int, continuation: Callable[[int], None]) -> None:
        """continuation(wait status) once pid is reaped. Call it right after starting
        pid: no reap runs in between (reaping happens in the loop, on SIGCHLD)."""
        self.waiting[pid] = continuation

    def reap(self) -> None:
        """Every child that has ended, without blocking. The others first: a container
        that ended together with the runtime command that started it is known to have
        ended when that command's continuation runs."""
        ended = []
        while True:
            try:
                pid, status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended.append((pid, status))
        continuations = []
        for pid, status in ended:
            continuation = self.waiting.pop(pid, None)
            if continuation is None:
                self._call(self.on_other, pid, status)
            else:
                continuations.append((continuation, status))
        for continuation, status in continuations:
            self._call(continuation, status)

    def _call(self, callback: Callable[..., None], *args: int) -> None:
        try:
            callback(*args)
        except Exception as e:
            self.on_error(e)
