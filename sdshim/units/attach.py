"""The client side of a monitor's attach socket (see sdshim.framing, sdshim.shim.attach).

Two ways to use it:
- session(): the caller's terminal or stdio is connected to the container: output
  as it comes, input to its stdin, the terminal's size as it changes, until the
  container exits, the detach keys are typed, or the connection is dropped.
- feed_stdin(): only input, from a background thread, while the output comes from
  the journal (attached `run -i` / `exec -i` without a terminal).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdshim.errors import ContainerStateError
from sdshim.shim import framing
from sdshim.units import detachkeys, terminal

ATTACH_SOCKET = "attach"


@dataclass
class Outcome:
    how: str  # "exited" (result is the exit record), "detached", or "lost"
    result: dict[str, Any] = field(default_factory=dict)


class AttachSocket:
    def __init__(self, directory: Path, what: str) -> None:
        path = directory / ATTACH_SOCKET
        self.raw = False  # the caller's terminal is in raw mode: lines end in CR LF
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise ContainerStateError(f"{what} is not running (no attach socket at {path})"
                                      ) from None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def resize(self, rows: int, cols: int) -> None:
        self.send(framing.resize(rows, cols))

    def mute(self) -> None:
        self.send(framing.frame(framing.MUTE))

    def send_input(self, data: bytes) -> None:
        for f in framing.split(framing.STDIN, data):
            self.send(f)

    def close(self) -> None:
        self.sock.close()

    def session(self, *, stdin: int | None, detach_keys: bytes, watch_size: bool,
                raw: bool) -> Outcome:
        """Pump frames both ways until the container exits, detach, or the end of the
        connection. stdin: the fd to forward (None: none). Blocking, one thread."""
        self.raw = raw
        detach = detachkeys.DetachKeys(detach_keys)
        sel = selectors.PollSelector()  # poll, not epoll: stdin may be a regular file
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        if stdin is not None:
            sel.register(stdin, selectors.EVENT_READ, "stdin")
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_winch = None
        if watch_size:
            sel.register(wake_r, selectors.EVENT_READ, "winch")
            old_winch = signal.signal(signal.SIGWINCH, lambda *_: _poke(wake_w))
            _poke(wake_w)  # once now: the size may have changed since the first resize
        # The CLI's asyncio runner swallows the first ^C while we block: take it back.
        old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "sock":
                        outcome = self._receive()
                        if outcome is not None:
                            return outcome
                    elif key.data == "stdin":
                        assert stdin is not None
                        try:
                            data = os.read(stdin, 65536)
                        except OSError:
                            data = b""
                        if not data:
                            sel.unregister(stdin)
                            self.send(framing.frame(framing.EOF))
                            continue
                        data, detached = detach.feed(data)
                        self.send_input(data)
                        if detached:
                            return Outcome("detached")
                    else:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 64)
                        size = terminal.size(sys.stdout.fileno(), sys.stdin.fileno())
                        if size:
                            self.resize(*size)
        except (BrokenPipeError, ConnectionResetError):
            return Outcome("lost")
        finally:
            signal.signal(signal.SIGINT, old_int)
            if old_winch is not None:
                signal.signal(signal.SIGWINCH, old_winch)
            sel.close()
            os.close(wake_r)
            os.close(wake_w)

    def _receive(self) -> Outcome | None:
        try:
            data = self.sock.recv(framing.MAX_PAYLOAD + 1)
        except ConnectionResetError:
            data = b""
        if not data:
            return Outcome("lost")
        kind, payload = data[0], data[1:]
        if kind == framing.EXIT:
            return Outcome("exited", json.loads(payload))
        if kind == framing.SKIPPED:
            eol = "\r\n" if self.raw else "\n"
            sys.stdout.flush()
            sys.stderr.write(f"{eol}sdshim: {int(payload)} bytes of output skipped: they came "
                             f"faster than they were read here (the journal has them){eol}")
            sys.stderr.flush()
            return None
        if kind not in (framing.STDOUT, framing.STDERR):
            return None  # a kind from a newer monitor (docs/design.md, "Protocols")
        out = sys.stderr if kind == framing.STDERR else sys.stdout
        out.buffer.write(payload)
        out.flush()
        return None


def _poke(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.write(fd, b"\0")


async def session(directory: Path, what: str, *, tty: bool, stdin: bool, detach_keys: str,
                  start: Callable[[], Awaitable[None]] | None = None) -> Outcome:
    """Connect the caller to the process of the monitor in directory.

    With start, attach first and start after, so not a byte of output is missed: what
    the process writes meanwhile waits in the socket, and is thrown away if start
    fails (the error is reported instead, as in pipe mode).
    """
    keys = detachkeys.parse_detach_keys(detach_keys)
    sock = AttachSocket(directory, what)
    try:
        size = terminal.size(sys.stdout.fileno(), sys.stdin.fileno()) if tty else None
        if size:
            sock.resize(*size)
        raw = tty and stdin and os.isatty(sys.stdin.fileno())
        with terminal.raw(sys.stdin.fileno()) if raw else contextlib.nullcontext():
            if start is not None:
                await start()
            return sock.session(stdin=sys.stdin.fileno() if stdin else None,
                                # Without a terminal of ours, input is data, never keys.
                                detach_keys=keys if raw else b"",
                                watch_size=size is not None, raw=raw)
    finally:
        sock.close()


@contextlib.contextmanager
def feed_stdin(directory: Path, what: str) -> Iterator[None]:
    """Send the caller's stdin to the container while the block runs (output comes from
    elsewhere). A thread, so that stdin can be anything: a pipe, a file, a terminal."""
    try:
        sock = AttachSocket(directory, what)
        sock.mute()
    except (ContainerStateError, OSError):
        yield  # it ended already: nobody to read our input
        return

    def pump() -> None:
        with contextlib.suppress(OSError):
            while data := os.read(sys.stdin.fileno(), 65536):
                sock.send_input(data)
            sock.send(framing.frame(framing.EOF))

    # A daemon: a read blocked on a terminal must not keep the CLI alive at the end.
    # The socket stays open after the block: the thread may still use it, and the
    # process ends soon.
    threading.Thread(target=pump, name="stdin", daemon=True).start()
    yield
