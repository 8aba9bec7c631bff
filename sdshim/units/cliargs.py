"""The options of `create` and `run` as data, and their lean parser.

argparse's parser (sdshim.units.cli.build_parser) is built from these records, and it
has the last word: help, usage errors and every unusual spelling are its. `create` and
`run -d` pay for each import before they do anything, and argparse with what it loads
(re, gettext, shutil, locale) is most of a start-up, so parse() reads the plain
spellings (--opt VALUE, --opt=VALUE, a lone short flag, the bundle) itself and answers
None for anything else, which then goes to argparse. Both give the same values
(tests/test_cliargs.py).
"""

from __future__ import annotations

from sdshim.errors import SdshimError
from sdshim.signals import signal_number
from sdshim.units.detachkeys import DEFAULT_DETACH_KEYS
from sdshim.units.spec import (
    DEFAULT_RESTART_DELAY,
    RESTART_POLICIES,
    SDNOTIFY_MODES,
    SUPERVISORS,
    seconds,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

VALUE, FLAG, APPEND = "value", "flag", "append"
HEALTH_ACTIONS = ("none", "kill", "stop", "restart")  # as sdshim.shim.health.ON_FAILURE
FEATURES_GROUP = "socket activation, credentials, reload"


class Option:
    """One option as argparse's add_argument takes it: flags, kind (VALUE: store,
    FLAG: store_true, APPEND: append), default, convert (argparse's type=), choices,
    metavar, help, and the help group it is listed in."""

    __slots__ = ("choices", "convert", "default", "dest", "flags", "group", "help", "kind",
                 "metavar")

    def __init__(self, *flags: str, kind: str = VALUE, default: Any = None,
                 convert: Callable[[str], Any] | None = None,
                 choices: Sequence[str] | None = None, metavar: str | None = None,
                 help: str = "", group: str = "") -> None:
        self.flags = flags
        self.dest = next(f for f in flags if f.startswith("--"))[2:].replace("-", "_")
        self.kind = kind
        self.default: Any = [] if kind == APPEND else (False if kind == FLAG else default)
        self.convert = convert
        self.choices = choices
        self.metavar = metavar
        self.help = help
        self.group = group

    def add_to(self, parser: Any) -> None:
        """The option on an argparse parser (or argument group)."""
        kwargs: dict[str, Any] = {"help": self.help}
        if self.kind == FLAG:
            kwargs["action"] = "store_true"
        else:
            kwargs["default"] = self.default
            if self.kind == APPEND:
                kwargs["action"] = "append"
            for key in ("choices", "metavar"):
                if getattr(self, key) is not None:
                    kwargs[key] = getattr(self, key)
            if self.convert is not None:
                kwargs["type"] = self.convert
        parser.add_argument(*self.flags, **kwargs)


class Parsed:
    """What parse() read: the attributes argparse's Namespace would have."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...


def parse(command: str, options: Sequence[Option], positional: str,
          argv: Sequence[str]) -> Parsed | None:
    """argv (after the command) read with options and one positional argument, or None
    when argparse must read it: an option it does not know as spelled (abbreviations,
    -h), combined short flags, a value that starts with '-', a value argparse would
    refuse (choices, convert raising anything but sdshim's own errors, which end the
    command either way), '--', or not exactly one positional."""
    values: dict[str, Any] = {"command": command}
    by_flag: dict[str, Option] = {}
    for each in options:
        values[each.dest] = list(each.default) if each.kind == APPEND else each.default
        by_flag.update((flag, each) for flag in each.flags)
    found: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            found.append(arg)
            continue
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = by_flag.get(flag)
        if opt is None:
            return None
        if opt.kind == FLAG:
            if eq:
                return None
            values[opt.dest] = True
            continue
        if not eq:
            if i == len(argv) or argv[i].startswith("-"):
                return None
            value = argv[i]
            i += 1
        if opt.choices is not None and value not in opt.choices:
            return None
        if opt.convert is not None:
            try:
                converted = opt.convert(value)
            except SdshimError:
                raise
            except Exception:
                return None
        else:
            converted = value
        if opt.kind == APPEND:
            values[opt.dest].append(converted)
        else:
            values[opt.dest] = converted
    if len(found) != 1:
        return None
    values[positional] = found[0]
    return Parsed(values)


def parse_signal(value: str) -> int:
    """The type of a signal option: argparse's error for a bad one."""
    try:
        return signal_number(value)
    except ValueError as e:
        import argparse  # argparse reports it (parse() hands such values to it)

        raise argparse.ArgumentTypeError(str(e)) from None


def seconds_option(option: str) -> Callable[[str], float]:
    """The type of a duration option. Its UsageError is not one argparse catches: it
    leaves parse_args and becomes one line and exit 2 in sdshim.units.cli.main()."""
    return lambda value: seconds(option, value)


INTERACTIVE = Option("-i", "--interactive", kind=FLAG,
                     help="keep stdin open (attached: feed it from ours)")
TTY = Option("-t", "--tty", kind=FLAG, help="give the process a terminal")
DETACH_KEYS = Option("--detach-keys", default=DEFAULT_DETACH_KEYS, metavar="KEYS",
                     help="keys that detach from a terminal, leaving the process running "
                     f"(default {DEFAULT_DETACH_KEYS}; '' disables)")

# `create`'s options (and `run`'s, with RUN_OPTIONS), in the order of its help.
CREATE_OPTIONS = (
    Option("--name", help="container name (default: generated)"),
    Option("--runtime", default="runc", help="OCI runtime: runc (default) or crun"),
    Option("-p", "--property", kind=APPEND, metavar="KEY=VALUE",
           help="unit resource setting, e.g. MemoryMax=512M, CPUQuota=50%%, TasksMax=64"),
    Option("--stop-timeout", convert=seconds_option("--stop-timeout"), default=10.0,
           metavar="SECONDS", help="grace period before SIGKILL on stop (default 10)"),
    Option("--stop-signal", convert=parse_signal, metavar="SIGNAL",
           help="signal that asks the container to stop (default: the bundle's "
           "org.opencontainers.image.stopSignal annotation, else TERM)"),
    Option("--restart", choices=RESTART_POLICIES, default="no",
           help="restart the container when it exits: no (default), on-failure (non-zero "
           "status or signal), on-watchdog (killed by the watchdog), always (until stopped)"),
    Option("--restart-delay", convert=seconds_option("--restart-delay"),
           default=DEFAULT_RESTART_DELAY, metavar="SECONDS",
           help="pause before a restart (default %(default)s)"),
    Option("--log-tag", default="", help="CONTAINER_TAG field of journal entries"),
    Option("--supervisor", choices=SUPERVISORS, default="sdshim",
           help="sdshim (default): a monitor supervises the container; systemd: the "
           "container becomes the unit's main process, no monitor stays"),
    Option("--log-driver", default="", metavar="native|stream",
           help="native (default with --supervisor sdshim): the monitor forwards each line "
           "with the container fields; stream (default with --supervisor systemd): output "
           "goes straight to journald"),
    Option("--log-max-line", default="", metavar="BYTES",
           help="split longer lines into partial journal entries (default 256K)"),
    Option("--log-path", default="", metavar="FILE",
           help="also write the output to FILE in the CRI log format"),
    Option("--log-size-max", default="", metavar="BYTES",
           help="rotate --log-path to FILE.1 before it grows past BYTES"),
    Option("--log-rate-limit", default="", metavar="BURST/INTERVAL",
           help="let journald drop lines beyond BURST per INTERVAL, e.g. 10000/30s "
           "(default: no limit)"),
    Option("--sdnotify", choices=SDNOTIFY_MODES, default="monitor",
           help="who says the container is ready: monitor (default: once its command "
           "runs), container (it sends READY=1 to $NOTIFY_SOCKET), healthy (once the "
           "first health check passes)"),
    Option("--health-cmd", metavar="CMD",
           help="health check, run in the container: a shell command, or a JSON array "
           "(exec form)"),
    Option("--health-interval", default="", metavar="DURATION",
           help="time between health checks (default 30s; 1m30s, 500ms, seconds)"),
    Option("--health-timeout", default="", metavar="DURATION",
           help="kill a health check that runs longer (default 30s)"),
    Option("--health-retries", convert=int, metavar="N",
           help="failures in a row that make the container unhealthy (default 3)"),
    Option("--health-start-period", default="", metavar="DURATION",
           help="failures this early, before the first success, do not count"),
    Option("--health-on-failure", choices=HEALTH_ACTIONS, default="",
           help="when unhealthy: none (default), kill, stop, or restart (with --restart "
           "on-failure|always: systemd restarts it)"),
    Option("--socket", kind=APPEND, metavar="KEY=VALUE", group=FEATURES_GROUP,
           help="listen on a socket that starts the container on the first connection "
           "and is its fd 3 (with run -d): ListenStream=ADDR, ListenDatagram=ADDR, "
           "ListenSequentialPacket=ADDR, FileDescriptorName=NAME, Backlog=, SocketMode=, "
           "...; repeatable"),
    Option("--credential", kind=APPEND, metavar="NAME:PATH", group=FEATURES_GROUP,
           help="a systemd credential (LoadCredential=): the file, as "
           "$CREDENTIALS_DIRECTORY/NAME in the container; repeatable"),
    Option("--set-credential", kind=APPEND, metavar="NAME:VALUE", group=FEATURES_GROUP,
           help="a systemd credential with this value (SetCredential=); repeatable"),
    Option("--reload-signal", convert=parse_signal, default=0, metavar="SIGNAL",
           group=FEATURES_GROUP,
           help="what `systemctl reload` and `sdshim reload` send the container"),
    INTERACTIVE,
    TTY,
)
RUN_OPTIONS = (
    *CREATE_OPTIONS,
    Option("-d", "--detach", kind=FLAG,
           help="print the name and return once the container runs"),
    Option("--rm", kind=FLAG, help="delete the container when it exits"),
    DETACH_KEYS,
)
BUNDLE = "bundle"
BUNDLE_HELP = "OCI bundle directory (config.json, rootfs)"


def parse_create(command: str, argv: Sequence[str]) -> Parsed | None:
    """`create ...` or `run ...` (argv: what follows the command), or None: see parse()."""
    return parse(command, RUN_OPTIONS if command == "run" else CREATE_OPTIONS, BUNDLE, argv)
