"""Modules the monitor may load after set-up, pinned to the files it started with.

A running monitor never executes code of another version (a .deb upgrade replaces
sdshim's files under running monitors), and it loads nothing from disk after set-up
(freeze_imports). What only some monitors need, and only later (the
attach server on its first client, the control server on its first request), is
pinned instead: at start-up the monitor opens each such module's compiled file (or
its source, when no compiled file matches it) and keeps the descriptor; on first
import the module is executed from that descriptor. dpkg replaces files by rename, so
a held descriptor keeps the start-up version's bytes: by construction, a pinned module
is the version the monitor started with. A file changed in place (not dpkg's way) is
refused, as is every module that is not pinned.
"""

from __future__ import annotations

import marshal
import sys

from sdshim.privapi import posix, pyc_magic

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType
    from typing import Any

_PYC_HEADER = 16  # magic, flags, source mtime, source size (PEP 552, timestamp-based)


class PinnedModuleError(ImportError):
    pass


class Pin:
    __slots__ = ("compiled", "fd", "identity", "path")

    def __init__(self, path: str, fd: int, compiled: bool, identity: tuple[int, ...]) -> None:
        self.path = path  # the source's path: the module's __file__
        self.fd = fd
        self.compiled = compiled  # fd holds a .pyc (else the source)
        self.identity = identity  # the held file as it was opened


def _identity(fd: int) -> tuple[int, ...]:
    st = posix.fstat(fd)
    # Not st_ctime: dpkg's rename over the path unlinks the held file, which changes it.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = posix.pread(fd, 1 << 16, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _open(path: str) -> int:
    # Close-on-exec: a pinned file never reaches the runtime or the container.
    return posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)


def _matching_pyc(source: str, source_fd: int, magic: bytes | None) -> int:
    """A descriptor of the .pyc that is the compiled source, or -1."""
    tag = sys.implementation.cache_tag
    if magic is None or tag is None:
        return -1
    head, _, tail = source.rpartition("/")
    try:
        fd = _open(f"{head}/__pycache__/{tail[:-3]}.{tag}.pyc")
    except OSError:
        return -1
    st = posix.fstat(source_fd)
    header = posix.pread(fd, _PYC_HEADER, 0)
    if (len(header) == _PYC_HEADER and header[:4] == magic
            and int.from_bytes(header[4:8], "little") == 0  # timestamp-based
            and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF):
        return fd
    posix.close(fd)
    return -1


class PinnedModules:
    """A finder and loader (sys.meta_path) for the modules pinned by pin()."""

    def __init__(self) -> None:
        self.pins: dict[str, Pin] = {}
        self._spec_class: Any = None

    def pin(self, names: Sequence[str]) -> None:
        """Open and hold the files of the modules named. Call it at start-up, while the
        files are the ones the monitor was loaded from. A module whose file cannot be
        held (not a plain file: a zip, say) is imported now instead."""
        magic = pyc_magic()
        self._spec_class = type(sys.modules[__name__].__spec__)
        for name in names:
            if name in sys.modules or name in self.pins:
                continue
            package, _, leaf = name.rpartition(".")
            source = f"{sys.modules[package].__path__[0]}/{leaf}.py"
            try:
                source_fd = _open(source)
            except OSError:
                __import__(name)
                continue
            fd = _matching_pyc(source, source_fd, magic)
            if fd >= 0:
                posix.close(source_fd)
            else:
                fd = source_fd
            self.pins[name] = Pin(source, fd, fd != source_fd, _identity(fd))

    def find_spec(self, name: str, path: object = None, target: object = None) -> Any:
        pin = self.pins.get(name)
        if pin is None:
            return None
        spec = self._spec_class(name, self, origin=pin.path)
        spec.has_location = True  # sets __file__
        return spec

    def create_module(self, spec: object) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        pin = self.pins.pop(name)
        try:
            if _identity(pin.fd) != pin.identity:
                raise PinnedModuleError(f"{pin.path} was changed in place since the monitor "
                                        "started: not loading another version", name=name)
            data = _read(pin.fd)
        finally:
            posix.close(pin.fd)
        code = (marshal.loads(memoryview(data)[_PYC_HEADER:]) if pin.compiled
                else compile(data, pin.path, "exec", dont_inherit=True))
        exec(code, module.__dict__)

    def close(self) -> None:
        for pin in self.pins.values():
            posix.close(pin.fd)
        self.pins.clear()


def freeze_imports(pinned: PinnedModules | None = None) -> None:
    """From here on the monitor loads no module from disk: the finder of modules on
    disk is removed, so an import that set-up missed fails loudly (ModuleNotFoundError,
    a fault of the part that tried, said in the journal) instead of running code a
    package upgrade may have replaced meanwhile. Built-in and frozen modules stay (they
    are in the interpreter, not on disk), and the pinned ones load from the files held
    since start-up."""
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if getattr(finder, "__name__", "") != "PathFinder"]
    if pinned is not None:
        sys.meta_path.append(pinned)
