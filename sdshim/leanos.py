"""os for the monitor, without os.py: the built-in posix module does the calls, and
here are the few os and os.path helpers the monitor needs.

Every module the monitor loads is paid once per container. os.py brings
_collections_abc, stat and posixpath: 0.28 MB of private memory with Debian's
python3 3.11, a tenth of an idle monitor (tests/test_footprint.py keeps it out).
posix, which os wraps, is loaded with the interpreter anyway. The environment here
is posix.environ, the one the process started with: the monitor never sets variables.
"""

from __future__ import annotations

import errno
import posix
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike

    StrPath = str | PathLike[str]

DEVNULL_PATH = "/dev/null"
_FS_ENCODING = sys.getfilesystemencoding()
_S_IFMT, _S_IFDIR, _S_IFREG = 0o170000, 0o040000, 0o100000


def getenv(key: str, default: str = "") -> str:
    value = posix.environ.get(key.encode(_FS_ENCODING, "surrogateescape"))
    return default if value is None else value.decode(_FS_ENCODING, "surrogateescape")


def popenv(key: str) -> str:
    """The variable's value (or ''), taken out of the environment programs inherit."""
    value = getenv(key)
    encoded = key.encode(_FS_ENCODING, "surrogateescape")
    if posix.environ.pop(encoded, None) is not None:
        posix.unsetenv(encoded)
    return value


def environ(*without: str) -> dict[str, str]:
    """The environment as os.environ has it, less the keys named."""
    env = {k.decode(_FS_ENCODING, "surrogateescape"): v.decode(_FS_ENCODING, "surrogateescape")
           for k, v in posix.environ.items()}
    for key in without:
        env.pop(key, None)
    return env


# --- paths: posixpath's rules, for str paths ------------------------------------------

def join(first: StrPath, *parts: str) -> str:
    path = posix.fspath(first)
    for part in parts:
        if part.startswith("/"):
            path = part
        elif not path or path.endswith("/"):
            path += part
        else:
            path += "/" + part
    return path


def split(path: StrPath) -> tuple[str, str]:
    p = posix.fspath(path)
    i = p.rfind("/") + 1
    head, tail = p[:i], p[i:]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head, tail


def dirname(path: str) -> str:
    return split(path)[0]


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def realpath(path: str) -> str:
    """os.path.realpath of an absolute path: every symbolic link resolved, missing
    parts kept as they are."""
    resolved = ""
    pending = [p for p in reversed(path.split("/")) if p]
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            resolved = resolved.rpartition("/")[0]
            continue
        candidate = f"{resolved}/{part}"
        try:
            target = posix.readlink(candidate)
        except OSError:  # not a link, or missing
            resolved = candidate
            continue
        links += 1
        if links > 40:  # the kernel's limit too
            raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
        if target.startswith("/"):
            resolved = ""
        pending.extend(p for p in reversed(target.split("/")) if p)
    return resolved or "/"


def absolute(path: StrPath) -> str:
    """pathlib's Path(path).absolute(): relative to the working directory, without
    empty and '.' parts (.. stays, as a symbolic link may precede it)."""
    p = posix.fspath(path)
    base = "" if p.startswith("/") else posix.getcwd()
    parts = [part for part in f"{base}/{p}".split("/") if part and part != "."]
    return "/" + "/".join(parts)


def isfile(path: str) -> bool:
    try:
        return posix.stat(path).st_mode & _S_IFMT == _S_IFREG
    except (OSError, ValueError):
        return False


def isdir(path: str) -> bool:
    try:
        return posix.stat(path).st_mode & _S_IFMT == _S_IFDIR
    except (OSError, ValueError):
        return False


def exists(path: str) -> bool:
    try:
        posix.stat(path)
    except (OSError, ValueError):
        return False
    return True


def makedirs(path: str, mode: int = 0o777) -> None:
    """os.makedirs(path, mode, exist_ok=True)."""
    head = dirname(path)
    if head and head != path and not exists(head):
        makedirs(head, mode)
    try:
        posix.mkdir(path, mode)
    except FileExistsError:
        if not isdir(path):
            raise
