"""What the monitor records for the manager: files in the container's runtime directory.

/run/sdshim/NAME/ (root-only)
  state.json   written by the monitor when the container is created and started
  exit.json    written once, after the output is drained, when the container ended
  runtime.log  the runtime's JSON error log
  control      the monitor's control socket (start, kill, stop)
  attach       the attach socket (output, stdin, terminal size; sdshim.framing)
  console      the runtime's console socket, while it hands over the pty (-t)
  exec-ID/     the same files for one `sdshim exec` process, written by its monitor
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TYPE_CHECKING = False  # the monitor imports this module; it skips `typing`
if TYPE_CHECKING:
    from typing import Any

RUN_DIR = Path(os.environ.get("SDSHIM_RUN_DIR", "/run/sdshim"))


def container_dir(name: str) -> Path:
    return RUN_DIR / name


def exec_dir(name: str, exec_id: str) -> Path:
    return container_dir(name) / f"exec-{exec_id}"


def runtime_root(runtime: str) -> Path:
    """Our own --root per runtime, so other users of runc never see or clash with ours."""
    return RUN_DIR / ".runtime" / Path(runtime).name


def runtime_roots() -> list[Path]:
    """Every runtime root in use (one per runtime that has run a container here)."""
    base = RUN_DIR / ".runtime"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: readers see the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def now_iso() -> str:
    """UTC, RFC 3339 with microseconds (time, not datetime: the monitor imports this)."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + \
        f".{ns // 1000 % 10**6:06d}Z"


def monotonic_ms() -> float:
    return time.monotonic() * 1000
