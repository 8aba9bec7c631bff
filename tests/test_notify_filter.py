"""The container's sd_notify datagrams, checked before they reach systemd
(sdshim.shim.notifyfilter; the proxy's I/O is tested on the test bed)."""

from __future__ import annotations

from sdshim.shim.notifyfilter import MAX_DATAGRAM, NotifyFilter, encode


def test_known_keys_pass_in_order() -> None:
    f = NotifyFilter()
    v = f.check(b"READY=1\nSTATUS=serving 3 clients\nEXTEND_TIMEOUT_USEC=5000000\n"
                b"WATCHDOG=1\nWATCHDOG=trigger\nWATCHDOG_USEC=2000000\nERRNO=2\n"
                b"RELOADING=1\nMONOTONIC_USEC=123\nSTOPPING=1")
    assert [k for k, _ in v.fields] == ["READY", "STATUS", "EXTEND_TIMEOUT_USEC", "WATCHDOG",
                                        "WATCHDOG", "WATCHDOG_USEC", "ERRNO", "RELOADING",
                                        "MONOTONIC_USEC", "STOPPING"]
    assert v.journal == [] and v.get("STATUS") == "serving 3 clients"
    assert encode(v.fields[:2]) == b"READY=1\nSTATUS=serving 3 clients"


def test_mainpid_is_never_forwarded_and_said_once() -> None:
    f = NotifyFilter()
    v = f.check(b"MAINPID=1\nREADY=1")
    assert v.fields == [("READY", "1")] and len(v.journal) == 1 and "MAINPID" in v.journal[0]
    again = f.check(b"MAINPID=7")
    assert again.fields == [] and again.journal == [] and f.refused["MAINPID"] == 2


def test_fd_store_and_fds_refuse_the_whole_datagram_with_one_line() -> None:
    f = NotifyFilter()
    v = f.check(b"FDSTORE=1\nFDNAME=db\nREADY=1")
    assert v.fields == [] and len(v.journal) == 1 and "fd store" in v.journal[0]
    v = f.check(b"READY=1", fds=1)
    assert v.fields == [] and v.journal == []  # said once already
    assert f.refused["fds"] == 2


def test_barrier_is_answered_by_closing_its_fd_silently() -> None:
    f = NotifyFilter()
    v = f.check(b"BARRIER=1", fds=1)
    assert v.fields == [] and v.journal == [] and not f.refused


def test_unknown_keys_bad_values_and_bad_senders() -> None:
    f = NotifyFilter()
    v = f.check(b"READY=yes\nWATCHDOG=2\nERRNO=-1\nSTATUS=a\tb\nX_CUSTOM=1\nSTATUS=ok\nREADY")
    assert v.fields == [("STATUS", "ok")]
    assert len(v.journal) == 5  # READY=yes and a bare READY: one kind
    v = f.check(b"READY=1", sender_ok=False)
    assert v.fields == [] and "outside the container" in v.journal[0]
    v = f.check(b"\xff\xfe")
    assert v.fields == [] and "UTF-8" in v.journal[0]


def test_oversized_datagrams_are_refused() -> None:
    f = NotifyFilter()
    v = f.check(b"STATUS=" + b"x" * (MAX_DATAGRAM - 7), truncated=True)
    assert v.fields == [] and "more than 4096 bytes" in v.journal[0]
