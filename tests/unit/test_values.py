"""Field values, tables and arrays: every type tag, round trips, and refusal of malformed input."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from conveyor.amqp.values import (
    DecodeError,
    decode_array,
    decode_table,
    decode_value,
    encode_array,
    encode_table,
    encode_value,
)


def roundtrip(value: Any) -> Any:
    raw = encode_value(value)
    decoded, end = decode_value(raw, 0)
    assert end == len(raw)
    return decoded


def table_bytes(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


def field(name: bytes, tagged: bytes) -> bytes:
    return bytes([len(name)]) + name + tagged


# -- every tag decodes from hand-made bytes ------------------------------------------------------

HAND_MADE = [
    (b"t\x01", True),
    (b"t\x00", False),
    (b"t\x07", True),  # any non-zero octet is true
    (b"b\xff", -1),
    (b"b\x7f", 127),
    (b"B\xff", 255),
    (b"s\x80\x00", -32768),  # RabbitMQ's signed short
    (b"u\xff\xff", 65535),
    (b"I\xff\xff\xff\xfe", -2),
    (b"i\xff\xff\xff\xff", 4294967295),  # unsigned 32
    (b"l\x80" + b"\x00" * 7, -(2**63)),  # RabbitMQ's signed 64
    (b"L" + b"\xff" * 8, 2**64 - 1),
    (b"f" + struct.pack("!f", 1.5), 1.5),
    (b"d" + struct.pack("!d", -2.25), -2.25),
    (b"D\x02" + struct.pack("!i", 12345), Decimal("123.45")),
    (b"D\x00" + struct.pack("!i", -7), Decimal(-7)),
    (b"S\x00\x00\x00\x05hello", "hello"),
    (b"S\x00\x00\x00\x00", ""),
    (b"S\x00\x00\x00\x03\xe2\x82\xac", "\u20ac"),
    (b"x\x00\x00\x00\x03\x00\x01\xff", b"\x00\x01\xff"),
    (b"V", None),
    (b"T" + struct.pack("!Q", 1_700_000_000), datetime.fromtimestamp(1_700_000_000, UTC)),
    (b"A\x00\x00\x00\x00", []),
    (b"A\x00\x00\x00\x05b\x01Vt\x01", [1, None, True]),
    (b"F\x00\x00\x00\x00", {}),
]


@pytest.mark.parametrize(("raw", "expected"), HAND_MADE, ids=lambda v: repr(v)[:30])
def test_decode_hand_made_bytes(raw: bytes, expected: Any) -> None:
    value, end = decode_value(raw, 0)
    assert end == len(raw)
    assert value == expected
    assert type(value) is type(expected)


def test_decode_value_at_an_offset_in_a_larger_buffer() -> None:
    buf = b"junk" + b"s\xff\xfe" + b"trailing"
    value, end = decode_value(memoryview(buf), 4)
    assert (value, end) == (-2, 7)


def test_invalid_utf8_long_string_is_kept_and_round_trips() -> None:
    raw = b"S\x00\x00\x00\x02\xff\xfe"
    value, _ = decode_value(raw, 0)
    assert isinstance(value, str)
    assert encode_value(value) == raw


def test_timestamp_beyond_datetime_range_decodes_to_int() -> None:
    value, end = decode_value(b"T" + b"\xff" * 8, 0)
    assert (value, end) == (2**64 - 1, 9)


def test_float_decodes_and_re_encodes_as_double() -> None:
    value, _ = decode_value(b"f" + struct.pack("!f", 0.25), 0)
    assert encode_value(value) == b"d" + struct.pack("!d", 0.25)


# -- encode -> decode round trips ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        0,
        1,
        -1,
        2**31 - 1,
        -(2**31),
        2**31,  # needs 'l'
        -(2**31) - 1,
        2**63 - 1,
        -(2**63),
        0.0,
        -1.5e300,
        float("inf"),
        Decimal("0"),
        Decimal("3.14159"),
        Decimal("-0.001"),
        Decimal("12E+3"),
        "",
        "text",
        "\u00e9\u4e2d\U0001f600",
        "x" * 70000,
        b"",
        b"\x00\xff" * 10,
        None,
        datetime(2024, 2, 29, 12, 30, 15, tzinfo=UTC),
        [],
        [1, "two", None, [3, [4]], {"k": b"v"}],
        {},
        {"a": {"b": {"c": [True, 2.5, Decimal("1.5")]}}},
    ],
    ids=repr,
)
def test_value_round_trip(value: Any) -> None:
    assert roundtrip(value) == value


def test_int_tags_follow_what_rabbitmq_clients_expect() -> None:
    assert encode_value(5)[:1] == b"I"
    assert encode_value(2**31)[:1] == b"l"
    assert encode_value(True)[:1] == b"t"  # bool before int
    with pytest.raises(ValueError):
        encode_value(2**63)


def test_bytearray_and_memoryview_encode_as_byte_arrays() -> None:
    assert roundtrip(bytearray(b"ab")) == b"ab"
    assert roundtrip(memoryview(b"cd")) == b"cd"
    assert roundtrip((1, 2)) == [1, 2]


def test_unencodable_value_raises_value_error() -> None:
    with pytest.raises(ValueError):
        encode_value(object())


def test_table_round_trip_with_every_type() -> None:
    table = {
        "bool": True,
        "int": -5,
        "long": 2**40,
        "double": 0.5,
        "decimal": Decimal("9.99"),
        "str": "s",
        "bytes": b"\x01",
        "void": None,
        "time": datetime(2001, 1, 1, tzinfo=UTC),
        "array": [1, [2, [3]], {"x": []}],
        "table": {"nested": {"deeper": {}}},
        "": "empty key",
    }
    raw = encode_table(table)
    decoded, end = decode_table(raw, 0)
    assert end == len(raw)
    assert decoded == table


def test_empty_and_none_tables_encode_to_zero_length() -> None:
    assert encode_table({}) == b"\x00\x00\x00\x00"
    assert encode_table(None) == b"\x00\x00\x00\x00"


def test_table_key_longer_than_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_table({"k" * 256: 1})


def test_array_round_trip_and_offset() -> None:
    raw = b"prefix" + encode_array([1, "a", [None]])
    items, end = decode_array(raw, 6)
    assert items == [1, "a", [None]]
    assert end == len(raw)


def test_hand_made_table_with_short_int_tags() -> None:
    body = field(b"a", b"b\xfe") + field(b"bb", b"u\x01\x00") + field(b"c", b"i\x00\x00\x01\x00")
    table, end = decode_table(table_bytes(body), 0)
    assert table == {"a": -2, "bb": 256, "c": 256}
    assert end == 4 + len(body)


# -- malformed input: DecodeError, never IndexError or struct.error ------------------------------

@pytest.mark.parametrize("raw", [raw for raw, _ in HAND_MADE if len(raw) > 1], ids=lambda v: repr(v)[:30])
def test_truncated_value_raises_decode_error(raw: bytes) -> None:
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_value(raw[:cut], 0)


def test_truncated_table_raises_decode_error_at_every_cut() -> None:
    raw = encode_table({"a": 1, "b": "text", "c": [1, 2], "d": {"e": b"x"}, "f": Decimal("1.5")})
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_table(raw[:cut], 0)


def test_truncated_array_raises_decode_error_at_every_cut() -> None:
    raw = encode_array([1, "two", {"three": 3}])
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_array(raw[:cut], 0)


def test_table_whose_contents_overrun_its_length_is_refused() -> None:
    body = field(b"a", b"I\x00\x00\x00\x01")
    # declared one byte short: the last value reads past the table's end
    raw = struct.pack("!I", len(body) - 1) + body
    with pytest.raises(DecodeError):
        decode_table(raw, 0)


def test_array_whose_contents_overrun_its_length_is_refused() -> None:
    raw = b"\x00\x00\x00\x03" + b"I\x00\x00\x00\x01"
    with pytest.raises(DecodeError):
        decode_array(raw, 0)


def test_nested_array_length_overrun_is_refused() -> None:
    with pytest.raises(DecodeError):
        decode_value(b"A\x00\x00\x00\x07b\x01V" + b"t\x01u\x00", 0)


@pytest.mark.parametrize("tag", [b"Z", b"\x00", b"c", b"\xff", b"N"])
def test_unknown_tag_raises_decode_error(tag: bytes) -> None:
    with pytest.raises(DecodeError, match="unknown field type"):
        decode_value(tag + b"\x00" * 8, 0)


def test_unknown_tag_inside_a_table_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_table(table_bytes(field(b"k", b"Z\x00")), 0)


def test_empty_buffer_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_value(b"", 0)
    with pytest.raises(DecodeError):
        decode_table(b"", 0)
    with pytest.raises(DecodeError):
        decode_array(b"\x00\x00", 0)


def _nested_tables(depth: int) -> bytes:
    raw = encode_table({})
    for _ in range(depth):
        raw = table_bytes(field(b"k", b"F" + raw))
    return raw


def _nested_arrays(depth: int) -> bytes:
    raw = b"\x00\x00\x00\x00"
    for _ in range(depth):
        raw = table_bytes(b"A" + raw)
    return raw


def test_moderate_nesting_is_accepted() -> None:
    table, _ = decode_table(_nested_tables(50), 0)
    for _ in range(50):
        table = table["k"]
    assert table == {}


@pytest.mark.parametrize("depth", [101, 1000, 5000])
def test_deep_table_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode_table(_nested_tables(depth), 0)


@pytest.mark.parametrize("depth", [101, 5000])
def test_deep_array_nesting_is_refused(depth: int) -> None:
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode_array(_nested_arrays(depth), 0)


def test_mixed_table_array_nesting_is_refused() -> None:
    raw = encode_table({})
    for i in range(400):
        raw = table_bytes(field(b"k", b"F" + raw)) if i % 2 else table_bytes(b"A" + raw)
    with pytest.raises(DecodeError):
        decode_array(raw, 0)
