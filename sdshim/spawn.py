"""The one place where sdshim starts other programs (always an argv list, never a shell)."""

from __future__ import annotations

import posix

from sdshim import leanos
from sdshim.exits import SdshimError

# The monitor imports this module and starts the runtime with launch(): asyncio would
# cost its start-up ~15 ms, subprocess ~2 ms and ~2 MB, typing ~2 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import signal as _signal  # typeshed has no _signal: the same names, typed
    import subprocess
    from collections.abc import Callable, Mapping, Sequence
    from typing import IO, Any
else:
    import _signal  # signal's C half: signal makes enums of it all (~0.9 MB)

# subprocess's values (tests/test_pure.py checks), for callers that do not import it.
PIPE = -1
DEVNULL = -3
# What Python ignores at start-up and subprocess resets for the programs it starts:
# an ignored signal stays ignored across exec (a runtime would never see SIGPIPE).
_RESET_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)


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
    import subprocess

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
    import subprocess

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


def launch(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    preexec: Callable[[], None] | None = None,
    group: bool = False,
) -> int:
    """Start argv in the background, for the monitor; its pid, for the caller to reap.
    stdin, stdout, stderr: an fd, DEVNULL, or None to inherit; group: in a process group
    of its own (its pid), so that a signal reaches what it starts too.

    start() through posix_spawn, without subprocess (~2 MB in every monitor), or, when
    preexec asks for code in the child, fork and exec by hand. It closes no other fds,
    and needs not: Python opens every fd close-on-exec (PEP 446), and so does sdshim.
    """
    environment = leanos.environ() if env is None else env
    if preexec is not None:
        if group:
            raise ValueError("launch: group and preexec together are not supported")
        return _fork_exec(list(argv), environment, (stdin, stdout, stderr), preexec)
    actions: list[tuple[Any, ...]] = []
    for target, fd in enumerate((stdin, stdout, stderr)):
        if fd == DEVNULL:
            actions.append((posix.POSIX_SPAWN_OPEN, target, leanos.DEVNULL_PATH, posix.O_RDWR, 0))
        elif fd is not None:
            actions.append((posix.POSIX_SPAWN_DUP2, fd, target))
    try:
        if group:
            return posix.posix_spawnp(argv[0], list(argv), environment, file_actions=actions,
                                      setsigdef=_RESET_SIGNALS, setpgroup=0)
        return posix.posix_spawnp(argv[0], list(argv), environment,
                                  file_actions=actions, setsigdef=_RESET_SIGNALS)
    except FileNotFoundError as e:
        raise CommandError(f"{argv[0]}: program not found; install it or fix PATH") from e


def call(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
         stdout: int | None = None, stderr: int | None = None) -> int:
    """Run argv to its end, stdin from /dev/null (launch(), without subprocess); its
    Popen-style return code. Reaps its own pid only: fine in a subreaper too."""
    pid = launch(argv, env=env, stdin=DEVNULL, stdout=stdout, stderr=stderr)
    while True:
        try:
            _, status = posix.waitpid(pid, 0)
            return posix.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue


async def call_async(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
    """call() under asyncio (stdio to /dev/null); the return code."""
    proc = await start_async(argv, env=env, stdout=DEVNULL, stderr=DEVNULL)
    return await proc.wait()


def _fork_exec(argv: list[str], env: Mapping[str, str], fds: tuple[int | None, ...],
               preexec: Callable[[], None]) -> int:
    """posix_spawn's work by hand, with preexec() in the child just before the exec. The
    child's failure comes back through a close-on-exec pipe, as with subprocess."""
    path = _which(argv[0], env)
    if path is None:
        raise CommandError(f"{argv[0]}: program not found; install it or fix PATH")
    r, w = posix.pipe2(posix.O_CLOEXEC)
    pid = posix.fork()
    if pid == 0:  # the child: nothing here may return
        try:
            for sig in _RESET_SIGNALS:
                _signal.signal(sig, _signal.SIG_DFL)
            for target, fd in enumerate(fds):
                if fd == DEVNULL:
                    fd = posix.open(leanos.DEVNULL_PATH, posix.O_RDWR)
                if fd is not None:
                    posix.dup2(fd, target)
            preexec()
            posix.execve(path, argv, env)
        except BaseException as e:
            try:
                posix.write(w, str(e).encode(errors="replace")[:4000] or b"failed")
            finally:
                posix._exit(127)
    posix.close(w)
    try:
        message = posix.read(r, 4096)  # nothing: the exec closed the pipe
    finally:
        posix.close(r)
    if message:
        posix.waitpid(pid, 0)
        raise CommandError(f"{argv[0]}: {message.decode(errors='replace')}")
    return pid


def which(program: str) -> str | None:
    """shutil.which without shutil (and the compression modules it loads): the
    executable file program names, through PATH unless it is a path."""
    if "/" in program:
        ok = posix.access(program, posix.X_OK) and not leanos.isdir(program)
        return program if ok else None
    return _which(program, {"PATH": leanos.getenv("PATH")} if leanos.getenv("PATH") else {})


def _which(program: str, env: Mapping[str, str]) -> str | None:
    if "/" in program:
        return program
    for directory in env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                             "/sbin:/bin").split(":"):
        candidate = leanos.join(directory or ".", program)
        if posix.access(candidate, posix.X_OK) and not leanos.isdir(candidate):
            return candidate
    return None


def environ_without(*keys: str) -> dict[str, str]:
    """os.environ less keys (what this process has set included; the monitor, which
    sets nothing and does not load os, uses leanos.environ)."""
    import os

    return {k: v for k, v in os.environ.items() if k not in keys}


async def start_async(argv: Sequence[str], *, stdout: int = PIPE, stdin: int = DEVNULL,
                      stderr: int | None = None,
                      env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    """Start argv under asyncio, its stdout a pipe to read from (stderr: inherited)."""
    import asyncio

    try:
        return await asyncio.create_subprocess_exec(*argv, stdin=stdin, stdout=stdout,
                                                    stderr=stderr, env=env)
    except FileNotFoundError as e:
        raise CommandError(f"{argv[0]}: program not found; install it or fix PATH") from e
