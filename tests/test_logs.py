"""Container output in journald, byte for byte, on a real systemd: what the container
wrote is compared with what `journalctl -o export` holds and what `sdshim logs` prints."""

from __future__ import annotations

import base64
import json
import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdshim.units.logs import Entry, parse_export
from tests.conftest import SDSHIM, Bed, assert_clean
from tests.test_container import one_line_error, status

MAX_LINE = 256 * 1024  # the monitor's default --log-max-line
STAMP = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z"


def noise(n: int, seed: int = 1) -> bytes:
    """n bytes of printable text without whitespace (so nothing compresses it away)."""
    raw = random.Random(seed).randbytes(n)
    return base64.b64encode(raw)[:n]


def awkward_stdout() -> bytes:
    return b"".join([
        b"plain\n", b"\n", b"\n", b"crlf\r\n", b"\r\n", b"mid\rcr\n", b"  padded  \n",
        b"\t\n", b"bad utf-8 \xff\xfe\xc3( \xed\xa0\x80\n", b"nul\x00inside\x00\n", b"\x00\n",
        bytes(range(256)).replace(b"\n", b"") + b"\n",
        noise(MAX_LINE, 2) + b"\n",  # exactly the limit: one entry
        noise(MAX_LINE + 1, 3) + b"\n",  # one byte more: two
        noise(1 << 20, 4) + b"\n",  # 1 MiB
        noise(3 * (1 << 20) + 5, 5) + b"\n",
        b"no newline at the end",
    ])


AWKWARD_STDERR = b"err line\n" + noise(300_000, 6) + b"\n\xff\n\nstderr without newline"


def data_bundle(make_bundle: Callable[..., Path], bed: Bed, files: dict[str, bytes],
                script: str) -> Path:
    """A bundle running `sh -c script` with files readable under /data."""
    bundle = make_bundle("sh", "-c", script)
    data = bundle / "data"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_bytes(content)
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"].append({"destination": "/data", "type": "bind", "source": str(data),
                             "options": ["rbind", "ro"]})
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def export(bed: Bed, *matches: str) -> list[Entry]:
    out = bed.run(["journalctl", "--no-pager", "--all", "-o", "export", *matches],
                  timeout=300)
    assert out.returncode == 0, out.stderr
    return parse_export(out.stdout)


def joined(entries: list[Entry], priority: bytes) -> bytes:
    """One stream's bytes from native-driver entries: a newline after each entry but
    those marked CONTAINER_PARTIAL_MESSAGE=true."""
    return b"".join(e[b"MESSAGE"] + (b"" if e.get(b"CONTAINER_PARTIAL_MESSAGE") == b"true"
                                     else b"\n")
                    for e in entries if e[b"PRIORITY"] == priority)


def logs(bed: Bed, name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    out = bed.sdshim("logs", *args, name, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def run_to_exit(bed: Bed, name: str, bundle: Path, *options: str) -> dict[str, Any]:
    out = bed.sdshim("run", "-d", "--name", name, *options, str(bundle))
    assert out.returncode == 0, out.stderr
    waited = bed.sdshim("wait", name, timeout=300)
    assert waited.returncode == 0, waited.stderr
    return status(bed, name)


def test_awkward_output_reaches_journald_byte_for_byte(bed: Bed, name: str,
                                                       make_bundle: Any) -> None:
    stdout = awkward_stdout()
    bundle = data_bundle(make_bundle, bed, {"out": stdout, "err": AWKWARD_STDERR},
                         "cat /data/out; cat /data/err >&2")
    s = run_to_exit(bed, name, bundle, "--log-tag", "web-tag")
    cid = s["id"]
    entries = export(bed, f"CONTAINER_ID_FULL={cid}")
    assert joined(entries, b"6") == stdout
    assert joined(entries, b"3") == AWKWARD_STDERR
    for e in entries:
        assert len(e[b"MESSAGE"]) <= MAX_LINE
        assert e[b"CONTAINER_ID"] == cid[:12].encode()
        assert e[b"CONTAINER_NAME"] == e[b"SYSLOG_IDENTIFIER"] == name.encode()
        assert e[b"CONTAINER_TAG"] == b"web-tag"
        assert e[b"_SYSTEMD_UNIT"] == f"sdshim-{name}.service".encode()
    # The exact-limit line is one entry; a line one byte longer is two.
    sizes = [len(e[b"MESSAGE"]) for e in entries if e[b"PRIORITY"] == b"6"]
    assert sizes.count(MAX_LINE) == 1 + 1 + 4 + 12
    # sdshim logs gives the bytes back, stdout to stdout and stderr to stderr.
    out = logs(bed, name)
    assert out.stdout == stdout and out.stderr == AWKWARD_STDERR
    only_err = logs(bed, name, "--stream", "stderr")
    assert (only_err.stdout, only_err.stderr) == (b"", AWKWARD_STDERR)
    only_out = logs(bed, name, "--stream", "stdout")
    assert (only_out.stdout, only_out.stderr) == (stdout, b"")
    lines = [json.loads(line) for line in logs(bed, name, "--json").stdout.splitlines()]
    for stream, expected in (("stdout", stdout), ("stderr", AWKWARD_STDERR)):
        got = b"".join((ln["message"].encode() if isinstance(ln["message"], str)
                        else bytes(ln["message"])) + (b"\n" if ln["newline"] else b"")
                       for ln in lines if ln["stream"] == stream)
        assert got == expected


def test_small_max_line_splits_and_reassembles(bed: Bed, name: str, make_bundle: Any) -> None:
    text = noise(10_000, 7) + b"\n" + b"x" * 100 + b"\n" + noise(2_500, 8)
    bundle = data_bundle(make_bundle, bed, {"out": text}, "cat /data/out")
    s = run_to_exit(bed, name, bundle, "--log-max-line", "1K")
    entries = export(bed, f"CONTAINER_ID_FULL={s['id']}")
    assert [len(e[b"MESSAGE"]) for e in entries] == [1024] * 9 + [784, 100, 1024, 1024, 452]
    partial = [e.get(b"CONTAINER_PARTIAL_MESSAGE") for e in entries]
    assert partial == [b"true"] * 9 + [None, None, b"true", b"true", b"true"]
    assert logs(bed, name).stdout == text


@pytest.mark.parametrize("driver", ["native", "stream"])
def test_burst_of_200k_lines_loses_nothing(bed: Bed, name: str, make_bundle: Any,
                                           driver: str) -> None:
    # 100 bytes a line; journald's default rate limit would keep about 35,000.
    pad = noise(91, 9)
    text = b"".join(b"%08d %s\n" % (i, pad) for i in range(200_000))
    bundle = data_bundle(make_bundle, bed, {"out": text}, "cat /data/out")
    s = run_to_exit(bed, name, bundle, "--log-driver", driver)
    assert s["exit_code"] == 0
    if driver == "native":
        entries = export(bed, f"CONTAINER_ID_FULL={s['id']}")
    else:
        (invocation,) = s["invocation_ids"]
        entries = export(bed, f"_SYSTEMD_INVOCATION_ID={invocation}",
                         f"SYSLOG_IDENTIFIER={name}", "_TRANSPORT=stdout")
    assert len(entries) == 200_000
    assert b"".join(e[b"MESSAGE"] + b"\n" for e in entries) == text
    assert logs(bed, name).stdout == text


def test_stream_driver_output_and_what_it_gives_up(bed: Bed, name: str,
                                                  make_bundle: Any) -> None:
    long = noise(100_000, 10)
    text = (b"plain\n\nafter an empty line\n  lead and trail  \ncrlf\r\nbad \xff\xfe\n"
            b"nul\x00inside\n" + long + b"\nno newline")
    bundle = data_bundle(make_bundle, bed, {"out": text}, "cat /data/out; echo err >&2")
    s = run_to_exit(bed, name, bundle, "--log-driver", "stream")
    assert s["log_driver"] == "stream"
    # journald drops empty lines and trailing whitespace of stream lines; the rest,
    # NUL and 48K line splits included, comes back exactly.
    expected = (b"plain\nafter an empty line\n  lead and trail\ncrlf\nbad \xff\xfe\n"
                b"nul\x00inside\n" + long + b"\nno newline")
    out = logs(bed, name)
    assert out.stdout == expected and out.stderr == b"err\n"
    # The lines are the unit's, under the container's name, and carry the container
    # fields from the unit's LogExtraFields=.
    entries = export(bed, f"_SYSTEMD_UNIT=sdshim-{name}.service", f"SYSLOG_IDENTIFIER={name}")
    assert {e[b"PRIORITY"] for e in entries} == {b"6", b"3"}
    assert [e.get(b"_LINE_BREAK") for e in entries if e[b"MESSAGE"] == long[:49152]] == \
        [b"line-max"]
    fielded = export(bed, f"CONTAINER_NAME={name}", f"SYSLOG_IDENTIFIER={name}")
    assert len(fielded) == len(entries) > 0
    assert {(e[b"CONTAINER_ID_FULL"], e[b"CONTAINER_ID"]) for e in fielded} == \
        {(s["id"].encode(), s["id"][:12].encode())}


def test_stream_output_does_not_pass_through_the_monitor(bed: Bed, name: str,
                                                          make_bundle: Any) -> None:
    bundle = make_bundle("sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); "
                                     "sleep 0.05; done")
    assert bed.sdshim("run", "-d", "--log-driver", "stream", "--name", name,
                      str(bundle)).returncode == 0
    unit = f"sdshim-{name}.service"

    def ticks() -> list[int]:
        entries = export(bed, f"_SYSTEMD_UNIT={unit}", f"SYSLOG_IDENTIFIER={name}")
        return [int(e[b"MESSAGE"].split()[1]) for e in entries]

    # With the monitor frozen, a pipe would fill and stall the container; a stream
    # connection keeps delivering (and so would after a monitor crash).
    assert bed.run(["systemctl", "kill", "--kill-whom=main", "-s", "STOP", unit]
                   ).returncode == 0
    assert bed.run(["journalctl", "--sync"]).returncode == 0
    last = max(ticks(), default=-1)
    deadline = time.monotonic() + 20
    while max(ticks(), default=-1) <= last + 3:
        assert time.monotonic() < deadline, "no output reached the journal"
        time.sleep(0.1)
    assert bed.run(["systemctl", "kill", "--kill-whom=main", "-s", "CONT", unit]
                   ).returncode == 0
    assert bed.sdshim("stop", "--time", "1", name).returncode == 0
    got = logs(bed, name).stdout.splitlines()
    assert got == [b"tick %d" % i for i in range(len(got))] and len(got) > last + 3


def test_stream_driver_still_reports_exec_errors(bed: Bed, name: str,
                                                make_bundle: Any) -> None:
    # runc prints an execve failure on the container's stderr, which in stream mode
    # only journald sees: the monitor reads it back from there.
    bundle = data_bundle(make_bundle, bed, {"not-elf": b"\x7fELF\x02 not a program"},
                         "unused")
    (bundle / "data" / "not-elf").chmod(0o755)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["/data/not-elf"]
    (bundle / "config.json").write_text(json.dumps(config))
    out = bed.sdshim("run", "--log-driver", "stream", "--name", name, str(bundle))
    assert out.returncode == 126
    assert "exec format error" in one_line_error(out)


def test_logs_options_same_for_running_and_exited(bed: Bed, name: str,
                                                  make_bundle: Any) -> None:
    long = noise(3000, 11)
    numbers = b"".join(b"n%d\n" % i for i in range(300))
    files = {"long": long + b"\n", "numbers": numbers}
    bundle = data_bundle(make_bundle, bed, files,
                         "trap 'printf last-without-newline; exit 0' TERM; "
                         "echo one; printf two-a; sleep 0.2; echo two-b; echo err >&2; "
                         "cat /data/numbers /data/long; echo ready; "
                         "while :; do sleep 0.05; done")
    assert bed.sdshim("run", "-d", "--log-max-line", "10", "--name", name,
                      str(bundle)).returncode == 0
    stdout = b"one\ntwo-atwo-b\n" + numbers + long + b"\nready\n"
    deadline = time.monotonic() + 20
    while logs(bed, name).stdout != stdout:
        assert time.monotonic() < deadline, logs(bed, name).stdout[-200:]
        time.sleep(0.1)
    follower = bed.popen([*SDSHIM, "logs", "-f", name], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)

    def check(final: bytes) -> None:
        out = logs(bed, name)
        assert out.stdout == stdout + final and out.stderr == b"err\n"
        # --tail: the 3000-byte line is 300 entries of 10 bytes, more than the first
        # window sdshim reads from the end of the journal.
        tail = logs(bed, name, "--tail", "2", "--stream", "stdout").stdout
        assert tail == (long + b"\nready\n" + final if not final else b"ready\n" + final)
        assert logs(bed, name, "--tail", "0").stdout == b""
        assert logs(bed, name, "--since", "2000-01-01").stdout == stdout + final
        assert logs(bed, name, "--since", "tomorrow").stdout == b""
        stamped = logs(bed, name, "--timestamps", "--stream", "stdout").stdout
        first = stamped.split(b"\n", 1)[0]
        assert re.fullmatch(STAMP + b" one", first), first
        lines = [json.loads(ln) for ln in logs(bed, name, "--json").stdout.splitlines()]
        assert lines[0]["message"] == "one" and lines[0]["stream"] == "stdout"
        assert {"stream", "time", "message", "newline"} == set(lines[0])
        assert [ln["message"] for ln in lines if ln["stream"] == "stderr"] == ["err"]

    check(b"")
    assert bed.sdshim("stop", "--time", "5", name).returncode == 0
    assert status(bed, name)["exit_code"] == 0
    check(b"last-without-newline")
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert out == stdout + b"last-without-newline" and err == b"err\n"


def test_cri_log_file_beside_the_journal_with_rotation(bed: Bed, name: str,
                                                      make_bundle: Any) -> None:
    numbers = b"".join(b"line %04d\n" % i for i in range(400))
    text = numbers + noise(2500, 12) + b"\nend without newline"
    bundle = data_bundle(make_bundle, bed, {"out": text}, "cat /data/out; echo oops >&2")
    log = bed.scratch / f"{name}.log"
    s = run_to_exit(bed, name, bundle, "--log-path", str(log), "--log-size-max", "8K",
                    "--log-max-line", "1K")
    records = []
    for path in (Path(f"{log}.1"), log):
        data = path.read_bytes()
        assert 0 < len(data) <= 8192
        records += data.splitlines()
    tags = {b"stdout": [], b"stderr": []}  # type: dict[bytes, list[bytes]]
    for record in records:
        m = re.fullmatch(STAMP + rb" (stdout|stderr) ([PF]) (.*)", record, re.S)
        assert m, record
        tags[m[1]].append(m[3] + (b"\n" if m[2] == b"F" else b""))
    # One generation is kept: the files hold the end of the output, in order.
    got = b"".join(tags[b"stdout"])
    assert text.endswith(got) and len(got) > 4096 and got.endswith(b"end without newline")
    assert b"".join(tags[b"stderr"]) == b"oops\n"
    # The journal has all of it.
    assert logs(bed, name).stdout == text
    assert s["exit_code"] == 0


def test_rate_limit_is_opt_in(bed: Bed, name: str, make_bundle: Any) -> None:
    bundle = make_bundle("seq", "20000")
    s = run_to_exit(bed, name, bundle, "--log-rate-limit", "100/30s")
    unit = f"sdshim-{name}.service"
    show = bed.show(unit, "LogRateLimitBurst", "LogRateLimitIntervalUSec")
    assert show == {"LogRateLimitBurst": "100", "LogRateLimitIntervalUSec": "30s"}
    kept = len(export(bed, f"CONTAINER_ID_FULL={s['id']}"))
    assert 100 <= kept < 20_000  # journald scales the burst up with free disk space


def test_monitor_stays_responsive_under_a_flood(bed: Bed, name: str, make_bundle: Any) -> None:
    line = noise(999, 13).decode()
    bundle = make_bundle("sh", "-c", "trap 'echo got-usr1 >&2' USR1; "
                                     "trap 'echo got-term >&2; exit 7' TERM; "
                                     f"yes {line} & while :; do wait; done")
    assert bed.sdshim("run", "-d", "--name", name, str(bundle)).returncode == 0
    cid = status(bed, name)["id"]
    deadline = time.monotonic() + 20
    while not bed.run(["journalctl", "-q", "-o", "cat", "-n", "1",
                       f"CONTAINER_ID_FULL={cid}"]).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    assert bed.sdshim("kill", "--signal", "USR1", name, timeout=30).returncode == 0
    deadline = time.monotonic() + 20
    while b"got-usr1" not in bed.run(["journalctl", "-q", "-o", "cat", "PRIORITY=3",
                                      f"CONTAINER_ID_FULL={cid}"]).stdout:
        assert time.monotonic() < deadline, "the signal did not reach the container"
        time.sleep(0.2)
    # Generous bounds for a loaded 2-core machine; an event loop stuck in the flood
    # would never answer at all.
    assert time.monotonic() - started < 20
    started = time.monotonic()
    out = bed.sdshim("stop", "--time", "20", name, timeout=60)
    assert out.returncode == 0, out.stderr
    s = status(bed, name)
    assert s["state"] == "exited" and s["exit_code"] == 7, s
    assert time.monotonic() - started < 20
    assert logs(bed, name, "--stream", "stderr").stderr == b"got-usr1\ngot-term\n"


@pytest.mark.parametrize("args, message", [
    (["--log-driver", "journald"], "invalid --log-driver"),
    (["--log-max-line", "0"], "invalid --log-max-line"),
    (["--log-max-line", "lots"], "invalid --log-max-line"),
    (["--log-max-line", "1G"], "invalid --log-max-line"),
    (["--log-path", "/nonexistent/x.log"], "does not exist"),
    (["--log-path", "/tmp/x.log", "--log-driver", "stream"], "needs --log-driver native"),
    (["--log-size-max", "1M"], "needs --log-path"),
    (["--log-rate-limit", "often"], "invalid --log-rate-limit"),
])
def test_bad_log_options_are_refused(bed: Bed, name: str, make_bundle: Any,
                                     args: list[str], message: str) -> None:
    out = bed.sdshim("run", "--name", name, *args, str(make_bundle("true")))
    assert out.returncode == 2
    assert message in one_line_error(out)
    assert_clean(bed, name)


def test_bad_tail_is_refused(bed: Bed, name: str, make_bundle: Any) -> None:
    run_to_exit(bed, name, make_bundle("true"))
    out = bed.sdshim("logs", "--tail", "-1", name)
    assert out.returncode == 2 and "invalid --tail" in one_line_error(out)
