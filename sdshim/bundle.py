"""Build minimal OCI bundles from busybox-static, for demos, tests and benchmarks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdshim import spawn
from sdshim.errors import SdshimError

BUSYBOX = Path("/bin/busybox")


def make_busybox(bundle: Path, args: Sequence[str], *, terminal: bool = False,
                 env: Sequence[str] = ()) -> Path:
    """Create bundle/ with a busybox rootfs and a config.json running args."""
    if not BUSYBOX.exists():
        raise SdshimError(f"{BUSYBOX} not found; install busybox-static")
    rootfs = bundle / "rootfs"
    if not (rootfs / "bin/busybox").exists():
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        for d in ("proc", "sys", "dev", "tmp", "etc", "root"):
            (rootfs / d).mkdir(exist_ok=True)
        shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
        applets = spawn.run([str(BUSYBOX), "--list"]).stdout.decode().split()
        for applet in applets:
            link = rootfs / "bin" / applet
            if applet != "busybox" and not link.exists():
                link.symlink_to("busybox")
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc/group").write_text("root:x:0:\n")
    write_config(bundle, args, terminal=terminal, env=env)
    return bundle


def write_config(bundle: Path, args: Sequence[str], *, terminal: bool = False,
                 env: Sequence[str] = ()) -> None:
    config = default_config()
    config["process"]["args"] = list(args)
    config["process"]["terminal"] = terminal
    config["process"]["env"] += list(env)
    (bundle / "config.json").write_text(json.dumps(config, indent=2))


def default_config() -> dict[str, Any]:
    """What `runc spec` writes, trimmed: non-terminal, pid/ipc/uts/mount namespaces."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: _CAPS for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "sdshim",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                            "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                              "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_SETUID",
         "CAP_SETGID", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_SETPCAP",
         "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_MKNOD"]


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python3 -m sdshim.bundle",
                                description="Make a busybox OCI bundle.")
    p.add_argument("bundle", type=Path)
    p.add_argument("args", nargs=argparse.REMAINDER)
    ns = p.parse_args()
    make_busybox(ns.bundle, ns.args)
    print(ns.bundle)


if __name__ == "__main__":
    main()
