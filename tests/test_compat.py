"""Compatibility between versions (docs/design.md, "Protocols"): a client of one version
meets a monitor of another after an upgrade, so each side skips what it does not know."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from sdshim.shim import framing
from sdshim.units import attach


def test_attach_client_skips_frame_kinds_it_does_not_know(
        tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(str(tmp_path / attach.ATTACH_SOCKET))
    server.listen(1)
    client = attach.AttachSocket(tmp_path, "container t")

    def monitor() -> None:
        conn, _ = server.accept()
        for frame in (framing.frame(framing.STDOUT, b"before "),
                      framing.frame(99, b"a kind from a newer monitor"),
                      framing.frame(framing.STDOUT, b"after"),
                      framing.exit_frame({"exit_code": 0})):
            conn.send(frame)
        conn.close()

    thread = threading.Thread(target=monitor)
    thread.start()
    outcomes = [client._receive() for _ in range(4)]
    thread.join()
    client.close()
    server.close()
    assert outcomes[-1] is not None and outcomes[-1].how == "exited"
    assert capfdbinary.readouterr().out == b"before after"
