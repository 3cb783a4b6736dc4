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

from conveyor.amqp import spec
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


def _headers(properties: bytes) -> dict[str, Any] | None:
    """The headers table from raw basic properties."""
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


def expiration_error(value: str) -> str | None:
    """Why an ``expiration`` property is invalid, in RabbitMQ's words (Erlang's string:to_integer
    rules: optional sign, digits, nothing after), or None when it is a valid TTL in ms."""
    digits = value[1:] if value[:1] in ("+", "-") else value
    count = len(digits) - len(digits.lstrip("0123456789"))
    if count == 0:
        return "no_integer"
    number = int(value[: len(value) - len(digits) + count])
    leftover = digits[count:]
    if leftover:
        escaped = leftover.replace("\\", "\\\\").replace('"', '\\"')
        return f'{{leftover_string,"{escaped}"}}'
    if number < 0:
        return f"{{value_negative,{number}}}"
    return None


class BasicPropertiesCodec:
    """The core's view of AMQP basic properties (``conveyor.core.message.PropertiesCodec``).

    Calling it returns the headers table (the common, lazy need); ``decode``/``encode`` convert the
    whole property list to and from a dict, for the rare paths that rewrite a message (dead-lettering,
    BCC removal, reply-to). Property names are the spec's, with underscores.
    """

    __call__ = staticmethod(_headers)

    @staticmethod
    def decode(properties: bytes) -> dict[str, Any]:
        decoded = spec.BasicProperties.decode(properties)
        return {name: getattr(decoded, name) for name in decoded.__slots__ if getattr(decoded, name) is not None}

    @staticmethod
    def encode(values: dict[str, Any]) -> bytes:
        return spec.BasicProperties(**values).encode()

    @staticmethod
    def expiration(properties: bytes) -> str | None:
        """The expiration property (per-message TTL, ms as a string) without a full decode when absent."""
        if len(properties) < 2 or not properties[0] & 0x01:  # flag 0x0100
            return None
        return spec.BasicProperties.decode(properties).expiration

    @staticmethod
    def priority(properties: bytes) -> int:
        if len(properties) < 2 or not properties[0] & 0x08:  # flag 0x0800
            return 0
        return spec.BasicProperties.decode(properties).priority or 0


CODEC = BasicPropertiesCodec()
decode_headers = CODEC  # callable as the headers decoder; the name the rest of the front-end uses
