"""What `-i` and `-t` add to a monitor: the attach socket, the container's stdin, its terminal.

Every monitor serves the attach socket (watching output needs no option); `-i` keeps
the container's stdin open for attach clients; `-t` asks the runtime for a pty and
takes its master through the console socket. The monitor's own loop still reads the
output (the pipes, or the master as one more stream) and hands each chunk to output().

Only the listening socket is made up front: the attach server, the stdin queue and the
console are imported when first needed, as most containers never see a client, a
terminal or stdin, and each imported module costs every monitor memory.
"""

from __future__ import annotations

import _socket
import posix

from sdshim import leanos, spawn
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
ATTACH_SOCKET = "attach"
CONSOLE_SOCKET = "console"
# Until a client says otherwise: a terminal without a size confuses full-screen
# programs (and busybox stty), so start with the classic one.
DEFAULT_SIZE = (24, 80)


class Stdio:
    def __init__(self, poller: Poller, directory: str, *, tty: bool,
                 stdin: bool, on_terminal: Callable[[int], None]) -> None:
        self.poller = poller
        self.dir = directory
        self.tty = tty
        self.want_stdin = stdin
        self.on_terminal = on_terminal  # the monitor reads the master as an output stream
        self.size = DEFAULT_SIZE
        self.master = -1  # our own duplicate of the pty master, for resizes
        self.stdin: Stdin | None = None
        self.listener: Listener | None = None
        self.attach: AttachServer | None = None  # from the first client on
        self.console: ConsoleSocket | None = None
        self._stdin_r = -1

    def listen(self) -> None:
        self.listener = Listener(self.poller, leanos.join(self.dir, ATTACH_SOCKET),
                                 _socket.SOCK_SEQPACKET, 16, self._on_client)
        if self.tty:
            from sdshim.shim.console import ConsoleSocket

            self.console = ConsoleSocket(self.poller, leanos.join(self.dir, CONSOLE_SOCKET),
                                         self._on_master)

    def _on_client(self, conn: _socket.socket) -> None:
        if self.attach is None:
            from sdshim.shim.attach import AttachServer

            self.attach = AttachServer(self.poller, on_input=self._input,
                                       on_resize=self.resize, on_eof=self._eof,
                                       input_full=self._input_full)
        self.attach.accepted(conn)

    # --- around the runtime command that makes the process -----------------------------

    def runtime_args(self) -> list[str]:
        return ["--console-socket", leanos.join(self.dir, CONSOLE_SOCKET)] if self.tty \
            else []

    def runtime_stdin(self) -> int:
        """The stdin to give the runtime (the container inherits it in pipe mode)."""
        if not self.want_stdin or self.tty:
            return spawn.DEVNULL
        from sdshim.shim.stdin import Stdin

        self._stdin_r, write_end = posix.pipe2(posix.O_CLOEXEC)
        self.stdin = Stdin(self.poller, write_end, close_on_eof=True, on_drain=self._drained)
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
            from sdshim.shim.stdin import Stdin

            self.stdin = Stdin(self.poller, posix.dup(fd), close_on_eof=False,
                               on_drain=self._drained)
        self.on_terminal(fd)

    # --- attach clients ------------------------------------------------------------------

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
        from sdshim.shim.console import set_size  # a terminal's: imported with -t already

        try:
            set_size(fd, *self.size)
        except OSError:
            pass  # the terminal is gone with the container

    def output(self, kind: int, data: bytes) -> None:
        if self.attach is not None:
            self.attach.broadcast(kind, data)

    # --- the end -------------------------------------------------------------------------

    def finish(self, result: dict[str, Any],
               serve: Callable[[Callable[[], bool], float], object]) -> None:
        """Send clients the exit record after the last output, for a bounded time."""
        if self.attach is not None:
            self.attach.finish(result)
            serve(self.attach.flushed, FLUSH_TIMEOUT)
        self.close()

    def close(self) -> None:
        for part in (self.attach, self.listener, self.console, self.stdin):
            if part is not None:
                part.close()
        if self.master >= 0:
            posix.close(self.master)
            self.master = -1
        self.after_spawn()
