"""Why a container whose readiness comes from inside (--sdnotify container|healthy)
did not get ready: the CLI's and the Python API's words for a failed start job.

The monitor sends no READY=1 of its own in those modes, so the start job fails when
the container exits first (systemd's result: protocol) or when TimeoutStartSec passes
(result: timeout; systemd then stops the monitor, which stops the container).
"""

from __future__ import annotations

from sdshim import leanos, rundir
from sdshim.errors import EXIT_RUNTIME, CreateError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sdshim.leanos import StrPath

USEC = 1_000_000


def not_ready_error(directory: StrPath, what: str, unit: str,
                    props: dict[str, Any] | None) -> CreateError | None:
    """The error for a start job that failed without a recorded error, if readiness
    explains it; None otherwise (the caller has other words)."""
    state = rundir.read_json(leanos.join(directory, "state.json")) or {}
    mode = state.get("sdnotify", "monitor")
    if mode == "monitor":
        return None
    waited_for = ("it never sent READY=1 to $NOTIFY_SOCKET" if mode == "container"
                  else "no health check passed")
    props = props or {}
    if props.get("Result") == "timeout":
        usec = props.get("TimeoutStartUSec")
        limit = f" ({usec / USEC:g}s)" if isinstance(usec, int) and usec else ""
        return CreateError(f"{what} did not get ready within TimeoutStartSec{limit}: "
                           f"{waited_for} (--sdnotify {mode}); it was stopped. Raise the "
                           f"limit with -p TimeoutStartSec=..., or see `journalctl -u "
                           f"{unit}`", EXIT_RUNTIME)
    exit_record = rundir.read_json(leanos.join(directory, "exit.json"))
    if exit_record is None or exit_record.get("error"):
        return None
    code = exit_record.get("exit_code")
    how = (f"was killed by {exit_record['signal']}" if exit_record.get("signal")
           else f"exited with status {code}")
    return CreateError(f"{what} {how} before it was ready: {waited_for} "
                       f"(--sdnotify {mode})", int(code) if code is not None else EXIT_RUNTIME)
