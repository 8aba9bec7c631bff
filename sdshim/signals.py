"""Signal names and numbers as users write them: TERM, SIGTERM, sigterm or 15.

From the C half of signal (sdshim.privapi): the monitor names signals in its records,
and signal's enums would cost it ~0.9 MB. The names are signal.Signals' own.
"""

from __future__ import annotations

from sdshim.privapi import signal_module

_signal = signal_module()
# Aliases that signal.Signals does not name a number by.
_ALIASES = {"SIGIOT", "SIGCLD", "SIGPOLL"}
NUMBERS: dict[str, int] = {k: int(v) for k, v in vars(_signal).items()
                           if k.startswith("SIG") and not k.startswith("SIG_")
                           and isinstance(v, int)}
NAMES: dict[int, str] = {v: k for k, v in NUMBERS.items() if k not in _ALIASES}
NSIG: int = _signal.NSIG
SIGTERM: int = NUMBERS["SIGTERM"]
SIGKILL: int = NUMBERS["SIGKILL"]


def number(name: str) -> int:
    """The number of a signal by its exact name (SIGTERM)."""
    return NUMBERS[name]


def name(signum: int) -> str:
    """SIGTERM for 15; the number itself for one without a name (e.g. 35)."""
    return NAMES.get(signum, str(signum))


def signal_number(value: str) -> int:
    """The signal's number; ValueError naming the bad value otherwise."""
    text = value.strip().upper()
    if text.isdigit():
        num = int(text)
        if 0 < num < NSIG:
            return num
    else:
        key = text if text.startswith("SIG") else "SIG" + text
        if key in NUMBERS:
            return NUMBERS[key]
    raise ValueError(f"unknown signal {value!r} (use e.g. TERM, KILL or 9)")


def signal_name(signum: int) -> str:
    return name(signum)
