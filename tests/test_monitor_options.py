"""The monitor's own command line (sdshim.shim.options): what spec.py writes, parsed back."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sdshim.errors import EXIT_NO_RESTART
from sdshim.shim import options
from sdshim.units import execs, spec

# Every option the first packaged sdshim (0.1.0) wrote or read. Monitors of every later
# version must accept them all, with the same meaning (the contract in options.py).
OPTIONS_0_1_0 = {
    "--name", "--id", "--bundle", "--runtime", "--unit", "--start", "--stop-timeout",
    "--stop-signal", "--tag", "--restart", "--log-max-line", "--log-driver", "--log-path",
    "--log-size-max", "--interactive", "--tty", "--exec-id", "--timeout", "--env", "--cwd",
}
REQUIRED = {"--name", "--bundle", "--runtime"}


def test_the_command_line_spec_writes_parses_back() -> None:
    s = spec.ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="/usr/sbin/runc",
                           stop_timeout=2.5, stop_signal=int(signal.SIGINT), tag="t",
                           log_max_line=4096)
    argv = s.monitor_argv()
    opts = options.parse(argv[argv.index("--name"):])
    assert (opts.name, opts.id, opts.bundle, opts.runtime) == ("web", "0" * 64, "/b",
                                                               "/usr/sbin/runc")
    assert opts.unit == "sdshim-web.service" and opts.start is True
    assert opts.stop_timeout == 2.5 and opts.stop_signal == signal.SIGINT
    assert opts.tag == "t" and opts.log_max_line == 4096


def test_defaults_and_inline_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDSHIM_UNIT", "from-env.service")
    opts = options.parse(["--name=a", "--id", "i", "--bundle", "/b", "--runtime", "runc"])
    assert opts.name == "a" and opts.unit == "from-env.service" and opts.start is False
    assert opts.stop_timeout == 10.0 and opts.stop_signal == signal.SIGTERM


BASE = ["--name", "a", "--unit", "u", "--bundle", "/b", "--runtime", "runc"]


def test_no_option_is_ever_removed_and_no_required_one_added() -> None:
    assert set(options.OPTIONS) >= OPTIONS_0_1_0
    required = {opt for opt, (_, default) in options.OPTIONS.items() if default is None}
    assert required == REQUIRED


def _full_specs() -> list[list[str]]:
    """The monitor command lines spec.py and execs.py write, every option on."""
    c = spec.ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"), runtime="/r",
                           start=True, tag="t", log_max_line=4096, log_path="/tmp/x.log",
                           log_size_max=10, restart="always", interactive=True, tty=True,
                           sdnotify="container",
                           health=spec.HealthOptions("--weird check", "1s", "2s", 3, "4s",
                                                     "kill"))
    e = execs.ExecSpec(name="web", container_id="0" * 64, exec_id="1", bundle="/b",
                       runtime="/r", container_unit="sdshim-web.service", command=["sh"],
                       interactive=True, tty=True, timeout=3.0, env=["A=1"], cwd="/w")
    return [c.monitor_argv(), e.monitor_argv()]


@pytest.mark.parametrize("argv", _full_specs(), ids=["container", "exec"])
def test_later_free_text_options_are_written_in_one_token(argv: list[str]) -> None:
    """An older monitor takes the token after an option it does not know as its value
    unless it starts with "--": free text (which may) added after 0.1.0 must come in the
    option's own token, --opt=VALUE."""
    argv = argv[argv.index("--name"):]
    if "--" in argv:
        argv = argv[:argv.index("--")]
    opts = options.parse(argv)
    assert opts.ignored == []
    for arg in argv:
        if arg.startswith("--") and arg not in OPTIONS_0_1_0 and "=" not in arg:
            assert options.OPTIONS[arg][0] is not str, arg


def test_unknown_options_are_ignored_and_named_once(
        capsys: pytest.CaptureFixture[str]) -> None:
    opts = options.parse(["--future=1", *BASE, "--later-flag", "--later-value", "v",
                          "--tag", "t", "--last-flag", "--", "sh", "--not-an-option"])
    assert opts.ignored == ["--future=1", "--later-flag", "--later-value v", "--last-flag"]
    assert (opts.name, opts.bundle, opts.runtime, opts.tag) == ("a", "/b", "runc", "t")
    assert opts.command == ["sh", "--not-an-option"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ignoring" in err and "'--later-value v'" in err


def test_an_old_argv_with_values_that_look_like_options_parses() -> None:
    opts = options.parse([*BASE, "--tag", "--weird", "--cwd", "-w"])
    assert opts.tag == "--weird" and opts.cwd == "-w" and opts.ignored == []


@pytest.mark.parametrize("argv, message", [
    (["--name", "a"], "required: --bundle, --runtime"),
    (["--name"], "--name needs a value"),
    (["--start=yes"], "--start takes no value"),
    (["--stop-timeout", "soon"], "invalid value for --stop-timeout: 'soon'"),
])
def test_bad_input_exits_2_naming_the_problem(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        options.parse(argv)
    # Not 2: a unit with Restart= would be restarted into the same error forever.
    assert exc.value.code == EXIT_NO_RESTART
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_monitor_entry_points_never_move() -> None:
    """Units keep their ExecStart across upgrades: the paths in it stay valid."""
    argv = spec.monitor_command()
    assert argv[1:3] == ["-I", "-S"] and argv[3].endswith("/sdshim/shim/__main__.py")
    assert Path(argv[3]).is_file()
    template = (Path(__file__).parent.parent / "systemd/sdshim@.service").read_text()
    assert "\nExecStart=/usr/bin/python3 -I -m sdshim.shim " in template
