"""A scripted D-Bus peer on a unix socket, for both of sdshim's transports (the blocking
client and dbus-fast): it authenticates any client, answers Hello and AddMatch, and
hands every other method call to a script, which answers, sends signals, or hangs up.

A real bus cannot be made to send JobRemoved before a call's reply, or to close in the
middle of a wait, on demand; this replays exactly that.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sdshim.units import wire
from sdshim.units.systemd1 import MANAGER, SYSTEMD_PATH

HANGUP = b""  # an answer that closes the connection instead
# script(call) -> what to send back, in order; None: an empty method return.
Script = Callable[[wire.Message], list[bytes] | None]


class FakeBus:
    def __init__(self, path: Path, script: Script) -> None:
        self.path = path
        self.script = script
        self.calls: list[wire.Message] = []  # every method call received, in order
        self.serial = 1000
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"unix:path={self.path}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(10)

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def reply(self, to: wire.Message, signature: str = "",
              body: list[Any] | None = None) -> bytes:
        return wire.Message(wire.METHOD_RETURN, reply_serial=to.serial,
                            serial=self.next_serial(), destination=":1.42",
                            sender="org.freedesktop.DBus" if to.destination.endswith("DBus")
                            else ":1.0", signature=signature, body=body).to_bytes()

    def error(self, to: wire.Message, name: str, text: str) -> bytes:
        return wire.Message(wire.ERROR, reply_serial=to.serial, serial=self.next_serial(),
                            error_name=name, destination=":1.42", sender=":1.0",
                            signature="s", body=[text]).to_bytes()

    def job_removed(self, job: str, result: str, unit: str = "x.service") -> bytes:
        return wire.Message(wire.SIGNAL, path=SYSTEMD_PATH, interface=MANAGER,
                            member="JobRemoved", signature="uoss", sender=":1.0",
                            body=[int(job.rsplit("/", 1)[1]), job, unit, result],
                            serial=self.next_serial()).to_bytes()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        buf = bytearray()

        def fill() -> bool:
            data = conn.recv(65536)
            buf.extend(data)
            return bool(data)

        # Authentication: lines until BEGIN (the first byte is a NUL).
        while True:
            while b"\r\n" not in buf:
                if not fill():
                    return
            line, _, rest = bytes(buf).partition(b"\r\n")
            buf[:] = rest
            line = line.lstrip(b"\0")
            if line.startswith(b"AUTH"):
                conn.sendall(b"OK " + b"0" * 32 + b"\r\n")
            elif line.startswith(b"NEGOTIATE_UNIX_FD"):
                conn.sendall(b"AGREE_UNIX_FD\r\n")
            elif line.startswith(b"BEGIN"):
                break
        while True:
            while len(buf) < wire.HEADER_SIZE:
                if not fill():
                    return
            length = wire.message_length(buf)
            while len(buf) < length:
                if not fill():
                    return
            msg = wire.Message.from_bytes(bytes(buf[:length]))
            del buf[:length]
            if msg.type != wire.METHOD_CALL:
                continue
            self.calls.append(msg)
            if msg.member == "Hello":
                answers: list[bytes] | None = [self.reply(msg, "s", [":1.42"])]
            elif msg.member == "AddMatch":
                answers = None
            else:
                answers = self.script(msg)
            for answer in [self.reply(msg)] if answers is None else answers:
                if answer == HANGUP:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                conn.sendall(answer)


@contextlib.contextmanager
def fake_bus(tmp_path: Path, script: Script) -> Iterator[FakeBus]:
    bus = FakeBus(tmp_path / "fake-bus", script)
    try:
        yield bus
    finally:
        bus.close()
