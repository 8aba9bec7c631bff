"""Container names, ids and the unit names derived from them."""

from __future__ import annotations

import posix

from sdshim.errors import InvalidNameError

UNIT_PREFIX = "sdshim-"
UNIT_SUFFIX = ".service"
SLICE = "sdshim.slice"
# docker's rule, [A-Za-z0-9][A-Za-z0-9_.-]*, capped so that sdshim-NAME.service stays far
# below systemd's 255. Sets, not a regular expression: `re` (with enum) would cost every
# `sdshim create` and `run -d` its biggest import.
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
# The rest: also the characters systemd keeps unescaped in a unit name.
NAME_CHARS = _NAME_FIRST | frozenset("_.-")
NAME_MAX = 63
_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "swift", "wise")
_NOUNS = ("ant", "bee", "cod", "elk", "fox", "gnu", "owl", "ram", "yak", "wren")


def template_unit_name(name: str) -> str:
    """The unit of a boot container: an instance of systemd/sdshim@.service."""
    return f"sdshim@{name}.service"


def is_name(text: str) -> bool:
    """Whether text is a name by docker's rule (see validate_name for the rest)."""
    return (0 < len(text) <= NAME_MAX and text[0] in _NAME_FIRST
            and NAME_CHARS.issuperset(text))


def validate_name(name: str) -> str:
    """Return name if systemd and the runtime both accept it unescaped; raise otherwise."""
    if not is_name(name) or name.endswith(".") or ".." in name:
        raise InvalidNameError(
            f"invalid container name {name!r}: use 1-63 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit (it becomes part of a unit name and a path)"
        )
    return name


# posix.urandom rather than `secrets`, which would cost every `sdshim create` ~3 ms of
# imports (hmac, hashlib, random) for the same bytes.


def generate_name() -> str:
    adjective, noun = posix.urandom(2)
    return (f"{_ADJECTIVES[adjective % len(_ADJECTIVES)]}_{_NOUNS[noun % len(_NOUNS)]}_"
            f"{posix.urandom(3).hex()}")


def generate_id() -> str:
    """A 64-hex container id, as docker and podman use."""
    return posix.urandom(32).hex()


def unit_name(name: str) -> str:
    return f"{UNIT_PREFIX}{name}{UNIT_SUFFIX}"


def exec_unit_name(name: str, exec_id: str) -> str:
    """sdshim-NAME:exec-ID.service: ':' is valid in unit names but never in a container
    name, so no container's unit can look like an exec's (and `list` skips these)."""
    return f"{UNIT_PREFIX}{name}:exec-{exec_id}{UNIT_SUFFIX}"


def name_from_unit(unit: str) -> str | None:
    if unit.startswith(UNIT_PREFIX) and unit.endswith(UNIT_SUFFIX):
        name = unit[len(UNIT_PREFIX):-len(UNIT_SUFFIX)]
        return name if is_name(name) else None
    return None
