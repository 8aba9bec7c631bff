"""The bundle's config.json as sdshim-conmon reads and amends it: the container's cgroup.

podman gives its systemd cgroupsPath (`machine.slice:libpod:ID`, runc's
--systemd-cgroup form); in the container's own unit the container goes in that unit's
container/ leaf instead (sdshim.shim.cgroup.split), an absolute path without
--systemd-cgroup.
"""

from __future__ import annotations

from sdshim import leanjson, leanos
from sdshim.conmon.exitfile import write_atomically

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _load(config_path: str) -> Any:
    with open(config_path, "rb") as f:
        return leanjson.loads(f.read().decode())


def cgroups_path(bundle: str) -> str:
    """linux.cgroupsPath, or '' if the config has none or cannot be read."""
    try:
        config = _load(leanos.join(bundle, "config.json"))
        return str(config.get("linux", {}).get("cgroupsPath") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def set_cgroups_path(bundle: str, path: str) -> None:
    config_path = leanos.join(bundle, "config.json")
    config = _load(config_path)
    config.setdefault("linux", {})["cgroupsPath"] = path
    write_atomically(config_path, leanjson.dumps(config).encode(), 0o600)
