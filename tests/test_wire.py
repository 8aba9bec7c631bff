"""The CLI's blocking D-Bus client without a bus: bytes checked against dbus-fast's
marshaller, and the order in which replies and signals may arrive.

The rest of it (authentication, systemd's replies and errors) is exercised against the
test bed's real bus by every `sdshim create` and `run -d` in the other tests.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message as FastMessage
from dbus_fast import MessageType, Variant

from sdshim.errors import SystemdError
from sdshim.units import wire
from sdshim.units.blockingbus import BlockingSystemd
from sdshim.units.cli import COMMANDS, build_parser
from sdshim.units.connection import BusTimeoutError, Connection, system_bus_socket
from sdshim.units.spec import ContainerSpec
from sdshim.units.systemd1 import MANAGER, SYSTEMD_PATH, Call, Job, manager_call

# (signature, body in our form: variants as (signature, value) pairs)
BODIES: list[tuple[str, list[Any]]] = [
    ("", []),
    ("ybnqiuxtd", [255, True, -2, 65535, -70000, 4_000_000_000, -(1 << 40), 1 << 63, 0.5]),
    ("sog", ["héllo", "/org/freedesktop/systemd1/unit/a_2eservice", "a(sv)"]),
    # Empty arrays of 8-aligned elements still pad after their length.
    ("yaxyat(yt)", [1, [], 2, [7, 8], (3, 9)]),
    ("a{sv}", [{"a": ("y", 3), "b": ("n", -2), "c": ("as", ["x", "y"]),
                "d": ("a{su}", {"k": 1}), "e": ("v", ("s", "variant in a variant"))}]),
    ("aay", [[b"\x00\x01", b""]]),
    ("(aiai)v", [([251], []), ("(aiai)", ([1, 2], [3]))]),
]


def fast_value(signature: str, value: Any) -> Any:
    """Our value (variants as pairs) the way dbus-fast takes it."""
    code = signature[0]
    if code == "v":
        inner_sig, inner = value
        return Variant(inner_sig, fast_value(inner_sig, inner))
    if code == "a" and signature[1] == "{":
        _key_sig, value_sig = wire.complete_types(signature[2:-1])
        return {k: fast_value(value_sig, v) for k, v in value.items()}
    if code == "a" and signature[1] != "y":
        return [fast_value(signature[1:], v) for v in value]
    if code == "(":
        return [fast_value(t, v) for t, v in zip(wire.complete_types(signature[1:-1]), value,
                                                  strict=True)]
    return value


def plain(value: Any) -> Any:
    """A value as our reader gives it: variants unwrapped, structs as lists."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def unwrapped(signature: str, value: Any) -> Any:
    return plain(fast_value(signature, value))


def fast_bytes(msg: FastMessage) -> bytes:
    return bytes(msg._marshall(False))


def start_transient_call() -> wire.Message:
    spec = ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="/usr/bin/runc",
                         restart="on-failure", properties=[("Nice", "i", -5)])
    props = [(n, (sig, v)) for n, sig, v in spec.unit_properties()]
    return wire.Message(path=SYSTEMD_PATH, interface=MANAGER, member="StartTransientUnit",
                        destination="org.freedesktop.systemd1", signature="ssa(sv)a(sa(sv))",
                        body=[spec.unit, "fail", props, []], serial=3)


def test_start_transient_unit_bytes_are_dbus_fasts() -> None:
    msg = start_transient_call()
    fast = FastMessage(path=msg.path, interface=msg.interface, member=msg.member,
                       destination=msg.destination, signature=msg.signature,
                       body=fast_value("(" + msg.signature + ")", msg.body), serial=3)
    assert msg.to_bytes() == fast_bytes(fast)


@pytest.mark.parametrize("signature, body", BODIES)
def test_method_call_bytes_are_dbus_fasts(signature: str, body: list[Any]) -> None:
    ours = wire.Message(path="/a", interface="x.Y", member="M", destination="x.Z",
                        signature=signature, body=body, serial=9)
    fast = FastMessage(path="/a", interface="x.Y", member="M", destination="x.Z",
                       signature=signature, serial=9,
                       body=fast_value("(" + signature + ")", body) if body else [])
    assert ours.to_bytes() == fast_bytes(fast)


@pytest.mark.parametrize("signature, body", BODIES)
def test_reads_replies_and_signals_dbus_fast_writes(signature: str, body: list[Any]) -> None:
    args = fast_value("(" + signature + ")", body) if body else []
    # (dbus-fast never writes a sender: the bus adds it.)
    reply = FastMessage(message_type=MessageType.METHOD_RETURN, reply_serial=7,
                        destination=":1.9", signature=signature, body=args, serial=12)
    data = fast_bytes(reply)
    assert wire.message_length(data[:wire.HEADER_SIZE]) == len(data)
    got = wire.Message.from_bytes(data)
    assert (got.type, got.serial, got.reply_serial, got.destination) == (
        wire.METHOD_RETURN, 12, 7, ":1.9")
    assert got.body == unwrapped("(" + signature + ")", body) if body else got.body == []
    signal = FastMessage(message_type=MessageType.SIGNAL, path=SYSTEMD_PATH,
                         interface=MANAGER, member="JobRemoved", signature=signature,
                         body=args, serial=13)
    got = wire.Message.from_bytes(fast_bytes(signal))
    assert (got.type, got.path, got.interface, got.member) == (
        wire.SIGNAL, SYSTEMD_PATH, MANAGER, "JobRemoved")


def test_error_reply_carries_name_and_text() -> None:
    error = FastMessage(message_type=MessageType.ERROR, reply_serial=2, serial=5,
                        error_name="org.freedesktop.DBus.Error.InvalidArgs",
                        signature="s", body=["Nice value out of range"])
    got = wire.Message.from_bytes(fast_bytes(error))
    assert got.type == wire.ERROR and got.error_name.endswith("InvalidArgs")
    assert got.body == ["Nice value out of range"]


def test_our_messages_read_back() -> None:
    msg = start_transient_call()
    msg.sender = ":1.5"
    back = wire.Message.from_bytes(msg.to_bytes())
    assert (back.path, back.member, back.signature, back.serial, back.sender) == (
        msg.path, msg.member, msg.signature, 3, ":1.5")
    assert back.body == unwrapped("(" + msg.signature + ")", msg.body)


def test_reads_big_endian_messages() -> None:
    # The bus passes messages on in their sender's byte order; dbus-fast writes only
    # little-endian, so this one is spelled out: a reply to call 1 with one uint32, 42.
    fields = (b"\x05\x01u\x00" + struct.pack(">I", 1)  # REPLY_SERIAL: u 1
              + b"\x08\x01g\x00\x01u\x00")  # SIGNATURE: g "u" (ends at 15)
    header = b"B\x02\x00\x01" + struct.pack(">III", 4, 7, len(fields)) + fields
    data = header + bytes(-len(header) % 8) + struct.pack(">I", 42)
    assert wire.message_length(data[:wire.HEADER_SIZE]) == len(data)
    msg = wire.Message.from_bytes(data)
    assert (msg.type, msg.serial, msg.reply_serial, msg.signature, msg.body) == (
        wire.METHOD_RETURN, 7, 1, "u", [42])


@pytest.mark.parametrize("data, message", [
    (b"x" + bytes(15), "not a D-Bus message"),
    (b"l\x01\x00\x02" + bytes(12), "not a D-Bus message"),
    (b"l\x01\x00\x01" + (1 << 28).to_bytes(4, "little") + bytes(8), "over the"),
])
def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.message_length(data)


def test_truncated_body_is_refused() -> None:
    data = wire.Message(signature="s", body=["abc"], serial=1).to_bytes()
    with pytest.raises(wire.WireError, match="ends in the middle"):
        wire.Message.from_bytes(data[:-3])


# --- the order things arrive in ----------------------------------------------------

JOB = "/org/freedesktop/systemd1/job/42"


def job_removed(job: str, result: str, serial: int) -> bytes:
    return wire.Message(wire.SIGNAL, path=SYSTEMD_PATH, interface=MANAGER,
                        member="JobRemoved", signature="uoss",
                        body=[int(job.rsplit("/", 1)[1]), job, "x.service", result],
                        serial=serial).to_bytes()


def reply(to: int, serial: int, signature: str = "", body: list[Any] | None = None) -> bytes:
    return wire.Message(wire.METHOD_RETURN, reply_serial=to, serial=serial,
                        signature=signature, body=body).to_bytes()


def scripted(*messages: bytes) -> tuple[Connection, socket.socket]:
    """A connection whose peer has already sent messages and then hung up. A real bus
    cannot be made to send JobRemoved before the reply on demand; this replays it."""
    ours, peer = socket.socketpair()
    peer.sendall(b"".join(messages))
    peer.shutdown(socket.SHUT_WR)
    return Connection(ours), peer


@pytest.mark.parametrize("order", ["signal first", "reply first"])
def test_job_removed_is_found_whether_before_or_after_the_reply(order: str) -> None:
    # Serials: 1 = AddMatch, 2 = StartTransientUnit. Another job's signal comes first.
    signals = [job_removed("/org/freedesktop/systemd1/job/41", "failed", 10),
               job_removed(JOB, "done", 11)]
    start_reply = reply(2, 12, "o", [JOB])
    messages = ([reply(1, 9), *signals, start_reply] if order == "signal first"
                else [reply(1, 9), start_reply, *signals])
    conn, peer = scripted(*messages)
    job = Job(manager_call("StartTransientUnit", "ssa(sv)a(sa(sv))",
                           ["x.service", "fail", [("Nice", ("i", 1))], []]))
    with conn:
        BlockingSystemd(conn).run_job(job, 5)
    assert (job.state, job.result) == ("ended", "done")
    sent = peer.recv(1 << 16)
    first = wire.message_length(sent[:wire.HEADER_SIZE])
    add_match, call = wire.Message.from_bytes(sent[:first]), wire.Message.from_bytes(sent[first:])
    assert (add_match.member, add_match.serial) == ("AddMatch", 1)
    assert (call.member, call.serial, call.body[0]) == ("StartTransientUnit", 2, "x.service")


def test_a_lost_bus_is_an_error_not_a_hang() -> None:
    conn, _peer = scripted(reply(1, 9))
    job = Job(manager_call("StopUnit", "ss", ["x.service", "replace"],
                           purpose="systemd to stop x.service"))
    with conn, pytest.raises(SystemdError, match=r"closed the connection while waiting "
                             r"for systemd to stop x\.service"):
        BlockingSystemd(conn).run_job(job, 5)


def test_silence_ends_at_the_deadline() -> None:
    ours, _peer = socket.socketpair()
    t0 = time.monotonic()
    call = Call("/", "x.Y", "M", purpose="x to answer M")
    with Connection(ours) as conn, pytest.raises(
            BusTimeoutError, match=r"timed out after 0.05 s waiting for x to answer M"):
        conn.reply(1, call, 0.05)
    assert time.monotonic() - t0 < 5


def test_error_reply_raises_with_its_name() -> None:
    from sdshim.units.connection import BusCallError

    error = wire.Message(wire.ERROR, reply_serial=1, serial=4, signature="s",
                         error_name="org.freedesktop.systemd1.UnitExists",
                         body=["Unit x.service already exists."]).to_bytes()
    conn, _peer = scripted(error)
    with conn, pytest.raises(BusCallError, match="already exists") as caught:
        conn.call(Call("/", "x.Y", "M"))
    assert caught.value.name == "org.freedesktop.systemd1.UnitExists"


@pytest.mark.parametrize("address, path", [
    ("unix:path=/run/dbus/system_bus_socket", "/run/dbus/system_bus_socket"),
    ("tcp:host=x,port=1;unix:path=/tmp/a%20b,guid=00", "/tmp/a b"),
    ("unix:abstract=/tmp/dbus-x", "\0/tmp/dbus-x"),
])
def test_system_bus_address(address: str, path: str) -> None:
    assert system_bus_socket(address) == path


def test_system_bus_address_without_a_unix_socket() -> None:
    with pytest.raises(SystemdError, match="DBUS_SYSTEM_BUS_ADDRESS=unix:path="):
        system_bus_socket("tcp:host=localhost,port=1")


# --- the CLI's parser --------------------------------------------------------------


def test_commands_list_every_subcommand() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices or ()) == COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_one_command_parser_parses_and_helps_like_the_full_one(command: str) -> None:
    def help_of(parser: Any) -> str:
        sub = next(a for a in parser._actions if a.dest == "command")
        return str(sub.choices[command].format_help())

    assert help_of(build_parser(command)) == help_of(build_parser())
