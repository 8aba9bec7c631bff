"""The container's notify socket (--sdnotify container): the I/O half of the proxy.

A datagram socket in the records directory, /run/sdshim/NAME/notify/notify.sock,
whose directory is bind-mounted at /run/notify in the container (NOTIFY_SOCKET points
there): the host side stays root-only (NAME/ is 0700), the container can send to it
whatever its user. Each datagram comes with the sender's credentials (SO_PASSCRED:
the kernel fills them in, translated to the monitor's pid namespace) and any fds
(closed at once); notifyfilter decides what is forwarded.
"""

from __future__ import annotations

import _socket
import posix

from sdshim import leanos
from sdshim.shim.lifecycle import Ready
from sdshim.shim.listener import unix_socket
from sdshim.shim.notifyfilter import MAX_DATAGRAM, NotifyFilter, encode
from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdshim.shim.amendments import Amendments
    from sdshim.shim.monitor import Shell
    from sdshim.shim.notifyfilter import Verdict

CONTAINER_DIR = "/run/notify"  # where podman puts it too
SOCKET_NAME = "notify.sock"
MAX_FDS = 16  # room for this many in one message; more sets MSG_CTRUNC (refused anyway)
_INT = 4


class NotifyProxy:
    def __init__(self, directory: str) -> None:
        """directory: the host side (NAME/notify), made here."""
        self.directory = directory
        try:
            posix.mkdir(directory, 0o755)
        except FileExistsError:
            pass
        posix.chmod(directory, 0o755)
        self.path = leanos.join(directory, SOCKET_NAME)
        try:
            posix.unlink(self.path)  # left by a monitor that was killed
        except FileNotFoundError:
            pass
        self.sock = unix_socket(_socket.SOCK_DGRAM)
        self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        posix.chmod(self.path, 0o666)  # the container's user may be anyone
        self.sock.setblocking(False)
        self.filter = NotifyFilter()
        self._ancillary = _socket.CMSG_SPACE(3 * _INT) + _socket.CMSG_SPACE(MAX_FDS * _INT)

    def amend(self, amendments: Amendments) -> None:
        """What the container needs to reach it: NOTIFY_SOCKET and the bind mount."""
        amendments.setenv("NOTIFY_SOCKET", f"{CONTAINER_DIR}/{SOCKET_NAME}")
        amendments.bind(self.directory, CONTAINER_DIR, readonly=False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, in_container: Callable[[int], bool]) -> Verdict | None:
        """One datagram's verdict; None when there was none to read."""
        try:
            data, ancdata, flags, _addr = self.sock.recvmsg(MAX_DATAGRAM, self._ancillary,
                                                            _socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return None
        pid = 0
        fds = 0
        for level, kind, payload in ancdata:
            if level != _socket.SOL_SOCKET:
                continue
            if kind == _socket.SCM_CREDENTIALS and len(payload) >= _INT:
                pid = int.from_bytes(payload[:_INT], "little")
            elif kind == _socket.SCM_RIGHTS:
                for i in range(0, len(payload) - _INT + 1, _INT):
                    fds += 1
                    try:
                        posix.close(int.from_bytes(payload[i:i + _INT], "little"))
                    except OSError:
                        pass
        if flags & _socket.MSG_CTRUNC:
            fds = max(fds, 1)  # more than we made room for: the kernel dropped some
        return self.filter.check(data, truncated=bool(flags & _socket.MSG_TRUNC), fds=fds,
                                 sender_ok=pid > 0 and in_container(pid))

    def close(self) -> None:
        self.sock.close()
        try:
            posix.unlink(self.path)
        except FileNotFoundError:
            pass


def in_cgroup(pid: int, cgroup_path: str) -> bool | None:
    """Whether pid is in cgroup_path or below it (the unified hierarchy's path, or the
    named systemd one's on hybrid hosts, as cgroup.split gives it); None when the
    process is gone already."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    paths = {}
    for line in lines:
        _hid, ctls, path = line.split(":", 2)
        paths[ctls] = path
    path = paths.get("", paths.get("name=systemd", ""))
    return path == cgroup_path or path.startswith(cgroup_path + "/")


def same_pid_namespace(pid: int, other: int) -> bool | None:
    """Whether pid is in the pid namespace of other; None when either is gone."""
    try:
        return posix.readlink(f"/proc/{pid}/ns/pid") == \
            posix.readlink(f"/proc/{other}/ns/pid")
    except OSError:
        return None


class NotifyPart:
    """The proxy as a part of the monitor's shell: serves the socket on the loop,
    forwards what passes, writes the refusals to the journal, and hands READY=1 to the
    lifecycle (on_ready) instead of forwarding it: the lifecycle says when the unit is
    ready (not before the start is confirmed), and answers `sdshim start` then."""

    def __init__(self, proxy: NotifyProxy, *, forward: Callable[[bytes], None],
                 event: Callable[[str], None], on_ready: Callable[[], None],
                 status_text: Callable[[], str],
                 in_container: Callable[[int], bool]) -> None:
        self.proxy = proxy
        self.forward = forward
        self.event = event
        self.on_ready = on_ready
        self.status_text = status_text  # the unit's status text, with the container's
        self.in_container = in_container
        self.container_status = ""  # the container's own STATUS=, as it sent it
        # Parts that follow what the container says (reload waits for RELOADING=1,
        # then READY=1): each gets the fields of every datagram that passed.
        self.hooks: list[Callable[[dict[str, str]], None]] = []

    def on_readable(self, _fileobj: object) -> None:
        for _ in range(64):  # a container that floods the socket must not starve the loop
            verdict = self.proxy.receive(self.in_container)
            if verdict is None:
                return
            for line in verdict.journal:
                self.event(line)
            fields = []
            ready = False
            for key, value in verdict.fields:
                if key == "READY":
                    ready = True
                    continue
                if key == "STATUS":
                    self.container_status = value
                    value = self.status_text()
                fields.append((key, value))
            if fields:
                self.forward(encode(fields))
            if ready:
                self.on_ready()
            if verdict.fields:
                passed = dict(verdict.fields)
                for hook in self.hooks:
                    hook(passed)


def attach(shell: Shell) -> NotifyPart:
    """The proxy for the container of shell (sdshim.shim.monitor): the socket in its
    records directory, the container's config amended, the socket in the loop."""
    proxy = NotifyProxy(shell.path("notify"))
    proxy.amend(shell.amend())

    def in_container(pid: int) -> bool:
        if shell.cgroup_path:
            inside = in_cgroup(pid, shell.cgroup_path)
        elif shell.life.proc.pid:
            inside = same_pid_namespace(pid, shell.life.proc.pid)
        else:
            return False
        # Gone already (a notify helper that exited at once): only the container can
        # reach the socket (its host side is in the root-only records directory).
        return inside is None or inside

    part = NotifyPart(
        proxy, forward=shell.notifier.forward,
        event=lambda line: shell.event(f"{shell.life.what}: {line}",
                                       SDSHIM_EVENT="notify-refused"),
        on_ready=lambda: shell.feed(Ready()), status_text=shell.status_text,
        in_container=in_container)
    shell.poller.register(proxy, EVENT_READ, part.on_readable)
    return part
