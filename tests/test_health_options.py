"""--sdnotify and --health-*: what the CLI and spec accept, and what the monitor gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdshim.errors import EXIT_NO_RESTART, UsageError
from sdshim.shim import options
from sdshim.units import cli, spec


def make(**kw: object) -> spec.ContainerSpec:
    return spec.ContainerSpec(name="web", id="0" * 64, bundle=Path("/b"),
                              runtime="/usr/sbin/runc", **kw)  # type: ignore[arg-type]


def test_health_options_reach_the_monitor_in_seconds() -> None:
    h = spec.HealthOptions("pgrep -x httpd", "1m30s", "500ms", 5, "10", "restart")
    s = make(sdnotify="healthy", health=h, restart="on-failure",
             properties=[("TimeoutStartUSec", "t", 20_000_000)])
    argv = s.monitor_argv()
    opts = options.parse(argv[argv.index("--name"):])
    assert opts.sdnotify == "healthy" and opts.health_cmd == "pgrep -x httpd"
    assert (opts.health_interval, opts.health_timeout, opts.health_retries,
            opts.health_start_period, opts.health_on_failure) == (90, 0.5, 5, 10, "restart")
    assert opts.ready_timeout == 20


def test_defaults_add_nothing_to_the_monitors_command_line() -> None:
    argv = make().monitor_argv()
    assert not [a for a in argv if a.startswith(("--sdnotify", "--health", "--ready"))]
    opts = options.parse(argv[argv.index("--name"):])
    assert opts.sdnotify == "monitor" and opts.health_cmd == ""


@pytest.mark.parametrize("kw, message", [
    ({"sdnotify": "always"}, "invalid --sdnotify 'always'"),
    ({"sdnotify": "healthy"}, "--sdnotify healthy needs a health check"),
    ({"health": "restart"}, "--health-on-failure restart needs --restart on-failure"),
])
def test_spec_refuses(kw: dict[str, object], message: str) -> None:
    if kw.get("health") == "restart":
        kw = {"health": spec.HealthOptions("true", on_failure="restart")}
    with pytest.raises(UsageError, match=message):
        make(**kw)


@pytest.mark.parametrize("args, message", [
    (["--health-interval", "5s"], "--health-interval needs --health-cmd"),
    (["--health-cmd", "true", "--health-interval", "5x"], "invalid --health-interval: "),
    (["--health-cmd", "true", "--health-retries", "0"], "health retries must be 1 or more"),
    (["--health-cmd", "", ], "invalid --health-cmd ''"),
    (["--health-cmd", "[1]"], "non-empty array of strings"),
])
def test_cli_refuses_with_one_line(args: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "-d", *args, str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_monitor_refuses_healthy_without_a_check_and_bad_checks(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sdshim.shim import monitor

    base = ["--name", "a", "--bundle", "/b", "--runtime", "runc"]
    monkeypatch.delenv("SDSHIM_HEALTH_CMD", raising=False)
    for extra, message in ((["--sdnotify", "healthy"], "--sdnotify healthy needs"),
                           (["--health-cmd", "true", "--health-interval", "0"],
                            "more than 0s"),
                           (["--health-interval", "soon"], "--health-interval: 'soon'")):
        with pytest.raises(SystemExit) as exc:
            monitor.parse_args(base + extra)
        assert exc.value.code == EXIT_NO_RESTART  # an unusable monitor argv never loops
        assert message in capsys.readouterr().err
    monkeypatch.setenv("SDSHIM_HEALTH_CMD", "test -e /tmp/ok")
    assert monitor.parse_args(base).health_cmd == "test -e /tmp/ok"
