"""sdshim(1) and the bash completion, generated from the CLI's argparse parser.

Run at package build time, so the man page and the completion list exactly the
commands and options `sdshim --help` shows, whoever adds one:

    PYTHONPATH=. python3 packaging/clidocs.py man build/sdshim.1
    PYTHONPATH=. python3 packaging/clidocs.py bash build/sdshim.bash
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdshim import __version__
from sdshim.units.cli import build_parser

# What an argument's value is, by its dest; bash completes it accordingly.
NAMES, DIRS, SIGNALS = "names", "dirs", "signals"
VALUE_KINDS = {"name": NAMES, "names": NAMES, "bundle": DIRS, "signal": SIGNALS,
               "stop_signal": SIGNALS}
RUNTIMES = ("runc", "crun")


@dataclass
class Command:
    name: str
    aliases: list[str]
    help: str
    parser: argparse.ArgumentParser


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    # argparse has no public API for its subcommands; these attributes are stable
    # since Python 3.2, and the package build fails loudly if they change.
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    result = []
    for pseudo in sub._choices_actions:
        sub_parser = sub.choices[pseudo.dest]
        aliases = [n for n, p in sub.choices.items() if p is sub_parser and n != pseudo.dest]
        result.append(Command(pseudo.dest, aliases, pseudo.help or "", sub_parser))
    return result


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def expand_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action) if action.help else ""


# --- man page ------------------------------------------------------------------------

DESCRIPTION = r"""
.B sdshim
runs OCI containers (with
.BR runc (8)
or
.BR crun (1))
as systemd services.
Each container is a unit,
.BI sdshim\- NAME .service\fR,
in
.BR sdshim.slice ,
whose main process is the sdshim monitor: it creates the container through the
runtime, tells systemd when the container's command runs and its PID, sends the
container's stdout and stderr to journald (fields CONTAINER_NAME, CONTAINER_ID,
CONTAINER_ID_FULL, CONTAINER_TAG, as podman and docker write them) and exits
with the container's status, which systemd records.
.PP
sdshim keeps no state of its own: everything is in systemd and in
.IR /run/sdshim ,
so
.BR systemctl (1)
and
.BR journalctl (1)
work on containers like on any other service.
"""

BOOT = r"""
The template unit
.B sdshim@.service
runs the bundle in
.IR /var/lib/sdshim/bundles/NAME
as
.BI sdshim@ NAME .service
with the same monitor, like any other service:
.PP
.RS
.nf
systemctl enable \-\-now sdshim@web.service
systemctl status sdshim@web.service
journalctl \-u sdshim@web.service
.fi
.RE
.PP
.B sdshim status
and
.B sdshim logs
show it under the name
.IR web .
Settings go in a drop-in
.RB ( "systemctl edit sdshim@web.service" ):
.B Restart=
and resource limits
.RB ( MemoryMax= ,
.BR CPUQuota= ,
\&...) the systemd way, and these variables:
.TP
.B SDSHIM_BUNDLE
the bundle directory (default
.IR /var/lib/sdshim/bundles/NAME ).
.TP
.B SDSHIM_RUNTIME
the OCI runtime, a name or a path (default
.BR runc ).
.TP
.B SDSHIM_OPTIONS
more monitor options, e.g.
.B \-\-tag web \-\-stop\-timeout 30
(then raise
.B TimeoutStopSec=
above the stop timeout; it is 15 s).
"""

EXIT_STATUS = r"""
.B run
(attached) and
.B wait
exit with the container's status, 128+N when it was killed by signal N.
Otherwise, and when the container could not be run:
.TP
.B 0
success.
.TP
.B 2
bad usage.
.TP
.B 125
sdshim, systemd or the runtime failed; the runtime's own message is printed.
.TP
.B 126
the container's command cannot be executed.
.TP
.B 127
the container's command was not found.
"""

FILES = r"""
.TP
.I /run/sdshim/NAME/
each container's state, exit record and control socket (root only).
.TP
.I /var/lib/sdshim/bundles/NAME/
bundles for
.BR sdshim@NAME.service .
.TP
.I /lib/systemd/system/sdshim.slice
the slice all containers run in; limits set on it cap them together.
"""

SEE_ALSO = r"""
.BR systemctl (1),
.BR journalctl (1),
.BR systemd.resource\-control (5),
.BR systemd.service (5),
.BR runc (8),
.BR crun (1)
"""


def roman(text: str) -> str:
    """Plain text as a troff line: escape backslashes, dashes and leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def option_label(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{roman(s)}\\fR" for s in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or action.dest.upper()
    if action.choices:
        metavar = "|".join(map(str, action.choices))
    return f"{names} \\fI{roman(str(metavar))}\\fR"


def man_page(parser: argparse.ArgumentParser) -> str:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))  # reproducible builds
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    # No hyphenation, ragged right: option names and paths stay whole.
    out = [f'.TH SDSHIM 1 "{date}" "sdshim {__version__}" "User Commands"', ".nh", ".ad l",
           ".SH NAME", "sdshim \\- run OCI containers as systemd services",
           ".SH SYNOPSIS", ".B sdshim", ".I COMMAND", "[\\fIOPTIONS\\fR] [\\fIARGS\\fR]",
           ".SH DESCRIPTION", DESCRIPTION.strip(), ".SH COMMANDS"]
    for cmd in commands(parser):
        usage = " ".join(cmd.parser.format_usage().split()[1:])  # drop "usage:"
        usage = usage.replace(" [-h]", "")
        out += [f".SS {cmd.name}", roman(usage), ".PP",
                roman(cmd.help[:1].upper() + cmd.help[1:]) + "."]
        if cmd.aliases:
            out.append("Also: " + ", ".join(f"\\fB{roman(a)}\\fR" for a in cmd.aliases) + ".")
        for action in arguments(cmd.parser):
            if action.option_strings:
                out += [".TP", option_label(action), roman(expand_help(cmd.parser, action))]
            elif action.help:
                out += [".TP", f"\\fI{roman(str(action.metavar or action.dest))}\\fR",
                        roman(expand_help(cmd.parser, action))]
    out += [".SH BOOT-TIME CONTAINERS", BOOT.strip(), ".SH EXIT STATUS", EXIT_STATUS.strip(),
            ".SH FILES", FILES.strip(), ".SH SEE ALSO", SEE_ALSO.strip()]
    return "\n".join(out) + "\n"


# --- bash completion -------------------------------------------------------------------

BASH_HEAD = r"""# bash completion for sdshim(1): commands, options, container names.
# Generated from sdshim's argparse parser by packaging/clidocs.py; do not edit.

_sdshim_names() {
    # The container directories in /run/sdshim: no Python, no D-Bus, instant.
    local dir
    for dir in /run/sdshim/*/; do
        dir=${dir%/}
        dir=${dir##*/}
        [[ -d /run/sdshim/$dir && $dir != .* ]] && printf '%s\n' "$dir"
    done
}

_sdshim_values() {
    # Words for an argument whose value is of kind $1, matching $cur.
    case $1 in
        names) COMPREPLY=($(compgen -W "$(_sdshim_names)" -- "$cur")) ;;
        dirs) COMPREPLY=($(compgen -d -- "$cur")) ;;
        signals)
            local sigs
            sigs=$(compgen -A signal)
            COMPREPLY=($(compgen -W "$sigs ${sigs//SIG/}" -- "${cur^^}")) ;;
        none) COMPREPLY=() ;;
        *) COMPREPLY=($(compgen -W "$1" -- "$cur")) ;;
    esac
}

_sdshim() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local cmd="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} != -* ]]; then
            cmd=${COMP_WORDS[i]}
            break
        fi
    done
"""


def value_kind(action: argparse.Action) -> str:
    if action.choices:
        return " ".join(map(str, action.choices))
    if action.dest == "runtime":
        return " ".join(RUNTIMES)
    return VALUE_KINDS.get(action.dest, "none")


def bash_completion(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    top = [n for c in cmds for n in (c.name, *c.aliases)]
    top += [s for a in parser._actions if a.option_strings for s in a.option_strings]
    lines = [BASH_HEAD.rstrip("\n"),
             '    if [[ -z $cmd ]]; then',
             f'        COMPREPLY=($(compgen -W "{" ".join(top)}" -- "$cur"))',
             "        return",
             "    fi",
             "    local opts positional",
             "    case $cmd in"]
    for cmd in cmds:
        actions = arguments(cmd.parser)
        opts = [s for a in actions for s in a.option_strings]
        valued = [a for a in actions if a.option_strings and a.nargs != 0]
        positional = next((value_kind(a) for a in actions if not a.option_strings), "none")
        lines.append(f"        {'|'.join((cmd.name, *cmd.aliases))})")
        if valued:
            lines.append('            case $prev in')
            for a in valued:
                lines.append(f'                {"|".join(a.option_strings)}) '
                             f'_sdshim_values "{value_kind(a)}"; return ;;')
            lines.append("            esac")
        lines.append(f'            opts="{" ".join(opts)} --help" positional="{positional}" ;;')
    lines += ["        *) return ;;",
              "    esac",
              "    if [[ $cur == -* ]]; then",
              '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
              "    else",
              '        _sdshim_values "$positional"',
              "    fi",
              "}",
              "",
              "complete -F _sdshim sdshim",
              ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="clidocs.py", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("man", "bash"))
    p.add_argument("output", type=Path)
    ns = p.parse_args(argv)
    parser = build_parser()
    text = man_page(parser) if ns.what == "man" else bash_completion(parser)
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
