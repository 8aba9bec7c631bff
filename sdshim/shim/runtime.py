"""Driving the OCI runtime (runc, crun): argv, effective config, its error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sdshim.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_RUNTIME

TYPE_CHECKING = False  # the monitor's start-up skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any


class Runtime:
    # A plain class: dataclasses imports inspect, which costs the monitor ~4 ms per start.
    def __init__(self, path: str, root: Path, log: Path) -> None:
        self.path = path
        self.root = root
        self.log = log

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def places_processes(self) -> bool:
        """Whether it puts the processes it starts into the container's cgroups: runc
        does; crun runs with its cgroup manager disabled here (see argv)."""
        return self.name != "crun"

    def argv(self, *args: str) -> list[str]:
        extra = ["--cgroup-manager=disabled"] if self.name == "crun" else []
        return [self.path, "--root", str(self.root), "--log", str(self.log),
                "--log-format", "json", *extra, *args]

    def last_error(self) -> str:
        """The message of the last error the runtime logged (JSON log lines)."""
        msg = ""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                msg = str(entry.get("msg", ""))
        return msg


def write_config(bundle: Path, target: Path, cgroups_path: str,
                 oom_score_adj: int | None = None, terminal: bool = False) -> dict[str, Any]:
    """Copy bundle/config.json to target/, rooted at bundle's rootfs, in our cgroup,
    with a terminal (through the console socket) or stdio pipes as asked for.

    oom_score_adj: the container's, unless the bundle sets one (the monitor lowers its
    own, and the container must not inherit that).
    """
    with open(bundle / "config.json") as f:
        config: dict[str, Any] = json.load(f)
    root = config.setdefault("root", {})
    root["path"] = str((bundle / root.get("path", "rootfs")).resolve())
    if cgroups_path:
        config.setdefault("linux", {})["cgroupsPath"] = cgroups_path
    process = config.setdefault("process", {})
    process["terminal"] = terminal  # -t, not the bundle's wish: it decides how we do stdio
    if oom_score_adj is not None:
        process.setdefault("oomScoreAdj", oom_score_adj)
    target.mkdir(exist_ok=True)
    with open(target / "config.json", "w") as f:
        json.dump(config, f)
    return config


# What runc and crun say when the command cannot be run, and the exit code it means.
_EXEC_ERRORS = (
    (re.compile(r"executable file not found|no such file or directory|not found in \$PATH",
                re.I), EXIT_NOT_FOUND),
    (re.compile(r"permission denied|exec format error|is a directory|not executable", re.I),
     EXIT_NOT_EXECUTABLE),
)
# After `start`, an execve failure is printed by the runtime's init on the container's
# stderr, e.g. "exec /foreign: exec format error", and the process exits 255.
EXEC_FAILURE_LINE = re.compile(rb"^exec (.+): ([a-z][a-z ]+)$")


def classify(message: str) -> int:
    """125/126/127 by the docker convention, from the runtime's error message."""
    if "exec" in message:
        for pattern, code in _EXEC_ERRORS:
            if pattern.search(message):
                return code
    return EXIT_RUNTIME


def clean_message(message: str) -> str:
    """Drop runc's generic prefixes, keep the part that names the problem."""
    for prefix in ("runc create failed: ", "runc run failed: ", "runc start failed: ",
                   "exec failed: ", "unable to start container process: "):
        message = message.removeprefix(prefix)
    return message.strip()
