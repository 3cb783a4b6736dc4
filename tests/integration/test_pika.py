"""pika BlockingConnection against the broker; reply codes and texts are RabbitMQ 3.10's."""

from __future__ import annotations

import time
import uuid

import pika
import pika.exceptions as pex
import pytest

VHOST = "'/'"


def wait_until(conn, predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        conn.process_data_events(time_limit=0.02)
    return True


def settle(ch, queue: str, ready: int, timeout: float = 5.0) -> None:
    """Wait until `queue` holds `ready` ready messages.

    RabbitMQ requeues (nack/reject/recover/channel close) and routes publishes asynchronously to later
    commands, so a count or basic.get right after one can race; Conveyor may well be synchronous.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = ch.queue_declare(queue, passive=True).method.message_count
        if count == ready:
            return
        assert time.monotonic() < deadline, f"{queue}: {count} ready, expected {ready}"
        ch.connection.process_data_events(time_limit=0.01)


def _closed(excinfo) -> tuple[int, str]:
    return excinfo.value.reply_code, excinfo.value.reply_text


def _drain_get(chan, queue: str, auto_ack: bool = True) -> list:
    """basic.get until empty; returns [(method, properties, body)]."""
    out = []
    while True:
        m, p, b = chan.basic_get(queue, auto_ack=auto_ack)
        if m is None:
            return out
        out.append((m, p, b))


# --------------------------------------------------------------------------------------------------
# Queue declaration
# --------------------------------------------------------------------------------------------------


def test_declare_and_passive_declare(ch, names):
    q = names.queue()
    ok = ch.queue_declare(q)
    assert ok.method.queue == q
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.queue == q


def test_passive_declare_missing_queue_is_404(ch, names):
    q = names.queue("missing")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert _closed(ei) == (404, f"NOT_FOUND - no queue '{q}' in vhost {VHOST}")
    assert ch.is_closed


def test_declare_ok_counts_messages_and_consumers(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    other = conn.channel()
    other.basic_consume(q, lambda *a: None, auto_ack=False)
    ok = ch.queue_declare(q, passive=True)
    # the consumer received the 3 messages (unacked), so none are ready
    assert ok.method.consumer_count == 1
    assert ok.method.message_count in (0, 3)
    ch2 = conn.channel()
    ch2.confirm_delivery()
    q2 = names.queue()
    ch2.queue_declare(q2)
    for i in range(4):
        ch2.basic_publish("", q2, f"m{i}".encode())
    assert ch2.queue_declare(q2, passive=True).method.message_count == 4
    assert ch2.queue_declare(q2).method.message_count == 4


def test_queue_equivalence_mismatch_is_406(ch, names):
    q = names.queue()
    ch.queue_declare(q, durable=False)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, durable=True)
    assert _closed(ei) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost {VHOST}: "
        "received 'true' but current is 'false'",
    )


def test_queue_argument_mismatch_is_406(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-length": 10})
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, arguments={"x-max-length": 20})
    assert _closed(ei) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{q}' in vhost {VHOST}: "
        "received '20' but current is '10'",
    )


def test_exclusive_queue_from_other_connection_is_405(broker, ch, names):
    q = names.track_queue(f"xq.{uuid.uuid4().hex[:8]}")  # short: the full text fits in a shortstr
    ch.queue_declare(q, exclusive=True)
    other = broker.connect()
    try:
        och = other.channel()
        with pytest.raises(pex.ChannelClosedByBroker) as ei:
            och.queue_declare(q, passive=True)
        assert _closed(ei) == (
            405,
            f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost {VHOST}. "
            "It could be originally declared on another connection or the exclusive property value does "
            "not match that of the original declaration.",
        )
        och = other.channel()
        with pytest.raises(pex.ChannelClosedByBroker) as ei:
            och.basic_consume(q, lambda *a: None)
        assert ei.value.reply_code == 405
    finally:
        other.close()


def test_long_reply_text_is_truncated_to_255(broker, ch, names):
    q = names.track_queue("long." + "x" * 200 + uuid.uuid4().hex[:8])
    ch.queue_declare(q, exclusive=True)
    other = broker.connect()
    try:
        with pytest.raises(pex.ChannelClosedByBroker) as ei:
            other.channel().queue_declare(q, passive=True)
        full = (
            f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost {VHOST}. "
            "It could be originally declared on another connection or the exclusive property value does "
            "not match that of the original declaration."
        )
        # RabbitMQ cuts reply-text (a shortstr) to 252 characters plus "..."
        assert _closed(ei) == (405, full[:252] + "...")
    finally:
        other.close()


def test_exclusive_queue_deleted_when_connection_closes(broker, ch, names):
    q = names.queue()
    other = broker.connect()
    other.channel().queue_declare(q, exclusive=True)
    other.close()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_server_named_queue(ch, names):
    ok = ch.queue_declare("", exclusive=True)
    q = names.track_queue(ok.method.queue)
    assert q.startswith("amq.gen-")
    assert len(q) > len("amq.gen-")
    ch.basic_publish("", q, b"hello")
    m, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"hello"
    assert m.routing_key == q


def test_reserved_queue_name_is_403(ch, names):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare("amq.foo")
    assert _closed(ei) == (403, "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'")


def test_auto_delete_queue_goes_after_last_consumer(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, auto_delete=True)
    tag = ch.basic_consume(q, lambda *a: None)
    ch.queue_declare(q, passive=True)  # still there while consumed
    ch.basic_cancel(tag)
    probe = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        probe.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_auto_delete_queue_without_consumers_stays(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, auto_delete=True)
    ch.close()
    conn.channel().queue_declare(q, passive=True)


# --------------------------------------------------------------------------------------------------
# Exchanges and bindings
# --------------------------------------------------------------------------------------------------


def _bound_queue(ch, names, exchange: str, routing_key: str = "", arguments=None) -> str:
    q = names.queue()
    ch.queue_declare(q)
    ch.queue_bind(q, exchange, routing_key=routing_key, arguments=arguments)
    return q


def _bodies(ch, q: str) -> list[bytes]:
    return [b for _m, _p, b in _drain_get(ch, q)]


def test_direct_exchange_bind_and_unbind(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q1 = _bound_queue(ch, names, x, "a")
    q2 = _bound_queue(ch, names, x, "b")
    ch.queue_bind(q2, x, routing_key="a")
    ch.basic_publish(x, "a", b"to-a")
    ch.basic_publish(x, "b", b"to-b")
    ch.basic_publish(x, "c", b"to-c")
    assert _bodies(ch, q1) == [b"to-a"]
    assert _bodies(ch, q2) == [b"to-a", b"to-b"]
    ch.queue_unbind(q2, x, routing_key="a")
    ch.basic_publish(x, "a", b"again")
    assert _bodies(ch, q1) == [b"again"]
    assert _bodies(ch, q2) == []


def test_unbind_missing_binding_is_ok(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = names.queue()
    ch.queue_declare(q)
    ch.queue_unbind(q, x, routing_key="never-bound")  # RabbitMQ: a no-op, not an error


def test_bind_to_missing_exchange_is_404(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    x = names.exchange("missing")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_bind(q, x, "k")
    assert _closed(ei) == (404, f"NOT_FOUND - no exchange '{x}' in vhost {VHOST}")


def test_bind_missing_queue_is_404(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    q = names.queue("missing")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_bind(q, x, "k")
    assert _closed(ei) == (404, f"NOT_FOUND - no queue '{q}' in vhost {VHOST}")


def test_default_exchange_routes_by_queue_name_and_cannot_be_bound(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    assert _bodies(ch, q) == [b"x"]
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_bind(q, "", "k")
    assert _closed(ei) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_fanout_exchange(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "fanout")
    qs = [_bound_queue(ch, names, x, "ignored") for _ in range(3)]
    ch.basic_publish(x, "whatever", b"all")
    for q in qs:
        assert _bodies(ch, q) == [b"all"]


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#.c", "c", True),
        ("#", "", True),
        ("*", "", False),  # RabbitMQ: '*' needs exactly one word; the empty key has none
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("*.b", "a.b.c", False),
        ("a.b", "a.b", True),
        ("a.b", "a.bc", False),
    ],
)
def test_topic_exchange(ch, names, pattern, key, matches):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q = _bound_queue(ch, names, x, pattern)
    ch.basic_publish(x, key, b"m")
    assert _bodies(ch, q) == ([b"m"] if matches else [])


def test_headers_exchange(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "headers")
    q_all = _bound_queue(ch, names, x, "", {"x-match": "all", "a": 1, "b": "two"})
    q_any = _bound_queue(ch, names, x, "", {"x-match": "any", "a": 1, "b": "two"})
    q_def = _bound_queue(ch, names, x, "", {"a": 1})  # default x-match is all

    def pub(body, headers):
        ch.basic_publish(x, "", body, pika.BasicProperties(headers=headers))

    pub(b"both", {"a": 1, "b": "two", "c": 3})
    pub(b"only-a", {"a": 1})
    pub(b"wrong-a", {"a": 2, "b": "nope"})
    pub(b"none", None)
    assert _bodies(ch, q_all) == [b"both"]
    assert _bodies(ch, q_any) == [b"both", b"only-a"]
    assert _bodies(ch, q_def) == [b"both", b"only-a"]


def test_exchange_to_exchange_binding(ch, names):
    src = names.exchange("src")
    dst = names.exchange("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "direct")
    ch.exchange_bind(destination=dst, source=src, routing_key="k.*")
    q = _bound_queue(ch, names, dst, "k.1")
    ch.basic_publish(src, "k.1", b"through")
    ch.basic_publish(src, "k.2", b"dropped-at-dst")
    ch.basic_publish(src, "z.1", b"dropped-at-src")
    assert _bodies(ch, q) == [b"through"]
    ch.exchange_unbind(destination=dst, source=src, routing_key="k.*")
    ch.basic_publish(src, "k.1", b"after-unbind")
    assert _bodies(ch, q) == []


def test_exchange_equivalence_mismatch_is_406(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, "fanout")
    assert _closed(ei) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost {VHOST}: "
        "received 'fanout' but current is 'direct'",
    )


def test_passive_declare_missing_exchange_is_404(ch, names):
    x = names.exchange("missing")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, "direct", passive=True)
    assert _closed(ei) == (404, f"NOT_FOUND - no exchange '{x}' in vhost {VHOST}")


def test_unknown_exchange_type_is_503_connection_error(broker, names):
    c = broker.connect()
    x = names.exchange()
    with pytest.raises(pex.ConnectionClosedByBroker) as ei:
        c.channel().exchange_declare(x, "no-such-type")
    assert _closed(ei) == (503, "COMMAND_INVALID - unknown exchange type 'no-such-type'")


def test_reserved_exchange_name_is_403(ch):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare("amq.foo", "direct")
    assert _closed(ei) == (
        403,
        "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
    )


def test_delete_system_exchange_is_403(ch):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_delete("amq.direct")
    assert _closed(ei) == (
        403, f"ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost {VHOST} not allowed"
    )


def test_builtin_exchanges_exist(ch):
    for name, kind in [("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
                       ("amq.headers", "headers"), ("amq.match", "headers")]:
        ch.exchange_declare(name, kind, passive=True)
        ch.exchange_declare(name, kind, durable=True)  # redeclaring with same args is allowed


def test_exchange_delete_if_unused_is_406(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    _bound_queue(ch, names, x, "k")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_delete(x, if_unused=True)
    assert _closed(ei) == (406, f"PRECONDITION_FAILED - exchange '{x}' in vhost {VHOST} in use")


def test_exchange_delete_missing_is_ok(ch, names):
    ch.exchange_delete(names.exchange("missing"))  # RabbitMQ: idempotent


# --------------------------------------------------------------------------------------------------
# Purge / delete
# --------------------------------------------------------------------------------------------------


def test_purge_returns_count(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(7):
        ch.basic_publish("", q, str(i).encode())
    assert ch.queue_purge(q).method.message_count == 7
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.queue_purge(q).method.message_count == 0


def test_purge_keeps_unacked(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    m, _, _ = ch.basic_get(q, auto_ack=False)
    assert ch.queue_purge(q).method.message_count == 2
    ch.basic_reject(m.delivery_tag, requeue=True)
    settle(ch, q, 1)


def test_delete_returns_count(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    assert ch.queue_delete(q).method.message_count == 5


def test_delete_missing_queue_is_ok(ch, names):
    assert ch.queue_delete(names.queue("missing")).method.message_count == 0


def test_delete_if_empty_is_406(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_delete(q, if_empty=True)
    assert _closed(ei) == (406, f"PRECONDITION_FAILED - queue '{q}' in vhost {VHOST} not empty")


def test_delete_if_unused_is_406(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    conn.channel().basic_consume(q, lambda *a: None)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_delete(q, if_unused=True)
    assert _closed(ei) == (406, f"PRECONDITION_FAILED - queue '{q}' in vhost {VHOST} in use")


# --------------------------------------------------------------------------------------------------
# Publish / get / properties
# --------------------------------------------------------------------------------------------------


def test_publish_and_get(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    m, _p, body = ch.basic_get(q, auto_ack=False)
    assert body == b"one"
    assert m.redelivered is False
    assert m.exchange == ""
    assert m.routing_key == q
    assert m.message_count == 1  # messages remaining after this one
    ch.basic_ack(m.delivery_tag)
    m2, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"two"
    assert m2.message_count == 0
    assert m2.delivery_tag == m.delivery_tag + 1


def test_get_empty(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    assert ch.basic_get(q) == (None, None, None)


def test_get_missing_queue_is_404(ch, names):
    q = names.queue("missing")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_get(q)
    assert _closed(ei) == (404, f"NOT_FOUND - no queue '{q}' in vhost {VHOST}")


def test_publish_to_unbound_queue_name_is_silently_dropped(ch, names):
    ch.basic_publish("", names.queue("missing"), b"gone")
    ch.queue_declare(names.queue(), passive=False)  # channel still usable


def test_properties_round_trip(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    headers = {
        "str": "text",
        "int": 42,
        "neg": -7,
        "big": 2**40,
        "true": True,
        "false": False,
        "bytes": b"\xff\x00\x01",
        "list": [1, "two", [3], {"four": 4}],
        "nested": {"a": {"b": {"c": "deep"}}, "n": 1},
        "empty": {},
        "none": None,
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="reply-queue",
        expiration="60000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="order.created",
        user_id="guest",
        app_id="conveyor-tests",
    )
    ch.basic_publish("", q, b"{}", props)
    _m, p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"{}"
    assert p.content_type == "application/json"
    assert p.content_encoding == "utf-8"
    assert p.headers == headers
    assert p.delivery_mode == 2
    assert p.priority == 5
    assert p.correlation_id == "corr-1"
    assert p.reply_to == "reply-queue"
    assert p.expiration == "60000"
    assert p.message_id == "msg-1"
    assert p.timestamp == 1_700_000_000
    assert p.type == "order.created"
    assert p.user_id == "guest"
    assert p.app_id == "conveyor-tests"
    assert p.cluster_id is None


def test_no_properties_round_trip(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"bare")
    _m, p, _b = ch.basic_get(q, auto_ack=True)
    assert p.headers is None
    assert p.content_type is None
    assert p.delivery_mode is None


def test_wrong_user_id_is_406(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="mallory"))
    assert _closed(ei) == (
        406,
        "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'",
    )


def test_large_message_1mib(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    body = bytes(range(256)) * 4096  # 1 MiB, spans many frames
    ch.basic_publish("", q, body)
    _m, _p, got = ch.basic_get(q, auto_ack=True)
    assert got == body


def test_empty_body(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"", pika.BasicProperties(content_type="text/plain"))
    m, p, body = ch.basic_get(q, auto_ack=True)
    assert m is not None
    assert body == b""
    assert p.content_type == "text/plain"


def test_expired_message_is_not_delivered(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"stale", pika.BasicProperties(expiration="0"))
    ch.basic_publish("", q, b"fresh")
    assert _bodies(ch, q) == [b"fresh"]


# --------------------------------------------------------------------------------------------------
# Publisher confirms
# --------------------------------------------------------------------------------------------------


def test_confirms(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    for i in range(20):
        ch.basic_publish("", q, str(i).encode())  # raises if nacked
    ch.basic_publish("", q, b"mandatory-ok", mandatory=True)
    assert ch.queue_declare(q, passive=True).method.message_count == 21


def test_confirm_mandatory_unroutable_is_returned_before_ack(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    # pika raises UnroutableError only if basic.return arrived before the basic.ack
    with pytest.raises(pex.UnroutableError) as ei:
        ch.basic_publish(x, "nobody", b"lost", pika.BasicProperties(message_id="m1"), mandatory=True)
    (returned,) = ei.value.messages
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.method.exchange == x
    assert returned.method.routing_key == "nobody"
    assert returned.properties.message_id == "m1"
    assert returned.body == b"lost"
    # non-mandatory unroutable: just confirmed
    ch.basic_publish(x, "nobody", b"dropped")


def test_mandatory_return_without_confirms(conn, plain_ch, names, pump):
    ch = plain_ch
    returned = []
    ch.add_on_return_callback(lambda _ch, method, props, body: returned.append((method, body)))
    ch.basic_publish("", names.queue("missing"), b"back", mandatory=True)
    assert pump(conn, lambda: returned)
    assert returned[0][0].reply_code == 312
    assert returned[0][0].reply_text == "NO_ROUTE"
    assert returned[0][1] == b"back"


# --------------------------------------------------------------------------------------------------
# Consumers, QoS, acknowledgements
# --------------------------------------------------------------------------------------------------


def _publish_n(ch, q, n, prefix="m"):
    for i in range(n):
        ch.basic_publish("", q, f"{prefix}{i}".encode())


def test_consume_and_cancel(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True, consumer_tag="ctag-1")
    assert tag == "ctag-1"
    _publish_n(ch, q, 3)
    assert pump(conn, lambda: len(got) == 3)
    assert got == [b"m0", b"m1", b"m2"]
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"after")
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0


def test_consume_missing_queue_is_404(ch, names):
    q = names.queue("missing")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_consume(q, lambda *a: None)
    assert _closed(ei) == (404, f"NOT_FOUND - no queue '{q}' in vhost {VHOST}")


def test_round_robin_between_consumers(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    ch.basic_consume(q, lambda c, m, p, b: got["a"].append(b), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got["b"].append(b), auto_ack=True)
    _publish_n(ch, q, 6)
    assert pump(conn, lambda: len(got["a"]) + len(got["b"]) == 6)
    assert got["a"] == [b"m0", b"m2", b"m4"]
    assert got["b"] == [b"m1", b"m3", b"m5"]


def test_qos_prefetch_limits_unacked(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    _publish_n(ch, q, 5)
    ch.basic_qos(prefetch_count=2)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m, b)))
    assert pump(conn, lambda: len(got) == 2)
    assert not pump(conn, lambda: len(got) > 2, timeout=0.3)
    ch.basic_ack(got[0][0].delivery_tag)
    assert pump(conn, lambda: len(got) == 3)
    assert not pump(conn, lambda: len(got) > 3, timeout=0.2)
    ch.basic_ack(got[2][0].delivery_tag, multiple=True)
    assert pump(conn, lambda: len(got) == 5)
    assert [b for _m, b in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    ch.basic_ack(got[4][0].delivery_tag, multiple=True)


def test_nack_requeue_sets_redelivered_and_keeps_order(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    _publish_n(ch, q, 3)
    got = [ch.basic_get(q) for _ in range(3)]
    ch.basic_publish("", q, b"newer")
    # return them in reverse order: they still go back in their original order, ahead of newer ones
    ch.basic_nack(got[2][0].delivery_tag, requeue=True)
    ch.basic_reject(got[1][0].delivery_tag, requeue=True)
    ch.basic_nack(got[0][0].delivery_tag, requeue=True)
    settle(ch, q, 4)
    again = _drain_get(ch, q)
    assert [(b, m.redelivered) for m, _p, b in again] == [
        (b"m0", True), (b"m1", True), (b"m2", True), (b"newer", False),
    ]


def test_nack_multiple(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    _publish_n(ch, q, 4)
    got = [ch.basic_get(q) for _ in range(4)]
    ch.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=True)  # m0..m2 back; m3 still unacked
    settle(ch, q, 3)
    ch.basic_nack(got[3][0].delivery_tag, multiple=True, requeue=False)  # m3 dropped
    again = _drain_get(ch, q)
    assert [b for _m, _p, b in again] == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _p, _b in again)


def test_reject_without_requeue_drops(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    _publish_n(ch, q, 2)
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert [b for _m, _p, b in _drain_get(ch, q)] == [b"m1"]


def test_reject_to_dead_letter_exchange(conn, ch, names):
    dlx = names.exchange("dlx")
    ch.exchange_declare(dlx, "fanout")
    dlq = _bound_queue(ch, names, dlx)
    q = names.queue()
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"bad")
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    dead = []
    # dead-lettering is asynchronous in RabbitMQ: poll until the message arrives
    assert wait_until(conn, lambda: dead.extend(_drain_get(ch, dlq)) or dead)
    (dead,) = dead
    assert dead[2] == b"bad"
    (death,) = dead[1].headers["x-death"]
    assert death["reason"] == "rejected"
    assert death["queue"] == q
    assert death["count"] == 1


def test_basic_recover_requeue(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    _publish_n(ch, q, 3)
    first = [ch.basic_get(q) for _ in range(2)]
    assert [b for _m, _p, b in first] == [b"m0", b"m1"]
    ch.basic_recover(requeue=True)
    settle(ch, q, 3)
    again = _drain_get(ch, q)
    assert [(b, m.redelivered) for m, _p, b in again] == [(b"m0", True), (b"m1", True), (b"m2", False)]


def test_closing_channel_requeues_unacked_in_order(conn, names):
    c1 = conn.channel()
    q = names.queue()
    c1.queue_declare(q)
    _publish_n(c1, q, 4)
    got = [c1.basic_get(q) for _ in range(3)]
    c1.basic_ack(got[1][0].delivery_tag)  # m1 acked: gone for good
    c1.close()
    c2 = conn.channel()
    settle(c2, q, 3)
    again = _drain_get(c2, q)
    assert [(b, m.redelivered) for m, _p, b in again] == [(b"m0", True), (b"m2", True), (b"m3", False)]


def test_closing_connection_requeues_unacked_to_other_consumer(broker, conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    _publish_n(ch, q, 3)
    other = broker.connect()
    och = other.channel()
    och.basic_qos(prefetch_count=10)
    seen = []
    och.basic_consume(q, lambda c, m, p, b: seen.append(b))
    assert pump(other, lambda: len(seen) == 3)
    other.close()
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, m.redelivered)), auto_ack=True)
    assert pump(conn, lambda: len(got) == 3)
    assert got == [(b"m0", True), (b"m1", True), (b"m2", True)]


def test_ack_unknown_delivery_tag_is_406(ch, names):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_ack(42)
        ch.queue_declare(names.queue())  # synchronous round trip to observe the close
    assert _closed(ei) == (406, "PRECONDITION_FAILED - unknown delivery tag 42")


def test_double_ack_is_406(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    m, _p, _b = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_ack(m.delivery_tag)
        ch.queue_declare(q, passive=True)
    assert _closed(ei) == (406, f"PRECONDITION_FAILED - unknown delivery tag {m.delivery_tag}")


def test_server_cancels_consumer_when_queue_deleted(conn, ch, names, pump):
    q = names.queue()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    assert pump(conn, lambda: cancelled)
    assert cancelled == [tag]
    assert ch.is_open


def test_exclusive_consumer_is_403_for_second_consumer(broker, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = broker.connect()
    try:
        with pytest.raises(pex.ChannelClosedByBroker) as ei:
            other.channel().basic_consume(q, lambda *a: None)
        assert _closed(ei) == (403, f"ACCESS_REFUSED - queue '{q}' in vhost {VHOST} in exclusive use")
    finally:
        other.close()


def test_exclusive_consumer_refused_when_queue_has_consumers(broker, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    other = broker.connect()
    try:
        with pytest.raises(pex.ChannelClosedByBroker) as ei:
            other.channel().basic_consume(q, lambda *a: None, exclusive=True)
        assert _closed(ei) == (403, f"ACCESS_REFUSED - queue '{q}' in vhost {VHOST} in exclusive use")
    finally:
        other.close()


# --------------------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------------------


def test_tx_commit_and_rollback(conn, plain_ch, names):
    ch = plain_ch
    q = names.queue()
    ch.queue_declare(q)
    observer = conn.channel()
    ch.tx_select()
    ch.basic_publish("", q, b"committed")
    assert observer.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_commit()
    settle(observer, q, 1)
    ch.basic_publish("", q, b"rolled-back")
    ch.tx_rollback()
    ch.tx_commit()
    assert [b for _m, _p, b in _drain_get(observer, q)] == [b"committed"]


def test_tx_acks(conn, plain_ch, names):
    ch = plain_ch
    q = names.queue()
    ch.queue_declare(q)
    _publish_n(ch, q, 2)
    ch.tx_select()
    m0, _p, _b = ch.basic_get(q)
    m1, _p, _b = ch.basic_get(q)
    ch.basic_ack(m0.delivery_tag)
    ch.tx_commit()
    ch.basic_ack(m1.delivery_tag)
    ch.tx_rollback()  # the ack of m1 is discarded: m1 stays unacked
    ch.close()
    other = conn.channel()
    settle(other, q, 1)
    again = _drain_get(other, q)
    assert [(b, m.redelivered) for m, _p, b in again] == [(b"m1", True)]


def test_tx_commit_without_select_is_406(plain_ch):
    ch = plain_ch
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.tx_commit()
    assert _closed(ei) == (406, "PRECONDITION_FAILED - channel is not transactional")


# --------------------------------------------------------------------------------------------------
# Channel-level errors and many channels
# --------------------------------------------------------------------------------------------------


def test_publish_to_missing_exchange_closes_channel_404(conn, plain_ch, names):
    ch = plain_ch
    x = names.exchange("missing")
    ch.basic_publish(x, "k", b"x")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(names.queue())
    assert _closed(ei) == (404, f"NOT_FOUND - no exchange '{x}' in vhost {VHOST}")
    assert conn.is_open
    conn.channel().queue_declare(names.queue())  # other channels unaffected


def test_channel_flood_200(conn, names):
    q = names.queue()
    channels = [conn.channel() for _ in range(200)]
    assert len({c.channel_number for c in channels}) == 200
    channels[0].queue_declare(q)
    for i, c in enumerate(channels):
        c.basic_publish("", q, str(i).encode())
    settle(channels[-1], q, 200)
    got = sorted(int(b) for _m, _p, b in _drain_get(channels[100], q))
    assert got == list(range(200))
    for c in channels:
        c.close()
    assert conn.is_open


def test_server_properties(conn, broker):
    props = conn._impl.server_properties
    caps = props["capabilities"]
    for cap in ("publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify"):
        assert caps[cap] is True, cap


def test_server_product_is_conveyor(conn, conveyor_only):
    assert conn._impl.server_properties["product"] in ("Conveyor", b"Conveyor")


def test_tx_select_on_confirm_channel_is_406(ch):
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.tx_select()
    assert _closed(ei) == (406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")


def test_confirm_select_on_tx_channel_is_406(plain_ch):
    plain_ch.tx_select()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        plain_ch.confirm_delivery()
    assert _closed(ei) == (406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")


def test_unbind_of_a_missing_queue_or_exchange_succeeds(ch, names):
    # RabbitMQ 3.10: queue.unbind / exchange.unbind name things that may be gone already (client clean-ups
    # delete first and unbind after); that is not an error.
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    ch.queue_unbind(names.queue("never"), x, "rk")
    ch.queue_unbind(names.queue("never"), names.exchange("never"), "rk")
    ch.exchange_unbind(names.exchange("never-d"), names.exchange("never-s"), "rk")
    assert ch.is_open
