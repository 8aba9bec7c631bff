"""Reading a container's output back from journald (through journalctl, binary-safe)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sdshim import spawn

FIELDS = ("MESSAGE", "PRIORITY", "CONTAINER_PARTIAL_MESSAGE", "SDSHIM_EVENT",
          "SDSHIM_EXIT_CODE")


@dataclass
class LogLine:
    stream: str  # "stdout", "stderr", or "event" (sdshim's own note that it exited)
    data: bytes
    usec: int  # realtime timestamp of the line's first chunk

    @property
    def timestamp(self) -> str:
        dt = datetime.fromtimestamp(self.usec / 1e6, UTC)
        return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")

    def as_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "time": self.timestamp,
                "message": self.data.decode(errors="surrogateescape")
                .encode("utf-8", errors="backslashreplace").decode()}


def _field(value: Any) -> bytes:
    """journalctl's JSON: a string, an array of byte values (binary), or null."""
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        if value and isinstance(value[0], list):  # the field occurs twice: take the first
            value = value[0]
        return bytes(value) if all(isinstance(b, int) for b in value) else str(value).encode()
    return str(value).encode()


def journalctl_argv(container_id: str, *, follow: bool, since: str | None = None) -> list[str]:
    argv = ["journalctl", "--no-pager", "--quiet", "--all", "-o", "json",
            "--output-fields=" + ",".join(FIELDS),
            f"CONTAINER_ID_FULL={container_id}", "+", f"SDSHIM_CONTAINER_ID_FULL={container_id}"]
    if follow:
        argv += ["--follow", "--lines", "all"]  # from the first line, then new ones
    if since:
        argv += ["--since", since]
    return argv


class Reassembler:
    """Joins CONTAINER_PARTIAL_MESSAGE chunks back into whole lines, per stream."""

    def __init__(self) -> None:
        self.partial: dict[str, LogLine] = {}

    def add(self, entry: dict[str, Any]) -> LogLine | None:
        if entry.get("SDSHIM_EVENT"):
            return LogLine("event", _field(entry.get("MESSAGE")),
                           int(entry.get("__REALTIME_TIMESTAMP", 0)))
        stream = "stderr" if _field(entry.get("PRIORITY")) == b"3" else "stdout"
        data = _field(entry.get("MESSAGE"))
        usec = int(entry.get("__REALTIME_TIMESTAMP", 0))
        held = self.partial.pop(stream, None)
        if held is not None:
            held.data += data
            line = held
        else:
            line = LogLine(stream, data, usec)
        if _field(entry.get("CONTAINER_PARTIAL_MESSAGE")) == b"true":
            self.partial[stream] = line
            return None
        return line

    def rest(self) -> list[LogLine]:
        lines = sorted(self.partial.values(), key=lambda ln: ln.usec)
        self.partial.clear()
        return lines


async def read_lines(container_id: str, *, follow: bool = False, since: str | None = None,
                     ended: Callable[[], Any] | None = None) -> AsyncIterator[LogLine]:
    """The container's lines in journal order. With follow, until sdshim's exit event,
    or, should the monitor have died without one, until ended() says so."""
    argv = journalctl_argv(container_id, follow=follow, since=since)
    proc = await spawn.start_async(argv)
    assert proc.stdout is not None
    joiner = Reassembler()
    ending = False
    try:
        while True:
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), 1.0 if follow else None)
            except TimeoutError:
                # The exit record is written just before the exit event is sent, so an
                # ended container's last lines and event may still be on their way:
                # stop only after a quiet second more (the monitor may have died).
                if ending:
                    break
                ending = ended is not None and await ended()
                continue
            if not raw:
                break
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            line = joiner.add(entry)
            if line is None:
                continue
            yield line
            if line.stream == "event" and follow:
                break
        for line in joiner.rest():
            yield line
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
