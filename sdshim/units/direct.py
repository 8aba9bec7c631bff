"""Zero-resident containers with no sdshim process at all (--supervisor systemd, runc):
the unit runs the runtime itself, and the caller does the rest.

The unit is Type=forking. ExecStart= is `runc create`, whose init then waits on runc's
exec FIFO; runc is no subreaper, so the init is PID 1's child once `runc create` has
returned, and systemd takes it from the pid file (PIDFile=) as the main process: the
start job is done, the container created. Only then does the caller run `runc start`
(Start): the init cannot end before systemd knows it as the main process, so every
exit, however early, is the unit's ExecMainStatus. The same order as the hand-off's
(sdshim.shim.handoff), without a Python process in the unit, and a created container
costs nothing resident either.

What the hand-off did in the unit, the caller does around it: before the start job,
the records and the effective config (prepare); after it, `runc start` and the exec
check (ExecCheck), which tells a command that runs from one that ended at once (an exec
failure, which the stop step finds in the container's last line, or its own exit). The
stop step (sdshim.shim.stoppost) records every exit, a failed `runc create` or `runc
start` included (from the runtime's JSON log), and deletes the runtime's state.

The container's stdout and stderr are the unit's own, as a native service's: one
journald stream that systemd opens from inside the unit (journald adds the unit's
LogExtraFields=), the name as SYSLOG_IDENTIFIER, priority info. One stream keeps the
order of stdout and stderr lines; it cannot tell them apart (see README).
"""

from __future__ import annotations

import fcntl
import os

from sdshim import leanos, naming, rundir
from sdshim.errors import BundleError, CreateError
from sdshim.shim import runtime
from sdshim.units.cgrouptrim import CGROUP_FS, SH, unified_only
from sdshim.units.systemd1 import exists_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sdshim.units.spec import ContainerSpec, Property

# On a unified-only (cgroup v2) host an inner cgroup may hold no processes once the
# runtime enables controllers below it: `runc create` moves itself to the unit's
# supervisor/ leaf first (what sdshim.shim.cgroup.split does for the hand-off). One line:
# systemd keeps a transient unit's settings in a file, and $$ is systemd's escape for $.
# $1: where /proc/PID/cgroup paths are mounted; $2: the unit; the rest: the command.
LEAF_SCRIPT = (
    'r=$$1 u=$$2; shift 2; while IFS=: read -r _ k p; do [ "$$k" ] && continue; '
    '[ "$${p##*/}" = "$$u" ] || continue; mkdir -p "$$r$$p/supervisor" && '
    'echo $$$$ >"$$r$$p/supervisor/cgroup.procs" || { echo "sdshim: cannot move the '
    'runtime to $$r$$p/supervisor" >&2; exit 1; }; done </proc/self/cgroup; exec "$$@"')
# How long the init may stay the runtime's binary after `runc start` before the command
# counts as running anyway. Longer than the monitor's 2 s: here it only delays the
# caller's answer, and an init never lingers before its execve but on a machine so
# loaded that a shorter wait would call an exec failure a running command.
EXEC_TIMEOUT = 10.0
RUNNING, PENDING, ENDED = "running", "pending", "ended"


def eligible(spec: ContainerSpec) -> bool:
    """Whether spec's container goes without the hand-off: what needs a process of
    sdshim's in the unit (a restart policy, whose every run must start the container
    and must not retry a failed create; crun's cgroup move; sockets, credentials,
    reload) keeps it."""
    f = spec.features
    return (spec.zero_resident and spec.restart == "no"
            and leanos.basename(spec.runtime) == "runc"
            and not (f.listen or f.load or f.set or f.reload_signal)
            and spec.health is None and spec.sdnotify == "monitor")


def slice_path(slice_unit: str) -> str:
    """A slice's cgroup path: a-b.slice is /a.slice/a-b.slice; -.slice is the root."""
    if slice_unit == "-.slice":
        return ""
    parts = slice_unit.removesuffix(".slice").split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


class Paths:
    """Where the container's records and the runtime's files are (as the hand-off's)."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.dir = rundir.container_dir(spec.name)
        self.config = leanos.join(self.dir, "bundle")
        self.pid = leanos.join(self.dir, "pid")
        self.state = leanos.join(self.dir, "state.json")
        self.rt = runtime.of_container(spec.runtime, self.dir)


def cgroups_path(spec: ContainerSpec) -> str:
    """The container's cgroup (runc's cgroupsPath): the unit's container/ leaf, in the
    unit's slice (-p Slice= or sdshim's)."""
    slice_unit = next((v for n, _s, v in reversed(spec.properties) if n == "Slice"),
                      naming.SLICE)
    return f"{slice_path(str(slice_unit))}/{spec.unit}/container"


def properties(spec: ContainerSpec, props: list[Property]) -> list[Property]:
    """The unit's properties (props: the hand-off's) with the runtime as its commands."""
    paths = Paths(spec)
    create = paths.rt.argv("create", "--bundle", paths.config, "--pid-file", paths.pid,
                           spec.id)
    if unified_only():
        create = [SH, "-c", LEAF_SCRIPT, "sdshim-leaf", CGROUP_FS, spec.unit, *create]
    replaced = {"Type": ("Type", "s", "forking"),
                "ExecStart": ("ExecStart", "a(sasb)", [[create[0], create, False]]),
                # The container's output is the unit's: its lines carry the name.
                "SyslogIdentifier": ("SyslogIdentifier", "s", spec.name)}
    return [*(replaced.get(p[0], p) for p in props),
            ("PIDFile", "s", paths.pid),
            ("GuessMainPID", "b", False),
            # Lines as the container wrote them: a leading <N> is not a priority.
            ("SyslogLevelPrefix", "b", False),
            # The runtime must not see NOTIFY_SOCKET (NotifyAccess=all is for the stop
            # step's StatusText=): runc would proxy the container's notifications and
            # make `runc start` wait for its READY=1.
            ("UnsetEnvironment", "as", ["NOTIFY_SOCKET"])]


def prepare(spec: ContainerSpec) -> None:
    """What the unit's commands read: the container's directory (made here, so that of
    two creates of one name one is refused), the effective config and the state."""
    paths = Paths(spec)
    leanos.makedirs(rundir.RUN_DIR, 0o700)
    try:
        os.mkdir(paths.dir, 0o700)
    except FileExistsError:
        raise exists_error(spec.name) from None
    try:
        cgroup = cgroups_path(spec)
        try:
            runtime.write_config(str(spec.bundle), paths.config, cgroup)
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot write the container's config to {paths.config}: "
                              f"{e}") from None
        leanos.makedirs(paths.rt.root, 0o700)
        rundir.write_json(paths.state, {
            "name": spec.name, "id": spec.id, "unit": spec.unit,
            "bundle": str(spec.bundle), "runtime": spec.runtime, "status": "creating",
            "supervisor": "systemd", "direct": True, "restart": spec.restart,
            "restarts": 0, "pid": None, "monitor_pid": None, "cgroup": cgroup,
            "created_at": rundir.now_iso(), "started_at": None, "log_driver": "stream",
            "invocation_ids": [], "tty": False, "stdin": False, "exec_confirmed": False})
    except BaseException:
        discard(spec)
        raise


def discard(spec: ContainerSpec) -> None:
    """The records of a container whose unit systemd refused to make."""
    import shutil

    shutil.rmtree(rundir.container_dir(spec.name), ignore_errors=True)


def main_pid(name: str) -> int:
    """The init's pid, from runc's pid file (systemd's PIDFile=); 0 if unreadable."""
    return rundir.read_pid(leanos.join(rundir.container_dir(name), "pid")) or 0


def lock_path(name: str) -> str:
    """Held while `runc start` runs (Start.hold; sdshim.shim.stoppost waits for it)."""
    return leanos.join(rundir.container_dir(name), "start.lock")


def record(name: str, **changes: Any) -> None:
    """Update the container's state, unless the stop step has recorded its end."""
    path = leanos.join(rundir.container_dir(name), "state.json")
    state: dict[str, Any] = rundir.read_json(path) or {}
    if state.get("status") == "exited":
        return  # ended meanwhile: the stop step's word is the last
    state.update(changes)
    rundir.write_json(path, state)


def record_created(name: str) -> int:
    """The state once systemd has the init as the unit's main process; its pid."""
    pid = main_pid(name)
    record(name, status="created", pid=pid or None)
    return pid


def record_running(name: str, pid: int) -> None:
    """The state once the command runs (the stop step need not look for an exec
    failure then)."""
    record(name, status="running", pid=pid, exec_confirmed=True, started_at=rundir.now_iso())


class Start:
    """`runc start` of a created container, from the caller (not the unit: a process
    less for systemd to fork per container), and what its end means.

    The transport runs argv (environment: env, output to /dev/null: the runtime logs its
    errors) and asks error() what its return code means: an error (the runtime's words)
    means the init is to be killed, so that the unit ends and its stop step records the
    failure; otherwise the exec check follows.
    """

    __slots__ = ("argv", "name", "rt")

    def __init__(self, name: str, state: dict[str, Any]) -> None:
        self.name = name
        path = str(state.get("runtime") or "runc")
        self.rt = runtime.of_container(path, rundir.container_dir(name))
        self.argv = self.rt.argv("start", str(state.get("id")))

    @property
    def env(self) -> dict[str, str] | None:
        # runc proxies NOTIFY_SOCKET, and `runc start` would wait for the container's
        # READY=1: a caller that is a service itself must not pass its own on. None
        # (inherit) without it: a copy costs the Manager per start, 200 at once.
        return leanos.environ("NOTIFY_SOCKET") if leanos.getenv("NOTIFY_SOCKET") else None

    def hold(self) -> int:
        """The start lock (an fd to close once `runc start` has ended): the stop step
        deletes the runtime's state only once it is free. A command that ends at once
        would otherwise have its state deleted under a `runc start` that is still
        finishing, which then fails (exec.fifo gone) although the command ran."""
        fd = os.open(lock_path(self.name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def error(self, code: int) -> CreateError | None:
        """What `runc start`'s return code means: None, or the error (its logged words)."""
        if code == 0:
            return None
        message = runtime.clean_message(self.rt.last_error()
                                        or f"{self.rt.name} start {runtime.ended(code)}")
        return CreateError(message, runtime.classify(message))


class ExecCheck:
    """Whether the init, once the unit's job is done, runs the container's command.

    States: pending (still the runtime's binary) -> running (exec'd; also when it stays
    the runtime's binary past EXEC_TIMEOUT, as the monitor counts it) or ended (gone
    first: its exit decides). The transport calls look() with what /proc/PID/exe reads
    (None: the process is gone) and the time, until the state is not pending.
    """

    __slots__ = ("deadline", "runtime", "state")

    def __init__(self, runtime_path: str, now: float) -> None:
        self.runtime = runtime_path
        self.deadline = now + EXEC_TIMEOUT
        self.state = PENDING

    def look(self, exe: str | None, now: float) -> str:
        if exe is None:
            self.state = ENDED
        elif not runtime.is_runtime_exe(exe, self.runtime) or now >= self.deadline:
            self.state = RUNNING
        return self.state


def read_exe(pid: int) -> str | None:
    """/proc/PID/exe, '' while unreadable, None once the process is gone."""
    if pid <= 0:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError:
        return None
    except OSError:
        return ""
