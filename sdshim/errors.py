"""Errors. Each carries the exit code the CLI turns it into (docker/podman convention)."""

from __future__ import annotations

# The exit codes and the base class live in sdshim.exits, which the monitor imports
# (it needs none of the classes below: each costs every container memory).
from sdshim.exits import (
    EXIT_NO_RESTART,
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_RUNTIME,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    SdshimError,
)

__all__ = [
    "EXIT_NOT_EXECUTABLE",
    "EXIT_NOT_FOUND",
    "EXIT_NO_RESTART",
    "EXIT_RUNTIME",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "BundleError",
    "ContainerExistsError",
    "ContainerStateError",
    "CreateError",
    "Interrupted",
    "InvalidNameError",
    "NoSuchContainerError",
    "RuntimeNotFoundError",
    "SdshimError",
    "SystemdError",
    "UsageError",
]


class Interrupted(Exception):
    """A signal ended an attached session (sdshim.units.terminal); the CLI exits 128 +
    signum. Not an SdshimError: no message, the signal says it all."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


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
