"""What a container's transient unit looks like: its D-Bus properties."""

from __future__ import annotations

import sys

from sdshim import leanos, naming, shim, signals
from sdshim.errors import EXIT_NO_RESTART, UsageError
from sdshim.units import cgrouptrim
from sdshim.units.features import SOCKET_NEEDS_DETACH, Features
from sdshim.units.systemd1 import LOG_RATE_BURST_UNLIMITED, LOG_RATE_INTERVAL_USEC

TYPE_CHECKING = False  # `typing` costs the CLI's start ~2 ms; it needs it only for mypy
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from sdshim.leanos import StrPath

    # A unit property as StartTransientUnit takes it: (name, D-Bus signature, value).
    # No D-Bus library's Variant here: the CLI's blocking client (sdshim.units.wire)
    # and dbus-fast (sdshim.units.bus) each wrap it their own way.
    Property = tuple[str, str, Any]

USEC = 1_000_000
LOG_DRIVERS = ("native", "stream")
# Above this the monitor's per-stream buffer, not journald (768 MiB per field), is the
# concern: a line is held whole until its newline or this many bytes.
LOG_MAX_LINE_LIMIT = 64 << 20
# Margin systemd waits beyond the monitor's own stop timeout before SIGKILLing all.
STOP_MARGIN_SEC = 5.0
RESTART_POLICIES = ("no", "on-failure", "on-watchdog", "always")
# sdshim: the monitor supervises the container. systemd: the container's init becomes the
# unit's main process and nothing of sdshim stays (sdshim.shim.handoff).
SUPERVISORS = ("sdshim", "systemd")
DEFAULT_RESTART_DELAY = 1.0
# The longest duration an option takes: about 31 years, far below what systemd's
# microsecond fields (uint64) hold.
MAX_SECONDS = 1e9
# --sdnotify: who says the container is ready. monitor: the monitor, once the command
# runs; container: the container itself (READY=1 through the monitor's notify proxy);
# healthy: the monitor, once the first health check passes.
SDNOTIFY_MODES = ("monitor", "container", "healthy")


class ContainerSpec:
    """A container's unit, checked. A plain class: a dataclass would pull in `inspect`
    (~4 ms of every `sdshim create` and `run -d`)."""

    def __init__(self, name: str, id: str, bundle: StrPath, runtime: str, *,
                 start: bool = True, stop_timeout: float = 10.0,
                 stop_signal: int = signals.SIGTERM, tag: str = "",
                 log_max_line: int = 0, log_driver: str = "", log_path: str = "",
                 log_size_max: int = 0, log_rate_limit: str = "", restart: str = "no",
                 restart_delay: float = DEFAULT_RESTART_DELAY, interactive: bool = False,
                 tty: bool = False, properties: list[Property] | None = None,
                 sdnotify: str = "monitor", health: HealthOptions | None = None,
                 supervisor: str = "sdshim", features: Features | None = None) -> None:
        self.name = name
        self.id = id
        self.bundle = leanos.absolute(bundle)
        self.runtime = runtime
        self.start = start
        self.stop_timeout = stop_timeout
        self.stop_signal = stop_signal
        self.tag = tag
        self.log_max_line = log_max_line  # 0: the monitor's default
        self.log_driver = log_driver
        self.log_path = log_path  # a CRI log file beside the journal (native driver only)
        self.log_size_max = log_size_max  # rotate log_path at this size; 0: never
        self.log_rate_limit = log_rate_limit  # "BURST/INTERVAL", e.g. 10000/30s; "": none
        self.restart = restart
        self.restart_delay = restart_delay
        self.interactive = interactive
        self.tty = tty
        self.supervisor = supervisor
        self.properties = properties or []
        self.features = features or Features()
        self.sdnotify = sdnotify
        self.health = health
        self._check()
        self._check_features()

    def _check(self) -> None:
        seconds("--stop-timeout", self.stop_timeout)
        seconds("--restart-delay", self.restart_delay)
        if self.supervisor not in SUPERVISORS:
            raise UsageError(f"invalid --supervisor {self.supervisor!r}: use sdshim (a "
                             "monitor per container) or systemd (no monitor)")
        if self.zero_resident:
            self._check_zero_resident()
        self.log_driver = self.log_driver or ("stream" if self.zero_resident else "native")
        if self.log_driver not in LOG_DRIVERS:
            raise UsageError(f"invalid --log-driver {self.log_driver!r}: use native "
                             "(the monitor forwards lines with the container fields) or "
                             "stream (straight to journald)")
        if not 0 <= self.log_max_line <= LOG_MAX_LINE_LIMIT:
            raise UsageError(f"invalid --log-max-line {self.log_max_line}: use 1 to "
                             f"{LOG_MAX_LINE_LIMIT} bytes, e.g. 256K")
        if self.log_path:
            if self.log_driver != "native":
                raise UsageError("--log-path needs --log-driver native: with stream the "
                                 "output goes straight to journald, not through sdshim")
            path = leanos.absolute(self.log_path)
            if not leanos.isdir(leanos.dirname(path)):
                raise UsageError(f"directory {leanos.dirname(path)} for --log-path does not "
                                 "exist; create it first")
            self.log_path = path
        elif self.log_size_max:
            raise UsageError("--log-size-max needs --log-path FILE")
        if self.log_rate_limit:
            parse_rate_limit(self.log_rate_limit)
        if self.tty and self.log_driver == "stream":
            raise UsageError("--log-driver stream does not go with -t: a terminal's output "
                             "passes through the monitor; drop one of them")
        if self.sdnotify not in SDNOTIFY_MODES:
            raise UsageError(f"invalid --sdnotify {self.sdnotify!r}: use monitor (ready once "
                             "the command runs), container (the container sends READY=1) "
                             "or healthy (ready once a health check passes)")
        if self.sdnotify == "healthy" and self.health is None:
            raise UsageError("--sdnotify healthy needs a health check: add --health-cmd CMD")
        if self.health is not None and self.health.on_failure == "restart" and \
                self.restart == "no":
            raise UsageError("--health-on-failure restart needs --restart on-failure or "
                             "always: systemd does the restarting")

    def _check_features(self) -> None:
        """Settings of issue 13 (sockets, credentials, watchdog, reload) that the rest
        of the spec constrains."""
        if any(p[0] == "WatchdogUSec" for p in self.properties) and \
                getattr(self, "sdnotify", "monitor") != "container":
            raise UsageError("-p WatchdogSec needs --sdnotify container: the container "
                             "itself must send the keep-alives (WATCHDOG=1)")
        if self.features.socket_activated:
            if not self.start:
                raise UsageError(SOCKET_NEEDS_DETACH)
            if self.interactive or self.tty:
                raise UsageError("--socket does not go with -i or -t: nobody is attached "
                                 "when a connection starts the container")
            if self.restart == "always":
                raise UsageError("--socket does not go with --restart always: the socket "
                                 "starts the container again on the next connection")

    @property
    def zero_resident(self) -> bool:
        return self.supervisor == "systemd"

    def _check_zero_resident(self) -> None:
        """What needs a monitor, refused before anything is made (see README)."""
        why = ("needs the sdshim monitor, which --supervisor systemd does not run; "
               "drop one of them")
        if self.interactive:
            raise UsageError(f"-i {why} (it holds the container's stdin)")
        if self.tty:
            raise UsageError(f"-t {why} (it holds the terminal)")
        if self.log_path:
            raise UsageError(f"--log-path {why} (it writes the CRI log file)")
        if self.log_driver == "native":
            raise UsageError(f"--log-driver native {why} (it forwards the lines); "
                             "--supervisor systemd logs through journald streams")

    @property
    def unit(self) -> str:
        return naming.unit_name(self.name)

    def transient_units(self) -> tuple[str, list[Property], list[tuple[str, list[Property]]]]:
        """What StartTransientUnit gets: the unit to start, its properties, and the
        auxiliary units. With --socket that is the socket unit, with the container's
        service beside it (as systemd-run --socket-property does)."""
        if self.features.socket_activated:
            return (self.features.socket_unit(self.name),
                    self.features.socket_properties(self.name),
                    [(self.unit, self.unit_properties())])
        return self.unit, self.unit_properties(), []

    def monitor_argv(self) -> list[str]:
        argv = [*monitor_command(),
                "--name", self.name, "--id", self.id, "--bundle", str(self.bundle),
                "--runtime", self.runtime, "--unit", self.unit,
                "--stop-timeout", str(self.stop_timeout),
                "--stop-signal", str(self.stop_signal), "--restart", self.restart]
        if self.start:
            argv.append("--start")
        if self.zero_resident:
            argv += ["--supervisor", self.supervisor]
        if self.tag:
            argv += ["--tag", self.tag]
        if self.log_max_line:
            argv += ["--log-max-line", str(self.log_max_line)]
        if self.log_driver != "native":
            argv += ["--log-driver", self.log_driver]
        if self.log_path:
            argv += ["--log-path", self.log_path]
        if self.log_size_max:
            argv += ["--log-size-max", str(self.log_size_max)]
        argv += self.features.monitor_args()
        if self.sdnotify != "monitor":
            argv += ["--sdnotify", self.sdnotify]
            # `sdshim start` of a created container waits as long as systemd would.
            usec = next((v for n, _sig, v in self.properties if n == "TimeoutStartUSec"), 0)
            if usec:
                argv += ["--ready-timeout", str(usec / USEC)]
        if self.health is not None:
            argv += self.health.monitor_args()
        return argv + stdio_flags(self.interactive, self.tty)

    def unit_properties(self) -> list[Property]:
        burst, interval = (parse_rate_limit(self.log_rate_limit) if self.log_rate_limit
                           else (LOG_RATE_BURST_UNLIMITED, LOG_RATE_INTERVAL_USEC))
        props = monitor_properties(
            f"sdshim container {self.name} ({self.bundle})", self.monitor_argv(),
            self.stop_timeout, self.name, burst, interval)
        props += [
            # Keeps the unit (and its results) after a clean exit. Not with
            # Restart=always: a unit that "remains" after a clean exit is not restarted;
            # nor behind a socket, which starts it again on the next connection.
            ("RemainAfterExit", "b", self.restart != "always"
             and not self.features.socket_activated),
            ("Delegate", "b", True),
        ]
        if self.log_driver == "stream":
            # journald adds them to every line the container writes to its streams.
            props.append(("LogExtraFields", "aay", self.log_fields()))
        props += self.features.service_properties(reload_command(self.name))
        if self.zero_resident:
            props = self.zero_resident_properties(props)
        props = cgrouptrim.add_to(props)
        return props + self.restart_properties() + self.properties

    def log_fields(self) -> list[bytes]:
        """The podman field set, as the unit's LogExtraFields=."""
        fields = {"CONTAINER_ID": self.id[:12], "CONTAINER_ID_FULL": self.id,
                  "CONTAINER_NAME": self.name}
        if self.tag:
            fields["CONTAINER_TAG"] = self.tag
        return [f"{k}={v}".encode() for k, v in fields.items()]

    def zero_resident_properties(self, props: list[Property]) -> list[Property]:
        """The container's init becomes the main process: systemd stops it (KillSignal=
        to it alone, SIGKILL to all after the stop timeout), takes READY=1 from the
        hand-off that is no longer the main process, and runs the stop step, which
        records the exit, once it has ended."""
        changed = {"NotifyAccess": ("NotifyAccess", "s", "all"),
                   "TimeoutStopUSec": ("TimeoutStopUSec", "t", int(self.stop_timeout * USEC))}
        props = [changed.get(p[0], p) for p in props]
        stop_post = [*monitor_command(), "--stop-post", "--name", self.name,
                     "--unit", self.unit]
        props = [*props, ("KillSignal", "i", self.stop_signal),
                 ("ExecStopPost", "a(sasb)", [[stop_post[0], stop_post, False]])]
        if self.direct:
            from sdshim.units import direct

            props = direct.properties(self, props)
        return props

    @property
    def direct(self) -> bool:
        """Zero-resident with no sdshim process on the start path (sdshim.units.direct)."""
        from sdshim.units import direct

        return direct.eligible(self)

    def restart_properties(self) -> list[Property]:
        """systemd restarts the monitor, which creates the container afresh each time."""
        if self.restart == "no":
            return []
        return [
            ("Restart", "s", self.restart),
            ("RestartUSec", "t", int(self.restart_delay * USEC)),
            # Like docker, never give up on a container that keeps failing...
            ("StartLimitIntervalUSec", "t", 0),
            # ... but do not retry one that cannot be created, or one stopped on request.
            ("RestartPreventExitStatus", "(aiai)", ([EXIT_NO_RESTART], [])),
        ]


def reload_command(name: str) -> list[str]:
    """ExecReload=: asks the monitor to send the container its reload signal, and
    returns once the container is done (sdshim.shim.reload)."""
    return [*monitor_command(), "reload", name]


class HealthOptions:
    """--health-*, checked: what the monitor gets (durations in seconds)."""

    def __init__(self, cmd: str, interval: str = "", timeout: str = "", retries: int | None = None,
                 start_period: str = "", on_failure: str = "") -> None:
        from sdshim.shim import health

        try:
            health.probe_command(cmd)
        except ValueError as e:
            raise UsageError(f"invalid --health-cmd {cmd!r}: {e}; give a shell command or a "
                             'JSON array like ["/bin/check", "--quick"]') from None
        self.cmd = cmd

        def seconds(option: str, value: str, default: float) -> float:
            if not value:
                return default
            try:
                return health.parse_duration(value)
            except ValueError as e:
                raise UsageError(f"invalid {option}: {e}") from None

        self.interval = seconds("--health-interval", interval, health.DEFAULT_INTERVAL)
        self.timeout = seconds("--health-timeout", timeout, health.DEFAULT_TIMEOUT)
        self.start_period = seconds("--health-start-period", start_period, 0.0)
        self.retries = health.DEFAULT_RETRIES if retries is None else retries
        self.on_failure = on_failure or "none"
        try:
            health.HealthConfig(["probe"], self.interval, self.timeout, self.retries,
                                self.start_period, self.on_failure)
        except ValueError as e:
            raise UsageError(f"invalid health check: {e}") from None

    def monitor_args(self) -> list[str]:
        # Free text in its own token (--opt=VALUE): see sdshim.shim.options.
        return [f"--health-cmd={self.cmd}", "--health-interval", str(self.interval),
                "--health-timeout", str(self.timeout), "--health-retries", str(self.retries),
                "--health-start-period", str(self.start_period),
                "--health-on-failure", self.on_failure]


def stdio_flags(interactive: bool, tty: bool) -> list[str]:
    return (["--interactive"] if interactive else []) + (["--tty"] if tty else [])


def monitor_properties(description: str, argv: list[str], stop_timeout: float,
                       container: str, burst: int = LOG_RATE_BURST_UNLIMITED,
                       interval: int = LOG_RATE_INTERVAL_USEC) -> list[Property]:
    """What every unit whose main process is an sdshim monitor has."""
    return [
        ("Description", "s", description),
        ("Slice", "s", naming.SLICE),
        ("Type", "s", "notify"),
        ("NotifyAccess", "s", "main"),
        # SIGTERM goes to the monitor only, which stops the container its own way;
        # whatever is left after the timeout is SIGKILLed by systemd.
        ("KillMode", "s", "mixed"),
        ("TimeoutStopUSec", "t", int((stop_timeout + STOP_MARGIN_SEC) * USEC)),
        ("SyslogIdentifier", "s", "sdshim"),
        ("LogRateLimitIntervalUSec", "t", interval),
        ("LogRateLimitBurst", "u", burst),
        ("Environment", "as", [f"SDSHIM_CONTAINER={container}"]),
        ("ExecStart", "a(sasb)", [[argv[0], argv, False]]),
    ]


def monitor_command() -> list[str]:
    """How systemd starts the monitor.

    -I: isolated mode, no user site or PYTHON* variables: the monitor runs as installed,
    whatever the caller's environment. -S: no site scanning (.pth files, editable-install
    hooks), which the standard-library-only monitor does not need; its __main__.py puts
    the directory holding the sdshim package on sys.path instead. That needs the package
    to be plain files; otherwise (a zip, say) fall back to -m with site.
    """
    main = leanos.join(leanos.dirname(str(shim.__file__)), "__main__.py")
    if leanos.isfile(main):
        return [sys.executable, "-I", "-S", main]
    return [sys.executable, "-I", "-m", "sdshim.shim"]


# --- -p KEY=VALUE ---------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
UINT64_MAX = (1 << 64) - 1


def _is_number(text: str) -> bool:
    """Whether text is digits with an optional fraction (.5 and 5. are not). String
    tests, not `re`: that import would cost every `run -d -p ...` more than the rest."""
    whole, dot, fraction = text.partition(".")
    return whole.isdecimal() and (not dot or fraction.isdecimal())


def parse_bytes(value: str) -> int:
    if value == "infinity":
        return UINT64_MAX
    text = value.upper()
    unit = text[-1] if text[-1:] in ("K", "M", "G", "T") else ""
    digits = text[:len(text) - len(unit)]
    if not digits.isdecimal():
        raise ValueError("expected bytes like 512M, 2G or infinity")
    return int(digits) * _SIZE_UNITS[unit]


def parse_rate_limit(value: str) -> tuple[int, int]:
    """BURST/INTERVAL (journald's LogRateLimitBurst and ...IntervalSec): (burst, usec)."""
    burst, sep, interval = value.partition("/")
    try:
        if not sep or not burst.isdigit() or not 0 < int(burst) < 1 << 32:
            raise ValueError("expected BURST/INTERVAL, e.g. 10000/30s")
        usec = parse_seconds(interval)
        if usec <= 0:
            raise ValueError("the interval must be longer than 0s")
    except ValueError as e:
        raise UsageError(f"invalid --log-rate-limit {value!r}: {e}") from None
    return int(burst), usec


def parse_count(value: str) -> int:
    if value == "infinity":
        return UINT64_MAX
    if not value.isdigit():
        raise ValueError("expected a whole number or infinity")
    return int(value)


def parse_percent_quota(value: str) -> int:
    number, percent = value[:-1], value[-1:]
    if percent != "%" or not _is_number(number):
        raise ValueError("expected a percentage like 50% (100% = one CPU)")
    return int(float(number) * 10_000)  # CPUQuotaPerSecUSec: usec of CPU per second


def parse_weight(value: str) -> int:
    n = int(value) if value.isdigit() else 0
    if not 1 <= n <= 10000:
        raise ValueError("expected a weight from 1 to 10000")
    return n


def seconds(option: str, value: float | str) -> float:
    """A duration option's value in seconds: a finite number, 0 or more (NaN would
    compare false with everything: a NaN stop timeout meant an immediate SIGKILL)."""
    try:
        n = float(value)
    except ValueError:
        n = float("nan")
    # Written so that NaN fails too: every comparison with it is false.
    if not 0 <= n <= MAX_SECONDS:
        raise UsageError(f"invalid {option} {value!r}: give a number of seconds, 0 or "
                         f"more (at most {MAX_SECONDS:.0f}), e.g. 10 or 0.5")
    return n


_TIME_UNITS = (("ms", 1_000), ("min", 60 * USEC), ("s", USEC))


def parse_seconds(value: str) -> int:
    number, scale = value, USEC
    for suffix, usec in _TIME_UNITS:
        if value.endswith(suffix):
            number, scale = value[:-len(suffix)], usec
            break
    if not _is_number(number):
        raise ValueError("expected a time like 30s, 500ms or 2min")
    return int(float(number) * scale)


# KEY -> (D-Bus name, signature, parser). Names and types as systemd-run sends them
# (src/shared/bus-unit-util.c).
PROPERTIES: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "MemoryMax": ("MemoryMax", "t", parse_bytes),
    "MemoryHigh": ("MemoryHigh", "t", parse_bytes),
    "MemoryLow": ("MemoryLow", "t", parse_bytes),
    "MemorySwapMax": ("MemorySwapMax", "t", parse_bytes),
    "CPUQuota": ("CPUQuotaPerSecUSec", "t", parse_percent_quota),
    "CPUWeight": ("CPUWeight", "t", parse_weight),
    "IOWeight": ("IOWeight", "t", parse_weight),
    "TasksMax": ("TasksMax", "t", parse_count),
    "RuntimeMaxSec": ("RuntimeMaxUSec", "t", parse_seconds),
    "WatchdogSec": ("WatchdogUSec", "t", parse_seconds),
    # How long a --sdnotify container|healthy container may take to say it is ready.
    "TimeoutStartSec": ("TimeoutStartUSec", "t", parse_seconds),
    "Nice": ("Nice", "i", int),
}


def parse_properties(items: Sequence[str]) -> list[Property]:
    props = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"invalid property {item!r}: use KEY=VALUE, e.g. MemoryMax=512M")
        if key not in PROPERTIES:
            raise UsageError(f"unsupported property {key!r}; supported: "
                             + ", ".join(sorted(PROPERTIES)))
        dbus_name, sig, parse = PROPERTIES[key]
        try:
            parsed = parse(value)
        except ValueError as e:
            raise UsageError(f"invalid value for {key}: {value!r}: {e}") from None
        props.append((dbus_name, sig, parsed))
    return props
