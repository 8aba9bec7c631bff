"""Creating a container: the checks Manager.create (asyncio, dbus-fast) and the CLI's
blocking path share, the start of its unit (the calls and errors are the protocol
core's, sdshim.units.systemd1.UnitStart), and that blocking path itself.

`sdshim create` and `run -d` only start a unit and wait for its job; here that costs
no asyncio and no D-Bus library (sdshim.units.systemd1), which is most of what the
command used to spend before it did anything.
"""

from __future__ import annotations

import os
import time

from sdshim import leanjson, leanos, naming, rundir, signals, spawn
from sdshim.errors import BundleError, RuntimeNotFoundError, SdshimError
from sdshim.units import direct
from sdshim.units.blockingbus import BlockingSystemd
from sdshim.units.spec import ContainerSpec
from sdshim.units.systemd1 import UnitStart, exists_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sdshim.leanos import StrPath

# The OCI image spec's annotation for the stop signal (docker's STOPSIGNAL); runtime
# configs have no field of their own for it.
STOP_SIGNAL_ANNOTATION = "org.opencontainers.image.stopSignal"


def resolve_runtime(runtime: str) -> str:
    path = spawn.which(runtime)
    if path is None:
        raise RuntimeNotFoundError(
            f"OCI runtime {runtime!r} not found; install runc or crun, "
            "or pass --runtime with the runtime's path")
    return leanos.realpath(leanos.absolute(path))


def check_bundle(path: StrPath) -> tuple[str, dict[str, Any]]:
    """The bundle's absolute path and config, if it is a directory with a usable one."""
    bundle = leanos.absolute(path)
    if not leanos.isdir(bundle):
        raise BundleError(f"bundle {bundle} does not exist or is not a directory; "
                          "give the directory that holds config.json and the rootfs")
    config_path = leanos.join(bundle, "config.json")
    try:
        with open(config_path, "rb") as f:
            config = leanjson.loads(f.read().decode())
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


def bundle_stop_signal(config: dict[str, Any], config_path: str) -> int:
    """The stop signal the bundle asks for in its annotations; SIGTERM if none."""
    annotations = config.get("annotations")
    value = annotations.get(STOP_SIGNAL_ANNOTATION) if isinstance(annotations, dict) else None
    if value is None:
        return signals.SIGTERM
    try:
        return signals.signal_number(str(value))
    except ValueError as e:
        raise BundleError(f"{config_path}: annotation {STOP_SIGNAL_ANNOTATION}: {e}; "
                          "fix it or pass --stop-signal") from None


def container_spec(bundle: StrPath, name: str | None, runtime: str, start: bool,
                   options: dict[str, Any]) -> ContainerSpec:
    """The checked spec of a new container (see Manager.create for the options)."""
    name = naming.validate_name(name) if name else naming.generate_name()
    bundle, config = check_bundle(bundle)
    if options.get("stop_signal") is None:
        options = {**options, "stop_signal": bundle_stop_signal(
            config, leanos.join(bundle, "config.json"))}
    spec = ContainerSpec(name=name, id=naming.generate_id(), bundle=bundle,
                         runtime=resolve_runtime(runtime), start=start, **options)
    spec.features.check_config(config, leanos.join(bundle, "config.json"))
    if leanos.exists(rundir.container_dir(name)):
        raise exists_error(name)
    return spec


def unit_start(spec: ContainerSpec) -> UnitStart:
    """Starting the container's unit: the job and its errors (sdshim.units.systemd1)."""
    unit, props, aux = spec.transient_units()
    return UnitStart(unit, props, what=f"container {spec.name}",
                     directory=rundir.container_dir(spec.name), name=spec.name, aux=aux)


def create(bundle: StrPath, *, name: str | None = None, runtime: str = "runc",
           start: bool = False, **options: Any) -> str:
    """Manager.create over a blocking connection; the container's name. The job ends
    at READY=1, or when the unit fails or its start times out (TimeoutStartSec)."""
    spec = container_spec(bundle, name, runtime, start, options)
    if not spec.direct:
        with BlockingSystemd.connect() as systemd:
            systemd.start_unit(unit_start(spec))
        return spec.name
    direct.prepare(spec)
    starting = unit_start(spec)
    try:
        systemd = BlockingSystemd.connect()
    except BaseException:
        direct.discard(spec)
        raise
    with systemd:
        try:
            systemd.start_unit(starting)
        except BaseException:
            if starting.refused_call:
                direct.discard(spec)
            raise
        pid = direct.record_created(spec.name)
        if start:
            start_direct(systemd, spec.name, pid, {"runtime": spec.runtime, "id": spec.id})
    return spec.name


def start_direct(systemd: BlockingSystemd, name: str, pid: int,
                 state: dict[str, Any]) -> None:
    """`runc start` of a created container of the direct start (sdshim.units.direct),
    and the exec check; raises why its command did not run. (Manager.start_direct is
    the same on asyncio.)"""
    start = direct.Start(name, state)
    lock = start.hold()
    try:
        code = spawn.call(start.argv, env=start.env, stdout=spawn.DEVNULL,
                          stderr=spawn.DEVNULL)
    finally:
        os.close(lock)
    failed = start.error(code)
    if failed is not None:
        try:  # noqa: SIM105 (the blocking path does not import contextlib)
            systemd.kill(naming.unit_name(name), "main", signals.SIGKILL)
        except SdshimError:
            pass  # it ended meanwhile
        raise failed
    check = direct.ExecCheck(start.rt.path, time.monotonic())
    while check.look(direct.read_exe(pid), time.monotonic()) == direct.PENDING:
        time.sleep(0.001)
    if check.state == direct.RUNNING:
        direct.record_running(name, pid)
        return
    from sdshim.units.blockingmanager import BlockingManager
    from sdshim.units.status import check_started

    check_started(BlockingManager(systemd).wait(name, 30))
