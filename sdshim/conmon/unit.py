"""The transient service a podman container's monitor runs as.

Named `sdshim-podman-<name>.service` (podman's container names are valid in unit
names; a name systemd would escape is replaced by the short id), so `systemctl status
sdshim-podman-web` shows the container, its memory, its processes and, while it runs,
how it ended. The container's processes live in the unit's own cgroup leaf
(`container/`), the monitor in `supervisor/` (see sdshim.shim.cgroup).
"""

from __future__ import annotations

import time

from sdshim.conmon import bundleconfig
from sdshim.errors import SdshimError
from sdshim.naming import NAME_CHARS
from sdshim.units import cgrouptrim
from sdshim.units.blockingbus import BlockingSystemd
from sdshim.units.systemd1 import (
    LOG_RATE_BURST_UNLIMITED,
    LOG_RATE_INTERVAL_USEC,
    PROPERTIES,
    SERVICE,
    START_TRANSIENT,
    UNIT_EXISTS,
    BusCallError,
    Call,
    Job,
    manager_call,
    unit_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from sdshim.units.spec import Property

PREFIX = "sdshim-podman-"
DESCRIPTION_PREFIX = "podman container "
SUFFIX = ".service"
DEFAULT_SLICE = "machine.slice"
MAX_GENERATIONS = 8  # podman's default cgroup parent
MAX_NAME = 200
# clash(): what holds a unit's name.
OURS = "ours"
ENDED = "ended"
TAKEN = "taken"
ENDING_STATES = ("deactivating", "inactive", "failed")
# An ended container's unit goes once its exit command and ExecStopPost= (the cgroup
# trim) are done; how long the next container of its name waits for it, then takes
# the next instance.
ENDED_WAIT = 2.0
ENDED_POLL = 0.02


def _unit_safe(text: str) -> bool:
    # Not re: importing it would be the largest part of the launcher's imports, on the
    # path of every podman start.
    return bool(text) and NAME_CHARS.issuperset(text)


class UnitError(Exception):
    pass


def unit_name(name: str | None, cid: str) -> str:
    base = name if name and len(name) <= MAX_NAME and _unit_safe(name) else cid[:12]
    return f"{PREFIX}{base}{SUFFIX}"


def slice_of(cgroups_path: str) -> str:
    """The slice of podman's systemd cgroupsPath (`machine.slice:libpod:ID`)."""
    first = cgroups_path.split(":", 1)[0] if ":" in cgroups_path else ""
    stem = first[:-len(".slice")] if first.endswith(".slice") else ""
    return first if _unit_safe(stem) else DEFAULT_SLICE


def properties(unit: str, name: str, cid: str, slice_: str, argv: Sequence[str],
               env: Sequence[str], cwd: str) -> list[Property]:
    return cgrouptrim.add_to([
        ("Description", "s", f"{DESCRIPTION_PREFIX}{name} ({cid[:12]})"),
        ("Slice", "s", slice_),
        ("Type", "s", "exec"),
        ("Delegate", "b", True),
        # In the unit's own mask, not only delegated: on cgroup v1 systemd trims a
        # hierarchy it no longer needs in the slice (another container's scope went,
        # taking blkio with it) and `runc exec` then finds no container/ leaf there.
        ("IOAccounting", "b", True),
        ("MemoryAccounting", "b", True),
        ("TasksAccounting", "b", True),
        # Gone once it ends, whatever its status: the next container of that name (a
        # podman restart, a new run) gets the name again. podman keeps the exit code.
        ("CollectMode", "s", "inactive-or-failed"),
        # SIGTERM to the monitor, which forwards it; SIGKILL for all after the timeout.
        ("KillMode", "s", "mixed"),
        # The unit ends when its cgroup is empty, not when the monitor exits: podman's
        # exit command (run by the monitor, in this cgroup, as conmon runs it in its
        # scope) restarts containers with a restart policy and starts their slirp4netns
        # and rootlessport here; ending the unit with the monitor would kill those.
        ("ExitType", "s", "cgroup"),
        ("SyslogIdentifier", "s", "sdshim-conmon"),
        ("LogRateLimitIntervalUSec", "t", LOG_RATE_INTERVAL_USEC),
        ("LogRateLimitBurst", "u", LOG_RATE_BURST_UNLIMITED),
        ("Environment", "as", [*env, f"SDSHIM_CONTAINER={cid}"]),
        ("WorkingDirectory", "s", cwd),
        ("ExecStart", "a(sasb)", [[argv[0], list(argv), False]]),
    ])


def start(name: str, cid: str, props_for: Callable[[str], list[Property]]
          ) -> tuple[BlockingSystemd, str]:
    """Start the container's unit; the connection (kept for stop() on a failed
    hand-over) and the unit's name.

    The name is unit_name(). A unit of that name may still be there (clash()):
    - this very container's, finishing: its monitor runs podman's exit command
      (`podman container cleanup`), and that is what restarts a container with a
      restart policy, through a new monitor, while the old unit is still active. That
      instance gets `sdshim-podman-NAME@N.service`: '@' never occurs in podman's names
      (and ':' would break podman's reading of /proc/PID/cgroup);
    - another container's whose monitor has ended (`podman rm NAME; podman run --name
      NAME`): its exit command or ExecStopPost= (the cgroup trim) is still running,
      and the unit goes with them. The new container waits for the name a moment,
      then takes the next instance;
    - another container's whose monitor runs: refused, clearly.
    """
    systemd = BlockingSystemd.connect()
    base = unit_name(name, cid)
    try:
        generation = 1
        deadline = 0.0  # while waiting for an ended container's unit to go
        while generation <= MAX_GENERATIONS:
            unit = base if generation == 1 else base.replace(SUFFIX, f"@{generation}{SUFFIX}")
            job = Job(manager_call(
                "StartTransientUnit", START_TRANSIENT,
                [unit, "fail", [(n, (sig, v)) for n, sig, v in props_for(unit)], []],
                purpose=f"systemd to start {unit}", hint=f"see `systemctl status {unit}`"))
            try:
                systemd.run_job(job, timeout=60)
            except BusCallError as e:
                if e.name != UNIT_EXISTS:
                    raise UnitError(f"systemd refused to start {unit}: {e}") from None
                verdict = clash(systemd.service_state(unit), cid)
                if verdict == TAKEN:
                    raise UnitError(f"unit {unit} exists already: another container of "
                                    "that name is running on sdshim (stop it, or podman "
                                    "rename one of them)") from None
                if verdict == ENDED:
                    now = time.monotonic()
                    deadline = deadline or now + ENDED_WAIT
                    if now < deadline:
                        time.sleep(ENDED_POLL)
                        continue  # the same name again
                generation += 1
                deadline = 0.0
                continue
            if not job.ok:
                raise UnitError(f"{unit} did not start (job {job.result}); see "
                                f"journalctl -u {unit}")
            return systemd, unit
        raise UnitError(f"{MAX_GENERATIONS} monitors of container {name} are still "
                        f"finishing; see systemctl list-units '{base[:-len(SUFFIX)]}*'")
    except BaseException:
        systemd.conn.close()
        raise


def clash(props: dict[str, Any] | None, cid: str) -> str:
    """What the unit holding the name a container's unit wants is, from its properties
    (Unit and Service; None: gone meanwhile): OURS (this container's previous monitor),
    ENDED (another podman container's, whose monitor has exited: the unit is about to
    go), or TAKEN (another container's running monitor, or not a podman container's
    unit at all)."""
    if props is None:
        return ENDED  # gone between the two calls: try the name again
    description = str(props.get("Description", ""))
    if f"({cid[:12]})" in description:
        return OURS
    if not description.startswith(DESCRIPTION_PREFIX):
        return TAKEN
    if not props.get("MainPID") or props.get("ActiveState") in ENDING_STATES:
        return ENDED
    return TAKEN


def place_monitor(systemd: BlockingSystemd, unit: str, bundle: str) -> dict[str, Any]:
    """What the monitor does first in its unit, done here while its interpreter starts,
    off podman's wait: the monitor moved to the unit's supervisor/ leaf and the
    container's cgroupsPath set to container/ (sdshim.shim.cgroup.split). The unit's
    main process is the monitor, the only process in it: a Type=exec start job ends once
    systemd has executed it. The placement for the hand-over; {} when it could not be
    made here: the monitor makes it then, and says what failed."""
    from sdshim.shim import cgroup  # here: not on the way to StartTransientUnit

    warnings: list[str] = []
    try:
        (pid,) = systemd.conn.call(Call(unit_path(unit), PROPERTIES, "Get", "ss",
                                        [SERVICE, "MainPID"],
                                        purpose=f"systemd's MainPID of {unit}"))
        path = cgroup.split(unit, int(pid), warnings.append) if pid else ""
        if path:
            bundleconfig.set_cgroups_path(bundle, path)
    except (BusCallError, SdshimError, OSError, ValueError):
        return {}
    return {"cgroups_path": path, "warnings": warnings} if path else {}


def stop(systemd: BlockingSystemd, unit: str) -> None:
    systemd.stop(unit)
