"""Detach keys, in docker's syntax: what the user types to leave a terminal session
running. Apart from sdshim.units.terminal (termios, signal, contextlib): the CLI's
lean path checks --detach-keys too."""

from __future__ import annotations

from sdshim.errors import UsageError

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


def parse_detach_keys(spec: str) -> bytes:
    """'ctrl-p,ctrl-q' -> b'\\x10\\x11' (docker's syntax); '' disables detaching."""
    keys = bytearray()
    for item in spec.split(",") if spec else []:
        if len(item) == 1 and item.isascii():
            keys.append(ord(item))
        elif (item.lower().startswith("ctrl-") and len(item) == 6
              and (item[5].isalpha() or item[5] in "@[\\]^_") and item[5].isascii()):
            keys.append(ord(item[5].upper()) & 0x1F)
        else:
            raise UsageError(f"invalid detach keys {spec!r}: give comma-separated keys, "
                             "each a character or ctrl-<letter or @[\\]^_>, e.g. ctrl-p,ctrl-q")
    return bytes(keys)


class DetachKeys:
    """Watches the caller's input for the detach sequence.

    Bytes that could start the sequence are held back until it is clear whether they
    do; if the sequence breaks off they are passed on, so nothing typed is lost.
    """

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = 0  # how many bytes of keys have been matched (and held back)

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to pass on, whether the sequence is complete)."""
        if not self.keys:
            return data, False
        out = bytearray()
        for byte in data:
            if byte == self.keys[self.held]:
                self.held += 1
                if self.held == len(self.keys):
                    self.held = 0
                    return bytes(out), True
                continue
            out += self.keys[:self.held]
            self.held = 0
            if byte == self.keys[0]:  # the start of a new attempt (keys has 2+ bytes here)
                self.held = 1
            else:
                out.append(byte)
        return bytes(out), False
