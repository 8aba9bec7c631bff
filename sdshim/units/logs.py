"""Reading a container's output back from journald, binary-safe (journalctl -o export).

Entries are joined back into the bytes the container wrote. An entry that no newline
followed is marked: CONTAINER_PARTIAL_MESSAGE=true (native driver: chunks of a line
longer than --log-max-line, and output that ended without a newline) or journald's own
_LINE_BREAK= (stream driver: line-max and pid-change chunks, a NUL that ended the line,
eof). Such an entry is joined with the next one of its stream; one left over at the end
is output without a newline.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sdshim import spawn

FIELDS = ("MESSAGE", "PRIORITY", "CONTAINER_PARTIAL_MESSAGE", "_LINE_BREAK", "SDSHIM_EVENT",
          "SDSHIM_EXEC_ID")
READ_SIZE = 1 << 16
# How long `logs -f` waits for output before it asks whether the container has ended
# (only needed when the monitor died without writing its exit event).
FOLLOW_IDLE = 1.0
# journald's _LINE_BREAK values that end an entry without a newline, and what to put
# back between it and the next entry of the stream.
LINE_BREAK_JOIN = {b"line-max": b"", b"pid-change": b"", b"nul": b"\0"}

PRIORITIES = {"stdout": 6, "stderr": 3}

Entry = dict[bytes, bytes]


@dataclass
class LogLine:
    stream: str  # "stdout", "stderr", or "event" (sdshim's own note that it exited)
    data: bytes
    usec: int  # realtime timestamp of the line's first entry
    newline: bool = True  # False: the container wrote no newline after data (yet)

    @property
    def timestamp(self) -> str:
        dt = datetime.fromtimestamp(self.usec / 1e6, UTC)
        return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")

    def as_json(self) -> dict[str, Any]:
        """Like journalctl's JSON: text when valid UTF-8, else a list of byte values."""
        try:
            message: str | list[int] = self.data.decode()
        except UnicodeDecodeError:
            message = list(self.data)
        return {"stream": self.stream, "time": self.timestamp, "message": message,
                "newline": self.newline}


class ExportParser:
    """journalctl's export format, incrementally: KEY=value lines, or for binary values
    KEY, a little-endian 64-bit length and the bytes; a blank line ends an entry."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.entry: Entry = {}

    def feed(self, data: bytes) -> list[Entry]:
        buf = self.buf
        buf += data
        entries = []
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            if nl == pos:
                entries.append(self.entry)
                self.entry = {}
                pos += 1
                continue
            eq = buf.find(b"=", pos, nl)
            if eq >= 0:
                self.entry[bytes(buf[pos:eq])] = bytes(buf[eq + 1:nl])
                pos = nl + 1
                continue
            if len(buf) < nl + 9:
                break
            (size,) = struct.unpack_from("<Q", buf, nl + 1)
            end = nl + 9 + size
            if len(buf) <= end:
                break
            self.entry[bytes(buf[pos:nl])] = bytes(buf[nl + 9:end])
            pos = end + 1
        del buf[:pos]
        return entries


def parse_export(data: bytes) -> list[Entry]:
    return ExportParser().feed(data)


class Reassembler:
    """Joins entries that no newline followed back into lines, per stream."""

    def __init__(self) -> None:
        self.partial: dict[str, LogLine] = {}

    def add(self, entry: Entry) -> LogLine | None:
        usec = int(entry.get(b"__REALTIME_TIMESTAMP", b"0"))
        data = entry.get(b"MESSAGE", b"")
        if entry.get(b"SDSHIM_EVENT"):
            return LogLine("event", data, usec)
        stream = "stderr" if entry.get(b"PRIORITY") == b"%d" % PRIORITIES["stderr"] \
            else "stdout"
        held = self.partial.pop(stream, None)
        if held is not None:
            held.data += data
            line = held
        else:
            line = LogLine(stream, data, usec)
        if entry.get(b"CONTAINER_PARTIAL_MESSAGE") == b"true":
            self.partial[stream] = line
            return None
        brk = entry.get(b"_LINE_BREAK")
        if brk is not None:
            join = LINE_BREAK_JOIN.get(brk)
            if join is None:  # eof: the stream ended without a newline
                line.newline = False
                return line
            line.data += join
            self.partial[stream] = line
            return None
        return line

    def rest(self) -> list[LogLine]:
        """Lines still waiting for their end: output without a newline (so far)."""
        lines = sorted(self.partial.values(), key=lambda ln: ln.usec)
        self.partial.clear()
        for line in lines:
            line.newline = False
        return lines


def matches(status: dict[str, Any], stream: str | None = None) -> list[str]:
    """journalctl matches for a container's output (of one stream, if given) and
    sdshim's events about it."""
    cid = status["id"]
    events = ["+", f"SDSHIM_CONTAINER_ID_FULL={cid}"]
    only = [f"PRIORITY={PRIORITIES[stream]}"] if stream else []
    if status.get("log_driver") == "stream" and status.get("invocation_ids"):
        # Lines of the stream's identifier (the name) in the unit's invocations (one
        # per restart), which tell this container from an older one of the same name.
        # (Containers of the direct start record no invocations: their streams carry
        # the unit's LogExtraFields=, CONTAINER_ID_FULL among them, as the native
        # driver's lines do.)
        invocations = [f"_SYSTEMD_INVOCATION_ID={i}" for i in status["invocation_ids"]]
        return [*invocations, f"SYSLOG_IDENTIFIER={status['name']}", "_TRANSPORT=stdout",
                *only, *events]
    return [f"CONTAINER_ID_FULL={cid}", *only, *events]


def exec_matches(exec_id: str) -> list[str]:
    """journalctl matches for one exec's output and sdshim's events about it."""
    return [f"SDSHIM_EXEC_ID={exec_id}"]


def journalctl_argv(match: Iterable[str], *, follow: bool = False, since: str | None = None,
                    lines: int | None = None, after_cursor: str | None = None) -> list[str]:
    argv = ["journalctl", "--no-pager", "--quiet", "--all", "-o", "export",
            "--output-fields=" + ",".join(FIELDS)]
    if follow:
        argv.append("--follow")
    if after_cursor:
        argv.append(f"--after-cursor={after_cursor}")
    elif lines is not None:
        argv.append(f"--lines={lines}")
    elif follow:
        argv.append("--lines=all")  # from the first entry, then new ones
    if since:
        argv.append(f"--since={since}")
    return [*argv, *match]


async def entries(argv: list[str], ended: Callable[[], Awaitable[bool]] | None = None,
                  ) -> AsyncGenerator[list[Entry], None]:
    """journalctl's entries as they come, a batch per read. With ended (following):
    stop once none came for a while and ended() says the container is gone."""
    proc = await spawn.start_async(argv)
    assert proc.stdout is not None
    parser = ExportParser()
    eof = False
    try:
        while True:
            try:
                data = await asyncio.wait_for(proc.stdout.read(READ_SIZE),
                                              FOLLOW_IDLE if ended else None)
            except TimeoutError:
                assert ended is not None
                if await ended():
                    return
                continue
            if not data:
                eof = True
                return
            batch = parser.feed(data)
            if batch:
                yield batch
    finally:
        # Not after EOF: terminate() polls, and reaping an exiting journalctl there
        # would race asyncio's own child watcher.
        if not eof and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        await proc.wait()


class Reader:
    """A container's lines, in journal order, reassembled; optionally only the last N,
    of one stream, and following new ones until the container exits."""

    def __init__(self, match: list[str], *, stream: str | None = None,
                 since: str | None = None, execs: bool = False) -> None:
        """execs: match is an exec's (exec_matches). Otherwise the output of execs,
        which carries the container's fields too, is left out (as `docker logs` does)."""
        self.match = match
        self.execs = execs
        self.stream = stream
        self.since = since
        self.joiner = Reassembler()
        self.cursor: str | None = None
        self.exited = False  # sdshim's exit event was seen: no more output will come

    def _take(self, batch: list[Entry]) -> list[LogLine]:
        if not batch:
            return []
        cursor = batch[-1].get(b"__CURSOR")
        if cursor:
            self.cursor = cursor.decode()
        lines = []
        add = self.joiner.add
        for entry in batch:
            if not self.execs and b"SDSHIM_EXEC_ID" in entry:
                continue
            line = add(entry)
            if line is None:
                continue
            if line.stream == "event":
                self.exited = True
            elif not self.stream or line.stream == self.stream:
                lines.append(line)
        return lines

    async def lines(self, *, follow: bool = False, tail: int | None = None,
                    ended: Callable[[], Awaitable[bool]] | None = None,
                    ) -> AsyncGenerator[list[LogLine], None]:
        """Batches of lines, in order."""
        if tail is not None:
            last = await self._last(tail)
            if not follow:  # output without a final newline is the last line, too
                last += self._rest()
                last = last[-tail:] if tail else []
            yield last
        else:
            argv = journalctl_argv(self.match, since=self.since)
            async with contextlib.aclosing(entries(argv)) as backlog:
                async for batch in backlog:
                    yield self._take(batch)
        if follow and not self.exited:
            argv = journalctl_argv(self.match, follow=True, since=self.since,
                                   after_cursor=self.cursor)
            async with contextlib.aclosing(entries(argv, ended)) as new:
                async for batch in new:
                    yield self._take(batch)
                    if self.exited:
                        break
            if not self.exited:
                # ended() said so before the exit event came by: the container's lines
                # are stored before that (the monitor syncs journald), but journalctl
                # -f may not have passed them on yet.
                argv = journalctl_argv(self.match, since=self.since, after_cursor=self.cursor)
                async with contextlib.aclosing(entries(argv)) as rest:
                    async for batch in rest:
                        yield self._take(batch)
        yield self._rest()

    def _rest(self) -> list[LogLine]:
        return [ln for ln in self.joiner.rest() if not self.stream or ln.stream == self.stream]

    async def _last(self, n: int) -> list[LogLine]:
        """The last n lines, reading only as many entries from the end as needed."""
        window = max(4 * n, 256)
        while True:
            self.joiner, self.cursor, self.exited = Reassembler(), None, False
            got = 0
            lines: list[LogLine] = []
            argv = journalctl_argv(self.match, since=self.since, lines=window)
            async with contextlib.aclosing(entries(argv)) as backlog:
                async for batch in backlog:
                    got += len(batch)
                    lines += self._take(batch)
            if got < window:
                return lines[-n:] if n else []
            # The window may start inside a split line: its first line of each stream
            # can be a fragment. Without it, are there n lines still?
            firsts = {ln.stream: ln for ln in reversed(lines)}
            lines = [ln for ln in lines if firsts.get(ln.stream) is not ln]
            if len(lines) >= n:
                return lines[-n:] if n else []
            window *= 4
