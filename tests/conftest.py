"""Test bed: a real systemd, journald, D-Bus and runc for every integration test.

By default the session boots a throwaway systemd (sdshim.testbed) and runs each
command inside it with nsenter. SDSHIM_TEST_HOST_SYSTEMD=1 uses the host's systemd
instead (it must be PID 1), for packagers on ordinary hosts.

A facility the tests need and do not find fails the run under CI (CI=true) and is a
named skip elsewhere, never a silent one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sdshim import bundle as bundles
from sdshim import testbed

REPO = Path(__file__).resolve().parent.parent
SDSHIM = [sys.executable, "-m", "sdshim"]  # the CLI, as the tests run it
PREFIX = "sdt-"  # every container a test makes; cleanup touches only these


def missing(what: str) -> None:
    """A facility is missing: fail under CI, skip with its name elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"test bed incomplete: {what}", pytrace=False)
    pytest.skip(f"test bed incomplete: {what}")


@dataclass
class Bed:
    """Where the tests run commands: inside the booted box, or on the host."""

    box: testbed.Box | None
    scratch: Path

    def argv(self, argv: Sequence[str]) -> list[str]:
        return self.box.argv(argv) if self.box else list(argv)

    def run(self, argv: Sequence[str], *, input: bytes | None = None,
            timeout: float = 120, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(argv), input=input, capture_output=True,
                              timeout=timeout, env=env, check=False)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(argv), **kw)

    def sdshim(self, *args: str, input: bytes | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return self.run([*SDSHIM, *args], input=input, timeout=timeout)

    def path(self, path: str) -> Path:
        """A path inside the bed, readable from the test process."""
        if self.box is None:
            return Path(path)
        return Path(f"/proc/{self.box.pid}/root") / path.lstrip("/")

    def read(self, path: str) -> str:
        """A file's text as seen inside the bed (pids in cgroup.procs are namespaced)."""
        return self.run(["cat", path]).stdout.decode()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)])
        return dict(line.split("=", 1) for line in out.stdout.decode().splitlines() if "=" in line)

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        out = self.run(["journalctl", "--no-pager", "-o", "json", "--all", *matches])
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _prerequisites() -> list[str]:
    lacking = []
    if os.geteuid() != 0:
        lacking.append("root")
    for prog in ("runc", "unshare", "nsenter", "journalctl", "systemctl"):
        if shutil.which(prog) is None:
            lacking.append(prog)
    if not bundles.BUSYBOX.exists():
        lacking.append("busybox-static (/bin/busybox)")
    try:
        import dbus_fast  # noqa: F401
    except ImportError:
        lacking.append("python module dbus_fast")
    return lacking


@pytest.fixture(scope="session")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    lacking = _prerequisites()
    if lacking:
        missing(", ".join(lacking))
    scratch = tmp_path_factory.mktemp("bed")
    if os.environ.get("SDSHIM_TEST_HOST_SYSTEMD") == "1":
        if not Path("/run/systemd/system").is_dir():
            missing("SDSHIM_TEST_HOST_SYSTEMD=1 but systemd is not PID 1 here")
        yield Bed(None, scratch)
        return
    box = testbed.boot([REPO, scratch])
    try:
        yield Bed(box, scratch)
    finally:
        box.stop()


@pytest.fixture
def name(bed: Bed) -> Iterator[str]:
    """A fresh container name; whatever the test leaves under it is deleted after."""
    n = f"{PREFIX}{secrets.token_hex(4)}"
    yield n
    cleanup(bed)


def cleanup(bed: Bed) -> None:
    out = bed.sdshim("list", "--json")
    for status in json.loads(out.stdout or b"[]"):
        if status["name"].startswith(PREFIX):
            bed.sdshim("delete", "--force", status["name"])


@pytest.fixture
def make_bundle(bed: Bed) -> Any:
    """make_bundle(*args) -> a busybox bundle running args, inside the shared scratch."""
    base = bed.scratch / "bundles"

    def make(*args: str, **kw: Any) -> Path:
        target = base / secrets.token_hex(4)
        target.mkdir(parents=True)
        (target / "rootfs").symlink_to(shared_rootfs(bed))
        bundles.write_config(target, args, **kw)
        return target

    return make


def shared_rootfs(bed: Bed) -> Path:
    """The busybox rootfs every make_bundle bundle links to (made once per session)."""
    base = bed.scratch / "bundles"
    rootfs = base / "rootfs"
    if not rootfs.exists():
        bundles.make_busybox(base / "template", ["true"])
        (base / "template/rootfs").rename(rootfs)
    return rootfs


HELPER_SOURCE = REPO / "tests/helpers/sdhelper.c"


@pytest.fixture
def sdhelper(bed: Bed) -> str:
    """/bin/sdhelper in the shared rootfs: tests/helpers/sdhelper.c, built static (sends
    sd_notify datagrams from inside a container); its path in the container."""
    target = shared_rootfs(bed) / "bin/sdhelper"
    if not target.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            missing("a C compiler (cc) for tests/helpers/sdhelper.c")
        built = subprocess.run([str(cc), "-static", "-O2", "-o", str(target) + ".tmp",
                                str(HELPER_SOURCE)], capture_output=True, check=False)
        if built.returncode != 0:
            missing(f"static build of sdhelper.c: {built.stderr.decode()[-300:]}")
        Path(str(target) + ".tmp").rename(target)
    return "/bin/sdhelper"


@pytest.fixture
def sdunit(bed: Bed) -> str:
    """/bin/sdunit in the shared rootfs: tests/helpers/sdunit.c, built static (watchdog
    keep-alives, a socket-activated server, reload on a signal); its path in there."""
    target = shared_rootfs(bed) / "bin/sdunit"
    if not target.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            missing("a C compiler (cc) for tests/helpers/sdunit.c")
        built = subprocess.run([str(cc), "-static", "-O2", "-o", str(target) + ".tmp",
                                str(REPO / "tests/helpers/sdunit.c")],
                               capture_output=True, check=False)
        if built.returncode != 0:
            missing(f"static build of sdunit.c: {built.stderr.decode()[-300:]}")
        Path(str(target) + ".tmp").rename(target)
    return "/bin/sdunit"


TEMPLATE_UNIT = "/etc/systemd/system/sdshim@.service"


@pytest.fixture
def template_unit(bed: Bed) -> Iterator[Any]:
    """systemd/sdshim@.service installed in the bed, its monitor this checkout's (the
    package tests cover the installed one). Yields instance(name, bundle, options="",
    dropin="") -> "sdshim@NAME.service", with a drop-in for that bundle, SDSHIM_OPTIONS
    and any more [Service] lines; the test starts it. Every instance is stopped and its
    records removed after the test."""
    from sdshim.units.spec import monitor_command

    text = (REPO / "systemd/sdshim@.service").read_text()
    text = text.replace("/usr/bin/python3 -I -m sdshim.shim", " ".join(monitor_command()))
    assert " ".join(monitor_command()) in text
    unit_file = bed.path(TEMPLATE_UNIT)
    unit_file.write_text(text)
    started: list[tuple[str, Path]] = []

    def instance(name: str, bundle: Path, options: str = "", dropin: str = "") -> str:
        unit = f"sdshim@{name}.service"
        conf = bed.path(f"/etc/systemd/system/{unit}.d/test.conf")
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f"[Service]\nEnvironment=SDSHIM_BUNDLE={bundle}\n"
                        f"Environment=\"SDSHIM_OPTIONS={options}\"\n{dropin}")
        started.append((unit, conf.parent))
        bed.run(["systemctl", "daemon-reload"])
        return unit

    try:
        yield instance
    finally:
        for unit, dropins in started:
            bed.run(["systemctl", "stop", unit])
            bed.run(["systemctl", "reset-failed", unit])
            shutil.rmtree(dropins, ignore_errors=True)
            shutil.rmtree(bed.path(f"/run/sdshim/{unit[len('sdshim@'):-len('.service')]}"),
                          ignore_errors=True)
        unit_file.unlink()
        bed.run(["systemctl", "daemon-reload"])


def foreign_bundle(bed: Bed, make_bundle: Any, *args: str) -> Path:
    """A bundle whose rootfs has /foreign: an aarch64 ELF header, ENOEXEC on x86_64."""
    bundle: Path = make_bundle(*args)
    rootfs = bundle / "rootfs"
    foreign = bed.scratch / "foreign-rootfs"
    if not foreign.exists():
        shutil.copytree(rootfs.resolve(), foreign, symlinks=True)
        header = bytes.fromhex("7f454c46020101000000000000000000") + \
            bytes.fromhex("0200b700010000000000000000000000") + bytes(200)
        (foreign / "foreign").write_bytes(header)
        (foreign / "foreign").chmod(0o755)
    rootfs.unlink()
    rootfs.symlink_to(foreign)
    return bundle


def slow_runtime(bed: Bed, seconds: float, verb: str = "create") -> Path:
    """A runtime wrapper whose `verb` takes `seconds` longer (a window for faults).

    "create" slows `run` as well: with --start the monitor creates and starts the
    container with one `runc run --detach`.
    """
    path = bed.scratch / f"slow-{verb}-{seconds}"
    verbs = "create|run" if verb == "create" else verb
    # $7: the verb, after --root R --log L --log-format json (see shim/runtime.py).
    path.write_text(f"#!/bin/sh\ncase \"$7\" in {verbs}) sleep {seconds};; esac\n"
                    "exec runc \"$@\"\n")
    path.chmod(0o755)
    return path


def run_while_creating(bed: Bed, name: str, bundle: Path,
                       seconds: float) -> subprocess.Popen[bytes]:
    """`sdshim run -d` with a runtime whose create takes `seconds`; returns once the
    monitor is set up (its state record exists) and the runtime is still creating."""
    proc = bed.popen([*SDSHIM, "run", "-d", "--runtime",
                      str(slow_runtime(bed, seconds)), "--name", name, str(bundle)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while not bed.path(f"/run/sdshim/{name}/state.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "monitor never set up"
        time.sleep(0.01)
    return proc


def assert_clean(bed: Bed, name: str, cid: str | None = None) -> None:
    """Nothing of container `name` (id cid) is left: unit, records, runtime state."""
    units = bed.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                     f"sdshim-{name}.service"]).stdout.decode()
    assert units.strip() == "", units
    assert not bed.path(f"/run/sdshim/{name}").exists()
    if cid:
        runc = bed.run(["runc", "--root", "/run/sdshim/.runtime/runc", "list", "-q"])
        assert cid not in runc.stdout.decode().split()
        assert not bed.path(f"/run/sdshim/.runtime/runc/{cid}").exists()


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (CI timeouts, `kill`) must tear the test bed down like Ctrl-C does.
    def interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    config.addinivalue_line(
        "markers", "integration: needs root and the booted test bed (real systemd, runc)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test is an integration test exactly when it reaches the test bed: marked by
    # construction, so `pytest -m "not integration"` never boots a box.
    for item in items:
        if "bed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
