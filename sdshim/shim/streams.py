"""The container's output: its pipes (or its terminal's master), read as they fill,
cut into lines and handed to Output (journald, the CRI log) and to attach clients.

Draining (after the container's exit, or to read an execve failure's message) is a
timer, not a wait: done when every stream is closed, or when none made progress for
the time asked, so writers the container left behind cannot hold the end up for ever.
"""

from __future__ import annotations

import errno
import fcntl

from sdshim.privapi import posix
from sdshim.shim import framing
from sdshim.shim.journal import PRIORITY_STDERR, PRIORITY_STDOUT, LineSplitter, encode_field
from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdshim.shim.output import Output
    from sdshim.shim.poller import Poller
    from sdshim.shim.stdio import Stdio

F_SETPIPE_SZ = 1031
READ_SIZE = 1 << 16
DRAIN_TIMER = "drain"
# While journald holds the output back, a drain waits for it this many times longer.
DRAIN_HELD_FACTOR = 12


class Stream:
    """One of the container's output pipes, forwarded line by line to journald."""

    def __init__(self, fd: int, name: str, priority: int, max_line: int,
                 terminal: bool = False) -> None:
        self.fd = fd
        self.name = name
        self.kind = framing.STDERR if name == "stderr" else framing.STDOUT  # for attach
        self.prefix = encode_field("PRIORITY", str(priority).encode())
        self.splitter = LineSplitter(max_line)
        self.terminal = terminal  # a pty master: its CR LF ends a line too
        self.last_line = b""
        self.open = True


class Streams:
    def __init__(self, poller: Poller, output: Output, stdio: Stdio, max_line: int) -> None:
        self.poller = poller
        self.output = output
        self.stdio = stdio
        self.max_line = max_line
        self.streams: list[Stream] = []
        self.read_total = 0  # bytes read, to see whether a drain makes progress
        self.paused = False  # not read while journald cannot take more (see Output)
        self._drain_done: Callable[[], None] | None = None
        self._drain_seconds = 0.0
        self._drain_mark = 0
        self._drain_held = 0

    def pipes(self) -> tuple[int, int]:
        """New stdout and stderr pipes; their write ends, for the runtime."""
        out_r, out_w = posix.pipe2(posix.O_CLOEXEC)
        err_r, err_w = posix.pipe2(posix.O_CLOEXEC)
        self.add(out_r, "stdout", PRIORITY_STDOUT)
        self.add(err_r, "stderr", PRIORITY_STDERR)
        return out_w, err_w

    def add(self, fd: int, name: str, priority: int, terminal: bool = False) -> Stream:
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)  # fewer wake-ups under heavy output
        except OSError:
            pass  # a pty master, or beyond the pipe size limit: the default serves
        posix.set_blocking(fd, False)
        stream = Stream(fd, name, priority, self.max_line, terminal)
        self.streams.append(stream)
        if not self.paused:
            self.poller.register(fd, EVENT_READ, self._readable)
        return stream

    def add_terminal(self, master: int) -> None:
        # Named stdout: the CRI log and the journal's PRIORITY see a terminal as stdout.
        self.add(master, "stdout", PRIORITY_STDOUT, terminal=True)

    def last_stderr_line(self) -> bytes:
        """The last line on stderr (where runc reports an exec failure; in terminal
        mode, that is the terminal)."""
        for stream in self.streams:
            if stream.terminal:
                return stream.last_line
        for stream in self.streams:
            if stream.name == "stderr":
                return stream.last_line
        return b""

    @property
    def any_open(self) -> bool:
        return any(s.open for s in self.streams)

    # --- reading ----------------------------------------------------------------------

    def _readable(self, fileobj: object) -> None:
        stream = next(s for s in self.streams if s.fd == fileobj)
        try:
            data = posix.read(stream.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # a pty master once the container's side is closed
                raise
            data = b""
        if data:
            self.read_total += len(data)
            self.stdio.output(stream.kind, data)
            self._emit(stream, stream.splitter.feed(data))
        else:
            self.close(stream)

    def _emit(self, stream: Stream, lines: list[tuple[bytes, bool]]) -> None:
        if stream.terminal:  # the terminal's CR LF ends a line too
            lines = [(line if partial else line.removesuffix(b"\r"), partial)
                     for line, partial in lines]
        if lines:
            stream.last_line = lines[-1][0]
            self.output.emit(stream.name, stream.prefix, lines)

    def close(self, stream: Stream) -> None:
        if not stream.open:
            return
        self._emit(stream, list(stream.splitter.flush()))
        self.poller.unregister(stream.fd)
        posix.close(stream.fd)
        stream.open = False
        if self._drain_done is not None and not self.any_open:
            self._drained()

    def close_all(self) -> None:
        for stream in self.streams:
            self.close(stream)

    # --- flow control: Output says when journald cannot take more ------------------------

    def pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        for stream in self.streams:
            if stream.open:
                self.poller.unregister(stream.fd)

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        for stream in self.streams:
            if stream.open:
                self.poller.register(stream.fd, EVENT_READ, self._readable)

    # --- draining ---------------------------------------------------------------------

    def drain(self, seconds: float, done: Callable[[], None]) -> None:
        """done() once every stream is closed, or none made progress for seconds."""
        self._drain_done = done
        self._drain_seconds = seconds
        self._drain_mark = self.read_total
        self._drain_held = 0
        if not self.any_open:
            self._drained()
            return
        self.poller.arm(DRAIN_TIMER, seconds, self._drain_check)

    def _drain_check(self) -> None:
        held = self.paused and self._drain_held < DRAIN_HELD_FACTOR
        if self.read_total != self._drain_mark or held:
            # Progress (or journald holds it up, and may take it): give it more time.
            self._drain_held += self.paused
            self._drain_mark = self.read_total
            self.poller.arm(DRAIN_TIMER, self._drain_seconds, self._drain_check)
            return
        self._drained()

    def _drained(self) -> None:
        self.poller.cancel(DRAIN_TIMER)
        done, self._drain_done = self._drain_done, None
        if done is not None:
            done()
