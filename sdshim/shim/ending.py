"""The monitor's end, once its lifecycle says Finish: delete the runtime's state, drain
the output, write the exit record, tell systemd, the journal and the attach clients,
exit; and, with the stream driver, the query for the last stderr line.

Every step is a continuation of the one before (a runtime command reaped, the pipes
drained, journald synchronized, the attach clients flushed), carried out by the
shell's loop. Apart from sdshim.shim.monitor because no idle monitor runs any of it:
this module is pinned at start-up and loaded from the held file at the end (see
sdshim.shim.pinned), so it is the version the monitor started with.
"""

from __future__ import annotations

from sdshim import rundir, spawn
from sdshim.privapi import posix, signal_module
from sdshim.shim import journal, lifecycle, oom
from sdshim.shim.poller import EVENT_READ

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sdshim.shim.lifecycle import Finish
    from sdshim.shim.monitor import Shell

# How long the pipes may stay silent, after the container's exit, before the monitor
# stops waiting for writers the container left behind to close them.
DRAIN_TIMEOUT = 5.0
# journalctl, asked for a stream-driver line: how long, and how much is read of it.
QUERY_TIMEOUT = 10.0
QUERY_LIMIT = 1 << 20
QUERY_TIMER = "journal-query"


def finish(shell: Shell, action: Finish) -> None:
    """Delete the runtime's state, drain the output, record, tell systemd and the
    attach clients, exit: each step a continuation of the one before."""
    result = dict(action.result)
    if not result.get("error"):
        # Before the delete: the runtime's delete removes the cgroup with the count.
        result["oom_killed"] = bool(oom.kills(shell.cgroup_path))
    if shell.health is not None:
        shell.health.end()
        if shell.health.status:
            result["health"] = shell.health.status
        if shell.health_restart and action.code == 0:
            action.code = 1  # whatever the container's status: systemd restarts it

    def drain() -> None:
        shell.streams.drain(DRAIN_TIMEOUT, lambda: _record(shell, action, result))

    if action.delete:
        try:
            pid = spawn.launch(shell.rt.argv("delete", "--force", shell.id),
                               stdin=spawn.DEVNULL, stdout=spawn.DEVNULL,
                               stderr=spawn.DEVNULL)
        except spawn.CommandError:
            drain()
            return
        shell.reaper.expect(pid, lambda _status: drain())
    else:
        drain()


def _record(shell: Shell, action: Finish, result: dict[str, Any]) -> None:
    shell.streams.close_all()
    shell.output.close()
    if shell.journal is not None:
        # Everything the container wrote is in the journal before the exit record
        # says it ended (stream lines may even be queued behind the exit event).
        shell.output.flush_backlog()
        journal.synchronize(shell.poller,
                            lambda _ok: _write_record(shell, action, result))
    else:
        _write_record(shell, action, result)


def _write_record(shell: Shell, action: Finish, result: dict[str, Any]) -> None:
    times = posix.times()  # the monitor and the runtime commands it ran
    result.setdefault("finished_at", rundir.now_iso())
    result.update(name=shell.name, id=shell.id, pid=shell.life.proc.pid or None,
                  restarts=shell.restarts, started_at=shell.state.get("started_at"),
                  monitor_exit_code=action.code,
                  monitor_cpu_seconds=round(sum(times[:4]), 3))
    rundir.write_json(shell.path("exit.json"), result)
    shell.write_state({"status": "exited"})
    shell.stdio.finish(result, lambda: _exit(shell, action, result))


def _exit(shell: Shell, action: Finish, result: dict[str, Any]) -> None:
    shell.before_exit()
    summary = lifecycle.describe(result, action.what)
    shell.notifier.send(STATUS=f"Error: {result['error']}" if result.get("error")
                        else summary)
    shell.event(summary, SDSHIM_EVENT="failed" if result.get("error") else "exited",
                SDSHIM_EXIT_CODE=str(action.code))
    shell.close_control()
    if shell.notify_part is not None:
        shell.poller.unregister(shell.notify_part.proxy)
        shell.notify_part.proxy.close()
    shell.stdio.close()
    shell.exit_code = action.code
    shell.poller.stop()


def query_stream_line(shell: Shell, done: Callable[[bytes], None]) -> None:
    """done(the last stderr line the stream connection took), by journalctl,
    run as a continuation: its output read in the loop, its end reaped."""
    out = bytearray()
    ended: list[str] = []

    def part_done(what: str) -> None:
        ended.append(what)
        if len(ended) == 2:
            shell.poller.cancel(QUERY_TIMER)
            done(bytes(out).rstrip(b"\n"))

    def synced(_ok: bool) -> None:
        r, w = posix.pipe2(posix.O_CLOEXEC)
        try:
            pid = spawn.launch(journal.stream_line_query(shell.name,
                                                         journal.PRIORITY_STDERR),
                               stdin=spawn.DEVNULL, stdout=w, stderr=spawn.DEVNULL)
        except spawn.CommandError:
            posix.close(r)
            done(b"")
            return
        finally:
            posix.close(w)
        posix.set_blocking(r, False)

        def readable(_fileobj: object) -> None:
            try:
                chunk = posix.read(r, 65536)
            except BlockingIOError:
                return
            if chunk and len(out) < QUERY_LIMIT:
                out.extend(chunk)
                return
            shell.poller.unregister(r)
            posix.close(r)
            part_done("eof")

        shell.poller.register(r, EVENT_READ, readable)
        shell.reaper.expect(pid, lambda _status: part_done("reaped"))
        shell.poller.arm(QUERY_TIMER, QUERY_TIMEOUT, lambda: _kill(pid))

    journal.synchronize(shell.poller, synced)


def _kill(pid: int) -> None:
    try:
        posix.kill(pid, signal_module().SIGKILL)
    except ProcessLookupError:
        pass
