"""The caller's terminal: raw mode (restored on every way out) and its size."""

from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from collections.abc import Iterator

from sdshim.errors import Interrupted

# Signals that end the CLI while the terminal is raw: they must unwind, not kill.
_UNWIND = (signal.SIGTERM, signal.SIGHUP)


def _unwind(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """The terminal on fd in raw mode: every key goes to the container (^C too), and the
    container's terminal does the output processing. Restored however the block ends."""
    saved = termios.tcgetattr(fd)
    handlers = {sig: signal.signal(sig, _unwind) for sig in _UNWIND}
    try:
        tty.setraw(fd, termios.TCSADRAIN)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def size(*fds: int) -> tuple[int, int] | None:
    """(rows, cols) of the first of fds that is a terminal."""
    for fd in fds:
        with contextlib.suppress(OSError):
            cols, rows = os.get_terminal_size(fd)
            return rows, cols
    return None
