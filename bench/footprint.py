"""Memory and scale, inside the test-bed systemd: sdshim's monitor against conmon.

    python3 -m bench.footprint SCRATCH memory [--idle 50]
    python3 -m bench.footprint SCRATCH scale [--count 200]
    python3 -m bench.footprint SCRATCH soak [--seconds 120]

memory: Pss, Private_Dirty and Rss (smaps_rollup) of the monitor with 1 and with N idle
containers. scale: N containers started at once; wall time until all run, failures,
the monitors' total memory. soak: the monitor's memory under a 1 MB/s log stream,
sampled, with its growth rate. Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import common
from sdshim import spawn
from sdshim.errors import SdshimError
from sdshim.units.manager import Manager

# --- sdshim ----------------------------------------------------------------------------


async def sdshim_start(scratch: Path, count: int, prefix: str,
                       supervisor: str = "sdshim") -> dict[str, Any]:
    """Start count containers at once through the Python API; time until all run.
    supervisor systemd: zero-resident, no monitor (pids then holds none)."""
    bundle = common.make_bundle(scratch, "footprint", common.IDLE_ARGS)
    names = [f"{prefix}-{i}-{secrets.token_hex(2)}" for i in range(count)]
    errors: list[str] = []
    async with await Manager.connect() as m:
        async def one(name: str) -> str | None:
            try:
                return await m.create(bundle, name=name, start=True, supervisor=supervisor)
            except SdshimError as e:
                errors.append(str(e))
                return None

        t0 = time.perf_counter()
        started = await asyncio.gather(*(one(n) for n in names))
        wall = common.ms_since(t0)
        running = [n for n in started if n is not None]
        pids = []
        ok = 0
        for name in running:
            status = await m.status(name)
            if status["state"] == "running" and (status["monitor_pid"]
                                                 or supervisor == "systemd"):
                ok += 1
                if status["monitor_pid"]:
                    pids.append(int(status["monitor_pid"]))
            else:
                errors.append(f"{name}: {status['state']} {status.get('error')}")
    return {"names": running, "pids": pids, "wall_ms": wall, "failures": count - ok,
            "errors": errors[:5]}


def sdshim_resident() -> list[int]:
    """Every process of sdshim's own (monitor, hand-off, stop step) in the box."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"sdshim/shim/" in cmdline or b"sdshim.shim" in cmdline:
            pids.append(int(proc.name))
    return pids


def zero_resident(scratch: Path, count: int, prefix: str) -> dict[str, Any]:
    """count zero-resident containers at once; what of sdshim stays once they run."""
    s = asyncio.run(sdshim_start(scratch, count, prefix, "systemd"))
    time.sleep(0.5)  # hand-offs that sent READY=1 are gone within milliseconds
    left = sdshim_resident()
    totals = common.memory_totals(left)
    per = {k: v / max(1, count) for k, v in totals["total_kb"].items()}
    return {**s, "resident_processes": len(left), "total_kb": totals["total_kb"],
            "mean_kb": per, "n": count}


async def sdshim_delete(names: list[str]) -> None:
    async with await Manager.connect() as m:
        await asyncio.gather(*(m.delete(n, force=True) for n in names))


# --- conmon ----------------------------------------------------------------------------


def conmon_start(scratch: Path, count: int) -> dict[str, Any]:
    """Launch count conmons at once, read every sync pipe, `runc start` them all."""
    peers = [common.Conmon(scratch, secrets.token_hex(32)) for _ in range(count)]
    t0 = time.perf_counter()
    for c in peers:
        c.launch()
    created = [c for c in peers if c.read_sync()]
    starts = [(c, spawn.start(c.start_argv(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
              for c in created]
    errors = [c.error for c in peers if c.error]
    running = []
    for c, proc in starts:
        _, err = proc.communicate()
        if proc.returncode == 0:
            running.append(c)
        else:
            errors.append(err.decode(errors="replace").strip())
    wall = common.ms_since(t0)
    pids = [c.monitor_pid() for c in running]
    return {"cids": [c.cid for c in peers], "pids": [p for p in pids if p],
            "wall_ms": wall, "failures": count - len(running), "errors": errors[:5]}


def conmon_delete(cids: list[str], pids: list[int]) -> None:
    common.runc_delete(cids)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the measurements ---------------------------------------------------------------


def memory(scratch: Path, idle: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for count in (1, idle):
        common.log(f"memory: {count} idle sdshim containers")
        s = asyncio.run(sdshim_start(scratch, count, "mem"))
        result[f"sdshim_{count}"] = {**common.memory_totals(s["pids"]),
                                     "failures": s["failures"]}
        asyncio.run(sdshim_delete(s["names"]))
        common.log(f"memory: {count} idle zero-resident sdshim containers")
        z = zero_resident(scratch, count, "memz")
        result[f"zero_{count}"] = {k: z[k] for k in ("n", "total_kb", "mean_kb",
                                                      "resident_processes", "failures")}
        asyncio.run(sdshim_delete(z["names"]))
        common.log(f"memory: {count} idle conmon containers")
        c = conmon_start(scratch, count)
        result[f"conmon_{count}"] = {**common.memory_totals(c["pids"]),
                                     "failures": c["failures"]}
        conmon_delete(c["cids"], c["pids"])
    return result


def scale(scratch: Path, count: int, rounds: int = 3) -> dict[str, Any]:
    """count containers at once, per method, rounds times, interleaved (a burst of load
    hits every method alike); wall_ms is the median, walls_ms every round's, memory and
    errors from the first round, failures of all rounds."""
    result: dict[str, Any] = {"count": count, "rounds": rounds, "limits": limits()}
    for r in range(rounds):
        common.log(f"scale: round {r + 1}/{rounds}: {count} sdshim containers at once")
        s = asyncio.run(sdshim_start(scratch, count, "scale"))
        _add(result, "sdshim", {"wall_ms": s["wall_ms"], "failures": s["failures"],
                                "errors": s["errors"], **common.memory_totals(s["pids"])})
        asyncio.run(sdshim_delete(s["names"]))
        common.log(f"scale: round {r + 1}/{rounds}: {count} zero-resident containers")
        z = zero_resident(scratch, count, "scalez")
        _add(result, "zero", {"wall_ms": z["wall_ms"], "failures": z["failures"],
                              "errors": z["errors"],
                              "resident_processes": z["resident_processes"],
                              "total_kb": z["total_kb"]})
        asyncio.run(sdshim_delete(z["names"]))
        common.log(f"scale: round {r + 1}/{rounds}: {count} conmon containers at once")
        c = conmon_start(scratch, count)
        _add(result, "conmon", {"wall_ms": c["wall_ms"], "failures": c["failures"],
                                "errors": c["errors"], **common.memory_totals(c["pids"])})
        conmon_delete(c["cids"], c["pids"])
    for peer in ("sdshim", "zero", "conmon"):
        result[peer]["wall_ms"] = statistics.median(result[peer]["walls_ms"])
    return result


def _add(result: dict[str, Any], peer: str, one: dict[str, Any]) -> None:
    """One round's figures of peer into result (see scale)."""
    if peer not in result:
        result[peer] = {**one, "walls_ms": []}
    else:
        result[peer]["failures"] += one["failures"]
    result[peer]["walls_ms"].append(one["wall_ms"])


def limits() -> dict[str, str]:
    """The box's limits that bound how many containers fit."""
    out = spawn.run(["systemctl", "show", "-p", "TasksMax", "sdshim.slice"]).stdout.decode()
    per_unit = spawn.run(["systemctl", "show", "-p", "DefaultTasksMax"]).stdout.decode()
    return {"sdshim.slice TasksMax": out.strip().partition("=")[2],
            "DefaultTasksMax (per unit)": per_unit.strip().partition("=")[2],
            "kernel.pid_max": Path("/proc/sys/kernel/pid_max").read_text().strip()}


SOAK_RATE = 1 << 20  # bytes per second
SOAK_LINE = 100  # bytes per line, newline included


def soak(scratch: Path, seconds: float) -> dict[str, Any]:
    """The monitor's memory while its container writes about 1 MB/s, sampled."""
    script = (f"line=$(printf '%0{SOAK_LINE - 1}d' 0); i=0; while :; do "
              f"yes $line | head -c {SOAK_RATE}; i=$((i+1)); echo burst $i >&2; sleep 1; done")
    bundle = common.make_bundle(scratch, "soak", ["sh", "-c", script])
    name = f"soak-{secrets.token_hex(3)}"
    cli, env, _what = common.installed_cli(scratch)
    spawn.run([*cli, "run", "-d", "--name", name, str(bundle)], env=env)
    pid = int(spawn.run(["systemctl", "show", "-P", "MainPID", f"sdshim-{name}.service"])
              .stdout.decode())
    samples: list[dict[str, float]] = []
    t0 = time.monotonic()
    try:
        while (elapsed := time.monotonic() - t0) < seconds:
            reading = common.smaps(pid)
            if reading is None:
                raise SdshimError(f"the soak container's monitor (pid {pid}) died")
            samples.append({"t": elapsed, **reading})
            time.sleep(2.0)
        bursts = spawn.run(["journalctl", "--no-pager", "-o", "cat", "-n", "1",
                            f"_SYSTEMD_UNIT=sdshim-{name}.service", "PRIORITY=3"]
                           ).stdout.decode().split()
    finally:
        spawn.run([*cli, "delete", "--force", name], env=env)
    sent = int(bursts[-1]) * SOAK_RATE if bursts else 0
    return {"seconds": seconds, "rate_mb_s": sent / seconds / (1 << 20),
            "samples": samples, **growth(samples)}


def growth(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Least-squares slope of each memory field after the first quarter (warm-up),
    in kB per minute, and where that slope would take it in an hour."""
    steady = samples[len(samples) // 4:]
    result: dict[str, Any] = {}
    for key in common.MEMORY_FIELDS:
        values = [s[key] for s in steady]
        slope = 0.0
        if len(steady) >= 3 and len(set(values)) > 1:
            slope = statistics.linear_regression([s["t"] for s in steady], values).slope * 60
        result[key] = {"first_kb": samples[0][key], "last_kb": samples[-1][key],
                       "max_kb": max(s[key] for s in samples), "slope_kb_min": slope,
                       "hour_kb": samples[-1][key] + slope * 60}
    return {"growth": result}


def main() -> None:
    p = argparse.ArgumentParser(prog="python3 -m bench.footprint")
    p.add_argument("scratch", type=Path)
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("memory").add_argument("--idle", type=int, default=50)
    scaling = sub.add_parser("scale")
    scaling.add_argument("--count", type=int, default=200)
    scaling.add_argument("--rounds", type=int, default=3)
    sub.add_parser("soak").add_argument("--seconds", type=float, default=120)
    args = p.parse_args()
    if args.what == "memory":
        common.emit(memory(args.scratch, args.idle))
    elif args.what == "scale":
        common.emit(scale(args.scratch, args.count, args.rounds))
    else:
        common.emit(soak(args.scratch, args.seconds))


if __name__ == "__main__":
    main()
