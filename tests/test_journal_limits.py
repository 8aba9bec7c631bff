"""journald's rate limit must never drop container lines (issue: 252 ignores interval 0)."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import Bed


def test_burst_beyond_journald_default_limit_is_kept(bed: Bed, name: str,
                                                     make_bundle: Any) -> None:
    # journald's default keeps 10,000 per 30 s per unit, scaled by free space: measured
    # here it kept 35,000 of 200,000. 60,000 lines in well under a second exceed that.
    lines = 60_000
    bundle = make_bundle("seq", "1", str(lines))
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    assert bed.sdshim("wait", name).stdout == b"0\n"
    # sdshim's exit note is sent after the last line: once journald has it, it has all.
    deadline = time.monotonic() + 60
    while not bed.journal(f"SDSHIM_CONTAINER_NAME={name}"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    out = bed.run(["journalctl", "--no-pager", "-o", "cat", f"CONTAINER_NAME={name}"])
    got = out.stdout.decode().split()
    assert len(got) == lines
    assert got == [str(i) for i in range(1, lines + 1)]
    suppressed = bed.run(["journalctl", "--no-pager", "-o", "cat", "-u",
                          "systemd-journald.service", "--grep", f"sdshim-{name}"])
    assert b"Suppressed" not in suppressed.stdout
