"""The quick commands' blocking manager against the asyncio Manager, on a scripted bus
(tests/fakebus.py): the same answers give the same statuses and errors; and the
blocking control request."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdshim.errors import ContainerStateError, NoSuchContainerError
from sdshim.units import control, wire
from sdshim.units.blockingmanager import BlockingManager
from sdshim.units.manager import Manager
from sdshim.units.systemd1 import NO_SUCH_UNIT, SERVICE, UNIT
from tests.fakebus import FakeBus, fake_bus

UNIT_PROPS = {"LoadState": ("s", "loaded"), "ActiveState": ("s", "active"),
              "SubState": ("s", "running"), "Job": ("(uo)", (0, "/"))}
SERVICE_PROPS = {"MainPID": ("u", 4242), "StatusText": ("s", "running sleep"),
                 "Restart": ("s", "on-failure"), "NRestarts": ("u", 2),
                 "ExecMainCode": ("i", 0), "ExecMainStatus": ("i", 0)}


def systemd(loaded: set[str]) -> Callable[[FakeBus], Any]:
    """A systemd that has the units in loaded, each running."""

    def make(bus: FakeBus) -> Any:
        def script(msg: wire.Message) -> list[bytes] | None:
            if msg.member == "GetAll":
                unit = next((u for u in loaded if msg.path.endswith(
                    u.replace("-", "_2d").replace(".", "_2e"))), None)
                if unit is None:
                    return [bus.error(msg, NO_SUCH_UNIT, "Unit not loaded.")]
                props = {UNIT: UNIT_PROPS, SERVICE: SERVICE_PROPS}[msg.body[0]]
                return [bus.reply(msg, "a{sv}", [props])]
            if msg.member == "ListUnitsByPatterns":
                return [bus.reply(msg, "a(ssssssouso)", [[
                    (u, "", "loaded", "active", "running", "", "/", 0, "", "/")
                    for u in sorted(loaded)]])]
            return None

        return script

    return make


@pytest.fixture
def bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeBus]]:
    opened: list[Any] = []

    def start(make: Callable[[FakeBus], Any]) -> FakeBus:
        holder: dict[str, Any] = {}
        ctx = fake_bus(tmp_path, lambda msg: holder["script"](msg))
        fake = ctx.__enter__()
        holder["script"] = make(fake)
        opened.append(ctx)
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", fake.address)
        return fake

    yield start
    for ctx in opened:
        ctx.__exit__(None, None, None)


def both(call: Callable[[Any], Any]) -> tuple[Any, Any]:
    """call(manager) on the blocking manager and on the asyncio one (awaited)."""
    with BlockingManager.connect() as m:
        blocking = call(m)

    async def go() -> Any:
        async with await Manager.connect() as m:
            return await call(m)

    return blocking, asyncio.run(go())


def test_status_is_the_same_on_both_managers(bus: Callable[..., FakeBus]) -> None:
    name = f"sdt-{secrets.token_hex(4)}"
    fake = bus(systemd({f"sdshim-{name}.service"}))
    blocking, asyncio_status = both(lambda m: m.status(name))
    assert blocking == asyncio_status
    assert (blocking["unit_state"], blocking["monitor_pid"], blocking["restart"],
            blocking["restarts"], blocking["status_text"]) == (
        "active/running", 4242, "on-failure", 2, "running sleep")
    interfaces = [c.body[0] for c in fake.calls if c.member == "GetAll"]
    assert interfaces == [UNIT, SERVICE, UNIT, SERVICE]  # the same calls, too


def test_no_such_container_on_both_managers(bus: Callable[..., FakeBus]) -> None:
    bus(systemd(set()))
    name = f"sdt-{secrets.token_hex(4)}"
    with BlockingManager.connect() as m, pytest.raises(NoSuchContainerError,
                                                       match=f"no such container: {name}"):
        m.status(name)


def test_list_is_the_same_on_both_managers(bus: Callable[..., FakeBus]) -> None:
    names = sorted(f"sdt-{secrets.token_hex(4)}" for _ in range(3))
    bus(systemd({f"sdshim-{n}.service" for n in names} | {"sdshim-x:exec-1.service"}))
    blocking, asyncio_list = both(lambda m: m.list())
    assert blocking == asyncio_list
    assert [s["name"] for s in blocking if s["name"].startswith("sdt-")] == names


def test_kill_refuses_an_exited_container_on_both(bus: Callable[..., FakeBus],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bus(systemd(set()))
    exited = {"state": "exited", "unit": "u"}
    monkeypatch.setattr(BlockingManager, "status", lambda self, name: exited)

    async def status(self: Manager, name: str) -> dict[str, Any]:
        return exited

    monkeypatch.setattr(Manager, "status", status)
    for manager in ("blocking", "asyncio"):
        with pytest.raises(ContainerStateError, match="container web is exited, not running"):
            if manager == "blocking":
                with BlockingManager.connect() as m:
                    m.kill("web", 15)
            else:
                async def go() -> None:
                    async with await Manager.connect() as m:
                        await m.kill("web", 15)

                asyncio.run(go())


# --- the blocking control request ------------------------------------------------------


def monitor(tmp_path: Path, answer: bytes) -> tuple[threading.Thread, list[bytes]]:
    """A control socket that takes one request and sends answer (b"": hangs up)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "control"))
    server.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                got.append(conn.recv(65536))
                if answer:
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, got


def test_control_request_and_reply(tmp_path: Path) -> None:
    thread, got = monitor(tmp_path, b'{"ok": true, "pid": 7}\n')
    assert control.request(tmp_path, {"op": "kill", "signal": 15}, "container web") == {
        "ok": True, "pid": 7}
    thread.join(10)
    assert got == [b'{"op": "kill", "signal": 15}']


def test_control_monitor_that_hangs_up(tmp_path: Path) -> None:
    thread, _ = monitor(tmp_path, b"")
    with pytest.raises(ContainerStateError, match=r"^container web: monitor closed the "
                       r"control connection without an answer$"):
        control.request(tmp_path, {"op": "stop"}, "container web")
    thread.join(10)


def test_control_without_a_monitor(tmp_path: Path) -> None:
    with pytest.raises(ContainerStateError, match="^container web has no running monitor "
                       r"\(no control socket at .*/control\)$"):
        control.request(tmp_path, {"op": "stop"}, "container web")
