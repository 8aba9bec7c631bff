"""Health probes in the monitor's loop (sdshim.shim.healthchecks), without the test bed:
a stand-in runtime runs the check in a session of its own, as `runc exec` does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sdshim.shim.health import HEALTHY, UNHEALTHY, HealthConfig
from sdshim.shim.healthchecks import HealthChecks
from sdshim.shim.poller import Poller
from sdshim.shim.reaper import ChildReaper
from sdshim.shim.runtime import Runtime

# `exec --pid-file F ID CMD...`: CMD as a session leader, its pid in F, waited for.
FAKE_RUNTIME = """#!/bin/sh
while [ "$1" != "--pid-file" ]; do shift; done
pidfile=$2; shift 3
exec setsid -f -w sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@"
"""


class Loop:
    def __init__(self, tmp_path: Path, command: list[str], **kw: float | int | str) -> None:
        runtime = tmp_path / "fakerun"
        runtime.write_text(FAKE_RUNTIME)
        runtime.chmod(0o755)
        self.faults: list[BaseException] = []
        self.poller = Poller(self.faults.append)
        self.reaper = ChildReaper(lambda pid, status: None, self.faults.append)
        self.changes: list[tuple[str, str, str]] = []
        self.checks = HealthChecks(
            HealthConfig(command, **kw),  # type: ignore[arg-type]
            rt=Runtime(str(runtime), str(tmp_path), str(tmp_path / "log")), cid="c",
            directory=str(tmp_path), poller=self.poller, reaper=self.reaper,
            on_change=lambda c, summary: self.changes.append((c.old, c.new, summary)))

    def until(self, what: str, done: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.poller.arm("tick", 0.02, lambda: None)
            self.poller.once()
            self.reaper.reap()
        assert self.faults == []


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.fixture(autouse=True)
def _needs_setsid() -> None:
    if not Path("/usr/bin/setsid").exists():
        pytest.skip("test bed incomplete: setsid (util-linux)")


def test_passing_and_failing_probes_one_change_each(tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    flag.touch()
    loop = Loop(tmp_path, ["sh", "-c", f"echo checking; test -e {flag}"],
                interval=0.05, timeout=5, retries=2)
    loop.checks.begin()
    loop.until("healthy", lambda: loop.checks.status == HEALTHY)
    health = loop.checks.health
    assert health is not None
    loop.until("3 results", lambda: len(health.results) >= 3)
    flag.unlink()
    loop.until("unhealthy", lambda: loop.checks.status == UNHEALTHY)
    assert loop.changes == [("starting", "healthy", "exit code 0: checking"),
                            ("healthy", "unhealthy", "exit code 1: checking")]
    assert (tmp_path / "health.json").exists()
    loop.checks.end()


def test_a_hung_probe_is_killed_with_its_children_and_reaped(tmp_path: Path) -> None:
    marker = f"sleep 42{os.getpid() % 100:02d}7"
    loop = Loop(tmp_path, ["sh", "-c", f"echo started; {marker}; true"],
                interval=0.05, timeout=0.5, retries=1)
    loop.checks.begin()
    loop.until("the probe", lambda: loop.checks.probe is not None and
               bool(processes_with(marker)))
    loop.until("its verdict", lambda: loop.checks.status == UNHEALTHY)
    health = loop.checks.health
    assert health is not None
    first = health.results[0]
    assert first["timed_out"] and first["exit_code"] is None
    assert first["output"].startswith("started\n")
    loop.checks.end()
    loop.until("the runtime reaped", lambda: loop.checks.probe is None)
    assert processes_with(marker) == []


def test_end_kills_a_running_probe_at_once(tmp_path: Path) -> None:
    marker = f"sleep 43{os.getpid() % 100:02d}9"
    loop = Loop(tmp_path, ["sh", "-c", f"{marker}; true"], interval=0.05, timeout=60)
    loop.checks.begin()
    # The check's own sleep (argv NUL-separated): the runtime has written the leader's
    # pid by then, as `runc exec` has once the command runs.
    loop.until("the probe", lambda: bool(processes_with(marker.replace(" ", "\0"))))
    probe = loop.checks.probe
    assert probe is not None
    loop.checks.end()
    loop.until("the runtime reaped", lambda: loop.checks.probe is None)
    loop.until("the check gone", lambda: processes_with(marker) == [] and
               processes_with(marker.replace(" ", "\0")) == [], 10)
    assert loop.changes == []  # no verdict for a probe the end cut short
