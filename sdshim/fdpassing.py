"""File descriptors passed over unix sockets (SCM_RIGHTS), with _socket alone.

The standard socket module's send_fds/recv_fds would load socket (with enum and
selectors, ~1.1 MB) into every monitor that receives a terminal or a hand-over.
"""

from __future__ import annotations

import _socket
import sys

FD_SIZE = 4  # an int in SCM_RIGHTS data


def pack(fds: list[int]) -> bytes:
    return b"".join(fd.to_bytes(FD_SIZE, sys.byteorder, signed=True) for fd in fds)


def unpack(data: bytes) -> list[int]:
    usable = len(data) - len(data) % FD_SIZE
    return [int.from_bytes(data[i:i + FD_SIZE], sys.byteorder, signed=True)
            for i in range(0, usable, FD_SIZE)]


def ancillary(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """sendmsg's ancillary data passing fds (none for an empty list)."""
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, pack(fds))] if fds else []


def receive(conn: _socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    """One message of up to size bytes and the fds it carried (close-on-exec here);
    recvmsg's OSError (BlockingIOError on a non-blocking conn with nothing yet)."""
    msg, ancdata, _flags, _addr = conn.recvmsg(
        size, _socket.CMSG_SPACE(max_fds * FD_SIZE), _socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += unpack(data)
    return msg, fds
