"""One health probe at a time: `runtime exec` of the check, its output, its end.

The I/O half of health checks (sdshim.shim.health decides): the probe is a child of
the monitor, its stdout and stderr one pipe whose tail is kept. runc runs the exec'd
process as a session leader, so at the timeout the probe's whole process group goes:
its members first, while their parents (in the group) still reap them, the leader a
moment later, reaped by `runc exec`; `runc exec` itself is killed only if it has not
ended by then. A probe that put a process in a session of its own escapes that; the
container's end takes it.
"""

from __future__ import annotations

import posix

from sdshim import spawn
from sdshim.shim.health import OUTPUT_TAIL

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    import signal as _signal  # typeshed has no _signal: the same names, typed
    from collections.abc import Callable

    from sdshim.shim.runtime import Runtime
else:
    import _signal

SIGKILL = _signal.SIGKILL
LEADER_DELAY = 0.2  # between killing the group's members and its leader
RUNTIME_GRACE = 2.0  # after the leader, before `runtime exec` itself is killed


class Probe:
    """A running probe. The monitor calls output_ready() when the pipe is readable,
    reaped() when the pid ended, and kill_step() when a deadline it was given passed."""

    def __init__(self, rt: Runtime, cid: str, command: list[str], pid_file: str,
                 preexec: Callable[[], None] | None = None) -> None:
        self.pid_file = pid_file
        try:
            posix.unlink(pid_file)
        except FileNotFoundError:
            pass
        self.out_r, out_w = posix.pipe2(posix.O_CLOEXEC)
        try:
            self.pid = spawn.launch(rt.argv("exec", "--pid-file", pid_file, cid, *command),
                                    stdin=spawn.DEVNULL, stdout=out_w, stderr=out_w,
                                    preexec=preexec)
        except spawn.CommandError:
            posix.close(self.out_r)
            raise
        finally:
            posix.close(out_w)
        posix.set_blocking(self.out_r, False)
        self.rt = rt
        self.output = b""
        self.status: int | None = None  # wait status, once reaped
        self.timed_out = False
        self.kill_stage = 0

    def output_ready(self) -> bool:
        """Read what is there; False at EOF (the pipe is closed then)."""
        try:
            data = posix.read(self.out_r, 65536)
        except BlockingIOError:
            return True
        if data:
            self.output = (self.output + data)[-OUTPUT_TAIL:]
            return True
        self.close_output()
        return False

    def drain(self) -> None:
        """What is in the pipe now, then close it: a process the probe left behind,
        still holding the pipe, must not hold up the verdict."""
        for _ in range(64):  # bounded: such a process may write for ever
            if not self.output_ready() or not self._more():
                break
        self.close_output()

    def _more(self) -> bool:
        import select  # the monitor's loop has it loaded already

        return self.out_r >= 0 and bool(select.select([self.out_r], [], [], 0)[0])

    def close_output(self) -> None:
        if self.out_r >= 0:
            posix.close(self.out_r)
            self.out_r = -1

    def reaped(self, status: int) -> None:
        self.status = status

    def exit_code(self) -> int | None:
        """The check's exit code (runc exec passes it on); None if killed or not run."""
        if self.status is None or self.timed_out or not posix.WIFEXITED(self.status):
            return None
        return posix.WEXITSTATUS(self.status)

    def error(self) -> str:
        """The runtime's own error, for a probe that failed without output."""
        return self.rt.last_error()

    def kill_step(self, at_once: bool = False) -> float:
        """One step of killing a probe past its timeout; seconds until the next step,
        or 0 when there is none left. at_once: all of it now (the monitor is ending)."""
        self.timed_out = True
        self.kill_stage += 1
        leader = self._leader()
        if at_once:
            if leader:
                _kill(-leader)
            _kill(self.pid)
            return 0.0
        if self.kill_stage == 1:
            if leader:
                for pid in _group_members(leader):
                    if pid != leader:
                        _kill(pid)
                return LEADER_DELAY
            self.kill_stage = 2  # not in the container yet: the runtime goes
        if self.kill_stage == 2 and leader:
            _kill(-leader)
            return RUNTIME_GRACE
        _kill(self.pid)
        return 0.0

    def _leader(self) -> int:
        try:
            with open(self.pid_file) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in posix.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold anything, so after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid).encode():
            members.append(int(entry))
    return members


def _kill(pid: int) -> None:
    try:
        posix.kill(pid, SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
