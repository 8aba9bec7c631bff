"""Driving the OCI runtime (runc, crun): argv, effective config, its error messages."""

from __future__ import annotations

import posix

from sdshim import leanjson, leanos
from sdshim.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_RUNTIME

TYPE_CHECKING = False  # the monitor's start-up skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any


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
        """Whether it puts the processes it starts into the container's cgroups: runc
        does; crun runs with its cgroup manager disabled here (see argv)."""
        return self.name != "crun"

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


def write_config(bundle: str, target: str, cgroups_path: str,
                 oom_score_adj: int | None = None, terminal: bool = False) -> dict[str, Any]:
    """Copy bundle/config.json to target/, rooted at bundle's rootfs, in our cgroup,
    with a terminal (through the console socket) or stdio pipes as asked for.

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
    try:
        posix.mkdir(target)
    except FileExistsError:
        pass
    with open(leanos.join(target, "config.json"), "w") as f:
        f.write(leanjson.dumps(config))
    return config


# What runc and crun say when the command cannot be run, and the exit code it means.
# (Patterns, compiled where used: re costs the monitor ~1 MB, and only failures need it.)
_EXEC_ERRORS = (
    (r"executable file not found|no such file or directory|not found in \$PATH",
     EXIT_NOT_FOUND),
    (r"permission denied|exec format error|is a directory|not executable",
     EXIT_NOT_EXECUTABLE),
)
# After `start`, an execve failure is printed by the runtime's init on the container's
# stderr, e.g. "exec /foreign: exec format error", and the process exits 255.
_EXEC_FAILURE_LINE = rb"^exec (.+): ([a-z][a-z ]+)$"


def classify(message: str) -> int:
    """125/126/127 by the docker convention, from the runtime's error message."""
    if "exec" in message:
        import re

        for pattern, code in _EXEC_ERRORS:
            if re.search(pattern, message, re.I):
                return code
    return EXIT_RUNTIME


def is_exec_failure(line: bytes) -> bool:
    """Whether line is the runtime init's report of a failed execve."""
    import re

    return re.match(_EXEC_FAILURE_LINE, line) is not None


def clean_message(message: str) -> str:
    """Drop runc's generic prefixes, keep the part that names the problem."""
    for prefix in ("runc create failed: ", "runc run failed: ", "runc start failed: ",
                   "exec failed: ", "unable to start container process: "):
        message = message.removeprefix(prefix)
    return message.strip()
