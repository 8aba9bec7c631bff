"""Passing what podman gave the launcher to the long-lived monitor.

systemd does not pass arbitrary file descriptors to a transient service's process, so
the launcher (the process podman starts) listens on a unix socket in a root-only
directory before the monitor exists, and the monitor connects to it as its first act.
The launcher sends one SOCK_SEQPACKET message: JSON (podman's argv, environment,
working directory, the original number of each fd) plus every fd as SCM_RIGHTS; the
monitor answers one byte once it holds them. Why this is race-free:

- the launcher keeps its own copies open until that answer, and fds in flight are
  references too: podman's pipes never see their last writer go (no false EOF), and a
  port reservation is never released, at any moment of the hand-over;
- only root can reach the socket (0700 directory), and the launcher checks the peer:
  SO_PEERCRED's pid must be the monitor it started, or a process of the unit it
  created; anything else is refused;
- the launcher writes the conmon pidfile (the monitor's PID, from SO_PEERCRED) and
  exits 0 only after the answer, so podman's Wait() returns when the monitor exists
  and has everything, as with conmon's fork.
"""

from __future__ import annotations

import _socket
import posix

from sdshim import fdpassing, leanjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HANDOVER_DIR = "/run/sdshim-conmon"
MAX_MESSAGE = 1 << 20
SCM_MAX_FD = 253  # the kernel's limit of fds per message
ACK = b"\x01"


class HandoverError(Exception):
    pass


def open_fds() -> list[int]:
    """This process' open fds (what podman handed over), before it opens its own."""
    fds = []
    for entry in posix.listdir("/proc/self/fd"):
        fd = int(entry)
        try:
            posix.fstat(fd)
        except OSError:
            continue  # the listing's own fd, closed by now
        fds.append(fd)
    return sorted(fds)


def listen(path: str) -> _socket.socket:
    try:
        posix.mkdir(HANDOVER_DIR, 0o700)
    except FileExistsError:
        pass
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.listen(1)
    return sock


def peer_pid(conn: _socket.socket) -> int:
    creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    pid, uid, _gid = fdpassing.unpack(creds)  # struct ucred: three ints, as fds are
    if uid != 0:
        raise HandoverError(f"hand-over socket: peer uid {uid} is not root")
    return int(pid)


def send(conn: _socket.socket, payload: dict[str, Any], fds: list[int]) -> None:
    if len(fds) > SCM_MAX_FD:
        raise HandoverError(f"podman passed {len(fds)} file descriptors; at most "
                            f"{SCM_MAX_FD} can be handed to the monitor")
    data = leanjson.dumps({**payload, "fds": fds}).encode()
    if len(data) > MAX_MESSAGE:
        raise HandoverError("hand-over message too large (environment or arguments)")
    conn.sendmsg([data], fdpassing.ancillary(fds))


def wait_ack(conn: _socket.socket, timeout: float) -> None:
    conn.settimeout(timeout)
    try:
        reply = conn.recv(16)
    except TimeoutError:
        raise HandoverError("the monitor did not confirm the hand-over in time") from None
    if reply != ACK:
        raise HandoverError("the monitor closed the hand-over socket before confirming")


def receive(path: str) -> tuple[_socket.socket, dict[str, Any], dict[int, int]]:
    """Monitor side: connect, take the message; (socket, payload, original fd -> ours)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    sock.connect(path)
    msg, received = fdpassing.receive(sock, MAX_MESSAGE, SCM_MAX_FD)
    payload: dict[str, Any] = leanjson.loads(msg.decode())
    originals = [int(fd) for fd in payload.pop("fds")]
    if len(originals) != len(received):
        raise HandoverError(f"hand-over: {len(received)} fds arrived, "
                            f"{len(originals)} were sent")
    return sock, payload, dict(zip(originals, received, strict=True))
