"""The Kubernetes CRI log file format, the optional second sink beside journald.

Each line: `<RFC3339Nano> <stdout|stderr> <F|P> <text>\\n`; P marks a chunk that no
newline followed (a long line cut at --log-max-line, or output that ended without one),
so CRI readers join it with the next line of the same stream, as journald readers do
with CONTAINER_PARTIAL_MESSAGE.

Rotation (--log-size-max): before a write would take the file past the limit, FILE is
renamed to FILE.1 (replacing the previous FILE.1) and a new FILE is started. So at most
two generations exist, a line is never split across them, and a reader following FILE
by name (tail -F, kubelet) sees the rename. A single line longer than the limit is
still written whole: the limit bounds the disk use, never the data.
"""

from __future__ import annotations

import time

from sdshim.privapi import posix
from sdshim.shim.notify import say

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Sequence

TAGS = {False: b" F ", True: b" P "}


def timestamp(ns: int) -> bytes:
    """RFC 3339 with nanoseconds in UTC, e.g. 2024-05-01T12:00:00.123456789Z."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode() + b".%09dZ" % frac


class CriLog:
    def __init__(self, path: str, size_max: int = 0) -> None:
        self.path = path
        self.size_max = size_max
        self.fd = -1
        self.size = 0
        self.failing = False
        self._open()  # a log file that cannot be opened at all fails the create

    def _open(self) -> None:
        flags = posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC
        fd = posix.open(self.path, flags, 0o640)
        try:
            self.size = posix.fstat(fd).st_size
        except OSError:
            posix.close(fd)
            raise
        self.fd = fd

    def write(self, stream: str, lines: Sequence[tuple[bytes, bool]]) -> None:
        # One timestamp per read from the container, as conmon does: lines that came
        # together share it.
        head = timestamp(time.time_ns()) + b" " + stream.encode()
        records = [head + TAGS[partial] + line + b"\n" for line, partial in lines]
        try:
            if self.fd < 0:  # a rotation or an earlier open failed: try again now
                self._open()
            if self.size_max:
                self._write_rotating(records)
            else:
                self._write(b"".join(records))
            self.failing = False
        except OSError as e:
            # The journal still has every line; say so once per failure streak.
            if not self.failing:
                say(f"sdshim: cannot write log file {self.path}: {e}")
            self.failing = True

    def _write_rotating(self, records: list[bytes]) -> None:
        batch: list[bytes] = []
        pending = 0
        for record in records:
            if self.size + pending + len(record) > self.size_max and self.size + pending:
                self._write(b"".join(batch))
                batch, pending = [], 0
                self._rotate()
            batch.append(record)
            pending += len(record)
        self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[posix.write(self.fd, view):]
        self.size += len(data)

    def _rotate(self) -> None:
        # The old fd is closed and forgotten before the new file is opened: should the
        # open fail, no stale (and soon reused) fd number is left to write to.
        posix.rename(self.path, self.path + ".1")
        fd, self.fd = self.fd, -1
        posix.close(fd)
        self._open()

    def close(self) -> None:
        if self.fd >= 0:
            posix.close(self.fd)
            self.fd = -1
