"""Exit files and the OOM marker, as podman reads them.

`<exit-dir>/<cid>`: the decimal status, no newline; podman takes FinishedAt from its
ctime and watches the directory, so the file appears whole (written beside, renamed).
"""

from __future__ import annotations

import posix

from sdshim import leanos


def write_atomically(path: str, content: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.sdshim-tmp"
    fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC,
                    mode)
    try:
        view = memoryview(content)
        while view:
            view = view[posix.write(fd, view):]
    finally:
        posix.close(fd)
    posix.rename(tmp, path)


def write_exit(directories: list[str], cid: str, status: int) -> None:
    for directory in directories:
        write_atomically(leanos.join(directory, cid), str(status).encode())


def write_oom(directories: list[str]) -> None:
    """podman 4.3 reads `<bundle>/oom`; --persist-dir has its own."""
    for directory in directories:
        try:
            write_atomically(leanos.join(directory, "oom"), b"")
        except OSError:
            pass
