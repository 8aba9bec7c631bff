"""Health checks without I/O (sdshim.shim.health): the schedule, the verdicts, durations."""

from __future__ import annotations

import pytest

from sdshim.shim.health import (
    HEALTHY,
    KEEP_RESULTS,
    OUTPUT_TAIL,
    STARTING,
    UNHEALTHY,
    Health,
    HealthConfig,
    parse_duration,
    probe_command,
)


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30), ("1m30s", 90), ("1h", 3600), ("500ms", 0.5), ("30", 30), ("1.5", 1.5),
    ("2m", 120), ("1h2m3.5s", 3723.5), ("0", 0), (" 10s ", 10),
])
def test_durations_as_podman_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "30x", "-1", "1m30", "abc", "nan", "inf", "1..2s"])
def test_bad_durations_name_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"use e\.g\. 30s, 1m30s"):
        parse_duration(text)


def test_probe_command_shell_and_exec_forms() -> None:
    assert probe_command("pgrep httpd || exit 1") == ["/bin/sh", "-c", "pgrep httpd || exit 1"]
    assert probe_command('["/bin/check", "--quick"]') == ["/bin/check", "--quick"]
    for bad in ("", "  ", "[]", '["a", 1]'):
        with pytest.raises(ValueError):
            probe_command(bad)


def machine(**kw: float | int | str) -> Health:
    return Health(HealthConfig(["true"], **kw), started=100.0)  # type: ignore[arg-type]


def probe(h: Health, now: float, code: int | None, output: bytes = b"",
          timed_out: bool = False) -> str | None:
    """Run one probe at now, ending at now + 0.1; the new status if it changed."""
    h.probe_started(now)
    change = h.probe_ended(now + 0.1, code, output, timed_out)
    return None if change is None else change.new


def test_first_probe_an_interval_after_start_then_after_each_end() -> None:
    h = machine(interval=10, timeout=3)
    assert h.status == STARTING and h.due == 110.0
    assert h.probe_started(110.0) == 113.0  # the deadline: start + timeout
    h.probe_ended(111.0, 0, b"ok")
    assert h.due == 121.0


def test_one_change_per_transition_not_per_probe() -> None:
    h = machine(interval=1, retries=2)
    assert probe(h, 101, 0) == HEALTHY
    assert probe(h, 102, 0) is None  # healthy again: no change, no journal entry
    assert probe(h, 103, 1) is None and h.failing_streak == 1 and h.status == HEALTHY
    assert probe(h, 104, 1) == UNHEALTHY and h.failing_streak == 2
    assert probe(h, 105, 1) is None and h.failing_streak == 3
    assert probe(h, 106, 0) == HEALTHY and h.failing_streak == 0


def test_start_period_failures_do_not_count_until_the_first_success() -> None:
    h = machine(interval=1, retries=1, start_period=5)
    assert probe(h, 101, 1) is None and h.status == STARTING and h.failing_streak == 0
    assert probe(h, 104, 1) is None and h.failing_streak == 0
    assert probe(h, 106, 1) == UNHEALTHY  # after the start period: counts at once
    h = machine(interval=1, retries=1, start_period=60)
    assert probe(h, 101, 0) == HEALTHY
    assert probe(h, 102, 1) == UNHEALTHY  # healthy once: the start period is over


def test_retries_failures_in_a_row_make_it_unhealthy_with_the_action() -> None:
    h = machine(interval=1, retries=3, on_failure="restart")
    probe(h, 101, 1)
    probe(h, 102, 2)
    h.probe_started(103)
    change = h.probe_ended(103.5, None, b"", timed_out=True)
    assert change is not None and (change.old, change.new, change.action) == \
        (STARTING, UNHEALTHY, "restart")
    assert h.failing_streak == 3


def test_results_keep_the_last_few_with_exit_code_and_output_tail() -> None:
    h = machine(interval=1, timeout=2)
    for i in range(KEEP_RESULTS + 2):
        probe(h, 101 + i, i % 2, f"run {i}\n".encode())
    record = h.record()
    assert record["status"] in (HEALTHY, STARTING, UNHEALTHY)
    assert [r["output"] for r in record["log"]] == \
        [f"run {i}\n" for i in range(2, KEEP_RESULTS + 2)]
    assert [r["exit_code"] for r in record["log"]] == [i % 2 for i in range(2, KEEP_RESULTS + 2)]
    probe(h, 200, None, b"x" * 5000 + b"END", timed_out=True)
    last = h.record()["log"][-1]
    assert last["timed_out"] and last["exit_code"] is None
    assert last["output"].startswith("x") and "END\nprobe timed out after 2s" in last["output"]
    assert len(last["output"]) < OUTPUT_TAIL + 100


@pytest.mark.parametrize("kw, message", [
    ({"interval": 0}, "more than 0s"), ({"timeout": -1}, "more than 0s"),
    ({"retries": 0}, "1 or more"), ({"on_failure": "explode"}, "none, kill, stop, restart"),
])
def test_bad_config(kw: dict[str, float | int | str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HealthConfig(["true"], **kw)  # type: ignore[arg-type]
