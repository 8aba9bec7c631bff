"""`sdshim exec`: one more process in a running container, as a unit of its own.

sdshim-NAME:exec-ID.service runs the exec monitor (sdshim.shim.execprocess), which
runs `runc exec` and supervises the process; the process joins the container's
cgroup and namespaces. Records go to /run/sdshim/NAME/exec-ID/; output goes to the
journal with the container's fields and SDSHIM_EXEC_ID=ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdshim import naming, records
from sdshim.errors import ContainerStateError, CreateError
from sdshim.units.manager import Manager, control_request, start_monitored
from sdshim.units.spec import monitor_command, monitor_properties, seconds, stdio_flags
from sdshim.units.systemd1 import UnitStart

if TYPE_CHECKING:
    from sdshim.units.spec import Property


@dataclass
class ExecSpec:
    name: str
    container_unit: str
    container_id: str
    exec_id: str
    runtime: str
    bundle: str
    command: list[str]
    interactive: bool = False
    tty: bool = False
    timeout: float = 0.0
    env: list[str] = field(default_factory=list)
    cwd: str = ""
    start: bool = True
    stop_timeout: float = 10.0

    @property
    def unit(self) -> str:
        return naming.exec_unit_name(self.name, self.exec_id)

    def monitor_argv(self) -> list[str]:
        argv = [*monitor_command(), "--name", self.name, "--id", self.container_id,
                "--exec-id", self.exec_id, "--bundle", self.bundle, "--runtime", self.runtime,
                "--unit", self.unit, "--stop-timeout", str(self.stop_timeout)]
        if self.start:
            argv.append("--start")
        if self.timeout:
            argv += ["--timeout", str(self.timeout)]
        for env in self.env:
            argv += ["--env", env]
        if self.cwd:
            argv += ["--cwd", self.cwd]
        return argv + stdio_flags(self.interactive, self.tty) + ["--", *self.command]

    def unit_properties(self) -> list[Property]:
        container_unit = self.container_unit
        props = monitor_properties(
            f"sdshim exec {self.exec_id} in {self.name}: {' '.join(self.command)}"[:200],
            self.monitor_argv(), self.stop_timeout, self.name)
        return [
            *props,
            # The exit record is the result; the unit goes as soon as it has ended.
            ("CollectMode", "s", "inactive-or-failed"),
            # Stopping the container stops its execs first.
            ("BindsTo", "as", [container_unit]),
            ("After", "as", [container_unit]),
        ]


@dataclass
class Exec:
    name: str
    exec_id: str
    unit: str
    dir: Path

    @property
    def what(self) -> str:
        return f"exec {self.exec_id} in container {self.name}"


async def create(m: Manager, name: str, command: list[str], *, start: bool,
                 **options: Any) -> Exec:
    """Start the exec's unit; with start, the process runs once this returns.

    options: interactive, tty, timeout, env, cwd.
    """
    seconds("--timeout", options.get("timeout", 0.0))
    status = await m.status(name)
    if status["state"] != "running":
        raise ContainerStateError(f"container {name} is {status['state']}, not running; "
                                  "exec needs a running container")
    spec = ExecSpec(name=name, container_unit=status["unit"], container_id=status["id"],
                    exec_id=secrets.token_hex(6), runtime=status["runtime"],
                    bundle=status["bundle"], command=command, start=start, **options)
    ex = Exec(name, spec.exec_id, spec.unit, records.exec_dir(name, spec.exec_id))
    try:
        await m.systemd.start_unit(UnitStart(spec.unit, spec.unit_properties(),
                                             what=ex.what, directory=ex.dir))
    except CreateError:
        remove(ex)
        raise
    return ex


async def start(ex: Exec) -> None:
    await start_monitored(ex.dir, ex.what)


async def kill(ex: Exec, signum: int) -> None:
    reply = await control_request(ex.dir, {"op": "kill", "signal": signum}, ex.what)
    if not reply.get("ok"):
        raise ContainerStateError(f"{ex.what}: {reply.get('error')}")


async def wait(m: Manager, ex: Exec) -> dict[str, Any]:
    """The exec's exit record, once it has one."""
    changed = await m.systemd.watch_unit(ex.unit)
    while True:
        changed.clear()
        record = records.read_json(ex.dir / "exit.json")
        if record is not None:
            return record
        props = await m.systemd.service_state(ex.unit)
        if props is None or props.get("ActiveState") in ("inactive", "failed"):
            record = records.read_json(ex.dir / "exit.json")  # written just before the end
            if record is not None:
                return record
            raise ContainerStateError(f"{ex.what}: its monitor ended without recording the "
                                      f"exit status; see `journalctl -u {ex.unit}`")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), 0.5)


def remove(ex: Exec) -> None:
    shutil.rmtree(ex.dir, ignore_errors=True)
