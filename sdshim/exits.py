"""Exit codes, and the base class of sdshim's errors (sdshim.errors has the rest).

Apart from sdshim.errors because the monitor needs these alone.
"""

from __future__ import annotations

# Exit codes: 125 = sdshim or runtime failed, 126 = command not executable,
# 127 = command not found, 124 = `exec --timeout` ran out (as timeout(1) does).
# Usage errors exit 2 like argparse.
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_RUNTIME = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
# The monitor's status, on units with a restart policy, when systemd must not restart
# the unit (RestartPreventExitStatus): the container never ran, or was stopped on
# request. The container's own status is in the exit record, as always.
EXIT_NO_RESTART = 251


class SdshimError(Exception):
    """Base class: a message fit for the user, and an exit code."""

    exit_code = EXIT_RUNTIME
