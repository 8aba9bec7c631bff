"""Where the container's output lines go: journald (native protocol), and optionally a
CRI log file beside it. The hot path of the monitor: keep it to a concatenation and a
send per line."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Iterable

    from sdshim.shim.crilog import CriLog  # only with --log-path: imported there
    from sdshim.shim.journal import JournalWriter

PARTIAL_FIELD = b"CONTAINER_PARTIAL_MESSAGE=true\n"


class Output:
    def __init__(self, journal: JournalWriter | None, fields: bytes,
                 cri: CriLog | None = None) -> None:
        self.journal = journal
        self.fields = fields  # the container's fields, already encoded
        self.cri = cri
        self._tails: dict[bytes, tuple[bytes, bytes]] = {}

    def emit(self, stream: str, prefix: bytes, lines: Iterable[tuple[bytes, bool]]) -> None:
        """Send (line, partial) pairs of one stream; prefix is its encoded PRIORITY field.

        A line never holds a newline (the splitter cut there), so MESSAGE always takes
        the plain KEY=value form, which journald stores byte for byte (NUL, \\r, invalid
        UTF-8 included). partial means no newline followed: CONTAINER_PARTIAL_MESSAGE.
        """
        if self.cri is not None:
            lines = list(lines)
            self.cri.write(stream, lines)
        if self.journal is None:
            out = sys.stdout.buffer
            for line, partial in lines:
                out.write(line if partial else line + b"\n")
            out.flush()
            return
        tails = self._tails.get(prefix)
        if tails is None:
            tail = b"\n" + prefix + self.fields
            tails = self._tails[prefix] = (tail, tail + PARTIAL_FIELD)
        whole, part = tails
        send = self.journal.send
        for line, partial in lines:
            send(b"MESSAGE=" + line + (part if partial else whole))

    def close(self) -> None:
        if self.cri is not None:
            self.cri.close()
