"""systemd service features of a container's unit: socket activation, credentials,
reload (issue 13). What the unit gets; the monitor hands it on to the container
(sdshim.shim.inherited).

Names and D-Bus types as systemd-run sends them (src/shared/bus-unit-util.c):
`Listen` a(ss) on the socket unit, `LoadCredential` a(ss), `SetCredential` a(say).
"""

from __future__ import annotations

import os

from sdshim import leanos, naming
from sdshim.errors import BundleError, UsageError
from sdshim.shim.inherited import own_pid_namespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from sdshim.units.spec import Property

# --socket KEY=VALUE: the Listen*= kinds (D-Bus: Listen a(ss), the kind without "Listen").
LISTEN_KINDS = ("ListenStream", "ListenDatagram", "ListenSequentialPacket")
# Other socket settings: KEY -> (D-Bus name, signature, parser).
SOCKET_SETTINGS: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "FileDescriptorName": ("FileDescriptorName", "s", str),
    "Backlog": ("Backlog", "u", int),
    "SocketMode": ("SocketMode", "u", lambda v: int(v, 8)),
    "ReusePort": ("ReusePort", "b", lambda v: _boolean(v)),
    "BindIPv6Only": ("BindIPv6Only", "s", str),
    "FreeBind": ("FreeBind", "b", lambda v: _boolean(v)),
}
SOCKET_NEEDS_DETACH = ("--socket goes with `run -d`: the socket starts the container on "
                       "the first connection")
# systemd's CREDENTIAL_NAME_MAX is NAME_MAX; a credential is a file name.
CREDENTIAL_NAME_MAX = 255
# systemd 252 refuses credentials above 1 MiB (CREDENTIAL_SIZE_MAX).
CREDENTIAL_SIZE_MAX = 1 << 20


def _boolean(value: str) -> bool:
    if value.lower() in ("1", "yes", "true", "on"):
        return True
    if value.lower() in ("0", "no", "false", "off"):
        return False
    raise ValueError("expected yes or no")


class Features:
    """The socket, credentials and reload settings of one container, checked."""

    def __init__(self, sockets: Sequence[str] = (), credentials: Sequence[str] = (),
                 set_credentials: Sequence[str] = (), reload_signal: int = 0) -> None:
        self.listen: list[tuple[str, str]] = []
        self.socket_props: list[Property] = []
        for item in sockets:
            self._add_socket_setting(item)
        if self.socket_props and not self.listen:
            raise UsageError("--socket needs at least one ListenStream=, ListenDatagram= or "
                             "ListenSequentialPacket=, e.g. --socket ListenStream=8080")
        self.load: list[tuple[str, str]] = [_load_credential(c) for c in credentials]
        self.set: list[tuple[str, bytes]] = [_set_credential(c) for c in set_credentials]
        names = [n for n, _ in self.load] + [n for n, _ in self.set]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UsageError(f"credential {sorted(dup)[0]!r} given twice; each name once")
        self.reload_signal = reload_signal

    def _add_socket_setting(self, item: str) -> None:
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise UsageError(f"invalid --socket {item!r}: use KEY=VALUE, e.g. "
                             "ListenStream=8080 or ListenStream=/run/web.sock")
        if key in LISTEN_KINDS:
            self.listen.append((key.removeprefix("Listen"), value))
            return
        if key == "Accept":
            if _boolean(value):
                raise UsageError("--socket Accept=yes is not supported: it needs one "
                                 "container per connection; the container accepts itself")
            return
        if key not in SOCKET_SETTINGS:
            raise UsageError(f"unsupported --socket setting {key!r}; supported: "
                             + ", ".join([*LISTEN_KINDS, *SOCKET_SETTINGS]))
        dbus_name, sig, parse = SOCKET_SETTINGS[key]
        try:
            self.socket_props.append((dbus_name, sig, parse(value)))
        except ValueError as e:
            raise UsageError(f"invalid --socket {item!r}: {e}") from None

    def check_config(self, config: dict[str, Any], path: str) -> None:
        """What the bundle must have for these features (the monitor checks again)."""
        if self.socket_activated and not own_pid_namespace(config):
            raise BundleError(f"{path}: socket activation needs the container in a PID "
                              "namespace of its own (its command gets LISTEN_PID=1): add "
                              '{"type": "pid"} to linux.namespaces')

    @property
    def socket_activated(self) -> bool:
        return bool(self.listen)

    def socket_unit(self, container: str) -> str:
        return naming.unit_name(container).removesuffix(".service") + ".socket"

    def socket_properties(self, container: str) -> list[Property]:
        """The transient socket unit: it starts the container's service (same name)."""
        return [("Description", "s", f"sdshim container {container} (socket)"),
                ("Listen", "a(ss)", self.listen), *self.socket_props]

    def service_properties(self, reload_argv: list[str]) -> list[Property]:
        props: list[Property] = []
        if self.load:
            props.append(("LoadCredential", "a(ss)", self.load))
        if self.set:
            props.append(("SetCredential", "a(say)", self.set))
        if self.reload_signal:
            props.append(("ExecReload", "a(sasb)", [[reload_argv[0], reload_argv, False]]))
        return props

    def monitor_args(self) -> list[str]:
        return ["--reload-signal", str(self.reload_signal)] if self.reload_signal else []


def _credential_name(name: str, option: str, item: str) -> str:
    if not name or name in (".", "..") or "/" in name or len(name) > CREDENTIAL_NAME_MAX:
        raise UsageError(f"invalid {option} {item!r}: the name becomes a file name: "
                         "1-255 characters, no '/'")
    return name


def _load_credential(item: str) -> tuple[str, str]:
    name, sep, path = item.partition(":")
    if not sep or not path:
        raise UsageError(f"invalid --credential {item!r}: use NAME:PATH, e.g. "
                         "--credential dbpass:/etc/web/dbpass")
    _credential_name(name, "--credential", item)
    p = leanos.absolute(path)
    if not leanos.exists(p):
        raise UsageError(f"--credential {name}: {p} does not exist; give the file that "
                         "holds the credential")
    if leanos.isfile(p) and os.stat(p).st_size > CREDENTIAL_SIZE_MAX:
        raise UsageError(f"--credential {name}: {p} is larger than 1 MiB, systemd's limit")
    return name, p


def _set_credential(item: str) -> tuple[str, bytes]:
    name, sep, value = item.partition(":")
    if not sep:
        raise UsageError("invalid --set-credential: use NAME:VALUE")  # never echo a value
    _credential_name(name, "--set-credential", name)
    data = value.encode()
    if len(data) > CREDENTIAL_SIZE_MAX:
        raise UsageError(f"--set-credential {name}: the value is larger than 1 MiB")
    return name, data
