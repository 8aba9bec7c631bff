"""The attach socket: any number of clients watch the container's output and feed its stdin.

/run/sdshim/NAME/attach is a SOCK_SEQPACKET socket (see sdshim.framing), root-only
like its directory. Output is fanned out to every client without ever blocking: a
frame goes straight into the client's socket buffer or into a queue of at most
CLIENT_LIMIT bytes. Neither the container nor the journal ever waits for a client:
- one that reads slower than the container writes (a slow link, a loaded machine)
  misses what does not fit; once its queue is half empty again it is told how many
  bytes it missed (a SKIPPED frame) and gets output again, so a terminal session
  survives a flood of output (the journal has all of it);
- one that takes nothing at all for STALL_TIMEOUT while output is waiting is dropped;
- one that disconnects is simply forgotten.
"""

from __future__ import annotations

import _socket
import time

from sdshim.shim import framing
from sdshim.shim.poller import EVENT_READ, EVENT_WRITE

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sdshim.shim.poller import Poller

CLIENT_LIMIT = 1 << 20
STALL_TIMEOUT = 5.0
# Frames read from one client per wake-up, so one busy client cannot starve the rest.
READ_BATCH = 64
_SEND_FLAGS = _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL


class FrameQueue:
    """First in, first out, without collections.deque (collections costs every monitor
    ~0.5 MB): a list and the index of its head, compacted as it empties."""

    def __init__(self) -> None:
        self._items: list[bytes] = []
        self._head = 0

    def __bool__(self) -> bool:
        return self._head < len(self._items)

    def __len__(self) -> int:
        return len(self._items) - self._head

    def __getitem__(self, index: int) -> bytes:
        if index != 0 or not self:
            raise IndexError(index)
        return self._items[self._head]

    def append(self, item: bytes) -> None:
        self._items.append(item)

    def popleft(self) -> bytes:
        if not self:
            raise IndexError("pop from an empty queue")
        item = self._items[self._head]
        self._head += 1
        if self._head > 64 and self._head * 2 > len(self._items):
            del self._items[:self._head]
            self._head = 0
        return item

    def clear(self) -> None:
        self._items.clear()
        self._head = 0


class Client:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.queue = FrameQueue()
        self.queued = 0
        self.muted = False
        self.closing = False  # the exit frame is queued: close once it is sent
        self.events = 0
        self.skipped = 0  # output bytes it missed and has not been told about yet
        self.progress = time.monotonic()  # when it last took a frame


class AttachServer:
    """Serves the connections the attach socket's listener (in sdshim.shim.stdio) accepts."""

    def __init__(self, poller: Poller, *,
                 on_input: Callable[[bytes], None], on_resize: Callable[[int, int], None],
                 on_eof: Callable[[], None], input_full: Callable[[], bool],
                 on_lost: Callable[[str], None]) -> None:
        self.poller = poller
        self.on_lost = on_lost  # a client dropped after an unexpected error: say so
        self.on_input = on_input
        self.on_resize = on_resize
        self.on_eof = on_eof
        self.input_full = input_full
        self.clients: dict[_socket.socket, Client] = {}
        self.result: dict[str, Any] | None = None
        self.on_flushed: Callable[[], None] | None = None

    # --- connections ---------------------------------------------------------------

    def accepted(self, conn: _socket.socket) -> None:
        client = Client(conn)
        self.clients[conn] = client
        try:
            conn.setblocking(False)
            if self.result is not None:  # the container has ended: say so, then close
                self._send(client, framing.exit_frame(self.result))
                client.closing = True
            self._update(client)
        except Exception as e:
            self._failed(client, e)

    def _drop(self, client: Client) -> None:
        if client.events:
            self.poller.unregister(client.sock)
            client.events = 0
        client.sock.close()
        self.clients.pop(client.sock, None)
        if self.on_flushed is not None and not self.clients:
            done, self.on_flushed = self.on_flushed, None
            done()

    def _failed(self, client: Client, e: BaseException) -> None:
        """Whatever went wrong with one client costs that client, never the others."""
        self._drop(client)
        self.on_lost(f"an attach client was dropped after an unexpected error ({e!r})")

    def _update(self, client: Client) -> None:
        if client.closing and not client.queue:
            self._drop(client)
            return
        events = 0 if self.input_full() or client.closing else EVENT_READ
        if client.queue:
            events |= EVENT_WRITE
        if events == client.events:
            return
        if not client.events:
            self.poller.register(client.sock, events, self._on_client,
                                 on_error=lambda e: self._failed(client, e))
        elif not events:
            self.poller.unregister(client.sock)
        else:
            self.poller.modify(client.sock, events, self._on_client)
        client.events = events

    def resume_input(self) -> None:
        """The container has read its stdin queue down: read the clients again."""
        for client in list(self.clients.values()):
            self._update(client)

    # --- client -> container ---------------------------------------------------------

    def _on_client(self, sock: object) -> None:
        client = self.clients.get(sock)  # type: ignore[call-overload]
        if client is None:
            return
        self._flush(client)
        if client.sock not in self.clients:
            return
        for _ in range(READ_BATCH):
            if client.closing or self.input_full():
                break
            try:
                data = client.sock.recv(framing.MAX_PAYLOAD + 1)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._drop(client)
                return
            self._handle(client, data[0], data[1:])
        self._update(client)

    def _handle(self, client: Client, kind: int, payload: bytes) -> None:
        if kind == framing.STDIN:
            self.on_input(payload)
        elif kind == framing.RESIZE:
            size = framing.parse_resize(payload)
            if size:
                self.on_resize(*size)
        elif kind == framing.EOF:
            self.on_eof()
        elif kind == framing.MUTE:
            client.muted = True
            client.queue.clear()
            client.queued = 0

    # --- container -> clients ----------------------------------------------------------

    def broadcast(self, kind: int, data: bytes) -> None:
        if not self.clients or not data:
            return
        frames = framing.split(kind, data)
        for client in list(self.clients.values()):
            if client.muted or client.closing:
                continue
            try:
                for f in frames:
                    if not self._offer(client, f):
                        break
                if client.sock in self.clients:
                    self._update(client)
            except Exception as e:
                self._failed(client, e)

    def _offer(self, client: Client, frame: bytes) -> bool:
        """Output for client: sent, queued, or skipped; False if the client was dropped."""
        full = client.queued + len(frame) > CLIENT_LIMIT
        if full or (client.skipped and client.queued > CLIENT_LIMIT // 2):
            if time.monotonic() - client.progress > STALL_TIMEOUT:
                self._drop(client)  # it takes nothing: never let it hold anything back
                return False
            client.skipped += len(frame) - 1
            return True
        return self._tell_skipped(client) and self._send(client, frame)

    def _tell_skipped(self, client: Client) -> bool:
        if not client.skipped:
            return True
        note = framing.frame(framing.SKIPPED, str(client.skipped).encode())
        client.skipped = 0
        return self._send(client, note)

    def _send(self, client: Client, data: bytes) -> bool:
        """Send now or queue (no limit: see _offer); False if the client was dropped."""
        if not client.queue:
            try:
                client.sock.send(data, _SEND_FLAGS)
                client.progress = time.monotonic()
                return True
            except BlockingIOError:
                client.progress = time.monotonic()  # it has something waiting from now on
            except OSError:
                self._drop(client)
                return False
        client.queue.append(data)
        client.queued += len(data)
        return True

    def _flush(self, client: Client) -> None:
        while client.queue:
            data = client.queue[0]
            try:
                client.sock.send(data, _SEND_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                self._drop(client)
                return
            client.progress = time.monotonic()
            client.queue.popleft()
            client.queued -= len(data)
        self._tell_skipped(client)  # caught up: say what it missed now, not at the next

    # --- the end ---------------------------------------------------------------------

    def finish(self, result: dict[str, Any], on_flushed: Callable[[], None]) -> None:
        """The container ended: send every client the exit record after its output;
        on_flushed() once every client has it (and is gone)."""
        self.result = result
        self.on_flushed = on_flushed
        exit_frame = framing.exit_frame(result)
        for client in list(self.clients.values()):
            client.closing = True
            if self._tell_skipped(client) and self._send(client, exit_frame):
                self._update(client)
        if not self.clients and self.on_flushed is not None:
            done, self.on_flushed = self.on_flushed, None
            done()

    def flushed(self) -> bool:
        return not self.clients

    def close(self) -> None:
        self.on_flushed = None
        for client in list(self.clients.values()):
            self._drop(client)
