"""Health checks (--health-cmd ...): the schedule and the verdicts, I/O-free.

The monitor runs each probe (`runtime exec`) and feeds the outcome in, with the time
from its own monotonic clock; Health says when the next probe is due, keeps the
status (starting, healthy, unhealthy), the failing streak and the last few results,
and reports a change of status once, when it happens. Docker's and podman's rules:
the first probe runs an interval after the start; a probe that fails within the
start period, before the first success, does not count; `retries` failures in a row
make the container unhealthy; one success makes it healthy again.
"""

from __future__ import annotations

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any

STARTING = "starting"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
ON_FAILURE = ("none", "kill", "stop", "restart")
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
KEEP_RESULTS = 5  # as docker
OUTPUT_TAIL = 1024  # bytes of a probe's output kept per result

_UNITS = (("ms", 0.001), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("h", 3600.0),
          ("m", 60.0), ("s", 1.0))


def parse_duration(value: str) -> float:
    """Seconds, from a duration as podman and docker write them: 30s, 1m30s, 1h, 500ms,
    or plain seconds (30, 1.5). ValueError names the expected form."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = _go_duration(text)
    if not seconds >= 0 or seconds == float("inf"):  # also NaN
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 1m30s, 500ms or "
                         "plain seconds")
    return seconds


def _go_duration(text: str) -> float:
    error = ValueError(f"invalid duration {text!r}: use e.g. 30s, 1m30s, 500ms or plain "
                       "seconds")
    if not text:
        raise error
    total = 0.0
    rest = text
    while rest:
        i = 0
        while i < len(rest) and (rest[i].isdigit() or rest[i] == "."):
            i += 1
        number, rest = rest[:i], rest[i:]
        unit = next((u for u in _UNITS if rest.startswith(u[0])), None)
        if unit is None:
            raise error
        try:
            total += float(number) * unit[1]
        except ValueError:
            raise error from None
        rest = rest[len(unit[0]):]
    return total


class HealthConfig:
    def __init__(self, command: list[str], interval: float = DEFAULT_INTERVAL,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 start_period: float = 0.0, on_failure: str = "none") -> None:
        if not command:
            raise ValueError("the health command is empty")
        if interval <= 0 or timeout <= 0:
            raise ValueError("the health interval and timeout must be more than 0s")
        if retries < 1:
            raise ValueError("health retries must be 1 or more")
        if on_failure not in ON_FAILURE:
            raise ValueError(f"invalid health failure action {on_failure!r}: use "
                             + ", ".join(ON_FAILURE))
        self.command = command
        self.interval = interval
        self.timeout = timeout
        self.retries = retries
        self.start_period = start_period
        self.on_failure = on_failure


def probe_command(value: str) -> list[str]:
    """The probe's argv: a JSON array of strings (exec form), else a shell command."""
    if value.lstrip().startswith("["):
        from sdshim import leanjson

        argv = leanjson.loads(value)
        if not isinstance(argv, list) or not argv or \
                not all(isinstance(a, str) for a in argv):
            raise ValueError("a health command in JSON is a non-empty array of strings")
        return argv
    if not value.strip():
        raise ValueError("the health command is empty")
    return ["/bin/sh", "-c", value]


class Change:
    """A change of health status: one journal entry, one status text update."""

    def __init__(self, old: str, new: str, action: str) -> None:
        self.old = old
        self.new = new
        # The --health-on-failure action to take now ("none" too: nothing to do).
        self.action = action


class Health:
    def __init__(self, config: HealthConfig, started: float) -> None:
        """started: when the container's command started (monotonic seconds)."""
        self.config = config
        self.started = started
        self.status = STARTING
        self.failing_streak = 0
        self.results: list[dict[str, Any]] = []
        self.due = started + config.interval  # when the next probe starts
        self.running_since: float | None = None  # a probe is running

    def probe_started(self, now: float) -> float:
        """A probe starts now; its deadline (kill it then, and call probe_ended)."""
        self.running_since = now
        return now + self.config.timeout

    def probe_ended(self, now: float, exit_code: int | None, output: bytes,
                    timed_out: bool = False, *, wall_start: str = "",
                    wall_end: str = "") -> Change | None:
        """A probe ended (exit_code None: it could not run, or was killed); the change of
        status this makes, if any. wall_start/wall_end: times for the record."""
        began = self.running_since if self.running_since is not None else now
        self.running_since = None
        self.due = now + self.config.interval
        ok = exit_code == 0 and not timed_out
        text = output[-OUTPUT_TAIL:].decode(errors="replace")
        if timed_out:
            text = (text + "\n" if text else "") + \
                f"probe timed out after {_seconds(self.config.timeout)} and was killed"
        self.results.append({"start": wall_start, "end": wall_end,
                             "exit_code": exit_code, "timed_out": timed_out,
                             "output": text})
        del self.results[:-KEEP_RESULTS]
        old = self.status
        if ok:
            self.failing_streak = 0
            self.status = HEALTHY
        elif self.status == STARTING and began < self.started + self.config.start_period:
            pass  # still starting up: does not count
        else:
            self.failing_streak += 1
            if self.failing_streak >= self.config.retries:
                self.status = UNHEALTHY
        if self.status == old:
            return None
        return Change(old, self.status,
                      self.config.on_failure if self.status == UNHEALTHY else "none")

    def record(self) -> dict[str, Any]:
        """For `sdshim status` (health.json): status, failing streak, last results."""
        return {"status": self.status, "failing_streak": self.failing_streak,
                "log": list(self.results)}


def _seconds(value: float) -> str:
    return f"{value:g}s"
