"""The lifecycle of a container's process, as a state machine without I/O.

    creating --create ok--> created --start--> starting --exec'd--> running --stop--> stopping
       |  (run --detach: straight to starting)     |                  |                 |
       +--------------------- any failure ---------+---> exited  <----+-- reaped -------+
                                                           ^
                        reaped (after created/starting) -> exiting -> (drained) -+

(docs/design.md draws it whole.) The shell (sdshim.shim.monitor) feeds it events and
carries out what it returns; sdshim.shim.lifecycle has the vocabulary. Modelled on
containerd's runc shim (process/init_state.go): one state at a time, and a request a
state does not allow is refused with the state's name.
"""

from __future__ import annotations

from sdshim import signals
from sdshim.exits import EXIT_NO_RESTART
from sdshim.shim import runtime
from sdshim.shim.lifecycle import (
    EXEC_CHECK_TIMER,
    EXEC_FAILURE_DRAIN,
    READY_TIMER,
    SIGTERM,
    STOP_SIGNALS,
    STOP_TIMER,
    Action,
    Arm,
    Cancel,
    CheckExec,
    Drain,
    Drained,
    Event,
    ExecChecked,
    Finish,
    Notify,
    Ready,
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
    describe,
    exit_result,
    failure,
    refuse,
)

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any

CREATING = "creating"  # the runtime's create (or run --detach) is under way
CREATED = "created"  # the init waits for start (sdshim create)
WATCHDOG_SIGNAL = signals.number("SIGABRT")  # systemd's WatchdogSignal= default
STARTING = "starting"  # runc start under way, or the command not yet exec'd
RUNNING = "running"
STOPPING = "stopping"  # the stop signal is sent; SIGKILL when the timer fires
EXITING = "exiting"  # it ended; the output drains before the record is written
EXITED = "exited"  # recorded (Finish returned); nothing more happens


class ContainerLifecycle:
    def __init__(self, name: str, *, start: bool, run_detached: bool, restart: str,
                 stop_signal: int, stop_timeout: float, ready_by_monitor: bool = True,
                 ready_timeout: float = 90.0, watchdog: bool = False) -> None:
        """start: --start (create, then start at once); run_detached: do both with one
        `run --detach` (a runtime that places the process in its cgroup itself).
        ready_by_monitor: READY=1 once the command runs (--sdnotify monitor); else
        once a Ready event comes (container, healthy), and a start request is answered
        then, or refused after ready_timeout seconds (the unit's TimeoutStartSec).
        watchdog: the unit has WatchdogSec=, so SIGABRT is systemd's watchdog."""
        self.name = name
        self.what = f"Container {name}"
        self.state = "new"
        self.proc = Supervision(stop_signal, stop_timeout)
        self.start_requested = start
        self.run_detached = start and run_detached
        self.restart = restart
        self.final = False  # a stop the user asked for: no restart
        self.started = False  # the runtime was told to start the command
        self.ready_sent = False
        self.busy = ""  # the runtime verb under way, if any
        self.start_ident = 0  # the start request to answer once running (0: none)
        self.draining = False  # waiting for the output before deciding how it ended
        self.watchdog = watchdog
        self.watchdog_fired = False
        self.ready_by_monitor = ready_by_monitor
        self.ready_timeout = ready_timeout
        self.app_ready = False  # the started container is ready (and systemd was told)
        self.ready_pending = False  # it said so before its start was confirmed

    # --- entry points ----------------------------------------------------------------

    def begin(self) -> list[Action]:
        self.state = CREATING
        self.busy = "run" if self.run_detached else "create"
        return [RunRuntime(self.busy)]

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, Reaped):
            return self._reaped(event)
        if isinstance(event, RuntimeDone):
            return self._runtime_done(event)
        if isinstance(event, ExecChecked):
            return self._exec_checked(event.confirmed)
        if isinstance(event, TimerFired):
            return self._timer(event.name)
        if isinstance(event, Drained):
            return self._drained(event.last_stderr)
        if isinstance(event, Signal):
            return self._signal(event.signum)
        if isinstance(event, Ready):
            return self._ready()
        if isinstance(event, Request):
            try:
                return self._request(event)
            except Refused as e:
                return [Reply(event.ident, {"ok": False, "error": str(e)})]
        raise TypeError(f"not an event: {event!r}")

    # --- the process ------------------------------------------------------------------

    def _reaped(self, event: Reaped) -> list[Action]:
        if not self.proc.reaped(event.pid, event.status):
            return []  # an orphan, or kept until the runtime names the container's pid
        if self.busy:  # the runtime command still runs: its end decides (see _runtime_done)
            return []
        if self.state == STARTING:
            return self._ended()
        if self.state in (CREATED, RUNNING, STOPPING):
            return self._ended()
        return []

    def _runtime_done(self, event: RuntimeDone) -> list[Action]:
        verb = event.verb
        self.busy = ""
        if self.state == EXITED:
            return []
        if verb in ("create", "run"):
            if event.error:
                return self._fail(event.error)
            self.proc.known(event.pid)
            actions: list[Action] = [WriteState({"status": CREATED, "pid": event.pid})]
            if verb == "run":  # created and started by one runtime command
                self.started = True
                return actions + self._confirm()
            if self.start_requested and not self.proc.exited:
                self.state = STARTING
                self.started = True
                self.busy = "start"
                return [*actions, RunRuntime("start")]
            self.state = CREATED
            self.ready_sent = True
            actions.append(Notify(READY=1, STATUS=f"{self.what} created, pid {event.pid}"))
            if self.proc.stop_requested:  # stopped while being created: never started
                self.state = STOPPING
                actions += self.proc.kill_now()
            if self.proc.exited:
                actions += self._ended()
            return actions
        if verb == "start":
            if event.error and not self.proc.exited:
                return self._fail(event.error)
            return self._confirm()
        return []

    def _confirm(self) -> list[Action]:
        """The runtime has started the command: make sure the init became it (an execve
        failure comes after `start` returned) before calling it running."""
        self.state = STARTING
        if self.proc.exited:
            return self._ended()
        return [CheckExec()]

    def _exec_checked(self, confirmed: bool) -> list[Action]:
        if self.state != STARTING or self.busy or self.proc.exited:
            return []
        if confirmed:
            self.proc.confirmed = True
            return self._running()
        return self.proc.check_again() or self._running()  # budget spent: it runs

    def _running(self) -> list[Action]:
        self.state = RUNNING
        ready = not self.ready_sent if self.ready_by_monitor else self.ready_pending
        actions: list[Action] = [
            WriteState({"status": RUNNING}, stamp=("started_at",)),
            Notify(**({"READY": 1} if ready else {}),
                   STATUS=f"{self.what} running, pid {self.proc.pid}")]
        if self.ready_by_monitor or ready:
            self.ready_sent = self.app_ready = True
        if self.start_ident:
            if self.app_ready:
                actions.append(Reply(self.start_ident, {"ok": True, "error": "",
                                                        "pid": self.proc.pid}))
                self.start_ident = 0
            else:
                actions.append(Arm(READY_TIMER, self.ready_timeout))
        actions += self.proc.after_known()
        if self.proc.stop_requested:
            self.state = STOPPING
        return actions

    def _ready(self) -> list[Action]:
        """The container says it is ready (again, after RELOADING=1: passed on too)."""
        if self.ready_by_monitor:
            return []
        if self.state in (CREATING, STARTING):
            self.ready_pending = True  # told once the start is confirmed
            return []
        if self.state not in (RUNNING, STOPPING):
            return []
        self.ready_sent = self.app_ready = True
        actions: list[Action] = [Notify(READY=1)]
        if self.start_ident:
            actions += [Cancel(READY_TIMER),
                        Reply(self.start_ident, {"ok": True, "error": "",
                                                 "pid": self.proc.pid})]
            self.start_ident = 0
        return actions

    def _ended(self) -> list[Action]:
        """The process was reaped: find out how it ended, then record it."""
        stamp = ("started_at",) if self.state == STARTING else ()  # it did start
        self.state = EXITING
        actions: list[Action] = [Cancel(STOP_TIMER), Cancel(EXEC_CHECK_TIMER),
                                 WriteState({"status": EXITING}, stamp)]
        if self.started and self.proc.may_be_exec_failure():
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
        if self.watchdog_fired:
            result["watchdog"] = True
        code = int(result["exit_code"])
        # It ran, however briefly: the unit was started (the exit is the record's);
        # unless it had to say it was ready and did not: then the start fails.
        ready: list[Action] = [] if self.ready_sent or not self.ready_by_monitor \
            else [Notify(READY=1)]
        self.ready_sent = True
        if self.restart != "no" and self.final:
            code = EXIT_NO_RESTART
        reply: dict[str, Any] = {"ok": True, "error": "", "pid": self.proc.pid}
        if not self.app_ready and not self.ready_by_monitor:
            reply = {"ok": False, "pid": self.proc.pid,
                     "error": f"{describe(result, self.what)} before it was ready"}
        return ready + self._finish(result, code, reply)

    def _fail(self, message: str) -> list[Action]:
        result, code = failure(message, self.restart)
        return self._finish(result, code, {"ok": False, "error": result["error"],
                                           "pid": self.proc.pid})

    def _finish(self, result: dict[str, Any], code: int,
                reply: dict[str, Any]) -> list[Action]:
        self.state = EXITED
        actions: list[Action] = [Cancel(STOP_TIMER), Cancel(EXEC_CHECK_TIMER),
                                 Cancel(READY_TIMER)]
        if self.start_ident:
            actions.append(Reply(self.start_ident, reply))
            self.start_ident = 0
        return [*actions, Finish(result, code, self.what, delete=True)]

    # --- timers and signals ----------------------------------------------------------

    def _timer(self, name: str) -> list[Action]:
        if name == STOP_TIMER and self.state not in (EXITING, EXITED):
            return self.proc.escalate()
        if name == EXEC_CHECK_TIMER and self.state == STARTING and not self.busy:
            return [CheckExec()]
        if name == READY_TIMER and self.start_ident and not self.app_ready and \
                self.state in (RUNNING, STOPPING):
            reply = Reply(self.start_ident, {
                "ok": False, "pid": self.proc.pid,
                "error": f"{self.what} did not get ready within {self.ready_timeout:g}s "
                         "(TimeoutStartSec); it is being stopped"})
            self.start_ident = 0
            return [reply, *self._stop(0, None)]
        return []

    def _signal(self, signum: int) -> list[Action]:
        if signum == WATCHDOG_SIGNAL and self.watchdog and self.state not in (EXITING, EXITED):
            # systemd's watchdog fired (WatchdogSignal=): the abort goes on to the
            # container (a core dump, if it handles it), SIGKILL after the stop timeout.
            # Not final: the unit's result is "watchdog", and Restart= applies.
            self.watchdog_fired = True
            return self._stop(signum, None)
        if signum in STOP_SIGNALS:
            # SIGTERM is systemd's (and the usual) way to say stop: the container gets
            # its own stop signal. SIGINT and SIGQUIT are passed on as they are.
            return self._stop(0 if signum == SIGTERM else signum, None)
        if self.state in (EXITING, EXITED):
            return []
        return self.proc.deliver(signum)

    def _stop(self, signum: int, timeout: float | None) -> list[Action]:
        state = self.state
        if state in (CREATING, STARTING):  # signalled once it runs (or killed if it never will)
            return self.proc.stop(signum, timeout, now=False)
        if state == CREATED:  # created but never started: nothing to stop gracefully
            self.state = STOPPING
            return self.proc.kill_now()
        if state in (RUNNING, STOPPING):
            self.state = STOPPING
            return self.proc.stop(signum, timeout, now=True)
        return []

    # --- control requests ------------------------------------------------------------

    def _request(self, req: Request) -> list[Action]:
        if req.op == "start":
            if self.state != CREATED or self.start_requested:
                raise refuse(self.what, self.state, "start")
            self.start_requested = True
            self.start_ident = req.ident
            self.state = STARTING
            self.started = True
            self.busy = "start"
            return [RunRuntime("start")]
        if req.op == "kill":
            if self.state not in (CREATED, STARTING, RUNNING, STOPPING) or not self.proc.pid:
                raise refuse(self.what, self.state, "kill")
            return [*self.proc.deliver(req.signal or SIGTERM), Reply(req.ident, {"ok": True})]
        if req.op == "stop":
            if self.state in (EXITING, EXITED):
                raise refuse(self.what, self.state, "stop")
            self.final = True
            return [Reply(req.ident, {"ok": True}), *self._stop(req.signal, req.timeout)]
        raise Refused(f"unknown request {req.op!r}")
