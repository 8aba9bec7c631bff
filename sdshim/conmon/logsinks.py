"""Where a podman container's output goes: `-l journald`, `-l k8s-file:PATH`, `none`.

Lines are cut by sdshim's LineSplitter at 256 KiB, not at conmon's 8 KiB; the pieces
of a longer line (and a last line without a newline) are marked partial, which
`podman logs` joins (CONTAINER_PARTIAL_MESSAGE in the journal, `P` in the file), so
lines of any length come back whole.
"""

from __future__ import annotations

import posix
import sys
import time

from sdshim.shim.journal import JournalWriter, encode_field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    Lines = Sequence[tuple[bytes, bool]]

PRIORITY = {"stdout": b"PRIORITY=6\n", "stderr": b"PRIORITY=3\n"}
PARTIAL = b"CONTAINER_PARTIAL_MESSAGE=true\n"


class Journald:
    def __init__(self, cid: str, name: str, tag: str) -> None:
        fields = {"CONTAINER_ID_FULL": cid, "CONTAINER_ID": cid[:12],
                  "CONTAINER_NAME": name}
        if tag:
            fields["CONTAINER_TAG"] = tag
        fields["SYSLOG_IDENTIFIER"] = tag or name or cid[:12]
        self.fields = b"".join(encode_field(k, v.encode()) for k, v in fields.items())
        self.writer = JournalWriter()

    def write(self, stream: str, lines: Lines) -> None:
        prefix = self.fields + PRIORITY[stream]
        for line, partial in lines:
            entry = prefix + (PARTIAL if partial else b"") + encode_field("MESSAGE", line)
            self.writer.send(entry)

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        self.writer.close()


def k8s_timestamp(ns: int) -> bytes:
    """conmon's: local time, RFC 3339 with nanoseconds and a +HH:MM offset."""
    sec, frac = divmod(ns, 1_000_000_000)
    tm = time.localtime(sec)
    off = tm.tm_gmtoff // 60
    sign = "-" if off < 0 else "+"
    return (time.strftime("%Y-%m-%dT%H:%M:%S", tm)
            + f".{frac:09d}{sign}{abs(off) // 60:02d}:{abs(off) % 60:02d}").encode()


class K8sFile:
    """`<timestamp> stdout|stderr F|P <text>`; at --log-size-max an empty file is started
    (as conmon does: the old lines are gone); `2 0 0` on ctl reopens (log rotation)."""

    def __init__(self, path: str, size_max: int) -> None:
        self.path = path
        self.size_max = size_max
        self.fd = -1
        self.size = 0
        self.failing = False
        self._open(truncate=False)

    def _open(self, truncate: bool) -> None:
        flags = posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC
        if truncate:
            tmp = self.path + ".tmp"
            fd = posix.open(tmp, flags | posix.O_TRUNC, 0o640)
            posix.rename(tmp, self.path)
        else:
            fd = posix.open(self.path, flags, 0o640)
        if self.fd >= 0:
            posix.close(self.fd)
        self.fd = fd

    def write(self, stream: str, lines: Lines) -> None:
        head = k8s_timestamp(time.time_ns()) + b" " + stream.encode()
        records = [head + (b" P " if partial else b" F ") + line + b"\n"
                   for line, partial in lines]
        try:
            if not self.size_max:
                self._write(b"".join(records))
            else:
                # conmon's rule, line by line: the bytes this monitor wrote to the file
                # plus the next line would pass the limit: start an empty file.
                batch: list[bytes] = []
                pending = 0
                for record in records:
                    if self.size + pending + len(record) > self.size_max:
                        self._write(b"".join(batch))
                        batch, pending = [], 0
                        self._open(truncate=True)
                        self.size = 0
                    batch.append(record)
                    pending += len(record)
                self._write(b"".join(batch))
            self.failing = False
        except OSError as e:
            if not self.failing:
                print(f"sdshim-conmon: cannot write {self.path}: {e}", file=sys.stderr)
            self.failing = True

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[posix.write(self.fd, view):]
        self.size += len(data)

    def reopen(self) -> None:
        try:
            self._open(truncate=False)
        except OSError as e:
            print(f"sdshim-conmon: cannot reopen {self.path}: {e}", file=sys.stderr)

    def close(self) -> None:
        if self.fd >= 0:
            posix.close(self.fd)
            self.fd = -1


class SinkError(Exception):
    pass


def open_sinks(logs: Sequence[tuple[str, str]], cid: str, name: str, tag: str,
               size_max: int) -> list[Journald | K8sFile]:
    sinks: list[Journald | K8sFile] = []
    for driver, path in logs:
        if driver == "journald":
            sinks.append(Journald(cid, name, tag))
        elif driver == "k8s-file":
            try:
                sinks.append(K8sFile(path, size_max))
            except OSError as e:
                for sink in sinks:
                    sink.close()
                raise SinkError(f"cannot open the log file {path}: "
                                f"{e.strerror or e}") from None
    return sinks
