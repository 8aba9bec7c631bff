"""podman 4.3 with sdshim-conmon as its conmon, against stock conmon 2.1.6, in one run.

Every command runs under both monitors on the same image; the exit code and output
must be the same (where sdshim differs on purpose, the test says so). Containers on
sdshim must also be services: sdshim-podman-NAME.service, the container in its cgroup.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import common
from tests.conftest import REPO, Bed
from tests.test_cgrouptrim import left_behind, unmanaged_with

STOCK = "/usr/bin/conmon"


class Podman:
    def __init__(self, bed: Bed, env: dict[str, str], sdshim: str) -> None:
        self.bed = bed
        self.env = env
        self.monitors = {"conmon": STOCK, "sdshim": sdshim}

    def __call__(self, monitor: str, *args: str, input: bytes | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return self.bed.run(["podman", "--conmon", self.monitors[monitor], *args],
                            input=input, timeout=timeout, env=self.env)

    def both(self, *args: str, input: bytes | None = None
             ) -> dict[str, subprocess.CompletedProcess[bytes]]:
        return {m: self(m, *args, input=input) for m in self.monitors}


def import_image(bed: Bed, env: dict[str, str]) -> None:
    """The busybox image (common.IMAGE) in the box's podman storage."""
    tarball = bed.scratch / "rootfs.tar"
    if not tarball.exists():
        subprocess.run(["tar", "-C", str(common.rootfs(bed.scratch)), "-cf", str(tarball),
                        "."], check=True)
    out = bed.run(["podman", "import", "--quiet", str(tarball), common.IMAGE], env=env)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def podman(bed: Bed) -> Iterator[Podman]:
    if not Path("/usr/bin/podman").exists() or not Path(STOCK).exists():
        from tests.conftest import missing

        missing("podman and conmon (apt-get install podman conmon)")
    env = common.podman_env(bed.scratch)
    env.pop("PYTHONPATH", None)
    wrapper = bed.scratch / "sdshim-conmon"
    # What the console script does, from this checkout, without PYTHONPATH in the
    # environment podman passes on (it would reach the runtime and the exit command).
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; "
                       f"sys.path.insert(0, \"{REPO}\"); from sdshim.conmon.launcher "
                       "import main; sys.exit(main())' \"$@\"\n")
    wrapper.chmod(0o755)
    import_image(bed, env)
    yield Podman(bed, env, str(wrapper))
    bed.run(["podman", "rm", "-a", "-f", "-t", "0"], env=env)


def _ids(text: bytes) -> bytes:
    return re.sub(rb"[0-9a-f]{64}", b"ID", text)


def same(results: dict[str, subprocess.CompletedProcess[bytes]], stderr: bool = True,
         ) -> subprocess.CompletedProcess[bytes]:
    a, b = results["conmon"], results["sdshim"]
    assert (b.returncode, _ids(b.stdout)) == (a.returncode, _ids(a.stdout)), (a, b)
    if stderr:
        assert _ids(b.stderr) == _ids(a.stderr), (a.stderr, b.stderr)
    return b


IMG = common.IMAGE
NONET = ("--network", "none")


def test_run_attached_output_and_exit_code(podman: Podman) -> None:
    out = same(podman.both("run", "--rm", *NONET, IMG, "sh", "-c",
                           "echo out-1; echo err-1 >&2; echo out-2; exit 3"))
    assert out.returncode == 3 and out.stdout == b"out-1\nout-2\n"
    assert out.stderr == b"err-1\n"


def test_run_interactive_stdin(podman: Podman) -> None:
    out = same(podman.both("run", "--rm", "-i", *NONET, IMG, "sh", "-c", "cat; echo done",
                           input=b"hello\nworld\n"))
    assert out.stdout == b"hello\nworld\ndone\n"


def test_run_tty_without_terminal(podman: Podman) -> None:
    out = same(podman.both("run", "--rm", "-t", *NONET, IMG, "echo", "on-a-tty"))
    assert out.stdout == b"on-a-tty\r\n" and out.returncode == 0


@pytest.mark.parametrize(("args", "code"), [
    (("/nonexistent",), 127),
    (("/etc/passwd",), 126),
])
def test_runtime_errors_same_message_and_code(podman: Podman, args: tuple[str, ...],
                                              code: int) -> None:
    workdir = list(args[:2]) if args[0] == "-w" else []
    cmd = list(args[2:]) if workdir else list(args)
    results = podman.both("run", "--rm", *NONET, *workdir, IMG, *cmd)
    out = same(results)
    assert out.returncode in (code, 125) and out.stderr.startswith(b"Error: "), out


def test_detached_lifecycle(podman: Podman) -> None:
    """run -d, logs, exec, inspect, stop, wait, rm: the same under both."""
    names = {m: f"pt-{m}-{secrets.token_hex(3)}" for m in podman.monitors}
    script = "echo started; echo warn >&2; trap 'echo bye; exit 7' TERM; " \
             "while :; do sleep 0.1; done"
    for m, n in names.items():
        out = podman(m, "run", "-d", "--name", n, *NONET, IMG, "sh", "-c", script)
        assert out.returncode == 0, out.stderr
    time.sleep(1)
    results: dict[str, list[Any]] = {m: [] for m in names}
    for m, n in names.items():
        r = results[m]
        r.append(podman(m, "logs", n))
        r.append(podman(m, "exec", n, "sh", "-c", "echo in-exec; echo e >&2; exit 5"))
        r.append(podman(m, "exec", "-i", n, "cat", input=b"piped\n"))
        r.append(podman(m, "exec", "-d", n, "sh", "-c", "echo detached > /tmp/d"))
        r.append(podman(m, "exec", n, "sh", "-c", "sleep 0.5; cat /tmp/d"))
        r.append(podman(m, "inspect", "-f", "{{.State.Status}} {{.State.Running}}", n))
        r.append(podman(m, "stop", "-t", "10", n))
        r.append(podman(m, "wait", n))
        r.append(podman(m, "inspect", "-f", "{{.State.ExitCode}} {{.State.Status}}", n))
        r.append(podman(m, "logs", n))
    for a, b in zip(results["conmon"], results["sdshim"], strict=True):
        assert (b.returncode, _ids(b.stdout.replace(names["sdshim"].encode(), b"N"))) == \
            (a.returncode, _ids(a.stdout.replace(names["conmon"].encode(), b"N"))), \
            (a.args[5:], a.stderr.decode(), b.stderr.decode())
    logs = results["sdshim"][-1]
    assert logs.stdout == b"started\nbye\n" and logs.stderr == b"warn\n"
    assert results["sdshim"][1].returncode == 5
    assert results["sdshim"][1].stdout == b"in-exec\n"
    assert results["sdshim"][2].stdout == b"piped\n"
    assert len(results["sdshim"][3].stdout) == 65  # exec -d: the session's id
    assert results["sdshim"][4].stdout == b"detached\n"
    assert results["sdshim"][8].stdout == b"7 exited\n"
    for m, n in names.items():
        assert podman(m, "rm", n).returncode == 0


def test_container_is_a_service(podman: Podman, bed: Bed) -> None:
    name = f"pt-svc-{secrets.token_hex(3)}"
    # under chroot --groups, as podman's keep-groups test: the monitor (and so the
    # runtime) gets podman's supplementary groups, which a service does not inherit
    out = bed.run(["chroot", "--groups", "1234,5678", "/", "podman", "--conmon",
                   podman.monitors["sdshim"], "run", "-d", "--name", name, *NONET, IMG,
                   "sleep", "1000"], env=podman.env)
    assert out.returncode == 0, out.stderr
    unit = f"sdshim-podman-{name}.service"
    show = bed.show(unit, "ActiveState", "MainPID", "ControlGroup", "Delegate")
    assert show["ActiveState"] == "active" and show["Delegate"] == "yes", show
    info = podman("sdshim", "inspect", "-f", "{{.State.ConmonPid}} {{.State.Pid}}", name)
    conmon_pid, pid = (int(x) for x in info.stdout.split())
    # ConmonPid is the unit's main process, whose executable is named conmon (podman's
    # tests look), and the container runs in the unit's cgroup.
    assert int(show["MainPID"]) == conmon_pid
    exe = bed.run(["readlink", f"/proc/{conmon_pid}/exe"]).stdout.decode().strip()
    assert exe.endswith("/conmon"), exe
    groups = [line for line in bed.read(f"/proc/{conmon_pid}/status").splitlines()
              if line.startswith("Groups:")]
    assert groups and groups[0].split()[1:] == ["1234", "5678"], groups
    environ = bed.read(f"/proc/{conmon_pid}/environ")
    assert f"CONTAINERS_CONF={podman.env['CONTAINERS_CONF']}" in environ.split("\0")
    cgroup = bed.read(f"/proc/{pid}/cgroup")
    assert f"{show['ControlGroup']}/container" in cgroup, cgroup
    # the monitor in the unit's supervisor/ leaf, in every hierarchy it shares with the
    # unit (placed by the launcher while the monitor started)
    own = [line.split(":", 2)[2] for line in
           bed.read(f"/proc/{conmon_pid}/cgroup").splitlines() if f"/{unit}" in line]
    assert own and all(p.endswith(f"/{unit}/supervisor") for p in own), own
    # sdshim's own commands leave podman's containers to podman (docs/conmon.md)
    listed = bed.run([sys.executable, "-m", "sdshim", "list", "--json"])
    assert listed.returncode == 0 and name.encode() not in listed.stdout, listed
    top = podman("sdshim", "top", name)
    assert top.returncode == 0 and b"sleep 1000" in top.stdout, top
    # runc makes the container's cgroup in the v1 hierarchies systemd does not manage
    # too (this host's cpuset, freezer): the unit's end removes them there
    # (sdshim.units.cgrouptrim)
    assert unmanaged_with(bed, pid, unit)
    out = podman("sdshim", "rm", "-f", "-t", "0", name)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 30
    while bed.show(unit, "LoadState")["LoadState"] != "not-found":
        assert time.monotonic() < deadline, "unit left behind"
        time.sleep(0.1)
    assert left_behind(bed, show["ControlGroup"]) == []


def test_long_lines_whole(podman: Podman) -> None:
    """conmon cuts journald entries at 8 KiB and podman joins them; sdshim keeps lines
    up to 256 KiB in one entry: either way podman logs gives the line whole."""
    for m in podman.monitors:
        name = f"pt-long-{m}-{secrets.token_hex(3)}"
        out = podman(m, "run", "--name", name, *NONET, IMG, "sh", "-c",
                     "head -c 100000 /dev/zero | tr '\\0' x; echo; echo end")
        assert out.returncode == 0, out.stderr
        logs = podman(m, "logs", name)
        assert logs.stdout == b"x" * 100000 + b"\nend\n", (m, len(logs.stdout))
        podman(m, "rm", name)


def test_k8s_file_log_driver(podman: Podman) -> None:
    outs = {}
    for m in podman.monitors:
        name = f"pt-k8s-{m}-{secrets.token_hex(3)}"
        out = podman(m, "run", "--log-driver", "k8s-file", "--name", name, *NONET, IMG,
                     "sh", "-c", "echo one; echo two >&2; printf three")
        assert out.returncode == 0, out.stderr
        outs[m] = podman(m, "logs", name)
        podman(m, "rm", name)
    same(outs)
    assert outs["sdshim"].stdout == b"one\nthree"  # a partial last line stays partial


def test_create_start_and_timeout(podman: Podman) -> None:
    results: dict[str, list[Any]] = {}
    for m in podman.monitors:
        name = f"pt-cs-{m}-{secrets.token_hex(3)}"
        r = results[m] = []
        r.append(podman(m, "create", "--name", name, *NONET, IMG, "echo", "created"))
        r.append(podman(m, "start", "-a", name))
        r.append(podman(m, "run", "--rm", "--timeout", "2", *NONET, IMG, "sleep", "60"))
        podman(m, "rm", "-f", name)
    for a, b in zip(results["conmon"], results["sdshim"], strict=True):
        if a is results["conmon"][0]:
            assert a.returncode == b.returncode == 0
            continue
        assert (b.returncode, b.stdout) == (a.returncode, a.stdout), (a, b)
    assert results["sdshim"][1].stdout == b"created\n"


def test_malformed_command_lines(podman: Podman, bed: Bed) -> None:
    """conmon's exit status (1) and a one-line message; nothing left behind."""
    sdshim = podman.monitors["sdshim"]
    for args in (["--bogus"], ["-c", "x"], ["-c", "x", "-u", "x"],
                 ["-c", "x", "-u", "x", "-r", "/nonexistent", "-l", "none"],
                 ["-c", "x", "-u", "x", "-r", "/usr/bin/runc"],
                 ["-c", "x", "-u", "x", "-r", "/usr/bin/runc", "-l", "none", "-e"],
                 ["-c", "x", "-u", "x", "-r", "/usr/bin/runc", "-l", "bogus:x"],
                 ["-T", "soon"]):
        ours = bed.run([sdshim, *args], env=os.environ.copy())
        theirs = bed.run([STOCK, *args])
        assert ours.returncode == theirs.returncode == 1, (args, ours, theirs)
        said = ours.stdout + ours.stderr
        assert said.count(b"\n") == 1 and b"Traceback" not in said, said
        assert (ours.stdout.strip(), ours.stderr.strip()) == \
            (theirs.stdout.strip(), theirs.stderr.strip()), (args, said)
    units = bed.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                     "sdshim-podman-*"]).stdout.decode()
    assert "sdshim-podman-x" not in units


def test_a_log_file_that_cannot_be_opened(podman: Podman, bed: Bed) -> None:
    """podman's run fails as with conmon and nothing is left behind: sdshim's monitor
    opens the log while the runtime creates the container, and deletes that container
    when the log cannot be opened; its error is one line naming the file."""
    outs = {}
    for m in podman.monitors:
        name = f"pt-nolog-{m}-{secrets.token_hex(3)}"
        outs[m] = podman(m, "run", "-d", "--log-driver", "k8s-file", "--log-opt",
                         "path=/proc/nonexistent/ctr.log", "--name", name, *NONET, IMG,
                         "sleep", "1000")
        assert outs[m].returncode != 0, outs[m]
        state = podman(m, "inspect", "-f", "{{.State.Status}} {{.Id}}", name).stdout.split()
        assert state[0] == b"created", (m, state)
        assert state[1] not in bed.run(["runc", "list", "-q"]).stdout.split(), m
        assert podman(m, "rm", name).returncode == 0
    said = outs["sdshim"].stderr
    assert said.count(b"\n") == 1 and b"Traceback" not in said, said
    assert b"cannot open the log file /proc/nonexistent/ctr.log: No such file" in said, said
    units = bed.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                     "sdshim-podman-pt-nolog-*"]).stdout
    assert units == b"", units


def test_oom_killed_is_reported(podman: Podman) -> None:
    """Deliberately better: stock conmon 2.1.6 writes `oom` into its own cwd, where
    podman 4.3 does not look (podman #13102); sdshim writes <bundle>/oom."""
    seen = {}
    for m in podman.monitors:
        name = f"pt-oom-{m}-{secrets.token_hex(3)}"
        out = podman(m, "run", "--name", name, "--memory", "20m", "--memory-swap", "20m",
                     *NONET, IMG, "tail", "/dev/zero")
        assert out.returncode == 137, out.stderr
        seen[m] = podman(m, "inspect", "-f", "{{.State.OOMKilled}} {{.State.ExitCode}}",
                         name).stdout
        podman(m, "rm", name)
    assert seen == {"conmon": b"false 137\n", "sdshim": b"true 137\n"}


def test_tty_interactive_on_a_terminal(podman: Podman) -> None:
    outs = {}
    for m, path in podman.monitors.items():
        cmd = f"podman --conmon {path} run -it --rm --network none {IMG} sh -c 'tty; echo hi'"
        # Stock conmon, the reference, sometimes prints nothing at all of this short-lived
        # container when the cores are busy (seen in CI; sdshim printed it whole): retry
        # the reference only, so that the comparison is against what conmon does when it
        # does not lose the output. sdshim gets one try.
        for _ in range(3 if m == "conmon" else 1):
            out = podman.bed.run(["script", "-qec", cmd, "/dev/null"], env=podman.env)
            # podman's terminal set-up echoes a NUL as ^@ or not, by timing, under both
            out.stdout = out.stdout.replace(b"^@", b"")
            if out.stdout:
                break
        outs[m] = out
    same(outs)
    assert outs["sdshim"].stdout.endswith(b"/dev/pts/0\r\nhi\r\n"), outs["sdshim"].stdout
    execs = {}
    for m, path in podman.monitors.items():
        name = f"pt-tty-{m}"
        assert podman(m, "run", "-d", "--name", name, *NONET, IMG, "sleep", "1000"
                      ).returncode == 0
        cmd = f"podman --conmon {path} exec -it {name} sh -c 'tty; exit 4'"
        out = podman.bed.run(["script", "-qec", cmd, "/dev/null"], env=podman.env)
        # Stock conmon's exec gets podman's warning that libpod-conmon-ID.scope is still
        # loaded (its create conmon lives there; on cgroup v1 systemd refuses a second
        # scope of that name). sdshim's launcher left that scope at once: no warning.
        out.stdout = re.sub(rb"^.*Failed to add conmon to systemd sandbox cgroup.*\n\r?",
                            b"", out.stdout.replace(b"^@", b""), flags=re.M)
        execs[m] = out
        podman(m, "rm", "-f", "-t", "0", name)
    same(execs)
    assert execs["sdshim"].stdout.endswith(b"/dev/pts/0\r\n"), execs["sdshim"].stdout


def test_container_commands(podman: Podman) -> None:
    """restart, pause/unpause, top, stats, healthcheck run, kill, wait: the same."""
    results: dict[str, list[Any]] = {}
    for m in podman.monitors:
        name = f"pt-cmd-{m}"
        r = results[m] = []
        r.append(podman(m, "run", "-d", "--name", name, "--health-cmd", "test -d /etc",
                        "--health-interval", "0", *NONET, IMG, "sleep", "1000"))
        for args in (("restart", "-t", "0", name), ("pause", name),
                     ("inspect", "-f", "{{.State.Status}}", name), ("unpause", name),
                     ("top", name, "args"), ("stats", "--no-stream", "--format",
                                             "{{.PIDs}}", name),
                     ("healthcheck", "run", name), ("kill", name), ("wait", name),
                     ("rm", name)):
            r.append(podman(m, *args))
    for a, b in zip(results["conmon"], results["sdshim"], strict=True):
        assert (b.returncode, _ids(b.stdout).replace(b"sdshim", b"M")) == \
            (a.returncode, _ids(a.stdout).replace(b"conmon", b"M")), (a, b)
    assert results["sdshim"][3].stdout == b"paused\n"
    assert results["sdshim"][5].stdout.split() == [b"COMMAND", b"sleep", b"1000"]
    assert results["sdshim"][-2].stdout == b"137\n"


def test_generate_systemd_new_unit(podman: Podman, bed: Bed) -> None:
    """A `podman generate systemd --new` unit: podman runs in a service, so no second
    unit; the monitor runs in that service and is its MAINPID; stop removes it all."""
    name = f"pt-gen-{secrets.token_hex(3)}"
    sdshim = podman.monitors["sdshim"]
    out = podman("sdshim", "create", "--name", name, "--stop-timeout", "1", *NONET, IMG,
                 "sleep", "1000")
    assert out.returncode == 0, out.stderr
    out = podman("sdshim", "generate", "systemd", "--new", "--name", name)
    assert out.returncode == 0, out.stderr
    unit_text = out.stdout.decode().replace(
        "ExecStart=/usr/bin/podman", f"ExecStart=/usr/bin/podman --conmon {sdshim}").replace(
        "[Service]\n", "[Service]\nEnvironment=" + " ".join(
            f"{k}={podman.env[k]}" for k in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"))
        + "\n")
    assert "--sdnotify=conmon" in unit_text and "Type=notify" in unit_text
    unit = f"container-{name}.service"
    path = bed.path(f"/run/systemd/system/{unit}")
    path.write_text(unit_text)
    try:
        bed.run(["systemctl", "daemon-reload"])
        out = bed.run(["systemctl", "start", unit], timeout=120)
        assert out.returncode == 0, out.stderr
        main_pid = bed.show(unit, "MainPID")["MainPID"]
        info = podman("sdshim", "inspect", "-f", "{{.State.ConmonPid}}", name)
        assert info.stdout.decode().strip() == main_pid
        cgroup = bed.read(f"/proc/{main_pid}/cgroup")
        assert f"/{unit}" in cgroup and "sdshim-podman-" not in cgroup, cgroup
        exe = bed.run(["readlink", f"/proc/{main_pid}/exe"]).stdout.decode().strip()
        assert exe.endswith("/conmon")
        out = bed.run(["systemctl", "stop", unit], timeout=120)
        assert out.returncode == 0, out.stderr
        assert podman("sdshim", "container", "exists", name).returncode == 1
    finally:
        bed.run(["systemctl", "stop", unit])
        path.unlink()
        bed.run(["systemctl", "daemon-reload"])
        bed.run(["systemctl", "reset-failed", unit])


def test_logs_options_and_size_limit(podman: Podman) -> None:
    """logs --tail, --since, -f on an exited container, and k8s-file's max-size."""
    results: dict[str, list[Any]] = {}
    for m in podman.monitors:
        name = f"pt-logs-{m}"
        big = f"pt-big-{m}"
        r = results[m] = []
        r.append(podman(m, "run", "--name", name, *NONET, IMG, "sh", "-c",
                        "for i in 1 2 3 4 5; do echo line-$i; done"))
        r.append(podman(m, "logs", "--tail", "2", name))
        r.append(podman(m, "logs", "--since", "1970-01-01T00:00:00Z", name))
        r.append(podman(m, "logs", "-f", name))
        r.append(podman(m, "run", "--name", big, "--log-driver", "k8s-file", "--log-opt",
                        "max-size=2k", *NONET, IMG, "sh", "-c",
                        "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done"))
        r.append(podman(m, "logs", big))
        podman(m, "rm", name, big)
    for a, b in zip(results["conmon"], results["sdshim"], strict=True):
        assert (b.returncode, b.stdout) == (a.returncode, a.stdout), (a, b)
    assert results["sdshim"][1].stdout == b"line-4\nline-5\n"
    kept = results["sdshim"][5].stdout.splitlines()
    assert kept and kept[-1] == b"line-199" and len(kept) < 200  # the file was restarted


def test_unit_name_clash_is_a_clear_error(podman: Podman, bed: Bed) -> None:
    """Two storage roots, one container name: the second gets conmon's exit status and
    a one-line reason; the first runs on, nothing is left of the second."""
    name = f"pt-clash-{secrets.token_hex(3)}"
    other = bed.scratch / "podman-other"
    other.mkdir(exist_ok=True)
    (other / "storage.conf").write_text(
        '[storage]\ndriver = "vfs"\nrunroot = "/run/sdshim-test/other/run"\n'
        'graphroot = "/run/sdshim-test/other/storage"\n')
    env2 = {**podman.env, "CONTAINERS_STORAGE_CONF": str(other / "storage.conf")}
    tarball = bed.scratch / "rootfs.tar"
    assert bed.run(["podman", "import", "-q", str(tarball), IMG], env=env2).returncode == 0
    first = podman("sdshim", "run", "-d", "--name", name, *NONET, IMG, "sleep", "1000")
    assert first.returncode == 0, first.stderr
    sdshim = podman.monitors["sdshim"]
    second = bed.run(["podman", "--conmon", sdshim, "run", "-d", "--name", name, *NONET,
                      IMG, "sleep", "1000"], env=env2)
    assert second.returncode != 0
    err = second.stderr.decode()
    assert f"unit sdshim-podman-{name}.service exists already" in err, err
    assert "Traceback" not in err
    show = bed.show(f"sdshim-podman-{name}.service", "ActiveState", "Description")
    assert show["ActiveState"] == "active" and "podman container" in show["Description"]
    bed.run(["podman", "rm", "-f", "-t", "0", name], env=env2)
    assert podman("sdshim", "rm", "-f", "-t", "0", name).returncode == 0


def _ended_container_unit(bed: Bed, name: str, seconds: int) -> str:
    """What `podman rm NAME` can leave for a moment: the unit of a container of that
    name whose monitor has exited while its cgroup still runs something (the exit
    command, the ExecStopPost= trim) for seconds."""
    unit = f"sdshim-podman-{name}.service"
    out = bed.run(["systemd-run", "--unit", unit, "-p", "ExitType=cgroup",
                   "-p", "CollectMode=inactive-or-failed",
                   "-p", f"Description=podman container {name} (0123456789ab)",
                   "/bin/sh", "-c", f"sleep {seconds} & exit 0"])
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 10
    while bed.show(unit, "MainPID")["MainPID"] != "0" and time.monotonic() < deadline:
        time.sleep(0.05)
    show = bed.show(unit, "ActiveState", "MainPID")
    assert show == {"ActiveState": "active", "MainPID": "0"}, show
    return unit


@pytest.mark.parametrize(("seconds", "instance"), [(1, ""), (30, "@2")])
def test_the_name_of_an_ended_container(podman: Podman, bed: Bed, seconds: int,
                                        instance: str) -> None:
    """`podman rm NAME; podman run --name NAME` at once: the old unit may still be
    there, its monitor gone. The new container waits for the name a moment (it gets
    sdshim-podman-NAME.service when the old unit goes within 2 s), else takes the next
    instance; it never fails on the name."""
    name = f"pt-reuse-{secrets.token_hex(3)}"
    old = _ended_container_unit(bed, name, seconds)
    try:
        out = podman("sdshim", "run", "-d", "--name", name, *NONET, IMG, "sleep", "1000")
        assert out.returncode == 0, out.stderr
        cid = out.stdout.decode().strip()
        unit = f"sdshim-podman-{name}{instance}.service"
        show = bed.show(unit, "ActiveState", "Description")
        assert show["ActiveState"] == "active", show
        assert show["Description"] == f"podman container {name} ({cid[:12]})", show
    finally:
        podman("sdshim", "rm", "-f", "-t", "0", name)
        bed.run(["systemctl", "stop", old])


def test_restart_policy(podman: Podman) -> None:
    """podman restarts a container from the exit command, while the old monitor still
    runs it: the new monitor gets `sdshim-podman-NAME@N.service`, as many times."""
    seen = {}
    for m in podman.monitors:
        name = f"pt-rp-{m}"
        out = podman(m, "run", "-d", "--name", name, "--restart", "on-failure:2", *NONET,
                     IMG, "sh", "-c", "sleep 0.5; exit 3")
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 60
        while True:
            state = podman(m, "inspect", "-f",
                           "{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}", name)
            if state.stdout == b"2 exited 3\n" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        seen[m] = state.stdout
        podman(m, "rm", "-f", name)
    assert seen == {"conmon": b"2 exited 3\n", "sdshim": b"2 exited 3\n"}


def _sh(podman: Podman, monitor: str, script: str) -> subprocess.CompletedProcess[bytes]:
    """script under sh in the test bed, with $P the podman command for monitor."""
    path = podman.monitors[monitor]
    return podman.bed.run(["sh", "-c", f"P='podman --conmon {path}'; export P; {script}"],
                          env=podman.env)


# podman attach on a pty: once output arrived, type the keys; print how it ended.
DETACH = """
import ast, os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp("podman", ast.literal_eval(sys.argv[1]))
seen, typed, end = b"", False, time.monotonic() + 30
while time.monotonic() < end:
    if select.select([fd], [], [], 0.2)[0]:
        try:
            seen += os.read(fd, 4096)
        except OSError:  # the client closed the terminal: it is exiting
            time.sleep(0.5)
    if not typed and b"tick" in seen:
        for key in bytes.fromhex(sys.argv[2]):  # one key at a time, as a user types
            os.write(fd, bytes([key]))
            time.sleep(0.3)
        typed = True
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("typed" if typed else "not-typed", "exit", os.waitstatus_to_exitcode(status))
        break
else:
    os.kill(pid, 9)
    print("still-attached")
"""

TICKER = ("sh", "-c", "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.2; done")


def test_attach_several_clients_and_detach_keys(podman: Podman) -> None:
    """Two `podman attach` at once both get the output; ctrl-p ctrl-q and a custom
    --detach-keys detach the client and leave the container running; the same
    under both monitors. (podman handles the keys and closes the attach socket; the
    monitor must take that without ending anything.)"""
    results: dict[str, list[Any]] = {}
    for m in podman.monitors:
        name = f"pt-att-{m}-{secrets.token_hex(3)}"
        r = results[m] = []
        assert podman(m, "run", "-dit", "--name", name, *NONET, IMG, *TICKER).returncode == 0
        attach = f"timeout -s KILL 3 $P attach --sig-proxy=false --no-stdin {name}"
        two = _sh(podman, m, f"({attach} > /tmp/a-{name}) & ({attach} > /tmp/b-{name}); "
                  f"wait; grep -q tick /tmp/a-{name} && grep -q tick /tmp/b-{name} && "
                  "echo both-saw-output")
        r.append((two.stdout, two.returncode))
        for keys, typed in (((), b"\x10\x11"),
                            (("--detach-keys", "ctrl-x"), b"\x18")):
            argv = ["podman", "--conmon", podman.monitors[m], "attach", "--sig-proxy=false",
                    *keys, name]
            out = podman.bed.run([sys.executable, "-c", DETACH, repr(argv), typed.hex()],
                                 env=podman.env, timeout=60)
            state = podman(m, "inspect", "-f", "{{.State.Status}}", name)
            r.append((out.stdout.splitlines()[-1:], state.stdout))
        podman(m, "rm", "-f", "-t", "0", name)
    assert results["sdshim"] == results["conmon"], results
    assert results["sdshim"][0] == (b"both-saw-output\n", 0)
    assert results["sdshim"][1:] == [([b"typed exit 0"], b"running\n")] * 2, results


def test_log_tag_in_the_journal(podman: Podman, bed: Bed) -> None:
    """--log-opt tag=T: conmon's fields (CONTAINER_TAG and SYSLOG_IDENTIFIER T), so
    `journalctl CONTAINER_TAG=T` and `podman logs` find the lines."""
    seen = {}
    suffix = secrets.token_hex(3)
    for m in podman.monitors:
        name = f"pt-tag-{m}-{suffix}"
        tag = f"tag-{name}"
        out = podman(m, "run", "--name", name, "--log-driver", "journald", "--log-opt",
                     f"tag={tag}", *NONET, IMG, "sh", "-c", "echo tagged-out; echo e >&2")
        assert out.returncode == 0, out.stderr
        # stock conmon's lines may still be queued in journald: --sync stores them
        assert bed.run(["journalctl", "--sync"]).returncode == 0
        fields = sorted((e["MESSAGE"], e["SYSLOG_IDENTIFIER"].replace(m, "M"),
                         e["PRIORITY"], e["CONTAINER_NAME"].replace(m, "M"))
                        for e in bed.journal(f"CONTAINER_TAG={tag}"))
        logs = podman(m, "logs", name)
        seen[m] = (fields, logs.stdout, logs.stderr)
        podman(m, "rm", name)
    # Deliberately better: conmon's MESSAGE keeps the line's "\n" (journalctl shows it
    # as an empty line after each); sdshim's is the line, as a native journal client
    # writes it, and CONTAINER_PARTIAL_MESSAGE marks the pieces. podman logs is the same.
    stock = [(f[0].removesuffix("\n"), *f[1:]) for f in seen["conmon"][0]]
    assert seen["sdshim"] == (stock, *seen["conmon"][1:]), seen
    fields = seen["sdshim"][0]
    assert [f[:3] for f in fields] == [("e", f"tag-{fields[0][3]}", "3"),
                                       ("tagged-out", f"tag-{fields[0][3]}", "6")], fields
    assert seen["sdshim"][1:] == (b"tagged-out\n", b"e\n")


def test_ctl_reopen_rotates_the_log_file(podman: Podman) -> None:
    """`2 0 0` on the ctl FIFO (CRI log rotation): the monitor opens the k8s-file log
    path again, new lines go to the new file, the moved one stops growing."""
    results = {}
    for m in podman.monitors:
        name = f"pt-rot-{m}-{secrets.token_hex(3)}"
        log = f"/tmp/{name}.log"
        assert podman(m, "run", "-d", "--name", name, "--log-driver", "k8s-file",
                      "--log-opt", f"path={log}", *NONET, IMG, *TICKER).returncode == 0
        cfg = podman(m, "inspect", "-f", "{{.OCIConfigPath}}", name).stdout.decode().strip()
        ctl = str(Path(cfg).with_name("ctl"))
        out = _sh(podman, m, f"sleep 1; mv {log} {log}.1; printf '2 0 0\\n' > {ctl}; "
                  f"sleep 1.5; a=$(wc -l < {log}.1); sleep 1; b=$(wc -l < {log}.1); "
                  f"test -s {log} && echo new-file-has-lines; "
                  f"test $a -eq $b && echo old-file-stopped; "
                  f"grep -c ' stdout F tick-' {log} > /dev/null && echo k8s-format")
        results[m] = out.stdout
        podman(m, "rm", "-f", "-t", "0", name)
    assert results["sdshim"] == results["conmon"], results
    assert results["sdshim"] == b"new-file-has-lines\nold-file-stopped\nk8s-format\n"


def test_stopping_the_unit_ends_the_exit_command(podman: Podman, bed: Bed) -> None:
    """systemd stops a unit with SIGTERM to its main process alone (KillMode=mixed); an
    exit command still running then (podman's cleanup, waiting for a lock that the
    podman removing the pod holds) must get it too, as in conmon's scope, or the stop
    waits for TimeoutStopSec (podman kube down took 90 s)."""
    name = f"pt-exitcmd-{secrets.token_hex(3)}"
    cid = secrets.token_hex(32)
    bundle = common.make_bundle(bed.scratch, name, ["true"])
    work = bed.scratch / name
    (work / "exit").mkdir(parents=True)
    script = (
        'exec 9>"$WORK/sync"; _OCI_SYNCPIPE=9 "$LAUNCHER" --api-version 1 -c "$CID" '
        '-u "$CID" -n "$NAME" -r /usr/sbin/runc -b "$BUNDLE" -p "$BUNDLE/pid" '
        '-P "$WORK/conmon.pid" -l none --exit-dir "$WORK/exit" --exit-command /bin/sh '
        '--exit-command-arg -c --exit-command-arg "sleep 3000 & wait" || exit; '
        # the monitor reports the container's pid once `runc create` is done
        'until grep -q data "$WORK/sync"; do sleep 0.05; done; runc start "$CID"')
    env = {**podman.env, "WORK": str(work), "LAUNCHER": podman.monitors["sdshim"],
           "CID": cid, "NAME": name, "BUNDLE": str(bundle)}
    out = bed.run(["sh", "-c", script], env=env)
    assert out.returncode == 0, out.stderr
    unit = f"sdshim-podman-{name}.service"
    deadline = time.monotonic() + 30
    while not (work / "exit" / cid).exists():
        assert time.monotonic() < deadline, "no exit file"
        time.sleep(0.1)
    assert (work / "exit" / cid).read_text() == "0"
    waiting = bed.run(["pgrep", "-f", "sleep 3000"])
    assert waiting.returncode == 0, "the exit command is not running"
    assert bed.show(unit, "ActiveState")["ActiveState"] == "active"
    t0 = time.monotonic()
    out = bed.run(["systemctl", "stop", unit], timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert took < 20, f"stopping {unit} took {took:.1f} s: the exit command got no signal"
    assert bed.run(["pgrep", "-f", "sleep 3000"]).returncode == 1, "exit command left"
    bed.run(["runc", "delete", "--force", cid])
