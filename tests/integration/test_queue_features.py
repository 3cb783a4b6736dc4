"""RabbitMQ's queue features over pika: TTLs, dead-lettering, length limits, queue expiry, priorities,
single active consumer, consumer priorities, alternate exchanges, CC/BCC, direct reply-to, argument validation.

Every assertion not marked Conveyor-only was observed against RabbitMQ 3.10.8 (``CONVEYOR_TEST_URL``), reply
texts and header layouts included. Conveyor-only tests (``conveyor_only`` fixture) pin features RabbitMQ 3.10
either lacks (x-delivery-limit on classic queues, x-consumer-timeout, the delayed-message exchange plugin) or
that need restarts of a server of our own.

RabbitMQ applies TTLs, dead-lettering and requeues asynchronously, so tests poll with a deadline
(``process_data_events``) rather than sleeping; negative checks ("not yet", "never") pump I/O for a short,
fixed time.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions as pex
import pytest
from conftest import ConveyorProcess
from pika.compat import long

VHOST = "'/'"
REPLY_TO = "amq.rabbitmq.reply-to"

# Field order of a *new* x-death entry as RabbitMQ writes it; "original-expiration" only when the message had
# an expiration property. An entry that is updated (count incremented), or added to an existing x-death array,
# is written with its keys sorted (rabbit_misc:sort_field_table), i.e. SORTED_X_DEATH_KEYS.
NEW_X_DEATH_KEYS = ["count", "reason", "queue", "time", "exchange", "routing-keys"]
SORTED_X_DEATH_KEYS = ["count", "exchange", "queue", "reason", "routing-keys", "time"]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def wait_until(conn, predicate, timeout: float = 5.0) -> bool:
    """Pump pika I/O until predicate() holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        conn.process_data_events(time_limit=min(0.02, remaining))
    return True


def pump(conn, seconds: float) -> None:
    """Pump pika I/O for a fixed time: for negative checks (something must NOT happen meanwhile)."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        conn.process_data_events(time_limit=min(0.02, remaining))


def count(chan, queue: str) -> int:
    return chan.queue_declare(queue, passive=True).method.message_count


def drain(chan, queue: str) -> list:
    """basic.get (auto-ack) until empty; [(method, properties, body)]."""
    out = []
    while True:
        m, p, b = chan.basic_get(queue, auto_ack=True)
        if m is None:
            return out
        out.append((m, p, b))


def bodies(chan, queue: str) -> list[bytes]:
    return [b for _m, _p, b in drain(chan, queue)]


def get_wait(chan, queue: str, timeout: float = 5.0, auto_ack: bool = True):
    """Poll basic.get until a message arrives; (method, properties, body)."""
    got: list = []

    def poll() -> bool:
        m, p, b = chan.basic_get(queue, auto_ack=auto_ack)
        if m is not None:
            got.append((m, p, b))
        return bool(got)

    assert wait_until(chan.connection, poll, timeout), f"nothing arrived in {queue} within {timeout}s"
    return got[0]


def settle(chan, queue: str, ready: int, timeout: float = 5.0) -> None:
    assert wait_until(chan.connection, lambda: count(chan, queue) == ready, timeout), (
        f"{queue}: {count(chan, queue)} ready, expected {ready}"
    )


def closed(excinfo) -> tuple[int, str]:
    return excinfo.value.reply_code, excinfo.value.reply_text


def reply_text(full: str) -> str:
    """RabbitMQ cuts a reply text longer than 255 bytes (a short string) to 252 and appends "..."."""
    raw = full.encode()
    return full if len(raw) <= 255 else raw[:252].decode("utf-8", "ignore") + "..."


def wait_channel_closed(chan, timeout: float = 5.0) -> tuple[int, str]:
    """Wait for the broker to close `chan` on its own; its (reply_code, reply_text)."""
    assert wait_until(chan.connection, lambda: chan.is_closed, timeout), "the broker did not close the channel"
    reason = chan._closing_reason  # pika keeps the broker's Channel.Close here
    assert isinstance(reason, pex.ChannelClosedByBroker), reason
    return reason.reply_code, reason.reply_text


def dead_letter_setup(ch, names, kind: str = "fanout", key: str = "#") -> tuple[str, str]:
    """A dead-letter exchange with one queue bound to it; (exchange, queue)."""
    dlx = names.exchange("dlx")
    ch.exchange_declare(dlx, kind)
    dlq = names.queue("dlq")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "" if kind == "fanout" else key)
    return dlx, dlq


def check_time(entry: dict, before: float, after: float) -> None:
    """x-death "time" is an AMQP timestamp (type 'T', whole seconds, UTC)."""
    t = entry["time"]
    assert isinstance(t, datetime.datetime), type(t)
    assert int(before) - 1 <= t.timestamp() <= after + 1


def check_x_death(
    entry: dict,
    *,
    reason: str,
    queue: str,
    exchange: str,
    routing_keys: list[str],
    count_: int = 1,
    original_expiration: str | None = None,
    keys: list[str] | None = None,
) -> None:
    expected = {"count": count_, "reason": reason, "queue": queue, "exchange": exchange, "routing-keys": routing_keys}
    if original_expiration is not None:
        expected["original-expiration"] = original_expiration
    assert {k: v for k, v in entry.items() if k != "time"} == expected
    assert type(entry["count"]) is long  # 'l': signed 64-bit
    if keys is None:
        keys = NEW_X_DEATH_KEYS + (["original-expiration"] if original_expiration is not None else [])
    assert list(entry) == keys  # field order on the wire


# --------------------------------------------------------------------------------------------------
# 1. Per-message TTL (the expiration property)
# --------------------------------------------------------------------------------------------------


def test_expired_message_is_never_delivered(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    start = time.monotonic()
    ch.basic_publish("", q, b"short-lived", pika.BasicProperties(expiration="200"))
    ch.basic_publish("", q, b"forever")
    assert count(ch, q) == 2
    settle(ch, q, 1)
    assert time.monotonic() - start >= 0.15  # not expired early
    assert bodies(ch, q) == [b"forever"]
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


def test_unexpired_message_keeps_its_expiration_property(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"m", pika.BasicProperties(expiration="60000"))
    _m, p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m"
    assert p.expiration == "60000"


def test_expiration_zero_without_consumer_is_dropped(ch, names):
    q = names.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"now-or-never", pika.BasicProperties(expiration="0"))
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)
    assert count(ch, q) == 0


def test_expiration_zero_goes_to_a_ready_consumer(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    got = []
    ch.basic_consume(q, lambda _c, m, p, b: got.append((b, p.expiration)), auto_ack=True)
    ch.basic_publish("", q, b"now", pika.BasicProperties(expiration="0"))
    assert wait_until(conn, lambda: got)
    assert got == [(b"now", "0")]  # delivered with its expiration property intact


def test_expiration_zero_is_dropped_when_the_consumer_has_no_credit(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    cons = conn.channel()
    cons.basic_qos(prefetch_count=1)
    got = []
    cons.basic_consume(q, lambda _c, m, _p, b: got.append((b, m.delivery_tag)))
    ch.basic_publish("", q, b"first")
    assert wait_until(conn, lambda: got)
    ch.basic_publish("", q, b"now", pika.BasicProperties(expiration="0"))  # consumer is at its prefetch limit
    cons.basic_ack(got[0][1])
    pump(conn, 0.3)
    assert [b for b, _t in got] == [b"first"]
    assert count(ch, q) == 0


@pytest.mark.parametrize(
    ("expiration", "detail"),
    [
        ("abc", "no_integer"),
        ("", "no_integer"),
        (" 5", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("1.5", '{leftover_string,".5"}'),
    ],
)
def test_invalid_expiration_closes_the_channel(ch, names, expiration, detail):
    q = names.queue()
    ch.queue_declare(q)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
    assert closed(ei) == (406, f"PRECONDITION_FAILED - invalid expiration '{expiration}': {detail}")


# --------------------------------------------------------------------------------------------------
# 2. Queue message TTL (x-message-ttl) and where expiry happens
# --------------------------------------------------------------------------------------------------


def test_queue_message_ttl_expires_messages(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 200})
    start = time.monotonic()
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    assert count(ch, q) == 2
    settle(ch, q, 0)
    assert time.monotonic() - start >= 0.15
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


def test_queue_message_ttl_zero_drops_without_consumer(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 0})
    ch.basic_publish("", q, b"a")
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


def test_lower_of_queue_ttl_and_per_message_ttl_applies(conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue()
    ch.queue_declare(q, arguments={"x-message-ttl": 60000, "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"m", pika.BasicProperties(expiration="100"))
    _m, p, body = get_wait(ch, dlq)
    assert body == b"m"
    assert p.headers["x-death"][0]["original-expiration"] == "100"


def test_per_message_ttl_expires_anywhere_in_the_queue(conveyor_only, conn, ch, names):
    # Where Conveyor differs on purpose (its queue-features issue asks for it): a message whose TTL passes
    # while it is behind a longer-lived one is dropped (and dead-lettered) at once, not when it reaches the head.
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue()
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="50"))
    ch.basic_publish("", q, b"no-ttl")
    _m, p, body = get_wait(ch, dlq)
    assert body == b"short"
    assert p.headers["x-death"][0]["reason"] == "expired"
    assert count(ch, q) == 2
    assert bodies(ch, q) == [b"long", b"no-ttl"]


def test_per_message_ttl_expires_only_at_the_head_of_a_classic_queue(broker, conn, ch, names):
    if not broker.external:
        pytest.skip("RabbitMQ's behaviour; Conveyor expires messages anywhere (test above)")
    # RabbitMQ classic queues only look at the head: a message whose per-message TTL has passed stays in the
    # queue (and in message_count) while a message with a longer TTL is ahead of it. It is dropped (or
    # dead-lettered) only once it becomes the head, e.g. when the message ahead of it is fetched.
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue()
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="50"))
    ch.basic_publish("", q, b"no-ttl")
    pump(conn, 0.3)
    assert count(ch, q) == 3  # "short" is overdue but still counted
    assert count(ch, dlq) == 0
    m, _p, body = ch.basic_get(q)
    assert body == b"long"
    assert m.message_count == 1  # "short" became the head and was dropped before the count was taken
    _m2, p2, body2 = get_wait(ch, dlq)
    assert body2 == b"short"
    assert p2.headers["x-death"][0]["reason"] == "expired"
    assert bodies(ch, q) == [b"no-ttl"]
    ch.basic_ack(m.delivery_tag)


# --------------------------------------------------------------------------------------------------
# 3. Dead-lettering
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["reject", "nack"])
def test_dead_letter_on_reject_exact_headers_and_properties(conn, ch, names, how):
    dlx, dlq = dead_letter_setup(ch, names, "topic", "#")
    x = names.exchange("src")
    ch.exchange_declare(x, "direct")
    q = names.queue("src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, x, "rk1")
    ch.queue_bind(q, x, "cc1")
    props = pika.BasicProperties(
        headers={"h": "v", "CC": ["cc1", "other"]},
        content_type="text/plain",
        correlation_id="cid",
        expiration="60000",
        delivery_mode=2,
        message_id="mid",
        priority=3,
        timestamp=123,
        type="t",
        app_id="app",
        reply_to="rt",
    )
    before = time.time()
    ch.basic_publish(x, "rk1", b"body", props)
    assert count(ch, q) == 1  # routed by rk1 and by the CC key cc1: one copy per queue
    m, _p, _b = ch.basic_get(q)
    if how == "reject":
        ch.basic_reject(m.delivery_tag, requeue=False)
    else:
        ch.basic_nack(m.delivery_tag, requeue=False)
    dm, dp, body = get_wait(ch, dlq)
    after = time.time()
    assert body == b"body"
    assert (dm.exchange, dm.routing_key, dm.redelivered) == (dlx, "rk1", False)
    # Properties survive, except expiration: removed, and kept in the x-death entry as original-expiration.
    assert dp.expiration is None
    assert (dp.content_type, dp.correlation_id, dp.delivery_mode, dp.message_id) == ("text/plain", "cid", 2, "mid")
    assert (dp.priority, dp.timestamp, dp.type, dp.app_id, dp.reply_to) == (3, 123, "t", "app", "rt")
    assert set(dp.headers) == {"h", "CC", "x-death", "x-first-death-exchange", "x-first-death-queue",
                               "x-first-death-reason"}
    assert dp.headers["h"] == "v"
    assert dp.headers["CC"] == ["cc1", "other"]
    assert dp.headers["x-first-death-reason"] == "rejected"
    assert dp.headers["x-first-death-queue"] == q
    assert dp.headers["x-first-death-exchange"] == x
    (entry,) = dp.headers["x-death"]
    check_x_death(entry, reason="rejected", queue=q, exchange=x, routing_keys=["rk1", "cc1", "other"],
                  original_expiration="60000")
    check_time(entry, before, after)


def test_dead_letter_routing_key_replaces_keys_and_drops_cc(conn, ch, names):
    dlx = names.exchange("dlx")
    ch.exchange_declare(dlx, "direct")
    to_rk = names.queue("dl-rk")
    ch.queue_declare(to_rk)
    ch.queue_bind(to_rk, dlx, "dlrk")
    to_cc = names.queue("dl-cc")
    ch.queue_declare(to_cc)
    ch.queue_bind(to_cc, dlx, "other")
    q = names.queue("src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dlrk"})
    ch.basic_publish("", q, b"a", pika.BasicProperties(headers={"CC": ["other"], "keep": 1}))
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    dm, dp, body = get_wait(ch, to_rk)
    assert (body, dm.exchange, dm.routing_key) == (b"a", dlx, "dlrk")
    assert "CC" not in dp.headers  # removed when a dead-letter routing key is set...
    assert dp.headers["keep"] == 1
    (entry,) = dp.headers["x-death"]
    # ...but x-death records the keys the message was originally published with, CC keys included
    check_x_death(entry, reason="rejected", queue=q, exchange="", routing_keys=[q, "other"])
    assert dp.headers["x-first-death-exchange"] == ""
    pump(conn, 0.2)
    assert count(ch, to_cc) == 0  # not routed by the CC key on the dead-letter exchange


def test_dead_letter_without_routing_key_uses_original_and_cc_keys(conn, ch, names):
    dlx = names.exchange("dlx")
    ch.exchange_declare(dlx, "direct")
    q = names.queue("src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    to_rk = names.queue("dl-rk")
    ch.queue_declare(to_rk)
    ch.queue_bind(to_rk, dlx, q)  # the original routing key is the queue name (default exchange)
    to_cc = names.queue("dl-cc")
    ch.queue_declare(to_cc)
    ch.queue_bind(to_cc, dlx, "other")
    ch.basic_publish("", q, b"b", pika.BasicProperties(headers={"CC": ["other"]}))
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    for dest in (to_rk, to_cc):
        dm, dp, body = get_wait(ch, dest)
        assert (body, dm.exchange, dm.routing_key) == (b"b", dlx, q)
        assert dp.headers["CC"] == ["other"]
        (entry,) = dp.headers["x-death"]
        check_x_death(entry, reason="rejected", queue=q, exchange="", routing_keys=[q, "other"])


def test_dead_letter_expired_per_message_ttl(conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue("src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dlrk"})
    before = time.time()
    ch.basic_publish("", q, b"pm", pika.BasicProperties(expiration="100", correlation_id="c"))
    dm, dp, body = get_wait(ch, dlq)
    assert (body, dm.routing_key, dp.expiration, dp.correlation_id) == (b"pm", "dlrk", None, "c")
    (entry,) = dp.headers["x-death"]
    check_x_death(entry, reason="expired", queue=q, exchange="", routing_keys=[q], original_expiration="100")
    check_time(entry, before, time.time())
    assert dp.headers["x-first-death-reason"] == "expired"
    assert dp.headers["x-first-death-queue"] == q
    assert dp.headers["x-first-death-exchange"] == ""


def test_dead_letter_expired_queue_ttl_has_no_original_expiration(conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue("src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 100})
    ch.basic_publish("", q, b"qt")
    _dm, dp, body = get_wait(ch, dlq)
    assert body == b"qt"
    assert set(dp.headers) == {"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason"}
    (entry,) = dp.headers["x-death"]
    check_x_death(entry, reason="expired", queue=q, exchange="", routing_keys=[q])


def test_dead_letter_maxlen_drop_head(conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue("src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx, "x-max-length": 2})
    for i in range(4):
        ch.basic_publish("", q, f"m{i}".encode())
    assert count(ch, q) == 2
    settle(ch, dlq, 2)
    dead = drain(ch, dlq)
    assert [b for _m, _p, b in dead] == [b"m0", b"m1"]
    for _m, p, _b in dead:
        (entry,) = p.headers["x-death"]
        check_x_death(entry, reason="maxlen", queue=q, exchange="", routing_keys=[q])
        assert p.headers["x-first-death-reason"] == "maxlen"
    assert bodies(ch, q) == [b"m2", b"m3"]


def test_repeated_deaths_through_the_same_queue_increment_count(conn, ch, names):
    # A retry loop: work queue A dead-letters rejected messages to `retry`; B (TTL) dead-letters them back to
    # `work`. Each (queue, reason) pair has one x-death entry whose count grows; the most recent death is first.
    work = names.exchange("work")
    retry = names.exchange("retry")
    ch.exchange_declare(work, "direct")
    ch.exchange_declare(retry, "direct")
    a = names.queue("a")
    ch.queue_declare(a, arguments={"x-dead-letter-exchange": retry})
    ch.queue_bind(a, work, "job")
    b = names.queue("b")
    ch.queue_declare(b, arguments={"x-dead-letter-exchange": work, "x-message-ttl": 50})
    ch.queue_bind(b, retry, "job")
    ch.basic_publish(work, "job", b"task", pika.BasicProperties(headers={"k": 1}))

    m, p, _ = get_wait(ch, a, auto_ack=False)
    assert p.headers == {"k": 1}
    ch.basic_reject(m.delivery_tag, requeue=False)

    m, p, _ = get_wait(ch, a, auto_ack=False)
    assert (m.exchange, m.routing_key, m.redelivered) == (work, "job", False)
    assert p.headers["x-first-death-reason"] == "rejected"
    assert p.headers["x-first-death-queue"] == a
    assert p.headers["x-first-death-exchange"] == work
    expired1, rejected1 = p.headers["x-death"]
    # The first x-death entry ever written keeps RabbitMQ's insertion order; one added to an existing array
    # is written sorted.
    check_x_death(expired1, reason="expired", queue=b, exchange=retry, routing_keys=["job"],
                  keys=SORTED_X_DEATH_KEYS)
    check_x_death(rejected1, reason="rejected", queue=a, exchange=work, routing_keys=["job"])
    # Make the second death happen in a later second, to see that "time" is the time of the FIRST such death.
    first_time = rejected1["time"].timestamp()
    assert wait_until(conn, lambda: time.time() >= first_time + 1.05, 3)
    ch.basic_reject(m.delivery_tag, requeue=False)

    m, p, _ = get_wait(ch, a, auto_ack=False)
    ch.basic_ack(m.delivery_tag)
    expired2, rejected2 = p.headers["x-death"]
    check_x_death(expired2, reason="expired", queue=b, exchange=retry, routing_keys=["job"], count_=2,
                  keys=SORTED_X_DEATH_KEYS)
    check_x_death(rejected2, reason="rejected", queue=a, exchange=work, routing_keys=["job"], count_=2,
                  keys=SORTED_X_DEATH_KEYS)
    assert rejected2["time"] == rejected1["time"]
    assert expired2["time"] == expired1["time"]
    assert p.headers["k"] == 1
    assert p.headers["x-first-death-reason"] == "rejected"
    assert p.headers["x-first-death-queue"] == a
    assert p.headers["x-first-death-exchange"] == work


def test_dead_letter_cycles_expired_dropped_rejected_allowed(conn, ch, names):
    # A queue dead-lettering to itself: a cycle of automatic deaths (expired) is detected and the message is
    # dropped; a cycle with a client rejection in it is allowed, and the one x-death entry counts up.
    q = names.queue("ttl-self")
    ch.queue_declare(q, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q})
    ch.basic_publish("", q, b"loop")
    settle(ch, q, 0)
    pump(conn, 0.2)
    assert count(ch, q) == 0

    r = names.queue("reject-self")
    ch.queue_declare(r, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": r})
    ch.basic_publish("", r, b"again")
    for n in range(3):
        m, p, _b = get_wait(ch, r, auto_ack=False)
        assert not m.redelivered
        if n == 0:
            assert p.headers is None
        else:
            (entry,) = p.headers["x-death"]
            check_x_death(entry, reason="rejected", queue=r, exchange="", routing_keys=[r], count_=n,
                          keys=NEW_X_DEATH_KEYS if n == 1 else SORTED_X_DEATH_KEYS)
        ch.basic_reject(m.delivery_tag, requeue=False)
    settle(ch, r, 1)


def test_dead_letter_to_missing_exchange_drops_the_message(conn, ch, names):
    q = names.queue("src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": names.exchange("never-declared")})
    ch.basic_publish("", q, b"x")
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    settle(ch, q, 0)
    assert ch.is_open


def test_reject_with_requeue_does_not_dead_letter(conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue("src")
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"x")
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=True)
    settle(ch, q, 1)
    m, p, _b = ch.basic_get(q, auto_ack=True)
    assert m.redelivered
    assert p.headers is None
    assert count(ch, dlq) == 0


# --------------------------------------------------------------------------------------------------
# 4. Length limits
# --------------------------------------------------------------------------------------------------


def test_max_length_drop_head_keeps_newest_and_reports_count(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-length": 3})
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())  # all acked: drop-head never refuses a publish
    ok = ch.queue_declare(q, arguments={"x-max-length": 3})
    assert ok.method.message_count == 3
    assert bodies(ch, q) == [b"m2", b"m3", b"m4"]


def test_max_length_zero_keeps_nothing(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-length": 0})
    ch.basic_publish("", q, b"x")
    assert count(ch, q) == 0


def test_max_length_bytes_counts_bodies_only(conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10, "x-dead-letter-exchange": dlx})
    big_headers = pika.BasicProperties(headers={"pad": "x" * 500})  # headers do not count
    expected = [(b"12345", 1), (b"1234", 2), (b"123", 2), (b"", 3)]  # 5, 9, 12 -> drop 12345 -> 7, then 7
    for body, n in expected:
        ch.basic_publish("", q, body, big_headers)
        assert count(ch, q) == n, body
    # A message bigger than the whole limit drops everything, itself included.
    ch.basic_publish("", q, b"12345678901", big_headers)
    assert count(ch, q) == 0
    settle(ch, dlq, 5)
    dead = drain(ch, dlq)
    assert [b for _m, _p, b in dead] == [b"12345", b"1234", b"123", b"", b"12345678901"]
    assert {p.headers["x-death"][0]["reason"] for _m, p, _b in dead} == {"maxlen"}


def test_overflow_reject_publish_nacks_under_confirms(conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "reject-publish", "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"m0")
    ch.basic_publish("", q, b"m1")
    for body in (b"m2", b"m3"):
        with pytest.raises(pex.NackError):
            ch.basic_publish("", q, body)
    assert ch.is_open
    assert count(ch, q) == 2
    pump(conn, 0.2)
    assert count(ch, dlq) == 0  # reject-publish does not dead-letter
    assert bodies(ch, q) == [b"m0", b"m1"]
    ch.basic_publish("", q, b"m4")  # room again
    assert bodies(ch, q) == [b"m4"]


def test_overflow_reject_publish_without_confirms_drops_silently(conn, names):
    chan = conn.channel()
    q = names.queue()
    chan.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    for i in range(3):
        chan.basic_publish("", q, f"m{i}".encode())
    pump(conn, 0.2)
    assert chan.is_open
    assert bodies(chan, q) == [b"m0"]


def test_overflow_reject_publish_dlx_nacks_and_dead_letters(conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue()
    ch.queue_declare(
        q, arguments={"x-max-length": 2, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": dlx}
    )
    ch.basic_publish("", q, b"m0")
    ch.basic_publish("", q, b"m1")
    with pytest.raises(pex.NackError):
        ch.basic_publish("", q, b"m2", pika.BasicProperties(expiration="60000"))
    assert count(ch, q) == 2
    dm, dp, body = get_wait(ch, dlq)
    assert (body, dm.routing_key, dp.expiration) == (b"m2", q, None)
    (entry,) = dp.headers["x-death"]
    check_x_death(entry, reason="maxlen", queue=q, exchange="", routing_keys=[q], original_expiration="60000")
    assert dp.headers["x-first-death-reason"] == "maxlen"
    assert bodies(ch, q) == [b"m0", b"m1"]


# --------------------------------------------------------------------------------------------------
# 5. Queue expiry (x-expires)
# --------------------------------------------------------------------------------------------------


def _exists(conn, queue: str) -> bool:
    chan = conn.channel()
    try:
        chan.queue_declare(queue, passive=True)
    except pex.ChannelClosedByBroker as e:
        assert (e.reply_code, e.reply_text) == (404, f"NOT_FOUND - no queue '{queue}' in vhost {VHOST}")
        return False
    chan.close()
    return True


def test_unused_queue_expires(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-expires": 200})
    ch.basic_publish("", q, b"messages do not keep a queue alive")
    pump(conn, 0.6)  # a passive declare counts as use and restarts the timer, so no polling here
    assert not _exists(conn, q)


def test_passive_declare_counts_as_use(conn, names):
    chan = conn.channel()
    q = names.queue()
    chan.queue_declare(q, arguments={"x-expires": 300})
    for _ in range(8):
        pump(conn, 0.1)
        chan.queue_declare(q, passive=True)  # keeps resetting the 300 ms timer
    pump(conn, 0.7)
    assert not _exists(conn, q)


def test_queue_with_consumer_does_not_expire_until_cancelled(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-expires": 200})
    tag = ch.basic_consume(q, lambda *a: None)
    pump(conn, 0.6)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(tag)
    pump(conn, 0.6)
    assert not _exists(conn, q)


# --------------------------------------------------------------------------------------------------
# 6. Priority queues
# --------------------------------------------------------------------------------------------------


def test_priority_queue_orders_by_priority_then_fifo(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    # No priority property counts as 0; a priority above x-max-priority counts as x-max-priority.
    prios = [0, 3, None, 5, 7, 255, 1, 3, 0, 5, 10]
    for i, prio in enumerate(prios):
        ch.basic_publish("", q, f"{i}".encode(), pika.BasicProperties(priority=prio))
    got = drain(ch, q)
    assert [int(b) for _m, _p, b in got] == [3, 4, 5, 9, 10, 1, 7, 6, 0, 2, 8]
    assert [p.priority for _m, p, _b in got] == [5, 7, 255, 5, 10, 3, 3, 1, 0, None, 0]  # property unchanged


def test_priority_queue_serves_consumer_highest_first(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    for prio in range(11):
        ch.basic_publish("", q, f"{prio}".encode(), pika.BasicProperties(priority=prio))
    got = []
    ch.basic_consume(q, lambda _c, _m, _p, b: got.append(int(b)), auto_ack=True)
    assert wait_until(conn, lambda: len(got) == 11)
    assert got == list(range(10, -1, -1))


def test_max_priority_zero_is_fifo(ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-max-priority": 0})
    for prio in (0, 3, 1):
        ch.basic_publish("", q, f"{prio}".encode(), pika.BasicProperties(priority=prio))
    assert bodies(ch, q) == [b"0", b"3", b"1"]


# --------------------------------------------------------------------------------------------------
# 7. Single active consumer; 8. consumer priorities
# --------------------------------------------------------------------------------------------------


def test_single_active_consumer(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    c1, c2 = conn.channel(), conn.channel()
    c1.basic_qos(prefetch_count=2)
    g1: list = []
    g2: list = []
    t1 = c1.basic_consume(q, lambda _c, m, _p, b: g1.append((b, m.delivery_tag)))
    c2.basic_consume(q, lambda _c, m, _p, b: g2.append((b, m.delivery_tag)))
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2
    for i in range(4):
        ch.basic_publish("", q, f"s{i}".encode())
    assert wait_until(conn, lambda: len(g1) == 2)
    pump(conn, 0.2)
    # The inactive consumer gets nothing, even while the active one is at its prefetch limit.
    assert ([b for b, _ in g1], g2) == ([b"s0", b"s1"], [])
    c1.basic_ack(g1[1][1], multiple=True)
    assert wait_until(conn, lambda: len(g1) == 4)
    c1.basic_ack(g1[3][1], multiple=True)
    c1.basic_cancel(t1)
    for i in range(4, 6):
        ch.basic_publish("", q, f"s{i}".encode())
    assert wait_until(conn, lambda: len(g2) == 2)
    assert [b for b, _ in g1] == [b"s0", b"s1", b"s2", b"s3"]
    assert [b for b, _ in g2] == [b"s4", b"s5"]


def test_single_active_consumer_handover_keeps_unacked_order(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    for i in range(3):
        ch.basic_publish("", q, f"s{i}".encode())
    c1, c2 = conn.channel(), conn.channel()
    g1: list = []
    g2: list = []
    c1.basic_consume(q, lambda _c, _m, _p, b: g1.append(b))
    c2.basic_consume(q, lambda _c, m, _p, b: g2.append((b, m.redelivered)), auto_ack=True)
    assert wait_until(conn, lambda: len(g1) == 3)
    c1.close()  # unacked messages go back and the next consumer takes over
    assert wait_until(conn, lambda: len(g2) == 3)
    assert g2 == [(b"s0", True), (b"s1", True), (b"s2", True)]


def test_consumer_priorities(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    hi, lo = conn.channel(), conn.channel()
    hi.basic_qos(prefetch_count=2)
    g_hi: list = []
    g_lo: list = []
    lo.basic_consume(q, lambda _c, _m, _p, b: g_lo.append(b), auto_ack=True, arguments={"x-priority": 0})
    hi.basic_consume(q, lambda _c, _m, _p, b: g_hi.append(b), arguments={"x-priority": 10})
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())
    assert wait_until(conn, lambda: len(g_hi) + len(g_lo) == 5)
    assert g_hi == [b"m0", b"m1"]  # while it has credit the high-priority consumer gets everything
    assert g_lo == [b"m2", b"m3", b"m4"]


# --------------------------------------------------------------------------------------------------
# 9. x-delivery-limit (Conveyor only)
# --------------------------------------------------------------------------------------------------

# RabbitMQ 3.10 refuses x-delivery-limit on a classic queue:
#   406 "PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue 'Q' in vhost '/' of queue type
#   rabbit_classic_queue". On a quorum queue with x-delivery-limit 2, a message nacked with requeue is
#   delivered with x-delivery-count 0, 1, 2 (the header is there on the first delivery too), then the third
#   return dead-letters it with reason "delivery_limit" (x-death as usual; no x-delivery-count on the
#   dead-lettered copy). Conveyor gives classic queues the quorum-queue behaviour.


def test_delivery_limit_dead_letters_after_n_redeliveries(conveyor_only, conn, ch, names):
    dlx, dlq = dead_letter_setup(ch, names)
    q = names.queue()
    ch.queue_declare(q, arguments={"x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"poison")
    for i in range(3):
        m, p, _b = get_wait(ch, q, auto_ack=False)
        assert m.redelivered == (i > 0)
        assert (p.headers or {}).get("x-delivery-count", 0) == i
        ch.basic_nack(m.delivery_tag, requeue=True)
    _dm, dp, body = get_wait(ch, dlq)
    assert body == b"poison"
    (entry,) = dp.headers["x-death"]
    check_x_death(entry, reason="delivery_limit", queue=q, exchange="", routing_keys=[q])
    assert dp.headers["x-first-death-reason"] == "delivery_limit"
    assert count(ch, q) == 0


# --------------------------------------------------------------------------------------------------
# 10. Alternate exchange
# --------------------------------------------------------------------------------------------------


def test_alternate_exchange_gets_unroutable_messages(ch, names):
    ae = names.exchange("ae")
    ch.exchange_declare(ae, "fanout")
    aeq = names.queue("ae")
    ch.queue_declare(aeq)
    ch.queue_bind(aeq, ae)
    x = names.exchange()
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    q = names.queue()
    ch.queue_declare(q)
    ch.queue_bind(q, x, "known")
    ch.basic_publish(x, "known", b"k")
    ch.basic_publish(x, "unknown", b"u", mandatory=True)  # routed via the AE: no basic.return, confirmed
    assert bodies(ch, q) == [b"k"]
    got = drain(ch, aeq)
    assert [(m.exchange, m.routing_key, b) for m, _p, b in got] == [(x, "unknown", b"u")]


@pytest.mark.parametrize("ae_state", ["missing", "unroutable"])
def test_mandatory_message_is_returned_when_the_alternate_exchange_cannot_route(ch, names, ae_state):
    ae = names.exchange("ae")
    if ae_state == "unroutable":
        ch.exchange_declare(ae, "direct")
    x = names.exchange()
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    with pytest.raises(pex.UnroutableError):
        ch.basic_publish(x, "u", b"u", mandatory=True)
    assert ch.is_open


def test_alternate_exchange_argument_checks(ch, conn, names):
    x = names.exchange()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, "direct", arguments={"alternate-exchange": 5})
    assert closed(ei) == (
        406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange '{x}' "
        f"in vhost {VHOST}",
    )
    chan = conn.channel()
    ae1, ae2 = names.exchange("ae1"), names.exchange("ae2")
    chan.exchange_declare(x, "direct", arguments={"alternate-exchange": ae1})
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        chan.exchange_declare(x, "direct", arguments={"alternate-exchange": ae2})
    assert closed(ei) == (
        406,
        reply_text(
            f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{x}' in vhost {VHOST}: "
            f"received '{ae2}' but current is '{ae1}'"
        ),
    )
    assert len(ei.value.reply_text) == 255  # these long test names do get cut


# --------------------------------------------------------------------------------------------------
# 11. Sender-selected distribution (CC / BCC)
# --------------------------------------------------------------------------------------------------


def _three_queues(ch, names) -> tuple[str, dict[str, str]]:
    x = names.exchange()
    ch.exchange_declare(x, "direct")
    qs = {}
    for key in ("a", "b", "c"):
        qs[key] = names.queue(key)
        ch.queue_declare(qs[key])
        ch.queue_bind(qs[key], x, key)
    return x, qs


def test_cc_and_bcc_add_destinations_and_bcc_is_removed(ch, names):
    x, qs = _three_queues(ch, names)
    ch.basic_publish(x, "a", b"m", pika.BasicProperties(headers={"CC": ["b"], "BCC": ["c"], "other": 1}))
    for key in ("a", "b", "c"):
        ((m, p, b),) = drain(ch, qs[key])
        assert (b, m.exchange, m.routing_key) == (b"m", x, "a")  # delivered with the publish routing key
        assert p.headers == {"CC": ["b"], "other": 1}


def test_bcc_only_leaves_an_empty_header_table(ch, names):
    x, qs = _three_queues(ch, names)
    ch.basic_publish(x, "nowhere", b"m", pika.BasicProperties(headers={"BCC": ["c"]}), mandatory=True)
    ((_m, p, _b),) = drain(ch, qs["c"])
    assert p.headers == {}
    assert (count(ch, qs["a"]), count(ch, qs["b"])) == (0, 0)


def test_cc_duplicates_deliver_once_and_are_case_sensitive(ch, names):
    x, qs = _three_queues(ch, names)
    ch.basic_publish(x, "a", b"m", pika.BasicProperties(headers={"CC": ["a", "a"], "BCC": ["a"]}))
    ch.basic_publish(x, "a", b"m", pika.BasicProperties(headers={"cc": ["b"], "bcc": ["c"]}))  # not CC/BCC
    ch.basic_publish(x, "a", b"m", pika.BasicProperties(headers={"CC": ["b", 5]}))  # non-strings ignored
    assert [count(ch, qs[k]) for k in ("a", "b", "c")] == [3, 1, 0]


def test_cc_routes_through_topic_patterns(ch, names):
    x = names.exchange()
    ch.exchange_declare(x, "topic")
    q = names.queue()
    ch.queue_declare(q)
    ch.queue_bind(q, x, "x.*")
    ch.basic_publish(x, "nomatch", b"m", pika.BasicProperties(headers={"CC": ["x.y"]}))
    assert [m.routing_key for m, _p, _b in drain(ch, q)] == ["nomatch"]


def test_cc_header_of_the_wrong_type_closes_the_channel(ch, names):
    x, _qs = _three_queues(ch, names)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_publish(x, "a", b"m", pika.BasicProperties(headers={"CC": "b"}))
    assert closed(ei) == (406, 'PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,"CC",longstr}')


# --------------------------------------------------------------------------------------------------
# 12. Direct reply-to
# --------------------------------------------------------------------------------------------------


def test_direct_reply_to_round_trip(broker, conn, names):
    server_conn = broker.connect()
    try:
        server = server_conn.channel()
        server.confirm_delivery()
        q = names.queue("rpc")
        server.queue_declare(q)
        client = conn.channel()
        replies: list = []
        client.basic_consume(REPLY_TO, lambda _c, m, p, b: replies.append((m, p, b)), auto_ack=True)
        client.basic_publish("", q, b"request", pika.BasicProperties(reply_to=REPLY_TO, correlation_id="c1"))
        _m, p, body = get_wait(server, q)
        assert body == b"request"
        address = p.reply_to
        assert address.startswith(REPLY_TO + ".") and len(address) > len(REPLY_TO) + 1
        assert p.correlation_id == "c1"
        # The address answers a passive declare like a queue with no messages.
        ok = server.queue_declare(address, passive=True)
        assert (ok.method.queue, ok.method.message_count) == (address, 0)
        server.basic_publish("", address, b"response", pika.BasicProperties(correlation_id="c1", headers={"a": 1}))
        assert wait_until(conn, lambda: replies)
        ((m, rp, rbody),) = replies
        assert (rbody, m.exchange, m.routing_key, m.redelivered) == (b"response", "", address, False)
        assert (rp.correlation_id, rp.headers) == ("c1", {"a": 1})
        # A mandatory reply to an address nobody consumes any more is returned.
        client.basic_cancel(m.consumer_tag)
        with pytest.raises(pex.UnroutableError):
            server.basic_publish("", address, b"late", mandatory=True)
        with pytest.raises(pex.UnroutableError):
            server.basic_publish("", REPLY_TO + ".bogus", b"late", mandatory=True)
    finally:
        server_conn.close()


def test_direct_reply_to_consumer_must_be_no_ack(conn):
    chan = conn.channel()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        chan.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
    assert closed(ei) == (406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_direct_reply_to_only_one_consumer_per_channel(conn):
    chan = conn.channel()
    chan.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        chan.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    assert closed(ei) == (406, "PRECONDITION_FAILED - reply consumer already set")


def test_direct_reply_to_publish_without_consumer_on_that_channel(conn, ch, names):
    q = names.queue()
    ch.queue_declare(q)
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.basic_publish("", q, b"r", pika.BasicProperties(reply_to=REPLY_TO))
    assert closed(ei) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    # A reply consumer on ANOTHER channel of the same connection does not count.
    other = conn.channel()
    other.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    chan = conn.channel()
    chan.confirm_delivery()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        chan.basic_publish("", q, b"r", pika.BasicProperties(reply_to=REPLY_TO))
    assert closed(ei) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    # Nor does a cancelled one.
    chan = conn.channel()
    chan.confirm_delivery()
    chan.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True, consumer_tag="rt")
    chan.basic_cancel("rt")
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        chan.basic_publish("", q, b"r", pika.BasicProperties(reply_to=REPLY_TO))
    assert closed(ei) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    # Only the exact pseudo-queue name is special: a longer reply_to passes through untouched.
    chan = conn.channel()
    chan.confirm_delivery()
    chan.basic_publish("", q, b"r", pika.BasicProperties(reply_to=REPLY_TO + ".foo"))
    _m, p, _b = chan.basic_get(q, auto_ack=True)
    assert p.reply_to == REPLY_TO + ".foo"


# --------------------------------------------------------------------------------------------------
# 13. Queue argument validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "detail"),
    [
        ({"x-message-ttl": -1}, "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-message-ttl": "100"},
         "invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ({"x-max-length": -1}, "invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-max-length": "5"},
         "invalid arg 'x-max-length' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ({"x-max-length-bytes": -1},
         "invalid arg 'x-max-length-bytes' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-overflow": "foo"}, "invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow"),
        ({"x-max-priority": 256},
         "invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{max_value_exceeded,256}}"),
        ({"x-max-priority": -1}, "invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-expires": 0}, "invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}"),
        ({"x-expires": -1}, "invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-expires": "1000"},
         "invalid arg 'x-expires' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ({"x-dead-letter-exchange": 5},
         "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'"),
        ({"x-dead-letter-routing-key": "rk"},
         "invalid arg 'x-dead-letter-routing-key' for queue '{q}' in vhost '/': routing_key_but_no_dlx_defined"),
        ({"x-single-active-consumer": "yes"},
         "invalid arg 'x-single-active-consumer' for queue '{q}' in vhost '/': {{unacceptable_type,longstr}}"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_invalid_queue_arguments(ch, names, args, detail):
    q = names.queue()
    with pytest.raises(pex.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, arguments=args)
    assert closed(ei) == (406, "PRECONDITION_FAILED - " + detail.format(q=q))


@pytest.mark.parametrize(
    "args",
    [
        {"x-message-ttl": 0},
        {"x-max-length": 0},
        {"x-max-priority": 0},
        {"x-max-priority": 255},
        {"x-overflow": "drop-head"},
        {"x-unknown-argument": "whatever", "x-other": 7},
        {"not-even-x": True},
    ],
    ids=repr,
)
def test_valid_and_unknown_queue_arguments_are_accepted(ch, names, args):
    q = names.queue()
    assert ch.queue_declare(q, arguments=args).method.queue == q
    assert ch.queue_declare(q, arguments=args).method.queue == q  # and redeclared equivalently


# --------------------------------------------------------------------------------------------------
# 14. Consumer timeout (Conveyor only: RabbitMQ 3.10 has a global consumer_timeout setting only, and
#     accepts x-consumer-timeout as an unknown argument)
# --------------------------------------------------------------------------------------------------


def test_consumer_timeout_closes_channel_and_requeues(conveyor_only, conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-consumer-timeout": 200})
    ch.basic_publish("", q, b"slow")
    lazy = conn.channel()
    got = []
    lazy.basic_consume(q, lambda _c, _m, _p, b: got.append(b))
    assert wait_until(conn, lambda: got)
    code, text = wait_channel_closed(lazy, timeout=5)
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - delivery acknowledgement on channel {lazy.channel_number} timed out. "
        "Timeout value used: 200 ms. This timeout value can be configured, see consumers doc guide to learn more",
    )
    m, _p, body = get_wait(ch, q)
    assert (body, m.redelivered) == (b"slow", True)
    assert conn.is_open


def test_consumer_timeout_not_triggered_by_acking_consumer(conveyor_only, conn, ch, names):
    q = names.queue()
    ch.queue_declare(q, arguments={"x-consumer-timeout": 200})
    worker = conn.channel()
    got = []
    worker.basic_consume(q, lambda c, m, _p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    assert wait_until(conn, lambda: len(got) == 3)
    pump(conn, 0.5)
    assert worker.is_open


# --------------------------------------------------------------------------------------------------
# 15. Delayed-message exchange (Conveyor only: the RabbitMQ plugin is not installed here)
# --------------------------------------------------------------------------------------------------


def _delayed_exchange(ch, names, durable: bool = False) -> tuple[str, str]:
    x = names.exchange("delayed")
    ch.exchange_declare(x, "x-delayed-message", durable=durable, arguments={"x-delayed-type": "direct"})
    q = names.queue("delayed")
    ch.queue_declare(q, durable=durable)
    ch.queue_bind(q, x, "k")
    return x, q


def test_delayed_message_is_delivered_after_its_delay(conveyor_only, conn, ch, names):
    x, q = _delayed_exchange(ch, names)
    start = time.monotonic()
    ch.basic_publish(x, "k", b"later", pika.BasicProperties(headers={"x-delay": 300}))
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)
    m, _p, body = get_wait(ch, q)
    assert body == b"later"
    assert time.monotonic() - start >= 0.25
    assert m.exchange == x and m.routing_key == "k"


def test_delayed_messages_arrive_in_due_time_order(conveyor_only, conn, ch, names):
    x, q = _delayed_exchange(ch, names)
    got = []
    ch.basic_consume(q, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    ch.basic_publish(x, "k", b"300", pika.BasicProperties(headers={"x-delay": 300}))
    ch.basic_publish(x, "k", b"100", pika.BasicProperties(headers={"x-delay": 100}))
    ch.basic_publish(x, "k", b"none")
    ch.basic_publish(x, "k", b"200", pika.BasicProperties(headers={"x-delay": 200}))
    assert wait_until(conn, lambda: len(got) == 4)
    assert got == [b"none", b"100", b"200", b"300"]


# --------------------------------------------------------------------------------------------------
# Restarts (Conveyor only): TTLs and delays are deadlines that survive a restart
# --------------------------------------------------------------------------------------------------


class Node:
    """Conveyor servers started one after another on one data directory (pattern of test_durability.py)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.procs: list[ConveyorProcess] = []
        self.conns: list[pika.BlockingConnection] = []
        self.start()

    def start(self) -> None:
        proc = ConveyorProcess(data_dir=self.data_dir)
        self.procs.append(proc)
        proc.wait_ready()

    def connect(self) -> pika.BlockingConnection:
        proc = self.procs[-1]
        params = pika.ConnectionParameters(
            proc.host, proc.port, credentials=pika.PlainCredentials("guest", "guest"), socket_timeout=5
        )
        conn = pika.BlockingConnection(params)
        self.conns.append(conn)
        return conn

    def _drop_connections(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                if conn.is_open:
                    conn.close()
        self.conns.clear()

    def restart(self) -> None:
        self._drop_connections()
        self.procs[-1].stop()
        assert self.procs[-1].proc.returncode == 0, self.stderr
        self.start()

    @property
    def stderr(self) -> str:
        return "".join(f"--- server #{i} ---\n{p.stderr}" for i, p in enumerate(self.procs, 1))

    def close(self) -> None:
        self._drop_connections()
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def node(conveyor_only, tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "data")
    try:
        yield n
    finally:
        n.close()
    assert "Traceback" not in n.stderr, f"server logged a traceback:\n{n.stderr}"


def _durable_dead_letter_pair(chan) -> None:
    chan.exchange_declare("ttl.dlx", "fanout", durable=True)
    chan.queue_declare("ttl.dlq", durable=True)
    chan.queue_bind("ttl.dlq", "ttl.dlx")


def test_persistent_message_ttl_survives_restart(node):
    conn = node.connect()
    chan = conn.channel()
    chan.confirm_delivery()
    _durable_dead_letter_pair(chan)
    chan.queue_declare("ttl.q", durable=True, arguments={"x-dead-letter-exchange": "ttl.dlx"})
    published = time.monotonic()
    chan.basic_publish("", "ttl.q", b"per-message", pika.BasicProperties(delivery_mode=2, expiration="1500"))
    node.restart()
    conn = node.connect()
    chan = conn.channel()
    if time.monotonic() - published < 1.2:
        assert count(chan, "ttl.q") == 1  # still there right after the restart: the deadline is not reset...
    _m, p, body = get_wait(chan, "ttl.dlq", timeout=10)  # ...nor forgotten
    assert time.monotonic() - published >= 1.4
    assert body == b"per-message"
    (entry,) = p.headers["x-death"]
    check_x_death(entry, reason="expired", queue="ttl.q", exchange="", routing_keys=["ttl.q"],
                  original_expiration="1500")
    assert count(chan, "ttl.q") == 0


def test_queue_message_ttl_survives_restart(node):
    conn = node.connect()
    chan = conn.channel()
    chan.confirm_delivery()
    chan.queue_declare("ttl.qttl", durable=True, arguments={"x-message-ttl": 1000})
    chan.basic_publish("", "ttl.qttl", b"m", pika.BasicProperties(delivery_mode=2))
    node.restart()
    conn = node.connect()
    chan = conn.channel()
    # Enqueue time, not restart time, counts: gone within a second or so of the original publish.
    assert wait_until(conn, lambda: count(chan, "ttl.qttl") == 0, timeout=5)
    assert chan.basic_get("ttl.qttl", auto_ack=True) == (None, None, None)


def test_persistent_delayed_message_survives_restart(node):
    conn = node.connect()
    chan = conn.channel()
    chan.confirm_delivery()
    chan.exchange_declare("delay.x", "x-delayed-message", durable=True, arguments={"x-delayed-type": "direct"})
    chan.queue_declare("delay.q", durable=True)
    chan.queue_bind("delay.q", "delay.x", "k")
    published = time.monotonic()
    chan.basic_publish("delay.x", "k", b"delayed", pika.BasicProperties(delivery_mode=2, headers={"x-delay": 2000}))
    transient = pika.BasicProperties(delivery_mode=1, headers={"x-delay": 2000})
    chan.basic_publish("delay.x", "k", b"transient", transient)
    assert count(chan, "delay.q") == 0
    node.restart()
    conn = node.connect()
    chan = conn.channel()
    if time.monotonic() - published < 1.8:
        assert count(chan, "delay.q") == 0  # not released early by the restart
    _m, _p, body = get_wait(chan, "delay.q", timeout=10)
    assert body == b"delayed"
    assert time.monotonic() - published >= 1.9
    pump(conn, 0.3)
    assert chan.basic_get("delay.q", auto_ack=True) == (None, None, None)  # the transient one did not survive
