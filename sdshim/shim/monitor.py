"""The monitor: creates the container through the runtime, forwards its output to
journald, tells systemd about readiness, and records and returns the exit status.

It is the unit's main process and a child subreaper, so it reaps the container,
whatever the container orphans, and the runtime's own processes; one event loop
(epoll) serves the output pipes, signals (via the wakeup fd) and the control socket.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import posix
import sys
import time

from sdshim import leanjson, leanos, rundir, spawn
from sdshim.errors import EXIT_NO_RESTART, EXIT_RUNTIME
from sdshim.shim import cgroup, framing, journal, oom, options, runtime
from sdshim.shim.journal import (
    PRIORITY_STDERR,
    PRIORITY_STDOUT,
    JournalWriter,
    LineSplitter,
    encode_field,
)
from sdshim.shim.listener import Listener
from sdshim.shim.notify import Notifier
from sdshim.shim.output import Output
from sdshim.shim.poller import EVENT_READ, Poller
from sdshim.shim.stdio import Stdio

# Start-up time and memory are paid once per container: the plain path (create, start,
# forward output, wait) imports only what it uses, through the lean modules: _signal,
# _socket, sdshim.leanjson, sdshim.rundir, Poller, spawn.launch; what only some
# containers or the end need is imported there. tests/test_footprint.py holds the line.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed has no _signal: the same names, typed
    from collections.abc import Callable, Sequence
    from types import SimpleNamespace
    from typing import Any
else:
    import _signal  # signal's C half: signal makes enums of it all (~0.9 MB)

PR_SET_CHILD_SUBREAPER = 36
F_SETPIPE_SZ = 1031
SIGKILL = _signal.SIGKILL
SIGTERM = _signal.SIGTERM
SIGCHLD = _signal.SIGCHLD
FORWARDED = (SIGTERM, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGHUP,
             _signal.SIGUSR1, _signal.SIGUSR2)
STOP_SIGNALS = (SIGTERM, _signal.SIGINT, _signal.SIGQUIT)
# Longest journal entry; longer lines become CONTAINER_PARTIAL_MESSAGE chunks. 256 KiB
# keeps JSON log lines whole far beyond conmon's 8 KiB and journald's 48 KiB stream
# LineMax, still fits one datagram under the default wmem_max (2 x 212992 bytes: no
# memfd per entry, even without SO_SNDBUFFORCE), and bounds the monitor's buffer.
DEFAULT_MAX_LINE = 256 * 1024
# How long the pipes may stay silent, after the container's exit, before the monitor
# stops waiting for writers the container left behind to close them.
DRAIN_TIMEOUT = 5.0
READ_SIZE = 1 << 16


class NameTakenError(Exception):
    pass


class Stream:
    """One of the container's output pipes, forwarded line by line to journald."""

    def __init__(self, fd: int, name: str, priority: int, max_line: int) -> None:
        self.fd = fd
        self.name = name
        self.kind = framing.STDERR if name == "stderr" else framing.STDOUT  # for attach
        self.prefix = encode_field("PRIORITY", str(priority).encode())
        self.splitter = LineSplitter(max_line)
        self.last_line = b""
        self.open = True


class Monitor:
    def __init__(self, opts: SimpleNamespace) -> None:
        self.opts = opts
        self.name: str = opts.name
        if not opts.id:  # a template unit (sdshim@.service) has no manager to pick one
            from sdshim.naming import generate_id  # lazily: secrets costs 3 ms to import

            opts.id = generate_id()
        self.id: str = opts.id
        self.dir = self.records_dir()
        self.notifier = Notifier()
        self.rt = runtime.Runtime(opts.runtime, rundir.runtime_root(opts.runtime),
                                  self.path("runtime.log"))
        self.poller = Poller()
        self.reaped: dict[int, int] = {}  # pid -> wait status, for pids we may ask about
        self.pid = 0  # the container's init, once known
        self.state: dict[str, Any] = {}
        self.pending_signals: list[int] = []
        self.kill_deadline = 0.0  # monotonic time at which a stop escalates to SIGKILL
        self.stop_requested_signal = 0
        self.stop_escalated = False  # SIGKILL sent because the stop timeout passed
        self.final = False  # on restart-policy units: exit so that systemd does not restart
        self.cgroup_path = ""  # the container's cgroup, as given to the runtime
        self.oom_score_adj: int | None = None  # what the container gets (see oom.py)
        self.restarts = 0
        self.invocations: list[str] = []
        self.journal: JournalWriter | None = None
        self.fields = b""
        self.output: Output | None = None
        self.log_driver: str = opts.log_driver
        self.read_total = 0  # bytes read from the container's pipes, to see a drain progress
        self.streams: list[Stream] = []
        self.control: Listener | None = None
        self.starting = False  # start requested (by --start or the control socket)
        self.started = False
        self.run_detached = False  # created and started by one `runc run --detach`
        self.exec_confirmed = False  # the runtime's init has become the container's command
        self.exited = False
        self.start_failure = ""  # why a start requested over the control socket failed
        self.stdio = Stdio(self.poller, self.dir, tty=opts.tty, stdin=opts.interactive,
                           on_terminal=self._on_terminal)
        self.tty_stream: Stream | None = None
        # What ties sdshim's own journal entries (not the output) to this container.
        self.event_ids = {"SDSHIM_CONTAINER_ID_FULL": self.id,
                          "SDSHIM_CONTAINER_NAME": self.name}

    def records_dir(self) -> str:
        return rundir.container_dir(self.name)

    def path(self, name: str) -> str:
        """A file in the records directory."""
        return leanos.join(self.dir, name)

    # --- set-up ---------------------------------------------------------------------

    def setup(self) -> None:
        become_subreaper()
        self.oom_score_adj = oom.protect_monitor()
        self.wake_r, wake_w = posix.pipe2(posix.O_NONBLOCK | posix.O_CLOEXEC)
        _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (SIGCHLD, *FORWARDED):
            _signal.signal(sig, _noop)
        self.poller.register(self.wake_r, EVENT_READ, self._on_signal)
        # Signals that arrived before setup() was reached (see main()).
        for signum in sorted(_early_signals):
            posix.write(wake_w, bytes([signum]))

        leanos.makedirs(rundir.RUN_DIR, 0o700)
        try:  # not makedirs: an exec's directory is only made in its container's
            posix.mkdir(self.dir, 0o700)
        except FileExistsError:
            pass
        previous = rundir.read_json(self.path("state.json"))
        owner = (previous or {}).get("unit")
        if owner and self.opts.unit and owner != self.opts.unit:
            # Another unit's container has this name: its records are not ours to clear.
            raise NameTakenError(f"container name {self.name} is in use by {owner}; "
                                 f"delete that container first (sdshim delete {self.name})")
        # Records of a predecessor in this unit: systemd restarted it (Restart=). Count
        # it, so the count survives the unit (NRestarts goes when the unit is unloaded).
        self.restarts = int(previous.get("restarts", 0)) + 1 if previous else 0
        # Stream-driver lines are found by the unit invocations that wrote them.
        self.invocations = [*(previous or {}).get("invocation_ids", []),
                            *filter(None, [leanos.getenv("INVOCATION_ID")])]
        for stale in ("exit.json", "state.json", "runtime.log", "pid", "control"):
            try:
                posix.unlink(self.path(stale))
            except FileNotFoundError:
                pass
        leanos.makedirs(self.rt.root, 0o700)

        fields = {
            "CONTAINER_ID": self.id[:12], "CONTAINER_ID_FULL": self.id,
            "CONTAINER_NAME": self.name, "SYSLOG_IDENTIFIER": self.name,
        }
        if self.opts.tag:
            fields["CONTAINER_TAG"] = self.opts.tag
        self.fields = b"".join(encode_field(k, v.encode()) for k, v in fields.items())
        try:
            self.journal = JournalWriter()
        except OSError as e:
            print(f"sdshim: journald not reachable ({e}); container output goes to the "
                  "unit's stdout", file=sys.stderr)
        self.output = Output(self.journal, self.fields)

        self.control = Listener(self.poller, self.path("control"), _socket.SOCK_STREAM, 16,
                                self._on_control)
        self.stdio.listen()
        # Runtime state left by a predecessor in this unit that died (this is a restart):
        # the runtime would refuse the same id again, and another id would leak it.
        for cid in {self.id, str((previous or {}).get("id") or "")} - {""}:
            if leanos.exists(leanos.join(self.rt.root, cid)):
                self.cleanup_runtime(cid)

    def write_state(self, **changes: Any) -> None:
        self.state.update(changes)
        rundir.write_json(self.path("state.json"), self.state)

    # --- the event loop -------------------------------------------------------------

    def loop_until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Serve events until done() or timeout; True if done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            wait: float | None = None
            if deadline is not None:
                if now >= deadline:
                    return False
                wait = deadline - now
            if self.kill_deadline:
                left = max(0.0, self.kill_deadline - now)
                wait = left if wait is None else min(wait, left)
                if left == 0.0:
                    self._escalate()
                    continue
            for callback, fileobj in self.poller.poll(wait):
                callback(fileobj)
        return True

    def _on_signal(self, _fd: object) -> None:
        try:
            data = posix.read(self.wake_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum == SIGCHLD:
                self._reap()
            else:
                self._signal_received(signum)
        self._reap()  # SIGCHLD may have coalesced with other signals

    def _reap(self) -> None:
        while True:
            try:
                pid, status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.reaped[pid] = status
            if pid == self.pid:
                self.exited = True

    def wait_child(self, pid: int) -> int:
        """Wait for a child we started, serving events meanwhile; its exit code (as
        Popen's returncode: negative for a signal)."""
        self.loop_until(lambda: pid in self.reaped)
        return posix.waitstatus_to_exitcode(self.reaped.pop(pid))

    # --- output --------------------------------------------------------------------

    def _on_output(self, fileobj: object) -> None:
        stream = next(s for s in self.streams if s.fd == fileobj)
        try:
            data = posix.read(stream.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # a pty master once the container's side is closed
                raise
            data = b""
        if data:
            self.read_total += len(data)
            self.stdio.output(stream.kind, data)
            self._emit(stream, stream.splitter.feed(data))
        else:
            self._close_stream(stream)

    def _close_stream(self, stream: Stream) -> None:
        self._emit(stream, stream.splitter.flush())
        self.poller.unregister(stream.fd)
        posix.close(stream.fd)
        stream.open = False

    def _emit(self, stream: Stream, lines: Any) -> None:
        lines = list(lines)
        if stream is self.tty_stream:  # the terminal's CR LF ends a line too
            lines = [(line if partial else line.removesuffix(b"\r"), partial)
                     for line, partial in lines]
        if lines:
            stream.last_line = lines[-1][0]
            assert self.output is not None
            self.output.emit(stream.name, stream.prefix, lines)

    def add_stream(self, fd: int, name: str, priority: int) -> Stream:
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)  # fewer wake-ups under heavy output
        except OSError:
            pass  # a pty master, or beyond the pipe size limit: the default serves
        posix.set_blocking(fd, False)
        stream = Stream(fd, name, priority, self.opts.log_max_line)
        self.streams.append(stream)
        self.poller.register(fd, EVENT_READ, self._on_output)
        return stream

    def _on_terminal(self, master: int) -> None:
        # Named stdout: the CRI log and the journal's PRIORITY see a terminal as stdout.
        self.tty_stream = self.add_stream(master, "stdout", PRIORITY_STDOUT)

    def open_output(self) -> tuple[int, int]:
        """The write ends for the container's stdout and stderr.

        native: pipes the monitor reads and forwards. stream: journald stream
        connections, so output never passes through the monitor (and outlives it).
        """
        if self.log_driver == "stream":
            try:
                return journal.open_streams(self.name, self.opts.unit)
            except OSError as e:
                print(f"sdshim: journald stream socket not reachable ({e}); forwarding "
                      "output over the native protocol instead", file=sys.stderr)
                self.log_driver = "native"
        if self.opts.log_path:
            from sdshim.shim.crilog import CriLog

            assert self.output is not None
            self.output.cri = CriLog(self.opts.log_path, self.opts.log_size_max)
        out_r, out_w = posix.pipe2(posix.O_CLOEXEC)
        err_r, err_w = posix.pipe2(posix.O_CLOEXEC)
        self.add_stream(out_r, "stdout", PRIORITY_STDOUT)
        self.add_stream(err_r, "stderr", PRIORITY_STDERR)
        return out_w, err_w

    def last_stderr_line(self) -> bytes:
        """The container's last line on stderr (where runc reports an exec failure; in
        terminal mode, that is the terminal)."""
        if self.tty_stream is not None:
            return self.tty_stream.last_line
        if self.log_driver != "stream":
            return self.streams[1].last_line
        return journal.last_stream_line(self.name, PRIORITY_STDERR)

    def event(self, message: str, **extra: str) -> None:
        """An entry about the container's life (not its output) in the unit's journal."""
        if self.journal is None:
            print(f"sdshim: {message}", file=sys.stderr)
            return
        fields = {"MESSAGE": message, "PRIORITY": "6", "SYSLOG_IDENTIFIER": "sdshim",
                  **self.event_ids, **extra}
        self.journal.send(b"".join(encode_field(k, v.encode()) for k, v in fields.items()))

    # --- signals and control -------------------------------------------------------

    def _signal_received(self, signum: int) -> None:
        if signum in STOP_SIGNALS:
            # SIGTERM is systemd's (and the usual) way to say stop: the container gets
            # its own stop signal. SIGINT and SIGQUIT are passed on as they are.
            self.request_stop(self.opts.stop_timeout,
                              0 if signum == SIGTERM else signum)
        else:
            self.deliver(signum)

    def deliver(self, signum: int) -> None:
        """Send signum to the container now, or once its PID is known."""
        if self.exited:
            return
        if not self.pid:
            self.pending_signals.append(signum)
            return
        try:
            posix.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def request_stop(self, timeout: float, signum: int = 0) -> None:
        sig = signum or self.opts.stop_signal
        if self.pid and not self.started:
            sig = SIGKILL  # created but never started: nothing to stop gracefully
        self.stop_requested_signal = sig
        self.deliver(sig)
        if sig != SIGKILL:
            deadline = time.monotonic() + timeout
            if not self.kill_deadline or deadline < self.kill_deadline:
                self.kill_deadline = deadline

    def _escalate(self) -> None:
        self.kill_deadline = 0.0
        if self.pid and not self.exited:
            self.stop_escalated = True
            self.deliver(SIGKILL)

    def _on_control(self, conn: _socket.socket) -> None:
        try:
            conn.settimeout(2.0)
            request = leanjson.loads(conn.recv(4096).decode() or "{}")
            try:
                if not isinstance(request, dict):
                    raise TypeError("a request is a JSON object")
                reply = self.handle_request(request)
            except (TypeError, ValueError) as e:
                # A malformed request must never take the monitor (and the container's
                # supervision) down with it: answer it and go on.
                reply = {"ok": False, "error": f"invalid request: {e}"}
            conn.sendall(leanjson.dumps(reply).encode() + b"\n")
        except (OSError, ValueError):
            pass  # a client that went away or sent no JSON: nothing to answer
        finally:
            conn.close()

    def handle_request(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "start":
            if self.starting or self.exited:
                return {"ok": False, "error": "container is already started"}
            self.starting = True
            err = self.start()
            self.start_failure = err  # the end: run() records it and exits
            return {"ok": not err, "error": err, "pid": self.pid}
        if op == "kill":
            if not self.pid or self.exited:
                return {"ok": False, "error": "container is not running"}
            self.deliver(int(req.get("signal", SIGTERM)))
            return {"ok": True}
        if op == "stop":
            self.final = True  # a stop the user asked for: no restart
            self.request_stop(float(req.get("timeout", self.opts.stop_timeout)),
                              int(req.get("signal", 0)))
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {op!r}"}

    # --- the container's life ------------------------------------------------------

    def create(self) -> str:
        """runc create; returns an error message, or '' on success.

        With --start, and a runtime that puts the process into its cgroup itself (so
        nothing needs doing between create and start): runc run --detach, which creates
        and starts in one runtime process, ~5 ms sooner. start() then only confirms.
        """
        bundle = self.opts.bundle
        cg = cgroup.split(self.opts.unit) if self.opts.unit else ""
        self.cgroup_path = cg
        config = self.path("bundle")
        try:
            runtime.write_config(bundle, config, cg, self.oom_score_adj,
                                 terminal=self.opts.tty)
        except (OSError, ValueError) as e:
            return f"cannot read {leanos.join(bundle, 'config.json')}: {e}"

        try:
            out_w, err_w = self.open_output()
        except OSError as e:
            return f"cannot set up the container's output: {e}"
        self.write_state(name=self.name, id=self.id, unit=self.opts.unit,
                         bundle=bundle, runtime=self.rt.path, status="creating",
                         restart=self.opts.restart, restarts=self.restarts,
                         pid=None, monitor_pid=posix.getpid(), created_at=rundir.now_iso(),
                         started_at=None, log_driver=self.log_driver,
                         invocation_ids=self.invocations,
                         tty=self.opts.tty, stdin=self.opts.interactive)
        self.run_detached = self.opts.start and self.rt.places_processes
        if self.run_detached:
            error = self.spawn_runtime("run", ["--detach", "--bundle", config], out_w, err_w)
        else:
            error = self.spawn_runtime("create", ["--bundle", config], out_w, err_w)
        if error:
            return error
        if not self.exited and self.opts.unit:
            cgroup.adopt(self.opts.unit, self.pid)
        self.write_state(status="created", pid=self.pid)
        return ""

    def spawn_runtime(self, command: str, options: Sequence[str], out_w: int, err_w: int,
                      args: Sequence[str] = (),
                      preexec: Callable[[], None] | None = None) -> str:
        """The runtime command that makes the container's process (create, run, exec),
        its output to out_w and err_w (closed here); sets self.pid. An error, or ''."""
        env = leanos.environ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                             "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM")
        argv = self.rt.argv(command, *options, *self.stdio.runtime_args(),
                            "--pid-file", self.path("pid"), self.id, *args)
        try:
            pid = spawn.launch(argv, env=env, stdin=self.stdio.runtime_stdin(), stdout=out_w,
                               stderr=err_w, preexec=preexec)
        except spawn.CommandError as e:
            return str(e)
        finally:
            posix.close(out_w)
            posix.close(err_w)
            self.stdio.after_spawn()
        code = self.wait_child(pid)
        if code != 0:
            return self.rt.last_error() or f"{self.rt.name} {command} {_how(code)}"
        try:
            with open(self.path("pid")) as f:
                self.pid = int(f.read())
        except (OSError, ValueError) as e:
            return f"{self.rt.name} {command} left no usable pid file: {e}"
        if self.pid in self.reaped:
            self.exited = True
        # The runtime sent the pty master before it exited; it may still be in the queue.
        if not self.loop_until(self.stdio.terminal_ready, 5.0):
            return f"{self.rt.name} {command} did not pass the terminal to the console socket"
        return ""

    def start(self) -> str:
        """runc start (unless create ran the container), then make sure the command
        really runs; error message or ''."""
        if not self.run_detached:
            code = self.wait_child(spawn.launch(self.rt.argv("start", self.id),
                                                stdin=spawn.DEVNULL))
            if code != 0 and not self.exited:
                return self.rt.last_error() or f"{self.rt.name} start {_how(code)}"
        return self.confirm_running()

    def confirm_running(self) -> str:
        """After the runtime started the command: make sure it runs; error message or ''."""
        self.started = True
        if not self.exited:
            self.wait_exec()
        if self.exited:
            failure = self.exec_failure()
            if failure:
                return failure
        self._reap()  # an exit that already happened must not be recorded as running
        self.write_state(status="exiting" if self.exited else "running",
                         started_at=rundir.now_iso())
        self.notifier.send(STATUS=f"Container {self.name} running, pid {self.pid}")
        for sig in self.pending_signals:
            self.deliver(sig)
        self.pending_signals.clear()
        return ""

    def wait_exec(self) -> None:
        """Until the runtime's init has exec'd the command (or the container ended).

        An execve failure (exec format error, ...) comes after `start` returns; waiting
        for it here lets start report it instead of a container that 'ran' and exited.
        """
        deadline = time.monotonic() + 2.0
        # Until exec, the init is the runtime itself: a memfd copy of it, or (runc 1.1's
        # bindfd) a file on a detached bind mount, whose path reads as "/". No command
        # can be "/", a directory.
        names = {"runc", "crun", self.rt.name}
        while not self.exited and time.monotonic() < deadline:
            try:
                exe = posix.readlink(f"/proc/{self.pid}/exe")
            except OSError:
                exe = ""
            if exe not in ("", "/") and not any(n in exe for n in names):
                self.exec_confirmed = True
                return
            self.loop_until(lambda: self.exited, timeout=0.001)

    def exec_failure(self) -> str:
        """The runtime's execve error, if that is why the container ended."""
        status = self.reaped.get(self.pid)
        # runc 1.1 exits 1 after printing the error, other versions 255.
        if self.exec_confirmed or status is None or \
                posix.waitstatus_to_exitcode(status) not in (1, 255):
            return ""
        self.drain(0.5)
        line = self.last_stderr_line().strip()
        if runtime.is_exec_failure(line):
            return line.decode(errors="replace")
        return ""

    def drain(self, timeout: float) -> None:
        """Until the pipes are closed, or silent for timeout seconds: however slowly
        journald takes what is in them, nothing the container wrote is left behind."""
        while True:
            before = self.read_total
            if self.loop_until(lambda: not any(s.open for s in self.streams), timeout) \
                    or self.read_total == before:
                return

    def cleanup_runtime(self, cid: str = "") -> None:
        """Delete the runtime's state; --force kills anything the container left."""
        try:
            self.wait_child(spawn.launch(self.rt.argv("delete", "--force", cid or self.id),
                                         stdin=spawn.DEVNULL, stdout=spawn.DEVNULL,
                                         stderr=spawn.DEVNULL))
        except spawn.CommandError:
            pass

    def finish(self, result: dict[str, Any], code: int) -> int:
        """Drain output, record the result, tell systemd; the monitor's exit code."""
        self.cleanup_runtime()
        self.drain(DRAIN_TIMEOUT)
        for stream in self.streams:
            if stream.open:
                self._close_stream(stream)
        if self.output is not None:
            self.output.close()
        if self.journal is not None:
            # Everything the container wrote is in the journal before the exit record
            # says it ended (stream lines may even be queued behind the exit event).
            journal.sync()
        result.setdefault("finished_at", rundir.now_iso())
        if self.opts.restart != "no" and (self.final or result.get("error")):
            code = EXIT_NO_RESTART
        import resource  # here at the end: the running monitor need not hold it

        usage = [resource.getrusage(who) for who in
                 (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        result.update(name=self.name, id=self.id, pid=self.pid or None,
                      restarts=self.restarts,
                      started_at=self.state.get("started_at"),
                      monitor_exit_code=code,
                      # the monitor and the runtime commands it ran (runc create, ...)
                      monitor_cpu_seconds=round(sum(u.ru_utime + u.ru_stime for u in usage),
                                                3))
        rundir.write_json(self.path("exit.json"), result)
        self.write_state(status="exited")
        self.stdio.finish(result, self.loop_until)
        if result.get("error"):
            self.notifier.send(STATUS=f"Error: {result['error']}")
            self.event(f"Container {self.name} failed: {result['error']}",
                       SDSHIM_EVENT="failed", SDSHIM_EXIT_CODE=str(code))
        else:
            self.notifier.send(STATUS=describe(result))
            self.event(describe(result), SDSHIM_EVENT="exited", SDSHIM_EXIT_CODE=str(code))
        if self.control is not None:
            self.control.close()
        return code

    def fail(self, message: str) -> int:
        message = runtime.clean_message(message)
        code = runtime.classify(message)
        self.exited = True
        return self.finish({"error": message, "exit_code": code, "signal": None}, code)

    def run(self) -> int:
        try:
            self.setup()
        except NameTakenError as e:
            print(f"sdshim: {e}", file=sys.stderr)
            self.notifier.send(STATUS=f"Error: {e}")
            return EXIT_RUNTIME if self.opts.restart == "no" else EXIT_NO_RESTART
        self.starting = self.opts.start  # no start request can race --start's own
        error = self.create()
        if error:
            return self.fail(error)
        # After `runc run` the command may have ended already: start() still looks into
        # why (an execve failure is an error, not an exit status).
        if self.run_detached or (self.opts.start and not self.exited):
            error = self.start()
            if error:
                return self.fail(error)
            self.notifier.send(READY=1)
        else:
            if self.stop_requested_signal:
                self.deliver(SIGKILL)  # stopped while being created: never started
            self.notifier.send(
                READY=1, STATUS=f"Container {self.name} created, pid {self.pid}")
        self.loop_until(lambda: self.exited or bool(self.start_failure))
        if self.start_failure:
            return self.fail(self.start_failure)
        # Ended, not yet recorded (output still draining): not "running" any more.
        self.write_state(status="exiting")
        status = self.reaped[self.pid]
        failure = self.exec_failure() if self.started else ""
        if failure:
            return self.fail(failure)
        result: dict[str, Any] = {"error": None}
        if posix.WIFSIGNALED(status):
            sig = posix.WTERMSIG(status)
            result.update(exit_code=128 + sig, signal=signal_name(sig))
        else:
            result.update(exit_code=posix.WEXITSTATUS(status), signal=None)
        # Before finish(): the runtime's delete removes the cgroup that holds the count.
        result["oom_killed"] = bool(oom.kills(self.cgroup_path))
        if self.stop_requested_signal:
            result["stop_signal"] = signal_name(self.stop_requested_signal)
            result["stop_timed_out"] = self.stop_escalated
        return self.finish(result, int(result["exit_code"]))


def describe(result: dict[str, Any]) -> str:
    if result.get("signal"):
        text = f"Container {result['name']} killed by {result['signal']}"
    else:
        text = f"Container {result['name']} exited with status {result['exit_code']}"
    if result.get("oom_killed"):
        text += " (out of memory)"
    if result.get("stop_timed_out"):
        text += f" (did not stop on {result['stop_signal']} in time)"
    return text


def _how(code: int) -> str:
    """How a child ended, from its Popen-style return code."""
    if code < 0:
        return f"was killed by {signal_name(-code)}"
    return f"exited with status {code}"


def signal_name(signum: int) -> str:
    # sdshim.signals (with signal, and enum) only when a name is needed: at the end.
    from sdshim import signals

    return signals.signal_name(signum)


def become_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): the container, and whatever it orphans, become our
    children once the runtime exits, not PID 1's. Through _ctypes, not ctypes, whose
    types and caches would cost every monitor ~0.5 MB for this one call."""
    import _ctypes

    prctl = _ctypes.dlsym(_ctypes.dlopen(None), "prctl")  # type: ignore[arg-type]  # None: libc
    _ctypes.call_function(prctl, (PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))


def _noop(_signum: int, _frame: object) -> None:
    """Python-level handler; the work happens on the wakeup fd."""


def parse_args(argv: list[str]) -> SimpleNamespace:
    opts = options.parse(argv)
    opts.log_max_line = opts.log_max_line or DEFAULT_MAX_LINE
    return opts


def _executable(runtime: str) -> bool:
    # The manager passes an absolute path: no need to import shutil for which().
    if runtime.startswith("/"):
        return posix.access(runtime, posix.X_OK) and not leanos.isdir(runtime)
    import shutil

    return shutil.which(runtime) is not None


_early_signals: set[int] = set()


def _early(signum: int, _frame: object) -> None:
    _early_signals.add(signum)


def main(argv: list[str] | None = None) -> int:
    # First thing: a stop request during start-up must be kept, not kill the monitor.
    for sig in FORWARDED:
        _signal.signal(sig, _early)
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if not _executable(opts.runtime):
        print(f"sdshim: runtime {opts.runtime} not found", file=sys.stderr)
        return EXIT_RUNTIME
    monitor: Monitor
    if opts.exec_id:  # the monitor of an `sdshim exec` process
        from sdshim.shim.execmonitor import ExecMonitor

        monitor = ExecMonitor(opts)
    else:
        monitor = Monitor(opts)
    try:
        return monitor.run()
    except Exception as e:
        # A bug or an unexpected system error: say so in the record, never lose it.
        import traceback

        traceback.print_exc()
        try:
            return monitor.fail(f"sdshim monitor failed: {e!r}")
        except Exception:
            return EXIT_RUNTIME
