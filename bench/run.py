"""The benchmark: sdshim against conmon, podman and the bare runtime, in one run.

    python3 -m bench.run [--runs 20] [--idle 50] [--scale 200] [--scale-rounds 3] [--soak 120]
                         [--json FILE]
    ./dev.sh bench

Boots a throwaway systemd (sdshim.testbed), runs the measuring scripts inside it
(bench.startup, bench.footprint) on one busybox bundle, adds the logging benchmark
(bench/logs.py) when it is in the tree, and prints the tables as Markdown. Needs root,
runc, conmon, podman and busybox-static (./dev.sh setup installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python3 bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from sdshim import spawn, testbed
from sdshim.errors import SdshimError

TOOLS = ("runc", "conmon", "podman", "systemd-run", "tar")
# Targets from issue 7 (ratios from one run on the same machine).
TARGET_READY_GAP_MS = 15.0
TARGET_PRIVATE_DIRTY_KB = 3 * 1024
# Targets from issue 14 (zero-resident containers).
TARGET_ZERO_VS_FLOOR = 1.5
# "Bounded" under the log stream: Private_Dirty would grow less than this in an hour.
BOUND_HOUR_GROWTH_KB = 1024


class BenchError(SdshimError):
    """The benchmark cannot run here."""


def check() -> None:
    if os.geteuid() != 0:
        raise BenchError("the benchmark needs root (it boots a test-bed systemd)")
    lacking = [t for t in TOOLS if shutil.which(t) is None]
    if lacking:
        raise BenchError(f"{', '.join(lacking)} not found; run ./dev.sh setup (installs "
                         "runc, conmon, podman, busybox-static)")


def inside(box: testbed.Box, module: str, *args: str, timeout: float = 600,
           python: str = sys.executable) -> Any:
    """Run `python3 -m bench.MODULE args` inside the box; its JSON result."""
    env = dict(os.environ, PYTHONPATH=str(common.REPO))
    out = spawn.run(box.argv([python, "-m", f"bench.{module}", *args]), env=env,
                    stderr=sys.stderr, timeout=timeout)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def logs_benchmark(timeout: float, extra: list[str] | None = None) -> str:
    """The logging issue's figures: bench/logs.py's own output, when it is in the tree."""
    if not (common.REPO / "bench" / "logs.py").exists():
        return "not measured (logging benchmark not present)"
    common.log("logs: running bench/logs.py (it boots its own test bed)")
    try:
        proc = spawn.run([sys.executable, "-m", "bench.logs", *(extra or [])], check=False,
                         timeout=timeout,
                         env=dict(os.environ, PYTHONPATH=str(common.REPO)),
                         stderr=sys.stderr)
    except spawn.CommandError as e:
        return f"not measured: {e}"
    text = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        text = f"bench/logs.py failed with status {proc.returncode}\n{text}"
    return f"```text\n{text}\n```"


# --- the machine -------------------------------------------------------------------


def first_line(argv: list[str]) -> str:
    try:
        out = spawn.run(argv, check=False, timeout=30)
    except spawn.CommandError:
        return "?"
    lines = (out.stdout or out.stderr).decode(errors="replace").strip().splitlines()
    return lines[0] if lines else "?"


def machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                  .splitlines() if line.startswith("MemTotal"))
    os_name = "?"
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    cgroup = "unified (v2)" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else \
        "hybrid (v1 + v2)" if Path("/sys/fs/cgroup/unified").exists() else "legacy (v1)"
    return {
        "CPU": f"{cpu}, {os.cpu_count()} CPUs",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "OS": f"{os_name}, kernel {platform.release()}, cgroups {cgroup}",
        "python": f"{platform.python_version()} ({sys.executable})",
        "systemd": first_line(["systemctl", "--version"]),
        "runc": first_line(["runc", "--version"]),
        "conmon": first_line(["conmon", "--version"]),
        "podman": first_line(["podman", "--version"]),
        "load average": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


# --- the tables ----------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.1f}"


def mb(kb: float) -> str:
    return f"{kb / 1024:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


LATENCY_ROWS = (
    ("sdshim", "`sdshim run -d`"),
    ("sdshim-zero", "`sdshim run -d --supervisor systemd` (zero-resident)"),
    ("podman", "`podman run -d --network none`"),
    ("podman-sdshim", "the same, sdshim-conmon as podman's conmon"),
    ("conmon", "conmon 2.1.6 (sync pipe) + `runc start`"),
    ("runc", "floor: `runc create` + `runc start`"),
    ("systemd-run", "floor: `systemd-run --wait -p Type=exec runc run` (exits at once)"),
)


def report(results: dict[str, Any], args: argparse.Namespace) -> tuple[str, list[str]]:
    """The Markdown tables, and one line per target: met or not."""
    out: list[str] = []
    targets: list[str] = []
    lat = results.get("startup")
    if lat:
        nan = {"median": float("nan"), "n": 0}
        # --startup-only may leave methods out: their ratios and targets are nan/missed.
        runs = max(v["n"] for v in lat["latency"].values())
        floor = lat["latency"].get("runc", nan)["median"]
        podman = lat["latency"].get("podman", nan)["median"]
        rows = []
        teardown = lat.get("teardown_after", {})
        for key, label in LATENCY_ROWS:
            if key not in lat["latency"]:
                continue
            s = lat["latency"][key]
            rows.append([label, ms(s["median"]), ms(s["min"]), ms(s["max"]),
                         f"{s['median'] / floor:.2f}", f"{s['median'] / podman:.2f}",
                         ms(teardown.get(key, nan)["median"])])
        out += [f"### 1. Start latency, call until the container runs (ms, {runs} runs)", "",
                table(["method", "median", "min", "max", "x runc floor", "x podman",
                       "teardown after removal (untimed)"], rows),
                "", f"sdshim timed as: {lat.get('sdshim_cli', common.sdshim_cli()[0])}", ""]
        ready, sync = lat["monitor_exec_to_ready"], lat["conmon_launch_to_sync"]
        out += [table(["monitor start-up", "median", "min", "max"], [
            ["sdshim monitor: exec → READY=1 (create + start + exec seen)", ms(ready["median"]),
             ms(ready["min"]), ms(ready["max"])],
            ["conmon: launch → sync-pipe PID (create)", ms(sync["median"]), ms(sync["min"]),
             ms(sync["max"])]]), ""]
        if "handoff_exec_to_ready" in lat:
            h = lat["handoff_exec_to_ready"]
            out += [table(["zero-resident start-up", "median", "min", "max"], [
                # systemd restarts ExecMainStart when MAINPID names a new main process
                ["zero-resident: main PID known → unit active (0 in the direct start: "
                 "`runc start` follows the job)",
                 ms(h["median"]), ms(h["min"]), ms(h["max"])]]), ""]
        if "sdshim-zero" in lat["latency"] and "systemd-run" in lat["latency"]:
            zero = lat["latency"]["sdshim-zero"]["median"]
            floor_sr = lat["latency"]["systemd-run"]["median"]
            ratio = zero / floor_sr
            targets.append(f"`run -d --supervisor systemd` within {TARGET_ZERO_VS_FLOOR}x of "
                           "the `systemd-run --wait -p Type=exec runc run` floor: "
                           f"{'met' if ratio <= TARGET_ZERO_VS_FLOOR else 'MISSED'} "
                           f"({ms(zero)} vs {ms(floor_sr)} ms, ratio {ratio:.2f})")
        sd = lat["latency"].get("sdshim", nan)["median"]
        targets.append(f"`sdshim run -d` faster than `podman run -d`: "
                       f"{'met' if sd < podman else 'MISSED'} ({ms(sd)} vs {ms(podman)} ms, "
                       f"ratio {sd / podman:.2f})")
        if "podman-sdshim" in lat["latency"]:
            ps = lat["latency"]["podman-sdshim"]["median"]
            targets.append(f"`podman run -d` on sdshim-conmon within 1.1x of conmon: "
                           f"{'met' if ps <= 1.1 * podman else 'MISSED'} ({ms(ps)} vs "
                           f"{ms(podman)} ms, ratio {ps / podman:.2f})")
        gap = ready["median"] - sync["median"]
        targets.append(f"monitor exec→READY within {TARGET_READY_GAP_MS:.0f} ms of conmon "
                       f"launch→sync PID: {'met' if gap <= TARGET_READY_GAP_MS else 'MISSED'} "
                       f"({ms(ready['median'])} vs {ms(sync['median'])} ms, {gap:+.1f} ms)")
    mem = results.get("memory")
    if mem:
        rows = []
        for peer in ("sdshim", "conmon"):
            for count in (1, args.idle):
                m = mem[f"{peer}_{count}"]
                label = "alone" if count == 1 else f"mean of {m['n']} (of {count})"
                rows.append([peer, label, *(mb(m["mean_kb"][k]) for k in common.MEMORY_FIELDS)])
        zero_rows = []
        for count in (1, args.idle):
            z = mem.get(f"zero_{count}")
            if z:
                zero_rows.append(["sdshim zero-resident", f"{count} ({z['resident_processes']} "
                                  "sdshim processes left)",
                                  *(mb(z["mean_kb"][k]) for k in common.MEMORY_FIELDS)])
        rows[2:2] = zero_rows
        out += ["### 2. Memory per monitor, idle containers (MB, /proc/PID/smaps_rollup)", "",
                table(["monitor", "containers", "Pss", "Private_Dirty", "Rss"], rows), "",
                "zero-resident: the memory of every sdshim process left in the box once the "
                "containers run, per container.", ""]
        z = mem.get(f"zero_{args.idle}")
        if z:
            left = z["total_kb"]["Rss"]
            targets.append(f"0 bytes of sdshim resident per zero-resident container: "
                           f"{'met' if left == 0 and z['resident_processes'] == 0 else 'MISSED'}"
                           f" ({z['resident_processes']} processes, {left} kB Rss in total "
                           f"for {args.idle} containers)")
        dirty = mem[f"sdshim_{args.idle}"]["mean_kb"]["Private_Dirty"]
        targets.append(f"monitor Private_Dirty under 3 MB: "
                       f"{'met' if dirty < TARGET_PRIVATE_DIRTY_KB else 'MISSED'} "
                       f"({mb(dirty)} MB; conmon "
                       f"{mb(mem[f'conmon_{args.idle}']['mean_kb']['Private_Dirty'])} MB)")
    sc = results.get("scale")
    if sc:
        peers = [p for p in ("sdshim", "zero", "conmon") if p in sc]
        rows = [[{"zero": "sdshim zero-resident"}.get(peer, peer),
                 f"{sc[peer]['wall_ms'] / 1000:.2f}",
                 " / ".join(f"{w / 1000:.2f}" for w in sc[peer].get("walls_ms", [])),
                 str(sc[peer]["failures"]),
                 *(mb(sc[peer]["total_kb"][k]) for k in common.MEMORY_FIELDS)]
                for peer in peers]
        out += [f"### 3. Scale: {sc['count']} containers started at once", "",
                table(["monitor", "wall time until all run (s), median",
                       "each round (s), interleaved", "failures",
                       "total Pss (MB)", "total Private_Dirty (MB)", "total Rss (MB)"], rows),
                "", "Limits in the box: " + ", ".join(f"{k} {v}" for k, v in
                                                      sc["limits"].items()), ""]
        for peer in peers:
            if sc[peer]["errors"]:
                out.append(f"{peer} errors (first {len(sc[peer]['errors'])}): "
                           + "; ".join(sc[peer]["errors"]))
        fails = sc["sdshim"]["failures"]
        targets.append(f"{sc['count']} parallel starts with no failure: "
                       f"{'met' if fails == 0 else 'MISSED'} ({fails} failed)")
        if "zero" in sc:
            zw, cw = sc["zero"]["wall_ms"], sc["conmon"]["wall_ms"]
            ok = zw <= cw and sc["zero"]["failures"] == 0
            targets.append(f"{sc['count']} parallel zero-resident starts no slower than "
                           f"conmon's: {'met' if ok else 'MISSED'} ({zw / 1000:.2f} vs "
                           f"{cw / 1000:.2f} s, {sc['zero']['failures']} failed)")
    if "logs" in results:
        out += ["### 4. Logs (bench/logs.py)", "", results["logs"], ""]
    so = results.get("soak")
    if so:
        # Pss moves with whoever shares the interpreter's pages: no projection for it.
        rows = [[k, mb(g["first_kb"]), mb(g["last_kb"]), mb(g["max_kb"]),
                 f"{g['slope_kb_min']:+.1f}", "n/a" if k == "Pss" else mb(g["hour_kb"])]
                for k, g in so["growth"].items()]
        out += [f"### 5. Monitor memory under a log stream ({so['rate_mb_s']:.2f} MB/s of "
                f"100-byte lines for {so['seconds']:.0f} s, {len(so['samples'])} samples)", "",
                table(["field", "first (MB)", "last (MB)", "max (MB)",
                       "slope after warm-up (kB/min)", "projected at 1 h (MB)"], rows), "",
                "Pss also moves when processes sharing the interpreter's pages come and go; "
                "Private_Dirty is the monitor's own.", ""]
        dirty = so["growth"]["Private_Dirty"]
        hour_growth = dirty["slope_kb_min"] * 60
        targets.append(f"monitor memory bounded under a 1 MB/s log stream: "
                       f"{'met' if hour_growth < BOUND_HOUR_GROWTH_KB else 'MISSED'} "
                       f"(Private_Dirty {dirty['slope_kb_min']:+.1f} kB/min after warm-up, "
                       f"{hour_growth:+.0f} kB projected over an hour, max "
                       f"{mb(dirty['max_kb'])} MB)")
    return "\n".join(out), targets


def byte_compile() -> None:
    """Write the .pyc files an installed package has (the CLI's start-up is measured;
    compiling sdshim from source on every call would add ~5 ms)."""
    import compileall

    compileall.compile_dir(common.REPO / "sdshim", quiet=1)
    compileall.compile_dir(common.REPO / "bench", quiet=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20, help="start-latency runs per method")
    p.add_argument("--idle", type=int, default=50, help="idle containers for the memory table")
    p.add_argument("--scale", type=int, default=200, help="containers started at once")
    p.add_argument("--scale-rounds", type=int, default=3,
                   help="rounds of the scale table, interleaved; it gives the median")
    p.add_argument("--soak", type=float, default=120, help="seconds of the 1 MB/s log stream")
    p.add_argument("--skip", action="append", default=[],
                   choices=("startup", "memory", "scale", "logs", "soak"))
    p.add_argument("--startup-only", default="", metavar="METHOD,...",
                   help="start-latency methods to time (default all: sdshim, sdshim-zero, "
                   "podman, conmon, runc, systemd-run)")
    p.add_argument("--logs-only", default="", metavar="SETUP,...",
                   help="bench/logs.py --only (default: all its setups)")
    p.add_argument("--logs-lines", type=int, default=0,
                   help="bench/logs.py --lines (default: its own, 1,000,000)")
    p.add_argument("--logs-timeout", type=float, default=420,
                   help="seconds bench/logs.py may take")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        check()
        byte_compile()
        info = machine()
        results: dict[str, Any] = {}
        scratch = Path(tempfile.mkdtemp(prefix="sdshim-bench-"))
        try:
            with testbed.booted([common.REPO, scratch]) as box:
                s = str(scratch)
                # The monitors the footprint starts (through the Python API) run on
                # the interpreter that starts them: the installed CLI's, as in startup.
                py = str(common.installed_python(scratch))
                if "startup" not in args.skip:
                    results["startup"] = inside(box, "startup", s, "--runs", str(args.runs),
                                                "--only", args.startup_only)
                if "memory" not in args.skip:
                    results["memory"] = inside(box, "footprint", s, "memory",
                                               "--idle", str(args.idle), python=py)
                if "scale" not in args.skip:
                    results["scale"] = inside(box, "footprint", s, "scale",
                                              "--count", str(args.scale), "--rounds",
                                              str(args.scale_rounds), python=py)
                if "soak" not in args.skip:
                    results["soak"] = inside(box, "footprint", s, "soak",
                                             "--seconds", str(args.soak),
                                             timeout=args.soak + 300, python=py)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if "logs" not in args.skip:
            extra = (["--only", args.logs_only] if args.logs_only else []) + \
                (["--lines", str(args.logs_lines)] if args.logs_lines else [])
            results["logs"] = logs_benchmark(timeout=args.logs_timeout, extra=extra)
    except (SdshimError, subprocess.SubprocessError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    info["load average"] += " (start), " + " ".join(
        Path("/proc/loadavg").read_text().split()[:3]) + " (end)"
    text, targets = report(results, args)
    print(f"## sdshim benchmark ({time.strftime('%Y-%m-%d')}, "
          f"{time.monotonic() - t0:.0f} s)\n")
    print("\n".join(f"- {k}: {v}" for k, v in info.items()) + "\n")
    print(text)
    print("### Targets\n\n" + "\n".join(f"- {t}" for t in targets))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
