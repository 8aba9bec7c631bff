"""The monitor of one `sdshim exec` process, main process of sdshim-NAME:exec-ID.service.

Why a unit of its own rather than the container's monitor: an exec gets systemd's
bookkeeping for free (`systemctl status` shows it, its status is ExecMainStatus, a
stop job ends it), a busy or stuck exec never shares an event loop with the
container's output, and the container's monitor stays as small as it was. The
process itself joins the container's cgroup and namespaces (`runc exec` does that),
so the container's limits cover it; only this monitor lives in the exec's unit.

It is the container's Monitor with three differences: there is nothing to create
(`runc exec --detach` makes and starts the process in one go, at start), the
journal entries carry SDSHIM_EXEC_ID besides the container's fields, and at the
end it must not delete the container from the runtime.
"""

from __future__ import annotations

import posix
import time

from sdshim import leanos, rundir
from sdshim.errors import EXIT_TIMEOUT
from sdshim.shim import cgroup, monitor
from sdshim.shim.journal import encode_field

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import SimpleNamespace
    from typing import Any

# How long an exec created without --start waits for its client's start request: a
# client that died in between must not leave the unit behind for ever.
START_WAIT = 60.0


class ExecMonitor(monitor.Monitor):
    def __init__(self, opts: SimpleNamespace) -> None:
        self.exec_id: str = opts.exec_id
        super().__init__(opts)
        # Not SDSHIM_CONTAINER_ID_FULL: the container's readers end at its events.
        self.event_ids = {"SDSHIM_EXEC_ID": self.exec_id, "SDSHIM_CONTAINER_NAME": self.name}
        self.timeout_at = 0.0
        self.timed_out = False

    def event(self, message: str, **extra: str) -> None:
        # The container's monitor words its events about the container; these are ours.
        super().event(message.replace(f"Container {self.name}",
                                      f"Exec {self.exec_id} in container {self.name}", 1),
                      **extra)

    def records_dir(self) -> str:
        return rundir.exec_dir(self.name, self.exec_id)

    def setup(self) -> None:
        super().setup()
        self.fields += encode_field("SDSHIM_EXEC_ID", self.exec_id.encode())
        if self.output is not None:  # made in setup, before any output
            self.output.fields = self.fields

    def create(self) -> str:
        self.write_state(name=self.name, id=self.id, exec_id=self.exec_id,
                         unit=self.opts.unit, runtime=self.rt.path, status="created",
                         command=self.opts.command, pid=None, monitor_pid=posix.getpid(),
                         created_at=rundir.now_iso(), started_at=None,
                         tty=self.opts.tty, stdin=self.opts.interactive)
        if not self.opts.start:
            self.kill_deadline = time.monotonic() + START_WAIT  # see _escalate
        return ""

    def start(self) -> str:
        options = ["--detach"] + (["--tty"] if self.opts.tty else [])
        for env in self.opts.env:
            options += ["--env", env]
        if self.opts.cwd:
            options += ["--cwd", self.opts.cwd]
        self.kill_deadline = 0.0
        try:
            out_w, err_w = self.open_output()
        except OSError as e:
            return f"cannot set up the process's output: {e}"
        error = self.spawn_runtime("exec", options, out_w, err_w, self.opts.command,
                                   self.join_container())
        if error:
            return error
        if self.opts.timeout:
            # The stop machinery's deadline kills with SIGKILL when it passes.
            self.timeout_at = time.monotonic() + self.opts.timeout
            if not self.kill_deadline or self.timeout_at < self.kill_deadline:
                self.kill_deadline = self.timeout_at
        return self.confirm_running()

    def request_stop(self, timeout: float, signum: int = 0) -> None:
        if not self.pid and not self.exited:  # not started: there is nothing to stop
            self.start_failure = "stopped before the command was started"
            return
        super().request_stop(timeout, signum)

    def join_container(self) -> Callable[[], None] | None:
        """For a runtime that leaves the exec'd process in its own cgroup (crun here):
        start the runtime in the container's cgroups, so the process is born there."""
        if self.rt.places_processes:
            return None
        state = rundir.read_json(leanos.join(rundir.container_dir(self.name),
                                              "state.json")) or {}
        init = int(state.get("pid") or 0)
        return (lambda: cgroup.join(0, init)) if init else None

    def _escalate(self) -> None:
        if not self.pid and not self.starting:
            self.start_failure = f"nobody asked to start the command within {START_WAIT:.0f}s"
            return
        if self.timeout_at and time.monotonic() >= self.timeout_at and not self.exited:
            self.timed_out = True
        super()._escalate()

    def cleanup_runtime(self, cid: str = "") -> None:
        """The container is not ours to delete; the process is gone already."""

    def finish(self, result: dict[str, Any], code: int) -> int:
        if self.timed_out and not result.get("error"):
            result.update(exit_code=EXIT_TIMEOUT, timed_out=True, timeout=self.opts.timeout)
            code = EXIT_TIMEOUT
        return super().finish(result, code)

