"""A container's end leaves no empty cgroup directory behind in the v1 hierarchies
systemd does not manage (sdshim/units/cgrouptrim.py)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from sdshim import spawn
from sdshim.units import cgrouptrim
from tests.conftest import REPO, Bed, missing

UNIT = "sdshim-web.service"
UNIT_PATH = f"machine.slice/{UNIT}"


def fake_host(tmp_path: Path, own: str) -> tuple[Path, str]:
    """A cgroup mount point with three hierarchies and a /proc/self/cgroup that says
    the step runs in `own`; the script rewritten to use them."""
    root = tmp_path / "fs"
    for h in ("cpuset", "freezer", "unified"):
        (root / h / UNIT_PATH / "container").mkdir(parents=True)
    (root / "freezer" / UNIT_PATH / "supervisor").mkdir()
    (root / "cpuset" / "machine.slice" / "sdshim-other.service").mkdir()
    # the step's own cgroup there: not empty (rmdir fails, as with a cgroup in use)
    (root / "unified" / UNIT_PATH / "container" / "busy").write_text("")
    procs = tmp_path / "cgroup"
    procs.write_text(f"3:cpuset:/\n1:name=systemd:{own}\n0::{own}\n")
    script = (cgrouptrim.SCRIPT.replace("/sys/fs/cgroup", str(root))
              .replace("/proc/self/cgroup", str(procs)))
    return root, script


def run(script: str) -> None:
    out = spawn.run(["/bin/sh", "-c", script, cgrouptrim.NAME], check=False)
    assert out.returncode == 0 and out.stdout == out.stderr == b"", out


def test_the_step_removes_the_units_empty_directories_only(tmp_path: Path) -> None:
    root, script = fake_host(tmp_path, f"/{UNIT_PATH}/.control")
    run(script)
    # emptied: container/, supervisor/ and the unit's own directory
    assert not (root / "cpuset" / UNIT_PATH).exists()
    assert not (root / "freezer" / UNIT_PATH).exists()
    # not empty: kept, and so is everything that is not the unit's
    assert (root / "unified" / UNIT_PATH / "container" / "busy").exists()
    assert (root / "cpuset" / "machine.slice" / "sdshim-other.service").is_dir()
    assert (root / "cpuset" / "machine.slice").is_dir()


def test_the_step_does_nothing_outside_a_service_or_on_a_unified_host(
        tmp_path: Path) -> None:
    root, script = fake_host(tmp_path, "/")
    run(script)
    assert (root / "cpuset" / UNIT_PATH / "container").is_dir()
    (root / "cgroup.controllers").write_text("")
    root, script = fake_host(tmp_path / "v2", f"/{UNIT_PATH}")
    (root / "cgroup.controllers").write_text("")
    run(script)
    assert (root / "cpuset" / UNIT_PATH / "container").is_dir()


def test_the_step_joins_the_units_own_stop_post_commands(tmp_path: Path) -> None:
    props: list[Any] = [("ExecStart", "a(sasb)", [["/x", ["/x"], False]]),
                        ("ExecStopPost", "a(sasb)", [["/y", ["/y"], False]])]
    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    added = cgrouptrim.add_to(props, str(hybrid))
    assert [p[0] for p in added] == ["ExecStart", "ExecStopPost"]
    assert added[1][2] == [["/y", ["/y"], False],
                           [cgrouptrim.SH, cgrouptrim.transient_argv(), True]]
    # systemd expands $VAR in arguments: the script reaches sh as written
    assert cgrouptrim.transient_argv()[2].replace("$$", "$") == cgrouptrim.SCRIPT
    alone = cgrouptrim.add_to(props[:1], str(hybrid))
    assert alone[-1][0] == "ExecStopPost"
    (hybrid / "cgroup.controllers").write_text("")
    assert cgrouptrim.add_to(props, str(hybrid)) == props  # unified-only: no step


def test_the_template_unit_has_the_step() -> None:
    lines = (REPO / "systemd/sdshim@.service").read_text().splitlines()
    assert cgrouptrim.template_line() in lines
    (line,) = [x for x in lines if cgrouptrim.NAME in x]
    # as systemd reads it: '-' (failure ignored), then the words, unescaped
    words = shlex.split(line.removeprefix("ExecStopPost=-"))
    assert words[:2] == [cgrouptrim.SH, "-c"] and words[3] == cgrouptrim.NAME
    assert words[2].replace("$$", "$").replace("%%", "%") == cgrouptrim.SCRIPT


# --- in the test bed -------------------------------------------------------------------


def hierarchies(bed: Bed) -> list[Path]:
    return [h for h in bed.path("/sys/fs/cgroup").iterdir() if h.is_dir()]


UNMANAGED = {"cpuset", "freezer", "perf_event", "net_cls", "net_prio", "hugetlb", "rdma",
             "misc"}  # v1 controllers systemd 252 does not manage


def unmanaged_with(bed: Bed, pid: int, unit: str) -> list[str]:
    """The v1 hierarchies systemd does not manage where pid's cgroup is in the unit
    (the runtime made it there): those the step is for."""
    found = []
    for line in bed.read(f"/proc/{pid}/cgroup").splitlines():
        _hid, ctls, path = line.split(":", 2)
        if UNMANAGED.intersection(ctls.split(",")) and f"/{unit}/" in path:
            found.append(ctls)
    if not found:
        missing("a cgroup v1 hierarchy systemd does not manage (cpuset or freezer: a "
                "hybrid host)")
    return found


def left_behind(bed: Bed, unit_path: str) -> list[str]:
    return [str(h) for h in hierarchies(bed) if (h / unit_path.lstrip("/")).exists()]


def wait_gone(bed: Bed, unit: str) -> None:
    deadline = time.monotonic() + 30
    while bed.show(unit, "LoadState")["LoadState"] != "not-found":
        assert time.monotonic() < deadline, f"{unit} left behind"
        time.sleep(0.1)


def test_a_deleted_container_leaves_no_cgroup(bed: Bed, name: str, make_bundle: Any) -> None:
    out = bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "1000")))
    assert out.returncode == 0, out.stderr
    unit = f"sdshim-{name}.service"
    show = bed.show(unit, "ControlGroup", "MainPID")
    pid = int(bed.read(f"/sys/fs/cgroup/unified{show['ControlGroup']}/container/"
                       "cgroup.procs").split()[0])
    assert unmanaged_with(bed, pid, unit)
    assert bed.sdshim("rm", "-f", name).returncode == 0
    wait_gone(bed, unit)
    assert left_behind(bed, show["ControlGroup"]) == []


def test_a_template_container_leaves_no_cgroup(bed: Bed, name: str, make_bundle: Any,
                                               template_unit: Any) -> None:
    unit = template_unit(name, make_bundle("sleep", "1000"))
    assert bed.run(["systemctl", "start", unit]).returncode == 0
    cg = bed.show(unit, "ControlGroup")["ControlGroup"]
    pid = int(bed.read(f"/sys/fs/cgroup/unified{cg}/container/cgroup.procs").split()[0])
    assert unmanaged_with(bed, pid, unit)
    assert bed.run(["systemctl", "stop", unit]).returncode == 0
    assert bed.show(unit, "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert left_behind(bed, cg) == []
