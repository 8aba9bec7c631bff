"""The monitor's I/O shell: main process of sdshim-NAME.service (or of an exec's unit).

A lifecycle (sdshim.shim.container, or sdshim.shim.execprocess for `sdshim exec`;
sdshim.shim.entry picks) decides; this shell sets up, turns the world into the
lifecycle's events and carries out its actions: the runtime commands (continuations
on their pids, see sdshim.shim.reaper), signals, records, sd_notify, timers. One loop
(sdshim.shim.poller) serves the output pipes, signals (via the wakeup fd), the control
and attach sockets and the timers, and runs once: nothing waits inside a callback.

It is the unit's main process and a child subreaper, so it reaps the container,
whatever the container orphans, and the runtime's own processes. Only the
container's exit ends it: a part that fails (an attach client, the stdin queue, the
CRI log, journald, a control request) is disabled, the journal says what was lost,
and the container runs on.
"""

from __future__ import annotations

import _socket
import sys

from sdshim import leanos, rundir, signals, spawn
from sdshim.exits import EXIT_NO_RESTART, EXIT_RUNTIME
from sdshim.privapi import posix, set_child_subreaper, signal_module
from sdshim.shim import cgroup, journal, lifecycle, oom, options, runtime
from sdshim.shim.journal import JournalWriter, encode_field
from sdshim.shim.lifecycle import (
    Action,
    Arm,
    Cancel,
    CheckExec,
    Drain,
    Drained,
    Event,
    ExecChecked,
    Finish,
    Kill,
    Notify,
    Reaped,
    Reply,
    RunRuntime,
    RuntimeDone,
    Signal,
    TimerFired,
    WriteState,
)
from sdshim.shim.listener import Listener
from sdshim.shim.notify import Notifier, say
from sdshim.shim.output import Output
from sdshim.shim.pinned import PinnedModules, freeze_imports
from sdshim.shim.poller import EVENT_READ, Poller
from sdshim.shim.reaper import ChildReaper
from sdshim.shim.stdio import Stdio
from sdshim.shim.streams import Streams

# Start-up time and memory are paid once per container: the monitor imports only what
# it uses, through the lean modules (_signal, _socket, sdshim.leanjson, sdshim.rundir,
# Poller, spawn.launch, see sdshim.privapi), before READY=1; what only some monitors
# need later is pinned at start-up and loaded from the held file when needed (PINNED,
# sdshim.shim.pinned). A running monitor never loads code from disk: a package upgrade
# must not mix versions in it. tests/test_footprint.py holds the line.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed has no _signal: the same names, typed
    from collections.abc import Callable
    from types import SimpleNamespace
    from typing import Any, Protocol

    from sdshim.shim.amendments import Amendments
    from sdshim.shim.control import ControlServer
    from sdshim.shim.healthchecks import HealthChecks
    from sdshim.shim.inherited import Inherited
    from sdshim.shim.lifecycle import Request
    from sdshim.shim.notifyproxy import NotifyPart
    from sdshim.shim.reload import Reloads

    class Lifecycle(Protocol):
        name: str
        what: str
        state: str
        proc: lifecycle.Supervision

        def begin(self) -> list[Action]: ...

        def handle(self, event: Event) -> list[Action]: ...
else:
    _signal = signal_module()

SIGCHLD = _signal.SIGCHLD
SIGABRT = _signal.SIGABRT  # systemd's WatchdogSignal=
WATCHDOG_TIMER = "watchdog"
# Longest journal entry; longer lines become CONTAINER_PARTIAL_MESSAGE chunks. 256 KiB
# keeps JSON log lines whole far beyond conmon's 8 KiB and journald's 48 KiB stream
# LineMax, still fits one datagram under the default wmem_max (2 x 212992 bytes: no
# memfd per entry, even without SO_SNDBUFFORCE), and bounds the monitor's buffer.
DEFAULT_MAX_LINE = 256 * 1024
# How long the runtime may take to pass the terminal after its command returned.
TERMINAL_WAIT = 5.0
TERMINAL_TIMER = "terminal"
# Loaded after set-up, if at all, from the files held since start-up: the attach server
# (on the first attach client), the control server (on the first control connection)
# and the end (sdshim.shim.ending: once the lifecycle says Finish).
PINNED = ("sdshim.shim.attach", "sdshim.shim.control", "sdshim.shim.ending")
# What systemd may hand the container (sdshim.shim.inherited, loaded only if it did).
INHERITED = ("LISTEN_FDS", "CREDENTIALS_DIRECTORY", "WATCHDOG_USEC")


class NameTakenError(Exception):
    pass


class Shell:
    def __init__(self, opts: SimpleNamespace, life: Lifecycle) -> None:
        self.opts = opts
        self.life = life
        self.name: str = opts.name
        self.id: str = opts.id
        self.exec_id: str = opts.exec_id
        self.dir = (rundir.exec_dir(self.name, self.exec_id) if self.exec_id
                    else rundir.container_dir(self.name))
        self.notifier = Notifier()
        self.pinned = PinnedModules()
        self.rt = runtime.of_container(opts.runtime, self.dir)
        self.poller = Poller(self._fault_in_core)
        self.reaper = ChildReaper(lambda pid, status: self.feed(Reaped(pid, status)),
                                  self._fault_in_core)
        self.state: dict[str, Any] = {}
        self.cgroup_path = ""  # the container's cgroup, as given to the runtime
        self.oom_score_adj: int | None = None  # what the container gets (see oom.py)
        self.restarts = 0
        self.invocations: list[str] = []
        self.journal: JournalWriter | None = None
        self.fields = b""
        self.log_driver: str = opts.log_driver
        self.output = Output(None, b"", poller=self.poller, on_lost=self.lost)
        if opts.log_path:  # loaded now, not when the log file is opened
            from sdshim.shim import crilog  # noqa: F401
        self.stdio = Stdio(self.poller, self.dir, tty=opts.tty, stdin=opts.interactive,
                           on_terminal=self._on_terminal, on_lost=self.lost)
        self.streams = Streams(self.poller, self.output, self.stdio, opts.log_max_line)
        self.output.on_backlog = self._backlog
        self.control: ControlServer | None = None  # made on the first connection
        self.control_listener: Listener | None = None
        self.control_lost = False
        self.wake_r = -1
        self.events: list[Event] = []
        self.dispatching = False
        self.exit_code = EXIT_RUNTIME
        self.lost_parts: set[str] = set()
        self.terminal_pending: RuntimeDone | None = None
        # Sockets, credentials, watchdog: what systemd gave us for the container, if
        # anything (most containers get none of it, and skip the module).
        self.watchdog_usec = leanos.getenv("WATCHDOG_USEC")
        self.inherited: Inherited | None = None
        if any(leanos.getenv(name) for name in INHERITED):
            from sdshim.shim.inherited import Inherited

            self.inherited = Inherited.from_environment()
        # What features add to the container's config (environment, mounts), through
        # amend(), before create; None (and not imported) for containers without any.
        self.amendments: Amendments | None = None
        self.reloads: Reloads | None = None  # with --reload-signal
        if getattr(opts, "reload_signal", 0):
            from sdshim.shim.reload import Reloads

            self.reloads = Reloads(opts.reload_signal, getattr(
                opts, "sdnotify", "monitor") == "container", self._reply)
        self.notify_part: NotifyPart | None = None  # --sdnotify container
        self.health: HealthChecks | None = None  # --health-cmd
        self.health_restart = False  # unhealthy with --health-on-failure restart
        self.running_status = ""  # the lifecycle's status text while it runs
        # What ties sdshim's own journal entries (not the output) to this container.
        self.event_ids = ({"SDSHIM_EXEC_ID": self.exec_id, "SDSHIM_CONTAINER_NAME": self.name}
                          if self.exec_id else
                          {"SDSHIM_CONTAINER_ID_FULL": self.id,
                           "SDSHIM_CONTAINER_NAME": self.name})

    def path(self, name: str) -> str:
        """A file in the records directory."""
        return leanos.join(self.dir, name)

    def amend(self) -> Amendments:
        """The amendments to the container's config; for features, at set-up only."""
        if self.amendments is None:
            from sdshim.shim.amendments import Amendments

            self.amendments = Amendments()
        return self.amendments

    # --- set-up -----------------------------------------------------------------------

    def setup(self) -> None:
        # First: now the files are the ones the monitor's own modules came from.
        self.pinned.pin(PINNED)
        set_child_subreaper()
        self.oom_score_adj = oom.protect_monitor()
        self.wake_r, wake_w = posix.pipe2(posix.O_NONBLOCK | posix.O_CLOEXEC)
        _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (SIGCHLD, SIGABRT, *lifecycle.FORWARDED):
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
        for stale in ("exit.json", "state.json", "runtime.log", "pid", "control",
                      "health.json"):
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
        if self.exec_id:
            fields["SDSHIM_EXEC_ID"] = self.exec_id
        self.fields = b"".join(encode_field(k, v.encode()) for k, v in fields.items())
        try:
            self.journal = JournalWriter()
        except OSError as e:
            say(f"sdshim: journald not reachable ({e}); container output goes to the "
                "unit's stdout")
        self.output.journal = self.journal
        self.output.fields = self.fields

        self.control_listener = Listener(self.poller, self.path("control"),
                                         _socket.SOCK_STREAM, 16, self._on_control)
        self.stdio.listen()
        if not self.exec_id:
            self._setup_features()
            if self.notify_part is not None and self.reloads is not None:
                self.notify_part.hooks.append(self.reloads.notified)
            # Runtime state left by a predecessor in this unit that died (a restart):
            # the runtime would refuse the same id again, and another id would leak it.
            for cid in {self.id, str((previous or {}).get("id") or "")} - {""}:
                if leanos.exists(leanos.join(self.rt.root, cid)):
                    self._delete_now(cid)

    def _on_control(self, sock: _socket.socket) -> None:
        if self.control is None and not self.control_lost:
            try:
                from sdshim.shim.control import ControlServer

                self.control = ControlServer(self.poller, self._on_request, self.lost)
            except Exception as e:  # the pinned module could not be loaded
                self.control_lost = True
                self.lost(f"the control socket ({e!r})")
        if self.control is not None:
            self.control.accepted(sock)
        else:
            sock.close()

    def _on_request(self, request: Request) -> None:
        """A control request: reload is the shell's (a signal, then the container's
        word), the rest the lifecycle's."""
        if request.op != "reload":
            self.feed(request)
        elif self.reloads is None:
            self._reply(request.ident, {"ok": False, "error": (
                "this container has no reload signal; give it --reload-signal SIGNAL "
                "(sdshim@.service: in SDSHIM_OPTIONS)")})
        else:
            self.reloads.request(request.ident, lambda signum: self.perform(Kill(signum)),
                                 self.life.state == "running")

    def _reply(self, ident: int, reply: dict[str, Any]) -> None:
        if self.control is not None:
            self.control.reply(ident, reply)

    def keep_watchdog(self) -> None:
        """The unit's watchdog (WatchdogSec=) is the container's to keep with
        --sdnotify container, once it runs; until then, and in the other modes (where
        the container has no notify socket: a template drop-in may still set one), the
        monitor keeps it for itself, so it watches the monitor."""
        usec = self.watchdog_usec
        if not usec.isdigit() or self.life.state in ("exiting", "exited") or (
                getattr(self.life, "started", False)
                and getattr(self.opts, "sdnotify", "monitor") == "container"):
            return
        self.notifier.send(WATCHDOG=1)
        self.poller.arm(WATCHDOG_TIMER, int(usec) / 2e6, self.keep_watchdog)

    def _setup_features(self) -> None:
        """--sdnotify container, --health-cmd: their code is loaded here, at set-up,
        and only for the containers that ask for them."""
        if self.opts.sdnotify == "container":
            from sdshim.shim import notifyproxy

            self.notify_part = notifyproxy.attach(self)
        if self.opts.health_cmd:
            from sdshim.shim import healthchecks

            self.health = healthchecks.attach(self)

    def status_text(self) -> str:
        """The unit's status text while the container runs: its own STATUS= if it sent
        one, else the lifecycle's; and its health."""
        own = self.notify_part.container_status if self.notify_part is not None else ""
        text = own or self.running_status or f"{self.life.what} running"
        if self.health is not None and self.health.status:
            text += f" ({self.health.status})"
        return text

    def _delete_now(self, cid: str) -> None:
        """runc delete --force, waited for: only at set-up, before the loop runs."""
        try:
            pid = spawn.launch(self.rt.argv("delete", "--force", cid), stdin=spawn.DEVNULL,
                               stdout=spawn.DEVNULL, stderr=spawn.DEVNULL)
        except spawn.CommandError:
            return
        posix.waitpid(pid, 0)

    def write_state(self, changes: dict[str, Any]) -> None:
        self.state.update(changes)
        rundir.write_json(self.path("state.json"), self.state)

    # --- events in --------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand event to the lifecycle and carry out what it returns. Events that
        carrying out produces queue up behind it: the lifecycle sees one at a time."""
        self.events.append(event)
        if self.dispatching:
            return
        self.dispatching = True
        try:
            while self.events:
                current = self.events.pop(0)
                try:
                    actions = self.life.handle(current)
                except Exception as e:
                    self._fault_in_core(e)
                    continue
                for action in actions:
                    try:
                        self.perform(action)
                    except Exception as e:
                        self._fault_in_core(e)
        finally:
            self.dispatching = False

    def _on_signal(self, _fd: object) -> None:
        try:
            data = posix.read(self.wake_r, 4096)
        except BlockingIOError:
            data = b""
        for signum in data:
            if signum != SIGCHLD:
                self.feed(Signal(signum))
        self.reaper.reap()  # SIGCHLD may have coalesced with other signals

    # --- actions out ------------------------------------------------------------------

    def perform(self, action: Action) -> None:
        if isinstance(action, WriteState):
            changes = dict(action.changes)
            for key in action.stamp:
                changes[key] = rundir.now_iso()
            self.write_state(changes)
            if self.health is not None and changes.get("status") in ("running", "exiting"):
                if changes["status"] == "running":
                    self.health.begin()
                else:
                    self.health.end()
        elif isinstance(action, Notify):
            fields = action.fields
            if "STATUS" in fields and self.life.state == "running":
                self.running_status = str(fields["STATUS"])
                if self.notify_part is not None or self.health is not None:
                    fields = {**fields, "STATUS": self.status_text()}
            self.notifier.send(**fields)
        elif isinstance(action, Kill):
            pid = self.life.proc.pid
            if pid:
                try:
                    posix.kill(pid, action.signum)
                except ProcessLookupError:
                    pass
        elif isinstance(action, Arm):
            name = action.name
            self.poller.arm(name, action.seconds, lambda: self.feed(TimerFired(name)),
                            earlier=action.earlier)
        elif isinstance(action, Cancel):
            self.poller.cancel(action.name)
        elif isinstance(action, RunRuntime):
            self._run_runtime(action.verb)
        elif isinstance(action, CheckExec):
            self.reaper.reap()  # an exit that already happened comes first
            self.feed(ExecChecked(self._exec_confirmed()))
        elif isinstance(action, Drain):
            self.streams.drain(action.seconds, self._drained)
        elif isinstance(action, Reply):
            if self.control is not None:
                self.control.reply(action.ident, action.reply)
        elif isinstance(action, Finish):
            self._finish(action)
        else:
            raise TypeError(f"not an action: {action!r}")

    # --- runtime commands -------------------------------------------------------------

    def _run_runtime(self, verb: str) -> None:
        """Start the runtime's verb; RuntimeDone once it ended (see _runtime_ended)."""
        try:
            self._start_runtime(verb)
        except Exception as e:  # a bug: the lifecycle must hear of it, not wait for ever
            self._fault_in_core(e)
            self.feed(RuntimeDone(verb, f"sdshim monitor failed: {e!r}"))

    def _start_runtime(self, verb: str) -> None:
        if verb == "start":
            self._launch(verb, self.rt.argv("start", self.id), stdin=spawn.DEVNULL)
            return
        try:
            if verb == "exec":
                options = self._exec_options()
            else:  # run: created and started by one command, which must not wait
                options = [*(["--detach"] if verb == "run" else []),
                           *(self.inherited.runtime_options() if self.inherited else ()),
                           "--bundle", self._prepare_bundle()]
            out_w, err_w = self.open_output()
        except (OSError, ValueError) as e:
            self.feed(RuntimeDone(verb, str(e)))
            return
        if verb != "exec":
            self._write_created_record()
        argv = self.rt.argv(verb, *options, *self.stdio.runtime_args(),
                            "--pid-file", self.path("pid"), self.id,
                            *(self.opts.command if verb == "exec" else ()))
        env = leanos.environ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                             "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM")
        try:
            stdin = self.stdio.runtime_stdin()
            self._launch(verb, argv, env=env, stdin=stdin, stdout=out_w, stderr=err_w,
                         preexec=self._join_container() if verb == "exec" else None)
            if verb != "exec" and self.inherited is not None:
                self.inherited.after_create()  # the runtime has the sockets now
        finally:
            posix.close(out_w)
            posix.close(err_w)
            self.stdio.after_spawn()

    def _launch(self, verb: str, argv: list[str], **kw: Any) -> None:
        try:
            pid = spawn.launch(argv, **kw)
        except spawn.CommandError as e:
            self.feed(RuntimeDone(verb, str(e)))
            return
        self.reaper.expect(pid, lambda status: self._runtime_ended(verb, status))

    def _runtime_ended(self, verb: str, status: int) -> None:
        code = lifecycle.exit_code_of(status)
        if code != 0:
            how = (f"was killed by {signals.name(-code)}" if code < 0
                   else f"exited with status {code}")
            self.feed(RuntimeDone(verb, self.rt.last_error() or f"{self.rt.name} {verb} {how}"))
            return
        if verb == "start":
            self.feed(RuntimeDone(verb))
            return
        try:
            with open(self.path("pid")) as f:
                pid = int(f.read())
        except (OSError, ValueError) as e:
            self.feed(RuntimeDone(verb, f"{self.rt.name} {verb} left no usable pid file: {e}"))
            return
        if verb != "exec" and self.opts.unit:
            try:
                cgroup.adopt(self.opts.unit, pid)
            except OSError as e:  # outside its unit's cgroup, no limit would hold it
                self.feed(RuntimeDone(verb, str(e)))
                return
        done = RuntimeDone(verb, "", pid)
        if self.stdio.terminal_ready():
            self.feed(done)
            return
        # The runtime sent the pty master before it exited; it may still be in the queue.
        self.terminal_pending = done
        self.poller.arm(TERMINAL_TIMER, TERMINAL_WAIT, lambda: self._terminal_missing(verb))

    def _terminal_missing(self, verb: str) -> None:
        self.terminal_pending = None
        self.feed(RuntimeDone(verb, f"{self.rt.name} {verb} did not pass the terminal to "
                                    "the console socket"))

    def _on_terminal(self, master: int) -> None:
        self.streams.add_terminal(master)
        done, self.terminal_pending = self.terminal_pending, None
        if done is not None:
            self.poller.cancel(TERMINAL_TIMER)
            self.feed(done)

    def _prepare_bundle(self) -> str:
        """The effective config in the records directory; its directory, for --bundle."""
        bundle = self.opts.bundle
        self.cgroup_path = cgroup.split(self.opts.unit) if self.opts.unit else ""
        config = self.path("bundle")
        if self.inherited is not None:
            from sdshim.shim.inherited import SetupError

            try:
                self.inherited.amend(self.amend, bundle, unit=self.opts.unit
                                     or f"sdshim-{self.name}.service", records_dir=self.dir,
                                     sdnotify=getattr(self.opts, "sdnotify", "monitor"))
            except SetupError as e:
                raise ValueError(str(e)) from e
        try:
            runtime.write_config(bundle, config, self.cgroup_path, self.oom_score_adj,
                                 terminal=self.opts.tty, amendments=self.amendments)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {leanos.join(bundle, 'config.json')}: {e}") from e
        return config

    def _write_created_record(self) -> None:
        self.write_state({
            "name": self.name, "id": self.id, "unit": self.opts.unit,
            "bundle": self.opts.bundle, "runtime": self.rt.path, "status": "creating",
            "restart": self.opts.restart, "restarts": self.restarts, "pid": None,
            "monitor_pid": posix.getpid(), "created_at": rundir.now_iso(),
            "started_at": None, "log_driver": self.log_driver,
            "invocation_ids": self.invocations, "tty": self.opts.tty,
            "stdin": self.opts.interactive, "sdnotify": self.opts.sdnotify})

    def write_exec_record(self) -> None:
        self.write_state({
            "name": self.name, "id": self.id, "exec_id": self.exec_id,
            "unit": self.opts.unit, "runtime": self.rt.path, "status": "created",
            "command": self.opts.command, "pid": None, "monitor_pid": posix.getpid(),
            "created_at": rundir.now_iso(), "started_at": None, "tty": self.opts.tty,
            "stdin": self.opts.interactive})

    def _exec_options(self) -> list[str]:
        options = ["--detach"] + (["--tty"] if self.opts.tty else [])
        for env in self.opts.env:
            options += ["--env", env]
        if self.opts.cwd:
            options += ["--cwd", self.opts.cwd]
        return options

    def _join_container(self) -> Callable[[], None] | None:
        """For a runtime that leaves the exec'd process in its own cgroup (crun here):
        start the runtime in the container's cgroups, so the process is born there."""
        if self.rt.places_processes:
            return None
        state = rundir.read_json(leanos.join(rundir.container_dir(self.name),
                                              "state.json")) or {}
        init = int(state.get("pid") or 0)
        return (lambda: cgroup.join(0, init)) if init else None

    def open_output(self) -> tuple[int, int]:
        """The write ends for the container's stdout and stderr.

        native: pipes the monitor reads and forwards. stream: journald stream
        connections, so output never passes through the monitor (and outlives it).
        """
        if self.log_driver == "stream":
            try:
                return journal.open_streams(self.name, self.opts.unit)
            except OSError as e:
                say(f"sdshim: journald stream socket not reachable ({e}); forwarding "
                    "output over the native protocol instead")
                self.log_driver = "native"
        if self.opts.log_path and self.output.cri is None:
            self.output.open_cri(self.opts.log_path, self.opts.log_size_max)
        try:
            return self.streams.pipes()
        except OSError as e:
            raise OSError(e.errno, f"cannot set up the output: {e.strerror}") from e

    def _exec_confirmed(self) -> bool:
        try:
            exe = posix.readlink(f"/proc/{self.life.proc.pid}/exe")
        except OSError:
            return False
        return not runtime.is_runtime_exe(exe, self.rt.path)

    def _drained(self) -> None:
        """The output is read: the last stderr line to the lifecycle. With the stream
        driver the monitor never saw it: journald has it, once synchronized."""
        if self.log_driver == "stream" and not self.opts.tty:
            try:
                from sdshim.shim import ending
            except Exception as e:  # pinned: see _finish
                self._fault_in_core(e)
                self.feed(Drained(b""))
                return
            ending.query_stream_line(self, lambda line: self.feed(Drained(line)))
        else:
            self.feed(Drained(self.streams.last_stderr_line()))

    # --- the end ----------------------------------------------------------------------

    def _finish(self, action: Finish) -> None:
        """The end, in sdshim.shim.ending (pinned: loaded now, from the file held since
        start-up). Should it not load, the record is written here, undrained."""
        try:
            from sdshim.shim import ending
        except Exception as e:
            self._fault_in_core(e)
            self._finish_plainly(action)
            return
        ending.finish(self, action)

    def _finish_plainly(self, action: Finish) -> None:
        result = {**action.result, "finished_at": rundir.now_iso(), "name": self.name,
                  "id": self.id, "pid": self.life.proc.pid or None,
                  "restarts": self.restarts, "monitor_exit_code": action.code}
        try:
            rundir.write_json(self.path("exit.json"), result)
            self.write_state({"status": "exited"})
        finally:
            self.exit_code = action.code
            self.poller.stop()

    def before_exit(self) -> None:
        """The last step's first (sdshim.shim.ending): pending reloads are answered,
        the watchdog is no longer kept."""
        if self.reloads is not None:
            self.reloads.finish()
        self.poller.cancel(WATCHDOG_TIMER)

    def close_control(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.control_listener is not None:
            self.control_listener.close()

    # --- faults -----------------------------------------------------------------------

    def event(self, message: str, **extra: str) -> None:
        """An entry about the container's life (not its output) in the unit's journal."""
        if self.journal is None or not self.output.journal_ok:
            say(f"sdshim: {message}")
            return
        fields = {"MESSAGE": message, "PRIORITY": "6", "SYSLOG_IDENTIFIER": "sdshim",
                  **self.event_ids, **extra}
        try:
            self.journal.send(b"".join(encode_field(k, v.encode()) for k, v in fields.items()))
        except OSError:
            say(f"sdshim: {message}")

    def lost(self, what: str) -> None:
        """A part failed and is disabled: say so once (the container runs on)."""
        part = what.partition(" (")[0]
        if part in self.lost_parts:
            return
        self.lost_parts.add(part)
        self.event(f"sdshim: {what}; {self.life.what} keeps running",
                   SDSHIM_EVENT="degraded")

    def _fault_in_core(self, e: BaseException) -> None:
        """An unexpected error where no part can be disabled: a bug. Never the
        container's end: say so, with the traceback on stderr, and go on."""
        try:
            sys.__excepthook__(type(e), e, e.__traceback__)
        except Exception:
            pass
        self.lost(f"internal error ({e!r})")

    def _backlog(self, full: bool) -> None:
        """journald cannot take more for now (full) or can again: stop reading the
        container's output meanwhile, so nothing is lost (the container waits)."""
        if full:
            self.streams.pause()
        else:
            self.streams.resume()

    # --- the whole --------------------------------------------------------------------

    def run(self) -> int:
        code = EXIT_RUNTIME if self.opts.restart == "no" else EXIT_NO_RESTART
        try:
            self.setup()
            if self.exec_id:
                self.write_exec_record()
        except NameTakenError as e:  # the records are another container's: not a word
            say(f"sdshim: {e}")
            self.notifier.send(STATUS=f"Error: {e}")
            return code
        except Exception as e:  # OSError, or a bug: no container exists yet
            message = f"cannot set up the monitor: {e}"
            say(f"sdshim: {message}")
            self.notifier.send(STATUS=f"Error: {message}")
            try:
                rundir.write_json(self.path("exit.json"), {
                    "error": message, "exit_code": EXIT_RUNTIME, "signal": None,
                    "name": self.name, "id": self.id, "pid": None,
                    "finished_at": rundir.now_iso(), "monitor_exit_code": code})
            except OSError:
                pass
            return code
        for action in self.life.begin():
            self.perform(action)
        if not self.exec_id:
            self.keep_watchdog()
        freeze_imports(self.pinned)
        self.poller.run()
        return self.exit_code


def _noop(_signum: int, _frame: object) -> None:
    """Python-level handler; the work happens on the wakeup fd."""


def parse_args(argv: list[str]) -> SimpleNamespace:
    opts = options.parse(argv)
    opts.log_max_line = opts.log_max_line or DEFAULT_MAX_LINE
    for option in ("stop_timeout", "timeout"):
        value = getattr(opts, option)
        if not 0.0 <= value < float("inf"):  # NaN too: a NaN timeout would kill at once
            options.fail(f"--{option.replace('_', '-')} must be a number of seconds, "
                         f"0 or more, not {value}")
    if opts.health_cmd:
        from sdshim.shim import health

        try:
            health.HealthConfig(health.probe_command(opts.health_cmd), opts.health_interval,
                                opts.health_timeout, opts.health_retries,
                                opts.health_start_period, opts.health_on_failure)
        except ValueError as e:
            options.fail(f"invalid health check: {e}")
    if not opts.id:  # a template unit (sdshim@.service) has no manager to pick one
        from sdshim.naming import generate_id

        opts.id = generate_id()
    return opts


def _executable(runtime_path: str) -> bool:
    # The manager passes an absolute path: no need to import shutil for which().
    if runtime_path.startswith("/"):
        return posix.access(runtime_path, posix.X_OK) and not leanos.isdir(runtime_path)
    import shutil

    return shutil.which(runtime_path) is not None


_early_signals: set[int] = set()


def _early(signum: int, _frame: object) -> None:
    _early_signals.add(signum)


def catch_early_signals() -> None:
    """First thing: a stop request during start-up must be kept, not kill the monitor."""
    for sig in lifecycle.FORWARDED:
        _signal.signal(sig, _early)


def main(opts: SimpleNamespace, life: Lifecycle) -> int:
    if not _executable(opts.runtime):
        say(f"sdshim: runtime {opts.runtime} not found")
        return EXIT_RUNTIME
    return Shell(opts, life).run()
