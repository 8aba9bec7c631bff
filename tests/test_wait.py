"""Manager.wait across a systemd that stops answering (daemon-reexec) or a lost bus."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdshim.units import bus, manager
from sdshim.units.systemd1 import BusLostError, BusTimeoutError


class StubSystemd:
    def __init__(self) -> None:
        self.closed = False
        self.watched: list[str] = []

    async def watch_unit(self, unit: str) -> asyncio.Event:
        self.watched.append(unit)
        return asyncio.Event()

    def close(self) -> None:
        self.closed = True


def scripted(monkeypatch: pytest.MonkeyPatch, answers: list[Any]) -> manager.Manager:
    """A Manager whose status() gives these answers in turn (an exception is raised)."""
    first, second = StubSystemd(), StubSystemd()

    async def connect() -> StubSystemd:
        return second

    async def status(_self: manager.Manager, _name: str) -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return dict(answer)

    real_sleep = asyncio.sleep

    async def no_sleep(_seconds: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(bus.Systemd, "connect", staticmethod(connect))
    monkeypatch.setattr(manager.Manager, "status", status)
    m = manager.Manager(first)  # type: ignore[arg-type]
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    return m


RUNNING = {"unit": "sdshim-web.service", "state": "running"}
EXITED = {"unit": "sdshim-web.service", "state": "exited", "exit_code": 4}


def test_wait_reconnects_after_a_lost_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    m = scripted(monkeypatch, [RUNNING, BusLostError("lost"), RUNNING, EXITED])
    first = m.systemd
    assert asyncio.run(m.wait("web"))["exit_code"] == 4
    assert first.closed  # type: ignore[attr-defined]
    assert m.systemd is not first
    assert m.systemd.watched == ["sdshim-web.service"]  # type: ignore[attr-defined]


def test_wait_asks_again_when_systemd_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    m = scripted(monkeypatch, [RUNNING, BusTimeoutError("busy"), BusTimeoutError("busy"),
                               EXITED])
    first = m.systemd
    assert asyncio.run(m.wait("web"))["state"] == "exited"
    assert m.systemd is first and not first.closed  # type: ignore[attr-defined]


def test_wait_gives_up_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager, "BUS_GRACE", -1.0)
    m = scripted(monkeypatch, [RUNNING, BusTimeoutError("still busy")])
    with pytest.raises(BusTimeoutError, match="still busy"):
        asyncio.run(m.wait("web"))
