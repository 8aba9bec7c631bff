"""The container's records (sdshim.rundir) as the manager uses them: places as Paths."""

from __future__ import annotations

import time
from pathlib import Path

from sdshim import rundir
from sdshim.rundir import now_iso, read_json, write_json

__all__ = ["RUN_DIR", "container_dir", "exec_dir", "monotonic_ms", "now_iso", "read_json",
           "runtime_roots", "write_json"]

RUN_DIR = Path(rundir.RUN_DIR)


def container_dir(name: str) -> Path:
    return Path(rundir.container_dir(name))


def exec_dir(name: str, exec_id: str) -> Path:
    return Path(rundir.exec_dir(name, exec_id))


def runtime_roots() -> list[Path]:
    """Every runtime root in use (one per runtime that has run a container here)."""
    base = Path(rundir.RUNTIME_ROOTS)
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def monotonic_ms() -> float:
    return time.monotonic() * 1000
