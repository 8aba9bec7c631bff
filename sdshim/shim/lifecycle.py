"""The vocabulary of the monitor's two lifecycles (sdshim.shim.container and
sdshim.shim.execprocess): the events they take, the actions they return, and the
supervision of one process that both share by composition.

No I/O here: a lifecycle is a pure function of the events it was given (the clock
comes in as timer events), so tests drive it with scripted events and a fake clock.
The I/O shell (sdshim.shim.monitor) turns the world into events and carries out the
actions; the lifecycles never see a file descriptor.
"""

from __future__ import annotations

from sdshim import signals
from sdshim.exits import EXIT_NO_RESTART
from sdshim.shim import runtime

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any

SIGKILL = signals.number("SIGKILL")
SIGTERM = signals.number("SIGTERM")
# The signals the monitor forwards (systemd's stop, the terminal's, the user's two).
FORWARDED = tuple(signals.number(s) for s in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP",
                                               "SIGUSR1", "SIGUSR2"))
# Stop signals: the process gets its stop signal (SIGTERM) or this one, then SIGKILL.
STOP_SIGNALS = FORWARDED[:3]

# Timers, one per purpose.
STOP_TIMER = "stop-escalation"  # a stop's SIGKILL
EXEC_CHECK_TIMER = "exec-check"  # look again whether the command has been exec'd
START_WAIT_TIMER = "start-wait"  # an exec created without --start waits for its client
TIMEOUT_TIMER = "exec-timeout"  # sdshim exec --timeout
READY_TIMER = "ready-wait"  # `sdshim start` waits for --sdnotify container|healthy

# After start, how long to look for the runtime's init becoming the command (an execve
# failure comes after `runc start` returned), at growing intervals: first at once.
EXEC_CHECK_BUDGET = 2.0
EXEC_CHECK_FIRST = 0.002
EXEC_CHECK_LONGEST = 0.1
# After an exit that may be an execve failure: how long the output may take to arrive.
EXEC_FAILURE_DRAIN = 0.5


# --- events (the shell -> a lifecycle) ------------------------------------------------

def _slots(obj: object) -> tuple[str, ...]:
    return tuple(getattr(type(obj), "__slots__", ()))


class Event:
    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in _slots(self))
        return f"{type(self).__name__}({fields})"


class Reaped(Event):
    """A child that is not one of the shell's runtime commands was reaped: the
    container's process, or something it orphaned."""

    __slots__ = ("pid", "status")

    def __init__(self, pid: int, status: int) -> None:
        self.pid = pid
        self.status = status  # the raw wait status


class RuntimeDone(Event):
    """A runtime command (create, run, start, exec) ended; error is '' on success, pid
    the process it made (create, run, exec), read from its pid file."""

    __slots__ = ("error", "pid", "verb")

    def __init__(self, verb: str, error: str = "", pid: int = 0) -> None:
        self.verb = verb
        self.error = error
        self.pid = pid


class Request(Event):
    """A control-socket request, already checked for shape (sdshim.shim.control)."""

    __slots__ = ("ident", "op", "signal", "timeout")

    def __init__(self, op: str, signal: int = 0, timeout: float | None = None,
                 ident: int = 0) -> None:
        self.op = op
        self.signal = signal
        self.timeout = timeout
        self.ident = ident  # the connection to answer


class Signal(Event):
    __slots__ = ("signum",)

    def __init__(self, signum: int) -> None:
        self.signum = signum


class TimerFired(Event):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class ExecChecked(Event):
    """Whether the process is the command now (no longer the runtime's init)."""

    __slots__ = ("confirmed",)

    def __init__(self, confirmed: bool) -> None:
        self.confirmed = confirmed


class Ready(Event):
    """The container is ready: its own READY=1 (--sdnotify container, through the
    notify proxy), or its first passing health check (--sdnotify healthy)."""

    __slots__ = ()


class Drained(Event):
    """The output has been read (pipes closed, or silent for the time asked); the
    last stderr line, for an execve failure's message."""

    __slots__ = ("last_stderr",)

    def __init__(self, last_stderr: bytes = b"") -> None:
        self.last_stderr = last_stderr


# --- actions (a lifecycle -> the shell) -----------------------------------------------

class Action:
    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in _slots(self))
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, k) == getattr(other, k) for k in _slots(self))

    __hash__ = None  # type: ignore[assignment]


class RunRuntime(Action):
    """Start the runtime verb; RuntimeDone when it ended (a continuation on its pid)."""

    __slots__ = ("verb",)

    def __init__(self, verb: str) -> None:
        self.verb = verb


class Kill(Action):
    __slots__ = ("signum",)

    def __init__(self, signum: int) -> None:
        self.signum = signum


class WriteState(Action):
    """Update state.json; the keys in stamp get the current time."""

    __slots__ = ("changes", "stamp")

    def __init__(self, changes: dict[str, Any], stamp: tuple[str, ...] = ()) -> None:
        self.changes = changes
        self.stamp = stamp


class Notify(Action):
    """sd_notify fields (READY, STATUS)."""

    __slots__ = ("fields",)

    def __init__(self, **fields: str | int) -> None:
        self.fields = fields


class Arm(Action):
    """(Re)arm the named timer to fire in seconds; earlier: keep it if it fires sooner."""

    __slots__ = ("earlier", "name", "seconds")

    def __init__(self, name: str, seconds: float, earlier: bool = False) -> None:
        self.name = name
        self.seconds = seconds
        self.earlier = earlier


class Cancel(Action):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class CheckExec(Action):
    """Look whether the process has exec'd its command; ExecChecked."""

    __slots__ = ()


class Drain(Action):
    """Read the output until the pipes close or stay silent for seconds; Drained."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Reply(Action):
    """Answer the control request ident."""

    __slots__ = ("ident", "reply")

    def __init__(self, ident: int, reply: dict[str, Any]) -> None:
        self.ident = ident
        self.reply = reply


class Finish(Action):
    """The end: (delete the runtime's state,) drain the output, write exit.json, tell
    systemd and the journal (describe()), send attach clients the record, exit with code."""

    __slots__ = ("code", "delete", "result", "what")

    def __init__(self, result: dict[str, Any], code: int, what: str,
                 delete: bool = True) -> None:
        self.result = result
        self.code = code
        self.what = what  # the summary's subject: "Container web"
        self.delete = delete


# --- shared by both lifecycles --------------------------------------------------------

class Refused(Exception):
    """A request that is invalid in the current state; the message names the state."""


def refuse(what: str, state: str, op: str) -> Refused:
    return Refused(f"{what} is {state}: cannot {op}")


def exit_result(status: int) -> dict[str, Any]:
    """exit_code (128+N for signal N) and signal name from a wait status."""
    if status & 0x7F not in (0, 0x7F):  # WIFSIGNALED, without posix
        sig = status & 0x7F
        return {"error": None, "exit_code": 128 + sig, "signal": signals.name(sig)}
    return {"error": None, "exit_code": (status >> 8) & 0xFF, "signal": None}


def exit_code_of(status: int) -> int:
    """As Popen's returncode: the exit status, or -N for signal N."""
    if status & 0x7F not in (0, 0x7F):
        return -(status & 0x7F)
    return (status >> 8) & 0xFF


def failure(message: str, restart: str) -> tuple[dict[str, Any], int]:
    """The record and exit code of a container or process that could not be run."""
    message = runtime.clean_message(message)
    code = runtime.classify(message)
    if restart != "no":
        code = EXIT_NO_RESTART  # it cannot run: systemd must not try again
    return {"error": message, "exit_code": runtime.classify(message), "signal": None}, code


class Supervision:
    """One supervised process (a container's init, an exec'd process): its pid, its
    exit status, signals held until it is known, a stop and its escalation, and the
    check that the runtime's init has become the command."""

    def __init__(self, stop_signal: int, stop_timeout: float) -> None:
        self.stop_signal = stop_signal  # the default one (--stop-signal)
        self.stop_timeout = stop_timeout
        self.pid = 0
        self.status: int | None = None  # wait status once reaped
        self.early: dict[int, int] = {}  # reaped before the pid was known: pid -> status
        self.pending: list[int] = []  # signals for it once it runs
        self.stop_requested = 0  # the signal a stop sent (0: no stop)
        self.escalated = False  # SIGKILL sent because the stop timeout passed
        self.escalate_pending = False  # the timeout passed before the pid was known
        self.confirmed = False  # the init has become the command
        self.check_spent = 0.0  # seconds of EXEC_CHECK_BUDGET used
        self.check_delay = EXEC_CHECK_FIRST

    @property
    def exited(self) -> bool:
        return self.status is not None

    def reaped(self, pid: int, status: int) -> bool:
        """A reaped child; True if it is the process. Until the pid is known every
        status is kept (it may be the process's, reaped before the runtime said so);
        after that, only the process's: orphans are forgotten at once."""
        if not self.pid:
            self.early[pid] = status
            return False
        if pid != self.pid or self.exited:
            return False
        self.status = status
        return True

    def known(self, pid: int) -> bool:
        """The runtime has said which pid is the process; True if it has ended already."""
        self.pid = pid
        status = self.early.pop(pid, None)
        self.early.clear()
        if status is not None and self.status is None:
            self.status = status
        return self.exited

    def deliver(self, signum: int) -> list[Action]:
        """Send signum now, or once the process is known to run."""
        if self.exited:
            return []
        if not self.pid:
            self.pending.append(signum)
            return []
        return [Kill(signum)]

    def flush_pending(self) -> list[Action]:
        actions: list[Action] = []
        for sig in self.pending:
            actions += self.deliver(sig)
        self.pending.clear()
        return actions

    def stop(self, signum: int, timeout: float | None, now: bool) -> list[Action]:
        """A stop: the signal (now, or once running) and the escalation timer."""
        sig = signum or self.stop_signal
        self.stop_requested = sig
        actions = self.deliver(sig) if now else self._hold(sig)
        if sig != SIGKILL:
            seconds = self.stop_timeout if timeout is None else timeout
            actions.append(Arm(STOP_TIMER, seconds, earlier=True))
        return actions

    def kill_now(self) -> list[Action]:
        """A stop of a process that never started: SIGKILL, nothing graceful."""
        self.stop_requested = SIGKILL
        self.pending.clear()
        return [Cancel(STOP_TIMER), *self.deliver(SIGKILL)]

    def _hold(self, sig: int) -> list[Action]:
        self.pending.append(sig)
        return []

    def escalate(self) -> list[Action]:
        if self.exited:
            return []
        if not self.pid:
            self.escalate_pending = True
            return []
        self.escalated = True
        return [Kill(SIGKILL)]

    def after_known(self) -> list[Action]:
        """What was held for the pid, once the process runs (or is created)."""
        actions = self.flush_pending()
        if self.escalate_pending:
            self.escalate_pending = False
            actions += self.escalate()
        return actions

    def check_again(self) -> list[Action]:
        """The next exec check, at a growing interval, or [] when the budget is spent."""
        if self.check_spent >= EXEC_CHECK_BUDGET:
            return []
        delay = self.check_delay
        self.check_spent += delay
        self.check_delay = min(delay * 2, EXEC_CHECK_LONGEST)
        return [Arm(EXEC_CHECK_TIMER, delay)]

    def may_be_exec_failure(self) -> bool:
        """Whether the exit may be the runtime init's failed execve (runc 1.1 exits 1
        after printing the error, other versions 255)."""
        return (not self.confirmed and self.status is not None
                and exit_code_of(self.status) in (1, 255))

    def stop_fields(self) -> dict[str, Any]:
        if not self.stop_requested:
            return {}
        return {"stop_signal": signals.name(self.stop_requested),
                "stop_timed_out": self.escalated}


def describe(result: dict[str, Any], what: str) -> str:
    """The summary of an ended process, e.g. 'Container web exited with status 0'."""
    if result.get("error"):
        return f"{what} failed: {result['error']}"
    if result.get("signal"):
        text = f"{what} killed by {result['signal']}"
    elif result.get("exit_code") is None:  # systemd did not say (the stop-post step)
        text = f"{what} ended, status unknown"
    else:
        text = f"{what} exited with status {result['exit_code']}"
    if result.get("oom_killed"):
        text += " (out of memory)"
    if result.get("watchdog"):
        text += " (watchdog timeout: no keep-alive in time)"
    elif result.get("stop_timed_out"):
        text += f" (did not stop on {result.get('stop_signal')} in time)"
    if result.get("timed_out"):
        text += f" (timed out after {result['timeout']:g}s)"
    return text
