"""Health checks as a part of the monitor's shell: the schedule on the loop's timers,
each probe a continuation on its `runtime exec` pid, the verdicts (sdshim.shim.health)
in health.json, the journal and the unit's status text.

Loaded at start-up by a monitor with --health-cmd, never by others. Nothing here
waits: a probe starts on a timer, its output is read as it comes, its end arrives
through the reaper, and a probe past its timeout is killed step by step on timers
(healthprobe.Probe.kill_step).
"""

from __future__ import annotations

from sdshim import leanos, rundir, spawn
from sdshim.privapi import signal_module
from sdshim.shim import health, runtime
from sdshim.shim.health import HEALTHY, Health
from sdshim.shim.healthprobe import Probe
from sdshim.shim.lifecycle import Ready, Request, Signal
from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    import signal as _signal  # typeshed has no _signal: the same names, typed
    from collections.abc import Callable

    from sdshim.shim.health import Change, HealthConfig
    from sdshim.shim.monitor import Shell
    from sdshim.shim.poller import Poller
    from sdshim.shim.reaper import ChildReaper
    from sdshim.shim.runtime import Runtime
else:
    _signal = signal_module()

DUE_TIMER = "health-due"
PROBE_TIMER = "health-probe"


class HealthChecks:
    def __init__(self, config: HealthConfig, *, rt: Runtime, cid: str, directory: str,
                 poller: Poller, reaper: ChildReaper,
                 on_change: Callable[[Change, str], None],
                 preexec: Callable[[], Callable[[], None] | None] | None = None) -> None:
        """on_change(change, summary): a change of status, once; summary says the last
        check's outcome in a few words. preexec: the probe's preexec (crun), asked for
        at each probe."""
        self.config = config
        self.rt = rt
        self.cid = cid
        self.record_path = leanos.join(directory, "health.json")
        self.pid_file = leanos.join(directory, "health.pid")
        self.poller = poller
        self.reaper = reaper
        self.on_change = on_change
        self.preexec = preexec
        self.health: Health | None = None
        self.probe: Probe | None = None
        self.probe_started_at = ""
        self.ended = False

    @property
    def status(self) -> str:
        return self.health.status if self.health is not None else ""

    def begin(self) -> None:
        """The container runs: the first probe is due an interval from now."""
        if self.health is not None or self.ended:
            return
        self.health = Health(self.config, self.poller.clock())
        self._write()
        self.poller.arm(DUE_TIMER, self.config.interval, self._start_probe)

    def end(self) -> None:
        """The container ended: no more probes, and the running one goes now."""
        self.ended = True
        self.poller.cancel(DUE_TIMER)
        self.poller.cancel(PROBE_TIMER)
        probe = self.probe
        if probe is not None:
            while probe.kill_step(at_once=True):
                pass

    # --- one probe ------------------------------------------------------------------

    def _start_probe(self) -> None:
        if self.ended or self.health is None:
            return
        self.probe_started_at = rundir.now_iso()
        deadline = self.health.probe_started(self.poller.clock())
        try:
            probe = Probe(self.rt, self.cid, self.config.command, self.pid_file,
                          self.preexec() if self.preexec is not None else None)
        except spawn.CommandError as e:
            self._verdict(None, str(e).encode(), False)
            return
        self.probe = probe
        self.reaper.expect(probe.pid, lambda status: self._ended(probe, status))
        self.poller.register(probe.out_r, EVENT_READ, lambda _fd: self._output(probe))
        self.poller.arm(PROBE_TIMER, deadline - self.poller.clock(),
                        lambda: self._kill_step(probe))

    def _output(self, probe: Probe) -> None:
        fd = probe.out_r
        if not probe.output_ready():
            self.poller.unregister(fd)

    def _kill_step(self, probe: Probe) -> None:
        if probe is not self.probe:
            return
        delay = probe.kill_step()
        if delay:
            self.poller.arm(PROBE_TIMER, delay, lambda: self._kill_step(probe))

    def _ended(self, probe: Probe, status: int) -> None:
        probe.reaped(status)
        if probe.out_r >= 0:
            self.poller.unregister(probe.out_r)
            probe.drain()
        self.probe = None
        self.poller.cancel(PROBE_TIMER)
        if self.ended:
            return
        code = probe.exit_code()
        output = probe.output
        if code not in (0, None) and not output.strip():
            output = probe.error().encode()
        self._verdict(code, output, probe.timed_out)

    def _verdict(self, code: int | None, output: bytes, timed_out: bool) -> None:
        assert self.health is not None
        change = self.health.probe_ended(self.poller.clock(), code, output, timed_out,
                                         wall_start=self.probe_started_at,
                                         wall_end=rundir.now_iso())
        self._write()
        if not self.ended:
            self.poller.arm(DUE_TIMER, self.health.due - self.poller.clock(),
                            self._start_probe)
        if change is not None:
            self.on_change(change, self.summary())

    def summary(self) -> str:
        """The last check's outcome: 'exit code 1: output...', 'timed out', ..."""
        assert self.health is not None
        if not self.health.results:
            return ""
        last = self.health.results[-1]
        how = ("timed out" if last["timed_out"] else
               f"exit code {last['exit_code']}" if last["exit_code"] is not None
               else "could not run")
        tail = " ".join(str(last["output"]).split())[-200:]
        return how + (f": {tail}" if tail else "")

    def _write(self) -> None:
        assert self.health is not None
        rundir.write_json(self.record_path, self.health.record())

    def is_healthy(self) -> bool:
        return self.status == HEALTHY


def attach(shell: Shell) -> HealthChecks:
    """Health checks for the container of shell (sdshim.shim.monitor): probes through
    its runtime (their own error log), verdicts into its journal, status text and
    lifecycle (--sdnotify healthy: Ready; --health-on-failure: kill, stop, restart)."""
    o = shell.opts
    config = health.HealthConfig(
        health.probe_command(o.health_cmd), o.health_interval, o.health_timeout,
        o.health_retries, o.health_start_period, o.health_on_failure)

    def changed(change: Change, summary: str) -> None:
        # One journal entry per change of health, never one per probe.
        shell.event(f"{shell.life.what} is {change.new} (health check {summary})",
                    SDSHIM_EVENT="health", SDSHIM_HEALTH=change.new)
        if shell.life.state in ("running", "stopping"):
            shell.notifier.send(STATUS=shell.status_text())
        if change.new == HEALTHY and o.sdnotify == "healthy":
            shell.feed(Ready())
        if change.action == "kill":
            shell.feed(Signal(_signal.SIGKILL))
        elif change.action == "stop":
            shell.feed(Request("stop"))  # as `sdshim stop`: final, not restarted
        elif change.action == "restart":
            shell.health_restart = True  # the monitor's status makes systemd restart it
            shell.feed(Signal(_signal.SIGTERM))

    return HealthChecks(
        config, rt=runtime.Runtime(shell.rt.path, shell.rt.root,
                                   shell.path("health-runtime.log")),
        cid=shell.id, directory=shell.dir, poller=shell.poller, reaper=shell.reaper,
        on_change=changed, preexec=shell._join_container)
