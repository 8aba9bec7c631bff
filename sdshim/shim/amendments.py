"""What the monitor adds to the container's config: environment and bind mounts.

The bundle is the user's and is never written: the runtime reads the monitor's copy of
config.json in the records directory (/run/sdshim/NAME/bundle/, made by
runtime.write_config), and features that give the container something of systemd's
(a notify socket, WATCHDOG_USEC, LISTEN_FDS, CREDENTIALS_DIRECTORY) amend that copy
through one Amendments object, collected before create and applied once.

Our variables win over the bundle's of the same name: a NOTIFY_SOCKET the bundle sets
would point at nothing the monitor serves.
"""

from __future__ import annotations

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any


class Amendments:
    def __init__(self) -> None:
        self.env: dict[str, str] = {}  # KEY -> value, set in the container
        self.unset: set[str] = set()  # keys removed from the bundle's environment
        self.mounts: list[dict[str, Any]] = []

    def setenv(self, key: str, value: str) -> None:
        if not key or "=" in key:
            raise ValueError(f"invalid environment variable name {key!r}")
        self.unset.discard(key)
        self.env[key] = value

    def unsetenv(self, key: str) -> None:
        self.env.pop(key, None)
        self.unset.add(key)

    def bind(self, source: str, destination: str, *, readonly: bool = True,
             options: tuple[str, ...] = ()) -> None:
        """Bind-mount source (a path on the host) at destination (in the container)."""
        if not destination.startswith("/"):
            raise ValueError(f"mount destination {destination!r} is not absolute")
        opts = ["rbind", "ro" if readonly else "rw", "nosuid", "nodev", *options]
        self.mounts.append({"destination": destination, "type": "bind",
                            "source": source, "options": opts})

    def __bool__(self) -> bool:
        return bool(self.env or self.unset or self.mounts)

    def apply(self, config: dict[str, Any]) -> None:
        """Amend config (config.json's object) in place."""
        if not self:
            return
        process = config.setdefault("process", {})
        drop = self.unset | set(self.env)
        env = [entry for entry in process.get("env") or []
               if isinstance(entry, str) and entry.partition("=")[0] not in drop]
        process["env"] = env + [f"{k}={v}" for k, v in self.env.items()]
        if self.mounts:
            # Appended: later mounts go on top, so ours are not hidden by the bundle's.
            config["mounts"] = [*(config.get("mounts") or []), *self.mounts]
