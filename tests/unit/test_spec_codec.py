"""The generated method and property codec: exact bytes, bit packing, and refusal of bad input."""

from __future__ import annotations

import struct

import pytest

from conveyor.amqp import spec
from conveyor.amqp.values import DecodeError, encode_table


def test_methods_table_is_complete_and_consistent() -> None:
    assert len(spec.METHODS) == 66
    for index, cls in spec.METHODS.items():
        assert index == cls.INDEX == (cls.CLASS_ID << 16 | cls.METHOD_ID)
        assert cls().encode()[:4] == struct.pack("!HH", cls.CLASS_ID, cls.METHOD_ID)
    content = sorted(cls.NAME for cls in spec.METHODS.values() if cls.CONTENT)
    assert content == ["basic.deliver", "basic.get-ok", "basic.publish", "basic.return"]


def test_reply_code_tables() -> None:
    assert spec.NOT_FOUND in spec.SOFT_ERRORS
    assert spec.CHANNEL_ERROR in spec.HARD_ERRORS
    assert not spec.SOFT_ERRORS & spec.HARD_ERRORS
    assert spec.REPLY_NAMES[spec.PRECONDITION_FAILED] == "PRECONDITION_FAILED"


def test_basic_publish_exact_bytes() -> None:
    raw = spec.BasicPublish(exchange="ex", routing_key="rk", mandatory=True).encode()
    assert raw == b"\x00\x3c\x00\x28" + b"\x00\x00" + b"\x02ex" + b"\x02rk" + b"\x01"
    assert spec.decode_method(raw) == spec.BasicPublish(exchange="ex", routing_key="rk", mandatory=True)


def test_basic_deliver_exact_bytes() -> None:
    raw = spec.BasicDeliver("ctag", 2**40, True, "", "q").encode()
    assert raw == (
        b"\x00\x3c\x00\x3c" + b"\x04ctag" + struct.pack("!Q", 2**40) + b"\x01" + b"\x00" + b"\x01q"
    )


def test_connection_tune_exact_bytes() -> None:
    raw = spec.ConnectionTune(channel_max=2047, frame_max=131072, heartbeat=60).encode()
    assert raw == b"\x00\x0a\x00\x1e" + struct.pack("!HIH", 2047, 131072, 60)


def test_queue_declare_packs_five_consecutive_bits_in_one_octet() -> None:
    m = spec.QueueDeclare(queue="q", passive=True, durable=False, exclusive=True, auto_delete=False, nowait=True)
    raw = m.encode()
    # ticket, shortstr, bits (passive=1, durable=2, exclusive=4, auto_delete=8, nowait=16), table
    assert raw == b"\x00\x32\x00\x0a" + b"\x00\x00" + b"\x01q" + bytes([1 | 4 | 16]) + b"\x00\x00\x00\x00"
    decoded = spec.decode_method(raw)
    assert (decoded.passive, decoded.durable, decoded.exclusive, decoded.auto_delete, decoded.nowait) == (
        True, False, True, False, True,
    )
    assert decoded.arguments == {}


def test_access_request_six_bits_round_trip() -> None:
    for mask in range(64):
        flags = [bool(mask & (1 << i)) for i in range(5)]
        m = spec.AccessRequest("/data", *flags)
        assert spec.decode_method(m.encode()) == m


def test_connection_start_ok_with_table_and_longstr() -> None:
    m = spec.ConnectionStartOk(
        client_properties={"product": "x", "capabilities": {"basic.nack": True}},
        mechanism="PLAIN",
        response=b"\x00guest\x00guest",
        locale="en_US",
    )
    assert spec.decode_method(m.encode()) == m


def test_shortstr_longer_than_255_bytes_is_refused_on_encode() -> None:
    with pytest.raises(ValueError):
        spec.QueueDeclare(queue="q" * 256).encode()
    with pytest.raises(ValueError):
        spec.BasicPublish(routing_key="\u00e9" * 128).encode()  # 256 bytes of UTF-8
    assert spec.decode_method(spec.QueueDeclare(queue="q" * 255).encode()).queue == "q" * 255


def test_decode_at_frame_payload_in_a_memoryview() -> None:
    raw = spec.BasicAck(delivery_tag=7, multiple=True).encode()
    assert spec.decode_method(memoryview(raw)) == spec.BasicAck(7, True)


def test_method_equality_and_repr() -> None:
    assert spec.BasicAck(1) != spec.BasicNack(1)
    assert spec.BasicAck(1) != spec.BasicAck(2)
    assert "basic.ack" in repr(spec.BasicAck(1))


# -- decode_method refuses bad input with DecodeError ------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x3c\x00"])
def test_payload_shorter_than_ids_is_a_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        spec.decode_method(raw)


@pytest.mark.parametrize("ids", [(60, 99), (99, 10), (0, 0), (10, 12)])
def test_unknown_method_is_a_decode_error(ids: tuple[int, int]) -> None:
    with pytest.raises(DecodeError, match="unknown method"):
        spec.decode_method(struct.pack("!HH", *ids) + b"\x00" * 16)


SAMPLES = [
    spec.BasicPublish(exchange="amq.topic", routing_key="a.b.c", mandatory=True),
    spec.BasicConsume(queue="q", consumer_tag="t", no_ack=True, arguments={"x-priority": 5}),
    spec.QueueDeclare(queue="q", durable=True, arguments={"x-max-length": 10, "x-queue-type": "classic"}),
    spec.ConnectionStartOk({"a": [1, 2]}, "PLAIN", b"\x00u\x00p", "en_US"),
    spec.ConnectionClose(320, "CONNECTION_FORCED - bye", 0, 0),
    spec.BasicNack(123456789, True, False),
    spec.ExchangeBind(0, "d", "s", "rk", False, {"x-match": "all"}),
    spec.ConnectionTuneOk(0, 131072, 60),
]


@pytest.mark.parametrize("method", SAMPLES, ids=lambda m: m.NAME)
def test_every_truncation_is_a_decode_error(method: spec.Method) -> None:
    raw = method.encode()
    assert spec.decode_method(raw) == method
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            spec.decode_method(raw[:cut])


def test_table_argument_with_bad_length_is_a_decode_error() -> None:
    raw = b"\x00\x32\x00\x0a\x00\x00\x01q\x00" + b"\x00\x00\x00\x05" + b"\x01kZ"
    with pytest.raises(DecodeError):
        spec.decode_method(raw)


# -- basic properties ---------------------------------------------------------------------------------


def test_empty_properties_are_just_zero_flags() -> None:
    assert spec.BasicProperties().encode() == b"\x00\x00"
    assert spec.BasicProperties.decode(b"\x00\x00") == spec.BasicProperties()


def test_properties_exact_bytes_and_flag_bits() -> None:
    props = spec.BasicProperties(content_type="text/plain", delivery_mode=2, timestamp=1000, cluster_id="c")
    raw = props.encode()
    flags = 0x8000 | 0x1000 | 0x0040 | 0x0004
    assert raw == struct.pack("!H", flags) + b"\x0atext/plain" + b"\x02" + struct.pack("!Q", 1000) + b"\x01c"
    assert spec.BasicProperties.decode(raw) == props


def test_all_properties_round_trip_at_an_offset() -> None:
    props = spec.BasicProperties(
        content_type="application/json", content_encoding="gzip", headers={"h": 1, "nested": {"x": [b"y"]}},
        delivery_mode=1, priority=9, correlation_id="cid", reply_to="amq.rabbitmq.reply-to",
        expiration="60000", message_id="mid", timestamp=2**40, type="t", user_id="guest", app_id="app",
        cluster_id="",
    )
    raw = b"\xaa\xbb" + props.encode()
    assert spec.BasicProperties.decode(raw, 2) == props


def test_properties_with_empty_headers_table() -> None:
    props = spec.BasicProperties(headers={})
    assert props.encode() == b"\x20\x00" + encode_table({})
    assert spec.BasicProperties.decode(props.encode()).headers == {}


def test_property_flags_continuation_bit_is_refused() -> None:
    with pytest.raises(DecodeError):
        spec.BasicProperties.decode(b"\x00\x01")


def test_truncated_properties_are_a_decode_error() -> None:
    raw = spec.BasicProperties(content_type="text/plain", headers={"a": "b"}, priority=1, app_id="x").encode()
    for cut in range(2, len(raw)):
        with pytest.raises(DecodeError):
            spec.BasicProperties.decode(raw[:cut])
