"""Which of the container's sd_notify datagrams reach systemd (--sdnotify container).

I/O-free: the proxy (sdshim.shim.notifyproxy) receives a datagram with the sender's
credentials and hands it here with what it found out (truncated? fds attached? sender
in the container?); NotifyFilter answers with the fields to forward and the journal
lines to write. systemd trusts the monitor (NotifyAccess=main), so nothing reaches it
that a container should not say: MAINPID is never forwarded (the container must not
name another unit's process as ours), fd-store messages and fds are refused (the
monitor keeps no fd store), unknown keys and malformed values are dropped.

Each kind of refusal is written to the journal once, with a count in the proxy's
state afterwards: a container that repeats a bad message every second must not fill
the journal.
"""

from __future__ import annotations

# systemd ignores notification datagrams larger than this (sdshim.shim.notify).
MAX_DATAGRAM = 4096
FLAG_KEYS = ("READY", "RELOADING", "STOPPING")  # value 1
NUMBER_KEYS = ("ERRNO", "EXTEND_TIMEOUT_USEC", "WATCHDOG_USEC", "MONOTONIC_USEC")
# MONOTONIC_USEC goes with RELOADING=1 (systemd >= 253 wants it for Type=notify-reload).
FORWARDED = (*FLAG_KEYS, *NUMBER_KEYS, "STATUS", "WATCHDOG")
FD_KEYS = ("FDSTORE", "FDSTOREREMOVE", "FDNAME", "FDPOLL")
# sd_notify_barrier(): BARRIER=1 with a pipe fd, which it waits to see closed. Closing
# the fd is the whole answer; nothing goes to systemd and nothing is refused.
BARRIER = "BARRIER"

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    Fields = list[tuple[str, str]]


class Verdict:
    """What to do with one datagram: fields to forward (in order), journal lines."""

    def __init__(self) -> None:
        self.fields: Fields = []
        self.journal: list[str] = []

    def get(self, key: str) -> str | None:
        for k, v in self.fields:
            if k == key:
                return v
        return None


class NotifyFilter:
    def __init__(self) -> None:
        self.refused: dict[str, int] = {}  # reason -> how many times, since start-up

    def check(self, data: bytes, *, truncated: bool = False, fds: int = 0,
              sender_ok: bool = True) -> Verdict:
        """The verdict on one datagram: data as received (at most MAX_DATAGRAM bytes,
        truncated if there was more), fds the number of fds that came with it (the
        proxy closes them), sender_ok whether the sender is in the container."""
        verdict = Verdict()
        if not sender_ok:
            self._refuse(verdict, "sender", "a notification from a process outside the "
                         "container was refused")
            return verdict
        if truncated:
            self._refuse(verdict, "size", f"a notification of more than {MAX_DATAGRAM} "
                         "bytes was refused")
            return verdict
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._refuse(verdict, "utf-8", "a notification that is not UTF-8 was refused")
            return verdict
        pairs: list[tuple[str, str | None]] = []
        for line in text.split("\n"):
            if line:
                key, eq, rest = line.partition("=")
                pairs.append((key, rest if eq else None))
        keys = {key for key, _ in pairs}
        if keys & set(FD_KEYS) or (fds and keys != {BARRIER}):
            self._refuse(verdict, "fds", "a notification with file descriptors or for "
                         "the fd store (FDSTORE=...) was refused: the container's "
                         "service keeps no fd store")
            return verdict
        for key, value in pairs:
            if key == BARRIER:
                continue
            if key == "MAINPID":
                self._refuse(verdict, "MAINPID", "MAINPID= from the container was "
                             "dropped: the monitor is the unit's main process")
                continue
            if key not in FORWARDED:
                self._refuse(verdict, "key:" + key[:64],
                             f"unknown notification field {key[:64]!r} was dropped")
                continue
            if value is None or not _valid(key, value):
                self._refuse(verdict, "value:" + key, f"invalid value for {key}= was "
                             "dropped")
                continue
            verdict.fields.append((key, value))
        return verdict

    def _refuse(self, verdict: Verdict, reason: str, message: str) -> None:
        count = self.refused.get(reason, 0)
        self.refused[reason] = count + 1
        if count == 0:
            verdict.journal.append(message + " (further ones are dropped without a word)")


def _valid(key: str, value: str) -> bool:
    if key in FLAG_KEYS:
        return value == "1"
    if key in NUMBER_KEYS:
        return value.isascii() and value.isdigit() and len(value) <= 20
    if key == "WATCHDOG":
        return value in ("1", "trigger")
    # STATUS: one line of text (systemd shows it as it is); no control characters.
    return value.isprintable()


def encode(fields: Fields) -> bytes:
    """The datagram that forwards fields."""
    return "\n".join(f"{k}={v}" for k, v in fields).encode()
