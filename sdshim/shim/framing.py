"""The attach socket's messages, shared by the monitor and its clients.

The socket is SOCK_SEQPACKET (as conmon's): the kernel keeps message boundaries, so
each message is one frame, delivered whole or not at all. Nobody parses lengths or
resynchronises after a half-written frame, and dropping a stalled client never cuts
a frame in two. The first byte says what the frame is; the rest is its payload.
"""

from __future__ import annotations

import sys

from sdshim import leanjson

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any

# client -> monitor
STDIN = 0  # bytes for the container's stdin
RESIZE = 1  # terminal size: rows, cols (2 x u16, native order: same host)
EOF = 2  # the client's input ended: close the container's stdin (pipe mode)
MUTE = 3  # send me no output (a client that only feeds stdin)
# monitor -> client
STDOUT = 4  # output; a terminal's output is STDOUT too
STDERR = 5
EXIT = 6  # JSON: the exit record; the monitor closes the connection after it
SKIPPED = 7  # decimal: output bytes this client missed because it read too slowly

# Output is sent in frames of at most this many payload bytes; well below the
# socket's default send buffer, which bounds a SOCK_SEQPACKET message.
MAX_PAYLOAD = 32 * 1024
_HALF = 2  # a u16 of the size, native order (no struct: ~30 kB in every monitor)


def frame(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + payload


def resize(rows: int, cols: int) -> bytes:
    return frame(RESIZE, rows.to_bytes(_HALF, sys.byteorder) + cols.to_bytes(_HALF, sys.byteorder))


def parse_resize(payload: bytes) -> tuple[int, int] | None:
    if len(payload) != 2 * _HALF:
        return None
    rows = int.from_bytes(payload[:_HALF], sys.byteorder)
    cols = int.from_bytes(payload[_HALF:], sys.byteorder)
    return rows, cols


def exit_frame(result: dict[str, Any]) -> bytes:
    return frame(EXIT, leanjson.dumps(result).encode())


def split(kind: int, data: bytes) -> list[bytes]:
    """data as frames of at most MAX_PAYLOAD bytes each."""
    return [frame(kind, data[i:i + MAX_PAYLOAD]) for i in range(0, len(data), MAX_PAYLOAD)]
