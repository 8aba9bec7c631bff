"""Where the container's output lines go: journald (native protocol), and optionally a
CRI log file beside it. The hot path of the monitor: keep it to a concatenation and a
send per line.

When journald cannot take an entry (it is stopped, restarting, or has not read its
socket for JournalWriter's send wait), nothing is dropped and nothing waits: the
entries of that read are kept, the container's pipes are no longer read (so the
container waits on its own writes, as with any full pipe), and a timer tries again,
until journald takes them all and reading resumes.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sdshim.shim.crilog import CriLog
    from sdshim.shim.journal import JournalWriter
    from sdshim.shim.poller import Poller

PARTIAL_FIELD = b"CONTAINER_PARTIAL_MESSAGE=true\n"
RETRY_TIMER = "journal-retry"
RETRY_FIRST = 0.05
RETRY_LONGEST = 1.0


class Output:
    def __init__(self, journal: JournalWriter | None, fields: bytes, *, poller: Poller,
                 on_lost: Callable[[str], None]) -> None:
        self.journal = journal
        self.fields = fields  # the container's fields, already encoded
        self.cri: CriLog | None = None
        self.poller = poller
        self.on_lost = on_lost  # a part failed and was disabled: say so
        # Output is held back (True) or flows again (False): the reader pauses.
        self.on_backlog: Callable[[bool], None] = lambda _full: None
        self._tails: dict[bytes, tuple[bytes, bytes]] = {}
        self.backlog: list[bytes] = []  # entries journald has not taken yet, in order
        self._retry_delay = RETRY_FIRST

    @property
    def journal_ok(self) -> bool:
        return not self.backlog

    def open_cri(self, path: str, size_max: int) -> None:
        # Loaded at set-up already when --log-path is given (see sdshim.shim.monitor).
        from sdshim.shim.crilog import CriLog

        self.cri = CriLog(path, size_max)

    def emit(self, stream: str, prefix: bytes, lines: Iterable[tuple[bytes, bool]]) -> None:
        """Send (line, partial) pairs of one stream; prefix is its encoded PRIORITY field.

        A line never holds a newline (the splitter cut there), so MESSAGE always takes
        the plain KEY=value form, which journald stores byte for byte (NUL, \\r, invalid
        UTF-8 included). partial means no newline followed: CONTAINER_PARTIAL_MESSAGE.
        """
        if self.cri is not None:
            lines = list(lines)
            try:
                self.cri.write(stream, lines)
            except Exception as e:  # CriLog handles OSError itself: this is a bug
                self.cri = None
                self.on_lost(f"the log file is no longer written after an unexpected "
                             f"error ({e!r})")
        if self.journal is None:  # the unit's stdout (journald's stream, if any)
            try:
                out = sys.stdout.buffer
                for line, partial in lines:
                    out.write(line if partial else line + b"\n")
                out.flush()
            except (OSError, ValueError):
                pass
            return
        tails = self._tails.get(prefix)
        if tails is None:
            tail = b"\n" + prefix + self.fields
            tails = self._tails[prefix] = (tail, tail + PARTIAL_FIELD)
        whole, part = tails
        if self.backlog:
            self.backlog += [b"MESSAGE=" + line + (part if partial else whole)
                             for line, partial in lines]
            return
        send = self.journal.send
        lines = list(lines)
        for i, (line, partial) in enumerate(lines):
            entry = b"MESSAGE=" + line + (part if partial else whole)
            try:
                send(entry)
            except OSError:
                self.backlog = [entry] + [b"MESSAGE=" + ln + (part if p else whole)
                                          for ln, p in lines[i + 1:]]
                self._hold()
                return

    def _hold(self) -> None:
        self.on_backlog(True)
        self._retry_delay = RETRY_FIRST
        self.poller.arm(RETRY_TIMER, self._retry_delay, self._retry)

    def _retry(self) -> None:
        assert self.journal is not None
        sent = 0
        try:
            for entry in self.backlog:
                self.journal.try_send(entry)
                sent += 1
        except OSError:
            del self.backlog[:sent]
            self._retry_delay = min(self._retry_delay * 2, RETRY_LONGEST)
            self.poller.arm(RETRY_TIMER, self._retry_delay, self._retry)
            return
        self.backlog.clear()
        self.on_backlog(False)

    def flush_backlog(self) -> bool:
        """At the end: one more try for what journald has not taken; True if it did."""
        if self.backlog:
            self.poller.cancel(RETRY_TIMER)
            self._retry()
            self.poller.cancel(RETRY_TIMER)
        return not self.backlog

    def close(self) -> None:
        if self.cri is not None:
            self.cri.close()
