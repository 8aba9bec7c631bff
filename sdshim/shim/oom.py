"""Whether the kernel's OOM killer struck the container, and keeping it off the monitor.

The count is read from the container's own cgroup leaf after the container ended and
before the runtime deletes that cgroup: cgroup v2 has `oom_kill N` in memory.events,
cgroup v1 (hybrid hosts) in memory.oom_control (kernels >= 4.13), there counted per
cgroup, so the leaf is the only place to look. conmon reads the same counters.
"""

from __future__ import annotations

import posix

from sdshim import leanos
from sdshim.shim.cgroup import CGROUP_FS

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from sdshim.leanos import StrPath

# Files holding the oom_kill counter, by layout: unified (v2) first, then v1.
_COUNTERS = (("unified", "memory.events"), ("", "memory.events"),
             ("memory", "memory.oom_control"))
OOM_SCORE_ADJ = "/proc/self/oom_score_adj"
MONITOR_OOM_SCORE_ADJ = -1000


def kills(cgroup_path: str, root: StrPath = CGROUP_FS) -> int | None:
    """OOM kills in the cgroup at cgroup_path (as in /proc/PID/cgroup); None if unknown."""
    if not cgroup_path:
        return None
    for mount, name in _COUNTERS:
        path = leanos.join(root, mount, cgroup_path.lstrip("/"), name)
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def protect_monitor() -> int | None:
    """Make the monitor the OOM killer's last choice in the unit's cgroup.

    The monitor shares the unit's memory limit with the container; if the kernel picked
    it, the container's exit status would be lost with it. Returns the score the
    monitor had, for the container to keep (None if it could not be changed).
    """
    try:
        with open(OOM_SCORE_ADJ) as f:
            original = int(f.read())
        fd = posix.open(OOM_SCORE_ADJ, posix.O_WRONLY | posix.O_CLOEXEC)
        try:
            posix.write(fd, str(MONITOR_OOM_SCORE_ADJ).encode())
        finally:
            posix.close(fd)
    except (OSError, ValueError):
        return None
    return original
