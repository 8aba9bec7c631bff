"""Every private CPython API sdshim uses, each with a standard-library fallback.

The monitor runs once per container, so it reaches past the public modules where
they cost memory it need not pay: _json's C encoder and scanner instead of json (whose
pure-Python half imports re: ~1.2 MB), _socket's accept core instead of socket (~1.3 MB
with enum), _ctypes instead of ctypes (~0.5 MB) for one prctl, posix and _signal,
the C halves of os and signal, and the import system's frozen core for the .pyc magic
number (sdshim.shim.pinned; importlib.util would load more). Private means they may
change with any Python release: each use here checks that what it needs is there and
otherwise takes the public module, so a Python upgrade costs memory, never
correctness. tests/test_privapi.py runs every fallback.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    import os as posix
    import signal as _signal
    from collections.abc import Callable
    from typing import Any

    Encoder = Callable[[object, int], Any]
    Scanner = Callable[[str, int], tuple[Any, int]]
else:
    try:
        import posix
    except ImportError:  # pragma: no cover - not CPython on a POSIX system
        import os as posix
    try:
        import _signal
    except ImportError:  # pragma: no cover
        import signal as _signal

__all__ = ["accept", "json_codec", "posix", "pyc_magic", "set_child_subreaper",
           "signal_module"]


def signal_module() -> Any:
    """_signal (signal without its enums: ~0.9 MB), or signal: the same int constants
    and functions."""
    return _signal if hasattr(_signal, "set_wakeup_fd") and hasattr(_signal, "SIGKILL") \
        else __import__("signal")


# --- JSON ------------------------------------------------------------------------------

def _unserializable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class _DecoderOptions:
    """What the C scanner reads from json.JSONDecoder: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


class JSONDecodeError(ValueError):
    """json.JSONDecodeError's fields, for a process that has not imported json."""

    def __init__(self, msg: str, doc: str, pos: int) -> None:
        lineno = doc.count("\n", 0, pos) + 1
        colno = pos - doc.rfind("\n", 0, pos)
        super().__init__(f"{msg}: line {lineno} column {colno} (char {pos})")
        self.msg, self.doc, self.pos, self.lineno, self.colno = msg, doc, pos, lineno, colno

    def __reduce__(self) -> tuple[type, tuple[str, str, int]]:
        return self.__class__, (self.msg, self.doc, self.pos)


def _decode_error() -> type[ValueError]:
    """json's JSONDecodeError where json is loaded (what the C scanner raises then),
    else the stand-in's."""
    decoder = sys.modules.get("json.decoder")
    error: type[ValueError] = getattr(decoder, "JSONDecodeError", JSONDecodeError)
    return error


def _scan_raising(scan: Scanner) -> Scanner:
    """The C scanner, made to raise its errors in a process without json: it looks
    json.decoder up in sys.modules to raise one (3.11: without importing it, and a
    SystemError if it is missing). So on that SystemError the scan is done again with a
    stand-in module holding JSONDecodeError alone, removed at once: one left in
    sys.modules would break a later `import json` (the CLI's asyncio commands)."""

    def scan_checked(text: str, pos: int) -> tuple[Any, int]:
        try:
            return scan(text, pos)
        except SystemError:
            if "json.decoder" in sys.modules:
                raise
        stand_in = type(sys)("json.decoder")
        stand_in.__doc__ = "sdshim.privapi's stand-in: JSONDecodeError only (see there)"
        stand_in.JSONDecodeError = JSONDecodeError  # type: ignore[attr-defined]
        sys.modules["json.decoder"] = stand_in
        try:
            return scan(text, pos)
        finally:
            if sys.modules.get("json.decoder") is stand_in:
                del sys.modules["json.decoder"]

    return scan_checked


def json_codec(private: bool = True) -> tuple[Encoder, Scanner, Callable[[], type[ValueError]]]:
    """(encode, scan, error): encode(obj, 0) yields json.dumps()'s chunks with its
    defaults; scan(text, pos) -> (value, end) or StopIteration(pos), as json's scanner;
    error() the JSONDecodeError class for the caller's own errors, the one the scanner
    raises too: json's where json is loaded, else the stand-in's (a ValueError with
    json's fields). private=False (or no _json): json's own."""
    try:
        if not private:
            raise ImportError
        import _json

        # json.JSONEncoder() with its defaults: no circular check (records are flat),
        # ASCII, separators ", " and ": ", keys in insertion order, NaN allowed.
        encode = _json.make_encoder(None, _unserializable, _json.encode_basestring_ascii,
                                    None, ": ", ", ", False, False, True)
        scan = _json.make_scanner(_DecoderOptions())  # type: ignore[arg-type]
        return encode, _scan_raising(scan), _decode_error
    except (ImportError, AttributeError, TypeError):
        import json
        import json.scanner

        encoder = json.JSONEncoder(check_circular=False)

        def encode_public(obj: object, _level: int) -> Any:
            return encoder.iterencode(obj)

        scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
        return encode_public, scan, lambda: json.JSONDecodeError


# --- compiled modules -----------------------------------------------------------------

def pyc_magic(private: bool = True) -> bytes | None:
    """The magic number that starts this interpreter's .pyc files (for
    sdshim.shim.pinned), from the import system's frozen core, which every CPython has
    loaded; else importlib.util's (which imports more); None if neither has it (then
    the source is compiled instead)."""
    core = sys.modules.get("_frozen_importlib_external") if private else None
    magic = getattr(core, "MAGIC_NUMBER", None)
    if not isinstance(magic, bytes):
        try:
            import importlib.util

            magic = importlib.util.MAGIC_NUMBER
        except (ImportError, AttributeError):  # pragma: no cover
            return None
    return magic


# --- sockets --------------------------------------------------------------------------

def _has_private_accept() -> bool:
    try:
        import _socket
    except ImportError:  # pragma: no cover
        return False
    return callable(getattr(_socket.socket, "_accept", None))


# Decided at import, so that the fallback's module is loaded at start-up, not later.
PRIVATE_ACCEPT = _has_private_accept()
if not PRIVATE_ACCEPT:  # pragma: no cover - exercised through _accept_public
    import socket as _socket_module  # noqa: F401


def accept(sock: Any) -> int:
    """Accept a connection on a listening socket made with _socket: its fd (close-on-exec
    as the listener, blocking). socket.socket.accept() wraps _socket.socket._accept()."""
    if PRIVATE_ACCEPT:
        fd: int = sock._accept()[0]
        return fd
    return _accept_public(sock)


def _accept_public(sock: Any) -> int:
    import socket

    listener = socket.socket(fileno=posix.dup(sock.fileno()))
    try:
        conn, _addr = listener.accept()
    finally:
        listener.close()
    conn.setblocking(True)
    return conn.detach()


# --- prctl ----------------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(private: bool = True) -> None:
    """prctl(PR_SET_CHILD_SUBREAPER, 1): what the process orphans becomes its child,
    not PID 1's. OSError if the kernel refuses. _ctypes, not ctypes, whose types and
    caches would cost every monitor ~0.5 MB for this one call."""
    try:
        if not private:
            raise ImportError
        import _ctypes

        prctl = _ctypes.dlsym(_ctypes.dlopen(None), "prctl")  # type: ignore[arg-type]
        result = _ctypes.call_function(prctl, (PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
        if result != 0:  # errno is not at hand without ctypes' machinery: ask it
            _set_child_subreaper_public()
    except (ImportError, AttributeError, TypeError):
        _set_child_subreaper_public()


def _set_child_subreaper_public() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {posix.strerror(err)}")
