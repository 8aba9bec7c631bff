"""A throwaway systemd (PID 1, journald, D-Bus) for tests, demos and benchmarks.

It boots /lib/systemd/systemd in new mount/pid/uts/ipc/cgroup namespaces on an
overlay whose lower layer is the host root and whose upper layer is a tmpfs, so
nothing it does at boot (tmpfiles, units) touches the host. It lives in cgroups
of its own in every hierarchy, and stopping it removes them; the mounts vanish
with its mount namespace.

    python3 -m sdshim.testbed [--share DIR]... -- CMD ARGS...

boots a box, runs CMD inside it, stops the box and exits with CMD's status.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sdshim import spawn
from sdshim.errors import SdshimError

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "sdshim-testbed-"
# Units that would change the host kernel's state, or need what a box lacks.
MASKED_UNITS = (
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-remount-fs.service",
    "systemd-timesyncd.service",
    "systemd-binfmt.service",
    "systemd-firstboot.service",
)
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
PR_SET_PDEATHSIG = 1


class TestbedError(SdshimError):
    """The test-bed systemd could not be booted or run."""


def _cgroup_hierarchies() -> dict[str, Path]:
    """Map each /proc/self/cgroup hierarchy key to this process's cgroup directory."""
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _src, superopts = post.split(" ", 2)
        mnt = Path(pre.split(" ")[4])
        if fstype == "cgroup2":
            mounts.setdefault("", mnt)
        elif fstype == "cgroup":
            opts = [o for o in superopts.split(",") if o not in ("rw", "ro")]
            ctl = ",".join(sorted(o for o in opts if o in _V1_CONTROLLERS or o.startswith("name=")))
            mounts[ctl] = mnt
    result: dict[str, Path] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _hid, ctls, path = line.split(":", 2)
        key = ",".join(sorted(ctls.split(","))) if ctls else ""
        if key in mounts:
            result[key] = mounts[key] / path.lstrip("/")
    return result


_V1_CONTROLLERS = {
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
    "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc",
}


def _remove_cgroup_tree(top: Path) -> None:
    """Kill whatever is left in top and remove it depth-first."""
    if not top.is_dir():
        return
    for _ in range(50):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        busy = False
        for d in [*dirs, top]:
            for pid in _procs(d):
                busy = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()
        if not top.exists():
            return
        time.sleep(0.1 if busy else 0.05)
    raise TestbedError(f"could not remove cgroup {top}; remove it by hand")


def _procs(d: Path) -> list[int]:
    try:
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def sweep_stale() -> None:
    """Remove test-bed cgroups whose box died without cleaning up (e.g. SIGKILLed runner)."""
    for parent in _cgroup_hierarchies().values():
        for d in parent.glob(CGROUP_PREFIX + "*"):
            owner = d.name[len(CGROUP_PREFIX):].split("-")[0]
            if owner.isdigit() and Path(f"/proc/{owner}").exists():
                continue
            with contextlib.suppress(TestbedError):
                _remove_cgroup_tree(d)


@dataclass
class Box:
    """A booted test-bed systemd. Use as a context manager or call stop()."""

    name: str
    staging: Path
    cgroups: list[Path]
    launcher: subprocess.Popen[bytes]
    pid: int = 0
    stopped: bool = field(default=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """argv that runs a command inside the box."""
        return ["nsenter", "-t", str(self.pid), "-a", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = False,
        input: bytes | None = None,
        timeout: float | None = 120,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        return spawn.run(self.argv(argv), check=check, input=input, timeout=timeout, env=env)

    def wait_running(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.launcher.poll() is not None:
                raise TestbedError(
                    f"test-bed systemd exited with status {self.launcher.returncode}")
            proc = self.run(["systemctl", "is-system-running"], timeout=10)
            state = proc.stdout.decode().strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.05)
        else:
            raise TestbedError(f"test-bed systemd did not finish booting (state {state!r})")
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"]).stdout.decode()
            raise TestbedError(f"test-bed systemd is degraded; failed units:\n{failed}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            # Interrupted during boot, the PID may not be known yet. Never signal pid 0:
            # that is our own process group.
            pid = self.pid or _child_of(self.launcher.pid)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGRTMIN + 4)  # systemd: power off
            try:
                self.launcher.wait(timeout=10 if pid else 0.5)
            except subprocess.TimeoutExpired:
                # Killing PID 1 of a pid namespace ends every process in it; killing
                # unshare kills its child too (--kill-child).
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.launcher.kill()
                self.launcher.wait(timeout=10)
        finally:
            for cg in self.cgroups:
                _remove_cgroup_tree(cg)
            with contextlib.suppress(OSError):
                self.staging.rmdir()

    def __enter__(self) -> Box:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def boot(shares: Sequence[Path] = (), name: str | None = None, timeout: float = 60) -> Box:
    """Boot a box sharing the given host directories (bind-mounted at the same paths)."""
    if os.geteuid() != 0:
        raise TestbedError("the test-bed systemd needs root (namespaces, mounts, cgroups)")
    for prog in ("unshare", "nsenter", "mount", "pivot_root"):
        if shutil.which(prog) is None:
            raise TestbedError(f"{prog} not found; install util-linux and mount")
    if not Path("/lib/systemd/systemd").exists():
        raise TestbedError("/lib/systemd/systemd not found; install the systemd package")
    sweep_stale()
    # The owner's PID in the name lets a later run sweep what a killed runner left.
    name = name or f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    cgroups: list[Path] = []
    for parent in _cgroup_hierarchies().values():
        cg = parent / name
        cg.mkdir()
        # v1 cpuset refuses tasks until cpus and mems are set (no clone_children).
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (cg / knob).exists() and not (cg / knob).read_text().strip():
                (cg / knob).write_text((parent / knob).read_text())
        cgroups.append(cg)
    staging = Path(tempfile.mkdtemp(prefix="sdshim-testbed-"))
    argv = [
        sys.executable, "-m", "sdshim.testbed", "_enter", *map(str, cgroups), "--",
        "unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--cgroup",
        "--propagation", "private", "--kill-child=SIGKILL", "--",
        sys.executable, "-m", "sdshim.testbed", "_init", name, str(staging),
        *map(str, shares),
    ]
    env = spawn.environ_without("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    launcher = spawn.start(argv, env=env, stdin=subprocess.DEVNULL)
    box = Box(name=name, staging=staging, cgroups=cgroups, launcher=launcher)
    try:
        box.pid = _wait_child(launcher, timeout)
        box.wait_running(timeout)
    except BaseException:
        box.stop()
        raise
    return box


def _child_of(pid: int) -> int:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    return int(kids[0]) if kids else 0


def _wait_child(launcher: subprocess.Popen[bytes], timeout: float) -> int:
    """PID (host view) of the box's PID 1: unshare's only child, once it runs systemd."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise TestbedError(f"test-bed launcher exited with status {launcher.returncode}")
        pid = _child_of(launcher.pid)
        with contextlib.suppress(OSError):
            if pid and os.readlink(f"/proc/{pid}/exe").endswith("/systemd"):
                return pid
        time.sleep(0.01)
    raise TestbedError("test-bed systemd did not start")


@contextlib.contextmanager
def booted(shares: Sequence[Path] = ()) -> Iterator[Box]:
    box = boot(shares)
    try:
        yield box
    finally:
        box.stop()


# --- the stages that run in the child processes -------------------------------------------


def _enter(cgroups: list[str], argv: list[str]) -> None:
    """Join the box's cgroups, tie our life to the parent's, exec unshare."""
    for cg in cgroups:
        Path(cg, "cgroup.procs").write_text(str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.execvp(argv[0], argv)


def _mount(*args: str) -> None:
    spawn.run(["mount", *args])


def _init(name: str, staging: str, shares: list[str]) -> None:
    """PID 1 of the new namespaces: build the overlay root and exec systemd in it."""
    s = Path(staging)
    _mount("-t", "tmpfs", "-o", "mode=0755", "sdshim-testbed", str(s))
    for d in ("upper", "work", "root"):
        (s / d).mkdir()
    root = s / "root"
    _mount("-t", "overlay", "-o", f"lowerdir=/,upperdir={s}/upper,workdir={s}/work",
           "overlay", str(root))
    dev = root / "dev"
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid", "dev", str(dev))
    for node in DEV_NODES:
        (dev / node).touch()
        _mount("--bind", f"/dev/{node}", str(dev / node))
    (dev / "pts").mkdir()
    _mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", str(dev / "pts"))
    (dev / "ptmx").symlink_to("pts/ptmx")
    (dev / "shm").mkdir()
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", str(dev / "shm"))
    (dev / "fd").symlink_to("/proc/self/fd")
    for i, std in enumerate(("stdin", "stdout", "stderr")):
        (dev / std).symlink_to(f"/proc/self/fd/{i}")
    _mount("-t", "proc", "proc", str(root / "proc"))
    _mount("--bind", str(root / "proc/sys"), str(root / "proc/sys"))
    _mount("-o", "remount,bind,ro", str(root / "proc/sys"))
    _mount("-t", "sysfs", "-o", "ro", "sysfs", str(root / "sys"))
    for d in ("run", "tmp"):
        _mount("-t", "tmpfs", "-o", "mode=1777" if d == "tmp" else "mode=0755", d, str(root / d))
    for share in shares:
        target = root / share.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        _mount("--rbind", share, str(target))
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in MASKED_UNITS:
        link = units / unit
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to("/dev/null")
    # A fresh machine id, so journald writes this box's journal, not the host's.
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / "etc/hostname").write_text("sdshim-testbed\n")  # systemd sets it at boot
    os.chdir(root)
    (root / ".oldroot").mkdir(exist_ok=True)
    spawn.run(["pivot_root", ".", ".oldroot"])
    os.chdir("/")
    spawn.run(["umount", "-l", "/.oldroot"])
    os.rmdir("/.oldroot")
    # Shared propagation inside the box, as systemd sets up on a host (it does not in
    # a container): mounts a unit's helper makes in a namespace of its own, such as the
    # credentials systemd moves to /run/credentials/UNIT, must reach the box's root.
    # These peer groups are the box's own: nothing propagates to the host.
    spawn.run(["mount", "--make-rshared", "/"])
    env = {"container": "sdshim-testbed", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    os.execve("/lib/systemd/systemd",
              ["/lib/systemd/systemd", "--system", "--unit=basic.target"], env)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "_enter":
        sep = args.index("--")
        _enter(args[1:sep], args[sep + 1:])
        return 1
    if args and args[0] == "_init":
        _init(args[1], args[2], args[3:])
        return 1
    parser = argparse.ArgumentParser(prog="python3 -m sdshim.testbed",
                                     description="Run a command inside a throwaway systemd.")
    parser.add_argument("--share", action="append", default=[], type=Path,
                        help="host directory to bind-mount into the box at the same path")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    cmd = ns.cmd[1:] if ns.cmd[:1] == ["--"] else ns.cmd
    if not cmd:
        parser.error("give a command to run inside the box, after --")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with booted([p.resolve() for p in ns.share]) as box:
            proc = spawn.start(box.argv(cmd))
            try:
                return proc.wait()
            except KeyboardInterrupt:
                proc.terminate()
                proc.wait()
                raise
    except KeyboardInterrupt:
        return 130
    except SdshimError as e:
        print(f"sdshim.testbed: {e}", file=sys.stderr)
        return 125


def _interrupt(_signum: int, _frame: object) -> None:
    # SIGTERM takes the same way out as Ctrl-C, through every cleanup.
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
