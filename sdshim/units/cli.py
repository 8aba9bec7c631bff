"""The `sdshim` command. Errors become exit codes here, and only here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdshim import __version__
from sdshim.errors import EXIT_RUNTIME, ContainerStateError, SdshimError, UsageError
from sdshim.signals import signal_number
from sdshim.units.spec import DEFAULT_RESTART_DELAY, RESTART_POLICIES


def parse_signal(value: str) -> int:
    try:
        return signal_number(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _create_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="container name (default: generated)")
    p.add_argument("--runtime", default="runc", help="OCI runtime: runc (default) or crun")
    p.add_argument("-p", "--property", action="append", default=[], metavar="KEY=VALUE",
                   help="unit resource setting, e.g. MemoryMax=512M, CPUQuota=50%%, TasksMax=64")
    p.add_argument("--stop-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="grace period before SIGKILL on stop (default 10)")
    p.add_argument("--stop-signal", type=parse_signal, default=None, metavar="SIGNAL",
                   help="signal that asks the container to stop (default: the bundle's "
                        "org.opencontainers.image.stopSignal annotation, else TERM)")
    p.add_argument("--restart", choices=RESTART_POLICIES, default="no",
                   help="restart the container when it exits: no (default), on-failure "
                        "(non-zero status or signal), always (until stopped)")
    p.add_argument("--restart-delay", type=float, default=DEFAULT_RESTART_DELAY,
                   metavar="SECONDS", help="pause before a restart (default %(default)s)")
    p.add_argument("--log-tag", default="", help="CONTAINER_TAG field of journal entries")
    p.add_argument("--log-driver", default="native", metavar="native|stream",
                   help="native (default): the monitor forwards each line with the "
                   "container fields; stream: output goes straight to journald")
    p.add_argument("--log-max-line", default="", metavar="BYTES",
                   help="split longer lines into partial journal entries (default 256K)")
    p.add_argument("--log-path", default="", metavar="FILE",
                   help="also write the output to FILE in the CRI log format")
    p.add_argument("--log-size-max", default="", metavar="BYTES",
                   help="rotate --log-path to FILE.1 before it grows past BYTES")
    p.add_argument("--log-rate-limit", default="", metavar="BURST/INTERVAL",
                   help="let journald drop lines beyond BURST per INTERVAL, e.g. "
                   "10000/30s (default: no limit)")
    p.add_argument("bundle", type=Path, help="OCI bundle directory (config.json, rootfs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdshim", description="Run OCI containers as systemd services.")
    parser.add_argument("--version", action="version", version=f"sdshim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("create", help="create a container (its unit runs; command waits)")
    _create_options(p)
    p = sub.add_parser("run", help="create and start a container")
    _create_options(p)
    p.add_argument("-d", "--detach", action="store_true",
                   help="print the name and return once the container runs")
    p.add_argument("--rm", action="store_true", help="delete the container when it exits")
    p = sub.add_parser("start", help="start a created container")
    p.add_argument("name")
    p = sub.add_parser("status", help="show a container's state")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.add_argument("name")
    p = sub.add_parser("list", aliases=["ps"], help="list containers")
    p.add_argument("--json", action="store_true", help="print a JSON list of statuses")
    p = sub.add_parser("logs", help="print a container's output from the journal")
    p.add_argument("-f", "--follow", action="store_true", help="follow until it exits")
    p.add_argument("--since", help="only lines since this time (journalctl syntax)")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument("--stream", choices=("stdout", "stderr"), help="only this stream")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix RFC 3339 times")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("name")
    p = sub.add_parser("kill", help="send a signal to a container")
    p.add_argument("-s", "--signal", type=parse_signal, default=int(signal.SIGTERM),
                   help="signal name or number (default TERM)")
    p.add_argument("name")
    p = sub.add_parser("stop", help="stop a container (stop signal, SIGKILL after --time)")
    p.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS",
                   help="grace period before SIGKILL (default 10)")
    p.add_argument("name")
    p = sub.add_parser("wait", help="wait for a container to exit; print its exit code")
    p.add_argument("name")
    p = sub.add_parser("delete", aliases=["rm"], help="delete containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running one first")
    p.add_argument("names", nargs="+", metavar="name")
    return parser


def _proxy_signals(m: Any, name: str) -> None:
    """While attached, signals to the CLI go to the container (docker's --sig-proxy)."""
    loop = asyncio.get_running_loop()

    def forward(signum: int) -> None:
        task = loop.create_task(m.kill(name, signum))
        # The container may be gone already; its exit ends the attached run anyway.
        task.add_done_callback(lambda t: t.exception())

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP,
                signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(sig, forward, int(sig))


def _create_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from sdshim.units.spec import parse_properties

    return {"name": args.name, "runtime": args.runtime,
            "properties": parse_properties(args.property),
            "stop_timeout": args.stop_timeout, "stop_signal": args.stop_signal,
            "restart": args.restart, "restart_delay": args.restart_delay,
            "tag": args.log_tag, "log_driver": args.log_driver,
            "log_max_line": _bytes_option("--log-max-line", args.log_max_line),
            "log_path": args.log_path,
            "log_size_max": _bytes_option("--log-size-max", args.log_size_max),
            "log_rate_limit": args.log_rate_limit}


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


async def _print_logs(m: Any, name: str, args: argparse.Namespace) -> None:
    from sdshim.units import logs

    status = await m.status(name)
    if not status.get("id"):
        raise ContainerStateError(f"container {name} has no output yet")
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"invalid --tail {args.tail}: give a number of lines, 0 or more")

    async def ended() -> bool:
        return bool((await m.status(name))["state"] == "exited")

    reader = logs.Reader(logs.matches(status, args.stream), stream=args.stream,
                         since=args.since)
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


def _write_line(line: Any, args: argparse.Namespace) -> None:
    """The container's bytes as it wrote them: stdout to stdout, stderr to stderr."""
    if args.json:
        sys.stdout.buffer.write(json.dumps(line.as_json()).encode() + b"\n")
        return
    out = (sys.stderr if line.stream == "stderr" else sys.stdout).buffer
    if args.timestamps:
        out.write(line.timestamp.encode() + b" ")
    out.write(line.data + b"\n" if line.newline else line.data)


async def run_command(args: argparse.Namespace) -> int:
    from sdshim.units.manager import Manager

    async with await Manager.connect() as m:
        cmd = args.command
        if cmd in ("create", "run"):
            kwargs = _create_kwargs(args)
            name = await m.create(args.bundle, start=cmd == "run", **kwargs)
            if cmd == "create" or args.detach:
                print(name)
                return 0
            _proxy_signals(m, name)
            try:
                await _print_logs(m, name, argparse.Namespace(
                    follow=True, since=None, tail=None, stream=None, timestamps=False,
                    json=False))
                return _exit_code(await m.wait(name))
            finally:
                if args.rm:
                    await m.delete(name, force=True)
        if cmd == "start":
            await m.start(args.name)
            return 0
        if cmd == "status":
            status = await m.status(args.name)
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
            return 0
        if cmd in ("list", "ps"):
            statuses = await m.list()
            if args.json:
                print(json.dumps(statuses, indent=2))
            else:
                _print_table(statuses)
            return 0
        if cmd == "logs":
            await _print_logs(m, args.name, args)
            return 0
        if cmd == "kill":
            await m.kill(args.name, args.signal)
            return 0
        if cmd == "stop":
            await m.stop(args.name, args.time)
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


def _print_status(s: dict[str, Any]) -> None:
    rows = [("Name", s["name"]), ("ID", s["id"]), ("Unit", s["unit"]), ("State", s["state"]),
            ("PID", s["pid"]), ("Exit code", s["exit_code"]), ("Signal", s["signal"]),
            ("OOM killed", "yes" if s.get("oom_killed") else None),
            ("Restart", None if s.get("restart", "no") == "no" else
             f"{s['restart']} ({s.get('restarts', 0)} restarts so far)"),
            ("Started", s["started_at"]), ("Finished", s["finished_at"]),
            ("Error", s["error"])]
    for key, value in rows:
        if value is not None:
            print(f"{key + ':':<11} {value}")


def _print_table(statuses: list[dict[str, Any]]) -> None:
    print(f"{'NAME':<24} {'STATE':<8} {'PID':>7} {'EXIT':>4}  ID")
    for s in statuses:
        exit_code = "" if s["exit_code"] is None else s["exit_code"]
        pid = s["pid"] or ""
        print(f"{s['name']:<24} {s['state']:<8} {pid!s:>7} {exit_code!s:>4}  "
              f"{(s['id'] or '')[:12]}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run_command(args))
    except SdshimError as e:
        print(f"sdshim: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
