"""The .deb and the .rpm: built once from a copy of the tree, the .deb installed with
apt INTO the test-bed box (its root is an overlay with a tmpfs upper layer, so the
host's dpkg database and /usr stay untouched) and used there with Debian's python3
and python3-dbus-fast: the CLI, then sdshim@.service; then purged."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import common
from sdshim import __version__
from sdshim import bundle as bundles
from sdshim.units.cli import build_parser
from tests.conftest import PREFIX, REPO, Bed, missing
from tests.test_podman import import_image

# What the installed package runs with: Debian's tools and python3, no pyenv or venv.
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "DEBIAN_FRONTEND": "noninteractive"}
BUILD_TOOLS = ("make", "dpkg-buildpackage", "dh_python3", "lintian", "rpmbuild", "rpm")
DEB_FILES = ("/usr/bin/sdshim", "/lib/systemd/system/sdshim.slice",
             "/lib/systemd/system/sdshim@.service", "/lib/systemd/system/sdshim@.socket",
             "/usr/lib/tmpfiles.d/sdshim.conf",
             "/usr/share/man/man1/sdshim.1.gz", "/usr/share/bash-completion/completions/sdshim",
             "/usr/lib/python3/dist-packages/sdshim/shim/monitor.py", "/var/lib/sdshim/bundles")
SYSTEM_SITE = "/usr/lib/python3/dist-packages/"
POLICY_RC = "/usr/sbin/policy-rc.d"


@dataclass
class Packages:
    deb: Path
    rpm: Path
    # sdshim-conmon: podman's conmon_path, a package of its own (podman reports the
    # package that owns its conmon)
    conmon_deb: Path
    conmon_rpm: Path


def _packages(out: Path, version: str) -> Packages:
    return Packages(out / f"sdshim_{version}_all.deb", out / f"sdshim-{version}-1.noarch.rpm",
                    out / f"sdshim-conmon_{version}_all.deb",
                    out / f"sdshim-conmon-{version}-1.noarch.rpm")


def _git_status() -> str:
    return subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--ignored"],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    """`make deb rpm` once per session, into a temporary directory."""
    lacking = [t for t in BUILD_TOOLS if shutil.which(t, path=SYSTEM_ENV["PATH"]) is None]
    if lacking:
        missing("package build tools " + ", ".join(lacking) + " (see APT_PACKAGES in dev.sh)")
    out = tmp_path_factory.mktemp("packages")
    before = _git_status()
    build = subprocess.run(["make", "-C", str(REPO), "deb", "rpm", f"OUT={out}"],
                           capture_output=True, text=True, timeout=600, check=False,
                           env={**os.environ, **SYSTEM_ENV})
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    # The build ran in a copy: not even an ignored file (build/, __pycache__) appeared.
    assert _git_status() == before
    return _packages(out, __version__)


# --- a second version, for the upgrade test -------------------------------------------

# Only in the second package: every sdshim module of that version, once imported, appends
# "PID PPID MODULE ARGV0" to PROBE_LOG, so the test sees which processes ran new code.
PROBE_LOG = "/run/sdshim-upgrade-probe"
PROBE = f'''"""The upgrade test's marker (tests/test_packaging.py): who imports this version."""

import posix
import sys

LOG = "{PROBE_LOG}"


def record(module: str) -> None:
    argv0 = sys.argv[0] if sys.argv else "-"
    line = f"{{posix.getpid()}} {{posix.getppid()}} {{module}} {{argv0}}\\n"
    flags = posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC
    fd = posix.open(LOG, flags, 0o644)
    try:
        posix.write(fd, line.encode())
    finally:
        posix.close(fd)


def main() -> None:
    """sdshim-upgradetest: an extra console script, as sdshim-conmon is."""
    from sdshim import __version__

    print(f"upgradetest {{__version__}} {{sys.argv[0]}}")
'''
# The second package carries an extra console script, so both packages' rules for
# sdshim-NAME scripts (also /usr/libexec/sdshim/NAME) are exercised.
EXTRA_SCRIPT = 'sdshim-upgradetest = "sdshim._upgrade_probe:main"'
PROBE_CALL = "\nimport sdshim._upgrade_probe as _upgrade_probe  # noqa\n" \
             "_upgrade_probe.record(__name__)\n"


@dataclass
class NextPackage:
    packages: Packages
    version: str


def _bump_version(tree: Path, version: str) -> None:
    """Everything `make check-version` compares, set to version."""
    def sub(path: str, pattern: str, repl: str) -> None:
        file = tree / path
        text, n = re.subn(pattern, repl, file.read_text(), count=1, flags=re.M)
        assert n == 1, (path, pattern)
        file.write_text(text)

    sub("pyproject.toml", r'^version = ".*"$', f'version = "{version}"')
    sub("pyproject.toml", r"^\[project.scripts\]$", f"[project.scripts]\n{EXTRA_SCRIPT}")
    sub("sdshim/__init__.py", r'^__version__ = ".*"$', f'__version__ = "{version}"')
    sub("packaging/rpm/sdshim.spec", r"^Version:( *).*$", rf"Version:\g<1>{version}")
    changelog = tree / "packaging/debian/changelog"
    old = changelog.read_text()
    maintainer = re.search(r"^ -- (.*?>)  ", old, re.M)
    assert maintainer, old
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    changelog.write_text(f"sdshim ({version}) unstable; urgency=medium\n\n"
                         "  * Upgrade test: every module tells who imports it.\n\n"
                         f" -- {maintainer[1]}  {date}\n\n{old}")


@pytest.fixture(scope="session")
def next_package(tmp_path_factory: pytest.TempPathFactory) -> NextPackage:
    """The tree as version X.1 with every module marked (PROBE_CALL): `make deb` once per
    session, in a copy of the tree."""
    lacking = [t for t in BUILD_TOOLS if shutil.which(t, path=SYSTEM_ENV["PATH"]) is None]
    if lacking:
        missing("package build tools " + ", ".join(lacking) + " (see APT_PACKAGES in dev.sh)")
    work = tmp_path_factory.mktemp("next-package")
    tree = work / "tree"
    tree.mkdir()
    sources = re.search(r"^SOURCES := (.*)$", (REPO / "Makefile").read_text(), re.M)
    assert sources
    for item in ["Makefile", *sources[1].split()]:
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, tree / item,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / item, tree / item)
    version = f"{__version__}.1"
    _bump_version(tree, version)
    (tree / "sdshim/_upgrade_probe.py").write_text(PROBE)
    for module in (tree / "sdshim").rglob("*.py"):
        if module.name != "_upgrade_probe.py":
            module.write_text(module.read_text() + PROBE_CALL)
    build = subprocess.run(["make", "-C", str(tree), "deb", "rpm", f"OUT={work / 'out'}"],
                           capture_output=True, text=True, timeout=600, check=False,
                           env={**os.environ, **SYSTEM_ENV})
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return NextPackage(_packages(work / "out", version), version)


def test_extra_console_scripts_are_also_in_libexec(next_package: NextPackage) -> None:
    """Each sdshim-NAME script is /usr/bin/sdshim-NAME and /usr/libexec/sdshim/NAME, in
    both packages (the second package has one: EXTRA_SCRIPT)."""
    deb = subprocess.run(["dpkg-deb", "-c", str(next_package.packages.deb)], capture_output=True,
                         text=True, check=True).stdout
    assert re.search(r"^-rwxr-xr-x .* \./usr/bin/sdshim-upgradetest$", deb, re.M), deb
    assert re.search(r"^lrwxrwxrwx .* \./usr/libexec/sdshim/upgradetest -> "
                     r"\.\./\.\./bin/sdshim-upgradetest$", deb, re.M), deb
    rpm = subprocess.run(["rpm", "-qlvp", str(next_package.packages.rpm)], capture_output=True,
                         text=True, check=True).stdout
    assert re.search(r"^-rwxr-xr-x .* /usr/bin/sdshim-upgradetest$", rpm, re.M), rpm
    assert re.search(r"^lrwxrwxrwx .* /usr/libexec/sdshim/upgradetest -> "
                     r"\.\./\.\./bin/sdshim-upgradetest$", rpm, re.M), rpm
    assert re.search(r"^drwxr-xr-x .* /usr/libexec/sdshim$", rpm, re.M), rpm


def test_conmon_is_a_package_of_its_own(packages: Packages) -> None:
    """sdshim-conmon holds podman's conmon_path and nothing else, and needs the very same
    sdshim; sdshim holds no conmon."""
    conmon = {"/usr/bin/sdshim-conmon", "/usr/libexec/sdshim/conmon"}
    deb = subprocess.run(["dpkg-deb", "-c", str(packages.conmon_deb)], capture_output=True,
                         text=True, check=True).stdout
    assert re.search(r"^-rwxr-xr-x .* \./usr/bin/sdshim-conmon$", deb, re.M), deb
    # Not a link: the sh front (packaging/libexec/conmon) that answers --version.
    assert re.search(r"^-rwxr-xr-x .* \./usr/libexec/sdshim/conmon$", deb, re.M), deb
    assert not re.search(r"dist-packages|/lib/systemd", deb), deb
    # The wheel installers drop a #! line's options; both packages put -IS back.
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(packages.conmon_deb)],
                         capture_output=True, check=True).stdout
    script = subprocess.run(["tar", "-xO", "./usr/bin/sdshim-conmon"], input=tar,
                            capture_output=True, check=True).stdout
    assert script.startswith(b"#!/usr/bin/python3 -IS\n"), script[:80]
    tar = subprocess.run(["rpm2archive", "-n", "-"], stdin=packages.conmon_rpm.open("rb"),
                         capture_output=True, check=True).stdout
    script = subprocess.run(["tar", "-xO", "./usr/bin/sdshim-conmon"], input=tar,
                            capture_output=True, check=True).stdout
    assert script.startswith(b"#!/usr/bin/python3 -IS\n"), script[:80]
    rpm_files = subprocess.run(["rpm", "-qlvp", str(packages.conmon_rpm)],
                               capture_output=True, text=True, check=True).stdout
    assert re.search(r"^-rwxr-xr-x .* /usr/libexec/sdshim/conmon$", rpm_files, re.M), \
        rpm_files
    fields = subprocess.run(["dpkg-deb", "-f", str(packages.conmon_deb), "Depends",
                             "Architecture"], capture_output=True, text=True,
                            check=True).stdout
    assert f"sdshim (= {__version__})" in fields and "Architecture: all" in fields, fields
    main = subprocess.run(["dpkg-deb", "-c", str(packages.deb)], capture_output=True,
                          text=True, check=True).stdout
    assert not any(f" .{path}" in main for path in conmon), main
    rpm = subprocess.run(["rpm", "-qlp", str(packages.conmon_rpm)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert set(rpm) == conmon | {"/usr/libexec/sdshim"}, rpm
    requires = subprocess.run(["rpm", "-qp", "--requires", str(packages.conmon_rpm)],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert f"sdshim = {__version__}-1" in requires, requires
    main_rpm = subprocess.run(["rpm", "-qlp", str(packages.rpm)], capture_output=True,
                              text=True, check=True).stdout.split()
    assert not conmon & set(main_rpm), main_rpm


def test_rpm_has_the_debs_contents_and_requirements(packages: Packages) -> None:
    files = subprocess.run(["rpm", "-qlp", str(packages.rpm)], capture_output=True,
                           text=True, check=True).stdout.split()
    for path in ("/usr/bin/sdshim", "/usr/lib/systemd/system/sdshim.slice",
                 "/usr/lib/systemd/system/sdshim@.service",
                 "/usr/lib/systemd/system/sdshim@.socket", "/usr/lib/tmpfiles.d/sdshim.conf",
                 "/usr/share/man/man1/sdshim.1", "/usr/share/bash-completion/completions/sdshim",
                 "/var/lib/sdshim/bundles"):
        assert any(f.startswith(path) for f in files), (path, files)
    assert any(f.endswith("/site-packages/sdshim/shim/monitor.py") for f in files), files
    requires = subprocess.run(["rpm", "-qp", "--requires", str(packages.rpm)],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert "(runc or crun)" in requires
    assert "python3-dbus-fast >= 1.84" in requires
    assert "python3 >= 3.11" in requires
    info = subprocess.run(["rpm", "-qp", "--qf", "%{ARCH} %{VERSION}", str(packages.rpm)],
                          capture_output=True, text=True, check=True).stdout
    assert info == f"noarch {__version__}"


def test_deb_metadata(packages: Packages) -> None:
    fields = subprocess.run(["dpkg-deb", "-f", str(packages.deb), "Architecture", "Depends",
                             "Version"], capture_output=True, text=True, check=True).stdout
    assert "Architecture: all" in fields and f"Version: {__version__}" in fields
    depends = fields.split("Depends:", 1)[1].splitlines()[0]
    assert "python3-dbus-fast (>= 1.84)" in depends and "runc | crun" in depends
    assert "python3" in depends.replace("python3-dbus-fast", "")
    # The template is for the administrator to enable: no maintainer script touches it.
    scripts = subprocess.run(["dpkg-deb", "-I", str(packages.deb), "postinst", "prerm",
                              "postrm"], capture_output=True, check=True).stdout
    assert b"sdshim@" not in scripts and b"sdshim.slice" in scripts
    # An upgrade restarts nothing: no restart at all, and the slice (with every container
    # in it) is stopped only on removal.
    assert b"restart" not in scripts.replace(b"--no-restart", b"")
    for stop in re.finditer(rb"^(.*)\n\s*deb-systemd-invoke stop .*$", scripts, re.M):
        assert b'"$1" = remove' in stop[1], stop[0]
    assert re.search(rb"deb-systemd-invoke stop 'sdshim.slice'", scripts)


# --- the .deb installed in the box ------------------------------------------------------


@dataclass
class Installed:
    bed: Bed
    files: list[str]

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """argv inside the box with Debian's PATH and nothing of the caller's environment."""
        return self.bed.run(argv, env=SYSTEM_ENV, timeout=timeout)

    def ok(self, *argv: str) -> str:
        out = self.run(*argv)
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
        return out.stdout.decode()

    def sdshim(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return self.run("/usr/bin/sdshim", *args)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        text = self.ok("systemctl", "show", unit, *(f"-p{p}" for p in props))
        return dict(line.split("=", 1) for line in text.splitlines())


def _python_site_dirs_to_hide(bed: Bed) -> list[str]:
    """/usr/local site dirs: a global `pip install -e .` (dev.sh) there would shadow the
    package's code and python3-dbus-fast for Debian's python3."""
    out = bed.run(["/usr/bin/python3", "-I", "-c",
                   "import site; print('\\n'.join(site.getsitepackages()))"])
    return [d for d in out.stdout.decode().split() if d.startswith("/usr/local/")
            and bed.path(d).is_dir()]


def _copy_in(bed: Bed, *files: Path) -> list[Path]:
    """Copies of files in the box's scratch directory, for apt there."""
    copies = [bed.scratch / f.name for f in files]
    for f, copy in zip(files, copies, strict=True):
        shutil.copy(f, copy)
    return copies


@pytest.fixture(scope="module")
def installed(bed: Bed, packages: Packages) -> Iterator[Installed]:
    if bed.box is None:
        pytest.skip("package install tests run only in the test-bed box, never on the host "
                    "(unset SDSHIM_TEST_HOST_SYSTEMD)")
    # The box's root must be the overlay, or apt would install on the host.
    assert bed.run(["findmnt", "-n", "-o", "FSTYPE", "/"]).stdout.decode().strip() == "overlay"
    if Path("/usr/bin/sdshim").exists() or subprocess.run(
            ["dpkg-query", "-W", "sdshim"], capture_output=True, check=False).returncode == 0:
        missing("sdshim is installed on the host; remove it so the package tests can tell "
                "the box's install from the host's")
    # Make the box a plain Debian host, in its own mount namespace only.
    hidden = _python_site_dirs_to_hide(bed)
    for d in hidden:
        assert bed.run(["mount", "-t", "tmpfs", "-o", "ro,mode=0755", "hidden", d]).returncode == 0
    if bed.path(POLICY_RC).exists():
        # Docker images forbid starting and stopping services in maintainer scripts;
        # a non-executable policy-rc.d counts as none.
        assert bed.run(["mount", "--bind", "/dev/null", POLICY_RC]).returncode == 0
        hidden.append(POLICY_RC)
    debs = _copy_in(bed, packages.deb, packages.conmon_deb)
    inst = Installed(bed, [])
    try:
        inst.ok("apt-get", "install", "-y", "--no-install-recommends", *map(str, debs))
        inst.files = [f for f in inst.ok("dpkg", "-L", "sdshim", "sdshim-conmon").split()
                      if f != "/."]
        yield inst
    finally:
        # if a test failed before the purge test
        inst.run("apt-get", "purge", "-y", "sdshim", "sdshim-conmon")
        for d in hidden:
            bed.run(["umount", d])
        for deb in debs:
            deb.unlink()
    # The box's install never reached the host.
    assert not Path("/usr/bin/sdshim").exists()
    assert subprocess.run(["dpkg-query", "-W", "sdshim"], capture_output=True,
                          check=False).returncode != 0


def test_installed_cli_runs_a_container_with_debians_python(
        installed: Installed, make_bundle: Any) -> None:
    for path in DEB_FILES:
        assert path in installed.files, path
    # Debian's python3 runs the package's code with Debian's python3-dbus-fast.
    where = installed.ok("/usr/bin/python3", "-c", "import sdshim, dbus_fast, importlib.metadata"
                         " as m; print(sdshim.__file__, dbus_fast.__file__,"
                         " m.version('dbus-fast'))").split()
    assert where[0].startswith(SYSTEM_SITE) and where[1].startswith(SYSTEM_SITE), where
    assert installed.ok("head", "-1", "/usr/bin/sdshim").strip() == "#!/usr/bin/python3"
    # podman's conmon_path, owned by sdshim-conmon (what `podman info` reports as the
    # conmon package), runs with Debian's python3 too.
    assert installed.ok("dpkg-query", "-S", "/usr/libexec/sdshim/conmon").startswith(
        "sdshim-conmon: ")
    assert installed.ok("/usr/libexec/sdshim/conmon", "--version").startswith(
        "conmon version 2.1.6")
    # The script itself (-IS: no site) finds the package in dist-packages, as it does
    # for everything but --version (the front execs it): the same answer from Python.
    assert installed.ok("/usr/bin/sdshim-conmon", "--version") == installed.ok(
        "/usr/libexec/sdshim/conmon", "--version")
    assert b"Unknown option --bogus" in installed.run("/usr/libexec/sdshim/conmon",
                                                      "--bogus").stdout
    assert installed.ok("stat", "-c", "%a", "/run/sdshim").strip() == "700"  # tmpfiles.d

    name = f"{PREFIX}{secrets.token_hex(4)}"
    bundle = make_bundle("sh", "-c", "echo pkg-out; echo pkg-err >&2; exit 7")
    run = installed.sdshim("run", "-d", "--name", name, str(bundle))
    assert run.returncode == 0 and run.stdout.decode().strip() == name, run.stderr
    wait = installed.sdshim("wait", name)
    assert wait.returncode == 7 and wait.stdout.decode().strip() == "7", wait.stderr
    show = installed.show(f"sdshim-{name}.service", "ExecStart", "Slice", "ExecMainStatus")
    assert "path=/usr/bin/python3 " in show["ExecStart"], show
    assert show["Slice"] == "sdshim.slice" and show["ExecMainStatus"] == "7"
    status = json.loads(installed.ok("/usr/bin/sdshim", "status", "--json", name))
    assert status["state"] == "exited" and status["exit_code"] == 7
    journal = [json.loads(line) for line in installed.ok(
        "journalctl", "-o", "json", f"CONTAINER_NAME={name}").splitlines()]
    assert sorted((e["MESSAGE"], e["PRIORITY"]) for e in journal) == [("pkg-err", "3"),
                                                                     ("pkg-out", "6")]
    assert installed.sdshim("delete", name).returncode == 0


def test_template_unit_runs_the_bundle_as_a_boot_service(installed: Installed) -> None:
    name = f"{PREFIX}boot-{secrets.token_hex(3)}"
    unit = f"sdshim@{name}.service"
    # Fails once (a marker in its rootfs remembers), then runs until stopped.
    script = ('trap "echo stopping; exit 0" TERM; '
              'if [ ! -e /ran-once ]; then touch /ran-once; echo first; sleep 1; exit 3; fi; '
              'echo second; while :; do sleep 0.1; done')
    bundle = installed.bed.path(f"/var/lib/sdshim/bundles/{name}")
    bundles.make_busybox(bundle, ["sh", "-c", script])
    dropin = installed.bed.path(f"/etc/systemd/system/{unit}.d/test.conf")
    bad_unit = f"sdshim@{PREFIX}badopt.service"
    bad_dropin = installed.bed.path(f"/etc/systemd/system/{bad_unit}.d/test.conf")
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nRestart=on-failure\nRestartSec=100ms\nMemoryMax=64M\n"
                      "Environment=\"SDSHIM_OPTIONS=--tag boot-tag --stop-timeout 5\"\n")
    try:
        installed.ok("systemctl", "daemon-reload")
        installed.ok("systemctl", "enable", "--now", unit)
        assert installed.ok("systemctl", "is-enabled", unit).strip() == "enabled"
        props = _wait_props(installed, unit, lambda p: p["SubState"] == "running"
                            and p["NRestarts"] == "1",
                            "SubState", "NRestarts", "StatusText", "ControlGroup", "MemoryMax",
                            "Type", "Delegate", "RemainAfterExit", "MainPID")
        assert props["Type"] == "notify" and props["Delegate"] == "yes"
        assert props["RemainAfterExit"] == "no" and props["MemoryMax"] == str(64 << 20)
        assert props["ControlGroup"] == f"/sdshim.slice/{unit}"
        assert f"Container {name} running" in props["StatusText"]
        status = json.loads(installed.ok("/usr/bin/sdshim", "status", "--json", name))
        assert status["state"] == "running" and status["unit"] == unit
        assert status["monitor_pid"] == int(props["MainPID"])
        assert name in installed.ok("systemctl", "status", "--no-pager", "sdshim.slice")
        # The completion knows the container by name, and the commands.
        assert name in _complete(installed, "sdshim", "status", name[:6])
        assert _complete(installed, "sdshim", "st") == ["start", "status", "stop"]
        assert "--stream" in _complete(installed, "sdshim", "logs", "--s")
        assert "SIGTERM" in _complete(installed, "sdshim", "kill", "-s", "sigte")

        installed.ok("systemctl", "disable", "--now", unit)
        props = installed.show(unit, "ActiveState", "ExecMainStatus")
        assert props == {"ActiveState": "inactive", "ExecMainStatus": "0"}
        lines = [(e["MESSAGE"], e.get("CONTAINER_TAG")) for e in map(json.loads, installed.ok(
            "journalctl", "-o", "json", "-u", unit, f"CONTAINER_NAME={name}").splitlines())]
        assert lines == [("first", "boot-tag"), ("second", "boot-tag"),
                         ("stopping", "boot-tag")]
        exit_record = json.loads(installed.ok("cat", f"/run/sdshim/{name}/exit.json"))
        assert exit_record["exit_code"] == 0 and exit_record["stop_signal"] == "SIGTERM"
        assert installed.ok("/usr/bin/sdshim", "wait", name).strip() == "0"

        # A bundle that is not there: the unit fails, saying which file is missing.
        missing_unit = f"sdshim@{PREFIX}missing.service"
        assert installed.run("systemctl", "start", missing_unit).returncode != 0
        failed = installed.show(missing_unit, "ActiveState", "StatusText", "ExecMainStatus")
        assert failed["ActiveState"] == "failed" and failed["ExecMainStatus"] == "125"
        assert f"/var/lib/sdshim/bundles/{PREFIX}missing/config.json" in failed["StatusText"]

        # Options the monitor cannot use: it says so and exits 251, which Restart= skips
        # (not 2, which would be restarted into the same error forever).
        bad_dropin.parent.mkdir(parents=True)
        bad_dropin.write_text("[Service]\nRestart=always\nRestartSec=100ms\n"
                              'Environment="SDSHIM_OPTIONS=--stop-timeout soon"\n')
        installed.ok("systemctl", "daemon-reload")
        assert installed.run("systemctl", "start", bad_unit).returncode != 0
        failed = installed.show(bad_unit, "ActiveState", "StatusText", "ExecMainStatus",
                                "NRestarts")
        assert failed["ActiveState"] == "failed" and failed["ExecMainStatus"] == "251"
        assert failed["NRestarts"] == "0"
        assert "invalid value for --stop-timeout: 'soon'" in failed["StatusText"], failed
    finally:
        installed.run("systemctl", "disable", "--now", unit)
        installed.run("systemctl", "reset-failed", f"sdshim@{PREFIX}missing.service", bad_unit)
        shutil.rmtree(dropin.parent, ignore_errors=True)
        shutil.rmtree(bad_dropin.parent, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
        for n in (name, f"{PREFIX}missing", f"{PREFIX}badopt"):
            shutil.rmtree(installed.bed.path(f"/run/sdshim/{n}"), ignore_errors=True)


def test_man_page_documents_every_command(installed: Installed) -> None:
    page = installed.ok("man", "-P", "cat", "sdshim")
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in sub.choices:
        assert f"sdshim {command}" in page or f"Also: {command}" in page, command
    assert "sdshim@.service" in page and "SDSHIM_BUNDLE" in page


def _box_pids(proc: subprocess.Popen[bytes]) -> set[int]:
    """The pids, inside the box, of the processes bed.popen started (nsenter's children)."""
    pids, todo = set(), [proc.pid]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            nspid = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                         if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if pid != proc.pid:
            pids.add(int(nspid.split()[-1]))
        todo += map(int, children)
    return pids


def _monitors(inst: Installed, tag: str) -> dict[str, dict[str, str]]:
    """MainPID, InvocationID, NRestarts, ... of the sdshim units whose name has tag."""
    units = inst.ok("systemctl", "list-units", "--all", "--plain", "--no-legend",
                    f"sdshim-*{tag}*", f"sdshim@*{tag}*").split("\n")
    return {u.split()[0]: inst.show(u.split()[0], "MainPID", "InvocationID", "NRestarts",
                                    "ActiveState", "ExecStart")
            for u in units if u.strip()}


def _argv(props: dict[str, str]) -> str:
    """The command line in systemctl show's ExecStart (which also has pid and times),
    unescaped (a unit read back from its transient file shows `;` as `\\;`)."""
    m = re.search(r"argv\[\]=(.*?) ; ignore_errors=", props["ExecStart"])
    assert m, props
    return m[1].replace("\\", "")


def _probe(inst: Installed) -> list[tuple[int, int, str, str]]:
    """(pid, ppid, module, argv0) for every import of the second version's modules."""
    path = inst.bed.path(PROBE_LOG)
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(p), int(pp), m, a) for p, pp, m, a in (line.split(" ", 3) for line in lines)]


def _status(inst: Installed, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(inst.ok("/usr/bin/sdshim", "status", "--json", name))
    return result


def test_upgrade_in_place_restarts_nothing_and_old_monitors_run_only_old_code(
        installed: Installed, next_package: NextPackage, make_bundle: Any) -> None:
    """apt install of the next version while containers run in every mode: none restarts,
    no process of the old version imports a module of the new one (PROBE_LOG says who
    did), the new CLI drives the old containers, and a Restart= of an old unit runs the
    new monitor from the old unit's command line."""
    from tests.test_interactive import Terminal

    inst = installed
    tag = secrets.token_hex(3)
    names = {mode: f"{PREFIX}up{tag}-{mode}" for mode in
             ("pipes", "stdin", "tty", "always", "stream", "attached", "new")}
    template = f"{PREFIX}up{tag}-boot"
    # podman's container on the installed sdshim-conmon: a name without tag, so that its
    # unit is not among the sdshim monitors counted below.
    pod_name = f"{PREFIX}uppm{secrets.token_hex(3)}"
    pod_unit = f"sdshim-podman-{pod_name}.service"
    if not Path("/usr/bin/podman").exists():
        missing("podman (apt-get install podman)")
    pod_env = {**SYSTEM_ENV, **{k: v for k, v in common.podman_env(inst.bed.scratch).items()
                                if k.startswith("CONTAINERS_")}}

    def pod(*args: str) -> subprocess.CompletedProcess[bytes]:
        return inst.bed.run(["podman", "--conmon", "/usr/libexec/sdshim/conmon", *args],
                            env=pod_env, timeout=120)
    unit = f"sdshim@{template}.service"
    ticks = ('trap "echo bye; exit 0" TERM; i=0; '
             'while :; do echo {0}-$i; i=$((i+1)); sleep 0.1; done')
    old_clis: list[subprocess.Popen[bytes]] = []
    terminals: list[Terminal] = []
    bundle = inst.bed.path(f"/var/lib/sdshim/bundles/{template}")
    dropin = inst.bed.path(f"/etc/systemd/system/{unit}.d/test.conf")
    try:
        # --- version 1: a container in every mode -----------------------------------
        for mode, args in (
                ("pipes", ["run", "-d", str(make_bundle("sh", "-c", ticks.format("pipes")))]),
                ("stdin", ["run", "-d", "-i", str(make_bundle(
                    "sh", "-c", "while read l; do echo got-$l; done; exit 4"))]),
                ("tty", ["run", "-d", "-it", str(make_bundle("sh"))]),
                ("always", ["run", "-d", "--restart", "always", "--restart-delay", "0.1",
                            str(make_bundle("sh", "-c", ticks.format("always")))]),
                ("stream", ["run", "-d", "--log-driver", "stream",
                            str(make_bundle("sh", "-c", ticks.format("stream")))])):
            out = inst.sdshim(*args[:-1], "--name", names[mode], args[-1])
            assert out.returncode == 0, (mode, out.stderr)
        # A template unit, with an option no version knows in its drop-in: ignored, named.
        bundles.make_busybox(bundle, ["sh", "-c", ticks.format("boot")])
        dropin.parent.mkdir(parents=True)
        dropin.write_text("[Service]\nRestart=on-failure\nRestartSec=100ms\nEnvironment="
                          '"SDSHIM_OPTIONS=--tag boot --from-a-newer-sdshim=1"\n')
        inst.ok("systemctl", "daemon-reload")
        inst.ok("systemctl", "start", unit)
        # A podman container on a terminal (-t: the console), its monitor a unit's.
        import_image(inst.bed, pod_env)
        started = pod("run", "-d", "-t", "--name", pod_name, "--network", "none", common.IMAGE,
                  "sh", "-c", ticks.format("podman"))
        assert started.returncode == 0, started.stderr
        pod_before = inst.show(pod_unit, "MainPID", "InvocationID", "ActiveState")
        assert pod_before["ActiveState"] == "active", pod_before
        conmon_pid = pod("inspect", "-f", "{{.State.ConmonPid}}", pod_name)
        assert conmon_pid.stdout.decode().strip() == pod_before["MainPID"], conmon_pid
        # An attach session open on the terminal, an exec running (its CLI waits on stdin).
        term = Terminal(inst.bed, ["attach", names["tty"]], cli=["/usr/bin/sdshim"],
                        env=SYSTEM_ENV)
        terminals.append(term)
        term.send(b"echo before-$((40+2))\r")
        term.expect(rb"before-42")
        exec_cli = inst.bed.popen(["/usr/bin/sdshim", "exec", "-i", names["pipes"], "--", "sh",
                                   "-c", "read x; echo exec-got-$x; exit 5"], env=SYSTEM_ENV,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        # Old CLIs that wait across the upgrade: an attached run, logs -f, wait.
        def old_cli(*args: str) -> subprocess.Popen[bytes]:
            return inst.bed.popen(["/usr/bin/sdshim", *args], env=SYSTEM_ENV,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)

        attached = old_cli("run", "--name", names["attached"],
                           str(make_bundle("sh", "-c", ticks.format("attached"))))
        follower = old_cli("logs", "-f", names["stream"])
        waiter = old_cli("wait", names["pipes"])
        old_clis += [term.proc, exec_cli, attached, follower, waiter]
        before = _wait_monitors(inst, tag, lambda m: len(m) == 8
                                and all(p["ActiveState"] == "active" for p in m.values()))
        assert sum(":exec-" in u for u in before) == 1, before.keys()
        _wait(lambda: all(_box_pids(p) for p in old_clis), "the old CLIs to start")
        slice_before = inst.show("sdshim.slice", "ActiveEnterTimestampMonotonic")
        old_pids = {int(p["MainPID"]) for p in (*before.values(), pod_before)}
        assert 0 not in old_pids, before
        old_pids |= set().union(*map(_box_pids, old_clis))

        # --- the upgrade ----------------------------------------------------------------
        debs = _copy_in(inst.bed, next_package.packages.deb, next_package.packages.conmon_deb)
        try:
            inst.ok("apt-get", "install", "-y", "--no-install-recommends", *map(str, debs))
        finally:
            for deb in debs:
                deb.unlink()
        assert inst.ok("dpkg-query", "-W", "-f", "${Version}", "sdshim") == \
            next_package.version
        assert inst.bed.path(f"{SYSTEM_SITE}sdshim/_upgrade_probe.py").exists()
        assert not _probe(inst)  # the package's own scripts started no sdshim code
        extra = inst.ok("/usr/libexec/sdshim/upgradetest").split()
        assert extra[:2] == ["upgradetest", next_package.version], extra
        inst.bed.path(PROBE_LOG).unlink()  # what that script imported

        # Nothing restarted: same monitors, same invocations, the slice untouched.
        after = _monitors(inst, tag)
        for u, props in before.items():
            # (daemon-reload forgets the pid and start time ExecStart shows, not MainPID)
            assert {**after[u], "ExecStart": _argv(after[u])} == \
                {**props, "ExecStart": _argv(props)}, u
            # The monitor is where the unit's ExecStart says, in the new version too.
            script = re.search(r" -I -S (\S+)", _argv(props))
            assert (inst.bed.path(script[1]).is_file() if script else
                    " -I -m sdshim.shim " in _argv(props)), props["ExecStart"]
        assert inst.show("sdshim.slice", "ActiveEnterTimestampMonotonic") == slice_before
        assert inst.show(pod_unit, "MainPID", "InvocationID", "ActiveState") == pod_before

        # --- the new CLI drives the old containers --------------------------------------
        for name in (*(names[m] for m in ("pipes", "stdin", "tty", "always", "stream")),
                     template):
            assert _status(inst, name)["state"] == "running", name
        # The open attach session and the running exec go on, with the old monitors.
        term.send(b"echo after-$((40+3))\r")
        term.expect(rb"after-43")
        term.send(b"\x10\x11")  # ctrl-p ctrl-q: detach
        assert term.wait() == 0
        said, err = exec_cli.communicate(b"go\n", timeout=60)
        assert exec_cli.returncode == 5 and said == b"exec-got-go\n", err
        # A new exec in an old container, input to an old -i container, a new session on
        # an old terminal.
        new_exec = inst.sdshim("exec", names["pipes"], "--", "echo", "new-exec")
        assert new_exec.returncode == 0 and new_exec.stdout == b"new-exec\n", new_exec.stderr
        fed = inst.bed.run(["/usr/bin/sdshim", "attach", names["stdin"]], env=SYSTEM_ENV,
                           input=b"x\n")
        assert fed.returncode == 4 and fed.stdout == b"got-x\n", fed.stderr
        new_term = Terminal(inst.bed, ["attach", names["tty"]], cli=["/usr/bin/sdshim"],
                            env=SYSTEM_ENV)
        terminals.append(new_term)
        new_term.send(b"exit 3\r")
        assert new_term.wait() == 3
        # Logs: every line before and after the upgrade, in order, from both drivers.
        for mode in ("pipes", "stream", "attached"):
            assert inst.sdshim("stop", names[mode]).returncode == 0, mode
            assert inst.sdshim("wait", names[mode]).stdout.strip() == b"0", mode
            lines = inst.sdshim("logs", names[mode]).stdout.decode().split()
            assert lines[-1] == "bye" and lines[:-1] == [f"{mode}-{i}"
                                                         for i in range(len(lines) - 1)]
            assert len(lines) > 20, lines  # more than a second's worth, spanning the upgrade
            # The old CLIs that waited for it saw it all.
            for cli, expected in ((attached, lines) if mode == "attached" else
                                  (follower, lines) if mode == "stream" else
                                  (waiter, ["0"]),):
                said, err = cli.communicate(timeout=60)
                assert cli.returncode == 0 and said.decode().split() == expected, (mode, err)
        assert _status(inst, names["tty"])["exit_code"] == 3
        # The podman container's old monitor ends it all with its own code: the exit
        # file, podman's cleanup, every line, on the terminal, in podman's logs.
        assert pod("stop", "-t", "10", pod_name).returncode == 0
        state = pod("inspect", "-f", "{{.State.ExitCode}} {{.State.Status}}", pod_name)
        assert state.stdout.decode().split() == ["0", "exited"], state
        lines = pod("logs", pod_name).stdout.decode().split()
        assert lines[-1] == "bye" and lines[:-1] == [f"podman-{i}"
                                                     for i in range(len(lines) - 1)], lines
        assert len(lines) > 20, lines
        # Restart= of old units: the new monitor, from the old command line.
        for name, u in ((names["always"], f"sdshim-{names['always']}.service"),
                        (template, unit)):
            assert inst.sdshim("kill", "--signal", "KILL", name).returncode == 0
            props = _wait_props(inst, u, lambda p: p["NRestarts"] == "1" and
                                p["SubState"] == "running", "NRestarts", "SubState",
                                "MainPID", "ExecStart")
            assert _argv(props) == _argv(before[u])
            assert _status(inst, name)["state"] == "running"
            new_monitor = int(props["MainPID"])
            assert (new_monitor, "sdshim.shim.monitor") in {(p, m) for p, _, m, _ in
                                                           _probe(inst)}
        # The unknown option in the template's drop-in: named in the journal at each start.
        ignored = [line for line in inst.ok("journalctl", "-u", unit, "-o", "cat").splitlines()
                   if "'--from-a-newer-sdshim=1'" in line]
        assert len(ignored) == 2, ignored
        # A container made now runs the new version.
        bundle_new = str(make_bundle("sh", "-c", ticks.format("new")))
        assert inst.sdshim("run", "-d", "--name", names["new"], bundle_new).returncode == 0
        new_pid = _status(inst, names["new"])["monitor_pid"]
        assert (new_pid, "sdshim.shim.monitor") in {(p, m) for p, _, m, _ in _probe(inst)}

        # No process of the old version (its monitors, their children, its CLIs that ran
        # across the upgrade) imported a module of the new one.
        ran_new_code = [f"pid {pid} (ppid {ppid}, {argv0}) imported {module}"
                        for pid, ppid, module, argv0 in _probe(inst)
                        if pid in old_pids or ppid in old_pids]
        assert not ran_new_code, f"old processes {sorted(old_pids)} ran version " \
            f"{next_package.version}'s code: " + "; ".join(ran_new_code)
        for name in (*names.values(), template):
            assert inst.sdshim("delete", "--force", name).returncode == 0, name
    finally:
        for t in terminals:
            t.close()
        for p in old_clis:
            if p.poll() is None:
                p.kill()
                p.wait()
        inst.run("systemctl", "stop", unit)
        for name in (*names.values(), template):
            inst.sdshim("delete", "--force", name)
        pod("rm", "-f", "-t", "0", pod_name)
        shutil.rmtree(dropin.parent, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
        inst.bed.path(PROBE_LOG).unlink(missing_ok=True)


def _wait(done: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _wait_monitors(inst: Installed, tag: str, done: Any) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + 30
    while True:
        m = _monitors(inst, tag)
        if done(m) or time.monotonic() > deadline:
            assert done(m), m
            return m
        time.sleep(0.1)


def test_purge_stops_containers_and_leaves_nothing(installed: Installed,
                                                   make_bundle: Any) -> None:
    name = f"{PREFIX}{secrets.token_hex(4)}"
    bundle = make_bundle("sh", "-c", 'trap "exit 0" TERM; while :; do sleep 0.1; done')
    run = installed.sdshim("run", "-d", "--name", name, str(bundle))
    assert run.returncode == 0, run.stderr
    pid = json.loads(installed.ok("/usr/bin/sdshim", "status", "--json", name))["pid"]
    assert installed.bed.path(f"/proc/{pid}").exists()
    installed.ok("apt-get", "purge", "-y", "sdshim", "sdshim-conmon")
    # prerm stopped the slice, and with it the container, whose monitor is gone.
    assert installed.show(f"sdshim-{name}.service", "ActiveState")["ActiveState"] == "inactive"
    assert not installed.bed.path(f"/proc/{pid}").exists()
    left = [f for f in installed.files if installed.bed.path(f).exists()]
    owners = installed.run("dpkg-query", "-S", *left).stdout.decode().splitlines() if left else []
    shared = {line.split(": ", 1)[1] for line in owners}
    # Only directories other packages own too (/usr/bin, /lib/systemd/system, ...) remain.
    assert all(installed.bed.path(f).is_dir() and f in shared for f in left), (left, shared)
    for gone in ("/usr/lib/python3/dist-packages/sdshim", "/var/lib/sdshim", "/run/sdshim",
                 "/usr/share/doc/sdshim", "/usr/libexec/sdshim", "/run/sdshim-conmon"):
        assert not installed.bed.path(gone).exists(), gone
    assert installed.run("systemctl", "cat", "sdshim@.service").returncode != 0


def _wait_props(inst: Installed, unit: str, done: Any, *props: str) -> dict[str, str]:
    deadline = time.monotonic() + 30
    while True:
        p = inst.show(unit, *props)
        if done(p) or time.monotonic() > deadline:
            assert done(p), p
            return p
        time.sleep(0.05)


def _complete(inst: Installed, *words: str) -> list[str]:
    """What the installed bash completion offers for the last of words."""
    script = ('source /usr/share/bash-completion/completions/sdshim; '
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _sdshim; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    return inst.ok("bash", "-c", script, "bash", *words).split()
