"""D-Bus messages as bytes, standard library only (the D-Bus specification, "Message
Protocol"), for the CLI's blocking client (sdshim.units.connection).

Values go by signature: basic types as Python ints, floats, bools and strs; arrays as
lists (dict entries `a{..}` as dicts); structs as tuples or lists (read back as lists,
as dbus-fast does); a variant as a (signature, value) pair when written, and as the bare
value when read (readers of systemd's properties want the value, never the wrapper).
Every value is aligned to its type's size counted from the start of the message; the
body starts on an 8-byte boundary, so it is marshalled from offset 0 on its own.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # `typing` costs the CLI's start ~2 ms; it needs it only for mypy
if TYPE_CHECKING:
    from typing import Any

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED = 0x1
PROTOCOL_VERSION = 1
# Header field codes, in the order they are written (the order dbus-fast uses too).
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE = range(1, 9)
_FIELD_TYPES = {PATH: "o", INTERFACE: "s", MEMBER: "s", ERROR_NAME: "s", REPLY_SERIAL: "u",
                DESTINATION: "s", SENDER: "s", SIGNATURE: "g"}
HEADER_SIZE = 16  # the fixed part: yyyyuu and the length of the field array
MAX_MESSAGE = 1 << 27  # 128 MiB, the specification's limit

# Fixed-size types: struct format and size, which is also their alignment.
_FIXED = {"y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2), "i": ("i", 4),
          "u": ("I", 4), "x": ("q", 8), "t": ("Q", 8), "d": ("d", 8), "h": ("I", 4)}
_ALIGN = {**{code: size for code, (_fmt, size) in _FIXED.items()},
          "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8, "v": 1}


class WireError(ValueError):
    """Bytes or values that do not fit the signature."""


_types_cache: dict[str, list[str]] = {}


def complete_types(signature: str) -> list[str]:
    """signature split into its single complete types: 'sa{sv}(ii)' -> s, a{sv}, (ii)."""
    cached = _types_cache.get(signature)
    if cached is not None:
        return cached
    types, i = [], 0
    while i < len(signature):
        end = _type_end(signature, i)
        types.append(signature[i:end])
        i = end
    _types_cache[signature] = types
    return types


def _type_end(signature: str, i: int) -> int:
    code = signature[i:i + 1]
    if code == "a":
        return _type_end(signature, i + 1)
    if code in ("(", "{"):
        close = ")" if code == "(" else "}"
        i += 1
        while signature[i:i + 1] != close:
            if i >= len(signature):
                raise WireError(f"unbalanced signature {signature!r}")
            i = _type_end(signature, i)
        return i + 1
    if code in _ALIGN:
        return i + 1
    raise WireError(f"invalid signature {signature!r} at {i}")


class Writer:
    """Marshals values into a buffer that starts 8-aligned in the message."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def align(self, n: int) -> None:
        self.buf += bytes(-len(self.buf) % n)

    def write_all(self, signature: str, values: list[Any] | tuple[Any, ...]) -> None:
        types = complete_types(signature)
        if len(types) != len(values):
            raise WireError(f"signature {signature!r} needs {len(types)} values, "
                            f"got {len(values)}")
        for t, v in zip(types, values, strict=True):
            self.write(t, v)

    def write(self, t: str, value: Any) -> None:
        code = t[0]
        buf = self.buf
        if code in _FIXED:
            fmt, size = _FIXED[code]
            self.align(size)
            buf += struct.pack("<" + fmt, value)
        elif code in "so":
            data = value.encode()
            self.align(4)
            buf += struct.pack("<I", len(data)) + data + b"\0"
        elif code == "g":
            data = value.encode()
            buf.append(len(data))
            buf += data + b"\0"
        elif code == "v":
            signature, inner = value
            if len(complete_types(signature)) != 1:
                raise WireError(f"a variant holds one complete type, not {signature!r}")
            self.write("g", signature)
            self.write(signature, inner)
        elif code == "a":
            self.align(4)
            at = len(buf)
            buf += b"\0\0\0\0"
            element = t[1:]
            # Padding up to the first element is not part of the length, and is there
            # even when the array is empty.
            self.align(_ALIGN[element[0]])
            start = len(buf)
            for item in (value.items() if element[0] == "{" else value):
                self.write(element, item)
            struct.pack_into("<I", buf, at, len(buf) - start)
        else:  # ( or {
            self.align(8)
            self.write_all(t[1:-1], value)


class Reader:
    """Unmarshals values from data, aligning against the start of the message."""

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0,
                 little: bool = True, end: int | None = None) -> None:
        self.data = data
        self.pos = offset
        self.order = "<" if little else ">"
        self.end = len(data) if end is None else end

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def take(self, n: int) -> int:
        """The position of the next n bytes, which must be there."""
        at = self.pos
        if at + n > self.end:
            raise WireError("message ends in the middle of a value")
        self.pos = at + n
        return at

    def read_all(self, signature: str) -> list[Any]:
        return [self.read(t) for t in complete_types(signature)]

    def read(self, t: str) -> Any:
        code = t[0]
        if code in _FIXED:
            fmt, size = _FIXED[code]
            self.align(size)
            (value,) = struct.unpack_from(self.order + fmt, self.data, self.take(size))
            return bool(value) if code == "b" else value
        if code in "sog":
            if code == "g":
                n = self.data[self.take(1)]
            else:
                self.align(4)
                (n,) = struct.unpack_from(self.order + "I", self.data, self.take(4))
            at = self.take(n + 1)
            return bytes(self.data[at:at + n]).decode()
        if code == "v":
            return self.read(self.read("g"))
        if code == "a":
            self.align(4)
            (n,) = struct.unpack_from(self.order + "I", self.data, self.take(4))
            element = t[1:]
            self.align(_ALIGN[element[0]])
            end = self.pos + n
            if end > self.end:
                raise WireError("array runs past the end of the message")
            if element == "y":
                return bytes(self.data[self.take(n):end])
            if element[0] == "{":
                entries = {}
                while self.pos < end:
                    key, value = self.read(element)
                    entries[key] = value
                return entries
            items = []
            while self.pos < end:
                items.append(self.read(element))
            return items
        self.align(8)  # ( or {
        return self.read_all(t[1:-1])


class Message:
    """One D-Bus message; body values as described in the module's docstring."""

    __slots__ = ("body", "destination", "error_name", "flags", "interface", "member",
                 "path", "reply_serial", "sender", "serial", "signature", "type")

    def __init__(self, type: int = METHOD_CALL, *, path: str = "", interface: str = "",
                 member: str = "", destination: str = "", signature: str = "",
                 body: list[Any] | None = None, serial: int = 0, reply_serial: int = 0,
                 error_name: str = "", sender: str = "", flags: int = 0) -> None:
        self.type = type
        self.path = path
        self.interface = interface
        self.member = member
        self.destination = destination
        self.signature = signature
        self.body = body if body is not None else []
        self.serial = serial
        self.reply_serial = reply_serial
        self.error_name = error_name
        self.sender = sender
        self.flags = flags

    def __repr__(self) -> str:
        return (f"Message(type={self.type}, serial={self.serial}, "
                f"reply_serial={self.reply_serial}, path={self.path!r}, "
                f"member={self.member!r}, error_name={self.error_name!r})")

    def to_bytes(self) -> bytes:
        body = Writer()
        body.write_all(self.signature, self.body)
        fields = []
        for code in range(PATH, SIGNATURE + 1):
            value = self._field(code)
            if value:
                fields.append((code, (_FIELD_TYPES[code], value)))
        header = Writer()
        header.write_all("yyyyuua(yv)", [ord("l"), self.type, self.flags, PROTOCOL_VERSION,
                                         len(body.buf), self.serial, fields])
        header.align(8)
        return bytes(header.buf + body.buf)

    def _field(self, code: int) -> Any:
        return (None, self.path, self.interface, self.member, self.error_name,
                self.reply_serial, self.destination, self.sender, self.signature)[code]

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Message:
        """The message in data, which holds exactly one (see message_length)."""
        little = data[0] == ord("l")
        r = Reader(data, 4, little)
        _body_length, serial = r.read("u"), r.read("u")
        fields = dict(r.read("a(yv)"))
        r.align(8)
        msg = cls(data[1], flags=data[2], serial=serial,
                  path=fields.get(PATH, ""), interface=fields.get(INTERFACE, ""),
                  member=fields.get(MEMBER, ""), error_name=fields.get(ERROR_NAME, ""),
                  reply_serial=fields.get(REPLY_SERIAL, 0),
                  destination=fields.get(DESTINATION, ""), sender=fields.get(SENDER, ""),
                  signature=fields.get(SIGNATURE, ""))
        msg.body = r.read_all(msg.signature)
        if r.pos != len(data):
            raise WireError(f"message body longer than its signature {msg.signature!r}")
        return msg


def message_length(header: bytes | bytearray | memoryview) -> int:
    """The length of the whole message whose first HEADER_SIZE bytes are header."""
    if header[0] not in (ord("l"), ord("B")) or header[3] != PROTOCOL_VERSION:
        raise WireError("not a D-Bus message (bad endianness or protocol version)")
    order = "<" if header[0] == ord("l") else ">"
    body_length, _serial, fields_length = struct.unpack_from(order + "III", header, 4)
    fields_end = HEADER_SIZE + fields_length
    total = fields_end + -fields_end % 8 + body_length
    if total > MAX_MESSAGE:
        raise WireError(f"message of {total} bytes is over the {MAX_MESSAGE}-byte limit")
    return int(total)
