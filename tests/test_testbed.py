"""The test bed itself: it boots a real systemd and leaves nothing behind, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdshim import testbed
from tests.conftest import REPO, missing


def leftovers(prefix: str) -> list[str]:
    """Cgroups, processes and mounts of test beds whose name starts with prefix."""
    found = [str(p) for parent in testbed._cgroup_hierarchies().values()
             for p in parent.glob(prefix + "*")]
    found += [f"pid {pid}" for pid in box_processes(prefix)]
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [line for line in mounts.splitlines() if " overlay " in line]
    return found


def box_processes(prefix: str) -> list[int]:
    """Live systemd processes (PID 1 and its services) in a test bed's cgroups."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
                cgroup = (proc / "cgroup").read_text()
            except OSError:
                continue
            if b"/lib/systemd/systemd" in cmdline and prefix in cgroup:
                found.append(int(proc.name))
    return found


@pytest.fixture(autouse=True)
def needs_root() -> None:
    if os.geteuid() != 0:
        missing("root")


def test_boots_real_systemd_and_cleans_up() -> None:
    marker = Path("/tmp") / f"sdshim-host-marker-{os.getpid()}"
    marker.write_text("host")
    try:
        with testbed.booted() as box:
            prefix = box.name
            assert box.run(["systemctl", "is-system-running"]).stdout.strip() == b"running"
            assert box.run(["cat", "/proc/1/comm"]).stdout.strip() == b"systemd"
            assert box.run(["systemctl", "is-active", "systemd-journald.service",
                            "dbus.socket"]).stdout.split() == [b"active", b"active"]
            # Its /tmp and /run are its own; the host's stay untouched.
            assert box.run(["test", "-e", str(marker)]).returncode == 1
            assert box.run(["touch", "/etc/sdshim-box-only"]).returncode == 0
            assert leftovers(prefix)  # it does exist while running
        assert not Path("/etc/sdshim-box-only").exists()
        assert marker.read_text() == "host"
        assert leftovers(prefix) == []
    finally:
        marker.unlink()


def _start_runner() -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "sdshim.testbed", "--", "sleep", "600"],
                            cwd=REPO)
    prefix = f"{testbed.CGROUP_PREFIX}{proc.pid}-"
    deadline = time.monotonic() + 30
    while not box_processes(prefix):
        assert proc.poll() is None and time.monotonic() < deadline, "test bed did not boot"
        time.sleep(0.05)
    return proc, prefix


def test_interrupted_runner_stops_the_box() -> None:
    proc, prefix = _start_runner()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert leftovers(prefix) == []


def test_killed_runner_takes_the_box_with_it() -> None:
    proc, prefix = _start_runner()
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while box_processes(prefix):
        assert time.monotonic() < deadline, "box outlived its SIGKILLed runner"
        time.sleep(0.05)
    # What a SIGKILLed runner could not remove, the next boot sweeps away.
    testbed.sweep_stale()
    assert leftovers(prefix) == []
