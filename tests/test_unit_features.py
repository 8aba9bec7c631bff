"""systemd service features on the container's unit (issue 13): socket activation,
credentials, watchdog, reload; through `sdshim run` and through the template units
(systemd/sdshim@.service, sdshim@.socket), on the booted systemd with real containers.

The programs in the containers are busybox and tests/helpers/sdunit.c (fixture sdunit).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdshim.errors import EXIT_USAGE
from sdshim.units.features import Features
from sdshim.units.spec import ContainerSpec, monitor_command, parse_properties
from tests.conftest import REPO, Bed, assert_clean, missing
from tests.test_container import one_line_error, status, wait_state

SERVE = ("/bin/sdunit", "serve")


def needs_notify_proxy() -> None:
    """--sdnotify container (the monitor's notify proxy, the other half of issue 13)."""
    from sdshim.shim import options

    if "--sdnotify" not in options.OPTIONS:
        missing("the notify proxy (--sdnotify container) in the monitor")


def connect(bed: Bed, path: str, timeout: float = 60) -> str:
    """One connection to the unix stream socket at path (in the bed); what it answered."""
    code = (f"import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout({timeout}); "
            "s.connect(sys.argv[1]); data = b''\n"
            "while chunk := s.recv(4096): data += chunk\n"
            "sys.stdout.write(data.decode())")
    out = bed.run([sys.executable, "-c", code, path], timeout=timeout + 30)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def units(bed: Bed, pattern: str) -> str:
    return bed.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                    pattern]).stdout.decode().strip()


def poll(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def journal_text(bed: Bed, *matches: str) -> str:
    """Every field of every entry (export format), for grepping."""
    return bed.run(["journalctl", "--no-pager", "-o", "export", *matches]).stdout.decode(
        errors="replace")


def output_lines(bed: Bed, name: str) -> list[str]:
    return [e["MESSAGE"] for e in bed.journal(f"CONTAINER_NAME={name}")
            if isinstance(e.get("MESSAGE"), str)]


# --- the manager's checks (no systemd needed) -------------------------------------------


def _spec(**kw: Any) -> ContainerSpec:
    return ContainerSpec(name="x", id="0" * 64, bundle=Path("/b"), runtime="/bin/true", **kw)


def test_socket_unit_carries_the_service_in_aux() -> None:
    spec = _spec(features=Features(sockets=["ListenStream=/run/x.sock",
                                            "ListenDatagram=127.0.0.1:9", "Backlog=8",
                                            "FileDescriptorName=web"]))
    unit, props, aux = spec.transient_units()
    assert unit == "sdshim-x.socket"
    assert ("Listen", "a(ss)", [("Stream", "/run/x.sock"), ("Datagram", "127.0.0.1:9")]) in props
    assert ("FileDescriptorName", "s", "web") in props and ("Backlog", "u", 8) in props
    [(service, service_props)] = aux
    assert service == "sdshim-x.service"
    # Behind a socket the service must go inactive when the container exits, so that the
    # next connection starts it again.
    assert ("RemainAfterExit", "b", False) in service_props
    plain_unit, plain_props, plain_aux = _spec().transient_units()
    assert (plain_unit, plain_aux) == ("sdshim-x.service", [])
    assert ("RemainAfterExit", "b", True) in plain_props


@pytest.mark.parametrize("kw, message", [
    ({"features": Features(sockets=["ListenStream=/s"]), "start": False}, "run -d"),
    ({"features": Features(sockets=["ListenStream=/s"]), "tty": True}, "-i or -t"),
    ({"features": Features(sockets=["ListenStream=/s"]), "restart": "always"}, "always"),
    ({"properties": parse_properties(["WatchdogSec=5"])}, "--sdnotify container"),
])
def test_feature_combinations_that_cannot_work_are_refused(kw: dict[str, Any],
                                                           message: str) -> None:
    from sdshim.errors import UsageError

    with pytest.raises(UsageError, match=message):
        _spec(**kw)


@pytest.mark.parametrize("kw, message", [
    ({"sockets": ["FileDescriptorName=web"]}, "at least one ListenStream="),
    ({"sockets": ["ListenStream"]}, "use KEY=VALUE"),
    ({"sockets": ["Accept=yes", "ListenStream=/s"]}, "Accept=yes is not supported"),
    ({"sockets": ["ListenFIFO=/f"]}, "unsupported --socket setting 'ListenFIFO'"),
    ({"credentials": ["db"]}, "use NAME:PATH"),
    ({"credentials": ["db:/nonexistent/x"]}, "does not exist"),
    ({"credentials": ["a/b:/etc/hostname"]}, "no '/'"),
    ({"set_credentials": ["tok:1", "tok:2"]}, "given twice"),
])
def test_bad_feature_settings_are_named(kw: dict[str, Any], message: str) -> None:
    from sdshim.errors import UsageError

    with pytest.raises(UsageError, match=message):
        Features(**kw)


def test_credentials_go_to_systemd_never_to_the_monitor_command() -> None:
    spec = _spec(features=Features(credentials=["cfg:/etc/hostname"],
                                   set_credentials=["token:hunter2"]))
    props = dict((n, v) for n, _sig, v in spec.unit_properties())
    assert props["LoadCredential"] == [("cfg", "/etc/hostname")]
    assert props["SetCredential"] == [("token", b"hunter2")]
    assert "hunter2" not in " ".join(spec.monitor_argv())
    with pytest.raises(Exception) as info:
        Features(set_credentials=["novalue"])
    assert "novalue" not in str(info.value)


def test_bad_set_credential_never_echoes_the_value() -> None:
    from sdshim.errors import UsageError

    with pytest.raises(UsageError) as info:
        Features(set_credentials=["x" * 300 + ":secret-value"])
    assert "secret-value" not in str(info.value)


def test_reload_signal_makes_exec_reload() -> None:
    spec = _spec(features=Features(reload_signal=1))
    props = dict((n, v) for n, _sig, v in spec.unit_properties())
    [[path, argv, ignore]] = props["ExecReload"]
    assert argv[-2:] == ["reload", "x"] and path == argv[0] and not ignore
    assert spec.monitor_argv()[-2:] == ["--reload-signal", "1"]
    assert "ExecReload" not in dict((n, v) for n, _s, v in _spec().unit_properties())


def test_inherited_hands_sockets_watchdog_and_pid_namespace_check(tmp_path: Path) -> None:
    from sdshim.shim.amendments import Amendments
    from sdshim.shim.inherited import Inherited, SetupError

    (tmp_path / "config.json").write_text(json.dumps(
        {"process": {"env": ["LISTEN_FDS=9", "A=b"]},
         "linux": {"namespaces": [{"type": "pid"}]}}))
    made: list[Amendments] = []

    def amend() -> Amendments:
        made.append(Amendments())
        return made[-1]

    Inherited(fds=2, fdnames="web:web", watchdog_usec="5000000").amend(
        amend, str(tmp_path), unit="u", records_dir=str(tmp_path), sdnotify="container")
    config: dict[str, Any] = {"process": {"env": ["LISTEN_FDS=9", "A=b", "WATCHDOG_PID=4"]}}
    made[0].apply(config)
    assert sorted(config["process"]["env"]) == sorted(
        ["A=b", "LISTEN_FDS=2", "LISTEN_PID=1", "LISTEN_FDNAMES=web:web",
         "WATCHDOG_USEC=5000000"])
    assert Inherited(fds=2).runtime_options() == ["--preserve-fds", "2"]
    # Without --sdnotify container the watchdog is not the container's business, and
    # nothing at all needs no amendments.
    Inherited(watchdog_usec="5000000").amend(amend, str(tmp_path), unit="u",
                                             records_dir=str(tmp_path))
    assert len(made) == 1
    (tmp_path / "config.json").write_text(json.dumps({"linux": {"namespaces": []}}))
    with pytest.raises(SetupError, match="PID namespace of its own"):
        Inherited(fds=1).amend(amend, str(tmp_path), unit="u", records_dir=str(tmp_path))


def test_container_ids_follow_the_user_namespace() -> None:
    from sdshim.shim.inherited import SetupError, container_ids

    assert container_ids({"process": {"user": {"uid": 1000, "gid": 100}}}) == (1000, 100)
    mapped: dict[str, Any] = {"process": {"user": {"uid": 5, "gid": 0}},
              "linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                        "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 10}]}}
    assert container_ids(mapped) == (100005, 200000)
    mapped["process"]["user"]["gid"] = 50
    with pytest.raises(SetupError, match="not in its user namespace"):
        container_ids(mapped)


# --- socket activation --------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_socket_activation_starts_the_container_on_the_first_connection(
        bed: Bed, name: str, make_bundle: Any, sdunit: str, runtime: str) -> None:
    if shutil.which(runtime) is None:
        missing(runtime)
    path = f"/run/{name}.sock"
    bundle = make_bundle(sdunit, "serve")
    # runc creates and starts with one `runc run --detach`, crun with create and start.
    out = bed.sdshim("run", "-d", "--name", name, "--runtime", runtime,
                     "--socket", f"ListenStream={path}", "--socket", "FileDescriptorName=web",
                     str(bundle))
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == name
    # Listening; the container does not run yet.
    s = status(bed, name)
    assert s["state"] == "listening" and s["socket"] == f"sdshim-{name}.socket"
    assert bed.show(f"sdshim-{name}.socket", "ActiveState")["ActiveState"] == "active"
    assert bed.show(f"sdshim-{name}.service", "ActiveState")["ActiveState"] == "inactive"
    assert "Socket:" in bed.sdshim("status", name).stdout.decode()
    # The first connection starts it; the unmodified server accepts on fd 3, and
    # LISTEN_PID is right in its PID namespace (sd_listen_fds() would refuse otherwise).
    answer = connect(bed, path)
    assert answer == "hello from pid 1, LISTEN_PID=1 LISTEN_FDS=1 LISTEN_FDNAMES=web\n"
    s = wait_state(bed, name, "running")
    assert connect(bed, path) == answer  # the same container serves the next one
    assert bed.show(f"sdshim-{name}.service", "NRestarts")["NRestarts"] == "0"
    assert "serving 1 fds (web)" in output_lines(bed, name)
    # The user's bundle is untouched: the monitor's copy carries the environment.
    assert "LISTEN" not in (bundle / "config.json").read_text()
    cid = s["id"]
    delete = bed.sdshim("delete", "--force", name)
    assert delete.returncode == 0, delete.stderr
    assert units(bed, f"sdshim-{name}.*") == ""
    assert_clean(bed, name, cid)


def test_socket_activation_again_after_the_container_exits(
        bed: Bed, name: str, make_bundle: Any, sdunit: str) -> None:
    path = f"/run/{name}.sock"
    bundle = make_bundle(sdunit, "serve", "ONCE")  # one connection, then exit 0
    out = bed.sdshim("run", "-d", "--name", name, "--socket", f"ListenStream={path}",
                     str(bundle))
    assert out.returncode == 0, out.stderr
    assert connect(bed, path).startswith("hello from pid 1,")
    s = poll("the first run's exit", lambda: (st := status(bed, name))["state"] == "exited"
             and st)
    assert s["exit_code"] == 0
    assert output_lines(bed, name) == ["serving 1 fds (<unset>)"] or \
        output_lines(bed, name)[0].startswith("serving 1 fds")
    # The socket listens on, and the next connection runs the container again.
    assert bed.show(f"sdshim-{name}.socket", "ActiveState")["ActiveState"] == "active"
    assert connect(bed, path).startswith("hello from pid 1,")
    poll("a second run", lambda: len(output_lines(bed, name)) == 2)
    stop = bed.sdshim("stop", name)
    assert stop.returncode == 0, stop.stderr
    # Stopped means stopped: the socket too, or a connection would start it again.
    assert bed.show(f"sdshim-{name}.socket", "ActiveState")["ActiveState"] == "inactive"


def test_socket_that_cannot_listen_fails_the_run_and_leaves_nothing(
        bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("true")
    out = bed.sdshim("run", "-d", "--name", name, "--socket",
                     "ListenStream=/proc/sdt-cannot-bind.sock", str(bundle))
    assert out.returncode != 0
    assert f"container {name} failed to start" in one_line_error(out)
    assert units(bed, f"sdshim-{name}.*") == ""
    assert not bed.path(f"/run/sdshim/{name}").exists()


@pytest.mark.parametrize("args, message", [
    (["run", "--socket", "ListenStream=/run/x.sock"], "run -d"),
    (["create", "--socket", "ListenStream=/run/x.sock"], "run -d"),
    (["run", "-d", "-i", "--socket", "ListenStream=/run/x.sock"], "-i or -t"),
    (["run", "-d", "--socket", "Accept=yes", "--socket", "ListenStream=/run/x"], "Accept"),
    (["run", "-d", "-p", "WatchdogSec=5"], "--sdnotify container"),
    (["run", "-d", "--credential", "x:/nonexistent"], "does not exist"),
])
def test_bad_feature_options_are_one_line_usage_errors(
        bed: Bed, name: str, make_bundle: Any, args: list[str], message: str) -> None:
    out = bed.sdshim(*args, "--name", name, str(make_bundle("true")))
    assert out.returncode == EXIT_USAGE
    assert message in one_line_error(out)
    assert units(bed, f"sdshim-{name}.*") == ""


# --- credentials ------------------------------------------------------------------------


CREDENTIALS_SCRIPT = (
    'd="$CREDENTIALS_DIRECTORY"; echo "dir $d"; id -u; '
    'for f in file set; do echo "$f $(stat -c "%u:%g %a" "$d/$f") $(sha256sum < "$d/$f")"; '
    'done; echo "dirmode $(stat -c "%u %a" "$d")"; '
    'echo x 2>/dev/null > "$d/file" && echo writable || echo read-only')


def credentials_bundle(make_bundle: Any, uid: int = 1000) -> Path:
    bundle: Path = make_bundle("sh", "-c", CREDENTIALS_SCRIPT)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["user"] = {"uid": uid, "gid": uid}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def check_credentials_output(lines: list[str], unit: str, file_value: bytes,
                             set_value: bytes) -> None:
    assert lines == [
        f"dir /run/credentials/{unit}", "1000",
        f"file 1000:1000 400 {sha256(file_value)}  -",
        f"set 1000:1000 400 {sha256(set_value)}  -",
        "dirmode 1000 500", "read-only"], lines


def assert_secret_nowhere(bed: Bed, name: str, bundle: Path, *secrets_: bytes) -> None:
    """Not in the bundle, the records, the journal, the status output."""
    places = {"journal": journal_text(bed).encode(),
              "status": bed.sdshim("status", "--json", name).stdout
              + bed.sdshim("status", name).stdout + bed.sdshim("list", "--json").stdout}
    for path in [*bundle.rglob("*"), *bed.path(f"/run/sdshim/{name}").rglob("*")]:
        if path.is_file() and not path.is_symlink():
            places[str(path)] = path.read_bytes()
    for secret in secrets_:
        leaks = [where for where, data in places.items() if secret in data]
        assert not leaks, leaks


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_credentials_reach_the_container_user_read_only(
        bed: Bed, name: str, make_bundle: Any, runtime: str) -> None:
    if shutil.which(runtime) is None:
        missing(runtime)
    file_value = f"file-secret-{secrets.token_hex(8)}".encode()
    set_value = f"set-secret-{secrets.token_hex(8)}".encode()
    source = bed.scratch / f"{name}.cred"
    source.write_bytes(file_value)
    source.chmod(0o600)
    bundle = credentials_bundle(make_bundle)
    out = bed.sdshim("run", "--name", name, "--runtime", runtime, "--credential", f"file:{source}",
                     "--set-credential", f"set:{set_value.decode()}", str(bundle))
    assert out.returncode == 0, out.stderr
    check_credentials_output(out.stdout.decode().splitlines(), f"sdshim-{name}.service",
                             file_value, set_value)
    assert_secret_nowhere(bed, name, bundle, file_value, set_value)
    # Nothing of them outlives the container in the host's mount table.
    mounts = bed.read("/proc/1/mountinfo")
    assert f"/run/sdshim/{name}/credentials" not in mounts


# --- reload -------------------------------------------------------------------------------


RELOAD_SCRIPT = ('trap "echo reloaded" HUP; trap "exit 0" TERM; echo ready; '
                 'while :; do sleep 0.1; done')


def test_reload_signal_through_sdshim_and_systemctl(bed: Bed, name: str,
                                                    make_bundle: Any) -> None:
    out = bed.sdshim("run", "-d", "--name", name, "--reload-signal", "HUP",
                     str(make_bundle("sh", "-c", RELOAD_SCRIPT)))
    assert out.returncode == 0, out.stderr
    poll("ready", lambda: "ready" in output_lines(bed, name))
    reload = bed.sdshim("reload", name)
    assert reload.returncode == 0, reload.stderr
    poll("first reload", lambda: output_lines(bed, name).count("reloaded") == 1)
    systemctl = bed.run(["systemctl", "reload", f"sdshim-{name}.service"])
    assert systemctl.returncode == 0, systemctl.stderr
    poll("second reload", lambda: output_lines(bed, name).count("reloaded") == 2)
    assert status(bed, name)["state"] == "running"


def test_reload_without_a_reload_signal_is_refused(bed: Bed, name: str,
                                                   make_bundle: Any) -> None:
    out = bed.sdshim("run", "-d", "--name", name, str(make_bundle("sleep", "60")))
    assert out.returncode == 0, out.stderr
    reload = bed.sdshim("reload", name)
    assert reload.returncode != 0
    assert "has no reload signal; create it with --reload-signal" in one_line_error(reload)
    assert status(bed, name)["state"] == "running"


# --- the template units ---------------------------------------------------------------------


@pytest.fixture
def template(bed: Bed) -> Iterator[Any]:
    """systemd/sdshim@.service and sdshim@.socket of this checkout, installed in the bed
    (/etc/systemd/system) with the monitor of this checkout; template(unit, dropin)
    writes a drop-in. Everything is removed after."""
    etc = bed.path("/etc/systemd/system")
    installed = []
    for unit in ("sdshim@.service", "sdshim@.socket"):
        text = (REPO / "systemd" / unit).read_text()
        text = text.replace("/usr/bin/python3 -I -m sdshim.shim", " ".join(monitor_command()))
        (etc / unit).write_text(text)
        installed.append(etc / unit)
    made: list[str] = []

    def dropin(unit: str, text: str) -> None:
        d = etc / f"{unit}.d"
        d.mkdir(exist_ok=True)
        (d / "test.conf").write_text(text)
        made.append(unit)
        assert bed.run(["systemctl", "daemon-reload"]).returncode == 0

    assert bed.run(["systemctl", "daemon-reload"]).returncode == 0
    yield dropin
    for unit in reversed(made):
        bed.run(["systemctl", "stop", unit])
        bed.run(["systemctl", "reset-failed", unit])
        shutil.rmtree(etc / f"{unit}.d", ignore_errors=True)
    for path in installed:
        path.unlink()
    bed.run(["systemctl", "daemon-reload"])


def test_template_socket_starts_a_boot_container(bed: Bed, name: str, make_bundle: Any,
                                                 sdunit: str, template: Any) -> None:
    path = f"/run/{name}.sock"
    bundle = make_bundle(*SERVE)
    template(f"sdshim@{name}.service", f"[Service]\nEnvironment=SDSHIM_BUNDLE={bundle}\n")
    template(f"sdshim@{name}.socket",
             f"[Socket]\nListenStream={path}\nFileDescriptorName=tmpl\n")
    start = bed.run(["systemctl", "start", f"sdshim@{name}.socket"])
    assert start.returncode == 0, start.stderr
    assert bed.show(f"sdshim@{name}.service", "ActiveState")["ActiveState"] == "inactive"
    assert status(bed, name)["state"] == "listening"
    assert connect(bed, path) == \
        "hello from pid 1, LISTEN_PID=1 LISTEN_FDS=1 LISTEN_FDNAMES=tmpl\n"
    s = wait_state(bed, name, "running")
    assert s["unit"] == f"sdshim@{name}.service" and s["socket"] == f"sdshim@{name}.socket"
    bed.run(["systemctl", "stop", f"sdshim@{name}.socket", f"sdshim@{name}.service"])


def test_template_credentials_from_a_dropin(bed: Bed, name: str, make_bundle: Any,
                                            template: Any) -> None:
    file_value = f"tmpl-file-{secrets.token_hex(8)}".encode()
    set_value = f"tmpl-set-{secrets.token_hex(8)}".encode()
    source = bed.scratch / f"{name}.cred"
    source.write_bytes(file_value)
    bundle = credentials_bundle(make_bundle)
    unit = f"sdshim@{name}.service"
    template(unit, f"[Service]\nEnvironment=SDSHIM_BUNDLE={bundle}\n"
                   f"LoadCredential=file:{source}\nSetCredential=set:{set_value.decode()}\n")
    start = bed.run(["systemctl", "start", unit])
    assert start.returncode == 0, start.stderr
    poll("the container's exit", lambda: status(bed, name)["state"] == "exited")
    check_credentials_output(output_lines(bed, name), unit, file_value, set_value)
    # The drop-in holds the value (the administrator put it there); nothing of ours does.
    assert_secret_nowhere(bed, name, bundle, file_value)


def test_template_reload(bed: Bed, name: str, make_bundle: Any, template: Any) -> None:
    unit = f"sdshim@{name}.service"
    bundle = make_bundle("sh", "-c", RELOAD_SCRIPT)
    template(unit, f"[Service]\nEnvironment=SDSHIM_BUNDLE={bundle}\n"
                   "Environment=\"SDSHIM_OPTIONS=--reload-signal HUP\"\n")
    assert bed.run(["systemctl", "start", unit]).returncode == 0
    poll("ready", lambda: "ready" in output_lines(bed, name))
    reload = bed.run(["systemctl", "reload", unit])
    assert reload.returncode == 0, reload.stderr
    poll("reload", lambda: output_lines(bed, name).count("reloaded") == 1)
    via_cli = bed.sdshim("reload", name)
    assert via_cli.returncode == 0, via_cli.stderr
    poll("second reload", lambda: output_lines(bed, name).count("reloaded") == 2)


def test_template_reload_without_a_reload_signal_fails_saying_so(
        bed: Bed, name: str, make_bundle: Any, template: Any) -> None:
    unit = f"sdshim@{name}.service"
    template(unit, f"[Service]\nEnvironment=SDSHIM_BUNDLE={make_bundle('sleep', '60')}\n")
    assert bed.run(["systemctl", "start", unit]).returncode == 0
    reload = bed.run(["systemctl", "reload", unit])
    assert reload.returncode != 0
    poll("the reason in the journal", lambda: "has no reload signal; give it --reload-signal"
         in journal_text(bed, "-u", unit))
    assert status(bed, name)["state"] == "running"


# --- watchdog (with the notify proxy of --sdnotify container) ---------------------------


def test_watchdog_keepalives_reach_systemd_and_silence_restarts_the_container(
        bed: Bed, name: str, make_bundle: Any, sdunit: str) -> None:
    needs_notify_proxy()
    # 12 keep-alives at WATCHDOG_USEC/4 (6 s: three times the watchdog), then silence.
    bundle = make_bundle(sdunit, "watchdog", "12")
    out = bed.sdshim("run", "-d", "--name", name, "--sdnotify", "container",
                     "-p", "WatchdogSec=2", "--restart", "on-failure", "--restart-delay", "4",
                     "--stop-timeout", "1", str(bundle))
    assert out.returncode == 0, out.stderr
    unit = f"sdshim-{name}.service"
    assert bed.show(unit, "WatchdogUSec")["WatchdogUSec"] == "2s"
    # It saw WATCHDOG_USEC (and no WATCHDOG_PID but its own: sdunit checks), and its
    # keep-alives kept it alive for longer than the watchdog allows without them.
    poll("the keep-alives", lambda: "silent" in output_lines(bed, name))
    assert output_lines(bed, name)[0] == "watchdog 2000000"
    assert bed.show(unit, "NRestarts")["NRestarts"] == "0"
    # Silent: systemd's watchdog kills it, the result is "watchdog", status says so...
    s = poll("the watchdog", lambda: (st := status(bed, name))["watchdog"] and st)
    assert s["unit_result"] == "watchdog" and s["state"] in ("restarting", "exited"), s
    text = bed.sdshim("status", name).stdout.decode()
    assert "Watchdog:" in text and "timed out" in text
    assert "watchdog timeout" in (bed.show(unit, "StatusText")["StatusText"] or "")
    # ... and --restart on-failure brings it back.
    poll("the restart", lambda: bed.show(unit, "NRestarts")["NRestarts"] == "1"
         and status(bed, name)["state"] == "running", timeout=60)
    assert output_lines(bed, name).count("watchdog 2000000") == 2


def test_template_watchdog_with_restart_on_watchdog(bed: Bed, name: str, make_bundle: Any,
                                                    sdunit: str, template: Any) -> None:
    needs_notify_proxy()
    unit = f"sdshim@{name}.service"
    template(unit, f"[Service]\nEnvironment=SDSHIM_BUNDLE={make_bundle(sdunit, 'watchdog', '4')}\n"
                   "Environment=\"SDSHIM_OPTIONS=--sdnotify container --restart on-watchdog "
                   "--stop-timeout 1\"\nWatchdogSec=2\nRestart=on-watchdog\nRestartSec=1\n")
    start = bed.run(["systemctl", "start", unit])
    assert start.returncode == 0, start.stderr
    poll("a restart by the watchdog", lambda: int(bed.show(unit, "NRestarts")["NRestarts"]) >= 1,
         timeout=60)
    journal = journal_text(bed, "-u", unit)
    assert "Watchdog timeout" in journal and "Failed with result 'watchdog'" in journal
    poll("the restarted container", lambda: output_lines(bed, name).count("watchdog 2000000")
         >= 2)


# --- reload with --sdnotify container -------------------------------------------------


def test_reload_waits_for_the_containers_ready(bed: Bed, name: str, make_bundle: Any,
                                               sdunit: str) -> None:
    needs_notify_proxy()
    out = bed.sdshim("run", "-d", "--name", name, "--sdnotify", "container",
                     "--reload-signal", "HUP", str(make_bundle(sdunit, "reload", "1")))
    assert out.returncode == 0, out.stderr
    unit = f"sdshim-{name}.service"
    # The container takes a while between RELOADING=1 and READY=1: the unit shows it,
    # and systemctl reload returns after it.
    reload = bed.popen(["systemctl", "reload", unit], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    poll("reloading", lambda: reload.poll() is not None
         or bed.show(unit, "ActiveState")["ActiveState"] == "reloading")
    _, err = reload.communicate(timeout=60)
    assert reload.returncode == 0, err
    assert bed.show(unit, "ActiveState")["ActiveState"] == "active"
    poll("the reload's output", lambda: "reloaded 1" in output_lines(bed, name), timeout=5)
    via_cli = bed.sdshim("reload", name)
    assert via_cli.returncode == 0, via_cli.stderr
    poll("the second reload", lambda: "reloaded 2" in output_lines(bed, name), timeout=5)
    assert status(bed, name)["state"] == "running"


def test_watchdog_of_a_created_container_is_kept_by_the_monitor_until_it_starts(
        bed: Bed, name: str, make_bundle: Any, sdunit: str) -> None:
    needs_notify_proxy()
    out = bed.sdshim("create", "--name", name, "--sdnotify", "container",
                     "-p", "WatchdogSec=1", str(make_bundle(sdunit, "watchdog", "-1")))
    assert out.returncode == 0, out.stderr
    unit = f"sdshim-{name}.service"
    # Three watchdog periods: the created container cannot keep it, the monitor does.
    time.sleep(3)
    assert status(bed, name)["state"] == "created"
    assert bed.show(unit, "Result")["Result"] == "success"
    start = bed.sdshim("start", name)
    assert start.returncode == 0, start.stderr
    poll("the container's keep-alives", lambda: "watchdog 1000000" in output_lines(bed, name))
    time.sleep(3)  # now its own keep-alives (every 0.25 s) hold it
    s = status(bed, name)
    assert s["state"] == "running" and not s["watchdog"], s
    assert bed.show(unit, "NRestarts", "Result") == {"NRestarts": "0", "Result": "success"}


def test_socket_activation_without_a_pid_namespace_is_refused(bed: Bed, name: str,
                                                              make_bundle: Any) -> None:
    bundle = make_bundle("true")
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"]
                                     if ns["type"] != "pid"]
    (bundle / "config.json").write_text(json.dumps(config))
    out = bed.sdshim("run", "-d", "--name", name, "--socket", f"ListenStream=/run/{name}.s",
                     str(bundle))
    assert out.returncode == 125
    assert "PID namespace of its own" in one_line_error(out)
    assert units(bed, f"sdshim-{name}.*") == ""


def test_template_watchdog_without_notify_proxy_watches_the_monitor(
        bed: Bed, name: str, make_bundle: Any, template: Any) -> None:
    unit = f"sdshim@{name}.service"
    template(unit, f"[Service]\nEnvironment=SDSHIM_BUNDLE={make_bundle('sleep', '60')}\n"
                   "WatchdogSec=1\n")
    assert bed.run(["systemctl", "start", unit]).returncode == 0
    time.sleep(4)  # four watchdog periods: the monitor keeps it
    props = bed.show(unit, "ActiveState", "NRestarts", "Result")
    assert props == {"ActiveState": "active", "NRestarts": "0", "Result": "success"}, props
    assert status(bed, name)["state"] == "running"
