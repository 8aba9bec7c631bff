"""What the benchmarks share: statistics, memory readings, bundles, peers' commands.

The measuring scripts (bench.startup, bench.footprint) run inside a booted test-bed
systemd and print one JSON object on stdout; bench.run boots the box, runs them and
prints the table.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sdshim import bundle as bundles
from sdshim import spawn
from sdshim.shim import cgroup

REPO = Path(__file__).resolve().parent.parent
MEMORY_FIELDS = ("Pss", "Private_Dirty", "Rss")
# What every long-running benchmark container runs: idle, no output.
IDLE_ARGS = ("sleep", "1000000")
IMAGE = "localhost/sdshim-bench-busybox"


def summary(values: Sequence[float]) -> dict[str, float]:
    """median/min/max (and n) of a list of milliseconds."""
    if not values:
        return {"n": 0, "median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"n": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def smaps(pid: int) -> dict[str, int] | None:
    """Pss, Private_Dirty, Rss in kB from /proc/PID/smaps_rollup; None if pid is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in MEMORY_FIELDS:
            values[key] = int(rest.split()[0])
    return values


def memory_totals(pids: Iterable[int]) -> dict[str, Any]:
    """Sum and per-process mean of the memory fields over pids (in kB)."""
    readings = [r for r in map(smaps, pids) if r is not None]
    totals = {k: sum(r[k] for r in readings) for k in MEMORY_FIELDS}
    n = len(readings)
    return {"n": n, "total_kb": totals,
            "mean_kb": {k: (v / n if n else float("nan")) for k, v in totals.items()}}


def _cgroup(pid: int) -> str:
    """pid's systemd cgroup path ('' once it is gone)."""
    try:
        paths = cgroup.own_cgroups(pid)
    except OSError:
        return ""
    return paths.get("name=systemd", paths.get("", ""))


def box_daemon(cgroup: str) -> bool:
    """Whether a process of that cgroup is one of the box's own services (dbus-daemon,
    started on first use, say), which outlive every run: not a container's, not an
    sdshim unit's."""
    parts = cgroup.split("/")
    return len(parts) > 2 and parts[1] == "system.slice" and not parts[2].startswith("sdshim")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return "(gone)"


def box_pids() -> set[int]:
    """The pids this box's /proc shows (the bench runs in the box's pid namespace)."""
    return {int(d) for d in os.listdir("/proc") if d.isdigit()}


def settle(steady: set[int], timeout: float = 10.0) -> float:
    """Wait, untimed, until the last run's teardown is over: no process is left but
    the steady ones (this bench, the box's daemons). A container's end goes on after
    the command that removed it returns (the exit command's `podman container
    cleanup`, the unit's ExecStopPost=, conmon leaving its scope) and would otherwise
    overlap the next method's timed run. Returns how long it waited (ms)."""
    t0 = time.perf_counter()
    steady = steady | {os.getpid()}
    left: list[int] = []
    while time.perf_counter() - t0 < timeout:
        left = [p for p in box_pids() - steady if not box_daemon(_cgroup(p))]
        if not left:
            return ms_since(t0)
        time.sleep(0.002)
    log(f"settle: processes left after {timeout:.0f} s: "
        + ", ".join(f"{p} {_cmdline(p)}" for p in left))
    return ms_since(t0)


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The measuring script's result, for bench.run."""
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


# --- bundles ------------------------------------------------------------------------


def rootfs(scratch: Path) -> Path:
    """One busybox rootfs shared by every bundle (runc mounts it, never writes it)."""
    template = scratch / "template"
    if not (template / "rootfs/bin/busybox").exists():
        bundles.make_busybox(template, list(IDLE_ARGS))
    return template / "rootfs"


def make_bundle(scratch: Path, name: str, args: Sequence[str]) -> Path:
    """scratch/bundles/NAME: config.json running args in the shared rootfs.

    root.path is absolute: runc refuses a rootfs that is a symlink.
    """
    target = scratch / "bundles" / name
    target.mkdir(parents=True, exist_ok=True)
    config = bundles.default_config()
    config["process"]["args"] = list(args)
    config["root"]["path"] = str(rootfs(scratch))
    (target / "config.json").write_text(json.dumps(config))
    return target


# --- the peers ------------------------------------------------------------------------


def sdshim_cli() -> list[str]:
    """The `sdshim` command as users run it: the installed script next to our python."""
    script = Path(sys.executable).with_name("sdshim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdshim"]


# The interpreter the distro package runs `sdshim` with (python3 + python3-dbus-fast).
SYSTEM_PYTHON = "/usr/bin/python3"


def installed_cli(scratch: Path, repo: Path = REPO) -> tuple[list[str], dict[str, str], str]:
    """`sdshim` as users get it, and what it is: this checkout installed as a regular
    package (byte-compiled, no editable-install hook) for the system python3, with the
    system's dbus-fast. The editable install next to sys.executable would add the .pth
    files of the developer's site-packages (~13 ms a call here) to every timing.
    Made once per scratch directory and checkout (repo: another one, to compare); the
    monitor it starts runs from it too. Returns the command, the environment to run it
    in (without the PYTHONPATH the benchmarks run with, which would put the checkout
    before the installed copy), and what it is, for the report."""
    script = installed_python(scratch, repo).with_name("sdshim")
    version = spawn.run([SYSTEM_PYTHON, "-c", "import platform; "
                         "print(platform.python_version())"]).stdout.decode().strip()
    return ([str(script)], spawn.environ_without("PYTHONPATH"),
            f"{script}: regular install of {repo} for {SYSTEM_PYTHON} {version} (venv, "
            "system site-packages)")


def installed_python(scratch: Path, repo: Path = REPO) -> Path:
    """The python3 of installed_cli's venv, made if need be."""
    venv = scratch / f"cli-venv-{repo.name}"
    if not (venv / "bin" / "sdshim").exists():
        # Installed from a copy: an in-tree build would leave build/ in the checkout.
        source = scratch / f"cli-source-{repo.name}"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(repo / "sdshim", source / "sdshim",
                        ignore=shutil.ignore_patterns("__pycache__"))
        if (repo / "bin").is_dir():  # the scripts (before 2026-12-02: console scripts)
            shutil.copytree(repo / "bin", source / "bin")
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(repo / name, source / name)
        spawn.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)],
                  timeout=300)
        spawn.run([str(venv / "bin" / "python3"), "-m", "pip", "install", "--quiet",
                   "--no-index", "--no-deps", "--no-build-isolation", str(source)],
                  timeout=300)
        # pip drops a script's #! options; the .deb and .rpm put them back (-IS).
        for script in (source / "bin").iterdir() if (source / "bin").is_dir() else ():
            installed = venv / "bin" / script.name
            options = script.read_text().split("\n", 1)[0].partition("python3")[2]
            lines = installed.read_text().split("\n", 1)
            installed.write_text(f"{lines[0]}{options}\n{lines[1]}")
    return venv / "bin" / "python3"


def installed_conmon(scratch: Path, repo: Path = REPO) -> Path:
    """podman's conmon_path as the packages install it: /usr/libexec/sdshim/conmon (the
    sh front, which answers --version) in installed_python's venv, else the script."""
    python = installed_python(scratch, repo)
    source = repo / "packaging" / "libexec" / "conmon"
    if not source.exists():  # a checkout from before the front
        return python.with_name("sdshim-conmon")
    front = python.parent.parent / "libexec" / "sdshim" / "conmon"
    if not front.exists():
        front.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, front)
    return front


def podman_env(scratch: Path) -> dict[str, str]:
    """podman configured by files in scratch, never by the host's /etc/containers:
    runc, vfs storage on the box's tmpfs, logs to journald like sdshim's; the rest
    (events to journald, systemd cgroup manager) as Debian ships it."""
    conf = scratch / "podman"
    conf.mkdir(exist_ok=True)
    (conf / "containers.conf").write_text(
        '[containers]\nlog_driver = "journald"\n\n'
        '[engine]\nruntime = "runc"\n')
    (conf / "storage.conf").write_text(
        '[storage]\ndriver = "vfs"\nrunroot = "/run/sdshim-bench/podman/run"\n'
        'graphroot = "/run/sdshim-bench/podman/storage"\n')
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(conf / "containers.conf")
    env["CONTAINERS_STORAGE_CONF"] = str(conf / "storage.conf")
    return env


def podman_image(scratch: Path, env: dict[str, str]) -> None:
    """Import the shared busybox rootfs as a podman image (once per box)."""
    tarball = scratch / "rootfs.tar"
    if not tarball.exists():
        spawn.run(["tar", "-C", str(rootfs(scratch)), "-cf", str(tarball), "."])
    spawn.run(["podman", "import", "--quiet", str(tarball), IMAGE], env=env, timeout=120)


CONMON_DIR = Path("/run/sdshim-bench/conmon")


class Conmon:
    """conmon 2.1.6 driven as podman drives it: daemonized, sync pipe, journald logs."""

    def __init__(self, scratch: Path, cid: str) -> None:
        self.cid = cid
        self.bundle = make_bundle(scratch, f"conmon-{cid[:12]}", IDLE_ARGS)
        self.pidfile = self.bundle / "conmon.pid"
        self.sync_fd = -1
        self.launcher: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.error = ""

    def launch(self) -> None:
        """Start conmon; it runs `runc create` and reports on the sync pipe."""
        for d in ("exit", "sockets"):
            (CONMON_DIR / d).mkdir(parents=True, exist_ok=True)
        r, w = os.pipe2(os.O_CLOEXEC)
        env = dict(os.environ, _OCI_SYNCPIPE=str(w))
        self.started_at = time.perf_counter()
        os.set_inheritable(w, True)
        self.launcher = spawn.start(
            ["conmon", "--api-version", "1", "-c", self.cid, "-u", self.cid,
             "-n", f"bench-{self.cid[:12]}", "-r", "/usr/bin/runc", "-b", str(self.bundle),
             "-p", str(self.bundle / "pid"), "-P", str(self.pidfile), "-l", "journald",
             "--exit-dir", str(CONMON_DIR / "exit"),
             "--socket-dir-path", str(CONMON_DIR / "sockets"), "--log-level", "error"],
            env=env, stdin=None, pass_fds=[w])
        os.close(w)
        self.sync_fd = r

    def read_sync(self) -> int:
        """The container PID conmon reports, read up to the newline (conmon keeps the
        pipe open, so EOF would never come); 0 when conmon reported an error."""
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = os.read(self.sync_fd, 4096)
            if not chunk:
                break
            buf += chunk
        os.close(self.sync_fd)
        self.sync_fd = -1
        if self.launcher is not None:
            self.launcher.wait()
        try:
            reply = json.loads(buf)
            pid = int(reply["data"])
        except (ValueError, KeyError, TypeError):
            self.error = f"conmon exited without reporting a pid ({buf!r})"
            return 0
        if pid <= 0:
            self.error = str(reply.get("message", "conmon reported no pid"))
            return 0
        return pid

    def start_argv(self) -> list[str]:
        return ["runc", "start", self.cid]

    def monitor_pid(self) -> int:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return 0


def runc_delete(cids: Iterable[str]) -> None:
    """Kill and delete containers made with runc's default root (conmon's, the floor's)."""
    procs = [spawn.start(["runc", "delete", "--force", cid], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cid in cids]
    for p in procs:
        p.wait()
