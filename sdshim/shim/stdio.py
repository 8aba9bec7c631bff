"""What `-i` and `-t` add to a monitor: the attach socket, the container's stdin, its terminal.

Every monitor serves the attach socket (watching output needs no option); `-i` keeps
the container's stdin open for attach clients; `-t` asks the runtime for a pty and
takes its master through the console socket. The monitor's own loop still reads the
output (the pipes, or the master as one more stream) and hands each chunk to output().

Every monitor listens on the attach socket; the attach server itself is loaded on the
first client, from the file pinned at start-up (sdshim.shim.pinned: the version the
monitor started with), so a container nobody attaches to never pays for it. The stdin
queue and the console are loaded at set-up by the monitors whose options ask for them
(-i, -t).
"""

from __future__ import annotations

import _socket

from sdshim import leanos, spawn
from sdshim.privapi import posix
from sdshim.shim.listener import Listener

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sdshim.shim.attach import AttachServer
    from sdshim.shim.console import ConsoleSocket
    from sdshim.shim.poller import Poller
    from sdshim.shim.stdin import Stdin

# How long the end of the container waits for attach clients to take its last output.
FLUSH_TIMEOUT = 2.0
FLUSH_TIMER = "attach-flush"
ATTACH_SOCKET = "attach"
CONSOLE_SOCKET = "console"
# Until a client says otherwise: a terminal without a size confuses full-screen
# programs (and busybox stty), so start with the classic one.
DEFAULT_SIZE = (24, 80)


class Stdio:
    def __init__(self, poller: Poller, directory: str, *, tty: bool,
                 stdin: bool, on_terminal: Callable[[int], None],
                 on_lost: Callable[[str], None]) -> None:
        self.poller = poller
        self.on_lost = on_lost  # a part failed and was disabled: say so
        self.dir = directory
        self.tty = tty
        self.want_stdin = stdin
        self.on_terminal = on_terminal  # the monitor reads the master as an output stream
        self.size = DEFAULT_SIZE
        self.master = -1  # our own duplicate of the pty master, for resizes
        self.stdin: Stdin | None = None
        self.listener: Listener | None = None
        self.attach: AttachServer | None = None  # made on the first client
        self.attach_lost = False
        self.console: ConsoleSocket | None = None
        self._stdin_r = -1
        # Loaded now, at set-up, if the options can need them: never later.
        if stdin:
            from sdshim.shim import stdin as stdin_module

            self._stdin_class: type[Stdin] = stdin_module.Stdin
        if tty:
            from sdshim.shim import console

            self._console = console

    def listen(self) -> None:
        self.listener = Listener(self.poller, leanos.join(self.dir, ATTACH_SOCKET),
                                 _socket.SOCK_SEQPACKET, 16, self._on_client)
        if self.tty:
            self.console = self._console.ConsoleSocket(
                self.poller, leanos.join(self.dir, CONSOLE_SOCKET), self._on_master,
                on_lost=self.on_lost)

    def _on_client(self, conn: _socket.socket) -> None:
        if self.attach is None and not self.attach_lost:
            try:
                from sdshim.shim.attach import AttachServer

                self.attach = AttachServer(
                    self.poller, on_input=self._input, on_resize=self.resize,
                    on_eof=self._eof, input_full=self._input_full, on_lost=self.on_lost)
            except Exception as e:  # the pinned module could not be loaded
                self.attach_lost = True
                self.on_lost(f"the attach server ({e!r})")
        if self.attach is not None:
            self.attach.accepted(conn)
        else:
            conn.close()

    # --- around the runtime command that makes the process -----------------------------

    def runtime_args(self) -> list[str]:
        return ["--console-socket", leanos.join(self.dir, CONSOLE_SOCKET)] if self.tty \
            else []

    def runtime_stdin(self) -> int:
        """The stdin to give the runtime (the container inherits it in pipe mode)."""
        if not self.want_stdin or self.tty:
            return spawn.DEVNULL
        self._stdin_r, write_end = posix.pipe2(posix.O_CLOEXEC)
        self.stdin = self._stdin_class(self.poller, write_end, close_on_eof=True,
                                       on_drain=self._drained, on_failed=self._stdin_failed)
        return self._stdin_r

    def after_spawn(self) -> None:
        if self._stdin_r >= 0:
            posix.close(self._stdin_r)
            self._stdin_r = -1

    def terminal_ready(self) -> bool:
        return not self.tty or self.master >= 0

    def _on_master(self, fd: int) -> None:
        posix.set_blocking(fd, False)
        self.master = posix.dup(fd)
        self._set_size(fd)
        if self.want_stdin:
            self.stdin = self._stdin_class(self.poller, posix.dup(fd), close_on_eof=False,
                                           on_drain=self._drained,
                                           on_failed=self._stdin_failed)
        self.on_terminal(fd)

    # --- attach clients ------------------------------------------------------------------

    def _stdin_failed(self, e: BaseException) -> None:
        stdin, self.stdin = self.stdin, None
        if stdin is not None:
            stdin.close()
        self.on_lost(f"the container's stdin is closed after an unexpected error ({e!r})")
        if self.attach is not None:
            self.attach.resume_input()

    def _input(self, data: bytes) -> None:
        if self.stdin is not None:
            self.stdin.write(data)

    def _eof(self) -> None:
        if self.stdin is not None:
            self.stdin.end()

    def _input_full(self) -> bool:
        return self.stdin is not None and self.stdin.full

    def _drained(self) -> None:
        if self.attach is not None:
            self.attach.resume_input()

    def resize(self, rows: int, cols: int) -> None:
        self.size = (rows, cols)
        if self.master >= 0:
            self._set_size(self.master)

    def _set_size(self, fd: int) -> None:
        try:
            self._console.set_size(fd, *self.size)
        except OSError:
            pass  # the terminal is gone with the container

    def output(self, kind: int, data: bytes) -> None:
        if self.attach is not None:
            self.attach.broadcast(kind, data)

    # --- the end -------------------------------------------------------------------------

    def finish(self, result: dict[str, Any], done: Callable[[], None]) -> None:
        """Send clients the exit record after the last output; done() once they all
        have it, or after FLUSH_TIMEOUT."""
        if self.attach is None or self.attach.flushed():
            done()
            return
        called = False

        def once() -> None:
            nonlocal called
            if not called:
                called = True
                self.poller.cancel(FLUSH_TIMER)
                done()

        self.attach.finish(result, on_flushed=once)
        self.poller.arm(FLUSH_TIMER, FLUSH_TIMEOUT, once)

    def close(self) -> None:
        for part in (self.attach, self.listener, self.console, self.stdin):
            if part is not None:
                part.close()
        if self.master >= 0:
            posix.close(self.master)
            self.master = -1
        self.after_spawn()
