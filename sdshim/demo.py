"""Run one real container under systemd and show it: `systemctl status` and its journal.

Uses the host's systemd when it is PID 1, otherwise boots the bundled test-bed systemd.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from sdshim import bundle, spawn, testbed

SCRIPT = ("echo 'hello from a container under systemd'; echo 'a line on stderr' >&2; "
          "i=1; while [ $i -le 3 ]; do echo tick $i; i=$((i+1)); sleep 0.2; done; "
          "trap 'echo stopping; exit 0' TERM; while :; do sleep 0.2; done")
NAME = "demo"


def steps(bundle_dir: Path) -> list[tuple[str, list[str]]]:
    sdshim = [sys.executable, "-m", "sdshim"]
    unit = f"sdshim-{NAME}.service"
    return [
        ("sdshim run -d", [*sdshim, "run", "-d", "--name", NAME, "-p", "MemoryMax=64M",
                           str(bundle_dir)]),
        ("wait for output", ["sleep", "1"]),
        ("systemctl status", ["systemctl", "status", "--no-pager", "-l", unit]),
        ("journalctl", ["journalctl", "--no-pager", "-u", unit]),
        ("sdshim status", [*sdshim, "status", NAME]),
        ("sdshim logs", [*sdshim, "logs", NAME]),
        ("sdshim stop", [*sdshim, "stop", "--time", "2", NAME]),
        ("sdshim status", [*sdshim, "status", NAME]),
        ("sdshim delete", [*sdshim, "delete", NAME]),
    ]


def run_steps(wrap: testbed.Box | None, bundle_dir: Path) -> int:
    failed = 0
    for title, argv in steps(bundle_dir):
        print(f"\n$ {' '.join(argv[2:] if argv[0] == sys.executable else argv)}   # {title}",
              flush=True)
        full = wrap.argv(argv) if wrap else argv
        proc = spawn.run(full, check=False, capture=False, stdin=subprocess.DEVNULL)
        # systemctl status exits 3 for a unit that is not running: not a failure here.
        if proc.returncode not in (0, 3) and not failed:
            failed = proc.returncode
    return failed


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sdshim-demo-", dir="/var/tmp") as tmp:
        bundle_dir = bundle.make_busybox(Path(tmp) / "bundle", ["sh", "-c", SCRIPT])
        if Path("/run/systemd/system").is_dir():
            print("systemd is PID 1 here: using the host's systemd")
            return run_steps(None, bundle_dir)
        print("systemd is not PID 1 here: booting the bundled test-bed systemd")
        repo = Path(__file__).resolve().parent.parent
        with testbed.booted([Path(tmp), repo]) as box:
            return run_steps(box, bundle_dir)


if __name__ == "__main__":
    sys.exit(main())
