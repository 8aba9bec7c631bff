"""The unit's ExecStopPost= step that removes its cgroup directories systemd does not.

On a hybrid or legacy (cgroup v1) host the runtime makes the container's cgroup,
`<slice>/<unit>/container`, in every v1 hierarchy, those systemd does not manage
(cpuset, freezer, perf_event, ...) included. The runtime's delete removes only the
`container` leaf, and systemd removes the unit's directories only in the hierarchies it
manages, so each container would leave an empty `<unit>` directory behind in the
others, one per container for the life of the host. This step runs when the unit's
processes are gone (after the runtime's delete: the monitor's own, the stop step's, or
podman's exit command, which an ExitType=cgroup unit waits for) and removes what is
empty there. rmdir removes only empty cgroups, so it cannot take anything that still
runs; where systemd manages the hierarchy the step itself is inside the unit and the
rmdir fails, and systemd trims it as before. On a unified-only host (cgroup v2) there
is one hierarchy, which systemd manages: the transient units get no such step, and the
template's ends at once.

sh, not Python: it runs once at every container's end, and one line of sh is a
fraction of an interpreter's start. The unit's path is the step's own cgroup (systemd
runs it in the unit, in `.control` when delegated), so a Slice= of the user's or of
podman's needs nothing here.
"""

from __future__ import annotations

from sdshim import leanos

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sdshim.units.spec import Property

SH = "/bin/sh"
CGROUP_FS = "/sys/fs/cgroup"
# As sh reads it. systemd expands $VAR in a command's arguments ($$ is a $), and a unit
# file also % specifiers (%% is a %): see transient_argv and template_line.
SCRIPT = (
    '[ -e /sys/fs/cgroup/cgroup.controllers ] && exit 0; '
    'while IFS=: read -r _ k p; do case $k in ""|name=systemd) ;; *) continue;; esac; '
    'p=${p%/.control}; case $p in */*.service) ;; *) exit 0;; esac; '
    'for h in /sys/fs/cgroup/*/; do d=$h${p#/}; '
    '[ -d "$d" ] && rmdir "$d/container" "$d/supervisor" "$d"; done; exit 0; '
    'done </proc/self/cgroup 2>/dev/null; exit 0')
NAME = "sdshim-cgroup-trim"  # the script's $0: what `systemctl status` shows


def transient_argv() -> list[str]:
    return [SH, "-c", SCRIPT.replace("$", "$$"), NAME]


def template_line() -> str:
    """The ExecStopPost= line of systemd/sdshim@.service ('-': a failure is no
    failure of the unit, though the script exits 0 anyway)."""
    script = SCRIPT.replace("$", "$$").replace("%", "%%")
    return f"ExecStopPost=-{SH} -c '{script}' {NAME}"


def unified_only(root: str = CGROUP_FS) -> bool:
    """Whether this host has only the unified hierarchy (cgroup v2), no v1 ones."""
    return leanos.exists(leanos.join(root, "cgroup.controllers"))


def add_to(props: list[Property], root: str = CGROUP_FS) -> list[Property]:
    """props with the step as the unit's last ExecStopPost= command, where needed."""
    if unified_only(root):
        return props
    argv = transient_argv()
    command = [argv[0], argv, True]
    for i, (name, sig, value) in enumerate(props):
        if name == "ExecStopPost":
            return [*props[:i], (name, sig, [*value, command]), *props[i + 1:]]
    return [*props, ("ExecStopPost", "a(sasb)", [command])]
