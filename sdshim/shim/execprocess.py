"""The lifecycle of an `sdshim exec` process, as a state machine without I/O.

    created --start--> starting --exec'd--> running --stop--> stopping
       |  (start-wait timer, stop: fail)   |     \\--timeout: SIGKILL--/
       +---------- any failure ------------+--> exited <-- (exiting) <-- reaped

The sibling of sdshim.shim.container's lifecycle (containerd's exec_state.go beside
init_state.go), sharing the vocabulary and the supervision of one process
(sdshim.shim.lifecycle), not a subclass: there is nothing to create (`runc exec
--detach` makes and starts the process in one go, at start), a client that never asks
for the start is given up on, --timeout kills it, and the end never deletes the
container from the runtime.
"""

from __future__ import annotations

from sdshim.exits import EXIT_TIMEOUT
from sdshim.shim import runtime
from sdshim.shim.lifecycle import (
    EXEC_CHECK_TIMER,
    EXEC_FAILURE_DRAIN,
    SIGKILL,
    SIGTERM,
    START_WAIT_TIMER,
    STOP_SIGNALS,
    STOP_TIMER,
    TIMEOUT_TIMER,
    Action,
    Arm,
    Cancel,
    CheckExec,
    Drain,
    Drained,
    Event,
    ExecChecked,
    Finish,
    Kill,
    Notify,
    Reaped,
    Refused,
    Reply,
    Request,
    RunRuntime,
    RuntimeDone,
    Signal,
    Supervision,
    TimerFired,
    WriteState,
    exit_result,
    failure,
    refuse,
)

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any

CREATED = "created"  # waits for its client's start request (or --start)
STARTING = "starting"  # runc exec under way, or the command not yet exec'd
RUNNING = "running"
STOPPING = "stopping"
EXITING = "exiting"
EXITED = "exited"

# How long an exec created without --start waits for its client's start request: a
# client that died in between must not leave the unit behind for ever.
START_WAIT = 60.0


class ExecLifecycle:
    def __init__(self, name: str, exec_id: str, *, start: bool, timeout: float,
                 stop_signal: int, stop_timeout: float) -> None:
        self.name = name
        self.exec_id = exec_id
        self.what = f"Exec {exec_id} in container {name}"
        self.state = "new"
        self.proc = Supervision(stop_signal, stop_timeout)
        self.start_requested = start
        self.timeout = timeout  # --timeout: SIGKILL after this many seconds (0: never)
        self.timed_out = False
        self.ready_sent = False
        self.busy = ""
        self.start_ident = 0
        self.draining = False

    def begin(self) -> list[Action]:
        self.state = CREATED
        if self.start_requested:
            return self._start()
        self.ready_sent = True
        return [Notify(READY=1, STATUS=f"{self.what} created"),
                Arm(START_WAIT_TIMER, START_WAIT)]

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, Reaped):
            if not self.proc.reaped(event.pid, event.status) or self.busy:
                return []
            return self._ended() if self.state in (STARTING, RUNNING, STOPPING) else []
        if isinstance(event, RuntimeDone):
            return self._runtime_done(event)
        if isinstance(event, ExecChecked):
            return self._exec_checked(event.confirmed)
        if isinstance(event, TimerFired):
            return self._timer(event.name)
        if isinstance(event, Drained):
            return self._drained(event.last_stderr)
        if isinstance(event, Signal):
            if event.signum in STOP_SIGNALS:
                return self._stop(0 if event.signum == SIGTERM else event.signum, None)
            return [] if self.state in (EXITING, EXITED) else self.proc.deliver(event.signum)
        if isinstance(event, Request):
            try:
                return self._request(event)
            except Refused as e:
                return [Reply(event.ident, {"ok": False, "error": str(e)})]
        raise TypeError(f"not an event: {event!r}")

    def _start(self) -> list[Action]:
        self.state = STARTING
        self.start_requested = True
        self.busy = "exec"
        return [Cancel(START_WAIT_TIMER), RunRuntime("exec")]

    def _runtime_done(self, event: RuntimeDone) -> list[Action]:
        self.busy = ""
        if self.state == EXITED or event.verb != "exec":
            return []
        if event.error:
            return self._fail(event.error)
        self.proc.known(event.pid)
        actions: list[Action] = [WriteState({"pid": event.pid})]
        if self.timeout:
            actions.append(Arm(TIMEOUT_TIMER, self.timeout))
        if self.proc.exited:
            return actions + self._ended()
        return [*actions, CheckExec()]

    def _exec_checked(self, confirmed: bool) -> list[Action]:
        if self.state != STARTING or self.busy or self.proc.exited:
            return []
        if confirmed:
            self.proc.confirmed = True
            return self._running()
        return self.proc.check_again() or self._running()

    def _running(self) -> list[Action]:
        self.state = RUNNING
        actions: list[Action] = [
            WriteState({"status": RUNNING}, stamp=("started_at",)),
            Notify(**({} if self.ready_sent else {"READY": 1}),
                   STATUS=f"{self.what} running, pid {self.proc.pid}")]
        self.ready_sent = True
        if self.start_ident:
            actions.append(Reply(self.start_ident, {"ok": True, "error": "",
                                                    "pid": self.proc.pid}))
            self.start_ident = 0
        actions += self.proc.after_known()
        if self.proc.stop_requested:
            self.state = STOPPING
        return actions

    def _ended(self) -> list[Action]:
        stamp = ("started_at",) if self.state == STARTING else ()  # it did start
        self.state = EXITING
        actions: list[Action] = [Cancel(STOP_TIMER), Cancel(EXEC_CHECK_TIMER),
                                 Cancel(TIMEOUT_TIMER), WriteState({"status": EXITING}, stamp)]
        if self.proc.may_be_exec_failure():
            self.draining = True
            return [*actions, Drain(EXEC_FAILURE_DRAIN)]
        return actions + self._record()

    def _drained(self, last_stderr: bytes) -> list[Action]:
        if not self.draining or self.state != EXITING:
            return []
        self.draining = False
        line = last_stderr.strip()
        if runtime.is_exec_failure(line):
            return self._fail(line.decode(errors="replace"))
        return self._record()

    def _record(self) -> list[Action]:
        assert self.proc.status is not None
        result: dict[str, Any] = exit_result(self.proc.status)
        result.update(self.proc.stop_fields())
        code = int(result["exit_code"])
        # It ran, however briefly: the unit was started (the exit is the record's).
        ready: list[Action] = [] if self.ready_sent else [Notify(READY=1)]
        self.ready_sent = True
        if self.timed_out:
            result.update(exit_code=EXIT_TIMEOUT, timed_out=True, timeout=self.timeout)
            code = EXIT_TIMEOUT
        return ready + self._finish(result, code, {"ok": True, "error": "",
                                                   "pid": self.proc.pid})

    def _fail(self, message: str) -> list[Action]:
        result, code = failure(message, "no")
        return self._finish(result, code, {"ok": False, "error": result["error"],
                                           "pid": self.proc.pid})

    def _finish(self, result: dict[str, Any], code: int,
                reply: dict[str, Any]) -> list[Action]:
        self.state = EXITED
        actions: list[Action] = [Cancel(STOP_TIMER), Cancel(EXEC_CHECK_TIMER),
                                 Cancel(TIMEOUT_TIMER), Cancel(START_WAIT_TIMER)]
        if self.start_ident:
            actions.append(Reply(self.start_ident, reply))
            self.start_ident = 0
        return [*actions, Finish(result, code, self.what, delete=False)]

    def _timer(self, name: str) -> list[Action]:
        if self.state in (EXITING, EXITED):
            return []
        if name == START_WAIT_TIMER and self.state == CREATED:
            return self._fail(f"nobody asked to start the command within {START_WAIT:.0f}s")
        if name == STOP_TIMER:
            return self.proc.escalate()
        if name == TIMEOUT_TIMER and self.proc.pid and not self.proc.exited:
            self.timed_out = True
            return [Kill(SIGKILL)]
        if name == EXEC_CHECK_TIMER and self.state == STARTING and not self.busy:
            return [CheckExec()]
        return []

    def _stop(self, signum: int, timeout: float | None) -> list[Action]:
        if self.state == CREATED:  # not started: there is nothing to stop
            return self._fail("stopped before the command was started")
        if self.state == STARTING:
            return self.proc.stop(signum, timeout, now=False)
        if self.state in (RUNNING, STOPPING):
            self.state = STOPPING
            return self.proc.stop(signum, timeout, now=True)
        return []

    def _request(self, req: Request) -> list[Action]:
        if req.op == "start":
            if self.state != CREATED:
                raise refuse(self.what, self.state, "start")
            self.start_ident = req.ident
            return self._start()
        if req.op == "kill":
            if self.state not in (STARTING, RUNNING, STOPPING) or not self.proc.pid:
                raise refuse(self.what, self.state, "kill")
            return [*self.proc.deliver(req.signal or SIGTERM), Reply(req.ident, {"ok": True})]
        if req.op == "stop":
            if self.state in (EXITING, EXITED):
                raise refuse(self.what, self.state, "stop")
            return [Reply(req.ident, {"ok": True}), *self._stop(req.signal, req.timeout)]
        raise Refused(f"unknown request {req.op!r}")
