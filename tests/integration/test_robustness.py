"""Raw-socket robustness: malformed traffic gets RabbitMQ's replies and never disturbs other clients.

The raw client (``raw`` fixture, conftest.RawAMQP) speaks hand-packed AMQP 0-9-1. Codes are always asserted;
reply texts where RabbitMQ's are stable (its FRAME_ERROR texts embed Erlang terms, so only the prefix).
"""

from __future__ import annotations

import struct
import time
import uuid

import pytest

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


@pytest.fixture(autouse=True)
def _broker_still_healthy(assert_broker_healthy):
    """After every case a fresh pika connection still declares, publishes and gets."""
    yield
    assert_broker_healthy()


# --------------------------------------------------------------------------------------------------
# Helpers built on the conftest wire helpers
# --------------------------------------------------------------------------------------------------


def declare_queue(c, wire, channel: int, name: str, flags: int = 0) -> None:
    c.send(wire.method_frame(channel, 50, 10, b"\x00\x00" + wire.shortstr(name) + bytes([flags]) + wire.table()))
    f = c.read_frame()
    assert f is not None and f.method == (50, 11), f


def publish(c, wire, channel: int, exchange: str, key: str, body: bytes, bits: int = 0,
            frame_max: int = 4096) -> None:
    args = b"\x00\x00" + wire.shortstr(exchange) + wire.shortstr(key) + bytes([bits])
    data = wire.method_frame(channel, 60, 40, args)
    data += wire.frame(wire.FRAME_HEADER, channel, struct.pack("!HHQH", 60, 0, len(body), 0))
    step = frame_max - 8
    for i in range(0, len(body), step):
        data += wire.frame(wire.FRAME_BODY, channel, body[i : i + step])
    c.send(data)


def consume(c, wire, channel: int, queue: str, tag: str, no_ack: bool = False) -> bytes:
    bits = 0x02 if no_ack else 0
    c.send(wire.method_frame(channel, 60, 20, b"\x00\x00" + wire.shortstr(queue) + wire.shortstr(tag)
                             + bytes([bits]) + wire.table()))
    f = c.read_frame()
    assert f is not None, "connection closed"
    return f


def read_content(c) -> tuple[object, bytes]:
    """After a deliver/return/get-ok method frame: read the content header and body frames."""
    header = c.read_frame()
    assert header is not None and header.type == 2, header
    size = struct.unpack_from("!Q", header.payload, 4)[0]
    body = b""
    while len(body) < size:
        f = c.read_frame()
        assert f is not None and f.type == 3, f
        body += f.payload
    return header, body


def parse_deliver(payload: bytes) -> tuple[str, int, bool]:
    """basic.deliver payload -> (consumer_tag, delivery_tag, redelivered)."""
    n = payload[4]
    tag = payload[5 : 5 + n].decode()
    off = 5 + n
    delivery_tag = struct.unpack_from("!Q", payload, off)[0]
    redelivered = bool(payload[off + 8] & 1)
    return tag, delivery_tag, redelivered


def qname(label: str) -> str:
    return f"it.robust.{label}.{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------------
# Protocol header
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [b"HTTP/1.1\r\n\r\n", b"AMQP\x00\x00\x09\x02", b"AMQP\x01\x01\x00\x0a", b"AMQP\x00\x00\x08\x00",
     b"AMQP\x03\x01\x00\x00"],
    ids=["http", "0-9-2", "0-10", "0-8", "amqp1.0-sasl"],
)
def test_wrong_protocol_header_gets_supported_header_and_close(raw, header):
    c = raw(handshake=False)
    c.send(header)
    assert c.read_exact(8) == PROTOCOL_HEADER
    assert c.is_closed_by_peer(5)


def test_connection_start_contents(raw):
    c = raw(handshake=False)
    c.send(PROTOCOL_HEADER)
    f = c.read_frame()
    assert f.channel == 0 and f.method == (10, 10)
    assert f.payload[4:6] == b"\x00\x09"  # version-major 0, version-minor 9
    assert b"PLAIN" in f.payload and b"AMQPLAIN" in f.payload
    assert b"en_US" in f.payload


def test_handshake_and_clean_close(raw, wire):
    c = raw()
    c.send(wire.method_frame(0, 10, 50, struct.pack("!H", 200) + wire.shortstr("bye") + b"\x00\x00\x00\x00"))
    f = c.read_frame()
    assert f.method == (10, 51)
    # RabbitMQ leaves closing the socket to the client after close-ok


def test_open_unknown_vhost_is_530(raw, wire):
    c = raw(handshake=False)
    with pytest.raises(AssertionError) as ei:
        c.handshake(vhost="no-such-vhost")
    assert "NOT_ALLOWED - vhost no-such-vhost not found" in str(ei.value)


def test_bad_password_is_403_with_authentication_failure_close(raw, wire):
    c = raw(handshake=False)
    c.send(PROTOCOL_HEADER)
    assert c.read_frame().method == (10, 10)
    props = wire.table({"capabilities": {"authentication_failure_close": True}})
    c.send(wire.method_frame(0, 10, 11, props + wire.shortstr("PLAIN") + wire.longstr(b"\x00guest\x00wrong")
                             + wire.shortstr("en_US")))
    code, text, _cls, _mth = c.expect_connection_close()
    assert code == 403
    assert text == ("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
                    "For details see the broker logfile.")
    assert c.is_closed_by_peer(5)


# --------------------------------------------------------------------------------------------------
# Frame-level errors: 501 FRAME_ERROR, 504 CHANNEL_ERROR, 505 UNEXPECTED_FRAME
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\xff" * 20, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], ids=["ff", "http"])
def test_garbage_after_handshake_is_501(raw, garbage):
    c = raw()
    c.send(garbage)
    code, text, _cls, _mth = c.expect_connection_close()
    assert code == 501
    assert text.startswith("FRAME_ERROR")


def test_unknown_frame_type_is_501(raw, wire):
    c = raw()
    c.send(wire.frame(9, 0, b""))
    code, text, _cls, _mth = c.expect_connection_close()
    assert code == 501
    assert text.startswith("FRAME_ERROR - type 9")
    assert c.is_closed_by_peer(5)


def test_truncated_frame_then_disconnect(raw, wire):
    c = raw()
    c.open_channel(1)
    full = wire.method_frame(1, 50, 10, b"\x00\x00" + wire.shortstr("q") + b"\x00" + wire.table())
    c.send(full[: len(full) // 2])
    c.close()  # the healthy-broker check after the test is the assertion


def test_truncated_header_then_disconnect(raw):
    c = raw(handshake=False)
    c.send(b"AMQ")
    c.close()


def test_oversized_frame_is_501(raw, wire):
    # 8192: RabbitMQ 3.10 accepts down to 4096, but 4.x raised the minimum frame_max to 8192
    c = raw(frame_max=8192)
    c.open_channel(1)
    big = wire.table({"k": "v" * 10000})
    c.send(wire.method_frame(1, 50, 10, b"\x00\x00" + wire.shortstr(qname("big")) + b"\x00" + big))
    code, text, cls, mth = c.expect_connection_close()
    assert (code, cls, mth) == (501, 0, 0)
    assert text.startswith("FRAME_ERROR - type 1")


def test_frame_at_frame_max_is_accepted(raw, wire, names):
    c = raw(frame_max=8192)
    c.open_channel(1)
    q = names.track_queue(qname("fits"))
    head = struct.pack("!HH", 50, 10) + b"\x00\x00" + wire.shortstr(q) + b"\x00"
    pad = 8192 - 8 - len(head) - 4 - 7  # payload = frame_max - 8: the whole frame is exactly frame_max
    payload = head + wire.table({"k": "v" * pad})
    assert len(payload) == 8184
    c.send(wire.frame(wire.FRAME_METHOD, 1, payload))
    f = c.read_frame()
    assert f.method == (50, 11)


def test_bad_frame_end_is_501(raw, wire):
    c = raw()
    c.open_channel(1)
    c.send(wire.method_frame(1, 50, 10, b"\x00\x00" + wire.shortstr(qname("end")) + b"\x00" + wire.table(),
                             )[:-1] + b"\x00")
    code, text, _cls, _mth = c.expect_connection_close()
    assert code == 501
    assert text.startswith("FRAME_ERROR - type 1")


def test_frame_on_unopened_channel_is_504(raw, wire):
    c = raw()
    c.send(wire.method_frame(5, 50, 10, b"\x00\x00" + wire.shortstr(qname("x")) + b"\x00" + wire.table()))
    assert c.expect_connection_close() == (504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)
    assert c.is_closed_by_peer(5)


def test_second_channel_open_is_504(raw, wire):
    c = raw()
    c.open_channel(1)
    c.send(wire.method_frame(1, 20, 10, wire.shortstr("")))
    assert c.expect_connection_close() == (504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)


def test_channel_method_on_channel_zero_is_504(raw, wire):
    c = raw()
    c.send(wire.method_frame(0, 50, 10, b"\x00\x00" + wire.shortstr(qname("x")) + b"\x00" + wire.table()))
    assert c.expect_connection_close() == (
        504, "CHANNEL_ERROR - unexpected method in connection state running", 50, 10,
    )


def test_connection_method_on_channel_one_is_503(raw, wire):
    c = raw()
    c.open_channel(1)
    c.send(wire.method_frame(1, 10, 50, struct.pack("!H", 200) + wire.shortstr("") + b"\x00\x00\x00\x00"))
    assert c.expect_connection_close() == (503, "COMMAND_INVALID - unimplemented method", 10, 50)


@pytest.mark.parametrize("ftype", [2, 3], ids=["header", "body"])
def test_content_frame_without_method_is_505(raw, wire, ftype):
    c = raw()
    c.open_channel(1)
    payload = struct.pack("!HHQH", 60, 0, 5, 0) if ftype == 2 else b"hello"
    c.send(wire.frame(ftype, 1, payload))
    assert c.expect_connection_close() == (
        505, "UNEXPECTED_FRAME - expected method frame, got non method frame instead", 0, 0,
    )


def test_heartbeat_on_nonzero_channel_is_505(raw, wire):
    c = raw()
    c.send(wire.frame(wire.FRAME_HEARTBEAT, 1, b""))
    code, text, _cls, _mth = c.expect_connection_close()
    assert code == 505
    assert text.startswith("UNEXPECTED_FRAME - type 8")


@pytest.mark.parametrize(("cls", "mth"), [(99, 10), (50, 99)], ids=["class", "method"])
def test_unknown_method_drops_connection(raw, wire, cls, mth):
    c = raw()
    c.open_channel(1)
    c.send(wire.method_frame(1, cls, mth, b""))
    # RabbitMQ 3.10 drops the TCP connection without a connection.close here; a close with 502 SYNTAX_ERROR,
    # 503 COMMAND_INVALID or 540 NOT_IMPLEMENTED is accepted too
    deadline = time.monotonic() + 5
    while (f := c.read_frame(max(0.01, deadline - time.monotonic()))) is not None:
        if f.method == (10, 50):
            assert f.close_args()[0] in (502, 503, 540)
            c.send(wire.method_frame(0, 10, 51))


def test_immediate_publish_is_540(raw, wire):
    c = raw()
    c.open_channel(1)
    publish(c, wire, 1, "", qname("imm"), b"x", bits=0x02)
    assert c.expect_connection_close() == (540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
    assert c.is_closed_by_peer(5)


def test_duplicate_consumer_tag_is_530(raw, wire, names):
    c = raw()
    c.open_channel(1)
    q = names.track_queue(qname("dup"))
    declare_queue(c, wire, 1, q)
    assert consume(c, wire, 1, q, "dup").method == (60, 21)
    f = consume(c, wire, 1, q, "dup")
    assert f.method == (10, 50)
    assert f.close_args() == (530, "NOT_ALLOWED - attempt to reuse consumer tag 'dup'", 60, 20)


def test_channel_error_leaves_connection_and_other_channels(raw, wire, names):
    c = raw()
    c.open_channel(1)
    c.open_channel(2)
    missing = qname("missing")
    c.send(wire.method_frame(1, 50, 10, b"\x00\x00" + wire.shortstr(missing) + b"\x01" + wire.table()))
    assert c.expect_channel_close(1) == (404, f"NOT_FOUND - no queue '{missing}' in vhost '/'", 50, 10)
    q = names.track_queue(qname("ok"))
    declare_queue(c, wire, 2, q)
    c.open_channel(1)  # the closed channel number can be reused after close-ok
    declare_queue(c, wire, 1, q)


# --------------------------------------------------------------------------------------------------
# Wire-level semantics
# --------------------------------------------------------------------------------------------------


def test_confirm_mandatory_return_precedes_ack(raw, wire, names):
    c = raw()
    c.open_channel(1)
    c.send(wire.method_frame(1, 85, 10, b"\x00"))
    assert c.read_frame().method == (85, 11)
    q = names.track_queue(qname("routed"))
    declare_queue(c, wire, 1, q)
    missing = qname("nowhere")
    publish(c, wire, 1, "", missing, b"lost", bits=0x01)  # mandatory, unroutable: seq 1
    publish(c, wire, 1, "", q, b"kept", bits=0x01)  # mandatory, routed: seq 2
    f = c.read_frame()
    assert f.method == (60, 50)
    code = struct.unpack_from("!H", f.payload, 4)[0]
    assert code == 312
    assert f.payload[6 : 6 + f.payload[6] + 1] == wire.shortstr("NO_ROUTE")
    _header, body = read_content(c)
    assert body == b"lost"
    acked = set()
    while acked != {1, 2}:
        f = c.read_frame()
        assert f.method == (60, 80), f
        tag, multiple = struct.unpack_from("!QB", f.payload, 4)
        acked |= set(range(1, tag + 1)) if multiple & 1 else {tag}


def test_abrupt_disconnect_requeues_unacked(broker, raw, wire, names, pump):
    q = names.track_queue(qname("abrupt"))
    c = raw()
    c.open_channel(1)
    declare_queue(c, wire, 1, q)
    for i in range(3):
        publish(c, wire, 1, "", q, f"m{i}".encode())
    assert consume(c, wire, 1, q, "raw-consumer").method == (60, 21)
    seen = []
    while len(seen) < 3:
        f = c.read_frame()
        assert f.method == (60, 60), f
        _tag, _dtag, redelivered = parse_deliver(f.payload)
        assert redelivered is False
        seen.append(read_content(c)[1])
    assert seen == [b"m0", b"m1", b"m2"]
    c.close()  # no close handshake, nothing acked

    conn = broker.connect()
    try:
        ch = conn.channel()
        got = []
        ch.basic_consume(q, lambda _c, m, _p, b: got.append((b, m.redelivered)), auto_ack=True)
        assert pump(conn, lambda: len(got) == 3)
        assert got == [(b"m0", True), (b"m1", True), (b"m2", True)]
    finally:
        conn.close()


def test_flood_of_1000_channel_opens(raw, wire):
    c = raw()
    assert c.channel_max == 0 or c.channel_max >= 1000
    c.send(b"".join(wire.method_frame(n, 20, 10, wire.shortstr("")) for n in range(1, 1001)))
    opened = set()
    deadline = time.monotonic() + 20
    while len(opened) < 1000:
        f = c.read_frame(max(0.01, deadline - time.monotonic()))
        assert f is not None and f.method == (20, 11), f
        opened.add(f.channel)
    assert opened == set(range(1, 1001))
    c.send(wire.method_frame(1000, 20, 40, struct.pack("!H", 200) + wire.shortstr("") + b"\x00\x00\x00\x00"))
    f = c.read_frame()
    assert (f.channel, f.method) == (1000, (20, 41))
    c.send(wire.method_frame(0, 10, 50, struct.pack("!H", 200) + wire.shortstr("") + b"\x00\x00\x00\x00"))
    assert c.read_frame(10).method == (10, 51)


def test_many_connections_in_parallel(broker, raw):
    clients = [raw() for _ in range(50)]
    for i, c in enumerate(clients):
        c.open_channel(1 + i)
    for c in clients:
        c.close()


# --------------------------------------------------------------------------------------------------
# Heartbeats (fresh Conveyor only: RabbitMQ can't be given a throw-away instance here)
# --------------------------------------------------------------------------------------------------


def test_silent_client_is_dropped_after_missed_heartbeats(fresh_broker, raw):
    c = raw(target=fresh_broker, heartbeat=1)
    start = time.monotonic()
    assert c.is_closed_by_peer(6), "server kept a silent heartbeat=1 connection open"
    # RabbitMQ drops after 2 missed intervals (~2-3 s at heartbeat=1)
    assert time.monotonic() - start <= 4.5


def test_heartbeating_client_stays_connected(fresh_broker, raw, wire):
    c = raw(target=fresh_broker, heartbeat=1)
    server_heartbeats = 0
    deadline = time.monotonic() + 3.5
    next_beat = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_beat:
            c.heartbeat_frame()
            next_beat += 0.5
        try:
            f = c.read_frame(timeout=max(0.01, min(next_beat, deadline) - time.monotonic()),
                             skip_heartbeats=False)
        except TimeoutError:
            continue
        assert f is not None, "server closed a heartbeating connection"
        if f.type == wire.FRAME_HEARTBEAT:
            server_heartbeats += 1
    assert server_heartbeats >= 2  # the server sends heartbeats too
    c.open_channel(1)


def test_fresh_server_is_a_separate_process(broker, fresh_broker):
    assert fresh_broker.port != broker.port
    assert fresh_broker.process is not None and fresh_broker.process.proc.poll() is None
    conn = fresh_broker.connect()
    try:
        assert conn.channel().queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")
    finally:
        conn.close()


def test_exclusive_queue_is_gone_when_close_ok_is_sent(broker, raw, wire):
    """RabbitMQ deletes a connection's exclusive queues before it sends connection.close-ok, not when the
    client later drops the socket: a client that reconnects the moment it has close-ok may redeclare them."""
    q = qname("excl-close-ok")
    c = raw()
    c.send(wire.method_frame(1, 20, 10, wire.shortstr("")))
    assert c.read_frame().method == (20, 11)
    declare_queue(c, wire, 1, q, flags=0x04)  # exclusive
    c.send(wire.method_frame(0, 10, 50, struct.pack("!H", 200) + wire.shortstr("bye") + b"\x00\x00\x00\x00"))
    assert c.read_frame().method == (10, 51)
    # The first client keeps its socket open; a second client redeclares the queue as its own.
    other = raw()
    other.send(wire.method_frame(1, 20, 10, wire.shortstr("")))
    assert other.read_frame().method == (20, 11)
    other.send(wire.method_frame(1, 50, 10, b"\x00\x00" + wire.shortstr(q) + bytes([0x04 | 0x08]) + wire.table()))
    f = other.read_frame()
    assert f is not None and f.method == (50, 11), f.close_args() if f is not None and f.method else f
