"""What the monitor records for the manager: files in the container's runtime directory.

/run/sdshim/NAME/ (root-only)
  state.json   written by the monitor when the container is created and started
  exit.json    written once, after the output is drained, when the container ended
  runtime.log  the runtime's JSON error log
  control      the monitor's control socket (start, kill, stop)
  attach       the attach socket (output, stdin, terminal size; sdshim.framing)
  console      the runtime's console socket, while it hands over the pty (-t)
  notify/      the container's notify socket, notify.sock (--sdnotify container),
               bind-mounted at /run/notify in the container
  health.json  health checks (--health-cmd): status, failing streak, last results;
               health.pid and health-runtime.log are the running probe's
  exec-ID/     the same files for one `sdshim exec` process, written by its monitor

Paths here are strings: the monitor imports this module, and pathlib (with re, fnmatch,
urllib.parse, ...) would cost every container ~2 MB and 2 ms. sdshim.records gives the
manager the same places as Paths.
"""

from __future__ import annotations

import posix
import time

from sdshim import leanjson, leanos

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any

    from sdshim.leanos import StrPath

RUN_DIR = leanos.getenv("SDSHIM_RUN_DIR", "/run/sdshim")
RUNTIME_ROOTS = leanos.join(RUN_DIR, ".runtime")


def container_dir(name: str) -> str:
    return leanos.join(RUN_DIR, name)


def exec_dir(name: str, exec_id: str) -> str:
    return leanos.join(container_dir(name), f"exec-{exec_id}")


def runtime_root(runtime: str) -> str:
    """Our own --root per runtime, so other users of runc never see or clash with ours."""
    return leanos.join(RUNTIME_ROOTS, leanos.basename(runtime))


def write_json(path: StrPath, data: dict[str, Any]) -> None:
    """Write atomically: readers see the old file or the new one, never half of it."""
    head, tail = leanos.split(path)
    tmp = leanos.join(head, f".{tail}.tmp")
    with open(tmp, "w") as f:
        f.write(leanjson.dumps(data))
        f.flush()
        posix.fsync(f.fileno())
    posix.replace(tmp, path)


def read_json(path: StrPath) -> dict[str, Any] | None:
    """The object in the file; None if it is missing, unreadable or not a JSON object."""
    try:
        with open(path, "rb") as f:
            data = leanjson.loads(f.read().decode())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None


def read_pid(path: StrPath) -> int | None:
    """The pid in a pid file (the runtime's --pid-file); None if missing or not a pid."""
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def now_iso() -> str:
    """UTC, RFC 3339 with microseconds (time, not datetime: the monitor imports this)."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + \
        f".{ns // 1000 % 10**6:06d}Z"
