"""The sync and attach pipes' messages: one JSON object and a newline per message
(podman reads up to the newline, 4096 bytes at most: longer messages are cut)."""

from __future__ import annotations

import errno
import posix

from sdshim import leanjson

MAX_MESSAGE = 4096


def write(fd: int, data: int, message: str | None = None) -> bool:
    """{"data": N} or {"data": N, "message": M}; False if podman stopped listening."""
    if fd < 0:
        return False
    payload: dict[str, object] = {"data": data}
    if message is not None:
        payload["message"] = message
    line = leanjson.dumps(payload).encode()
    if len(line) >= MAX_MESSAGE:  # keep it valid JSON within podman's buffer
        payload["message"] = (message or "")[: MAX_MESSAGE // 2]
        line = leanjson.dumps(payload).encode()[: MAX_MESSAGE - 1]
    try:
        posix.write(fd, line + b"\n")
    except OSError as e:
        if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
            return False
        raise
    return True
