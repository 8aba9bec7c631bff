"""Errors. Each carries the exit code the CLI turns it into (docker/podman convention)."""

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


class UsageError(SdshimError):
    exit_code = EXIT_USAGE


class InvalidNameError(UsageError):
    pass


class BundleError(SdshimError):
    """The OCI bundle is missing or unusable."""


class RuntimeNotFoundError(SdshimError):
    """The OCI runtime binary (runc, crun) is not installed."""


class ContainerExistsError(SdshimError):
    pass


class NoSuchContainerError(SdshimError):
    pass


class ContainerStateError(SdshimError):
    """The operation does not fit the container's current state."""


class CreateError(SdshimError):
    """The runtime failed to create or start the container; message is the runtime's."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SystemdError(SdshimError):
    """systemd refused a request or is not reachable."""
