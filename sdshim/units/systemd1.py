"""systemd's D-Bus API (org.freedesktop.systemd1) as sdshim uses it, without I/O.

The protocol core under sdshim's two transports, in dbus-fast's layout (one core, thin
I/O classes): the blocking client behind `sdshim create`, `run -d`, `status`, `list`,
`kill` and `stop` (sdshim.units.blockingbus, standard library only) and the asyncio one
on dbus-fast for everything else (sdshim.units.bus). Here are the calls to make (Call),
a job followed to its end whatever order its reply and its JobRemoved signal come in
(Job), and what starting a monitor's unit means for the user: the errors (UnitStart).
The transports send the calls, feed back what came, and raise what this gives them.
"""

from __future__ import annotations

from sdshim import leanos
from sdshim.errors import ContainerExistsError, CreateError, SdshimError, SystemdError

TYPE_CHECKING = False  # `typing` costs the CLI's start ~2 ms; it needs it only for mypy
if TYPE_CHECKING:
    from typing import Any

    from sdshim.leanos import StrPath
    from sdshim.units.spec import Property

# journald's per-unit rate limit. systemd 252 does not pass LogRateLimitIntervalSec=0
# on to journald (systemd#22034), so "off" is a burst nobody reaches. journald scales
# the burst by up to (log2(free bytes) - 16) / 4 in 32 bits, so stay well below 2**32/12.
LOG_RATE_BURST_UNLIMITED = 100_000_000
LOG_RATE_INTERVAL_USEC = 1_000_000  # 1 s
SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
BUS = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
# A job the unit has no use for, e.g. a reload without ExecReload=.
JOB_NOT_APPLICABLE = "org.freedesktop.systemd1.JobTypeNotApplicable"
# What GetAll says about a unit systemd does not have loaded.
NOT_LOADED = (NO_SUCH_UNIT, "org.freedesktop.DBus.Error.UnknownObject",
              "org.freedesktop.DBus.Error.UnknownMethod")
START_TRANSIENT = "ssa(sv)a(sa(sv))"  # name, mode, properties, auxiliary units
# systemd sends job signals to the client that queued the job (no Subscribe needed);
# this match makes the bus route them to us.
JOB_REMOVED_MATCH = (f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',"
                     "member='JobRemoved'")
BUS_HINT = ("is dbus running? (`systemctl status dbus`); on a host without systemd as "
            "PID 1, use the test bed: python3 -m sdshim.testbed -- sdshim ...")


class BusCallError(SystemdError):
    """An error reply: name is its D-Bus error name, the message its text."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class BusTimeoutError(SystemdError):
    """No answer on the bus before the deadline."""


class BusLostError(SystemdError):
    """The bus connection ended while sdshim waited on it."""


def unreachable(e: Exception) -> SystemdError:
    """The error for a system bus that cannot be reached (both transports say this)."""
    return SystemdError(
        f"cannot connect to the system bus ({e}); is systemd running as PID 1 with dbus? "
        "(on a host without it, use the test bed: python3 -m sdshim.testbed -- sdshim ...)")


def timed_out(purpose: str, seconds: float, hint: str = "") -> BusTimeoutError:
    return BusTimeoutError(f"timed out after {seconds:g} s waiting for {purpose}; "
                           f"{hint or 'is systemd busy? try again'}")


def lost(purpose: str, reason: str = "", hint: str = "") -> BusLostError:
    """reason: the error that broke the connection; none if the bus closed it."""
    how = f"connection broke ({reason})" if reason else "closed the connection"
    return BusLostError(f"the system bus {how} while waiting for {purpose}; "
                        f"{hint or BUS_HINT}")


class Call:
    """One method call: where it goes, its body in sdshim.units.wire's form (a variant
    as a (signature, value) pair), and what an answer to it means, for the errors a
    timeout or a lost bus give: `waiting for PURPOSE; HINT` (what to do then)."""

    __slots__ = ("body", "destination", "hint", "interface", "member", "path", "purpose",
                 "signature")

    def __init__(self, path: str, interface: str, member: str, signature: str = "",
                 body: list[Any] | None = None, *, destination: str = SYSTEMD,
                 purpose: str = "", hint: str = "") -> None:
        self.destination = destination
        self.path = path
        self.interface = interface
        self.member = member
        self.signature = signature
        self.body = body if body is not None else []
        self.purpose = purpose or f"systemd to answer {member}"
        self.hint = hint

    def timed_out(self, seconds: float) -> BusTimeoutError:
        return timed_out(self.purpose, seconds, self.hint)

    def lost(self, reason: str = "") -> BusLostError:
        return lost(self.purpose, reason, self.hint)

    def __repr__(self) -> str:
        return f"Call({self.member} on {self.path}: {self.purpose})"


def manager_call(member: str, signature: str = "", body: list[Any] | None = None,
                 purpose: str = "", hint: str = "") -> Call:
    return Call(SYSTEMD_PATH, MANAGER, member, signature, body, purpose=purpose, hint=hint)


def add_match(rule: str) -> Call:
    return Call(BUS_PATH, BUS, "AddMatch", "s", [rule], destination=BUS,
                purpose="the bus to add a signal match")


def unit_path(unit: str) -> str:
    """The object path systemd gives a unit (sd_bus_path_encode)."""
    out = []
    for ch in unit:
        if ch.isascii() and (ch.isalnum()):
            out.append(ch)
        else:
            out.append(f"_{ord(ch):02x}")
    return f"{SYSTEMD_PATH}/unit/{''.join(out)}"


def get_all(unit: str, interface: str = "") -> Call:
    """GetAll of a unit's properties (interface '' = all of them); see loaded()."""
    return Call(unit_path(unit), PROPERTIES, "GetAll", "s", [interface],
                purpose=f"systemd's properties of {unit}")


def loaded(values: dict[str, Any], interface: str) -> dict[str, Any] | None:
    """GetAll's values, or None when they describe a unit systemd could not find."""
    if values.get("LoadState") in ("not-found", None) and interface in ("", UNIT):
        return None
    return values


def properties_reply(error: BusCallError | None, values: dict[str, Any] | None,
                     interface: str) -> dict[str, Any] | None:
    """GetAll's answer (an error reply or its values) as properties, or None when the
    unit is not loaded; any other error reply is raised."""
    if error is not None:
        if error.name in NOT_LOADED:
            return None
        raise error
    return loaded(values or {}, interface)


def service_state(unit_props: dict[str, Any] | None,
                  service_props: dict[str, Any] | None) -> dict[str, Any] | None:
    """A service unit's state: its Unit and Service properties in one dict (two GetAll
    calls: all interfaces at once would be several times the bytes), or None if
    systemd does not know the unit."""
    if unit_props is None:
        return None
    return {**unit_props, **(service_props or {})}


def list_units(patterns: list[str]) -> Call:
    return manager_call("ListUnitsByPatterns", "asas", [[], patterns],
                        purpose="systemd to list its units")


def units_reply(body: list[Any]) -> list[tuple[str, str, str]]:
    """ListUnitsByPatterns' answer: (name, active state, sub state) of each unit."""
    (units,) = body
    return [(str(u[0]), str(u[3]), str(u[4])) for u in units]


# systemd emits unit signals only while some client is subscribed.
SUBSCRIBE = manager_call("Subscribe", purpose="systemd to send unit changes")


def properties_changed(unit: str) -> str:
    """The match rule for a unit's PropertiesChanged signals."""
    return (f"type='signal',sender='{SYSTEMD}',path='{unit_path(unit)}',"
            f"interface='{PROPERTIES}',member='PropertiesChanged'")


def reload_unit(unit: str) -> Call:
    return manager_call("ReloadUnit", "ss", [unit, "replace"],
                        purpose=f"systemd to reload {unit}",
                        hint=f"see `systemctl status {unit}`")


def reset_failed_unit(unit: str) -> Call:
    return manager_call("ResetFailedUnit", "s", [unit],
                        purpose=f"systemd to forget the failed {unit}")


def stop_unit(unit: str) -> Call:
    return manager_call("StopUnit", "ss", [unit, "replace"],
                        purpose=f"systemd to stop {unit}",
                        hint=f"see `systemctl status {unit}`")


def kill_unit(unit: str, whom: str, signum: int) -> Call:
    return manager_call("KillUnit", "ssi", [unit, whom, signum],
                        purpose=f"systemd to signal {unit}",
                        hint=f"see `systemctl status {unit}`")


# --- jobs ------------------------------------------------------------------------------

QUEUING, QUEUED, ENDED = "queuing", "queued", "ended"


class Job:
    """A call that queues a systemd job (StartTransientUnit, StopUnit...), followed to
    the job's end.

    States: queuing (the call is out, its reply, the job's path, has not come) ->
    queued (the path is known) -> ended (its JobRemoved came; result says how).
    The transport adds the JobRemoved match (match), sends call, and from then on
    hands every signal to signal() and the call's reply to queued(). The job can end
    before the call's reply arrives: a JobRemoved seen while queuing is kept by job
    path and applied when the path comes, so no order of the two loses it.
    """

    __slots__ = ("_early", "call", "path", "result", "state")
    match = add_match(JOB_REMOVED_MATCH)

    def __init__(self, call: Call) -> None:
        self.call = call
        self.state = QUEUING
        self.path = ""
        self.result = ""  # systemd's word: done, failed, canceled, timeout, dependency...
        self._early: dict[str, str] = {}

    @property
    def ended(self) -> bool:
        return self.state == ENDED

    @property
    def ok(self) -> bool:
        return self.result == "done"

    def signal(self, interface: str, member: str, body: list[Any]) -> None:
        """A signal from the bus; JobRemoved (id, job path, unit, result) of this job
        ends it."""
        if member != "JobRemoved" or interface != MANAGER or len(body) != 4:
            return
        path, result = str(body[1]), str(body[3])
        if self.state == QUEUING:
            self._early[path] = result
        elif self.state == QUEUED and path == self.path:
            self._end(result)

    def queued(self, reply: list[Any]) -> None:
        """The call's reply: the job's path. Ends the job at once if its JobRemoved
        came first."""
        if self.state != QUEUING:
            raise SdshimError(f"job {self.path} was queued twice; a bug in sdshim")
        (path,) = reply
        self.path = str(path)
        self.state = QUEUED
        early = self._early.pop(self.path, None)
        self._early.clear()
        if early is not None:
            self._end(early)

    def _end(self, result: str) -> None:
        self.result = result
        self.state = ENDED


# --- starting a monitor's unit ---------------------------------------------------------


class UnitStart:
    """Starting the transient unit of an sdshim monitor (a container's or an exec's):
    the job, and the error for each way it can fail. The transport runs the job; on a
    BusCallError it raises refused(e); if the job did not end done it reads the
    monitor's exit record (record_path) and the unit's properties (properties_call)
    and raises failure(record, properties).

    name: the container's name when the unit is the container's, so that a unit of
    that name systemd still has loaded is "container NAME already exists".
    """

    __slots__ = ("aux", "directory", "job", "name", "refused_call", "unit", "what")

    def __init__(self, unit: str, properties: list[Property], *, what: str,
                 directory: StrPath, name: str = "",
                 aux: list[tuple[str, list[Property]]] | None = None) -> None:
        self.unit = unit
        self.what = what
        self.directory = directory
        self.name = name
        # Units made with it (a container's service behind the socket unit started).
        self.aux = aux or []
        self.refused_call = False  # systemd answered the start with an error: no unit
        check = f"`sdshim status {name}`" if name else f"`systemctl status {unit}`"
        self.job = Job(manager_call(
            "StartTransientUnit", START_TRANSIENT,
            [unit, "fail", _variants(properties),
             [(aux_unit, _variants(props)) for aux_unit, props in self.aux]],
            purpose=f"systemd to start {unit}",
            hint=f"{what} may have started anyway: see {check}"))

    @property
    def record_path(self) -> str:
        return leanos.join(self.directory, "exit.json")

    @property
    def properties_call(self) -> Call:
        # The Service interface has all a failure needs (StatusText, Result), in one
        # call; a socket unit's are on its own interface.
        return get_all(self.unit, SERVICE if self.unit.endswith(".service") else "")

    @property
    def cleanup_call(self) -> Call | None:
        """After a failure: a socket that could not listen leaves no failed unit (and
        with it the service beside it) behind."""
        return reset_failed_unit(self.unit) if self.aux else None

    def refused(self, e: BusCallError) -> SdshimError:
        """systemd's answer to StartTransientUnit, for the user. A unit of that name
        that systemd still has loaded (even ended) is an existing container."""
        self.refused_call = True
        if self.name and e.name == UNIT_EXISTS:
            return exists_error(self.name)
        return SystemdError(f"systemd refused to start {self.unit}: {e}")

    @staticmethod
    def ran(record: dict[str, Any] | None) -> bool:
        """Whether a unit whose job failed ran its container after all: without a
        monitor (--supervisor systemd) a container that exits non-zero before READY=1
        fails the job, and the stop step records its exit with no error: it ran."""
        return bool(record and record.get("supervisor") == "systemd"
                    and not record.get("error"))

    def failure(self, record: dict[str, Any] | None,
                properties: dict[str, Any] | None) -> CreateError:
        """Why the monitor did not get ready: what it recorded in its exit record, or,
        if it left none, systemd's word (the unit's Service properties)."""
        if record and record.get("error"):
            return CreateError(str(record["error"]), int(record.get("exit_code") or 125))
        from sdshim.units import readiness  # --sdnotify container|healthy only

        not_ready = readiness.not_ready_error(self.directory, self.what, self.unit,
                                              properties)
        if not_ready is not None:
            return not_ready
        props = properties or {}
        detail = props.get("StatusText") or \
            f"job {self.job.result or 'unfinished'}, result {props.get('Result')}"
        return CreateError(f"{self.what} failed to start: {detail}; "
                           f"see `journalctl -u {self.unit}`")


def _variants(properties: list[Property]) -> list[tuple[str, tuple[str, Any]]]:
    return [(n, (sig, v)) for n, sig, v in properties]


def exists_error(name: str) -> ContainerExistsError:
    return ContainerExistsError(f"container {name} already exists; delete it with "
                                f"`sdshim delete {name}` or choose another --name")
