"""The monitor's command line, without argparse.

spec.py writes this command line and people rarely do, so a table and a loop do:
argparse (with gettext, locale and shutil, which its formatter pulls in) would cost
every container ~2.7 ms of start-up and ~0.6 MB of private memory.
"""

from __future__ import annotations

import sys

from sdshim import leanos

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
USAGE_EXIT = 2  # as argparse


def _flag(_value: str) -> bool:
    return True


def _restart_policy(value: str) -> str:
    if value not in ("no", "on-failure", "always"):
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
    # The monitor of an `sdshim exec` process (sdshim.shim.execmonitor):
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


def _fail(message: str) -> NoReturn:
    print(f"{usage()}\n{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_EXIT)


def parse(argv: list[str]) -> SimpleNamespace:
    """--opt VALUE, --opt=VALUE and flags; exits 2 with a message on bad input."""
    values: dict[str, object] = {opt: default for opt, (_, default) in OPTIONS.items()}
    values["--unit"] = leanos.getenv("SDSHIM_UNIT")
    values["--command"] = []
    lists: dict[str, list[object]] = {opt: [] for opt, (_, default) in OPTIONS.items()
                                      if isinstance(default, list)}
    values.update(lists)
    args = iter(argv)
    for arg in args:
        if arg == "--":
            values["--command"] = list(args)
            break
        if arg in ("-h", "--help"):
            print(usage())
            raise SystemExit(0)
        opt, eq, inline = arg.partition("=")
        if opt not in OPTIONS:
            _fail(f"unrecognized argument {arg!r}")
        convert = OPTIONS[opt][0]
        if convert is _flag:
            if eq:
                _fail(f"{opt} takes no value")
            values[opt] = True
            continue
        raw = inline if eq else next(args, None)
        if raw is None:
            _fail(f"{opt} needs a value")
        try:
            if opt in lists:
                lists[opt].append(convert(raw))
            else:
                values[opt] = convert(raw)
        except ValueError:
            _fail(f"invalid value for {opt}: {raw!r}")
    missing = [opt for opt, value in values.items() if value is None]
    if missing:
        _fail("the following arguments are required: " + ", ".join(missing))
    return SimpleNamespace(**{opt[2:].replace("-", "_"): v for opt, v in values.items()})
