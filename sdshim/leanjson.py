"""JSON for the monitor, through the standard library's C accelerator (_json) alone.

The json package imports re (and with it enum, functools, ...) for its pure-Python
fallbacks: about 1.2 MB of private memory and 3 ms in every monitor, which reads the
bundle's config.json and writes its records on every start. json itself uses the same
C encoder and scanner when they are there, so the results are json's, byte for byte:
dumps() is json.dumps() with its defaults, loads() is json.loads() on a str. Where
_json is not what it was, sdshim.privapi gives json's own.
"""

from __future__ import annotations

from sdshim import privapi

TYPE_CHECKING = False  # the monitor skips `typing` (see tests/test_footprint.py)
if TYPE_CHECKING:
    from typing import Any, NoReturn

_WHITESPACE = " \t\n\r"  # JSON's own, not str.strip()'s wider idea of it
_encode, _scan, _decode_error = privapi.json_codec()


def dumps(obj: object) -> str:
    return "".join(_encode(obj, 0))


def loads(text: str) -> Any:
    """The value text holds; JSONDecodeError (a ValueError) if it is not JSON."""
    if text.startswith("\ufeff"):
        _fail("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        obj, end = _scan(text, _skip_whitespace(text, 0))
    except StopIteration as e:
        _fail("Expecting value", text, e.value)
    end = _skip_whitespace(text, end)
    if end != len(text):
        _fail("Extra data", text, end)
    return obj


def _skip_whitespace(text: str, pos: int) -> int:
    return len(text) - len(text[pos:].lstrip(_WHITESPACE))


def _fail(message: str, text: str, pos: int) -> NoReturn:
    raise _decode_error()(message, text, pos) from None
