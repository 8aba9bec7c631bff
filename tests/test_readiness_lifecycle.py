"""--sdnotify container|healthy in the container lifecycle: READY=1 comes from a Ready
event, never before the start is confirmed, and `sdshim start` is answered then."""

from __future__ import annotations

from sdshim.shim.lifecycle import (
    READY_TIMER,
    Action,
    CheckExec,
    ExecChecked,
    Kill,
    Notify,
    Ready,
    Reaped,
    Reply,
    Request,
    RunRuntime,
    RuntimeDone,
    Signal,
)
from tests.test_lifecycles import PID, TERM, Driver, container, exited, of


def ready_fields(actions: list[Action]) -> list[dict[str, object]]:
    return [n.fields for n in of(actions, Notify) if "READY" in n.fields]


def test_no_ready_until_the_container_says_so() -> None:
    d = container(ready_by_monitor=False)
    d.send(RuntimeDone("run", pid=PID))
    out = d.send(ExecChecked(True))
    assert d.life.state == "running" and ready_fields(out) == []
    assert of(out, Notify)[0].fields == {"STATUS": f"Container web running, pid {PID}"}
    assert d.send(Ready()) == [Notify(READY=1)]
    assert d.send(Ready()) == [Notify(READY=1)]  # again after RELOADING=1: passed on


def test_ready_before_the_start_is_confirmed_waits_for_it() -> None:
    d = container(ready_by_monitor=False)
    d.send(RuntimeDone("run", pid=PID))
    assert d.send(Ready()) == []  # still starting: the exec is not confirmed yet
    out = d.send(ExecChecked(True))
    assert ready_fields(out) == [{"READY": 1, "STATUS": f"Container web running, pid {PID}"}]


def test_exit_before_ready_sends_no_ready_and_keeps_the_status() -> None:
    d = container(ready_by_monitor=False)
    d.send(RuntimeDone("run", pid=PID))
    d.send(ExecChecked(True))
    d.send(Reaped(PID, exited(7)))
    assert ready_fields(d.actions) == []  # the start job fails: systemd sees no READY
    end = d.finish()
    assert end.result["exit_code"] == 7 and end.code == 7


def test_monitor_mode_ignores_ready_events() -> None:
    d = container()
    d.send(RuntimeDone("run", pid=PID))
    assert ready_fields(d.send(ExecChecked(True)))
    assert d.send(Ready()) == []


def created_then_started() -> Driver:
    d = container(start=False, run_detached=False, ready_by_monitor=False,
                  ready_timeout=20.0)
    assert d.begun == [RunRuntime("create")]
    out = d.send(RuntimeDone("create", pid=PID))
    assert ready_fields(out)  # `sdshim create` returns once created, as always
    assert d.send(Request("start", ident=3)) == [RunRuntime("start")]
    assert d.send(RuntimeDone("start")) == [CheckExec()]
    out = d.send(ExecChecked(True))
    assert of(out, Reply) == [] and d.timers[READY_TIMER] == 20.0  # waits for Ready
    return d


def test_start_request_is_answered_once_ready() -> None:
    d = created_then_started()
    out = d.send(Ready())
    assert Reply(3, {"ok": True, "error": "", "pid": PID}) in out
    assert READY_TIMER not in d.timers


def test_start_request_refused_at_the_ready_timeout_and_the_container_stopped() -> None:
    d = created_then_started()
    out = d.advance(20.0)
    reply = of(out, Reply)[0]
    assert reply.ident == 3 and not reply.reply["ok"]
    assert "did not get ready within 20s" in reply.reply["error"]
    assert Kill(TERM) in out and d.life.state == "stopping"


def test_start_request_refused_when_it_exits_before_ready() -> None:
    d = created_then_started()
    d.send(Reaped(PID, exited(4)))
    reply = of(d.actions, Reply)[-1]
    assert reply.ident == 3 and not reply.reply["ok"]
    assert reply.reply["error"] == "Container web exited with status 4 before it was ready"


def test_systemds_stop_before_ready_stops_it() -> None:
    d = container(ready_by_monitor=False)  # TimeoutStartSec passed: systemd's SIGTERM
    d.send(RuntimeDone("run", pid=PID))
    d.send(ExecChecked(True))
    assert Kill(TERM) in d.send(Signal(TERM))
    d.send(Reaped(PID, exited(143)))
    assert ready_fields(d.actions) == [] and d.finish().result["stop_signal"] == "SIGTERM"
