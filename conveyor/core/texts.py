"""How RabbitMQ renders values inside reply texts (type names, Erlang terms).

Clients show these texts to users and tests match them, so the core words its errors as RabbitMQ
does, Erlang-isms included (``<<"foo">>``, ``signedint``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = ["describe_value", "erlang_term", "type_name"]


def type_name(value: Any) -> str:
    """RabbitMQ's name for the value's AMQP type. Integer and float widths are not kept by the codec,
    so the common choice is made: signedint when it fits 32 bits (what pika and Java send), else long;
    double for floats."""
    if value is None:
        return "void"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "binary"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


_ERL_ESCAPES = {
    0x22: '\\"',
    0x5C: "\\\\",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x0B: "\\v",
    0x08: "\\b",
    0x0C: "\\f",
    0x1B: "\\e",
}


def _erlang_binary(raw: bytes) -> str:
    """Erlang's ``~p`` of a binary: <<"text">> when every byte is printable Latin-1, else <<1,2,3>>.

    Printable bytes are emitted as they are, so UTF-8 text whose bytes are all printable (most
    accented Latin letters) reads back as the same UTF-8 text, as RabbitMQ's reply does; text such as
    a euro sign contains a byte in 0x80-0x9F and is printed as numbers, as Erlang does.
    """
    if not raw:
        return "<<>>"
    if not all(32 <= b <= 126 or b >= 160 or b in _ERL_ESCAPES for b in raw):
        return "<<" + ",".join(str(b) for b in raw) + ">>"
    text = bytearray()
    for b in raw:
        escape = _ERL_ESCAPES.get(b)
        if escape is None:
            text.append(b)
        else:
            text += escape.encode("ascii")
    return '<<"' + text.decode("utf-8", "surrogateescape") + '">>'


def _erlang_float(value: float) -> str:
    text = repr(value)
    if "e" in text:  # Python 1e+20 -> Erlang 1.0e20
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        text = f"{mantissa}e{int(exponent)}"
    return text


def erlang_term(value: Any) -> str:
    """How RabbitMQ prints a decoded field value (single line; Erlang wraps very long terms)."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _erlang_float(value)
    if isinstance(value, str):
        return _erlang_binary(value.encode("utf-8", "surrogateescape"))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _erlang_binary(bytes(value))
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        scale = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        return f"{{{scale},{int(value.scaleb(scale))}}}"
    if isinstance(value, datetime):
        return str(int(value.timestamp()))
    if isinstance(value, dict):
        items = (f"{{{erlang_term(k)},{type_name(v)},{erlang_term(v)}}}" for k, v in value.items())
        return "[" + ",".join(items) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"{{{type_name(v)},{erlang_term(v)}}}" for v in value) + "]"
    return repr(value)


def describe_value(value: Any) -> str:
    """RabbitMQ's wording for an argument value in an "inequivalent arg" text."""
    if value is None:
        return "none"
    return f"the value '{value}' of type '{type_name(value)}'"
