"""What systemd hands the monitor for its container, and how the container gets it:
listening sockets (LISTEN_FDS), credentials (CREDENTIALS_DIRECTORY), the watchdog
(WATCHDOG_USEC).

All of it goes into the monitor's copy of the bundle's config.json (never the user's
bundle), through the monitor's Amendments (sdshim.shim.amendments), and onto the
runtime's command line:
- sockets: fds 3.. stay open across `runc create --preserve-fds N`, which makes them the
  container's fds 3..; LISTEN_PID=1, because the command is PID 1 of its own PID
  namespace (required: sd_listen_fds() checks LISTEN_PID).
- credentials: systemd's directory is root's, mode 0400, so a container user other than
  root could not read it. The monitor moves into a mount namespace of its own (which the
  runtime, and so the container, inherit), copies the credentials into a fresh ramfs
  owned by the container's user, files 0400, mounts it read-only, and the container gets
  it bind-mounted read-only. The ramfs exists only in those namespaces: nothing is
  written anywhere else, and it goes when they do.
- watchdog: WATCHDOG_USEC only with `--sdnotify container` (the container's WATCHDOG=1
  reach systemd through the monitor's notify proxy); WATCHDOG_PID stays unset, which
  sd_watchdog_enabled() accepts, since the monitor's PID means nothing in there.
"""

from __future__ import annotations

import fcntl
import posix

from sdshim import leanjson, leanos

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sdshim.shim.amendments import Amendments

SD_LISTEN_FDS_START = 3
# Where the container finds its credentials: where systemd puts a service's.
CONTAINER_CREDENTIALS = "/run/credentials/"
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_SLAVE = 32, 4096, 16384, 1 << 19


class SetupError(Exception):
    """What systemd gave cannot be handed on; the message says why and what to do."""


class Inherited:
    def __init__(self, fds: int = 0, fdnames: str = "", watchdog_usec: str = "",
                 credentials: str = "") -> None:
        self.fds = fds
        self.fdnames = fdnames
        self.watchdog_usec = watchdog_usec
        self.credentials = credentials

    @classmethod
    def from_environment(cls) -> Inherited:
        """What systemd set for this process. The runtime is started without these
        variables (Monitor.spawn_runtime), so only the container config carries them."""
        fds = leanos.getenv("LISTEN_FDS")
        mine = leanos.getenv("LISTEN_PID") == str(posix.getpid())
        return cls(fds=int(fds) if mine and fds.isdigit() else 0,
                   fdnames=leanos.getenv("LISTEN_FDNAMES") if mine else "",
                   watchdog_usec=leanos.getenv("WATCHDOG_USEC"),
                   credentials=leanos.getenv("CREDENTIALS_DIRECTORY"))

    def runtime_options(self) -> list[str]:
        """For `create` and `run`: the listening fds go on to the container."""
        return ["--preserve-fds", str(self.fds)] if self.fds else []

    def after_create(self) -> None:
        """The container has the sockets: later runtime commands (start, exec, delete)
        need not inherit them. The monitor keeps them (systemd holds them anyway)."""
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + self.fds):
            try:
                fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            except OSError:
                pass

    def amend(self, amend: Callable[[], Amendments], bundle: str, *, unit: str,
              records_dir: str, sdnotify: str = "monitor") -> None:
        """Put what the container gets into the monitor's amendments of its config
        (amend() makes them: containers without any of this never do)."""
        watchdog = self.watchdog_usec if sdnotify == "container" else ""
        credentials = self.credentials if self.credentials and leanos.isdir(
            self.credentials) else ""
        if not (self.fds or watchdog or credentials):
            return
        changes = amend()
        config = _read_config(bundle) if self.fds or credentials else {}
        if self.fds:
            if not own_pid_namespace(config):
                raise SetupError(
                    "socket activation needs the container in a PID namespace of its "
                    "own (its command gets LISTEN_PID=1): add {\"type\": \"pid\"} to "
                    "linux.namespaces in config.json")
            changes.setenv("LISTEN_FDS", str(self.fds))
            changes.setenv("LISTEN_PID", "1")
            if self.fdnames:
                changes.setenv("LISTEN_FDNAMES", self.fdnames)
            else:
                changes.unsetenv("LISTEN_FDNAMES")
        if watchdog:
            changes.setenv("WATCHDOG_USEC", watchdog)
            changes.unsetenv("WATCHDOG_PID")
        if credentials:
            destination = CONTAINER_CREDENTIALS + unit
            source = self.copy_credentials(config, leanos.join(records_dir, "credentials"))
            changes.bind(source, destination, readonly=True, options=("noexec",))
            changes.setenv("CREDENTIALS_DIRECTORY", destination)

    def copy_credentials(self, config: dict[str, Any], target: str) -> str:
        """The credentials, in a ramfs at target that only this monitor's mount
        namespace (and the container's, made from it) sees; target itself."""
        uid, gid = container_ids(config)
        names = sorted(n for n in posix.listdir(self.credentials)
                       if leanos.exists(leanos.join(self.credentials, n)))
        libc = _libc()
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        # Nothing mounted from here on may reach the host's namespace.
        _check(libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")
        try:
            posix.mkdir(target, 0o700)
        except FileExistsError:
            pass
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        # ramfs as systemd prefers (never swapped out); tmpfs where there is none.
        if libc.mount(b"ramfs", target.encode(), b"ramfs", flags, b"mode=0700") != 0:
            _check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags,
                              b"mode=0700,size=8m"), f"mount tmpfs on {target}")
        for name in names:
            with open(leanos.join(self.credentials, name), "rb") as f:
                data = f.read()
            fd = posix.open(leanos.join(target, name),
                            posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW
                            | posix.O_CLOEXEC, 0o400)
            try:
                view = memoryview(data)
                while view:
                    view = view[posix.write(fd, view):]
                posix.fchown(fd, uid, gid)
            finally:
                posix.close(fd)
        posix.chown(target, uid, gid)
        posix.chmod(target, 0o500)
        _check(libc.mount(None, target.encode(), None,
                          MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None),
               f"remount {target} read-only")
        return target


def _read_config(bundle: str) -> dict[str, Any]:
    """The bundle's config.json (runtime.write_config reads it again for its copy)."""
    with open(leanos.join(bundle, "config.json"), "rb") as f:
        config = leanjson.loads(f.read().decode())
    return config if isinstance(config, dict) else {}


def own_pid_namespace(config: dict[str, Any]) -> bool:
    """Whether the container gets a new PID namespace (not joins one by path)."""
    namespaces = (config.get("linux") or {}).get("namespaces") or []
    return any(isinstance(ns, dict) and ns.get("type") == "pid" and not ns.get("path")
               for ns in namespaces)


def container_ids(config: dict[str, Any]) -> tuple[int, int]:
    """The host uid and gid of the container's user (through its user namespace's
    mappings, if it has one)."""
    user = (config.get("process") or {}).get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    linux = config.get("linux") or {}
    return (_mapped(uid, linux.get("uidMappings")), _mapped(gid, linux.get("gidMappings")))


def _mapped(n: int, mappings: Any) -> int:
    if not mappings:
        return n
    for m in mappings:
        start, host, size = int(m["containerID"]), int(m["hostID"]), int(m["size"])
        if start <= n < start + size:
            return host + n - start
    raise SetupError(f"the container's user {n} is not in its user namespace's mappings; "
                     "fix process.user or linux.uidMappings/gidMappings in config.json")


def _libc() -> Any:
    # ctypes only for containers with credentials: the plain monitor never loads it.
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise SetupError(f"cannot hand the credentials on: {what}: "
                         f"{posix.strerror(errno)}")
