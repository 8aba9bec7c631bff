"""Container names, ids and the unit names derived from them."""

from __future__ import annotations

import os
import re

from sdshim.errors import InvalidNameError

UNIT_PREFIX = "sdshim-"
UNIT_SUFFIX = ".service"
SLICE = "sdshim.slice"
# docker's rule, capped so that sdshim-NAME.service stays far below systemd's 255.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "swift", "wise")
_NOUNS = ("ant", "bee", "cod", "elk", "fox", "gnu", "owl", "ram", "yak", "wren")


def template_unit_name(name: str) -> str:
    """The unit of a boot container: an instance of systemd/sdshim@.service."""
    return f"sdshim@{name}.service"


def validate_name(name: str) -> str:
    """Return name if systemd and the runtime both accept it unescaped; raise otherwise."""
    if not NAME_RE.fullmatch(name) or name.endswith(".") or ".." in name:
        raise InvalidNameError(
            f"invalid container name {name!r}: use 1-63 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit (it becomes part of a unit name and a path)"
        )
    return name


# os.urandom rather than `secrets`, which would cost every `sdshim create` ~3 ms of
# imports (hmac, hashlib, random) for the same bytes.


def generate_name() -> str:
    adjective, noun = os.urandom(2)
    return (f"{_ADJECTIVES[adjective % len(_ADJECTIVES)]}_{_NOUNS[noun % len(_NOUNS)]}_"
            f"{os.urandom(3).hex()}")


def generate_id() -> str:
    """A 64-hex container id, as docker and podman use."""
    return os.urandom(32).hex()


def unit_name(name: str) -> str:
    return f"{UNIT_PREFIX}{name}{UNIT_SUFFIX}"


def exec_unit_name(name: str, exec_id: str) -> str:
    """sdshim-NAME:exec-ID.service: ':' is valid in unit names but never in a container
    name, so no container's unit can look like an exec's (and `list` skips these)."""
    return f"{UNIT_PREFIX}{name}:exec-{exec_id}{UNIT_SUFFIX}"


def name_from_unit(unit: str) -> str | None:
    if unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX):
        name = unit[len(UNIT_PREFIX):-len(UNIT_SUFFIX)]
        return name if NAME_RE.fullmatch(name) else None
    return None
