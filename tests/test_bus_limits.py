"""Many containers at once through one Manager: dbus-daemon refuses calls beyond
max_replies_per_connection (128 on the system bus) awaiting a reply on one connection;
the client must queue above that, not fail. Starting 200 containers at once hit it.

The bus here is a real dbus-daemon with the system bus's limit, and a peer that
answers late, as a busy systemd does (the system bus's policy forbids such a peer).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from sdshim.units.bus import Systemd
from tests.conftest import missing

CALLS = 300
CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/>
    <allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
  <limit name="max_replies_per_connection">128</limit>
</busconfig>
"""


@pytest.fixture
def limited_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if shutil.which("dbus-daemon") is None:
        missing("dbus-daemon (package dbus)")
    socket = tmp_path / "bus"
    (tmp_path / "bus.conf").write_text(CONFIG.format(socket=socket))
    daemon = subprocess.Popen(["dbus-daemon", "--nofork", "--print-address",
                               f"--config-file={tmp_path / 'bus.conf'}"],
                              stdout=subprocess.PIPE)
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().decode().strip()
        assert address.startswith("unix:"), address
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        yield address
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


async def many_calls_to_a_slow_peer() -> int:
    slow = await MessageBus(bus_type=BusType.SYSTEM).connect()
    loop = asyncio.get_running_loop()

    def answer_later(msg: Message) -> bool:
        if msg.message_type != MessageType.METHOD_CALL or msg.member != "Ping":
            return False
        reply = Message.new_method_return(msg, "s", ["pong"])
        loop.call_later(0.1, slow.send, reply)
        return True

    slow.add_message_handler(answer_later)
    assert slow.unique_name is not None
    systemd = await Systemd.connect()
    try:
        replies = await asyncio.gather(*(
            systemd.call("/", "test.Slow", "Ping", destination=slow.unique_name)
            for _ in range(CALLS)))
    finally:
        systemd.close()
        slow.disconnect()
    return sum(1 for r in replies if r == ["pong"])


def test_hundreds_of_concurrent_calls_on_one_connection_all_succeed(limited_bus: str) -> None:
    assert asyncio.run(many_calls_to_a_slow_peer()) == CALLS
