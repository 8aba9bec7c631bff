"""The monitor's command line, without argparse.

spec.py writes this command line and people rarely do, so a table and a loop do:
argparse (with gettext, locale and shutil, which its formatter pulls in) would cost
every container ~2.7 ms of start-up and ~0.6 MB of private memory.

The command line outlives the sdshim that wrote it: a unit keeps its ExecStart, and
after a package upgrade (or downgrade) Restart= runs another version's monitor with
it. So it is a contract between versions (docs/design.md, "The monitor's command
line"), held by tests/test_monitor_options.py:
- An option is never removed or renamed and never changes meaning; one that is no
  longer needed stays in OPTIONS, parsed and ignored.
- Only --name, --bundle and --runtime are required, forever; every later option's
  default is what monitors did before it existed.
- An option this monitor does not know (a newer sdshim wrote it, or a typo in a
  template unit's SDSHIM_OPTIONS) is ignored and named once on stderr, which is the
  unit's journal. For an unknown --opt VALUE it takes the next token as the value
  unless that starts with "--"; so an option added after 0.1.0 whose value is free
  text (a str converter: a value may start with "--") is written --opt=VALUE, one
  token, which an older monitor skips exactly.
- What still cannot be used (a required option missing, a bad value) exits with
  EXIT_NO_RESTART, which every unit lists in RestartPreventExitStatus=: the same
  command line would fail the same way, and with StartLimitIntervalSec=0 systemd
  would otherwise restart it every second forever.
"""

from __future__ import annotations

import sys

from sdshim import __version__, leanos
from sdshim.exits import EXIT_NO_RESTART
from sdshim.shim.notify import Notifier

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    import signal as _signal  # typeshed has no _signal: the same names, typed
    from collections.abc import Callable
    from types import SimpleNamespace
    from typing import NoReturn
else:
    import _signal  # signal's C half: signal makes enums of it all (~0.9 MB)

    # types.SimpleNamespace (sys.implementation is one, as documented), without
    # importing types (~50 KB).
    SimpleNamespace = type(sys.implementation)

PROG = "sdshim-monitor"
# Not argparse's 2: a unit with a restart policy must not be restarted into the same
# error (see above).
USAGE_EXIT = EXIT_NO_RESTART


def _flag(_value: str) -> bool:
    return True


def _signal_value(value: str) -> int:
    """A signal by number or name (HUP, SIGHUP)."""
    from sdshim.signals import signal_number

    return signal_number(value)


def _restart_policy(value: str) -> str:
    if value not in ("no", "on-failure", "on-watchdog", "always"):
        raise ValueError(value)
    return value


def _supervisor(value: str) -> str:
    if value not in ("sdshim", "systemd"):
        raise ValueError(value)
    return value


def _log_driver(value: str) -> str:
    if value not in ("native", "stream"):
        raise ValueError(value)
    return value


def _sdnotify(value: str) -> str:
    if value not in ("monitor", "container", "healthy"):
        raise ValueError(value)
    return value


def _duration(value: str) -> float:
    # Imported here: only a monitor with health checks parses durations.
    from sdshim.shim.health import parse_duration

    return parse_duration(value)


def _on_failure(value: str) -> str:
    if value not in ("none", "kill", "stop", "restart"):
        raise ValueError(value)
    return value


# option -> (converter, default). Converter _flag: takes no value. Default None: required.
# A list default: the option may repeat. After `--`: the command (an exec's).
OPTIONS: dict[str, tuple[Callable[[str], object], object]] = {
    "--name": (str, None),
    "--id": (str, ""),  # "": generated (a template unit has no manager to pick one)
    "--bundle": (str, None),
    "--runtime": (str, None),
    "--unit": (str, ""),  # default: $SDSHIM_UNIT
    "--start": (_flag, False),  # start right after create
    "--stop-timeout": (float, 10.0),
    "--stop-signal": (int, _signal.SIGTERM),
    "--tag": (str, ""),
    "--restart": (_restart_policy, "no"),  # the unit's Restart=: decides final exits
    "--log-max-line": (int, 0),  # 0: the monitor's default
    "--log-driver": (_log_driver, "native"),
    "--log-path": (str, ""),  # also write a CRI log file here
    "--log-size-max": (int, 0),  # rotate it at this size; 0: never
    "--interactive": (_flag, False),  # keep the container's stdin open (-i)
    "--tty": (_flag, False),  # give it a terminal (-t)
    # sdshim: this monitor supervises the container. systemd: hand the unit's main
    # process over to the container's init and exit (sdshim.shim.handoff).
    "--supervisor": (_supervisor, "sdshim"),
    "--reload-signal": (_signal_value, 0),  # what a reload sends the container; 0: none
    "--sdnotify": (_sdnotify, "monitor"),  # who sends READY=1: monitor, container, healthy
    # Health checks (sdshim.shim.health); durations in seconds or as podman writes them.
    "--health-cmd": (str, ""),  # default: $SDSHIM_HEALTH_CMD (one word in SDSHIM_OPTIONS)
    "--health-interval": (_duration, 30.0),
    "--health-timeout": (_duration, 30.0),
    "--health-retries": (int, 3),
    "--health-start-period": (_duration, 0.0),
    "--health-on-failure": (_on_failure, "none"),
    # How long `sdshim start` waits for --sdnotify container|healthy (TimeoutStartSec).
    "--ready-timeout": (float, 90.0),
    # The monitor of an `sdshim exec` process (sdshim.shim.execprocess):
    "--exec-id": (str, ""),
    "--timeout": (float, 0.0),  # kill the process after this many seconds
    "--env": (str, []),
    "--cwd": (str, ""),
}


def usage() -> str:
    parts = []
    for opt, (convert, default) in OPTIONS.items():
        if convert is _flag:
            parts.append(f"[{opt}]")
        else:
            metavar = opt[2:].upper().replace("-", "_")
            parts.append(f"{opt} {metavar}" if default is None else f"[{opt} {metavar}]")
    return f"usage: {PROG} " + " ".join(parts) + " [-- COMMAND...]"


def fail(message: str) -> NoReturn:
    print(f"{usage()}\n{PROG}: error: {message}", file=sys.stderr)
    # The unit's status text says it too (systemctl status, sdshim status).
    Notifier().send(STATUS=f"{PROG}: {message}")
    raise SystemExit(USAGE_EXIT)


def parse(argv: list[str]) -> SimpleNamespace:
    """--opt VALUE, --opt=VALUE and flags; unknown options are skipped (the namespace's
    `ignored` lists them, as given); exits EXIT_NO_RESTART with a message on bad input."""
    values: dict[str, object] = {opt: default for opt, (_, default) in OPTIONS.items()}
    values["--unit"] = leanos.getenv("SDSHIM_UNIT")
    # systemd splits $SDSHIM_OPTIONS at whitespace, quotes or not: a template unit's
    # health command with spaces comes in an environment variable of its own.
    values["--health-cmd"] = leanos.getenv("SDSHIM_HEALTH_CMD")
    values["--command"] = []
    lists: dict[str, list[object]] = {opt: [] for opt, (_, default) in OPTIONS.items()
                                      if isinstance(default, list)}
    values.update(lists)
    ignored: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            values["--command"] = argv[i:]
            break
        if arg in ("-h", "--help"):
            print(usage())
            raise SystemExit(0)
        opt, eq, inline = arg.partition("=")
        if opt not in OPTIONS:
            if not eq and arg.startswith("--") and i < len(argv) \
                    and not argv[i].startswith("--"):
                arg = f"{arg} {argv[i]}"  # --opt VALUE: its value goes with it
                i += 1
            ignored.append(arg)
            continue
        convert = OPTIONS[opt][0]
        if convert is _flag:
            if eq:
                fail(f"{opt} takes no value")
            values[opt] = True
            continue
        if eq:
            raw = inline
        elif i < len(argv):
            raw = argv[i]
            i += 1
        else:
            fail(f"{opt} needs a value")
        try:
            if opt in lists:
                lists[opt].append(convert(raw))
            else:
                values[opt] = convert(raw)
        except ValueError:
            fail(f"invalid value for {opt}: {raw!r}")
    missing = [opt for opt, value in values.items() if value is None]
    if missing:
        fail("the following arguments are required: " + ", ".join(missing))
    if values["--sdnotify"] == "healthy" and not values["--health-cmd"]:
        fail("--sdnotify healthy needs --health-cmd (or $SDSHIM_HEALTH_CMD)")
    if ignored:
        print(f"{PROG}: ignoring what this monitor (sdshim {__version__}) does not know: "
              + ", ".join(map(repr, ignored))
              + "; written by another sdshim version, or mistyped?", file=sys.stderr)
    opts = SimpleNamespace(**{opt[2:].replace("-", "_"): v for opt, v in values.items()})
    opts.ignored = ignored
    return opts
