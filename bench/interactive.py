"""What stdin, terminals and exec cost, on the test-bed systemd (or the host's with --host).

    .venv/bin/python -m bench.interactive [--runs N] [--host]

Medians of the wall time of whole CLI commands (each a fresh container or exec),
and the rate at which a terminal's output reaches an attached `run -t`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import REPO
from sdshim import bundle, testbed

SDSHIM = [sys.executable, "-m", "sdshim"]
TTY_MIB = 32


def timed(run: Callable[[], subprocess.CompletedProcess[bytes]]) -> float:
    started = time.perf_counter()
    out = run()
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"failed: {out.args}: {out.stderr.decode()}")
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--host", action="store_true", help="use the host's systemd (PID 1)")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="sdshim-bench-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        if ns.host:
            return measure(None, base, ns.runs)
        with testbed.booted([base, REPO]) as box:
            return measure(box, base, ns.runs)


def measure(box: testbed.Box | None, base: Path, runs: int) -> int:
    def sh(argv: list[str], input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        full = box.argv(argv) if box else argv
        return subprocess.run(full, input=input, capture_output=True, check=False)

    def make(name: str, *args: str) -> str:
        return str(bundle.make_busybox(base / name, list(args)))

    true, cat = make("true", "true"), make("cat", "cat")
    sleeper = make("sleeper", "sleep", "1000")
    line = "x" * 999
    flood = make("flood", "sh", "-c",
                 f"yes {line} | head -c {TTY_MIB << 20}")
    n = 0

    def fresh() -> str:
        nonlocal n
        n += 1
        return f"bench-{n}"

    results: dict[str, list[float]] = {}
    cases: list[tuple[str, Callable[[], subprocess.CompletedProcess[bytes]]]] = [
        ("run true (pipes, baseline)", lambda: sh([*SDSHIM, "run", "--rm", "--name", fresh(),
                                                   true])),
        ("run -i cat, 4 bytes in", lambda: sh([*SDSHIM, "run", "--rm", "-i", "--name", fresh(),
                                               cat], input=b"foo\n")),
        ("run -t true", lambda: sh([*SDSHIM, "run", "--rm", "-t", "--name", fresh(), true])),
        ("exec true", lambda: sh([*SDSHIM, "exec", "target", "--", "true"])),
        ("exec -t true", lambda: sh([*SDSHIM, "exec", "-t", "target", "--", "true"])),
    ]
    if sh([*SDSHIM, "run", "-d", "--name", "target", sleeper]).returncode != 0:
        raise SystemExit("cannot start the exec target")
    try:
        for _ in range(runs):
            for title, case in cases:
                results.setdefault(title, []).append(timed(case))
        flood_times, received = [], []
        for _ in range(3):
            started = time.perf_counter()
            out = sh([*SDSHIM, "run", "--rm", "-t", "--name", fresh(), flood])
            flood_times.append(time.perf_counter() - started)
            received.append(len(out.stdout))
            if out.returncode != 0:
                raise SystemExit(f"flood failed: {out.stderr.decode()}")
    finally:
        sh([*SDSHIM, "delete", "--force", "target"])
    print(f"{'command':<32} {'median ms':>10} {'min ms':>8}   ({runs} runs)")
    for title, times in results.items():
        print(f"{title:<32} {statistics.median(times) * 1000:>10.1f} {min(times) * 1000:>8.1f}")
    best = min(flood_times)
    got = received[flood_times.index(best)] / (1 << 20)
    print(f"run -t, {TTY_MIB} MiB of terminal output to a pipe: {best:.2f} s, "
          f"{TTY_MIB / best:.0f} MiB/s (best of 3; {got:.1f} MiB reached the pipe, the rest "
          f"was skipped; the journal gets every line)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
