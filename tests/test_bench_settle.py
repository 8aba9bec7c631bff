"""bench.common.settle: a timed run starts only once the previous run has ended."""

from __future__ import annotations

import subprocess
import threading
import time

from bench import common


def test_settle_waits_for_a_process_that_outlives_its_command() -> None:
    steady = common.box_pids()
    late = subprocess.Popen(["sleep", "0.3"])
    # Reaped by another thread, as the box's init reaps an exit command's process.
    reaper = threading.Thread(target=late.wait, daemon=True)
    reaper.start()
    t0 = time.perf_counter()
    waited = common.settle(steady, timeout=5)
    reaper.join(5)  # settle sees the pid go at the reap, before wait() sets returncode
    assert late.returncode == 0
    assert 250 <= waited <= common.ms_since(t0) < 5000


def test_settle_returns_at_once_when_nothing_is_left() -> None:
    assert common.settle(common.box_pids(), timeout=5) < 1000


def test_the_boxs_own_services_are_steady_and_containers_are_not() -> None:
    assert common.box_daemon("/system.slice/dbus.service")
    for cgroup in ("/machine.slice/libpod-conmon-abc.scope",
                   "/machine.slice/sdshim-podman-x.service/supervisor",
                   "/system.slice/sdshim-bench-1.service", "/init.scope", "/", ""):
        assert not common.box_daemon(cgroup), cgroup
