"""The one place where sdshim starts other programs (always an argv list, never a shell)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence

from sdshim.errors import SdshimError

# The monitor imports this module: asyncio would cost its start-up ~15 ms, typing ~2 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import IO, Any


class CommandError(SdshimError):
    """A program sdshim ran could not be started or failed."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv to completion; raise CommandError naming the program on failure."""
    out = subprocess.PIPE if capture and stdout is None else stdout
    err = subprocess.PIPE if capture and stderr is None else stderr
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            stdin=stdin if input is None else None,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise CommandError(f"{argv[0]}: program not found; install it or fix PATH") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"{' '.join(argv)}: timed out after {timeout}s") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or b"").decode(errors="replace").strip()
        raise CommandError(
            f"{' '.join(argv)} failed with status {proc.returncode}"
            + (f": {detail}" if detail else "")
        )
    return proc


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    pass_fds: Sequence[int] = (),
    new_session: bool = False,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv in the background; preexec runs in the child just before the exec."""
    try:
        return subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=new_session,
            preexec_fn=preexec,
        )
    except FileNotFoundError as e:
        raise CommandError(f"{argv[0]}: program not found; install it or fix PATH") from e


def environ_without(*keys: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in keys}


async def start_async(argv: Sequence[str], *, stdout: int = subprocess.PIPE,
                      stdin: int = subprocess.DEVNULL) -> asyncio.subprocess.Process:
    """Start argv under asyncio, its stdout a pipe to read from."""
    import asyncio

    try:
        return await asyncio.create_subprocess_exec(*argv, stdin=stdin, stdout=stdout)
    except FileNotFoundError as e:
        raise CommandError(f"{argv[0]}: program not found; install it or fix PATH") from e
