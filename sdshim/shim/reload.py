"""Reloading a container: `--reload-signal SIG`, ExecReload= and the control socket.

systemd 252 has no Type=notify-reload: `systemctl reload` runs ExecReload=, here
`__main__.py reload NAME` (main below), and the reload lasts as long as it runs. It
asks the monitor ({"op": "reload"}), which sends the container its reload signal and,
with `--sdnotify container`, answers only once the container has said RELOADING=1 and
then READY=1 (the notify proxy passes both on to systemd too). So `systemctl reload`
and `sdshim reload` return when the container is done reloading, and the unit shows
"reloading" meanwhile. A container that never says READY=1 again fails the reload at
the unit's TimeoutStartSec, when systemd kills this client.
"""

from __future__ import annotations

import _socket
import sys

from sdshim import leanjson, rundir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Reloads:
    """The monitor's side: reload requests ({"op": "reload"} on the control socket)
    waiting for the container. reply(ident, answer) answers one (the control server's)."""

    def __init__(self, signum: int, wait_ready: bool,
                 reply: Callable[[int, dict[str, object]], None]) -> None:
        self.signum = signum
        self.wait_ready = wait_ready
        self.reply = reply
        self.waiting: list[int] = []  # the requests' connections, to answer
        self.reloading = False  # RELOADING=1 seen since the signal

    def request(self, ident: int, deliver: Callable[[int], None], running: bool) -> None:
        if not running:
            self.reply(ident, {"ok": False, "error": "container is not running"})
            return
        deliver(self.signum)
        if not self.wait_ready:
            self.reply(ident, {"ok": True})
            return
        if not self.waiting:
            self.reloading = False
        self.waiting.append(ident)

    def notified(self, fields: dict[str, str]) -> None:
        """A datagram from the container, validated by the notify proxy."""
        if fields.get("RELOADING") == "1":
            self.reloading = True
        elif fields.get("READY") == "1" and self.reloading:
            self.reloading = False
            self._answer({"ok": True})

    def finish(self) -> None:
        self._answer({"ok": False, "error": "the container exited while reloading"})

    def _answer(self, answer: dict[str, object]) -> None:
        waiting, self.waiting = self.waiting, []
        for ident in waiting:
            self.reply(ident, answer)


def main(argv: list[str]) -> int:
    """ExecReload=: `__main__.py reload NAME`."""
    if len(argv) != 1:
        print("usage: sdshim-monitor reload NAME", file=sys.stderr)
        return 2
    path = rundir.container_dir(argv[0]) + "/control"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        sock.sendall(b'{"op": "reload"}')
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        print(f"sdshim: cannot reload container {argv[0]}: no monitor at {path}: {e}",
              file=sys.stderr)
        return 1
    finally:
        sock.close()
    try:
        reply = leanjson.loads(data.decode())
    except ValueError:
        reply = {"ok": False, "error": "the monitor closed the connection without an answer"}
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else reply
        print(f"sdshim: reloading container {argv[0]} failed: {error}", file=sys.stderr)
        return 1
    return 0
