"""Start latency, inside the test-bed systemd: sdshim against podman, conmon, the floor.

    python3 -m bench.startup SCRATCH [--runs N]

Every method starts the same busybox bundle (`sleep`) and is timed from the call
until the container runs; the containers are removed between runs, untimed, and each
run starts only once the last one's teardown has ended (common.settle). sdshim
is timed as a package installs it (common.installed_cli), monitor included. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from sdshim import spawn
from sdshim.naming import unit_name

Timed = Callable[[int], float]
ZERO = ("--supervisor", "systemd")  # zero-resident: the container is the main process


def sdshim_run(scratch: Path, ready: list[float], cli: list[str],
               env: dict[str, str], extra: tuple[str, ...] = ()) -> Timed:
    """`sdshim run -d` (extra: more options, e.g. --supervisor systemd)."""
    bundle = common.make_bundle(scratch, "sdshim", common.IDLE_ARGS)

    def once(i: int) -> float:
        name = f"bench-{i}-{secrets.token_hex(3)}"
        t0 = time.perf_counter()
        spawn.run([*cli, "run", "-d", *extra, "--name", name, str(bundle)], env=env)
        elapsed = common.ms_since(t0)
        ready.append(exec_to_ready_ms(unit_name(name)))
        spawn.run([*cli, "delete", "--force", name], env=env)
        return elapsed

    return once


def exec_to_ready_ms(unit: str) -> float:
    """The monitor's time from systemd's fork+exec to READY=1 (the unit going active).

    systemd stamps ExecMainStart when it forks the main process, and ActiveEnter when
    READY=1 makes a Type=notify service active; both on the monotonic clock.
    """
    out = spawn.run(["systemctl", "show", "-p", "ExecMainStartTimestampMonotonic",
                     "-p", "ActiveEnterTimestampMonotonic", unit]).stdout.decode()
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return (int(props["ActiveEnterTimestampMonotonic"])
            - int(props["ExecMainStartTimestampMonotonic"])) / 1000


def podman_run(scratch: Path, conmon: str = "") -> Timed:
    """`podman run -d`; with conmon, that program as podman's conmon (`--conmon`)."""
    env = common.podman_env(scratch)
    common.podman_image(scratch, env)
    select = ["--conmon", conmon] if conmon else []

    def once(i: int) -> float:
        name = f"bench-{i}-{secrets.token_hex(3)}"
        t0 = time.perf_counter()
        spawn.run(["podman", *select, "run", "-d", "--network", "none", "--name", name,
                   common.IMAGE, *common.IDLE_ARGS], env=env, timeout=60)
        elapsed = common.ms_since(t0)
        spawn.run(["podman", "rm", "--force", "--time", "0", name], env=env, timeout=60)
        return elapsed

    return once


def conmon_run(scratch: Path, sync: list[float]) -> Timed:
    def once(_i: int) -> float:
        c = common.Conmon(scratch, secrets.token_hex(32))
        c.launch()
        if not c.read_sync():
            raise spawn.CommandError("conmon reported no container pid")
        sync.append(common.ms_since(c.started_at))
        spawn.run(c.start_argv())
        elapsed = common.ms_since(c.started_at)
        common.runc_delete([c.cid])
        return elapsed

    return once


def runc_floor(scratch: Path) -> Timed:
    bundle = common.make_bundle(scratch, "runc", common.IDLE_ARGS)

    def once(_i: int) -> float:
        cid = secrets.token_hex(8)
        t0 = time.perf_counter()
        spawn.run(["runc", "create", "--bundle", str(bundle), cid], stdin=subprocess.DEVNULL,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spawn.run(["runc", "start", cid])
        elapsed = common.ms_since(t0)
        common.runc_delete([cid])
        return elapsed

    return once


def systemd_run_floor(scratch: Path) -> Timed:
    bundle = common.make_bundle(scratch, "systemd-run", ["true"])

    def once(_i: int) -> float:
        cid = secrets.token_hex(8)
        t0 = time.perf_counter()
        spawn.run(["systemd-run", "--wait", "--quiet", "--collect", "-p", "Type=exec",
                   "runc", "run", "--bundle", str(bundle), cid], stdin=subprocess.DEVNULL)
        return common.ms_since(t0)

    return once


def measure(scratch: Path, runs: int, only: list[str] | None = None) -> dict[str, Any]:
    ready: list[float] = []
    zero_ready: list[float] = []
    sync: list[float] = []
    cli, env, installed = common.installed_cli(scratch)
    methods: dict[str, Timed] = {
        "sdshim": sdshim_run(scratch, ready, cli, env),
        "sdshim-zero": sdshim_run(scratch, zero_ready, cli, env, ZERO),
        "podman": podman_run(scratch),
        # sdshim-conmon as the packages install it, from the same regular install
        "podman-sdshim": podman_run(scratch, str(common.installed_conmon(scratch))),
        "conmon": conmon_run(scratch, sync),
        "runc": runc_floor(scratch),
        "systemd-run": systemd_run_floor(scratch),
    }
    if only:
        methods = {k: v for k, v in methods.items() if k in only}
    times: dict[str, list[float]] = {k: [] for k in methods}
    settled: dict[str, list[float]] = {k: [] for k in methods}
    steady = common.box_pids()
    # Interleaved, so that a burst of load on a shared machine hits every method alike;
    # each run starts once the one before has ended entirely (common.settle).
    for i in range(runs + 1):
        for key, once in methods.items():
            elapsed = once(i)
            waited = common.settle(steady)
            if i:  # the first round warms caches (page cache, podman's storage)
                times[key].append(elapsed)
                settled[key].append(waited)
        if i:
            common.log(f"start latency: round {i}/{runs}")
    return {
        "sdshim_cli": installed,
        "latency": {k: common.summary(v) for k, v in times.items()},
        "teardown_after": {k: common.summary(v) for k, v in settled.items()},
        "monitor_exec_to_ready": common.summary(ready[1:]),
        "handoff_exec_to_ready": common.summary(zero_ready[1:]),
        "conmon_launch_to_sync": common.summary(sync[1:]),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python3 -m bench.startup")
    p.add_argument("scratch", type=Path)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--only", default="", help="comma-separated methods (default: all)")
    args = p.parse_args()
    common.emit(measure(args.scratch, args.runs, [m for m in args.only.split(",") if m]))


if __name__ == "__main__":
    main()
