"""AMQP 0-9-1 field values: tables, arrays and the primitive types inside them.

RabbitMQ's type letters are used, not the 0-9-1 spec's errata ones, because every real client
follows RabbitMQ (see its "AMQP 0-9-1 errata"): ``s`` is a signed 16-bit short, ``l`` a signed
64-bit long, ``x`` a byte array. Decoders take ``(buf, offset)`` and return ``(value, new_offset)``
so that a whole frame is parsed from one buffer without slicing copies.

Python values chosen on decode, and accepted on encode:
  bool ``t``; int ``b B s u I i l``; float ``f d``; Decimal ``D``; str ``S`` (UTF-8, invalid bytes
  kept with surrogateescape so any wire value round-trips); bytes ``x``; list ``A``;
  dict ``F``; None ``V``; datetime ``T`` (UTC, whole seconds).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from conveyor.core.message import Long

__all__ = [
    "DecodeError",
    "decode_array",
    "decode_table",
    "decode_value",
    "encode_array",
    "encode_table",
    "encode_value",
]


class DecodeError(ValueError):
    """The bytes do not form a valid AMQP value (a SYNTAX_ERROR for the peer)."""


_b = struct.Struct("!b")
_B = struct.Struct("!B")
_h = struct.Struct("!h")
_H = struct.Struct("!H")
_i = struct.Struct("!i")
_I = struct.Struct("!I")
_q = struct.Struct("!q")
_Q = struct.Struct("!Q")
_f = struct.Struct("!f")
_d = struct.Struct("!d")

_MAX_DEPTH = 100  # nested tables deeper than this are refused, never a RecursionError


def _shortstr(buf: Any, off: int) -> tuple[str, int]:
    n = buf[off]
    end = off + 1 + n
    if end > len(buf):
        raise DecodeError("short string runs past the end of the frame")
    return str(buf[off + 1 : end], "utf-8", "surrogateescape"), end


def decode_value(buf: Any, off: int, depth: int = 0) -> tuple[Any, int]:
    """Decode one type-tagged field value at ``off``."""
    try:
        tag = buf[off]
        off += 1
        if tag == 0x53:  # 'S' long string
            (n,) = _I.unpack_from(buf, off)
            off += 4
            end = off + n
            if end > len(buf):
                raise DecodeError("long string runs past the end of the frame")
            return str(buf[off:end], "utf-8", "surrogateescape"), end
        if tag == 0x49:  # 'I' signed 32
            return _i.unpack_from(buf, off)[0], off + 4
        if tag == 0x46:  # 'F' table
            return decode_table(buf, off, depth + 1)
        if tag == 0x74:  # 't' boolean
            return buf[off] != 0, off + 1
        if tag == 0x6C:  # 'l' signed 64
            return _q.unpack_from(buf, off)[0], off + 8
        if tag == 0x41:  # 'A' array
            return decode_array(buf, off, depth + 1)
        if tag == 0x54:  # 'T' timestamp
            secs = _Q.unpack_from(buf, off)[0]
            try:
                return datetime.fromtimestamp(secs, UTC), off + 8
            except (OverflowError, OSError, ValueError):
                return secs, off + 8
        if tag == 0x62:  # 'b' signed 8
            return _b.unpack_from(buf, off)[0], off + 1
        if tag == 0x42:  # 'B' unsigned 8
            return _B.unpack_from(buf, off)[0], off + 1
        if tag == 0x73:  # 's' signed 16 (RabbitMQ)
            return _h.unpack_from(buf, off)[0], off + 2
        if tag == 0x75:  # 'u' unsigned 16
            return _H.unpack_from(buf, off)[0], off + 2
        if tag == 0x69:  # 'i' unsigned 32
            return _I.unpack_from(buf, off)[0], off + 4
        if tag == 0x4C:  # 'L' unsigned 64 (0-9-1 spec; some clients send it)
            return _Q.unpack_from(buf, off)[0], off + 8
        if tag == 0x66:  # 'f' float
            return _f.unpack_from(buf, off)[0], off + 4
        if tag == 0x64:  # 'd' double
            return _d.unpack_from(buf, off)[0], off + 8
        if tag == 0x44:  # 'D' decimal: scale octet, signed 32 unscaled value
            scale = buf[off]
            (raw,) = _i.unpack_from(buf, off + 1)
            return Decimal(raw).scaleb(-scale), off + 5
        if tag == 0x78:  # 'x' byte array
            (n,) = _I.unpack_from(buf, off)
            off += 4
            if off + n > len(buf):
                raise DecodeError("byte array runs past the end of the frame")
            return bytes(buf[off : off + n]), off + n
        if tag == 0x56:  # 'V' void
            return None, off
    except (struct.error, IndexError) as exc:
        raise DecodeError("field value runs past the end of the frame") from exc
    raise DecodeError(f"unknown field type {chr(tag)!r}")


def decode_table(buf: Any, off: int, depth: int = 0) -> tuple[dict[str, Any], int]:
    """Decode a field table (long length prefix) at ``off``."""
    if depth > _MAX_DEPTH:
        raise DecodeError("field tables nested too deeply")
    try:
        (size,) = _I.unpack_from(buf, off)
    except struct.error as exc:
        raise DecodeError("table length runs past the end of the frame") from exc
    off += 4
    end = off + size
    if end > len(buf):
        raise DecodeError("table runs past the end of the frame")
    table: dict[str, Any] = {}
    while off < end:
        key, off = _shortstr(buf, off)
        table[key], off = decode_value(buf, off, depth)
    if off != end:
        raise DecodeError("table contents overrun their declared length")
    return table, end


def decode_array(buf: Any, off: int, depth: int = 0) -> tuple[list[Any], int]:
    if depth > _MAX_DEPTH:
        raise DecodeError("field arrays nested too deeply")
    try:
        (size,) = _I.unpack_from(buf, off)
    except struct.error as exc:
        raise DecodeError("array length runs past the end of the frame") from exc
    off += 4
    end = off + size
    if end > len(buf):
        raise DecodeError("array runs past the end of the frame")
    items: list[Any] = []
    while off < end:
        value, off = decode_value(buf, off, depth)
        items.append(value)
    if off != end:
        raise DecodeError("array contents overrun their declared length")
    return items, end


def encode_value(value: Any) -> bytes:
    """Encode one value with its type tag, choosing the tag RabbitMQ clients expect."""
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if type(value) is Long:
            return b"l" + _q.pack(value)
        if -(2**31) <= value < 2**31:
            return b"I" + _i.pack(value)
        if -(2**63) <= value < 2**63:
            return b"l" + _q.pack(value)
        raise ValueError(f"integer {value} does not fit a field value")
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        return b"S" + _I.pack(len(raw)) + raw
    if isinstance(value, dict):
        return b"F" + encode_table(value)
    if isinstance(value, (list, tuple)):
        return b"A" + encode_array(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return b"x" + _I.pack(len(raw)) + raw
    if isinstance(value, float):
        return b"d" + _d.pack(value)
    if isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):
            raise ValueError(f"decimal {value} cannot be sent")
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        scale = -exponent
        if scale < 0:
            unscaled *= 10**-scale
            scale = 0
        return b"D" + _B.pack(scale) + _i.pack(unscaled)
    if isinstance(value, datetime):
        return b"T" + _Q.pack(int(value.timestamp()))
    if value is None:
        return b"V"
    raise ValueError(f"cannot encode {type(value).__name__} as a field value")


def encode_table(table: dict[str, Any] | None) -> bytes:
    """Encode a field table with its long length prefix."""
    if not table:
        return b"\x00\x00\x00\x00"
    parts: list[bytes] = []
    for key, value in table.items():
        raw = key.encode("utf-8", "surrogateescape")
        if len(raw) > 255:
            raise ValueError(f"table key {key[:20]!r}... is longer than 255 bytes")
        parts.append(_B.pack(len(raw)))
        parts.append(raw)
        parts.append(encode_value(value))
    body = b"".join(parts)
    return _I.pack(len(body)) + body


def encode_array(items: list[Any] | tuple[Any, ...]) -> bytes:
    body = b"".join(encode_value(v) for v in items)
    return _I.pack(len(body)) + body
