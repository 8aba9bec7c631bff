"""Zero-resident containers (--supervisor systemd): hand the unit over to the container.

The unit's first main process is this hand-off, not a monitor: it creates the container
in the unit's delegated cgroup, makes the container's init the unit's main process, starts
it, confirms that the command was exec'd, sends READY=1 and exits. systemd then
supervises the container itself and records its status (ExecMainStatus); the unit's
ExecStopPost= step (sdshim.shim.stoppost) writes the exit record and deletes the
runtime's state. Nothing of sdshim stays resident while the container runs.

The order is what makes it race-free (measured on systemd 252, see DESIGN.md): this
process is NOT a child subreaper, so the init is reparented to PID 1 (systemd) when
`runc create` returns; MAINPID is announced, and taken (BARRIER=1), after create and
before start, when the init cannot have exited yet. systemd then sees every exit of the
init, however early, as its main process's. NotifyAccess=all lets this process send
READY=1 once it is no longer the main process.

States, one way only: SETUP -> CREATED (runc create) -> HANDED (MAINPID taken) ->
STARTED (runc start) -> RUNNING (command exec'd, or already ended) -> DONE (READY=1).
A failure before HANDED is this process's own exit status and record, as the monitor's;
after it, the container's status is systemd's. `sdshim create` stops at HANDED and waits
on the control socket for one start request, resident only while the container is created.
"""

from __future__ import annotations

import _socket
import posix
import sys

from sdshim import leanjson, leanos, privapi, rundir, spawn
from sdshim.errors import EXIT_NO_RESTART, EXIT_RUNTIME, EXIT_USAGE
from sdshim.shim import cgroup, journal, runtime
from sdshim.shim.listener import unix_socket
from sdshim.shim.notify import Notifier

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import SimpleNamespace
    from typing import Any

SUPERVISOR = "systemd"
# How long the init may stay the runtime's own binary after `runc start` before the
# command counts as running anyway (as the monitor's wait_exec).
EXEC_TIMEOUT = 2.0
SETUP, CREATED, HANDED, STARTED, RUNNING, DONE = (
    "setup", "created", "handed", "started", "running", "done")


class HandoffError(Exception):
    """A failure before the container is the unit's: recorded, and the exit status."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.code = code


def unsupported(opts: SimpleNamespace) -> str:
    """Why these options cannot go without a monitor, or ''."""
    if opts.interactive or opts.tty:
        return "-i and -t need the sdshim monitor (it holds stdin and the terminal)"
    if opts.log_path:
        return "--log-path needs the sdshim monitor (it writes the CRI log file)"
    if opts.log_driver != "stream":
        return "the native log driver needs the sdshim monitor; use --log-driver stream"
    return ""


class Handoff:
    def __init__(self, opts: SimpleNamespace) -> None:
        self.opts = opts
        self.name: str = opts.name
        if not opts.id:  # a template unit has no manager to pick one
            from sdshim.naming import generate_id

            opts.id = generate_id()
        self.id: str = opts.id
        self.dir = rundir.container_dir(self.name)
        self.notifier = Notifier()
        self.rt = runtime.of_container(opts.runtime, self.dir)
        self.state_name = SETUP
        self.pid = 0
        self.pidfd = -1
        self.state: dict[str, Any] = {}
        self.restarts = 0

    def path(self, name: str) -> str:
        return leanos.join(self.dir, name)

    def to(self, state: str) -> None:
        self.state_name = state

    def write_state(self, **changes: Any) -> None:
        self.state.update(changes)
        rundir.write_json(self.path("state.json"), self.state)

    # --- SETUP -> CREATED ----------------------------------------------------------

    def setup(self) -> None:
        leanos.makedirs(rundir.RUN_DIR, 0o700)
        try:
            posix.mkdir(self.dir, 0o700)
        except FileExistsError:
            pass
        previous = rundir.read_json(self.path("state.json")) or {}
        owner = previous.get("unit")
        if owner and self.opts.unit and owner != self.opts.unit:
            raise HandoffError(f"container name {self.name} is in use by {owner}; delete "
                               f"that container first (sdshim delete {self.name})")
        self.restarts = int(previous.get("restarts", 0)) + 1 if previous else 0
        invocations = [*previous.get("invocation_ids", []),
                       *filter(None, [leanos.getenv("INVOCATION_ID")])]
        for stale in ("exit.json", "state.json", "stop.json", "runtime.log", "pid",
                      "control"):
            try:
                posix.unlink(self.path(stale))
            except FileNotFoundError:
                pass
        leanos.makedirs(self.rt.root, 0o700)
        # Runtime state a predecessor in this unit left (its stop step did not run).
        for cid in {self.id, str(previous.get("id") or "")} - {""}:
            if leanos.exists(leanos.join(self.rt.root, cid)):
                self.delete_runtime(cid)
        self.write_state(name=self.name, id=self.id, unit=self.opts.unit,
                         bundle=self.opts.bundle, runtime=self.rt.path, status="creating",
                         supervisor=SUPERVISOR, restart=self.opts.restart,
                         restarts=self.restarts, pid=None, monitor_pid=posix.getpid(),
                         created_at=rundir.now_iso(), started_at=None,
                         log_driver="stream", invocation_ids=invocations,
                         tty=False, stdin=False, exec_confirmed=False)

    def create(self) -> None:
        cg = cgroup.split(self.opts.unit) if self.opts.unit else ""
        config = self.path("bundle")
        try:
            runtime.write_config(self.opts.bundle, config, cg)
        except (OSError, ValueError) as e:
            raise HandoffError(
                f"cannot read {leanos.join(self.opts.bundle, 'config.json')}: {e}") from None
        try:
            # One stream for stdout and stderr, as a native service's (and the direct
            # start's, sdshim.units.direct): the lines keep their order.
            out = journal.open_stream(self.name, self.opts.unit, journal.PRIORITY_STDOUT)
        except OSError as e:
            raise HandoffError(f"cannot connect the container's output to journald: {e}"
                               ) from None
        self.write_state(cgroup=cg)
        env = leanos.environ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                             "INVOCATION_ID", "JOURNAL_STREAM")
        argv = self.rt.argv("create", "--bundle", config, "--pid-file", self.path("pid"),
                            self.id)
        try:
            code = spawn.call(argv, env=env, stdout=out, stderr=out)
        finally:
            posix.close(out)
        if code != 0:
            raise HandoffError(self.rt.last_error()
                               or f"{self.rt.name} create {runtime.ended(code)}")
        try:
            with open(self.path("pid")) as f:
                self.pid = int(f.read())
        except (OSError, ValueError) as e:
            raise HandoffError(f"{self.rt.name} create left no usable pid file: {e}") from None
        if self.opts.unit and not self.rt.places_processes:
            cgroup.adopt(self.opts.unit, self.pid)
        self.pidfd = posix.pidfd_open(self.pid)
        self.to(CREATED)

    # --- CREATED -> HANDED -> STARTED -> RUNNING -> DONE -----------------------------

    def hand_over(self) -> None:
        """MAINPID, and wait until systemd has taken it: only then may the init end."""
        self.notifier.send(MAINPID=self.pid)
        if not self.notifier.barrier() and self.notifier.sock is not None:
            raise HandoffError("systemd did not take the container's init as the unit's "
                               "main process (no answer to BARRIER=1)")
        self.write_state(status="created", pid=self.pid)
        self.to(HANDED)

    def start(self) -> bool:
        """runc start and the exec check; whether the command was seen exec'd (False:
        it ended before: an early exit, or an exec failure the stop step reports)."""
        self.write_state(status="starting", started_at=rundir.now_iso())
        code = spawn.call(self.rt.argv("start", self.id))
        if code != 0 and self.alive():
            raise HandoffError(self.rt.last_error()
                               or f"{self.rt.name} start {runtime.ended(code)}")
        self.to(STARTED)
        confirmed = self.wait_exec()
        self.to(RUNNING)
        return confirmed

    def record_started(self, confirmed: bool) -> None:
        self.write_state(status="running" if confirmed else "started",
                         exec_confirmed=confirmed)

    def alive(self, timeout: float = 0.0) -> bool:
        """Whether the init still runs (its pidfd is readable once it has ended)."""
        import select

        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(int(timeout * 1000))

    def wait_exec(self) -> bool:
        """Until the init is the command, not the runtime any more (see
        Monitor.wait_exec); False if it ended first."""
        import time

        deadline = time.monotonic() + EXEC_TIMEOUT
        while self.alive():
            try:
                exe = posix.readlink(f"/proc/{self.pid}/exe")
            except OSError:
                exe = ""
            if exe and not runtime.is_runtime_exe(exe, self.rt.path):
                return True
            if time.monotonic() > deadline:
                return True  # still the runtime's binary: count it running, as the monitor
            self.alive(0.001)
        return False

    def ready(self, status: str) -> None:
        self.notifier.send(READY=1, STATUS=status)
        self.notifier.barrier()
        self.to(DONE)

    def started_status(self, confirmed: bool) -> str:
        if confirmed:
            return f"Container {self.name} running, pid {self.pid}"
        # It ended already: systemd has (or will have) its status.
        return f"Container {self.name} ran, pid {self.pid}, and ended at once"

    # --- created, not started: one start request over the control socket ---------------

    def serve_start(self) -> int:
        """`sdshim create`: stay until `sdshim start` (or the container's end)."""
        import select

        sock = unix_socket(_socket.SOCK_STREAM)
        sock.bind(self.path("control"))
        sock.listen(4)
        self.ready(f"Container {self.name} created, pid {self.pid}")
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(self.pidfd, select.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self.pidfd in events:
                    return 0  # killed while created: systemd has its status
                fd = privapi.accept(sock)
                if self.answer(_socket.socket(fileno=fd)):
                    return 0
        finally:
            sock.close()
            _unlink(self.path("control"))

    def answer(self, conn: _socket.socket) -> bool:
        """One control request; True once the container has been started."""
        try:
            conn.settimeout(2.0)
            try:
                request = leanjson.loads(conn.recv(4096).decode() or "{}")
            except ValueError:
                request = {}
            op = request.get("op") if isinstance(request, dict) else None
            started = False
            if op == "start":
                try:
                    confirmed = self.start()
                    reply: dict[str, Any] = {"ok": True, "pid": self.pid,
                                             "ended": not confirmed}
                    started = True
                except HandoffError as e:
                    self.fail(str(e), e.code)
                    reply = {"ok": False, "error": runtime.clean_message(str(e))}
                    started = True  # the end, as for the monitor
            elif op == "stop":  # created, never started: nothing to stop gracefully
                try:
                    posix.kill(self.pid, 9)
                except OSError:
                    pass
                reply = {"ok": True}
            elif op == "kill" and isinstance(request, dict):
                try:
                    posix.kill(self.pid, int(request.get("signal", 15)))
                    reply = {"ok": True}
                except (OSError, ValueError) as e:
                    reply = {"ok": False, "error": str(e)}
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
            conn.sendall(leanjson.dumps(reply).encode() + b"\n")  # first: see Manager.start
            if started and self.state_name == RUNNING:
                self.record_started(not reply.get("ended"))
                self.ready(self.started_status(not reply.get("ended")))
            return started
        except OSError:
            return False
        finally:
            conn.close()

    # --- the sequence ------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.setup()
            self.create()
            self.hand_over()
            if not self.opts.start:
                return self.serve_start()
            confirmed = self.start()
            self.record_started(confirmed)
            self.ready(self.started_status(confirmed))
            return 0
        except HandoffError as e:
            return self.fail(str(e), e.code)
        except spawn.CommandError as e:
            return self.fail(str(e))

    def fail(self, message: str, code: int = EXIT_RUNTIME) -> int:
        """Record the error as the monitor does; this process's exit status.

        Before HANDED that status is the unit's. After it the init is the main process:
        it is killed, so that the unit ends, and the stop step keeps this record."""
        message = runtime.clean_message(message)
        if code == EXIT_RUNTIME:
            code = runtime.classify(message)
        exit_code = EXIT_NO_RESTART if self.opts.restart != "no" else code
        result = {"error": message, "exit_code": code, "signal": None,
                  "name": self.name, "id": self.id, "pid": self.pid or None,
                  "restarts": self.restarts, "started_at": None,
                  "finished_at": rundir.now_iso(), "monitor_exit_code": exit_code,
                  "oom_killed": False}
        try:
            rundir.write_json(self.path("exit.json"), result)
            self.write_state(status="exited")
        except OSError:
            pass
        print(f"sdshim: {message}", file=sys.stderr)
        self.notifier.send(STATUS=f"Error: {message}")
        self.notifier.barrier()
        if self.state_name == CREATED:
            self.delete_runtime(self.id)
        elif self.state_name != SETUP:
            try:
                posix.kill(self.pid, 9)
            except OSError:
                pass
        return exit_code

    def delete_runtime(self, cid: str) -> None:
        try:
            spawn.call(self.rt.argv("delete", "--force", cid), stdout=spawn.DEVNULL,
                      stderr=spawn.DEVNULL)
        except spawn.CommandError:
            pass


def _unlink(path: str) -> None:
    try:
        posix.unlink(path)
    except OSError:
        pass


def main(opts: SimpleNamespace) -> int:
    reason = unsupported(opts)
    if reason:
        print(f"sdshim: --supervisor systemd: {reason}", file=sys.stderr)
        return EXIT_USAGE
    return Handoff(opts).run()
