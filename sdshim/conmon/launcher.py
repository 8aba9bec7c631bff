"""`sdshim-conmon`: the program podman runs as its conmon.

It checks the command line as conmon does, waits for podman's start byte (podman moves
it into a cgroup first), starts the long-lived monitor, hands it every fd podman gave
(sdshim.conmon.handover), writes the monitor's PID to the conmon pidfile and exits 0,
as conmon's first process does after its fork. The monitor is the main process of a
transient service of its own (sdshim.conmon.unit) unless this runs inside a unit
already (INVOCATION_ID: `podman generate systemd --new` units): then, and for exec
sessions, it is started here, in a session of its own, where podman put us.
"""

from __future__ import annotations

import _socket
import posix
import sys
import time

from sdshim import leanos, privapi, spawn
from sdshim.conmon import bundleconfig, handover, interpreter, options
from sdshim.errors import SdshimError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sdshim.units.blockingbus import BlockingSystemd

HANDOVER_TIMEOUT = 60.0
EXIT_FAILURE = 1  # conmon's status for everything it refuses


class LaunchError(Exception):
    pass


def _env_fd(name: str) -> int:
    value = leanos.getenv(name)
    return int(value) if value.isdigit() else -1


def read_start_byte() -> None:
    """Block until podman has put us in our cgroup (conmon does this before forking)."""
    fd = _env_fd("_OCI_STARTPIPE")
    if fd < 0:
        return
    try:
        posix.read(fd, 1)
    except OSError as e:
        raise LaunchError(f"[conmon:e]: Failed to read from the start pipe: {e}") from None


def in_unit() -> bool:
    """podman itself runs in a service (generate systemd --new): no second unit.

    podman passes no INVOCATION_ID to conmon, but it moves conmon into a
    libpod-conmon-ID.scope unless it runs in a service itself (or --cgroups=no-conmon):
    so a launcher still in a service's cgroup is in podman's unit."""
    if leanos.getenv("INVOCATION_ID"):
        return True
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    paths = {ctl: path for _hid, ctl, path in (line.split(":", 2) for line in lines)}
    path = paths.get("", paths.get("name=systemd", ""))
    return path.rstrip("/").rsplit("/", 1)[-1].endswith(".service")


def launch(opts: options.Options, argv: list[str]) -> int:
    # 0-2 only for passthrough: elsewhere the monitor must not hold podman's stdio
    # (with -t podman reads our stderr until EOF), as conmon puts /dev/null there.
    fds = [fd for fd in handover.open_fds() if fd > 2 or opts.passthrough()]
    # podman moves this process into libpod-conmon-ID.scope, then writes the start byte.
    # A launcher outside a service before that is outside one after it too: its unit
    # can start while podman moves it. Only in a service must the answer wait for the
    # move (in_unit), as must a monitor started here, in place.
    on_systemd = not opts.exec and leanos.isdir("/run/systemd/system")
    early = on_systemd and not in_unit()
    if not early:
        read_start_byte()
    own_unit = early or (on_systemd and not in_unit())
    try:
        return _start_monitor(opts, argv, fds, own_unit)
    finally:
        if early:
            # Before this pid exits, whatever happened: podman moves it, then writes.
            # A failure to read changes nothing now: the monitor has started, or failed.
            try:
                read_start_byte()
            except LaunchError:
                pass


def _start_monitor(opts: options.Options, argv: list[str], fds: list[int],
                   own_unit: bool) -> int:
    try:
        interp = interpreter.ensure()
    except interpreter.InterpreterError as e:
        raise LaunchError(f"[conmon:e]: {e}") from None
    path = f"{handover.HANDOVER_DIR}/h-{posix.getpid()}.sock"
    sock = handover.listen(path)
    env = [f"{k}={v}" for k, v in leanos.environ().items()]
    assert opts.cid and opts.bundle
    cid = opts.cid
    unit = ""
    placement: dict[str, Any] = {}
    systemd: BlockingSystemd | None = None
    child = 0
    cwd = posix.getcwd()
    try:
        monitor_argv = interpreter.argv(interp, path)
        if own_unit:
            from sdshim.conmon import unit as units

            name = opts.name or opts.cid[:12]
            slice_ = units.slice_of(bundleconfig.cgroups_path(opts.bundle))

            def props_for(unit: str) -> list[Any]:
                return units.properties(unit, name, cid, slice_, monitor_argv, env, cwd)

            try:
                systemd, unit = units.start(opts.name or "", cid, props_for)
            except (units.UnitError, SdshimError) as e:
                raise LaunchError(f"[conmon:e]: {e}") from None
            if opts.systemd_cgroup:
                placement = units.place_monitor(systemd, unit, opts.bundle)
        else:
            # /dev/null for stdio, as conmon's daemon: podman reads our stdout and
            # stderr until EOF.
            null = [(posix.POSIX_SPAWN_OPEN, fd, leanos.DEVNULL_PATH, posix.O_RDWR, 0)
                    for fd in (0, 1, 2)]
            child = posix.posix_spawn(monitor_argv[0], monitor_argv, leanos.environ(),
                                      file_actions=null, setsid=True,
                                      setsigdef=spawn._RESET_SIGNALS)
        sock.settimeout(HANDOVER_TIMEOUT)
        deadline = time.monotonic() + HANDOVER_TIMEOUT
        while True:
            try:
                fd = privapi.accept(sock)
                conn = _socket.socket(fileno=fd)
            except TimeoutError:
                raise LaunchError("[conmon:e]: the monitor did not start in time; see "
                                  f"journalctl -u {unit}" if unit else
                                  "[conmon:e]: the monitor did not start in time") from None
            pid = handover.peer_pid(conn)
            if (child and pid == child) or (unit and _in_unit(pid, unit)):
                break
            conn.close()  # not our monitor: ignore it
            sock.settimeout(max(0.1, deadline - time.monotonic()))
        # What a started service does not inherit from podman but the runtime must
        # (`--group-add keep-groups` keeps podman's supplementary groups).
        umask = posix.umask(0o022)
        posix.umask(umask)
        handover.send(conn, {"argv": argv, "env": env, "cwd": cwd, "unit": unit,
                             "groups": posix.getgroups(), "umask": umask,
                             "placement": placement}, fds)
        handover.wait_ack(conn, HANDOVER_TIMEOUT)
        conn.close()
    except (handover.HandoverError, OSError) as e:
        _abandon(systemd, unit, child)
        raise LaunchError(f"[conmon:e]: cannot hand over to the monitor: {e}") from None
    except BaseException:
        _abandon(systemd, unit, child)
        raise
    finally:
        sock.close()
        try:
            posix.unlink(path)
        except FileNotFoundError:
            pass
    if systemd is not None:
        systemd.conn.close()
    if opts.conmon_pidfile:
        _write_pidfile(opts.conmon_pidfile, pid)
    return 0


def _in_unit(pid: int, unit: str) -> bool:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return f"/{unit}" in f.read()
    except OSError:
        return False


def _abandon(systemd: BlockingSystemd | None, unit: str, child: int) -> None:
    """Leave nothing behind: the unit stopped, the monitor we started killed."""
    if systemd is not None:
        from sdshim.conmon import unit as units

        units.stop(systemd, unit)
        systemd.conn.close()
    if child:
        try:
            posix.kill(child, 9)
            posix.waitpid(child, 0)
        except OSError:
            pass


def _write_pidfile(path: str, pid: int) -> None:
    """Decimal, no newline (podman Atoi's it as it is), atomically."""
    tmp = f"{path}.tmp"
    fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC,
                    0o644)
    try:
        posix.write(fd, str(pid).encode())
    finally:
        posix.close(fd)
    posix.rename(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = options.parse(args)
    except options.OptionError as e:
        print(f"conmon: option parsing failed: {e}")  # conmon's goes to stdout too
        return EXIT_FAILURE
    if opts.version:
        sys.stdout.write(options.version())
        return 0
    if opts.help:
        print("Usage:\n  conmon [OPTION…] - conmon utility (sdshim)\n\nSee sdshim-conmon(1).")
        return 0
    try:
        options.check(opts)
        return launch(opts, args)
    except (options.UsageError, LaunchError) as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
