"""The monitor's two lifecycles, driven in-process with scripted events and a fake clock.

No root, no test bed, no processes: the lifecycles do no I/O (sdshim.shim.lifecycle),
so every race the integration tests can only provoke now and then is written out
here event by event.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from sdshim.errors import EXIT_NO_RESTART, EXIT_NOT_EXECUTABLE, EXIT_TIMEOUT
from sdshim.shim.container import ContainerLifecycle
from sdshim.shim.execprocess import START_WAIT, ExecLifecycle
from sdshim.shim.lifecycle import (
    EXEC_CHECK_TIMER,
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
    Reply,
    Request,
    RunRuntime,
    RuntimeDone,
    Signal,
    TimerFired,
    WriteState,
)

TERM, KILL, USR1 = int(signal.SIGTERM), int(signal.SIGKILL), int(signal.SIGUSR1)
PID = 4242


def exited(code: int) -> int:
    """A wait status: exited with code."""
    return code << 8


def killed(sig: int) -> int:
    return sig


class Driver:
    """Feeds a lifecycle events and keeps its timers on a fake clock."""

    def __init__(self, life: Any) -> None:
        self.life = life
        self.now = 0.0
        self.timers: dict[str, float] = {}
        self.actions: list[Action] = []
        self.begun = self._take(life.begin())

    def _take(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            self.actions.append(a)
            if isinstance(a, Arm):
                when = self.now + a.seconds
                if not (a.earlier and self.timers.get(a.name, when + 1) <= when):
                    self.timers[a.name] = when
            elif isinstance(a, Cancel):
                self.timers.pop(a.name, None)
        return actions

    def send(self, *events: Event) -> list[Action]:
        out: list[Action] = []
        for event in events:
            out += self._take(self.life.handle(event))
        return out

    def advance(self, seconds: float) -> list[Action]:
        """Let the fake clock run, firing every timer that falls due, in order."""
        end = self.now + seconds
        out: list[Action] = []
        while True:
            due = sorted((w, n) for n, w in self.timers.items() if w <= end)
            if not due:
                break
            when, name = due[0]
            del self.timers[name]
            self.now = when
            out += self.send(TimerFired(name))
        self.now = end
        return out

    def finish(self) -> Finish:
        ends = [a for a in self.actions if isinstance(a, Finish)]
        assert len(ends) == 1, self.actions
        return ends[0]


def of(actions: list[Action], kind: type[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def container(**kw: Any) -> Driver:
    args: dict[str, Any] = {"start": True, "run_detached": True, "restart": "no",
                            "stop_signal": TERM, "stop_timeout": 10.0}
    args.update(kw)
    return Driver(ContainerLifecycle("web", **args))


def running(d: Driver) -> Driver:
    """Take a --start container to running."""
    assert d.begun == [RunRuntime("run")]
    assert CheckExec() in d.send(RuntimeDone("run", pid=PID))
    d.send(ExecChecked(True))
    assert d.life.state == "running"
    return d


# --- the container ---------------------------------------------------------------------


def test_a_plain_run_goes_created_starting_running_exiting_exited() -> None:
    d = container()
    assert d.life.state == "creating"
    out = d.send(RuntimeDone("run", pid=PID))
    assert WriteState({"status": "created", "pid": PID}) in out and d.life.state == "starting"
    out = d.send(ExecChecked(True))
    assert d.life.state == "running"
    assert of(out, Notify)[0].fields == {"READY": 1, "STATUS": f"Container web running, pid {PID}"}
    out = d.send(Reaped(PID, exited(0)))
    assert d.life.state == "exited"
    end = d.finish()
    assert end.result == {"error": None, "exit_code": 0, "signal": None} and end.code == 0
    assert end.delete is True and end.what == "Container web"


def test_exit_before_the_pid_is_known() -> None:
    # The container ran and ended before `runc run --detach` returned and its pid file
    # was read: its status was reaped first and must be kept until the pid is known.
    d = container()
    assert d.send(Reaped(PID, exited(3))) == []
    out = d.send(RuntimeDone("run", pid=PID))
    assert CheckExec() not in out  # nothing to check: it ended
    end = d.finish()
    assert end.result["exit_code"] == 3 and end.code == 3
    assert of(d.actions, Notify)[0].fields == {"READY": 1}  # it did run: the unit started
    assert d.life.proc.early == {}


def test_exit_before_the_pid_is_known_after_create_then_start() -> None:
    d = container(run_detached=False)
    assert d.begun == [RunRuntime("create")]
    d.send(Reaped(PID, exited(0)))
    out = d.send(RuntimeDone("create", pid=PID))
    assert RunRuntime("start") not in out  # ended already: nothing to start
    assert d.finish().result["exit_code"] == 0


def test_an_orphan_reaped_before_the_container_is_not_taken_for_it() -> None:
    d = container()
    d.send(Reaped(999, exited(1)))  # something the container orphaned, pid unknown yet
    out = d.send(RuntimeDone("run", pid=PID))
    assert out[-1] == CheckExec() and d.life.proc.early == {}  # bounded: forgotten
    d.send(ExecChecked(True))
    assert d.send(Reaped(1000, exited(2))) == []  # another orphan, once the pid is known
    assert d.life.state == "running" and d.life.proc.early == {}
    d.send(Reaped(PID, exited(0)))
    assert d.finish().result["exit_code"] == 0


def test_stop_while_created_kills_at_once() -> None:
    d = container(start=False)
    d.send(RuntimeDone("create", pid=PID))
    assert d.life.state == "created"
    out = d.send(Request("stop", ident=7))
    assert out[0] == Reply(7, {"ok": True})
    assert Kill(KILL) in out and STOP_TIMER not in d.timers  # nothing graceful to wait for
    d.send(Reaped(PID, killed(KILL)))
    result = d.finish().result
    assert result["signal"] == "SIGKILL" and result["exit_code"] == 137
    assert result["stop_signal"] == "SIGKILL" and result["stop_timed_out"] is False


def test_stop_escalates_to_sigkill_when_the_timeout_passes() -> None:
    d = running(container(stop_timeout=10.0))
    out = d.send(Signal(TERM))  # systemd's stop
    assert Kill(TERM) in out and d.life.state == "stopping"
    assert d.advance(9.9) == []
    assert d.advance(0.2) == [Kill(KILL)]
    d.send(Reaped(PID, killed(KILL)))
    result = d.finish().result
    assert result["stop_signal"] == "SIGTERM" and result["stop_timed_out"] is True


def test_a_stop_that_works_cancels_the_escalation() -> None:
    d = running(container())
    d.send(Request("stop", signal=int(signal.SIGINT), timeout=3.0, ident=1))
    assert Kill(int(signal.SIGINT)) in d.actions
    d.send(Reaped(PID, killed(int(signal.SIGINT))))
    assert STOP_TIMER not in d.timers
    assert d.advance(60) == []
    assert d.finish().result["stop_timed_out"] is False


def test_stop_while_the_runtime_is_still_creating() -> None:
    # --start: the stop signal waits for the command to run, then is delivered; the
    # escalation timer runs from the request.
    d = container()
    assert d.send(Signal(TERM)) == [Arm(STOP_TIMER, 10.0, earlier=True)]
    d.send(RuntimeDone("run", pid=PID))
    out = d.send(ExecChecked(True))
    assert Kill(TERM) in out and d.life.state == "stopping"


def test_stop_while_creating_without_start_kills_once_created() -> None:
    d = container(start=False)
    d.send(Signal(TERM))
    out = d.send(RuntimeDone("create", pid=PID))
    assert Kill(KILL) in out and Kill(TERM) not in out
    assert STOP_TIMER not in d.timers


def test_escalation_due_while_creating_kills_once_the_pid_is_known() -> None:
    d = container(stop_timeout=1.0)
    d.send(Signal(TERM))
    assert d.advance(2.0) == []  # no pid to kill yet
    d.send(RuntimeDone("run", pid=PID))
    out = d.send(ExecChecked(True))
    assert out[-2:] == [Kill(TERM), Kill(KILL)]


def test_a_signal_during_set_up_is_delivered_once_running() -> None:
    d = container()
    assert d.send(Signal(USR1)) == []  # no pid yet: kept
    d.send(RuntimeDone("run", pid=PID))
    assert Kill(USR1) not in d.actions  # not before it runs
    out = d.send(ExecChecked(True))
    assert out[-1] == Kill(USR1) and d.life.state == "running"


def test_exec_format_error_after_start_fails_the_start() -> None:
    d = container()
    d.send(RuntimeDone("run", pid=PID))
    out = d.send(ExecChecked(False))  # still the runtime's init: look again soon
    assert of(out, Arm)[0].name == EXEC_CHECK_TIMER
    out = d.send(Reaped(PID, exited(255)))
    assert Drain(0.5) in out and d.life.state == "exiting"
    d.send(Drained(b"exec /foreign: exec format error\n"))
    end = d.finish()
    assert end.result["error"] == "exec /foreign: exec format error"
    assert end.code == EXIT_NOT_EXECUTABLE
    assert not [a for a in d.actions if isinstance(a, Notify) and "READY" in a.fields]


def test_an_exit_1_that_is_no_exec_failure_is_the_status() -> None:
    d = container()
    d.send(RuntimeDone("run", pid=PID))
    d.send(Reaped(PID, exited(1)))
    d.send(Drained(b"some ordinary complaint"))
    end = d.finish()
    assert end.result["error"] is None and end.code == 1


def test_the_exec_check_gives_up_at_its_budget_and_calls_it_running() -> None:
    d = container()
    d.send(RuntimeDone("run", pid=PID))
    d.send(ExecChecked(False))
    checks = 0
    while d.life.state == "starting":
        assert d.advance(d.timers[EXEC_CHECK_TIMER] - d.now) == [CheckExec()]
        d.send(ExecChecked(False))
        checks += 1
        assert checks < 100
    assert d.life.state == "running" and 1.9 <= d.now <= 4.0


def test_a_runtime_failure_is_the_record() -> None:
    d = container()
    d.send(RuntimeDone("run", "runc run failed: exec: \"nope\": executable file not found"))
    end = d.finish()
    assert end.code == 127 and end.result["exit_code"] == 127
    assert end.result["error"] == 'exec: "nope": executable file not found'


@pytest.mark.parametrize("restart", ["always", "on-failure"])
def test_a_restart_policys_final_run(restart: str) -> None:
    # A stop the user asked for ends the unit for good: the monitor exits with
    # EXIT_NO_RESTART (RestartPreventExitStatus=), the record keeps the real status.
    d = running(container(restart=restart))
    d.send(Request("stop", ident=1))
    d.send(Reaped(PID, killed(TERM)))
    end = d.finish()
    assert end.code == EXIT_NO_RESTART and end.result["exit_code"] == 143


def test_a_restart_policy_restarts_an_ordinary_exit_and_never_a_failure() -> None:
    d = running(container(restart="always"))
    d.send(Reaped(PID, exited(0)))
    assert d.finish().code == 0  # systemd restarts it
    d = container(restart="on-failure")
    d.send(RuntimeDone("run", "container_linux.go: permission denied"))
    assert d.finish().code == EXIT_NO_RESTART  # it cannot run: never again


def test_start_request_of_a_created_container_is_answered_once_it_runs() -> None:
    d = container(start=False)
    d.send(RuntimeDone("create", pid=PID))
    assert of(d.actions, Notify)[0].fields["READY"] == 1
    assert d.send(Request("start", ident=5)) == [RunRuntime("start")]
    assert d.send(RuntimeDone("start")) == [CheckExec()]
    out = d.send(ExecChecked(True))
    assert Reply(5, {"ok": True, "error": "", "pid": PID}) in out
    assert not any("READY" in n.fields for n in of(out, Notify))  # sent at created


def test_requests_a_state_does_not_allow_are_refused_with_its_name() -> None:
    d = container()
    assert d.send(Request("kill", ident=1)) == [
        Reply(1, {"ok": False, "error": "Container web is creating: cannot kill"})]
    d.send(RuntimeDone("run", pid=PID), ExecChecked(True))
    assert d.send(Request("start", ident=2)) == [
        Reply(2, {"ok": False, "error": "Container web is running: cannot start"})]
    assert d.send(Request("kill", signal=USR1, ident=3)) == [Kill(USR1), Reply(3, {"ok": True})]
    d.send(Reaped(PID, exited(0)))
    assert d.send(Request("stop", ident=4)) == [
        Reply(4, {"ok": False, "error": "Container web is exited: cannot stop"})]


def test_a_failed_start_request_is_answered_with_the_error() -> None:
    d = container(start=False)
    d.send(RuntimeDone("create", pid=PID))
    d.send(Request("start", ident=9))
    out = d.send(RuntimeDone("start", "runc start failed: something broke"))
    assert Reply(9, {"ok": False, "error": "something broke", "pid": PID}) in out
    assert d.finish().result["error"] == "something broke"


# --- an exec'd process ------------------------------------------------------------------


def execd(**kw: Any) -> Driver:
    args: dict[str, Any] = {"start": True, "timeout": 0.0, "stop_signal": TERM,
                            "stop_timeout": 10.0}
    args.update(kw)
    return Driver(ExecLifecycle("web", "e1", **args))


def test_an_exec_runs_and_its_end_never_deletes_the_container() -> None:
    d = execd()
    assert RunRuntime("exec") in d.begun
    d.send(RuntimeDone("exec", pid=PID), ExecChecked(True))
    assert d.life.state == "running"
    d.send(Reaped(PID, exited(5)))
    end = d.finish()
    assert end.code == 5 and end.delete is False
    assert end.what == "Exec e1 in container web"


def test_exec_timeout_kills_and_exits_124() -> None:
    d = execd(timeout=5.0)
    d.send(RuntimeDone("exec", pid=PID))
    assert d.timers[TIMEOUT_TIMER] == 5.0
    d.send(ExecChecked(True))
    assert d.advance(5.0) == [Kill(KILL)]
    d.send(Reaped(PID, killed(KILL)))
    end = d.finish()
    assert end.code == EXIT_TIMEOUT and end.result["exit_code"] == EXIT_TIMEOUT
    assert end.result["timed_out"] is True and end.result["timeout"] == 5.0


def test_exec_timeout_and_stop_escalation_are_distinct_timers() -> None:
    d = execd(timeout=30.0, stop_timeout=2.0)
    d.send(RuntimeDone("exec", pid=PID), ExecChecked(True))
    d.send(Request("stop", ident=1))
    assert set(d.timers) == {TIMEOUT_TIMER, STOP_TIMER}
    assert d.advance(2.0) == [Kill(KILL)]
    d.send(Reaped(PID, killed(KILL)))
    result = d.finish().result
    assert result["stop_timed_out"] is True and "timed_out" not in result


def test_exec_format_error_after_exec() -> None:
    d = execd()
    d.send(RuntimeDone("exec", pid=PID))
    d.send(Reaped(PID, exited(1)))
    d.send(Drained(b"exec /foreign: exec format error"))
    assert d.finish().code == EXIT_NOT_EXECUTABLE


def test_exec_without_start_waits_for_its_client_then_gives_up() -> None:
    d = execd(start=False)
    assert of(d.begun, Notify)[0].fields["READY"] == 1
    d.advance(START_WAIT)
    end = d.finish()
    assert "nobody asked to start the command" in end.result["error"]


def test_exec_stopped_before_start_fails_and_a_late_start_is_refused() -> None:
    d = execd(start=False)
    d.send(Signal(TERM))
    assert d.finish().result["error"] == "stopped before the command was started"
    assert d.send(Request("start", ident=3)) == [
        Reply(3, {"ok": False, "error": "Exec e1 in container web is exited: cannot start"})]


def test_exec_start_request_is_answered_once_running() -> None:
    d = execd(start=False)
    assert d.send(Request("start", ident=2))[-1] == RunRuntime("exec")
    d.send(RuntimeDone("exec", pid=PID))
    out = d.send(ExecChecked(True))
    assert Reply(2, {"ok": True, "error": "", "pid": PID}) in out


def test_an_exit_during_the_runtime_command_waits_for_its_result() -> None:
    # runc start has not returned yet when the container's exit is reaped: its result
    # decides (here: it failed because the container was gone, which is no error).
    d = container(run_detached=False)
    d.send(RuntimeDone("create", pid=PID))
    assert d.life.busy == "start"
    assert d.send(Reaped(PID, exited(0))) == []
    d.send(RuntimeDone("start", "runc start: container not running"))
    end = d.finish()
    assert end.result["error"] is None and end.code == 0
