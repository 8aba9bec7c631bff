"""Creating a container: the checks and errors Manager.create (asyncio, dbus-fast) and
the CLI's blocking path share, and that blocking path itself.

`sdshim create` and `run -d` only start a unit and wait for its job; here that costs
no asyncio and no D-Bus library (sdshim.units.systemd1), which is most of what the
command used to spend before it did anything.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from sdshim import naming, records
from sdshim.errors import (
    BundleError,
    ContainerExistsError,
    CreateError,
    RuntimeNotFoundError,
    SdshimError,
    SystemdError,
)
from sdshim.signals import signal_number
from sdshim.units.connection import BusCallError
from sdshim.units.spec import ContainerSpec
from sdshim.units.systemd1 import UNIT_EXISTS, BlockingSystemd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The OCI image spec's annotation for the stop signal (docker's STOPSIGNAL); runtime
# configs have no field of their own for it.
STOP_SIGNAL_ANNOTATION = "org.opencontainers.image.stopSignal"


def resolve_runtime(runtime: str) -> str:
    path = shutil.which(runtime)
    if path is None:
        raise RuntimeNotFoundError(
            f"OCI runtime {runtime!r} not found; install runc or crun, "
            "or pass --runtime with the runtime's path")
    return str(Path(path).resolve())


def check_bundle(bundle: Path) -> tuple[Path, dict[str, Any]]:
    """The bundle's absolute path and config, if it is a directory with a usable one."""
    bundle = bundle.absolute()
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist or is not a directory; "
                          "give the directory that holds config.json and the rootfs")
    config_path = bundle / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle} has no config.json; create one with "
                          f"`runc spec --bundle {bundle}`") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {config_path}: {e}") from None
    args = config.get("process", {}).get("args") if isinstance(config, dict) else None
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise BundleError(f"{config_path} has no command: set process.args to a "
                          "non-empty list of strings")
    return bundle, config


def bundle_stop_signal(config: dict[str, Any], config_path: Path) -> int:
    """The stop signal the bundle asks for in its annotations; SIGTERM if none."""
    annotations = config.get("annotations")
    value = annotations.get(STOP_SIGNAL_ANNOTATION) if isinstance(annotations, dict) else None
    if value is None:
        return int(signal.SIGTERM)
    try:
        return signal_number(str(value))
    except ValueError as e:
        raise BundleError(f"{config_path}: annotation {STOP_SIGNAL_ANNOTATION}: {e}; "
                          "fix it or pass --stop-signal") from None


def container_spec(bundle: Path, name: str | None, runtime: str, start: bool,
                   options: dict[str, Any]) -> ContainerSpec:
    """The checked spec of a new container (see Manager.create for the options)."""
    name = naming.validate_name(name) if name else naming.generate_name()
    bundle, config = check_bundle(bundle)
    if options.get("stop_signal") is None:
        options = {**options, "stop_signal": bundle_stop_signal(config, bundle / "config.json")}
    spec = ContainerSpec(name=name, id=naming.generate_id(), bundle=bundle,
                         runtime=resolve_runtime(runtime), start=start, **options)
    if records.container_dir(name).exists():
        raise exists_error(name)
    return spec


def exists_error(name: str) -> ContainerExistsError:
    return ContainerExistsError(f"container {name} already exists; delete it with "
                                f"`sdshim delete {name}` or choose another --name")


def refused_error(unit: str, e: BusCallError, name: str = "") -> SdshimError:
    """systemd's answer to StartTransientUnit, for the user. A unit of that name that
    systemd still has loaded (even ended) is an existing container."""
    if name and e.name == UNIT_EXISTS:
        return exists_error(name)
    return SystemdError(f"systemd refused to start {unit}: {e}")


def recorded_error(directory: Path) -> CreateError | None:
    """Why the monitor whose records are in directory failed, as it recorded it."""
    exit_record = records.read_json(directory / "exit.json")
    if exit_record and exit_record.get("error"):
        return CreateError(str(exit_record["error"]), int(exit_record.get("exit_code") or 125))
    return None


def unit_error(unit: str, what: str, result: str, props: dict[str, Any] | None) -> CreateError:
    """Why a monitor that left no record did not get ready: systemd's word (props)."""
    props = props or {}
    detail = props.get("StatusText") or f"job {result}, result {props.get('Result')}"
    return CreateError(f"{what} failed to start: {detail}; see `journalctl -u {unit}`")


def create(bundle: Path, *, name: str | None = None, runtime: str = "runc",
           start: bool = False, **options: Any) -> str:
    """Manager.create over a blocking connection; the container's name. The job ends
    at READY=1, or when the unit fails or its start times out (TimeoutStartSec)."""
    spec = container_spec(bundle, name, runtime, start, options)
    with BlockingSystemd.connect() as systemd:
        try:
            result = systemd.start_transient(spec.unit, spec.unit_properties())
        except BusCallError as e:
            raise refused_error(spec.unit, e, spec.name) from None
        if result != "done":
            raise (recorded_error(records.container_dir(spec.name))
                   or unit_error(spec.unit, f"container {spec.name}", result,
                                 systemd.unit_properties(spec.unit)))
    return spec.name
