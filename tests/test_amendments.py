"""The monitor's amendments to the container's config (sdshim.shim.amendments)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdshim import bundle as bundles
from sdshim.shim import runtime
from sdshim.shim.amendments import Amendments


def test_environment_ours_wins_and_unset_drops() -> None:
    config = {"process": {"env": ["PATH=/bin", "NOTIFY_SOCKET=/bogus", "LISTEN_FDS=9"]}}
    a = Amendments()
    assert not a
    a.setenv("NOTIFY_SOCKET", "/run/notify/notify.sock")
    a.unsetenv("LISTEN_FDS")
    a.apply(config)
    assert config["process"]["env"] == ["PATH=/bin", "NOTIFY_SOCKET=/run/notify/notify.sock"]


def test_bind_mounts_go_after_the_bundles() -> None:
    config: dict[str, object] = {"mounts": [{"destination": "/proc", "type": "proc"}]}
    a = Amendments()
    a.bind("/run/sdshim/web/notify", "/run/notify")
    a.apply(config)
    mounts = config["mounts"]
    assert isinstance(mounts, list) and mounts[0]["destination"] == "/proc"
    assert mounts[1] == {"destination": "/run/notify", "type": "bind",
                         "source": "/run/sdshim/web/notify",
                         "options": ["rbind", "ro", "nosuid", "nodev"]}


@pytest.mark.parametrize("key", ["", "A=B"])
def test_bad_names_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="invalid environment variable name"):
        Amendments().setenv(key, "x")


def test_write_config_amends_the_copy_not_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    bundles.write_config(bundle, ["true"])
    before = (bundle / "config.json").read_text()
    a = Amendments()
    a.setenv("WATCHDOG_USEC", "1000000")
    runtime.write_config(str(bundle), str(tmp_path / "copy"), "", amendments=a)
    assert (bundle / "config.json").read_text() == before
    copy = json.loads((tmp_path / "copy/config.json").read_text())
    assert "WATCHDOG_USEC=1000000" in copy["process"]["env"]
