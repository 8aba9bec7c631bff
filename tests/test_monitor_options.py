"""The monitor's own command line (sdshim.shim.options): what spec.py writes, parsed back."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sdshim.shim import options
from sdshim.units import spec


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


@pytest.mark.parametrize("argv, message", [
    (["--name", "a"], "required: --bundle, --runtime"),
    (["--bogus"], "unrecognized argument '--bogus'"),
    (["--name"], "--name needs a value"),
    (["--start=yes"], "--start takes no value"),
    (["--stop-timeout", "soon"], "invalid value for --stop-timeout: 'soon'"),
])
def test_bad_input_exits_2_naming_the_problem(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        options.parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
