"""Requests to a monitor over its control socket (DIR/control): one JSON object out,
one JSON line back. What the messages are and mean, for both managers; and the
blocking request the quick commands make (sdshim.units.manager has the asyncio one)."""

from __future__ import annotations

# _socket, not socket: see sdshim.units.connection.
import _socket
import json

from sdshim.errors import ContainerStateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

TIMEOUT = 10.0


def encode(request: dict[str, Any]) -> bytes:
    return json.dumps(request).encode()


def decode(line: bytes, what: str) -> dict[str, Any]:
    """The monitor's reply line; an error if it closed without one."""
    try:
        reply: dict[str, Any] = json.loads(line)
    except ValueError:
        raise ContainerStateError(f"{what}: monitor closed the control "
                                  "connection without an answer") from None
    return reply


def no_monitor(what: str, path: Path) -> ContainerStateError:
    return ContainerStateError(f"{what} has no running monitor (no control socket at {path})")


def no_answer(what: str, e: OSError | None = None) -> ContainerStateError:
    """The monitor took the request and gave no answer: it failed (e), or it timed out."""
    if e is not None and not isinstance(e, TimeoutError):
        return ContainerStateError(f"{what}: monitor did not answer: {e}")
    return ContainerStateError(f"{what}: its monitor did not answer within {TIMEOUT:g} s; "
                               "it may be busy or stuck, try again")


def request(directory: Path, message: dict[str, Any], what: str) -> dict[str, Any]:
    """One request to the monitor whose records are in directory; its reply."""
    path = directory / "control"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(str(path))
        except OSError:
            raise no_monitor(what, path) from None
        line = b""
        try:
            sock.sendall(encode(message))
            while b"\n" not in line:
                data = sock.recv(65536)
                if not data:
                    break
                line += data
        except OSError as e:
            raise no_answer(what, e) from None
    finally:
        sock.close()
    return decode(line.partition(b"\n")[0], what)
