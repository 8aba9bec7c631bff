"""The long-lived monitor of one podman container or exec session, conmon's job.

Started by the launcher (as a unit's main process, or in place), it takes podman's
fds over the hand-over socket, runs `runtime create` (or `exec --detach`), reports the
PID on the sync pipe, forwards output to the log sinks and attach clients, feeds
stdin, serves the ctl FIFO, and when the container ends: drains the output, writes the
OOM marker and the exit file, closes what podman's network set-up left with it, and
runs the exit command (podman container cleanup) before it exits itself.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import posix
import sys
import time

from sdshim import leanos, privapi, spawn
from sdshim.conmon import exitfile, handover, options, syncpipe
from sdshim.shim.poller import EVENT_READ, EVENT_WRITE, Poller

# What podman needs only once it has the PID (output, logs, attach, ctl) is imported
# while the runtime creates the container (Monitor.serve_io), off podman's wait.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable
    from typing import Any

    from sdshim.conmon.attach import AttachServer
    from sdshim.conmon.ctl import ControlFifo
    from sdshim.conmon.logsinks import Journald, K8sFile
else:
    import _signal

FORWARDED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGHUP,
             _signal.SIGUSR1, _signal.SIGUSR2)
MAX_LINE = 256 * 1024
READ_SIZE = 1 << 16
DRAIN_QUIET = 2.0  # after the exit: how long the pipes may stay silent before we stop
FD_BASE = 400  # received fds are moved up here, out of the way of 3..N+2
TIMED_OUT_MESSAGE = "command timed out"
EXIT_FAILURE = 1


class Stream:
    def __init__(self, fd: int, name: str, kind: int) -> None:
        from sdshim.shim.journal import LineSplitter  # loaded by serve_io

        self.fd = fd
        self.name = name  # stdout | stderr, for the logs
        self.kind = kind  # for attach clients
        self.splitter = LineSplitter(MAX_LINE)
        self.open = True


class Input:
    """The container's stdin (a pipe, or the terminal): written without ever blocking."""

    def __init__(self, poller: Poller, fd: int, closable: bool) -> None:
        self.poller = poller
        self.fd = fd
        self.closable = closable  # a pipe closes on EOF; a terminal stays
        self.queue = bytearray()
        self.closing = False
        posix.set_blocking(fd, False)

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            return
        was_empty = not self.queue
        self.queue += data
        self._flush()
        if was_empty and self.queue:
            self.poller.register(self.fd, EVENT_WRITE, self._on_ready)

    def _on_ready(self, _f: object) -> None:
        self._flush()
        if not self.queue and self.fd >= 0:
            self.poller.unregister(self.fd)
            if self.closing:
                self._close()

    def _flush(self) -> None:
        while self.queue and self.fd >= 0:
            try:
                n = posix.write(self.fd, self.queue[:65536])
            except BlockingIOError:
                return
            except OSError:  # the reader is gone
                self.queue.clear()
                return
            del self.queue[:n]

    def eof(self) -> None:
        if not self.closable or self.fd < 0:
            return
        if self.queue:
            self.closing = True
        else:
            self._close()

    def _close(self) -> None:
        posix.close(self.fd)
        self.fd = -1


class Monitor:
    def __init__(self, opts: options.Options, payload: dict[str, Any],
                 fds: dict[int, int]) -> None:
        self.opts = opts
        self.env: dict[str, str] = dict(e.split("=", 1) for e in payload["env"] if "=" in e)
        self.unit: str = payload.get("unit") or ""
        self.placement: dict[str, Any] = payload.get("placement") or {}
        self.fds = fds  # podman's fd number -> ours
        self.cid: str = opts.cid or ""
        self.bundle: str = opts.bundle or "."
        self.poller = Poller(self._on_error)
        self.sync_fd = self._named("_OCI_SYNCPIPE")
        self.start_fd = self._named("_OCI_STARTPIPE")
        self.attach_fd = self._named("_OCI_ATTACHPIPE")
        self.preserved = opts.preserved_fds()
        named = {self._env_fd(n) for n in ("_OCI_SYNCPIPE", "_OCI_STARTPIPE", "_OCI_ATTACHPIPE")}
        # What podman's network set-up passed (port reservations, slirp4netns' exit pipe):
        # held, never given to the container, closed before the exit file.
        self.held = [local for orig, local in fds.items()
                     if orig > 2 + self.preserved and orig not in named]
        self.streams: list[Stream] = []
        self.sinks: list[Journald | K8sFile] = []
        self.attach: AttachServer | None = None
        self.ctl: ControlFifo | None = None
        self.io_served = False
        self.stdin: Input | None = None
        self.master = -1
        self.console_path = ""
        self.notify_sock: Any = None
        self.pid = 0
        self.exited = False
        self.status = 0
        self.timed_out = False
        self.deadline = 0.0
        self.pending_signals: list[int] = []
        # After the container: the exit command (its own process group) and the signals
        # it is to get. systemd stops the unit with SIGTERM to us alone (KillMode=mixed),
        # and podman's cleanup may wait on a lock the podman stopping the unit holds.
        self.ending = False
        self.helper = 0
        self.helper_done = False
        self.late_signals: list[int] = []
        self.early: dict[int, int] = {}  # exits reaped before the container's pid was read
        self.cgroup_path = ""
        self.read_total = 0

    def _env_fd(self, name: str) -> int:
        value = self.env.get(name, "")
        return int(value) if value.isdigit() else -1

    def _named(self, name: str) -> int:
        return self.fds.get(self._env_fd(name), -1)

    # --- set-up -------------------------------------------------------------------

    def setup(self) -> None:
        try:
            posix.setsid()
        except OSError:
            pass  # a service's main process leads its session already
        privapi.set_child_subreaper()  # an OSError: podman hears why
        self.wake_r, wake_w = posix.pipe2(posix.O_NONBLOCK | posix.O_CLOEXEC)
        _signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in (_signal.SIGCHLD, *FORWARDED):
            _signal.signal(sig, _noop)
        self.poller.register(self.wake_r, EVENT_READ, self._on_signal)
        for signum in sorted(_early_signals):
            posix.write(wake_w, bytes([signum]))

    def _on_signal(self, _f: object) -> None:
        try:
            data = posix.read(self.wake_r, 4096)
        except BlockingIOError:
            data = b""
        for signum in data:
            if signum != _signal.SIGCHLD:
                self._forward(signum)
        self._reap()

    def _forward(self, signum: int) -> None:
        if self.ending or (self.pid and self.exited):
            # No container (any more): the signal is for the exit command, as it would
            # be in conmon's scope, where systemd signals every process.
            if self.helper and not self.helper_done:
                try:
                    posix.killpg(self.helper, signum)
                except OSError:
                    pass
            else:
                self.late_signals.append(signum)
            return
        if not self.pid:
            self.pending_signals.append(signum)
            return
        try:
            posix.kill(self.pid, signum)
        except OSError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid and not self.exited:
                self.exited = True
                self.status = status
            elif pid == self.helper:
                self.helper_done = True
            elif not self.pid:
                self.early[pid] = status  # perhaps the container, before its pid is known

    def loop_until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            wait = None if end is None else end - now
            if wait is not None and wait <= 0:
                return False
            if self.deadline and not self.exited:
                left = self.deadline - now
                if left <= 0:
                    self.timed_out = True
                    self.deadline = 0.0
                    try:
                        posix.kill(self.pid, _signal.SIGKILL)
                    except OSError:
                        pass
                    continue
                wait = left if wait is None else min(wait, left)
            if wait is not None:
                self.poller.arm("wait", wait, _nothing)  # once() returns by then
            self.poller.once()
            self.poller.cancel("wait")
        return True

    def _on_error(self, e: BaseException) -> None:
        """A part of the monitor failed in the loop: say so; the container goes on."""
        print(f"sdshim-conmon monitor: {e!r}", file=sys.stderr)

    # --- output -------------------------------------------------------------------

    def add_stream(self, fd: int, name: str, kind: int) -> None:
        posix.set_blocking(fd, False)
        self.streams.append(Stream(fd, name, kind))
        self.poller.register(fd, EVENT_READ, self._on_output)

    def _on_output(self, fileobj: object) -> None:
        stream = next(s for s in self.streams if s.fd == fileobj)
        try:
            data = posix.read(stream.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # a terminal whose other side is gone
                raise
            data = b""
        if not data:
            self._close_stream(stream)
            return
        self.read_total += len(data)
        if self.attach is not None:
            self.attach.output(stream.kind, data)
        self._emit(stream, stream.splitter.feed(data))

    def _emit(self, stream: Stream, lines: Any) -> None:
        lines = list(lines)
        if lines:
            for sink in self.sinks:
                sink.write(stream.name, lines)

    def _close_stream(self, stream: Stream) -> None:
        self._emit(stream, stream.splitter.flush())
        self.poller.unregister(stream.fd)
        posix.close(stream.fd)
        stream.open = False

    def drain(self) -> None:
        while True:
            before = self.read_total
            if self.loop_until(lambda: not any(s.open for s in self.streams), DRAIN_QUIET) \
                    or self.read_total == before:
                break
        for stream in self.streams:
            if stream.open:
                self._close_stream(stream)

    # --- stdio for the runtime ----------------------------------------------------

    def stdio(self) -> tuple[int, int, int, list[int]]:
        """stdin, stdout, stderr for the runtime, and our ends to close after it ran."""
        if self.opts.passthrough():
            return self.fds.get(0, -1), self.fds.get(1, -1), self.fds.get(2, -1), []
        out_r, out_w = posix.pipe2(posix.O_CLOEXEC)
        err_r, err_w = posix.pipe2(posix.O_CLOEXEC)
        self._out_r, self._err_r = out_r, err_r
        stdin = spawn.DEVNULL
        close = [out_w, err_w]
        if self.opts.stdin and not self.opts.terminal:
            in_r, in_w = posix.pipe2(posix.O_CLOEXEC)
            self.stdin = Input(self.poller, in_w, closable=True)
            stdin = in_r
            close.append(in_r)
        return stdin, out_w, err_w, close

    def console_socket(self) -> list[str]:
        if not self.opts.terminal:
            return []
        path = f"{handover.HANDOVER_DIR}/c-{posix.getpid()}.sock"
        try:
            posix.unlink(path)
        except FileNotFoundError:
            pass
        self._console = _socket.socket(_socket.AF_UNIX,
                                       _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self._console.bind(path)
        self._console.listen(1)
        self.console_path = path
        return ["--console-socket", path]

    def take_terminal(self) -> str:
        """The pty master the runtime sent; an error message or ''."""
        from sdshim.shim import console  # -t only; set-up, before freeze_imports

        self._console.settimeout(5.0)
        try:
            fd = privapi.accept(self._console)
            conn = _socket.socket(fileno=fd)
            try:
                conn.settimeout(5.0)
                fds = console.receive_fds(conn)
            finally:
                conn.close()
        except OSError as e:
            return f"the runtime did not pass the terminal: {e}"
        finally:
            self._console.close()
            self._unlink_console()
        if not fds:
            return "the runtime did not pass the terminal"
        for extra in fds[1:]:
            posix.close(extra)
        self.master = fds[0]
        try:
            console.set_size(self.master, 24, 80)
        except OSError:
            pass
        self.stdin = Input(self.poller, posix.dup(self.master), closable=False)
        from sdshim.conmon.attach import STDOUT  # loaded by serve_io

        self.add_stream(self.master, "stdout", STDOUT)
        return ""

    def _unlink_console(self) -> None:
        if self.console_path:
            try:
                posix.unlink(self.console_path)
            except FileNotFoundError:
                pass
            self.console_path = ""

    def resize(self, rows: int, cols: int) -> None:
        if self.master >= 0:
            from sdshim.shim.console import set_size  # loaded by take_terminal

            try:
                set_size(self.master, rows, cols)
            except OSError:
                pass

    def reopen_logs(self) -> None:
        for sink in self.sinks:
            sink.reopen()

    def on_input(self, data: bytes) -> None:
        if self.stdin is not None:
            self.stdin.write(data)

    def on_input_eof(self) -> None:
        if self.stdin is not None and not self.opts.leave_stdin_open:
            self.stdin.eof()

    def serve_io(self) -> str:
        """The log sinks, the attach socket and the ctl FIFO: before the PID is reported,
        as podman needs; while the runtime runs, but for an exec podman attaches to.
        '' or what failed."""
        if self.io_served:
            return ""
        self.io_served = True
        from sdshim.conmon import attach, ctl
        from sdshim.shim import journal  # noqa: F401  (the streams' and finish's)

        if self.opts.passthrough():
            return ""
        from sdshim.conmon import logsinks

        try:
            self.sinks = logsinks.open_sinks(self.opts.logs(), self.cid, self.opts.name or "",
                                             self.opts.log_tag or "", self.opts.log_size_max)
        except logsinks.SinkError as e:
            return str(e)
        if not self.opts.full_attach and self.opts.socket_dir_path:
            link = leanos.join(self.opts.socket_dir_path, self.opts.cuuid or self.cid)
            try:
                posix.unlink(link)
            except FileNotFoundError:
                pass
            try:
                posix.symlink(self.bundle, link)
            except OSError:
                pass
        self.attach = attach.AttachServer(self.poller, self.bundle, self.on_input,
                                          self.on_input_eof)
        self.ctl = ctl.ControlFifo(self.poller, self.bundle, self.resize, self.reopen_logs)
        return ""

    def serve_notify(self) -> None:
        """--sdnotify-socket: `<bundle>/notify/notify.sock` (podman mounts it in the
        container); READY=1 and WATCHDOG=1 go on to the host's socket, as conmon does."""
        host = self.opts.sdnotify_socket
        if not host:
            return
        directory = leanos.join(self.bundle, "notify")
        leanos.makedirs(directory, 0o755)
        path = leanos.join(directory, "notify.sock")
        try:
            posix.unlink(path)
        except FileNotFoundError:
            pass
        from sdshim.conmon.attach import bind_long

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        bind_long(sock, directory, "notify.sock")  # podman's bundle paths are long
        posix.chmod(path, 0o777)
        sock.setblocking(False)
        out = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        self.notify_sock = sock

        def on_ready(_f: object) -> None:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            keep = [line for line in data.split(b"\n") if line in (b"READY=1", b"WATCHDOG=1")]
            if keep:
                try:
                    out.sendto(b"\n".join(keep), host)
                except OSError:
                    pass

        self.poller.register(sock, EVENT_READ, on_ready)

    # --- the runtime ----------------------------------------------------------------

    def runtime_argv(self) -> list[str]:
        opts = self.opts
        assert opts.runtime
        pidfile = opts.container_pidfile or leanos.join(self.bundle, "pidfile")
        self.pidfile = pidfile
        global_args = list(opts.runtime_arg)
        if opts.exec:
            return [opts.runtime, *global_args, "exec", "--pid-file", pidfile, "--process",
                    opts.exec_process_spec or "", "--detach",
                    *(["--tty"] if opts.terminal else []), *opts.runtime_opt,
                    *self.console_socket(), self.cid]
        if opts.systemd_cgroup and not self.in_unit_cgroup:
            global_args.insert(0, "--systemd-cgroup")
        return [opts.runtime, *global_args, "create", "--bundle", self.bundle,
                "--pid-file", pidfile, *(["--no-pivot"] if opts.no_pivot else []),
                *(["--no-new-keyring"] if opts.no_new_keyring else []),
                *opts.runtime_opt, *self.console_socket(), self.cid]

    def place_container(self) -> None:
        """In our own unit: the container goes in its cgroup leaf, not libpod-ID.scope."""
        self.in_unit_cgroup = False
        if not self.unit or self.opts.exec or not self.opts.systemd_cgroup:
            return
        if self.placement.get("cgroups_path"):  # the launcher did it while we started
            for warning in self.placement.get("warnings", []):
                print(warning, file=sys.stderr)
            self.in_unit_cgroup = True
            return
        from sdshim.conmon import bundleconfig
        from sdshim.shim import cgroup

        path = cgroup.split(self.unit)
        if not path:
            return
        bundleconfig.set_cgroups_path(self.bundle, path)
        self.in_unit_cgroup = True

    def run_runtime(self) -> str:
        """runtime create / exec --detach; '' or the runtime's words for the failure.
        While it runs, serve_io."""
        argv = self.runtime_argv()
        stdin, out_w, err_w, close = self.stdio()
        preserved = [(self.fds[fd], fd) for fd in range(3, 3 + self.preserved)
                     if fd in self.fds]
        try:
            pid = _spawn(argv, self.env, stdin, out_w, err_w, preserved)
        except OSError as e:
            return f"{argv[0]}: {e.strerror}"
        finally:
            for fd in close:
                posix.close(fd)
        try:
            error = self.serve_io()
        except BaseException:
            self._abandon(pid, argv[0])
            raise
        if error:
            self._abandon(pid, argv[0])
            return error
        status = _wait(pid)
        self._reap()
        if posix.waitstatus_to_exitcode(status) != 0:
            self.runtime_status = posix.waitstatus_to_exitcode(status)
            text = b""
            for fd in (getattr(self, "_err_r", -1), getattr(self, "_out_r", -1)):
                if fd >= 0 and not text:
                    posix.set_blocking(fd, False)
                    try:
                        text = posix.read(fd, 8191)
                    except OSError:
                        pass
            message = text.decode(errors="replace")
            return message or f"runtime exited with status {self.runtime_status}"
        try:
            with open(self.pidfile) as f:
                self.pid = int(f.read().strip())
        except (OSError, ValueError) as e:
            return f"the runtime left no usable pid file {self.pidfile}: {e}"
        if self.pid in self.early:  # it ended already (a quick exec)
            self.exited = True
            self.status = self.early[self.pid]
        self.early.clear()
        self._reap()
        if self.opts.terminal:
            error = self.take_terminal()
            if error:
                return error
        if hasattr(self, "_out_r"):
            from sdshim.conmon.attach import STDERR, STDOUT  # loaded by serve_io

            self.add_stream(self._out_r, "stdout", STDOUT)
            self.add_stream(self._err_r, "stderr", STDOUT if self.opts.terminal else STDERR)
        self.cgroup_path = _memory_cgroup(self.pid)
        for signum in self.pending_signals:
            self._forward(signum)
        self.pending_signals.clear()
        return ""

    def _abandon(self, pid: int, runtime: str) -> None:
        """Nothing half-made: the container the runtime is creating goes too."""
        _wait(pid)
        if not self.opts.exec:
            _wait(_spawn([runtime, *self.opts.runtime_arg, "delete", "--force", self.cid],
                         self.env, spawn.DEVNULL, spawn.DEVNULL, spawn.DEVNULL, []))

    # --- the end ----------------------------------------------------------------------

    def exit_code(self) -> int:
        if self.timed_out:
            return -1
        if posix.WIFSIGNALED(self.status):
            return 128 + posix.WTERMSIG(self.status)
        return posix.WEXITSTATUS(self.status)

    def finish(self) -> int:
        self.drain()
        if any(driver == "journald" for driver, _ in self.opts.logs()):
            from sdshim.shim.journal import synchronize  # loaded by serve_io

            # Every line is in the journal before the exit file says the container ended.
            synced: list[bool] = []
            synchronize(self.poller, synced.append)
            self.loop_until(lambda: bool(synced), 6.0)
        for sink in self.sinks:
            try:
                sink.close()
            except OSError:
                pass
        for fd in self.held:
            try:
                posix.close(fd)
            except OSError:
                pass
        code = self.exit_code()
        from sdshim.shim import oom  # loaded in run(), before freeze_imports

        persist = self.opts.persist_dir
        if self.cgroup_path and oom.kills(self.cgroup_path):
            exitfile.write_oom([d for d in (self.bundle, persist) if d])
        if self.opts.exit_dir:
            exitfile.write_exit([self.opts.exit_dir], self.cid, code)
        if persist:
            exitfile.write_atomically(leanos.join(persist, "exit"), str(code).encode())
        if self.opts.exec:
            syncpipe.write(self.sync_fd, code,
                           TIMED_OUT_MESSAGE if self.timed_out else None)
        if self.attach is not None:
            self.attach.close()
        if self.ctl is not None:
            self.ctl.close()
        self.exit_command()
        return code & 0xFF

    def exit_command(self) -> None:
        if not self.opts.exit_command:
            return
        argv = [self.opts.exit_command, *self.opts.exit_command_arg]
        self.ending = True
        if self.opts.exit_delay > 0:  # a signal ends the delay: the unit is stopping
            self.loop_until(lambda: bool(self.late_signals), self.opts.exit_delay)
        try:
            self.helper = spawn.launch(argv, env=self.env, stdin=spawn.DEVNULL,
                                       stdout=spawn.DEVNULL, stderr=spawn.DEVNULL,
                                       group=True)
        except (spawn.CommandError, OSError) as e:
            print(f"sdshim-conmon: exit command {argv[0]}: {e}", file=sys.stderr)
            return
        for signum in self.late_signals:
            self._forward(signum)
        self.late_signals.clear()
        self.loop_until(lambda: self.helper_done)

    def fail(self, message: str) -> int:
        """The runtime failed: podman hears it on the sync pipe, in the runtime's words."""
        code = getattr(self, "runtime_status", 1)
        report = -code if self.opts.exec and code > 0 else -1
        syncpipe.write(self.sync_fd, report, message)
        if self.attach is not None:
            self.attach.close()
        if self.ctl is not None:
            self.ctl.close()
        self._unlink_console()
        if not self.opts.exec:
            self.exit_command()
        return EXIT_FAILURE

    def run(self) -> int:
        self.setup()
        self.place_container()
        self.serve_notify()
        if self.opts.exec and self.opts.exec_attach:
            error = self.serve_io()
            if error:
                return self.fail(error)
            syncpipe.write(self.attach_fd, 0)
            if self.start_fd >= 0:
                try:
                    posix.read(self.start_fd, 1)  # podman has connected to attach
                except OSError:
                    pass
        error = self.run_runtime()
        if error:
            return self.fail(error)
        syncpipe.write(self.sync_fd, self.pid)
        # A running monitor never executes code of another version (an upgrade replaces
        # the files under it): what the rest needs is loaded now, after podman has its
        # PID, and any other import is refused from here on.
        from sdshim.shim import oom  # noqa: F401  (finish's)
        from sdshim.shim.pinned import freeze_imports

        freeze_imports()
        if not self.opts.exec:
            # The exec's sync pipe carries its exit status too; the container's is done.
            try:
                posix.close(self.sync_fd)
            except OSError:
                pass
            self.sync_fd = -1
        if self.opts.timeout > 0:
            self.deadline = time.monotonic() + self.opts.timeout
        self.loop_until(lambda: self.exited)
        return self.finish()


def _spawn(argv: list[str], env: dict[str, str], stdin: int, stdout: int, stderr: int,
           preserved: list[tuple[int, int]]) -> int:
    actions: list[tuple[Any, ...]] = []
    for target, fd in enumerate((stdin, stdout, stderr)):
        if fd == spawn.DEVNULL or fd < 0:
            actions.append((posix.POSIX_SPAWN_OPEN, target, "/dev/null", posix.O_RDWR, 0))
        else:
            actions.append((posix.POSIX_SPAWN_DUP2, fd, target))
    for ours, theirs in preserved:  # --preserve-fds: at the numbers podman gave them
        actions.append((posix.POSIX_SPAWN_DUP2, ours, theirs))
    return posix.posix_spawn(argv[0], argv, env, file_actions=actions,
                             setsigdef=spawn._RESET_SIGNALS)


def _wait(pid: int) -> int:
    """The wait status of our child pid (0 if something reaped it already)."""
    try:
        return posix.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


def _memory_cgroup(pid: int) -> str:
    """The container's cgroup where its OOM kills are counted (memory v1, else v2)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    unified = ""
    for line in lines:
        _hid, ctls, path = line.split(":", 2)
        if "memory" in ctls.split(","):
            return path
        if ctls == "":
            unified = path
    return unified


def _noop(_signum: int, _frame: object) -> None:
    pass


def _nothing() -> None:
    pass


_early_signals: set[int] = set()


def _early(signum: int, _frame: object) -> None:
    _early_signals.add(signum)


def main(argv: list[str]) -> int:
    for sig in FORWARDED:
        _signal.signal(sig, _early)
    if len(argv) != 1:
        print("sdshim-conmon monitor: started without its hand-over socket; it is "
              "started by sdshim-conmon", file=sys.stderr)
        return EXIT_FAILURE
    try:
        sock, payload, received = handover.receive(argv[0])
    except (OSError, ValueError, handover.HandoverError) as e:
        print(f"sdshim-conmon monitor: hand-over failed: {e}", file=sys.stderr)
        return EXIT_FAILURE
    fds = {orig: fcntl.fcntl(local, fcntl.F_DUPFD_CLOEXEC, FD_BASE)
           for orig, local in received.items()}
    for local in received.values():
        posix.close(local)
    try:
        posix.chdir(payload.get("cwd") or "/")
    except OSError:
        pass
    try:
        posix.setgroups([int(g) for g in payload.get("groups", [])])
        posix.umask(int(payload.get("umask", 0o022)))
    except (OSError, ValueError) as e:
        print(f"sdshim-conmon monitor: cannot take podman's groups/umask: {e}",
              file=sys.stderr)
    opts = options.parse(payload["argv"])
    sock.send(handover.ACK)
    sock.close()
    monitor = Monitor(opts, payload, fds)
    try:
        return monitor.run()
    except Exception as e:  # a bug, or set-up failed (podman hears which on the sync pipe)
        print(f"sdshim-conmon monitor: {e!r}", file=sys.stderr)
        if leanos.getenv("SDSHIM_DEBUG") == "1":  # the interpreter's own printer: no import
            sys.__excepthook__(type(e), e, e.__traceback__)
        syncpipe.write(monitor.sync_fd, -1, f"sdshim-conmon monitor failed: {e!r}")
        return EXIT_FAILURE
