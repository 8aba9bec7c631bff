"""Signal names and numbers as users write them: TERM, SIGTERM, sigterm or 15."""

from __future__ import annotations

import signal


def signal_number(value: str) -> int:
    """The signal's number; ValueError naming the bad value otherwise."""
    text = value.strip().upper()
    if text.isdigit():
        num = int(text)
        if 0 < num < signal.NSIG:
            return num
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    raise ValueError(f"unknown signal {value!r} (use e.g. TERM, KILL or 9)")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
