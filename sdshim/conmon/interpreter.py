"""The python3 the monitor runs as, under the name `conmon`.

podman and its tests look at the monitor's executable (`readlink /proc/PID/exe` must
end in /conmon), and a script's exe is its interpreter. So the monitor is started
through a hard link of the running interpreter named conmon (a copy where a link
cannot be made): the same binary, one inode, no compiled launcher. The link is
checked on every start and replaced when the interpreter was upgraded, so a new
monitor never runs an interpreter the package manager has replaced; running
monitors keep theirs (the old inode), as they keep the code they started with.

A python finds its standard library from where its executable lies; for a link
elsewhere, `pyvenv.cfg` beside it names the real one's directory (`home`), as a
venv's does. Each interpreter gets a directory of its own (the crc of its path), so
two pythons on one host never take turns replacing one link.
"""

from __future__ import annotations

import posix
import sys

from sdshim import leanos

LINK_DIRS = ("/usr/libexec/sdshim/bin", "/run/sdshim-conmon/bin")
NAME = "conmon"
# The monitor's start: -I (no PYTHON* variables, no user site: podman's environment
# is the container engine's, not ours), -S (no site: the package root comes first).
BOOT = ("import sys; sys.path.insert(0, {root!r}); "
        "from sdshim.conmon.monitor import main; sys.exit(main(sys.argv[1:]))")


class InterpreterError(Exception):
    pass


def package_root() -> str:
    import sdshim

    return leanos.dirname(leanos.dirname(sdshim.__file__ or ""))


def ensure() -> str:
    """The path of a `conmon` that is this interpreter, made if need be."""
    import zlib

    real = leanos.realpath(sys.executable)
    want = posix.stat(real)
    errors = []
    tag = f"{zlib.crc32(real.encode()):08x}"
    for base in LINK_DIRS:
        directory = leanos.join(base, tag)
        path = leanos.join(directory, NAME)
        try:
            st = posix.stat(path)
            # the link itself, or a copy of this very file (copy2 keeps the mtime)
            if (st.st_ino, st.st_dev) == (want.st_ino, want.st_dev) or (
                    st.st_size, st.st_mtime_ns) == (want.st_size, want.st_mtime_ns):
                return path
        except FileNotFoundError:
            pass
        try:
            leanos.makedirs(directory, 0o755)
            cfg = leanos.join(directory, "pyvenv.cfg")
            tmp = f"{cfg}.{posix.getpid()}"
            with open(tmp, "w") as f:
                f.write(f"home = {leanos.dirname(real)}\ninclude-system-site-packages = "
                        "false\n")
            posix.rename(tmp, cfg)
            tmp = f"{path}.{posix.getpid()}"
            try:
                posix.link(real, tmp)
            except OSError:
                import shutil  # another file system: a copy

                shutil.copy2(real, tmp)
            posix.rename(tmp, path)
            return path
        except OSError as e:
            errors.append(f"{directory}: {e}")
    raise InterpreterError("cannot make the monitor's interpreter: " + "; ".join(errors))


def argv(path: str, socket_path: str) -> list[str]:
    return [path, "-I", "-S", "-c", BOOT.format(root=package_root()), socket_path]
