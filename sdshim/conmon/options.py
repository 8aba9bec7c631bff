"""conmon's command line, parsed by GLib's rules, and what it requires.

GLib accepts `--opt v` and `--opt=v`, a value that begins with `--` (`--runtime-arg
--log`), repeated options (the last wins, arrays collect), grouped short switches, and
ignores positional arguments (podman writes `--api-version 1`: the `1` is one).
"""

from __future__ import annotations

import posix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

VERSION = "2.1.6"  # the conmon whose contract this implements (podman needs >= 2.0.1)


def version() -> str:
    """What `conmon --version` prints; podman runs it before each of its commands."""
    return f"conmon version {VERSION}\ncommit: sdshim\n"

FLAG, STRING, ARRAY, INT = "flag", "string", "array", "int"
# long name -> (short, kind, attribute)
SPEC: dict[str, tuple[str, str]] = {
    "api-version": ("", FLAG), "bundle": ("b", STRING), "cid": ("c", STRING),
    "conmon-pidfile": ("P", STRING), "container-pidfile": ("p", STRING),
    "cuuid": ("u", STRING), "exec": ("e", FLAG), "exec-attach": ("", FLAG),
    "exec-process-spec": ("", STRING), "exit-command": ("", STRING),
    "exit-command-arg": ("", ARRAY), "exit-delay": ("", INT), "exit-dir": ("", STRING),
    "leave-stdin-open": ("", FLAG), "log-level": ("", STRING), "log-path": ("l", ARRAY),
    "log-size-max": ("", INT), "log-global-size-max": ("", INT), "log-tag": ("", STRING),
    "name": ("n", STRING), "no-new-keyring": ("", FLAG), "no-pivot": ("", FLAG),
    "no-sync-log": ("", FLAG), "persist-dir": ("0", STRING),
    "replace-listen-pid": ("", FLAG), "restore": ("", STRING), "runtime": ("r", STRING),
    "runtime-arg": ("", ARRAY), "runtime-opt": ("", ARRAY),
    "sdnotify-socket": ("", STRING), "socket-dir-path": ("", STRING),
    "stdin": ("i", FLAG), "sync": ("", FLAG), "syslog": ("", FLAG),
    "systemd-cgroup": ("s", FLAG), "terminal": ("t", FLAG), "timeout": ("T", INT),
    "version": ("", FLAG), "full-attach": ("", FLAG),
    "seccomp-notify-socket": ("", STRING), "seccomp-notify-plugins": ("", STRING),
    "help": ("h", FLAG),
}
SHORT = {short: long for long, (short, _kind) in SPEC.items() if short}
LOG_DRIVERS = ("k8s-file", "journald", "none", "off", "null", "passthrough")


class OptionError(Exception):
    """A command line GLib would refuse: 'conmon: option parsing failed: ...'."""


class UsageError(Exception):
    """A command line conmon refuses after parsing: '[conmon:e] ...'."""


class Options:
    """The parsed options: attributes named like the long options, '-' as '_'."""

    def __init__(self) -> None:
        for long, (_short, kind) in SPEC.items():
            value: object = {FLAG: False, STRING: None, ARRAY: None, INT: 0}[kind]
            setattr(self, long.replace("-", "_"), [] if kind == ARRAY else value)

    # for mypy: the attributes used outside (set by __init__ from SPEC)
    api_version: bool
    bundle: str | None
    cid: str | None
    conmon_pidfile: str | None
    container_pidfile: str | None
    cuuid: str | None
    exec: bool
    exec_attach: bool
    exec_process_spec: str | None
    exit_command: str | None
    exit_command_arg: list[str]
    exit_delay: int
    exit_dir: str | None
    leave_stdin_open: bool
    log_level: str | None
    log_path: list[str]
    log_size_max: int
    log_global_size_max: int
    log_tag: str | None
    name: str | None
    no_new_keyring: bool
    no_pivot: bool
    persist_dir: str | None
    restore: str | None
    runtime: str | None
    runtime_arg: list[str]
    runtime_opt: list[str]
    sdnotify_socket: str | None
    socket_dir_path: str | None
    stdin: bool
    sync: bool
    systemd_cgroup: bool
    terminal: bool
    timeout: int
    version: bool
    full_attach: bool
    help: bool

    def logs(self) -> list[tuple[str, str]]:
        """(driver, path) for each -l: `k8s-file:PATH` or a bare path is a k8s file."""
        result = []
        for value in self.log_path:
            driver, sep, path = value.partition(":")
            if not sep:
                driver, path = (value, "") if value in LOG_DRIVERS else ("k8s-file", value)
            if driver not in LOG_DRIVERS:
                raise UsageError(f"[conmon:e]: No such log driver {driver}")
            if driver in ("off", "null"):
                driver = "none"
            if driver == "k8s-file" and not path:
                raise UsageError("[conmon:e]: k8s-file requires a filename")
            result.append((driver, path))
        return result

    def passthrough(self) -> bool:
        return any(driver == "passthrough" for driver, _ in self.logs())

    def preserved_fds(self) -> int:
        """The N of `--runtime-opt --preserve-fds --runtime-opt N` (or =N)."""
        opts = self.runtime_opt
        for i, opt in enumerate(opts):
            value = ""
            if opt == "--preserve-fds" and i + 1 < len(opts):
                value = opts[i + 1]
            elif opt.startswith("--preserve-fds="):
                value = opt.partition("=")[2]
            if value.isdigit():
                return int(value)
        return 0


def parse(argv: Sequence[str]) -> Options:
    opts = Options()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            long, eq, value = arg[2:].partition("=")
            if long not in SPEC:
                raise OptionError(f"Unknown option {arg if not eq else '--' + long}")
            if SPEC[long][1] == FLAG:
                if eq:
                    raise OptionError(f"Unexpected argument to option --{long}")
                _set(opts, long, "", arg)
                continue
            if not eq:
                if i >= len(args):
                    raise OptionError(f"Missing argument for --{long}")
                value = args[i]
                i += 1
            _set(opts, long, value, f"--{long}")
        elif arg.startswith("-") and len(arg) > 1:
            for j, ch in enumerate(arg[1:]):
                long = SHORT.get(ch, "")
                if not long:
                    raise OptionError(f"Unknown option -{ch}")
                if SPEC[long][1] == FLAG:
                    _set(opts, long, "", f"-{ch}")
                    continue
                rest = arg[j + 2:]
                if rest:  # -cVALUE
                    value = rest.removeprefix("=")
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    raise OptionError(f"Missing argument for -{ch}")
                _set(opts, long, value, f"-{ch}")
                break
        # positional arguments are ignored, as conmon's GLib context does
    return opts


def _set(opts: Options, long: str, value: str, given: str) -> None:
    attr = long.replace("-", "_")
    kind = SPEC[long][1]
    if kind == FLAG:
        setattr(opts, attr, True)
    elif kind == STRING:
        setattr(opts, attr, value)
    elif kind == ARRAY:
        getattr(opts, attr).append(value)
    else:
        try:
            setattr(opts, attr, int(value.strip()))
        except ValueError:
            raise OptionError(f"Cannot parse integer value \u201c{value}\u201d for "
                              f"{given}") from None


def check(opts: Options) -> None:
    """What conmon refuses after parsing, in its order and words."""
    if not opts.cid:
        raise UsageError("conmon: Container ID not provided. Use --cid")
    if not opts.cuuid:
        raise UsageError("[conmon:e] Container UUID not provided. Use --cuuid")
    if not opts.runtime:
        raise UsageError("[conmon:e] Runtime path not provided. Use --runtime")
    if not posix.access(opts.runtime, posix.X_OK):
        raise UsageError(f"[conmon:e]: Runtime path {opts.runtime} is not valid No such "
                         "file or directory")
    if not opts.log_path:
        raise UsageError("[conmon:e] Log driver not provided. Use --log-path")
    if opts.exec and not opts.exec_process_spec:
        raise UsageError("[conmon:e] Exec process spec path not provided. Use "
                         "--exec-process-spec")
    if opts.restore:
        raise UsageError("[conmon:e]: --restore (podman container restore) is not "
                         "supported by sdshim-conmon; use conmon for checkpointed containers")
    logs = opts.logs()
    if any(d == "passthrough" for d, _ in logs) and any(posix.isatty(fd) for fd in (0, 1, 2)):
        raise UsageError("[conmon:e]: cannot use a tty with passthrough logging")
    if opts.terminal and opts.passthrough():
        raise UsageError("[conmon:e]: cannot use a tty with passthrough logging")
    if opts.bundle is None:
        opts.bundle = posix.getcwd()
