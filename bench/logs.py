"""Log throughput into journald: sdshim (native, stream) against conmon's journald driver
and the floor (the container's stdout connected straight to journald), in one run.

    sudo .venv/bin/python bench/logs.py [--lines 1000000] [--big 200] [--only SETUP,...]

Boots the test-bed systemd (sdshim.testbed) and, for each workload (numbered ~100-byte
lines; 1 MiB lines), runs the same busybox container (`cat` of a prepared file, so the
writer is never the bottleneck) under each setup:

  sdshim native     sdshim run --log-driver native (the default)
  sdshim stream     sdshim run --log-driver stream (the unit's LogExtraFields= add the
                    container fields to every line; they are matched here)
  sdshim zero       sdshim run --supervisor systemd (no monitor; stream, with fields)
  conmon            conmon 2.1.6 -l journald:, in a unit whose LogRateLimitBurst is raised
  conmon (default)  the same with journald's default rate limit
  floor             systemd-run (rate limit raised, the same LogExtraFields=) of `runc
                    run`: stdout is the unit's journald stream, as for any service

and prints, per setup: seconds from the first to the last of the container's entries in
the journal (journald's own receive timestamps), lines/s and MB/s over that time, lines
lost (after reassembling split lines; a line counts only if its bytes are intact), the
monitor's CPU seconds (sdshim: its exit record; conmon: its cgroup's cpu.stat) and
journald's CPU seconds. Between runs the journal is rotated and vacuumed, so every run
starts from an empty journal file.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sdshim import bundle as bundles  # noqa: E402
from sdshim import testbed  # noqa: E402
from sdshim.units.logs import Entry, Reassembler, parse_export  # noqa: E402

RATE_BURST = 100_000_000  # what sdshim sets: a burst no container reaches
JOURNALD_CONF = b"[Journal]\nSystemMaxUse=4G\nSystemMaxFileSize=2G\n"
JOURNALD_CGROUP = "system.slice/systemd-journald.service"
SETUPS = ("native", "stream", "zero", "conmon", "conmon-default", "floor")
LABELS = {"native": "sdshim native", "stream": "sdshim stream+fields",
          "zero": "sdshim zero-resident", "conmon": "conmon journald",
          "conmon-default": "conmon, default limit", "floor": "floor (stream)"}
FIELDS = "MESSAGE,PRIORITY,CONTAINER_PARTIAL_MESSAGE,_LINE_BREAK"


@dataclass
class Workload:
    name: str
    path: Path
    lines: int
    size: int  # bytes, newlines included
    expected: Callable[[int], bytes]  # line i without its newline


@dataclass
class Result:
    setup: str
    seconds: float = 0.0
    landed: int = 0
    lost: int = 0
    monitor_cpu: float | None = None
    journald_cpu: float = 0.0
    notes: list[str] = field(default_factory=list)


# --- the workloads ---------------------------------------------------------------------


def small_lines(scratch: Path, n: int) -> Workload:
    pad = base64.b64encode(b"\x5a" * 68)[:91]  # 8 digits + space + 91 = 100 with \n

    def expected(i: int) -> bytes:
        return b"%08d %s" % (i, pad)

    path = scratch / f"lines-{n}.txt"
    if not path.exists():
        with open(path, "wb") as f:
            for start in range(0, n, 100_000):
                end = min(n, start + 100_000)
                f.write(b"".join(expected(i) + b"\n" for i in range(start, end)))
    return Workload(f"{n:,} lines of 100 bytes", path, n, path.stat().st_size, expected)


def big_lines(scratch: Path, n: int) -> Workload:
    size = 1 << 20
    path = scratch / f"big-{n}.txt"
    if not path.exists():
        with open(path, "wb") as f:
            for i in range(n):  # incompressible-ish text, so journald compresses honestly
                f.write(b"%08d " % i + base64.b64encode(os.urandom(size))[:size - 9] + b"\n")
    lines = path.read_bytes().split(b"\n")

    def expected(i: int) -> bytes:
        return lines[i]

    return Workload(f"{n} lines of 1 MiB", path, n, path.stat().st_size, expected)


def make_bundle(scratch: Path, workload: Workload, name: str) -> Path:
    rootfs = scratch / "rootfs-bundle"
    if not (rootfs / "rootfs").exists():
        bundles.make_busybox(rootfs, ["true"])
    target = scratch / f"bundle-{name}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    bundles.write_config(target, ["cat", f"/data/{workload.path.name}"])
    config = json.loads((target / "config.json").read_text())
    config["root"]["path"] = str(rootfs / "rootfs")  # shared; runc refuses a symlink
    config["mounts"].append({"destination": "/data", "type": "bind", "source": str(scratch),
                             "options": ["rbind", "ro"]})
    (target / "config.json").write_text(json.dumps(config))
    return target


# --- helpers inside the box ------------------------------------------------------------


class Bed:
    def __init__(self, box: testbed.Box) -> None:
        self.box = box
        self.unified = "/sys/fs/cgroup/unified" if self.path(
            "/sys/fs/cgroup/unified/cgroup.controllers").exists() else "/sys/fs/cgroup"

    def run(self, *argv: str, check: bool = True, timeout: float = 3600) -> bytes:
        out = self.box.run(list(argv), timeout=timeout)
        if check and out.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv)} failed ({out.returncode}): "
                             f"{out.stderr.decode(errors='replace').strip()}")
        return out.stdout

    def path(self, path: str) -> Path:
        return Path(f"/proc/{self.box.pid}/root") / path.lstrip("/")

    def cpu_seconds(self, cgroup: str) -> float:
        for line in self.path(f"{self.unified}/{cgroup}/cpu.stat").read_text().splitlines():
            key, value = line.split()
            if key == "usage_usec":
                return int(value) / 1e6
        raise SystemExit(f"bench: no usage_usec for {cgroup}")

    def sdshim(self, *args: str) -> bytes:
        return self.run(sys.executable, "-m", "sdshim", *args)

    def entries(self, *matches: str) -> list[Entry]:
        self.run("journalctl", "--sync")
        return parse_export(self.run("journalctl", "--no-pager", "--all", "-o", "export",
                                     f"--output-fields={FIELDS}", *matches))

    def vacuum(self) -> None:
        self.run("journalctl", "--rotate", "--vacuum-time=1s", check=False)


def wait_for(what: str, done: Callable[[], bool], timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)


# --- the setups ------------------------------------------------------------------------


def run_sdshim(bed: Bed, bundle: Path, driver: str) -> tuple[list[str], float | None]:
    name = f"bench-{driver}-{secrets.token_hex(3)}"
    options = ["--supervisor", "systemd"] if driver == "zero" else ["--log-driver", driver]
    bed.sdshim("run", "-d", *options, "--name", name, str(bundle))
    bed.sdshim("wait", name)
    status = json.loads(bed.sdshim("status", "--json", name))
    exit_path = bed.path(f"/run/sdshim/{name}/exit.json")
    # zero: a clean exit is recorded by the stop step, at delete; no monitor CPU anyway.
    record = json.loads(exit_path.read_text()) if exit_path.exists() else {}
    bed.sdshim("delete", name)
    # Every driver's lines carry the container fields: matched by them, a line without
    # them counts as lost. (stream, zero: journald adds them from LogExtraFields=.)
    match = [f"CONTAINER_ID_FULL={status['id']}", f"SYSLOG_IDENTIFIER={name}"]
    return match, record.get("monitor_cpu_seconds")


CONMON_HOLDER = r"""
set -e
for m in /sys/fs/cgroup/unified /sys/fs/cgroup; do [ -e $m/cgroup.controllers ] && break; done
cg=$m$(sed -n 's/^0:://p' /proc/self/cgroup)
mkdir $cg/holder $cg/conmon
echo $$ > $cg/holder/cgroup.procs
sh -c 'echo $$ > "$0"; exec "$@"' $cg/conmon/cgroup.procs "$@"
exec sleep infinity
"""


def run_conmon(bed: Bed, bundle: Path, raise_limit: bool) -> tuple[list[str], float | None]:
    # conmon's journald driver refuses container ids of 12 characters or fewer.
    cid = secrets.token_hex(32)
    unit = f"bench-conmon-{cid[:8]}"
    work = f"/run/bench-conmon/{cid[:8]}"
    bed.run("mkdir", "-p", work)
    holder = bed.path("/run/bench-conmon/holder.sh")  # a file: systemd would expand $
    holder.write_text(CONMON_HOLDER)
    limits = [f"-pLogRateLimitBurst={RATE_BURST}", "-pLogRateLimitIntervalSec=1s"] \
        if raise_limit else []
    # conmon lives in a sub-cgroup of a delegated unit that a holder keeps alive, so its
    # cpu.stat can be read after it exits; journald still counts its lines for the unit.
    bed.run("systemd-run", "-q", f"--unit={unit}", "-pDelegate=yes", *limits,
            "/bin/sh", "/run/bench-conmon/holder.sh",
            "/usr/bin/conmon", "--api-version", "1", "-c", cid, "-u", cid,
            "-n", unit, "-r", shutil.which("runc") or "runc", "-b", str(bundle),
            "-p", f"{work}/pid", "--exit-dir", work, "--socket-dir-path", work,
            "--conmon-pidfile", f"{work}/conmon.pid", "-l", "journald:",
            "--runtime-arg", "--root=/run/bench-conmon/runc")
    wait_for("conmon's container pid", lambda: bed.path(f"{work}/pid").exists(), 60)
    bed.run("runc", "--root=/run/bench-conmon/runc", "start", cid)
    wait_for("conmon's exit file", lambda: bed.path(f"{work}/{cid}").exists())
    conmon_pid = bed.path(f"{work}/conmon.pid").read_text().strip()
    wait_for("conmon to exit", lambda: not bed.path(f"/proc/{conmon_pid}").exists(), 60)
    cgroup = bed.run("systemctl", "show", "-P", "ControlGroup", unit).decode().strip()
    cpu = bed.cpu_seconds(f"{cgroup.lstrip('/')}/conmon")
    bed.run("systemctl", "stop", unit)
    bed.run("runc", "--root=/run/bench-conmon/runc", "delete", "--force", cid, check=False)
    return [f"CONTAINER_ID_FULL={cid}"], cpu


def run_floor(bed: Bed, bundle: Path) -> tuple[list[str], float | None]:
    cid = f"bench-floor-{secrets.token_hex(3)}"
    config = json.loads((bundle / "config.json").read_text())
    # The container in a leaf of the service's cgroup: its lines are the unit's.
    config["linux"]["cgroupsPath"] = f"/system.slice/{cid}.service/container"
    (bundle / "config.json").write_text(json.dumps(config))
    bed.run("systemd-run", "-q", "--wait", f"--unit={cid}", "-pDelegate=yes",
            f"-pLogRateLimitBurst={RATE_BURST}", "-pLogRateLimitIntervalSec=1s",
            # the fields sdshim's stream units have, so journald does the same work
            f"-pLogExtraFields=CONTAINER_ID={cid[:12]}",
            f"-pLogExtraFields=CONTAINER_ID_FULL={cid}", f"-pLogExtraFields=CONTAINER_NAME={cid}",
            f"-pSyslogIdentifier={cid}", "runc", "--root=/run/bench-floor",
            f"--log=/run/bench-floor-{cid}.log", "run", "--bundle", str(bundle), cid)
    return [f"CONTAINER_ID_FULL={cid}", f"SYSLOG_IDENTIFIER={cid}", "_TRANSPORT=stdout"], None


# --- measuring -------------------------------------------------------------------------


def measure(bed: Bed, scratch: Path, workload: Workload, setup: str) -> Result:
    bundle = make_bundle(scratch, workload, setup)
    bed.vacuum()
    journald_before = bed.cpu_seconds(JOURNALD_CGROUP)
    if setup in ("native", "stream", "zero"):
        matches, cpu = run_sdshim(bed, bundle, setup)
    elif setup.startswith("conmon"):
        matches, cpu = run_conmon(bed, bundle, raise_limit=setup == "conmon")
    else:
        matches, cpu = run_floor(bed, bundle)
    entries = bed.entries(*matches)
    result = Result(setup, monitor_cpu=cpu,
                    journald_cpu=bed.cpu_seconds(JOURNALD_CGROUP) - journald_before)
    if not entries:
        result.lost = workload.lines
        return result
    stamps = [int(e[b"__REALTIME_TIMESTAMP"]) for e in entries]
    result.seconds = (max(stamps) - min(stamps)) / 1e6
    good = set()
    joiner = Reassembler()
    for entry in entries:
        message = entry.get(b"MESSAGE", b"")
        if setup.startswith("conmon") and message.endswith(b"\n"):
            entry[b"MESSAGE"] = message[:-1]  # conmon keeps the newline in MESSAGE
        line = joiner.add(entry)
        if line is None:
            continue
        number = line.data[:8]
        if number.isdigit() and 0 <= int(number) < workload.lines \
                and line.data == workload.expected(int(number)):
            good.add(int(number))
    result.landed = len(good)
    result.lost = workload.lines - len(good)
    return result


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} CPUs, {os.uname().release}"


def table(workload: Workload, results: list[Result]) -> str:
    rows = [f"\n{workload.name} ({workload.size / 1e6:.0f} MB)",
            f"{'setup':<22} {'seconds':>8} {'lines/s':>10} {'MB/s':>7} {'lost':>9} "
            f"{'monitor CPU s':>13} {'journald CPU s':>14}"]
    for r in results:
        rate = r.landed / r.seconds if r.seconds else 0
        mbps = workload.size * r.landed / workload.lines / r.seconds / 1e6 if r.seconds else 0
        cpu = "-" if r.monitor_cpu is None else f"{r.monitor_cpu:.2f}"
        rows.append(f"{LABELS[r.setup]:<22} {r.seconds:>8.2f} {rate:>10,.0f} {mbps:>7.1f} "
                    f"{r.lost:>9,} {cpu:>13} {r.journald_cpu:>14.2f}")
    return "\n".join(rows)


def target(results: list[Result]) -> str:
    """Issue 14: the stream driver with the container fields within 5% of the floor."""
    by = {r.setup: r for r in results}
    floor = by.get("floor")
    lines = []
    for setup in ("stream", "zero"):
        r = by.get(setup)
        if r is None or floor is None or not floor.seconds:
            continue
        ratio = r.seconds / floor.seconds
        ok = ratio <= 1.05 and r.lost == 0
        lines.append(f"target: {LABELS[setup]} within 5% of the floor: "
                     f"{'met' if ok else 'MISSED'} ({r.seconds:.2f} vs {floor.seconds:.2f} s, "
                     f"{ratio - 1:+.1%}, {r.lost} lost)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000, help="small-line workload size")
    p.add_argument("--big", type=int, default=200, help="how many 1 MiB lines")
    p.add_argument("--only", default=",".join(SETUPS),
                   help=f"comma-separated subset of {', '.join(SETUPS)}")
    p.add_argument("--scratch", type=Path, default=Path("/var/tmp/sdshim-bench-logs"),
                   help="where the workload files are kept between runs")
    args = p.parse_args()
    setups = [s for s in args.only.split(",") if s]
    unknown = set(setups) - set(SETUPS)
    if unknown:
        p.error(f"unknown setup(s) {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        p.error("run as root (the test-bed systemd needs it)")
    args.scratch.mkdir(parents=True, exist_ok=True)
    workloads = [w for w in (small_lines(args.scratch, args.lines) if args.lines else None,
                             big_lines(args.scratch, args.big) if args.big else None) if w]
    qlen = Path("/proc/sys/net/unix/max_dgram_qlen").read_text().strip()
    print(f"machine: {machine()}; net.unix.max_dgram_qlen={qlen}; "
          f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    print(f"command: {' '.join(sys.argv)}", flush=True)
    with testbed.booted([REPO, args.scratch]) as box:
        bed = Bed(box)
        bed.run("mkdir", "-p", "/etc/systemd/journald.conf.d")
        bed.path("/etc/systemd/journald.conf.d/bench.conf").write_bytes(JOURNALD_CONF)
        bed.run("systemctl", "restart", "systemd-journald")
        versions = [bed.run(*cmd).decode().splitlines()[0] for cmd in
                    (["journalctl", "--version"], ["runc", "--version"], ["conmon", "--version"])]
        print("; ".join(versions), flush=True)
        for workload in workloads:
            results = []
            for setup in setups:
                print(f"  {workload.name}: {LABELS[setup]} ...", file=sys.stderr, flush=True)
                results.append(measure(bed, args.scratch, workload, setup))
            print(table(workload, results), flush=True)
            print(target(results), flush=True)
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
