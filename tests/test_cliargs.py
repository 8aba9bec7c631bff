"""The lean parser of `create` and `run` (sdshim.units.cliargs) against argparse's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdshim.errors import UsageError
from sdshim.units import cli, cliargs

REPO = Path(__file__).resolve().parent.parent

# Spellings the lean parser reads itself; each must give what argparse gives.
READ = [
    ["run", "-d", "/b"],
    ["create", "/b"],
    ["run", "/b"],
    ["run", "-d", "--supervisor", "systemd", "--name", "web", "/srv/web"],
    ["run", "--detach", "--supervisor=systemd", "--name=web", "/srv/web"],
    ["create", "/b", "--name", "late"],  # options after the bundle, as argparse allows
    ["run", "-d", "-p", "MemoryMax=64M", "--property", "TasksMax=8", "/b"],
    ["run", "-d", "-i", "-t", "--rm", "--detach-keys", "ctrl-x", "/b"],
    ["run", "-d", "--interactive", "--tty", "/b"],
    ["create", "--runtime", "crun", "--stop-timeout", "2.5", "--stop-signal", "INT",
     "--restart", "on-failure", "--restart-delay", "0", "--log-tag", "t", "/b"],
    ["create", "--log-driver", "stream", "--log-max-line", "1K", "--log-path", "/tmp/x",
     "--log-size-max", "1M", "--log-rate-limit", "10/1s", "/b"],
    ["run", "-d", "--sdnotify", "healthy", "--health-cmd", "true", "--health-interval",
     "1s", "--health-timeout", "2s", "--health-retries", "4", "--health-start-period",
     "0s", "--health-on-failure", "kill", "/b"],
    ["run", "-d", "--socket", "ListenStream=80", "--socket=Backlog=4", "--credential",
     "a:/etc/hostname", "--set-credential", "b:c", "--reload-signal", "HUP", "/b"],
    ["run", "-d", "--name", "", "/b"],  # an empty value is a value
    ["run", "-d", "--log-tag", "a=b", "/b"],
    ["run", "-d", "-", ],  # '-' is a positional argument to argparse too
    ["create", "--stop-signal", "9", "--stop-signal", "TERM", "/b"],  # the last wins
]

# Spellings it leaves to argparse (None), with what argparse makes of them.
LEFT = [
    ["run", "--det", "/b"],  # an abbreviation
    ["run", "-h"],
    ["create", "--help"],
    ["run", "-dit", "/b"],  # combined short flags
    ["run", "-pMemoryMax=1M", "/b"],
    ["run", "-d", "--name"],
    ["run", "-d", "--name", "-x", "/b"],
    ["run", "-d", "--stop-timeout", "-1", "/b"],
    ["run", "-d", "--restart", "sometimes", "/b"],
    ["run", "-d", "--stop-signal", "NOPE", "/b"],
    ["run", "-d", "--health-retries", "many", "/b"],
    ["run", "-d", "--", "/b"],
    ["run", "-d", "/b", "/c"],
    ["run", "-d"],
    ["create", "-d", "/b"],  # no -d for create
    ["run", "--rm=yes", "/b"],
    ["run", "--no-such-option", "/b"],
]


def argparse_values(argv: list[str]) -> dict[str, Any]:
    return vars(cli.build_parser(argv[0]).parse_args(argv))


@pytest.mark.parametrize("argv", READ, ids=" ".join)
def test_the_lean_parser_reads_what_argparse_reads(argv: list[str]) -> None:
    parsed = cliargs.parse_create(argv[0], argv[1:])
    assert parsed is not None, argv
    assert vars(parsed) == argparse_values(argv)
    assert cli.parse_args(argv).__class__ is cliargs.Parsed


@pytest.mark.parametrize("argv", LEFT, ids=" ".join)
def test_what_the_lean_parser_leaves_to_argparse(argv: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cliargs.parse_create(argv[0], argv[1:]) is None
    def outcome(parse: Any) -> Any:
        try:
            return vars(parse(argv))
        except SystemExit as e:
            return ("exit", e.code, capsys.readouterr())
        except UsageError as e:  # a value sdshim refuses (--stop-timeout -1)
            return ("usage", str(e))

    expected = outcome(lambda a: cli.build_parser(a[0]).parse_args(a))
    got = outcome(cli.parse_args)
    assert got == expected


def test_usage_errors_of_values_are_the_same_either_way() -> None:
    # seconds() raises sdshim's UsageError, which leaves argparse too: one line, exit 2.
    argv = ["run", "-d", "--stop-timeout", "nan", "/b"]
    with pytest.raises(UsageError) as lean:
        cliargs.parse_create("run", argv[1:])
    with pytest.raises(UsageError) as full:
        cli.build_parser("run").parse_args(argv)
    assert str(lean.value) == str(full.value)
    assert cli.main(argv) == 2


def test_every_option_is_argparse_s_and_defaults_agree() -> None:
    for command, options in (("create", cliargs.CREATE_OPTIONS), ("run", cliargs.RUN_OPTIONS)):
        parser = cli.build_parser(command)
        sub = next(a for a in parser._actions if a.dest == "command")
        known = {f for a in sub.choices[command]._actions  # type: ignore[index]
                 for f in a.option_strings}
        assert {f for o in options for f in o.flags} | {"-h", "--help"} == known
        defaults = vars(cliargs.parse_create(command, ["/b"]) or object())
        assert defaults == argparse_values([command, "/b"])


# What `create` and `run -d` must not import before they have done their work (each
# costs the start ~1-13 ms; docs/benchmarks.md). A fresh interpreter without site: what
# site loads would hide them.
LEAN_FORBIDDEN = {"re", "argparse", "pathlib", "enum", "json", "signal", "contextlib",
                  "shutil", "gettext", "locale", "typing", "asyncio", "dbus_fast",
                  "subprocess", "dataclasses", "inspect"}
PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
from sdshim.units import cli, creation, direct
args = cli.parse_args(sys.argv[2:])
kwargs = cli._create_kwargs(args)
spec = creation.container_spec(args.bundle, kwargs.pop("name"), kwargs.pop("runtime"), True,
                               kwargs)
units = spec.transient_units()
print(type(args).__name__, spec.direct, " ".join(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize("extra", [[], ["--supervisor", "systemd"]])
def test_create_and_run_d_import_none_of_the_heavy_modules(tmp_path: Path,
                                                           extra: list[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"process": {"args": ["true"]}}))
    argv = ["run", "-d", *extra, "--name", "lean", "--runtime", "/bin/true", "-p",
            "MemoryMax=64M", str(tmp_path)]
    out = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE, str(REPO), *argv],
                         capture_output=True, text=True, timeout=60, check=True)
    kind, _direct, modules = out.stdout.split(" ", 2)
    assert kind == "Parsed"
    loaded = set(modules.split())
    assert "sdshim.units.creation" in loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in LEAN_FORBIDDEN)
    assert not heavy, f"`sdshim {' '.join(argv[:-1])}` imports {heavy}: import them lazily"


SCRIPT_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
script, *sys.argv[1:] = sys.argv[2:]
before = set(sys.modules)
import sdshim.units.cli as cli
import sdshim.conmon.launcher as launcher
for module, name in ((cli, "entry"), (launcher, "main")):
    def probe(run=getattr(module, "main")):
        code = run()
        sys.stdout.flush()
        print("modules:", " ".join(sorted(set(sys.modules) - before)))
        return code
    setattr(module, name, probe)
exec(compile(open(script).read(), script, "exec"))
"""


def test_the_scripts_import_no_re() -> None:
    # bin/sdshim and bin/sdshim-conmon, not console scripts: those import re first.
    out = subprocess.run([sys.executable, "-I", "-S", "-c", SCRIPT_PROBE, str(REPO),
                          str(REPO / "bin" / "sdshim"), "create", "--name", "lean",
                          "/nonexistent"], capture_output=True, text=True, timeout=60,
                         check=False)
    modules = out.stdout.rpartition("modules:")[2].split()
    assert modules, out
    assert "re" not in modules and "enum" not in modules, modules
    assert "does not exist" in out.stderr, out
    # sdshim-conmon's launch path (the unit is imported when it is started).
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.path.append({str(REPO)!r}); before = "
                          "set(sys.modules); import sdshim.conmon.launcher, "
                          "sdshim.conmon.unit; print(*sorted(set(sys.modules) - before))"],
                         capture_output=True, text=True, timeout=60, check=True)
    modules = out.stdout.split()
    assert "sdshim.conmon.unit" in modules, out
    assert "re" not in modules and "enum" not in modules, modules


def test_conmon_version_needs_neither_site_nor_the_launcher(tmp_path: Path) -> None:
    # podman runs `conmon --version` before each of its commands.
    script = REPO / "bin" / "sdshim-conmon"
    assert script.read_text().startswith("#!/usr/bin/python3 -IS\n")
    link = tmp_path / "conmon"  # as /usr/libexec/sdshim/conmon: a link to the script
    link.symlink_to(script)
    out = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", str(link),
                          "--version"], capture_output=True, text=True, timeout=60,
                         check=True, cwd=tmp_path)
    assert out.stdout == "conmon version 2.1.6\ncommit: sdshim\n"
    imported = {line.rpartition("|")[2].strip() for line in out.stderr.splitlines()}
    assert "sdshim.conmon.options" in imported, out.stderr
    assert not imported & {"site", "re", "sdshim.conmon.launcher"}, out.stderr


def test_the_value_parsers_without_re_read_what_the_patterns_read() -> None:
    # parse_bytes, parse_percent_quota and parse_seconds were regular expressions; the
    # string tests that replaced them (no `re` on the lean path) must agree everywhere.
    import itertools
    import re

    from sdshim.units import spec

    patterns: dict[Callable[[str], object], tuple[str, Callable[[str], str]]] = {
        spec.parse_bytes: (r"(\d+)([KMGT]?)", str.upper),
        spec.parse_percent_quota: (r"(\d+(?:\.\d+)?)%", str),
        spec.parse_seconds: (r"(\d+(?:\.\d+)?)(ms|s|min)?", str)}
    pieces = ["", "0", "12", ".", "5.", ".5", "1.5", "%", "K", "k", "M", "T", "TB", "ms",
              "s", "min", "mins", "x", "-", " ", "\u0663", "\u00b2"]
    for parse, (pattern, fold) in patterns.items():
        for parts in itertools.product(pieces, repeat=3):
            value = "".join(parts)
            if value == "infinity":
                continue
            try:
                got: Any = parse(value)
            except ValueError:
                got = None
            assert (got is not None) == bool(re.fullmatch(pattern, fold(value))), \
                (parse.__name__, value, got)
    assert spec.parse_bytes("2k") == 2048 and spec.parse_seconds("1.5min") == 90 * 10**6
    assert spec.parse_percent_quota("12.5%") == 125_000 and spec.parse_seconds("7") == 7 * 10**6
