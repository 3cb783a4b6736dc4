"""Peeking into raw basic properties without decoding them all.

Messages keep their properties as the publisher sent them (property flags + property list), and a
delivery re-sends those bytes. The broker itself needs two fields on the hot path: the headers table
(headers exchanges) and delivery-mode (persistence). These functions skip straight to them; the flag
bits are those of class basic, first property in the high bit: content-type 0x8000,
content-encoding 0x4000, headers 0x2000, delivery-mode 0x1000.
"""

from __future__ import annotations

import struct
from typing import Any

from conveyor.amqp.values import DecodeError, decode_table

_U32 = struct.Struct("!I")


def _after_strings(properties: bytes, flags: int) -> int:
    """The offset just past content-type and content-encoding (the two short strings that lead)."""
    off = 2
    if flags & 0x8000:
        off += 1 + properties[off]
    if flags & 0x4000:
        off += 1 + properties[off]
    return off


def decode_headers(properties: bytes) -> dict[str, Any] | None:
    """The headers table from raw basic properties (the core's lazy decoder)."""
    try:
        flags = (properties[0] << 8) | properties[1]
        if not flags & 0x2000:
            return None
        table, _ = decode_table(properties, _after_strings(properties, flags))
    except IndexError as exc:
        raise DecodeError("content header properties run past the end of the frame") from exc
    return table


def is_persistent(properties: bytes) -> bool:
    """delivery-mode == 2, read without decoding the other properties."""
    try:
        flags = (properties[0] << 8) | properties[1]
        if not flags & 0x1000:
            return False
        off = _after_strings(properties, flags)
        if flags & 0x2000:
            off += 4 + _U32.unpack_from(properties, off)[0]
        return properties[off] == 2
    except (IndexError, struct.error):
        return False  # malformed: the properties decode fails later where it matters
