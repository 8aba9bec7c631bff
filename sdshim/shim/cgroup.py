"""Split the unit's delegated cgroup into leaves: the monitor's and the container's.

cgroup v2 allows no processes in an inner node, so with Delegate=yes the monitor
moves itself to supervisor/ and gives the runtime an absolute path to container/.
On hybrid hosts the same split is made in every hierarchy the unit owns.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
SUPERVISOR = "supervisor"
CONTAINER = "container"


def own_cgroups() -> dict[str, str]:
    """hierarchy key ('' for the unified one) -> this process's cgroup path."""
    result = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _hid, ctls, path = line.rstrip("\n").split(":", 2)
            result[ctls] = path
    return result


def _mount_of(key: str) -> Path | None:
    if key == "":
        for cand in (CGROUP_FS / "unified", CGROUP_FS):
            if (cand / "cgroup.controllers").exists():
                return cand
        return None
    name = key.removeprefix("name=")
    for cand in (CGROUP_FS / name, CGROUP_FS / key):
        if cand.is_dir():
            return cand
    return None


def split(unit: str) -> str:
    """Move this process to <unit cgroup>/supervisor everywhere; return the container path.

    Outside a unit (run by hand), leave everything as it is.
    """
    cgroups = own_cgroups()
    unified = cgroups.get("", cgroups.get("name=systemd", ""))
    if not unified.endswith("/" + unit):
        return ""
    base = unified
    for key, path in cgroups.items():
        if not path.endswith("/" + unit):
            continue
        mount = _mount_of(key)
        if mount is None:
            continue
        leaf = mount / path.lstrip("/") / SUPERVISOR
        try:
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            continue  # a hierarchy not delegated to us: the runtime will cope
    return f"{base}/{CONTAINER}"
