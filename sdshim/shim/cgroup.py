"""Split the unit's delegated cgroup into leaves: the monitor's and the container's.

cgroup v2 allows no processes in an inner node, so with Delegate=yes the monitor
moves itself to supervisor/ and gives the runtime an absolute path to container/.
On hybrid hosts the same split is made in every hierarchy the unit owns.
"""

from __future__ import annotations

import errno

from sdshim import leanos
from sdshim.privapi import posix
from sdshim.shim.notify import say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

CGROUP_FS = "/sys/fs/cgroup"
SUPERVISOR = "supervisor"
CONTAINER = "container"


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """hierarchy key ('' for the unified one) -> this process's (or pid's) cgroup path."""
    result = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _hid, ctls, path = line.rstrip("\n").split(":", 2)
            result[ctls] = path
    return result


def _mount_of(key: str) -> str | None:
    if key == "":
        for cand in (leanos.join(CGROUP_FS, "unified"), CGROUP_FS):
            if leanos.exists(leanos.join(cand, "cgroup.controllers")):
                return cand
        return None
    name = key.removeprefix("name=")
    for cand in (leanos.join(CGROUP_FS, name), leanos.join(CGROUP_FS, key)):
        if leanos.isdir(cand):
            return cand
    return None


def _unit_leaves(unit: str, leaf: str, pid: int | str = "self") -> list[str]:
    """<unit cgroup>/leaf in every hierarchy where this process (or pid) is inside the
    unit."""
    leaves = []
    for key, path in own_cgroups(pid).items():
        parts = path.rstrip("/").split("/")
        if unit not in parts:
            continue
        mount = _mount_of(key)
        if mount is not None:
            unit_path = "/".join(parts[: parts.index(unit) + 1])
            leaves.append(leanos.join(mount, unit_path.lstrip("/"), leaf))
    return leaves


class CgroupError(OSError):
    """A move into the unit's own (unified) hierarchy failed: named path and errno."""


def _unified(leaf: str) -> bool:
    return leaf.startswith((leanos.join(CGROUP_FS, "unified") + "/",
                            leanos.join(CGROUP_FS, "systemd") + "/")) or \
        leanos.exists(leanos.join(CGROUP_FS, "cgroup.controllers"))


def _move(leaves: list[str], pid: int, warn: Callable[[str], None] = say) -> None:
    """Put pid into every leaf. A failure in the hierarchy systemd delegated (the
    unified one, or name=systemd) is an error; in a v1 controller's, where the runtime
    copes, a warning; both name the path and the errno. A pid that is gone is none."""
    for leaf in leaves:
        procs = leanos.join(leaf, "cgroup.procs")
        try:
            try:
                posix.mkdir(leaf)
            except FileExistsError:
                pass
            with open(procs, "w") as f:
                f.write(str(pid))
        except OSError as e:
            if e.errno == errno.ESRCH:
                return  # it ended meanwhile: its exit is what counts
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            message = (f"cannot move pid {pid} to {procs}: "
                       f"{posix.strerror(e.errno or 0)} ({code})")
            if _unified(leaf):
                error = CgroupError(message)
                error.errno = e.errno
                raise error from e
            warn(f"sdshim: warning: {message}")


def adopt(unit: str, pid: int) -> None:
    """Put pid into the container leaf everywhere (for runtimes that do not, e.g. crun
    with its cgroup manager disabled); a no-op where the runtime already did."""
    _move(_unit_leaves(unit, CONTAINER), pid)


def join(pid: int, like: int) -> None:
    """Put pid (0: this process) in every cgroup that process `like` is in."""
    try:
        with open(f"/proc/{like}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return  # the container is gone: so is the exec'd process
    for line in lines:
        _hid, ctls, path = line.split(":", 2)
        mount = _mount_of(ctls)
        if mount is not None:
            _move([leanos.join(mount, path.lstrip("/"))], pid)


def split(unit: str, pid: int = 0, warn: Callable[[str], None] = say) -> str:
    """Move this process (or pid, the unit's main process) to <unit cgroup>/supervisor
    everywhere; return the container path for the runtime's cgroupsPath. Outside a unit
    (run by hand), change nothing; a process there already is not moved again. warn
    gets what fails in a v1 controller's hierarchy (the runtime copes)."""
    key: int | str = pid or "self"
    cgroups = own_cgroups(key)
    unified = cgroups.get("", cgroups.get("name=systemd", ""))
    if unified.endswith(f"/{unit}/{SUPERVISOR}"):
        return f"{unified[:-len(SUPERVISOR)]}{CONTAINER}"
    if not unified.endswith("/" + unit):
        return ""
    _move(_unit_leaves(unit, SUPERVISOR, key), pid or posix.getpid(), warn)
    return f"{unified}/{CONTAINER}"

