"""The manager side's protocol core (sdshim.units.systemd1) without a bus, and both
transports over it on a scripted peer (tests/fakebus.py): the same job results,
records and properties give the same errors through the blocking client and dbus-fast.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdshim.errors import ContainerExistsError, CreateError, SdshimError, SystemdError
from sdshim.units import wire
from sdshim.units.blockingbus import BlockingSystemd
from sdshim.units.bus import Systemd, _variants
from sdshim.units.connection import Connection
from sdshim.units.spec import ContainerSpec
from sdshim.units.systemd1 import (
    MANAGER,
    NO_SUCH_UNIT,
    SERVICE,
    UNIT,
    UNIT_EXISTS,
    BusCallError,
    BusLostError,
    BusTimeoutError,
    Call,
    Job,
    UnitStart,
    manager_call,
    properties_reply,
)
from tests.fakebus import HANGUP, FakeBus, fake_bus

JOB = "/org/freedesktop/systemd1/job/42"
OTHER_JOB = "/org/freedesktop/systemd1/job/41"


def removed(job: str, result: str) -> tuple[str, str, list[Any]]:
    return (MANAGER, "JobRemoved", [int(job.rsplit("/", 1)[1]), job, "x.service", result])


def start_call() -> Call:
    return manager_call("StartTransientUnit", "ssa(sv)a(sa(sv))", ["x.service", "fail", [], []])


# --- Job: the JobRemoved-before-reply race, solved here once ---------------------------

EVENTS = {
    "reply": None,
    "ours": removed(JOB, "done"),
    "another job's": removed(OTHER_JOB, "failed"),
    "another interface's": ("org.example.Other", "JobRemoved", removed(JOB, "failed")[2]),
    "PropertiesChanged": ("org.freedesktop.DBus.Properties", "PropertiesChanged",
                          [UNIT, {}, []]),
}


@pytest.mark.parametrize("order", list(itertools.permutations(EVENTS)),
                         ids=lambda order: ", ".join(order))
def test_a_job_ends_with_its_own_result_in_any_order(order: tuple[str, ...]) -> None:
    job = Job(start_call())
    for event in order:
        if event == "reply":
            job.queued([JOB])
        else:
            job.signal(*EVENTS[event])  # type: ignore[misc]
    assert (job.state, job.path, job.result, job.ok) == ("ended", JOB, "done", True)


def test_a_job_waits_while_only_other_signals_came() -> None:
    job = Job(start_call())
    job.signal(*removed(OTHER_JOB, "done"))
    job.queued([JOB])
    assert (job.state, job.ended, job.result) == ("queued", False, "")
    job.signal(*removed(JOB, "timeout"))
    assert (job.ended, job.ok, job.result) == (True, False, "timeout")
    job.signal(*removed(JOB, "done"))  # nothing moves an ended job
    assert job.result == "timeout"


def test_a_malformed_job_removed_is_ignored() -> None:
    job = Job(start_call())
    job.queued([JOB])
    job.signal(MANAGER, "JobRemoved", [42, JOB])
    assert not job.ended


def test_a_job_is_queued_once() -> None:
    job = Job(start_call())
    job.queued([JOB])
    with pytest.raises(SdshimError, match="queued twice"):
        job.queued([JOB])


def test_early_signals_of_other_jobs_are_not_kept() -> None:
    job = Job(start_call())
    for n in range(100):
        job.signal(*removed(f"/org/freedesktop/systemd1/job/{n + 100}", "done"))
    job.queued([JOB])
    assert job._early == {}


# --- UnitStart: what each answer means --------------------------------------------------


def unit_start(tmp_path: Path, name: str = "web") -> UnitStart:
    what = f"container {name}" if name else "exec 0abc in container web"
    unit = "sdshim-web.service" if name else "sdshim-web:exec-0abc.service"
    return UnitStart(unit, [("Nice", "i", -5)], what=what, directory=tmp_path, name=name)


def test_the_start_call_carries_the_properties_as_variants(tmp_path: Path) -> None:
    call = unit_start(tmp_path).job.call
    assert (call.destination, call.path, call.interface, call.member, call.signature) == (
        "org.freedesktop.systemd1", "/org/freedesktop/systemd1", MANAGER,
        "StartTransientUnit", "ssa(sv)a(sa(sv))")
    assert call.body == ["sdshim-web.service", "fail", [("Nice", ("i", -5))], []]
    assert call.purpose == "systemd to start sdshim-web.service"


@pytest.mark.parametrize("name, error, expected_type, expected", [
    ("web", (UNIT_EXISTS, "Unit sdshim-web.service already exists."), ContainerExistsError,
     "container web already exists; delete it with `sdshim delete web` or choose "
     "another --name"),
    # An exec's unit is not the container: its name clashing is systemd's word.
    ("", (UNIT_EXISTS, "Unit sdshim-web:exec-0abc.service already exists."), SystemdError,
     "systemd refused to start sdshim-web:exec-0abc.service: Unit "
     "sdshim-web:exec-0abc.service already exists."),
    ("web", ("org.freedesktop.DBus.Error.InvalidArgs", "Nice value out of range"),
     SystemdError, "systemd refused to start sdshim-web.service: Nice value out of range"),
])
def test_refused(tmp_path: Path, name: str, error: tuple[str, str],
                 expected_type: type[Exception], expected: str) -> None:
    got = unit_start(tmp_path, name).refused(BusCallError(*error))
    assert type(got) is expected_type
    assert str(got) == expected


FAILURES: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None, str, int]] = [
    # (name, job result, exit record, Service properties) -> (message, exit code)
    ("web", "failed", {"error": "exec: \"nope\": executable file not found in $PATH",
                       "exit_code": 127}, {"StatusText": "ignored"},
     "exec: \"nope\": executable file not found in $PATH", 127),
    ("web", "failed", {"error": "runc create failed: boom"}, None,
     "runc create failed: boom", 125),
    ("web", "failed", {"exit_code": 0}, {"StatusText": "creating the container",
                                         "Result": "protocol"},
     "container web failed to start: creating the container; "
     "see `journalctl -u sdshim-web.service`", 125),
    ("web", "timeout", None, {"StatusText": "", "Result": "timeout"},
     "container web failed to start: job timeout, result timeout; "
     "see `journalctl -u sdshim-web.service`", 125),
    ("web", "failed", None, None,
     "container web failed to start: job failed, result None; "
     "see `journalctl -u sdshim-web.service`", 125),
    ("", "dependency", None, {"Result": "exit-code"},
     "exec 0abc in container web failed to start: job dependency, result exit-code; "
     "see `journalctl -u sdshim-web:exec-0abc.service`", 125),
    ("", "failed", {"error": "exec failed: permission denied", "exit_code": 126}, None,
     "exec failed: permission denied", 126),
]


@pytest.mark.parametrize("name, result, record, props, message, code", FAILURES)
def test_failure(tmp_path: Path, name: str, result: str, record: dict[str, Any] | None,
                 props: dict[str, Any] | None, message: str, code: int) -> None:
    start = unit_start(tmp_path, name)
    start.job.queued([JOB])
    start.job.signal(*removed(JOB, result))
    assert not start.job.ok
    error = start.failure(record, props)
    assert type(error) is CreateError
    assert (str(error), error.exit_code) == (message, code)


def test_what_a_failure_reads(tmp_path: Path) -> None:
    start = unit_start(tmp_path)
    assert start.record_path == str(tmp_path / "exit.json")
    call = start.properties_call
    assert (call.path, call.interface, call.member, call.body) == (
        "/org/freedesktop/systemd1/unit/sdshim_2dweb_2eservice",
        "org.freedesktop.DBus.Properties", "GetAll", [SERVICE])


@pytest.mark.parametrize("error, values, interface, expected", [
    (None, {"LoadState": "loaded", "ActiveState": "active"}, UNIT,
     {"LoadState": "loaded", "ActiveState": "active"}),
    (None, {"LoadState": "not-found"}, UNIT, None),
    (None, {"LoadState": "not-found"}, "", None),
    (None, {"StatusText": "x"}, SERVICE, {"StatusText": "x"}),  # no LoadState there
    (BusCallError(NO_SUCH_UNIT, "Unit x.service not loaded."), None, SERVICE, None),
    (BusCallError("org.freedesktop.DBus.Error.UnknownObject", "no"), None, UNIT, None),
])
def test_properties_reply(error: BusCallError | None, values: dict[str, Any] | None,
                          interface: str, expected: dict[str, Any] | None) -> None:
    assert properties_reply(error, values, interface) == expected


def test_properties_reply_raises_other_errors() -> None:
    error = BusCallError("org.freedesktop.DBus.Error.AccessDenied", "denied")
    with pytest.raises(BusCallError, match="denied"):
        properties_reply(error, None, UNIT)


def test_timeouts_and_a_lost_bus_say_what_was_awaited(tmp_path: Path) -> None:
    call = unit_start(tmp_path).job.call
    assert str(call.timed_out(30)) == (
        "timed out after 30 s waiting for systemd to start sdshim-web.service; "
        "container web may have started anyway: see `sdshim status web`")
    assert str(call.lost()) == (
        "the system bus closed the connection while waiting for systemd to start "
        "sdshim-web.service; container web may have started anyway: see "
        "`sdshim status web`")
    assert str(Call("/", "x.Y", "Ping").lost("Broken pipe")) == (
        "the system bus connection broke (Broken pipe) while waiting for systemd to "
        "answer Ping; is dbus running? (`systemctl status dbus`); on a host without "
        "systemd as PID 1, use the test bed: python3 -m sdshim.testbed -- sdshim ...")
    exec_start = unit_start(tmp_path, "")
    assert str(exec_start.job.call.timed_out(0.5)).endswith(
        "exec 0abc in container web may have started anyway: see "
        "`systemctl status sdshim-web:exec-0abc.service`")


def test_dbus_fast_gets_the_same_bytes_for_the_core_s_call() -> None:
    from dbus_fast import Message as FastMessage

    spec = ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="/usr/bin/runc",
                         restart="on-failure", properties=[("Nice", "i", -5)])
    call = UnitStart(spec.unit, spec.unit_properties(), what="container web",
                     directory=Path("/r")).job.call
    ours = wire.Message(path=call.path, interface=call.interface, member=call.member,
                        destination=call.destination, signature=call.signature,
                        body=call.body, serial=3)
    fast = FastMessage(path=call.path, interface=call.interface, member=call.member,
                       destination=call.destination, signature=call.signature,
                       body=_variants(call.signature, call.body), serial=3)
    assert ours.to_bytes() == bytes(fast._marshall(False))


# --- both transports on a scripted peer ----------------------------------------------

Transport = Callable[[FakeBus, UnitStart], None]


def blocking(bus: FakeBus, start: UnitStart) -> None:
    with BlockingSystemd(Connection.system()) as systemd:
        systemd.start_unit(start, timeout=30)  # a lost JobRemoved fails, never hangs


def asyncio_client(bus: FakeBus, start: UnitStart) -> None:
    async def go() -> None:
        systemd = await Systemd.connect()
        try:
            await asyncio.wait_for(systemd.start_unit(start), 30)
        finally:
            systemd.close()

    asyncio.run(go())


TRANSPORTS = {"blocking": blocking, "asyncio": asyncio_client}


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> Transport:
    return TRANSPORTS[request.param]


def systemd_script(result: str, order: str = "reply first",
                   props: dict[str, tuple[str, Any]] | None = None,
                   refuse: tuple[str, str] | None = None,
                   hang_up: str = "") -> Callable[[FakeBus], Any]:
    """A systemd that answers StartTransientUnit with JOB (or refuse's error), sends
    JobRemoved with result before or after the reply, answers GetAll with props, and
    hangs up at the call named by hang_up."""

    def make(bus: FakeBus) -> Any:
        def script(msg: wire.Message) -> list[bytes] | None:
            if msg.member == hang_up:
                return [HANGUP]
            if msg.member == "StartTransientUnit":
                if refuse:
                    return [bus.error(msg, *refuse)]
                answer = bus.reply(msg, "o", [JOB])
                if hang_up == "JobRemoved":
                    return [answer, HANGUP]
                signal = bus.job_removed(JOB, result)
                other = bus.job_removed(OTHER_JOB, "done")
                return ([other, signal, answer] if order == "signal first"
                        else [answer, other, signal])
            if msg.member == "GetAll":
                return [bus.reply(msg, "a{sv}", [props or {}])]
            return None

        return script

    return make


@pytest.fixture
def scripted_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    buses: list[Any] = []

    def start(make: Callable[[FakeBus], Any]) -> FakeBus:
        holder: dict[str, Any] = {}
        ctx = fake_bus(tmp_path, lambda msg: holder["script"](msg))
        bus = ctx.__enter__()
        holder["script"] = make(bus)
        buses.append(ctx)
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        return bus

    yield start
    for ctx in buses:
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("order", ["signal first", "reply first"])
def test_both_transports_start_whatever_comes_first(
        transport: Transport, scripted_bus: Any, tmp_path: Path, order: str) -> None:
    bus = scripted_bus(systemd_script("done", order))
    start = unit_start(tmp_path)
    transport(bus, start)
    assert start.job.ok
    members = [c.member for c in bus.calls]
    assert members[-1] == "StartTransientUnit"
    assert members.index("AddMatch") < members.index("StartTransientUnit")
    assert "GetAll" not in members  # success reads nothing more


@pytest.mark.parametrize("record, props, message, code", [
    ({"error": "exec: \"nope\": executable file not found in $PATH", "exit_code": 127},
     {}, "exec: \"nope\": executable file not found in $PATH", 127),
    (None, {"StatusText": ("s", "creating the container"), "Result": ("s", "protocol")},
     "container web failed to start: creating the container; "
     "see `journalctl -u sdshim-web.service`", 125),
    (None, {"Result": ("s", "exit-code")},
     "container web failed to start: job failed, result exit-code; "
     "see `journalctl -u sdshim-web.service`", 125),
])
def test_both_transports_give_the_core_s_failure(
        transport: Transport, scripted_bus: Any, tmp_path: Path,
        record: dict[str, Any] | None, props: dict[str, Any], message: str,
        code: int) -> None:
    bus = scripted_bus(systemd_script("failed", props=props))
    if record is not None:
        (tmp_path / "exit.json").write_text(json.dumps(record))
    with pytest.raises(CreateError) as caught:
        transport(bus, unit_start(tmp_path))
    assert (str(caught.value), caught.value.exit_code) == (message, code)
    getall = [c for c in bus.calls if c.member == "GetAll"]
    assert [c.body for c in getall] == [[SERVICE]]


def test_both_transports_give_the_core_s_refusal(
        transport: Transport, scripted_bus: Any, tmp_path: Path) -> None:
    bus = scripted_bus(systemd_script("done", refuse=(UNIT_EXISTS, "exists")))
    with pytest.raises(ContainerExistsError, match="container web already exists"):
        transport(bus, unit_start(tmp_path))


@pytest.mark.parametrize("hang_up", ["StartTransientUnit", "JobRemoved"])
def test_both_transports_say_the_bus_went_away_during_the_start(
        transport: Transport, scripted_bus: Any, tmp_path: Path, hang_up: str) -> None:
    bus = scripted_bus(systemd_script("done", hang_up=hang_up))
    with pytest.raises(BusLostError) as caught:
        transport(bus, unit_start(tmp_path))
    assert str(caught.value) == (
        "the system bus closed the connection while waiting for systemd to start "
        "sdshim-web.service; container web may have started anyway: see "
        "`sdshim status web`")


def test_a_job_that_never_ends_times_out_naming_it(scripted_bus: Any) -> None:
    def make(bus: FakeBus) -> Any:
        return lambda msg: [bus.reply(msg, "o", [JOB])] if msg.member == "StopUnit" else None

    scripted_bus(make)

    async def go() -> None:
        systemd = await Systemd.connect()
        try:
            await systemd.stop_and_wait("x.service", timeout=0.2)
        finally:
            systemd.close()

    with pytest.raises(BusTimeoutError, match=r"^timed out after 0.2 s waiting for systemd "
                       r"to stop x.service; see `systemctl status x.service`$"):
        asyncio.run(go())


def test_asyncio_calls_after_the_bus_went_away_fail_at_once(scripted_bus: Any) -> None:
    def make(bus: FakeBus) -> Any:
        return lambda msg: [HANGUP] if msg.member == "GetAll" else None

    scripted_bus(make)

    async def go() -> list[str]:
        systemd = await Systemd.connect()
        errors = []
        try:
            for _ in range(2):  # the first meets the hang-up, the second a closed bus
                try:
                    await asyncio.wait_for(systemd.service_state("x.service"), 30)
                except BusLostError as e:
                    errors.append(str(e))
        finally:
            systemd.close()
        return errors

    errors = asyncio.run(go())
    assert len(errors) == 2
    assert all(e.startswith("the system bus closed the connection while waiting for "
                            "systemd's properties of x.service; is dbus running?")
               for e in errors), errors
