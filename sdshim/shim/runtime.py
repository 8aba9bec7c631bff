"""Driving the OCI runtime (runc, crun): argv, effective config, its error messages."""

from __future__ import annotations

from sdshim import leanjson, leanos, rundir
from sdshim.exits import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_RUNTIME
from sdshim.privapi import posix

TYPE_CHECKING = False  # the monitor's start-up skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any

    from sdshim.shim.amendments import Amendments


class Runtime:
    # A plain class: dataclasses imports inspect, which costs the monitor ~4 ms per start.
    def __init__(self, path: str, root: str, log: str) -> None:
        self.path = path
        self.root = root
        self.log = log

    @property
    def name(self) -> str:
        return leanos.basename(self.path)

    @property
    def places_processes(self) -> bool:
        return places_processes(self.path)

    def argv(self, *args: str) -> list[str]:
        extra = ["--cgroup-manager=disabled"] if self.name == "crun" else []
        return [self.path, "--root", self.root, "--log", self.log,
                "--log-format", "json", *extra, *args]

    def last_error(self) -> str:
        """The message of the last error the runtime logged (JSON log lines)."""
        msg = ""
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        for line in text.splitlines():
            try:
                entry = leanjson.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                msg = str(entry.get("msg", ""))
        return msg


def of_container(path: str, directory: str) -> Runtime:
    """The runtime as sdshim drives it for the container (or exec) whose records are in
    directory: its state under sdshim's root for that runtime, its log beside them."""
    return Runtime(path, rundir.runtime_root(path), leanos.join(directory, "runtime.log"))


def ended(code: int) -> str:
    """How a runtime command with Popen's return code code ended, for a message."""
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


def places_processes(path: str) -> bool:
    """Whether the runtime puts the processes it starts into the container's cgroups:
    runc does; crun runs with its cgroup manager disabled here (see Runtime.argv)."""
    return leanos.basename(path) != "crun"


def write_config(bundle: str, target: str, cgroups_path: str,
                 oom_score_adj: int | None = None, terminal: bool = False,
                 amendments: Amendments | None = None) -> dict[str, Any]:
    """Copy bundle/config.json to target/, rooted at bundle's rootfs, in our cgroup,
    with a terminal (through the console socket) or stdio pipes as asked for, and
    what the monitor's features add (amendments: environment, mounts).

    oom_score_adj: the container's, unless the bundle sets one (the monitor lowers its
    own, and the container must not inherit that).
    """
    with open(leanos.join(bundle, "config.json"), "rb") as f:
        config: dict[str, Any] = leanjson.loads(f.read().decode())
    root = config.setdefault("root", {})
    # runc wants it absolute (the config is read from another directory), no links.
    root["path"] = leanos.realpath(leanos.join(posix.getcwd(), bundle,
                                               root.get("path", "rootfs")))
    if cgroups_path:
        config.setdefault("linux", {})["cgroupsPath"] = cgroups_path
    process = config.setdefault("process", {})
    process["terminal"] = terminal  # -t, not the bundle's wish: it decides how we do stdio
    if oom_score_adj is not None:
        process.setdefault("oomScoreAdj", oom_score_adj)
    if amendments is not None:
        amendments.apply(config)
    try:
        posix.mkdir(target)
    except FileExistsError:
        pass
    with open(leanos.join(target, "config.json"), "w") as f:
        f.write(leanjson.dumps(config))
    return config


# What runc and crun say when the command cannot be run, and the exit code it means.
# (Plain substrings: re costs the monitor ~1 MB.)
_EXEC_ERRORS = (
    (("executable file not found", "no such file or directory", "not found in $path"),
     EXIT_NOT_FOUND),
    (("permission denied", "exec format error", "is a directory", "not executable"),
     EXIT_NOT_EXECUTABLE),
)
_LOWER = b"abcdefghijklmnopqrstuvwxyz"


def classify(message: str) -> int:
    """125/126/127 by the docker convention, from the runtime's error message."""
    if "exec" in message:
        text = message.lower()
        for phrases, code in _EXEC_ERRORS:
            if any(p in text for p in phrases):
                return code
    return EXIT_RUNTIME


def is_exec_failure(line: bytes) -> bool:
    """Whether line is the runtime init's report of a failed execve: after `start`, it
    prints e.g. "exec /foreign: exec format error" on the container's stderr."""
    if not line.startswith(b"exec "):
        return False
    path, sep, reason = line[5:].rpartition(b": ")
    return bool(sep and path and len(reason) >= 2 and reason[0] in _LOWER
                and not reason.translate(None, _LOWER + b" "))


def clean_message(message: str) -> str:
    """Drop runc's generic prefixes, keep the part that names the problem."""
    for prefix in ("runc create failed: ", "runc run failed: ", "runc start failed: ",
                   "exec failed: ", "unable to start container process: "):
        message = message.removeprefix(prefix)
    return message.strip()


def is_runtime_exe(exe: str, runtime_path: str) -> bool:
    """Whether /proc/PID/exe (exe) still names the runtime's init rather than the
    container's command. Until the init execs, it is the runtime itself: a memfd copy
    of it, the binary (" (deleted)" once a package upgrade replaced it), or, with runc
    1.1's bindfd, a file on a detached bind mount whose path reads as "/" (no command
    can be "/", a directory). Compared exactly: /usr/bin/crunch is a command."""
    exe = exe.removesuffix(" (deleted)")
    if exe in ("", "/") or exe.startswith("/memfd:"):
        return True
    name = leanos.basename(exe)
    return exe == runtime_path or name in ("runc", "crun", leanos.basename(runtime_path))
