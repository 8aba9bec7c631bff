"""conmon's attach socket: `<bundle>/attach`, SOCK_SEQPACKET, what podman attach and
podman exec connect to.

Output packets: one stream byte (2 stdout, 3 stderr; with a terminal everything is 2)
and at most 8192 bytes. Input packets: raw bytes for the container's stdin. A client's
shutdown(SHUT_WR) ends its input (and closes the container's stdin unless
--leave-stdin-open). Output goes to every client from the moment it connected; a client
that falls more than 1 MiB behind is dropped, so nobody blocks the container.
"""

from __future__ import annotations

import _socket
import errno
import posix

from sdshim import privapi
from sdshim.shim.poller import EVENT_READ, EVENT_WRITE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from sdshim.shim.poller import Poller

STDOUT, STDERR = 2, 3
MAX_PAYLOAD = 8192
MAX_INPUT = 32768
MAX_QUEUED = 1 << 20


def bind_long(sock: _socket.socket, directory: str, name: str) -> None:
    """bind() to directory/name however long the path: through /proc/self/fd (podman's
    bundle paths pass the 108 bytes of sun_path)."""
    dfd = posix.open(directory, posix.O_PATH | posix.O_CLOEXEC)
    try:
        sock.bind(f"/proc/self/fd/{dfd}/{name}")
    finally:
        posix.close(dfd)


def _hung_up(sock: _socket.socket) -> bool:
    import select

    poll = select.poll()
    poll.register(sock.fileno(), select.POLLOUT)
    return any(mask & (select.POLLHUP | select.POLLERR) for _fd, mask in poll.poll(0))


class Client:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.queue: list[bytes] = []
        self.queued = 0
        self.reading = True


class AttachServer:
    def __init__(self, poller: Poller, directory: str, on_input: Callable[[bytes], None],
                 on_eof: Callable[[], None]) -> None:
        self.poller = poller
        self.on_input = on_input
        self.on_eof = on_eof
        self.path = directory + "/attach"
        try:
            posix.unlink(self.path)  # stale: left by an earlier run
        except FileNotFoundError:
            pass
        self.sock = _socket.socket(_socket.AF_UNIX,
                                   _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        bind_long(self.sock, directory, "attach")
        posix.chmod(self.path, 0o700)
        self.sock.listen(10)
        self.sock.setblocking(False)
        self.clients: dict[int, Client] = {}
        poller.register(self.sock, EVENT_READ, self._on_accept)

    def _on_accept(self, _f: object) -> None:
        try:
            fd = privapi.accept(self.sock)
        except OSError:
            return
        sock = _socket.socket(fileno=fd)
        sock.setblocking(False)
        client = Client(sock)
        self.clients[fd] = client
        self.poller.register(fd, EVENT_READ, self._on_client)

    def _on_client(self, fileobj: object) -> None:
        client = self.clients.get(int(fileobj))  # type: ignore[call-overload]
        if client is None:
            return
        if not client.reading and not client.queue and _hung_up(client.sock):
            self._drop(client)  # gone for good after its SHUT_WR
            return
        if client.reading:
            try:
                data = client.sock.recv(MAX_INPUT)
            except BlockingIOError:
                data = None
            except OSError:
                self._drop(client)
                return
            if data == b"":
                client.reading = False
                self._update(client)
                self.on_eof()
            elif data:
                self.on_input(data)
        self._flush(client)

    def _update(self, client: Client) -> None:
        events = (EVENT_READ if client.reading else 0) | (EVENT_WRITE if client.queue else 0)
        fd = client.sock.fileno()
        if events:
            self.poller.modify(fd, events, self._on_client)
        else:
            self.poller.modify(fd, 0, self._on_client)

    def output(self, stream: int, data: bytes) -> None:
        if not self.clients:
            return
        frames = [bytes([stream]) + data[i:i + MAX_PAYLOAD]
                  for i in range(0, len(data), MAX_PAYLOAD)]
        for client in list(self.clients.values()):
            if client.queue:
                client.queue.extend(frames)
                client.queued += len(data)
                if client.queued > MAX_QUEUED:
                    self._drop(client)
                    continue
            else:
                client.queue = list(frames)
                client.queued = len(data)
            self._flush(client)

    def _flush(self, client: Client) -> None:
        had = bool(client.queue)
        while client.queue:
            frame = client.queue[0]
            try:
                client.sock.send(frame)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    self._drop(client)
                    return
                raise
            client.queue.pop(0)
            client.queued -= len(frame) - 1
        if had != bool(client.queue) or client.queue:
            self._update(client)

    def _drop(self, client: Client) -> None:
        fd = client.sock.fileno()
        self.clients.pop(fd, None)
        self.poller.unregister(fd)
        client.sock.close()

    def pending(self) -> bool:
        return any(c.queue for c in self.clients.values())

    def close(self) -> None:
        """At the container's end: every client is closed (after its queue)."""
        for client in list(self.clients.values()):
            client.sock.setblocking(True)
            client.sock.settimeout(2.0)
            try:
                for frame in client.queue:
                    client.sock.send(frame)
            except OSError:
                pass
            self._drop(client)
        self.poller.unregister(self.sock)
        self.sock.close()
