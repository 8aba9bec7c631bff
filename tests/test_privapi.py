"""sdshim.privapi: every private CPython API, and its standard-library fallback.

The private path is what runs today; each fallback is what runs once a Python
release changes the private API: both must give the same results.
"""

from __future__ import annotations

import _socket
import json
import math
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from sdshim import privapi, signals

VALUES: list[Any] = [{"a": [1, 2.5, None, True], "é": "\u2603\n"}, [], "x", 0, -1.5e300,
                     {"nested": {"k": [{"z": "y"}]}}, float("inf")]


@pytest.mark.parametrize("private", [True, False])
def test_json_codec_is_json_both_ways(private: bool) -> None:
    encode, scan, error = privapi.json_codec(private=private)
    for value in VALUES:
        text = "".join(encode(value, 0))
        assert text == json.dumps(value)
        assert scan(text, 0) == (json.loads(text), len(text))
    with pytest.raises(StopIteration):
        scan("", 0)
    with pytest.raises(ValueError) as exc:
        scan('{"a" 1}', 0)
    assert isinstance(exc.value, error())
    assert math.isnan(scan("NaN", 0)[0])


def without_site(code: str) -> list[str]:
    """What code prints, run from this checkout by an interpreter without site (as the
    monitor runs): sys.argv[1] is the checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          "import sys; sys.path.insert(0, sys.argv[1])\n" + code, root],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()


def test_json_errors_without_json_loaded() -> None:
    # The monitor never imports json: the C scanner's errors must still be
    # ValueErrors (Python 3.11's _json raises SystemError without json.decoder).
    lines = without_site(
            "from sdshim import leanjson\n"
            "for bad in ['{\"a\" 1}', '[1,', 'x', '{} x', '\"\\\\x\"']:\n"
            "    try:\n"
            "        leanjson.loads(bad)\n"
            "    except ValueError as e:\n"
            "        print(type(e).__name__, e.pos)\n"
            "print('re' in sys.modules, 'json' in sys.modules)\n")
    assert lines[:5] == ["JSONDecodeError 5", "JSONDecodeError 3", "JSONDecodeError 0",
                         "JSONDecodeError 3", "JSONDecodeError 1"], lines
    assert lines[5] == "False False"


def test_json_imports_after_a_lean_decode_error() -> None:
    # The stand-in json.decoder lives only while the scanner raises: a process that
    # reads a bad record first and imports json later (the CLI) gets json whole.
    lines = without_site(
            "from sdshim import leanjson\n"
            "try:\n"
            "    leanjson.loads('[1,')\n"
            "except ValueError as e:\n"
            "    print(type(e).__name__, e.pos)\n"
            "import json\n"
            "print(json.loads('[2]'), 'json.decoder' in sys.modules)\n"
            "try:\n"
            "    leanjson.loads('{} x')\n"
            "except json.JSONDecodeError as e:\n"
            "    print(type(e).__module__, e.pos)\n"
            "try:\n"
            "    leanjson.loads('[1,')\n"
            "except json.JSONDecodeError as e:\n"
            "    print(type(e).__module__, e.pos)\n")
    # Once json is loaded, leanjson's errors are json's own class (the scanner's too).
    assert lines == ["JSONDecodeError 3", "[2] True", "json.decoder 3", "json.decoder 3"]


def test_stand_in_decode_error_has_jsons_fields() -> None:
    e = privapi.JSONDecodeError("Expecting value", "ab\ncd", 4)
    real = json.JSONDecodeError("Expecting value", "ab\ncd", 4)
    assert str(e) == str(real)
    assert (e.msg, e.pos, e.lineno, e.colno) == (real.msg, real.pos, real.lineno, real.colno)


def listener(tmp_path: Any) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    sock.bind(str(tmp_path / "s"))
    sock.listen(1)
    return sock


@pytest.mark.parametrize("private", [True, False])
def test_accept_gives_a_blocking_close_on_exec_fd(tmp_path: Any, private: bool) -> None:
    sock = listener(tmp_path)
    client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    client.connect(str(tmp_path / "s"))
    try:
        fd = privapi.accept(sock) if private else privapi._accept_public(sock)
        conn = _socket.socket(fileno=fd)
        assert not os.get_inheritable(fd) and conn.getblocking()
        client.sendall(b"hi")
        assert conn.recv(2) == b"hi"
        conn.close()
    finally:
        client.close()
        sock.close()


@pytest.mark.parametrize("private", [True, False])
def test_set_child_subreaper(private: bool) -> None:
    # In a child, so the test process itself stays as it was.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from sdshim import privapi\n"
            f"privapi.set_child_subreaper(private={private})\n"
            "import ctypes\n"
            "v = ctypes.c_int(); libc = ctypes.CDLL(None)\n"
            "libc.prctl(37, ctypes.byref(v), 0, 0, 0)\n"  # PR_GET_CHILD_SUBREAPER
            "print(v.value)\n")
    out = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "1", out


def test_a_refused_prctl_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privapi, "PR_SET_CHILD_SUBREAPER", 0x7FFF0000)  # no such option
    with pytest.raises(OSError, match="PR_SET_CHILD_SUBREAPER"):
        privapi.set_child_subreaper()
    with pytest.raises(OSError, match="PR_SET_CHILD_SUBREAPER"):
        privapi.set_child_subreaper(private=False)


def test_signal_module_and_names_match_signal() -> None:
    assert privapi.signal_module().SIGTERM == signal.SIGTERM
    for num in range(1, signal.NSIG):
        try:
            expected = signal.Signals(num).name
        except ValueError:
            expected = str(num)
        assert signals.name(num) == expected
    for key, member in signal.Signals.__members__.items():
        assert signals.signal_number(key) == int(member)
        assert signals.signal_number(key.removeprefix("SIG").lower()) == int(member)
    with pytest.raises(ValueError, match="unknown signal 'NOPE'"):
        signals.signal_number("NOPE")


@pytest.mark.parametrize("private", [True, False])
def test_pyc_magic_is_the_interpreters(private: bool) -> None:
    import importlib.util

    assert privapi.pyc_magic(private=private) == importlib.util.MAGIC_NUMBER
