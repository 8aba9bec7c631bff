"""The `sdshim` command. Errors become exit codes here, and only here.

`create` and `run -d` (sdshim.units.creation) and the quick commands `status`, `list`,
`kill` and `stop` (sdshim.units.blockingmanager) take the blocking path, which imports
neither asyncio nor dbus-fast; every other command runs on the asyncio Manager, imported
when needed. `create` and `run` are read by sdshim.units.cliargs where it can, the rest
by argparse, imported only then. Keep the imports here cheap: every command pays for
them, and `create` and `run -d` load none of re, argparse, pathlib, json or signal.
"""

from __future__ import annotations

import sys

from sdshim import __version__, signals
from sdshim.errors import (
    EXIT_RUNTIME,
    EXIT_TIMEOUT,
    ContainerStateError,
    Interrupted,
    SdshimError,
    UsageError,
)
from sdshim.units import cliargs
from sdshim.units.cliargs import (
    BUNDLE,
    BUNDLE_HELP,
    CREATE_OPTIONS,
    DETACH_KEYS,
    INTERACTIVE,
    RUN_OPTIONS,
    TTY,
    parse_signal,
    seconds_option,
)
from sdshim.units.detachkeys import parse_detach_keys

TYPE_CHECKING = False  # `typing` costs every command ~2 ms; only mypy needs it here
if TYPE_CHECKING:
    import argparse
    import contextlib
    from collections.abc import Callable, Coroutine, Sequence
    from pathlib import Path
    from typing import Any

    from sdshim.units.cliargs import Option, Parsed

    Args = argparse.Namespace | Parsed

def _add_options(p: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    groups: dict[str, Any] = {}
    for opt in options:
        if opt.group and opt.group not in groups:
            groups[opt.group] = p.add_argument_group(opt.group)
        opt.add_to(groups[opt.group] if opt.group else p)


# Every command and alias build_parser() knows (tests check the two agree).
COMMANDS = frozenset({"create", "run", "start", "status", "list", "ps", "logs", "kill",
                      "stop", "reload", "wait", "attach", "exec", "delete", "rm"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. With command (a name from COMMANDS), it holds that command's
    subparser only: all that `sdshim COMMAND ...` parses, and the others cost every run
    ~1 ms to build. `sdshim --help`, and any other first word, gets them all."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="sdshim", description="Run OCI containers as systemd services.")
    parser.add_argument("--version", action="version", version=f"sdshim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    only = command if command in COMMANDS else None

    def add(name: str, help: str,
            aliases: Sequence[str] = ()) -> argparse.ArgumentParser | None:
        if only is None or only == name or only in aliases:
            return sub.add_parser(name, aliases=list(aliases), help=help)
        return None

    if p := add("create", help="create a container (its unit runs; command waits)"):
        _add_options(p, CREATE_OPTIONS)
        p.add_argument(BUNDLE, help=BUNDLE_HELP)
    if p := add("run", help="create and start a container"):
        _add_options(p, RUN_OPTIONS)
        p.add_argument(BUNDLE, help=BUNDLE_HELP)
    if p := add("start", help="start a created container"):
        p.add_argument("name")
    if p := add("status", help="show a container's state"):
        p.add_argument("--json", action="store_true", help="print it as JSON")
        p.add_argument("name")
    if p := add("list", aliases=["ps"], help="list containers"):
        p.add_argument("--json", action="store_true", help="print a JSON list of statuses")
    if p := add("logs", help="print a container's output from the journal"):
        p.add_argument("-f", "--follow", action="store_true", help="follow until it exits")
        p.add_argument("--since", help="only lines since this time (journalctl syntax)")
        p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
        p.add_argument("--stream", choices=("stdout", "stderr"), help="only this stream")
        p.add_argument("-t", "--timestamps", action="store_true", help="prefix RFC 3339 times")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.add_argument("name")
    if p := add("kill", help="send a signal to a container"):
        p.add_argument("-s", "--signal", type=parse_signal, default=signals.SIGTERM,
                       help="signal name or number (default TERM)")
        p.add_argument("name")
    if p := add("stop", help="stop a container (stop signal, SIGKILL after --time)"):
        p.add_argument("-t", "--time", type=seconds_option("--time"), default=10.0,
                       metavar="SECONDS",
                       help="grace period before SIGKILL (default 10)")
        p.add_argument("name")
    if p := add("reload", help="reload a container: its reload signal (systemctl reload)"):
        p.add_argument("name")
    if p := add("wait", help="wait for a container to exit; print its exit code"):
        p.add_argument("name")
    if p := add("attach", help="connect to a running container's terminal or stdio"):
        DETACH_KEYS.add_to(p)
        p.add_argument("--no-stdin", action="store_true", help="only watch; send no input")
        p.add_argument("name")
    if p := add("exec", help="run a command in a running container"):
        _add_options(p, (INTERACTIVE, TTY, DETACH_KEYS))
        p.add_argument("--timeout", type=seconds_option("--timeout"), default=0.0,
                       metavar="SECONDS", help="kill the command after this long (exit "
                       f"code {EXIT_TIMEOUT}; default 0: never)")
        p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("-w", "--workdir", default="", metavar="DIR")
        p.add_argument("name")
        p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    if p := add("delete", aliases=["rm"], help="delete containers"):
        p.add_argument("-f", "--force", action="store_true", help="kill a running one first")
        p.add_argument("names", nargs="+", metavar="name")
    return parser


def _proxy_signals(kill: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """While attached, signals to the CLI go to the container or exec process (docker's
    --sig-proxy), through kill(signum)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        task = loop.create_task(kill(signum))
        # The container may be gone already; its exit ends the attached run anyway.
        task.add_done_callback(lambda t: t.exception())

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP,
                signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(sig, forward, int(sig))


def _create_kwargs(args: Args) -> dict[str, Any]:
    from sdshim.units.spec import parse_properties

    return {"name": args.name, "runtime": args.runtime,
            "properties": parse_properties(args.property),
            "stop_timeout": args.stop_timeout, "stop_signal": args.stop_signal,
            "restart": args.restart, "restart_delay": args.restart_delay,
            "tag": args.log_tag, "log_driver": args.log_driver,
            "log_max_line": _bytes_option("--log-max-line", args.log_max_line),
            "log_path": args.log_path,
            "log_size_max": _bytes_option("--log-size-max", args.log_size_max),
            "log_rate_limit": args.log_rate_limit,
            "interactive": args.interactive, "tty": args.tty,
            "sdnotify": args.sdnotify, "health": _health_options(args),
            "supervisor": args.supervisor,
            "features": _features(args)}


def _features(args: Args) -> Any:
    from sdshim.units.features import SOCKET_NEEDS_DETACH, Features

    if args.socket and args.command == "run" and not args.detach:
        raise UsageError(SOCKET_NEEDS_DETACH)
    return Features(sockets=args.socket, credentials=args.credential,
                    set_credentials=args.set_credential, reload_signal=args.reload_signal)


def _health_options(args: Args) -> Any:
    """spec.HealthOptions from --health-*; None without --health-cmd (then the others
    are refused: they would be ignored)."""
    from sdshim.units.spec import HealthOptions

    given = [opt for opt, value in (("--health-interval", args.health_interval),
                                    ("--health-timeout", args.health_timeout),
                                    ("--health-retries", args.health_retries),
                                    ("--health-start-period", args.health_start_period),
                                    ("--health-on-failure", args.health_on_failure))
             if value not in ("", None)]
    if args.health_cmd is None:
        if given:
            raise UsageError(f"{given[0]} needs --health-cmd CMD (the check to run)")
        return None
    return HealthOptions(args.health_cmd, args.health_interval, args.health_timeout,
                         args.health_retries, args.health_start_period,
                         args.health_on_failure)


def _bytes_option(option: str, value: str) -> int:
    from sdshim.units.spec import parse_bytes

    if not value:
        return 0
    try:
        n = parse_bytes(value)
        if n <= 0:
            raise ValueError("must be more than 0")
    except ValueError as e:
        raise UsageError(f"invalid {option} {value!r}: {e}") from None
    return n


def _exit_code(status: dict[str, Any]) -> int:
    code = status.get("exit_code")
    return int(code) if code is not None else EXIT_RUNTIME


def _follow() -> Parsed:
    """The logs options of an attached run or exec: all of the output, as it comes."""
    from sdshim.units.cliargs import Parsed

    return Parsed({"follow": True, "since": None, "tail": None, "stream": None,
                   "timestamps": False, "json": False})


async def _print_logs(m: Any, name: str, args: Args,
                      exec_dir: Path | None = None) -> None:
    """The container's output (with exec_dir, that exec's) from the journal."""
    from sdshim.units import logs

    status = await m.status(name)
    if not status.get("id"):
        raise ContainerStateError(f"container {name} has no output yet")
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"invalid --tail {args.tail}: give a number of lines, 0 or more")

    async def ended() -> bool:
        if exec_dir is not None:
            return (exec_dir / "exit.json").exists()
        return bool((await m.status(name))["state"] == "exited")

    if exec_dir is not None:
        match = logs.exec_matches(exec_dir.name.removeprefix("exec-"))
    else:
        match = logs.matches(status, args.stream)
    reader = logs.Reader(match, stream=args.stream, since=args.since,
                         execs=exec_dir is not None)
    import contextlib

    async with contextlib.aclosing(reader.lines(follow=args.follow, tail=args.tail,
                                                ended=ended)) as batches:
        async for batch in batches:
            for line in batch:
                _write_line(line, args)
            if args.follow:
                sys.stdout.flush()
                sys.stderr.flush()
    sys.stdout.flush()
    sys.stderr.flush()


def _write_line(line: Any, args: Args) -> None:
    """The container's bytes as it wrote them: stdout to stdout, stderr to stderr."""
    if args.json:
        import json

        sys.stdout.buffer.write(json.dumps(line.as_json()).encode() + b"\n")
        return
    out = (sys.stderr if line.stream == "stderr" else sys.stdout).buffer
    if args.timestamps:
        out.write(line.timestamp.encode() + b" ")
    out.write(line.data + b"\n" if line.newline else line.data)


async def run_command(args: Args) -> int:
    from sdshim import records  # pathlib: not for the lean commands
    from sdshim.units.manager import Manager

    async with await Manager.connect() as m:
        cmd = args.command
        if cmd == "run":  # attached: create and run -d take the blocking path (main)
            kwargs = _create_kwargs(args)
            if args.tty:
                return await _run_terminal(m, args, kwargs)
            name = await m.create(args.bundle, start=True, **kwargs)
            _proxy_signals(lambda signum: m.kill(name, signum))
            try:
                with _feeding(args, records.container_dir(name), f"container {name}"):
                    await _print_logs(m, name, _follow())
                return _exit_code(await m.wait(name))
            finally:
                if args.rm:
                    await m.delete(name, force=True)
        if cmd == "attach":
            return await _attach(m, args)
        if cmd == "exec":
            return await _exec(m, args)
        if cmd == "start":
            await m.start(args.name)
            return 0
        if cmd == "logs":
            await _print_logs(m, args.name, args)
            return 0
        if cmd == "reload":
            await m.reload(args.name)
            return 0
        if cmd == "wait":
            status = await m.wait(args.name)
            if status.get("exit_code") is None:
                raise ContainerStateError(f"container {args.name}: {status.get('error')}")
            print(status["exit_code"])
            return _exit_code(status)
        if cmd in ("delete", "rm"):
            failed = 0
            for name in args.names:
                try:
                    await m.delete(name, force=args.force)
                except SdshimError as e:
                    print(f"sdshim: {e}", file=sys.stderr)
                    failed = failed or e.exit_code
            return failed
    raise UsageError(f"unknown command {cmd}")


def _feeding(args: Args, directory: Path,
             what: str) -> contextlib.AbstractContextManager[None]:
    """Pipe mode, attached: stdin goes through the attach socket, output comes from the
    journal (which has all of it, however early it came)."""
    from sdshim.units import attach

    if not args.interactive:
        import contextlib

        return contextlib.nullcontext()
    return attach.feed_stdin(directory, what)


def _check_stdio(args: Args) -> None:
    parse_detach_keys(args.detach_keys)
    if args.tty and args.interactive and not sys.stdin.isatty():
        raise UsageError("the input is not a terminal: -t with -i needs one; "
                         "drop -t to pipe input")


async def _run_terminal(m: Any, args: Args, kwargs: dict[str, Any]) -> int:
    """run -t: create, attach, then start, so that not a byte of output is lost."""
    from sdshim import records  # pathlib: not for the lean commands
    from sdshim.units import attach

    _check_stdio(args)
    name = await m.create(args.bundle, start=False, **kwargs)
    what = f"container {name}"
    detached = False
    try:
        outcome = await attach.session(
            records.container_dir(name), what, tty=True, stdin=args.interactive,
            detach_keys=args.detach_keys, start=lambda: m.start(name))
        detached = outcome.how == "detached"
        return await _after_session(m, name, what, outcome)
    finally:
        if args.rm and not detached:
            await m.delete(name, force=True)


async def _attach(m: Any, args: Args) -> int:
    from sdshim import records  # pathlib: not for the lean commands
    from sdshim.units import attach

    parse_detach_keys(args.detach_keys)
    status = await m.status(args.name)
    if status["state"] not in ("created", "running"):
        raise ContainerStateError(f"container {args.name} is {status['state']}; there is "
                                  f"nothing to attach to (see `sdshim logs {args.name}`)")
    what = f"container {args.name}"
    outcome = await attach.session(
        records.container_dir(args.name), what, tty=status["tty"],
        stdin=status["stdin"] and not args.no_stdin, detach_keys=args.detach_keys)
    return await _after_session(m, args.name, what, outcome)


async def _after_session(m: Any, name: str, what: str, outcome: Any,
                         exec_dir: Path | None = None) -> int:
    """The exit code after an attach session; detaching or a dropped connection is said."""
    from sdshim import records

    if outcome.how == "exited":
        return _exit_code(outcome.result)
    if outcome.how == "detached":
        again = f"sdshim attach {name}" if exec_dir is None else "its output is in the journal"
        print(f"\r\nsdshim: detached from {what}, which keeps running ({again})",
              file=sys.stderr)
        return 0
    # The monitor closed the connection without an exit record: it dropped us (we took
    # no output for a while) or it died.
    record = records.read_json((exec_dir or records.container_dir(name)) / "exit.json")
    if record is None and exec_dir is None:
        status = await m.status(name)
        record = status if status["state"] == "exited" else None
    if record is not None:
        return _exit_code(record)
    raise ContainerStateError(f"{what}: the attach connection was dropped (this side took "
                              "no output for too long); the process keeps running")


async def _exec(m: Any, args: Args) -> int:
    from sdshim.units import attach, execs

    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise UsageError("exec needs a command: sdshim exec NAME -- CMD [ARGS...]")
    _check_stdio(args)
    options = {"interactive": args.interactive, "tty": args.tty, "timeout": args.timeout,
               "env": args.env, "cwd": args.workdir}
    ex = await execs.create(m, args.name, command, start=not args.tty, **options)
    keep = False
    try:
        if args.tty:
            outcome = await attach.session(
                ex.dir, ex.what, tty=True, stdin=args.interactive,
                detach_keys=args.detach_keys, start=lambda: execs.start(ex))
            keep = outcome.how != "exited"
            code = await _after_session(m, args.name, ex.what, outcome, ex.dir)
            record = outcome.result
        else:
            _proxy_signals(lambda signum: execs.kill(ex, signum))
            with _feeding(args, ex.dir, ex.what):
                await _print_logs(m, args.name, _follow(), ex.dir)
            record = await execs.wait(m, ex)
            code = _exit_code(record)
    finally:
        if not keep:
            execs.remove(ex)
    if record.get("timed_out"):
        print(f"sdshim: {ex.what} timed out after {record.get('timeout')}s and was killed",
              file=sys.stderr)
    return code


def _print_status(s: dict[str, Any]) -> None:
    rows = [("Name", s["name"]), ("ID", s["id"]), ("Unit", s["unit"]), ("State", s["state"]),
            ("PID", s["pid"]), ("Exit code", s["exit_code"]), ("Signal", s["signal"]),
            ("OOM killed", "yes" if s.get("oom_killed") else None),
            ("Restart", None if s.get("restart", "no") == "no" else
             f"{s['restart']} ({s.get('restarts', 0)} restarts so far)"),
            ("Socket", s.get("socket")),
            ("Watchdog", "timed out: the container stopped sending keep-alives"
             if s.get("watchdog") else None),
            ("Started", s["started_at"]), ("Finished", s["finished_at"]),
            ("Status", s.get("status_text")), ("Health", _health_text(s.get("health"))),
            ("Error", s["error"])]
    for key, value in rows:
        if value is not None:
            print(f"{key + ':':<11} {value}")


def _health_text(health: dict[str, Any] | None) -> str | None:
    if not health:
        return None
    text = str(health.get("status"))
    if health.get("failing_streak"):
        text += f" (failing streak {health['failing_streak']})"
    last = (health.get("log") or [{}])[-1]
    if last:
        how = "timed out" if last.get("timed_out") else f"exit code {last.get('exit_code')}"
        output = " ".join(str(last.get("output") or "").split())[-80:]
        text += f"; last check {last.get('end')}: {how}" + (f": {output}" if output else "")
    return text


def _print_table(statuses: list[dict[str, Any]]) -> None:
    print(f"{'NAME':<24} {'STATE':<8} {'PID':>7} {'EXIT':>4}  ID")
    for s in statuses:
        exit_code = "" if s["exit_code"] is None else s["exit_code"]
        pid = s["pid"] or ""
        print(f"{s['name']:<24} {s['state']:<8} {pid!s:>7} {exit_code!s:>4}  "
              f"{(s['id'] or '')[:12]}")


# Commands on the blocking client (no asyncio, no dbus-fast): a few calls each.
QUICK = frozenset({"status", "list", "ps", "kill", "stop"})


def quick_command(args: Args) -> int:
    import json  # leanjson has no indent

    from sdshim.units.blockingmanager import BlockingManager

    with BlockingManager.connect() as m:
        if args.command == "status":
            status = m.status(args.name)
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
        elif args.command in ("list", "ps"):
            statuses = m.list()
            if args.json:
                print(json.dumps(statuses, indent=2))
            else:
                _print_table(statuses)
        elif args.command == "kill":
            m.kill(args.name, args.signal)
        elif args.command == "stop":
            m.stop(args.name, args.time)
    return 0


def detached_create(args: Args) -> int:
    """create, run -d: start the unit, wait for its job, print the container's name."""
    from sdshim.units import creation

    print(creation.create(args.bundle, start=args.command == "run", **_create_kwargs(args)))
    return 0


def parse_args(argv: Sequence[str]) -> Args:
    """The command line, read: `create` and `run` by the lean parser where it can
    (sdshim.units.cliargs), everything else by argparse."""
    if argv and argv[0] in ("create", "run"):
        parsed = cliargs.parse_create(argv[0], argv[1:])
        if parsed is not None:
            return parsed
    return build_parser(argv[0] if argv else None).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The command's exit code. Whatever goes wrong ends here as one line on stderr:
    sdshim's own errors with their code, anything else with 125 (its traceback only
    with SDSHIM_DEBUG=1), so that it never passes for a container's exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
        if args.command == "create" or (args.command == "run" and args.detach):
            return detached_create(args)
        if args.command in QUICK:
            return quick_command(args)
        import asyncio

        return asyncio.run(run_command(args))
    except SdshimError as e:
        print(f"sdshim: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Interrupted as e:
        return 128 + e.signum
    except BrokenPipeError:
        return 0
    except Exception as e:  # the CLI's edge: a bug, said in one line
        return unexpected(e)


def unexpected(e: Exception) -> int:
    """An exception sdshim did not expect: one line (the traceback with SDSHIM_DEBUG=1)."""
    import os

    if os.environ.get("SDSHIM_DEBUG") == "1":
        import traceback

        traceback.print_exception(e)
    text = str(e).splitlines()[0] if str(e).strip() else ""
    what = f"{type(e).__name__}: {text}" if text else type(e).__name__
    print(f"sdshim: unexpected error ({what}); this is a bug in sdshim, please report it "
          "(SDSHIM_DEBUG=1 shows the traceback)", file=sys.stderr)
    return EXIT_RUNTIME


def entry() -> None:
    """The console script: main(), and on the lean path a quick exit.

    Python's finalization (modules, objects, the GC) costs `create`, `run -d`,
    `status` and the like several ms of their time for nothing: they keep no buffered
    file but stdout and stderr, and start no thread. What loaded asyncio (the Manager,
    attach sessions, threads of its child watcher) ends the ordinary way."""
    code = main()
    if "asyncio" in sys.modules:
        sys.exit(code)
    import os

    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (contextlib is not on the lean path)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: nothing left to say there
    os._exit(code)


if __name__ == "__main__":
    entry()
