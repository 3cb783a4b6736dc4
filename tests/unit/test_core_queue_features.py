"""Queue features of the core, through a real VirtualHost: TTLs, dead-lettering and x-death, length limits,
priorities, single active consumer, delivery limit, x-expires, argument validation, policies, alternate
exchanges and CC/BCC.

No sockets, no sleeps: a ManualClock moves time (``clock.advance`` runs due timers) and the vhost's
``schedule`` is a plain list whose callbacks (queue pumps) the test runs explicitly.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from stand_ins import StandInConsumer

from conveyor.amqp import spec
from conveyor.amqp.properties import CODEC
from conveyor.core.clock import ManualClock
from conveyor.core.errors import PreconditionFailed
from conveyor.core.message import Message, QueuedMessage
from conveyor.core.queue.arguments import validate_arguments
from conveyor.core.queue.classic import Queue
from conveyor.core.vhost import VirtualHost

# -- harness ------------------------------------------------------------------------------------------------


class Broker:
    """A real VirtualHost on a ManualClock, with a list as its event loop."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.pending: list[Callable[[], None]] = []
        self.vhost = VirtualHost("/", schedule=self.pending.append, clock=self.clock)

    def run(self) -> int:
        ran = 0
        while self.pending:
            self.pending.pop(0)()
            ran += 1
        return ran

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def queue(self, name: str, **arguments: Any) -> Queue:
        return self.vhost.declare_queue(name, None, arguments=arguments)

    def exchange(self, name: str, kind: str = "direct", **arguments: Any) -> None:
        self.vhost.declare_exchange(name, kind, arguments=arguments)

    def bind(self, queue: str, exchange: str, key: str = "") -> None:
        self.vhost.bind_queue(queue, exchange, key, None, None)

    def publish(self, routing_key: str, body: bytes | str = b"m", exchange: str = "", **props: Any) -> list[Queue]:
        return self.vhost.publish(exchange, message(routing_key, body, exchange, **props))

    def wall_time(self) -> datetime:
        return datetime.fromtimestamp(int(self.clock.wall()), UTC)


def message(routing_key: str, body: bytes | str = b"m", exchange: str = "", **props: Any) -> Message:
    raw = body.encode() if isinstance(body, str) else body
    return Message(exchange, routing_key, spec.BasicProperties(**props).encode(), raw, decoder=CODEC)


def drain(queue: Queue) -> list[QueuedMessage]:
    """Every ready message, taken with basic.get no-ack."""
    out = []
    while (entry := queue.get(no_ack=True)) is not None:
        out.append(entry)
    return out


def bodies(queue: Queue) -> list[bytes]:
    return [e.message.body for e in drain(queue)]


def deaths_of(entry: QueuedMessage) -> list[dict[str, Any]]:
    headers = entry.message.headers or {}
    return headers["x-death"]  # type: ignore[no-any-return]


@pytest.fixture
def b() -> Broker:
    return Broker()


@pytest.fixture
def dlq(b: Broker) -> Queue:
    """A fanout dead-letter exchange ``dlx`` bound to the queue ``dead``."""
    b.exchange("dlx", "fanout")
    queue = b.queue("dead")
    b.bind("dead", "dlx")
    return queue


def only(queue: Queue) -> QueuedMessage:
    got = drain(queue)
    assert len(got) == 1, got
    return got[0]


# -- per-message TTL and x-message-ttl ------------------------------------------------------------------------


def test_per_message_ttl_expires_and_count_drops_when_timer_fires(b: Broker) -> None:
    q = b.queue("q")
    b.publish("q", "short", expiration="1000")
    b.publish("q", "forever")
    assert q.message_count == 2
    b.advance(0.999)
    assert q.message_count == 2
    b.advance(0.001)
    assert q.message_count == 1
    assert bodies(q) == [b"forever"]


def test_expired_message_is_not_delivered_by_get(b: Broker) -> None:
    q = b.queue("q", **{"x-message-ttl": 500})
    b.publish("q", "x")
    b.advance(1)
    assert q.message_count == 0
    assert q.get(no_ack=True) is None


def test_queue_ttl_expires_messages_at_enqueue_time_plus_ttl(b: Broker) -> None:
    q = b.queue("q", **{"x-message-ttl": 1000})
    b.publish("q", "a")
    b.advance(0.5)
    b.publish("q", "b")
    b.advance(0.5)
    assert q.message_count == 1
    b.advance(0.499)
    assert q.message_count == 1
    b.advance(0.001)
    assert q.message_count == 0


@pytest.mark.parametrize(
    ("queue_ttl", "expiration", "lives"),
    [(10_000, "2000", 2.0), (2_000, "10000", 2.0), (3_000, "3000", 3.0)],
)
def test_lower_of_queue_and_message_ttl_wins(b: Broker, queue_ttl: int, expiration: str, lives: float) -> None:
    q = b.queue("q", **{"x-message-ttl": queue_ttl})
    b.publish("q", "x", expiration=expiration)
    b.advance(lives - 0.001)
    assert q.message_count == 1
    b.advance(0.001)
    assert q.message_count == 0


def test_message_behind_a_longer_lived_head_expires_at_its_own_time(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx"})
    b.publish("q", "head", expiration="100000")
    b.publish("q", "behind", expiration="1000")
    b.publish("q", "tail")
    b.advance(1)
    assert q.message_count == 2
    assert [d.message.body for d in drain(dlq)] == [b"behind"]
    assert bodies(q) == [b"head", b"tail"]


def test_many_expiries_anywhere_in_the_queue(b: Broker) -> None:
    q = b.queue("q")
    for i, ttl in enumerate([5000, 1000, 4000, 2000, 3000]):
        b.publish("q", str(i), expiration=str(ttl))
    expected_alive = [["0", "2", "3", "4"], ["0", "2", "4"], ["0", "2"], ["0"], []]
    for alive in expected_alive:
        b.advance(1)
        assert q.message_count == len(alive)
    assert q.get(no_ack=True) is None


def test_ttl_zero_dropped_without_a_consumer_and_dead_lettered(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx"})
    assert b.publish("q", "now-or-never", expiration="0") == [q]
    assert q.message_count == 0
    dead = only(dlq)
    assert dead.message.body == b"now-or-never"
    assert deaths_of(dead)[0]["reason"] == "expired"


def test_ttl_zero_dropped_when_consumer_has_no_credit(b: Broker) -> None:
    q = b.queue("q", **{"x-message-ttl": 0})
    c = StandInConsumer("c", credit=0)
    q.add_consumer(c)
    b.publish("q", "x")
    b.run()
    assert q.message_count == 0
    c.credit = 1
    q.wake()
    b.run()
    assert c.received == []


def test_ttl_zero_delivered_to_consumer_with_credit(b: Broker) -> None:
    q = b.queue("q", **{"x-message-ttl": 0})
    c = StandInConsumer("c", credit=1)
    q.add_consumer(c)
    b.publish("q", "x")
    b.advance(5)  # it was accepted for immediate delivery: it no longer expires
    b.run()
    assert c.bodies() == [b"x"]


def test_expired_requeued_message_leaves_the_count(b: Broker, dlq: Queue) -> None:
    """A message whose TTL passes while it is delivered is dropped (and dead-lettered) when requeued,
    as RabbitMQ drops expired messages after a requeue."""
    q = b.queue("q", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx"})
    b.publish("q", "x")
    entry = q.get(no_ack=False)
    assert entry is not None
    b.advance(2)  # the TTL timer fires while the message is out
    q.requeue([entry])
    b.advance(1)
    assert q.message_count == 0
    assert [d.message.body for d in drain(dlq)] == [b"x"]


def test_head_expired_before_timer_fires_is_dropped_once(b: Broker, dlq: Queue) -> None:
    """A basic.get that reaches an expired head before the TTL timer has run (the timer is late, as an
    event loop's may be) drops it; the timer must not drop it a second time."""
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx"})
    got: list[QueuedMessage | None] = []
    b.clock.call_later(1, lambda: got.append(q.get(no_ack=True)))  # due with, but before, the TTL timer
    b.publish("q", "x", expiration="1000")
    for body in ("y", "z1", "z2", "z3"):
        b.publish("q", body)
    b.advance(1)
    assert got[0] is not None and got[0].message.body == b"y"
    assert [d.message.body for d in drain(dlq)] == [b"x"]
    assert q.message_count == 3
    assert bodies(q) == [b"z1", b"z2", b"z3"]
    assert q.message_count == 0


def test_expired_head_makes_room_under_max_length(b: Broker) -> None:
    """Publishing into a full max-length queue whose head has expired (timer not yet run) drops the
    expired head and keeps the new message."""
    q = b.queue("q", **{"x-max-length": 1})
    outcome: list[list[Queue]] = []
    b.clock.call_later(1, lambda: outcome.append(b.publish("q", "new")))
    b.publish("q", "old", expiration="1000")
    b.advance(1)
    assert outcome == [[q]]
    assert q.message_count == 1
    assert bodies(q) == [b"new"]


# -- dead-lettering -----------------------------------------------------------------------------------------


def test_rejected_message_is_dead_lettered(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx"})
    b.publish("q", "x")
    entry = q.get(no_ack=False)
    assert entry is not None
    q.reject(entry)
    assert q.unacked == 0
    dead = only(dlq)
    assert dead.message.body == b"x"
    assert deaths_of(dead)[0]["reason"] == "rejected"


def test_expired_message_is_dead_lettered(b: Broker, dlq: Queue) -> None:
    b.queue("q", **{"x-dead-letter-exchange": "dlx", "x-message-ttl": 100})
    b.publish("q", "x")
    assert dlq.message_count == 0
    b.advance(0.1)
    assert deaths_of(only(dlq))[0]["reason"] == "expired"


def test_maxlen_drop_head_dead_letters_oldest(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx", "x-max-length": 2})
    for body in ("1", "2", "3", "4"):
        assert b.publish("q", body) == [q]
    assert q.message_count == 2
    dead = drain(dlq)
    assert [d.message.body for d in dead] == [b"1", b"2"]
    assert {deaths_of(d)[0]["reason"] for d in dead} == {"maxlen"}
    assert bodies(q) == [b"3", b"4"]


def test_delivery_limit_dead_letters(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx", "x-delivery-limit": 1})
    b.publish("q", "poison")
    first = q.get(no_ack=False)
    assert first is not None
    q.requeue([first])
    assert q.message_count == 1
    second = q.get(no_ack=False)
    assert second is not None and second.redelivered
    q.requeue([second])
    assert q.message_count == 0
    assert q.unacked == 0
    dead = only(dlq)
    assert deaths_of(dead)[0]["reason"] == "delivery_limit"


def test_no_dead_letter_exchange_argument_means_no_dead_letter(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-message-ttl": 10})
    b.publish("q", "x")
    b.advance(1)
    assert q.message_count == 0
    assert dlq.message_count == 0


def test_x_death_first_entry_fields_order_and_types(b: Broker, dlq: Queue) -> None:
    b.exchange("src", "direct")
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx"})
    b.bind("q", "src", "k1")
    b.bind("q", "src", "k2")
    b.advance(3.7)
    b.publish("k1", "x", exchange="src", expiration="60000", headers={"CC": ["k2", "k3"]}, priority=3)
    when = b.wall_time()
    entry = q.get(no_ack=False)
    assert entry is not None
    b.advance(10)
    q.reject(entry)
    dead = only(dlq)
    (death,) = deaths_of(dead)
    assert list(death) == ["count", "reason", "queue", "time", "exchange", "routing-keys", "original-expiration"]
    assert death == {
        "count": 1,
        "reason": "rejected",
        "queue": "q",
        "time": b.wall_time(),
        "exchange": "src",
        "routing-keys": ["k1", "k2", "k3"],
        "original-expiration": "60000",
    }
    assert when != death["time"]  # the time of death, not of publication
    assert isinstance(death["time"], datetime)
    assert b"\x05countl" + struct.pack("!q", 1) in dead.message.properties  # sent as a long (Long)
    headers = dead.message.headers or {}
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-queue"] == "q"
    assert headers["x-first-death-exchange"] == "src"
    assert headers["CC"] == ["k2", "k3"]  # kept when there is no dead-letter routing key
    props = CODEC.decode(dead.message.properties)
    assert "expiration" not in props
    assert props["priority"] == 3
    assert dead.message.exchange == "dlx"
    assert dead.message.routing_key == "k1"


def test_x_death_has_no_original_expiration_without_expiration_property(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx", "x-message-ttl": 1000})
    b.publish("q", "x")
    b.advance(1)
    (death,) = deaths_of(only(dlq))
    assert "original-expiration" not in death
    assert death["reason"] == "expired"
    assert death["exchange"] == ""
    assert death["routing-keys"] == ["q"]
    assert q.message_count == 0


def test_expired_per_message_ttl_records_original_expiration(b: Broker, dlq: Queue) -> None:
    b.queue("q", **{"x-dead-letter-exchange": "dlx"})
    b.publish("q", "x", expiration="250")
    b.advance(0.25)
    dead = only(dlq)
    assert deaths_of(dead)[0]["original-expiration"] == "250"
    assert CODEC.expiration(dead.message.properties) is None


def test_repeated_death_counts_keeps_first_time_moves_first_sorted(b: Broker) -> None:
    # a -> (rejected) -> b -> (rejected) -> a -> (rejected) -> b: a cycle with rejections is allowed.
    qa = b.queue("a", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "b"})
    qb = b.queue("b", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "a"})
    b.publish("a", "x")

    def reject_from(queue: Queue) -> None:
        entry = queue.get(no_ack=False)
        assert entry is not None
        queue.reject(entry)

    reject_from(qa)
    first_time = b.wall_time()
    b.advance(5)
    reject_from(qb)
    second_time = b.wall_time()
    entry = qa.get(no_ack=False)
    assert entry is not None
    deaths = deaths_of(entry)
    assert [(d["queue"], d["count"]) for d in deaths] == [("b", 1), ("a", 1)]
    # An entry added to an existing array has sorted keys.
    assert list(deaths[0]) == sorted(deaths[0])
    assert deaths[0]["time"] == second_time
    b.advance(5)
    qa.reject(entry)
    dead = only(qb)
    deaths = deaths_of(dead)
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [("a", "rejected", 2), ("b", "rejected", 1)]
    assert list(deaths[0]) == sorted(deaths[0])
    assert list(deaths[0]) == ["count", "exchange", "queue", "reason", "routing-keys", "time"]
    assert deaths[0]["time"] == first_time
    assert b"\x05countl" + struct.pack("!q", 2) in dead.message.properties
    headers = dead.message.headers or {}
    assert (headers["x-first-death-queue"], headers["x-first-death-reason"]) == ("a", "rejected")
    assert headers["x-first-death-exchange"] == ""
    assert dead.message.routing_key == "b"


def test_dead_letter_routing_key_replaces_key_and_drops_cc(b: Broker) -> None:
    b.exchange("dlx", "direct")
    dead_q = b.queue("dead")
    b.bind("dead", "dlx", "dk")
    cc_catcher = b.queue("k2-dlx")
    b.bind("k2-dlx", "dlx", "k2")
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dk"})
    b.publish("q", "x", headers={"CC": ["k2"], "other": 1})
    entry = q.get(no_ack=False)
    assert entry is not None
    q.reject(entry)
    assert cc_catcher.message_count == 0
    dead = only(dead_q)
    assert dead.message.routing_key == "dk"
    headers = dead.message.headers or {}
    assert "CC" not in headers
    assert headers["other"] == 1
    assert headers["x-death"][0]["routing-keys"] == ["q", "k2"]


def test_dead_letter_without_routing_key_uses_original_keys_including_cc(b: Broker) -> None:
    b.exchange("dlx", "direct")
    on_key = b.queue("on-key")
    on_cc = b.queue("on-cc")
    b.bind("on-key", "dlx", "q")
    b.bind("on-cc", "dlx", "k2")
    q = b.queue("q", **{"x-dead-letter-exchange": "dlx"})
    b.publish("q", "x", headers={"CC": ["k2"]})
    entry = q.get(no_ack=False)
    assert entry is not None
    q.reject(entry)
    assert (on_key.message_count, on_cc.message_count) == (1, 1)


def test_missing_dead_letter_exchange_drops_silently(b: Broker) -> None:
    q = b.queue("q", **{"x-dead-letter-exchange": "does-not-exist", "x-message-ttl": 10})
    b.publish("q", "x")
    b.advance(1)
    assert q.message_count == 0
    b.publish("q", "y")
    entry = q.get(no_ack=False)
    assert entry is not None
    q.reject(entry)
    assert q.unacked == 0


def test_queue_ttl_dead_lettering_to_itself_is_a_cycle_and_dropped(b: Broker) -> None:
    q = b.queue("loop", **{"x-message-ttl": 1000, "x-dead-letter-exchange": ""})
    b.publish("loop", "x")
    b.advance(1)
    assert q.message_count == 0
    b.advance(10)
    assert q.message_count == 0
    assert b.clock.pending == 0


def test_two_queue_ttl_cycle_is_dropped_on_the_way_back(b: Broker) -> None:
    qa = b.queue("a", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "b"})
    qb = b.queue("b", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "a"})
    b.publish("a", "x")
    b.advance(1)
    assert (qa.message_count, qb.message_count) == (0, 1)
    b.advance(1)
    assert (qa.message_count, qb.message_count) == (0, 0)


def test_cycle_with_a_rejection_in_it_is_allowed(b: Broker) -> None:
    qa = b.queue("a", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "b"})
    qb = b.queue("b", **{"x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "a"})
    b.publish("a", "x")
    entry = qa.get(no_ack=False)
    assert entry is not None
    qa.reject(entry)
    assert qb.message_count == 1
    b.advance(1)
    back = only(qa)
    assert [(d["queue"], d["reason"]) for d in deaths_of(back)] == [("b", "expired"), ("a", "rejected")]


def test_rejection_back_into_the_same_queue_is_allowed(b: Broker) -> None:
    q = b.queue("q", **{"x-dead-letter-exchange": ""})
    b.publish("q", "x")
    for count in (1, 2, 3):  # noqa: B007 - the last value is checked below
        entry = q.get(no_ack=False)
        assert entry is not None
        q.reject(entry)
        assert q.message_count == 1
    entry = only(q)
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths_of(entry)] == [("q", "rejected", count)]


# -- length limits ------------------------------------------------------------------------------------------


def test_max_length_drop_head_keeps_newest(b: Broker) -> None:
    q = b.queue("q", **{"x-max-length": 3})
    for i in range(10):
        b.publish("q", str(i))
    assert q.message_count == 3
    assert bodies(q) == [b"7", b"8", b"9"]


def test_max_length_counts_only_ready_messages(b: Broker) -> None:
    q = b.queue("q", **{"x-max-length": 1})
    b.publish("q", "1")
    out = q.get(no_ack=False)
    assert out is not None
    b.publish("q", "2")
    assert q.message_count == 1
    assert q.unacked == 1
    q.requeue([out])
    assert sorted(bodies(q)) == [b"1", b"2"]  # a requeue is not a publish: no limit enforced


def test_max_length_bytes_counts_body_bytes(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-max-length-bytes": 10, "x-dead-letter-exchange": "dlx"})
    b.publish("q", b"aaaa", headers={"big": "x" * 100})  # properties do not count
    b.publish("q", b"bbbb")
    assert q.message_count == 2
    b.publish("q", b"cc")  # exactly 10 bytes
    assert q.message_count == 3
    b.publish("q", b"d")
    assert q.message_count == 3
    dead = only(dlq)
    assert dead.message.body == b"aaaa"
    assert deaths_of(dead)[0]["reason"] == "maxlen"
    assert bodies(q) == [b"bbbb", b"cc", b"d"]


def test_max_length_bytes_freed_by_get(b: Broker) -> None:
    q = b.queue("q", **{"x-max-length-bytes": 4})
    b.publish("q", b"1234")
    assert q.get(no_ack=True) is not None
    b.publish("q", b"5678")
    assert bodies(q) == [b"5678"]


def test_reject_publish_refuses_new_message(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-max-length": 2, "x-overflow": "reject-publish", "x-dead-letter-exchange": "dlx"})
    assert b.publish("q", "1") == [q]
    assert b.publish("q", "2") == [q]
    assert b.vhost.rejected == 0
    assert b.publish("q", "3") == []
    assert b.vhost.rejected == 1
    assert q.push(message("q", "4")) is False
    assert dlq.message_count == 0  # reject-publish does not dead-letter
    assert bodies(q) == [b"1", b"2"]
    assert b.publish("q", "5") == [q]
    assert b.vhost.rejected == 0


def test_reject_publish_counts_only_the_refusing_queue(b: Broker) -> None:
    b.exchange("fan", "fanout")
    full = b.queue("full", **{"x-max-length": 0, "x-overflow": "reject-publish"})
    roomy = b.queue("roomy")
    b.bind("full", "fan")
    b.bind("roomy", "fan")
    assert b.publish("", "x", exchange="fan") == [roomy]
    assert b.vhost.rejected == 1
    assert (full.message_count, roomy.message_count) == (0, 1)


def test_reject_publish_dlx_refuses_and_dead_letters(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-max-length": 1, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": "dlx"})
    assert b.publish("q", "1") == [q]
    assert b.publish("q", "2") == []
    assert b.vhost.rejected == 1
    dead = only(dlq)
    assert dead.message.body == b"2"
    assert deaths_of(dead)[0]["reason"] == "maxlen"
    assert bodies(q) == [b"1"]


def test_reject_publish_with_max_length_bytes(b: Broker) -> None:
    q = b.queue("q", **{"x-max-length-bytes": 5, "x-overflow": "reject-publish"})
    assert q.push(message("q", b"12345")) is True
    assert q.push(message("q", b"6")) is False
    assert q.message_count == 1


def test_max_length_zero_drop_head_dead_letters_every_message(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-max-length": 0, "x-dead-letter-exchange": "dlx"})
    assert b.publish("q", "x") == [q]  # accepted (then dropped at once)
    assert b.vhost.rejected == 0
    assert q.message_count == 0
    dead = only(dlq)
    assert deaths_of(dead)[0]["reason"] == "maxlen"


def test_max_length_zero_reject_publish_refuses(b: Broker) -> None:
    q = b.queue("q", **{"x-max-length": 0, "x-overflow": "reject-publish"})
    assert b.publish("q", "x") == []
    assert b.vhost.rejected == 1
    assert q.message_count == 0


# -- priorities ---------------------------------------------------------------------------------------------


def test_priority_highest_first_fifo_within_priority(b: Broker) -> None:
    q = b.queue("q", **{"x-max-priority": 5})
    for body, priority in [("a0", 0), ("b3", 3), ("c1", 1), ("d3", 3), ("e", None), ("f5", 5), ("g1", 1)]:
        b.publish("q", body, priority=priority)
    assert q.message_count == 7
    assert bodies(q) == [b"f5", b"b3", b"d3", b"c1", b"g1", b"a0", b"e"]


def test_priority_above_max_is_treated_as_max(b: Broker) -> None:
    q = b.queue("q", **{"x-max-priority": 2})
    b.publish("q", "p2-first", priority=2)
    b.publish("q", "p9", priority=9)
    b.publish("q", "p2-last", priority=2)
    b.publish("q", "p1", priority=1)
    assert bodies(q) == [b"p2-first", b"p9", b"p2-last", b"p1"]


def test_priority_requeue_keeps_order_within_priority(b: Broker) -> None:
    q = b.queue("q", **{"x-max-priority": 3})
    for body, priority in [("h1", 3), ("l1", 1), ("h2", 3), ("l2", 1), ("h3", 3)]:
        b.publish("q", body, priority=priority)
    taken = [q.get(no_ack=False) for _ in range(4)]  # h1 h2 h3 l1
    assert [e.message.body for e in taken if e] == [b"h1", b"h2", b"h3", b"l1"]
    q.requeue([taken[1], taken[3]])  # h2 and l1 back
    q.requeue([taken[0]])  # then h1
    got = drain(q)
    assert [e.message.body for e in got] == [b"h1", b"h2", b"l1", b"l2"]
    assert [e.redelivered for e in got] == [True, True, True, False]


def test_priority_queue_delivers_to_consumer_by_priority(b: Broker) -> None:
    q = b.queue("q", **{"x-max-priority": 10})
    for body, priority in [("low", 1), ("high", 9), ("mid", 5)]:
        b.publish("q", body, priority=priority)
    c = StandInConsumer("c")
    q.add_consumer(c)
    b.run()
    assert c.bodies() == [b"high", b"mid", b"low"]


def test_max_priority_zero_is_fifo(b: Broker) -> None:
    q = b.queue("q", **{"x-max-priority": 0})
    for body, priority in [("a", 0), ("b", 9), ("c", 3)]:
        b.publish("q", body, priority=priority)
    assert bodies(q) == [b"a", b"b", b"c"]


def test_no_max_priority_ignores_message_priority(b: Broker) -> None:
    q = b.queue("q")
    b.publish("q", "a", priority=1)
    b.publish("q", "b", priority=9)
    assert bodies(q) == [b"a", b"b"]


def test_priority_queue_with_ttl_expires_anywhere(b: Broker) -> None:
    q = b.queue("q", **{"x-max-priority": 5})
    b.publish("q", "hi-long", priority=5, expiration="10000")
    b.publish("q", "hi-short", priority=5, expiration="1000")
    b.publish("q", "lo", priority=1)
    b.advance(1)
    assert q.message_count == 2
    assert bodies(q) == [b"hi-long", b"lo"]


def test_priority_queue_max_length_drops_highest_priority_head(b: Broker) -> None:
    """drop-head drops the message that would be delivered next (RabbitMQ's priority queue does the same)."""
    q = b.queue("q", **{"x-max-priority": 5, "x-max-length": 2})
    b.publish("q", "lo", priority=1)
    b.publish("q", "hi", priority=5)
    b.publish("q", "mid", priority=3)
    assert q.message_count == 2
    assert bodies(q) == [b"mid", b"lo"]


# -- single active consumer ---------------------------------------------------------------------------------


def test_single_active_consumer_only_first_gets_messages(b: Broker) -> None:
    q = b.queue("q", **{"x-single-active-consumer": True})
    first, second = StandInConsumer("first"), StandInConsumer("second", priority=10)
    q.add_consumer(first)
    q.add_consumer(second)
    for i in range(5):
        b.publish("q", str(i))
    b.run()
    assert first.bodies() == [b"0", b"1", b"2", b"3", b"4"]
    assert second.received == []


def test_single_active_consumer_does_not_fall_back_when_active_has_no_credit(b: Broker) -> None:
    q = b.queue("q", **{"x-single-active-consumer": True})
    first, second = StandInConsumer("first", credit=1), StandInConsumer("second")
    q.add_consumer(first)
    q.add_consumer(second)
    for i in range(3):
        b.publish("q", str(i))
    b.run()
    assert first.bodies() == [b"0"]
    assert second.received == []
    assert q.message_count == 2


def test_single_active_consumer_next_takes_over_when_removed(b: Broker) -> None:
    q = b.queue("q", **{"x-single-active-consumer": True})
    first, second, third = (StandInConsumer(t) for t in ("first", "second", "third"))
    for c in (first, second, third):
        q.add_consumer(c)
    b.publish("q", "1")
    b.run()
    q.remove_consumer(first)
    b.publish("q", "2")
    b.run()
    q.remove_consumer(second)
    b.publish("q", "3")
    b.run()
    assert (first.bodies(), second.bodies(), third.bodies()) == ([b"1"], [b"2"], [b"3"])


def test_single_active_consumer_takeover_delivers_waiting_messages(b: Broker) -> None:
    q = b.queue("q", **{"x-single-active-consumer": True})
    first, second = StandInConsumer("first", credit=0), StandInConsumer("second")
    q.add_consumer(first)
    q.add_consumer(second)
    b.publish("q", "a")
    b.publish("q", "b")
    b.run()
    assert second.received == []
    q.remove_consumer(first)
    b.run()
    assert second.bodies() == [b"a", b"b"]


def test_without_single_active_consumer_round_robin(b: Broker) -> None:
    q = b.queue("q")
    first, second = StandInConsumer("first"), StandInConsumer("second")
    q.add_consumer(first)
    q.add_consumer(second)
    for i in range(4):
        b.publish("q", str(i))
    b.run()
    assert len(first.received) == 2 and len(second.received) == 2


# -- delivery limit -----------------------------------------------------------------------------------------


def test_delivery_count_header_on_redelivered_copies(b: Broker) -> None:
    q = b.queue("q", **{"x-delivery-limit": 5})
    b.publish("q", "x", headers={"app": "kept"})
    first = q.get(no_ack=False)
    assert first is not None
    assert "x-delivery-count" not in (first.message.headers or {})
    q.requeue([first])
    second = q.get(no_ack=False)
    assert second is not None
    assert second.redelivered
    assert second.message.headers == {"app": "kept", "x-delivery-count": 1}
    q.requeue([second])
    third = q.get(no_ack=False)
    assert third is not None
    assert (third.message.headers or {})["x-delivery-count"] == 2


def test_delivery_limit_allows_exactly_n_requeues(b: Broker) -> None:
    q = b.queue("q", **{"x-delivery-limit": 3})
    b.publish("q", "x")
    for _ in range(3):
        entry = q.get(no_ack=False)
        assert entry is not None
        q.requeue([entry])
        assert q.message_count == 1
    entry = q.get(no_ack=False)
    assert entry is not None
    q.requeue([entry])
    assert q.message_count == 0
    assert q.unacked == 0


def test_delivery_limit_zero_dead_letters_on_first_requeue(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-delivery-limit": 0, "x-dead-letter-exchange": "dlx"})
    b.publish("q", "x")
    c = StandInConsumer("c")
    q.add_consumer(c)
    b.run()
    q.requeue(c.received)
    assert q.message_count == 0
    assert deaths_of(only(dlq))[0]["reason"] == "delivery_limit"


def test_delivery_limit_only_poisons_the_overused_message(b: Broker, dlq: Queue) -> None:
    q = b.queue("q", **{"x-delivery-limit": 1, "x-dead-letter-exchange": "dlx"})
    b.publish("q", "old")
    old = q.get(no_ack=False)
    assert old is not None
    q.requeue([old])
    b.publish("q", "new")
    again = q.get(no_ack=False)
    fresh = q.get(no_ack=False)
    assert again is not None and fresh is not None
    assert (again.message.body, fresh.message.body) == (b"old", b"new")
    q.requeue([again, fresh])
    assert q.unacked == 0
    assert [d.message.body for d in drain(dlq)] == [b"old"]
    assert bodies(q) == [b"new"]


def test_without_delivery_limit_requeue_adds_no_header(b: Broker) -> None:
    q = b.queue("q")
    b.publish("q", "x")
    for _ in range(3):
        entry = q.get(no_ack=False)
        assert entry is not None
        q.requeue([entry])
    entry = q.get(no_ack=False)
    assert entry is not None and entry.redelivered
    assert entry.message.headers is None


# -- x-expires ----------------------------------------------------------------------------------------------


def test_unused_queue_is_deleted_after_expires(b: Broker) -> None:
    q = b.queue("q", **{"x-expires": 1000})
    b.advance(0.999)
    assert "q" in b.vhost.queues
    b.advance(0.001)
    assert "q" not in b.vhost.queues
    assert q.deleted


def test_expires_deletes_queue_with_messages_and_bindings(b: Broker) -> None:
    b.exchange("x", "direct")
    q = b.queue("q", **{"x-expires": 1000})
    b.bind("q", "x", "k")
    b.publish("k", "m", exchange="x")  # a publish is not use
    b.advance(1)
    assert "q" not in b.vhost.queues
    assert q.deleted
    assert b.publish("k", "m", exchange="x") == []


def test_get_restarts_expires_countdown(b: Broker) -> None:
    q = b.queue("q", **{"x-expires": 1000})
    b.advance(0.8)
    assert q.get(no_ack=True) is None
    b.advance(0.8)
    assert "q" in b.vhost.queues
    b.advance(0.2)
    assert "q" not in b.vhost.queues


def test_redeclare_restarts_expires_countdown(b: Broker) -> None:
    b.queue("q", **{"x-expires": 1000})
    b.advance(0.8)
    b.queue("q", **{"x-expires": 1000})
    b.advance(0.8)
    assert "q" in b.vhost.queues
    b.vhost.declare_queue("q", None, passive=True)
    b.advance(0.8)
    assert "q" in b.vhost.queues
    b.advance(0.2)
    assert "q" not in b.vhost.queues


def test_consumer_stops_expires_and_removal_restarts_it(b: Broker) -> None:
    q = b.queue("q", **{"x-expires": 1000})
    b.advance(0.5)
    c1, c2 = StandInConsumer("c1"), StandInConsumer("c2")
    q.add_consumer(c1)
    q.add_consumer(c2)
    b.advance(10)
    assert "q" in b.vhost.queues
    q.remove_consumer(c1)
    b.advance(10)
    assert "q" in b.vhost.queues  # still one consumer
    q.remove_consumer(c2)
    b.advance(0.999)
    assert "q" in b.vhost.queues
    b.advance(0.001)
    assert "q" not in b.vhost.queues
    assert not c2.cancelled


def test_deleted_queue_leaves_no_timers(b: Broker) -> None:
    b.queue("q", **{"x-expires": 1000, "x-message-ttl": 5000})
    b.publish("q", "x")
    b.vhost.delete_queue("q", None)
    assert b.clock.pending == 0


# -- argument validation ------------------------------------------------------------------------------------

WHAT = "queue 'q' in vhost '/'"


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        ({"x-message-ttl": -1}, f"invalid arg 'x-message-ttl' for {WHAT}: {{value_negative,-1}}"),
        ({"x-message-ttl": "10"}, f"invalid arg 'x-message-ttl' for {WHAT}: \"expected integer, got longstr\""),
        ({"x-message-ttl": 1.5}, f"invalid arg 'x-message-ttl' for {WHAT}: \"expected integer, got double\""),
        ({"x-expires": 0}, f"invalid arg 'x-expires' for {WHAT}: {{value_zero,0}}"),
        ({"x-max-length": -5}, f"invalid arg 'x-max-length' for {WHAT}: {{value_negative,-5}}"),
        ({"x-max-length-bytes": True}, f"invalid arg 'x-max-length-bytes' for {WHAT}: \"expected integer, got bool\""),
        ({"x-overflow": "drop-tail"}, f"invalid arg 'x-overflow' for {WHAT}: invalid_overflow"),
        ({"x-max-priority": 256}, f"invalid arg 'x-max-priority' for {WHAT}: {{max_value_exceeded,256}}"),
        (
            {"x-single-active-consumer": 1},
            f"invalid arg 'x-single-active-consumer' for {WHAT}: {{unacceptable_type,signedint}}",
        ),
        ({"x-dead-letter-exchange": 5}, f"invalid type 'signedint' for arg 'x-dead-letter-exchange' in {WHAT}"),
        (
            {"x-dead-letter-routing-key": "k"},
            f"invalid arg 'x-dead-letter-routing-key' for {WHAT}: routing_key_but_no_dlx_defined",
        ),
        ({"x-delivery-limit": -1}, f"invalid arg 'x-delivery-limit' for {WHAT}: {{value_negative,-1}}"),
    ],
)
def test_invalid_arguments_are_refused(b: Broker, arguments: dict[str, Any], text: str) -> None:
    with pytest.raises(PreconditionFailed) as direct:
        validate_arguments(arguments, WHAT)
    assert str(direct.value) == text
    with pytest.raises(PreconditionFailed) as declared:
        b.vhost.declare_queue("q", None, arguments=arguments)
    assert str(declared.value) == text
    assert "q" not in b.vhost.queues


def test_unknown_x_arguments_are_accepted_and_kept(b: Broker) -> None:
    arguments = {"x-queue-mode": "lazy", "x-made-up": [1, 2], "plain": "value"}
    q = b.vhost.declare_queue("q", None, arguments=arguments)
    assert q.arguments == arguments
    b.publish("q", "x")
    assert bodies(q) == [b"x"]


def test_valid_boundary_arguments_are_accepted(b: Broker) -> None:
    validate_arguments(
        {
            "x-message-ttl": 0,
            "x-max-length": 0,
            "x-max-length-bytes": 0,
            "x-max-priority": 255,
            "x-expires": 1,
            "x-delivery-limit": 0,
            "x-single-active-consumer": False,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "",
            "x-overflow": "reject-publish-dlx",
        },
        WHAT,
    )


# -- policies -----------------------------------------------------------------------------------------------


def test_policy_message_ttl_applies_to_existing_and_new_queues(b: Broker) -> None:
    existing = b.queue("ttl.one")
    b.vhost.set_policies([{"name": "p", "pattern": "^ttl\\.", "definition": {"message-ttl": 1000}}])
    created = b.queue("ttl.two")
    other = b.queue("plain")
    for name in ("ttl.one", "ttl.two", "plain"):
        b.publish(name, "x")
    b.advance(1)
    assert (existing.message_count, created.message_count, other.message_count) == (0, 0, 1)


def test_policy_max_length_applies_to_new_messages(b: Broker) -> None:
    q = b.queue("limited")
    b.vhost.set_policies([{"name": "p", "pattern": "^limited$", "definition": {"max-length": 2}}])
    for i in range(5):
        b.publish("limited", str(i))
    assert bodies(q) == [b"3", b"4"]


def test_policy_max_length_trims_an_existing_backlog(b: Broker) -> None:
    """RabbitMQ drops the excess head at once when a max-length policy starts to apply."""
    q = b.queue("limited")
    for i in range(5):
        b.publish("limited", str(i))
    b.vhost.set_policies([{"name": "p", "pattern": "^limited$", "definition": {"max-length": 2}}])
    assert q.message_count == 2
    assert bodies(q) == [b"3", b"4"]


def test_policy_dead_letter_exchange(b: Broker, dlq: Queue) -> None:
    b.vhost.set_policies(
        [
            {
                "name": "p",
                "pattern": ".*",
                "apply-to": "queues",
                "definition": {"dead-letter-exchange": "dlx", "message-ttl": 100},
            }
        ]
    )
    q = b.queue("q")
    b.publish("q", "x")
    b.advance(0.1)
    assert q.message_count == 0
    assert deaths_of(only(dlq))[0]["reason"] == "expired"


def test_queue_arguments_win_over_policy(b: Broker) -> None:
    b.vhost.set_policies([{"name": "p", "pattern": ".*", "definition": {"max-length": 1, "message-ttl": 1000}}])
    q = b.queue("q", **{"x-max-length": 3})
    for i in range(5):
        b.publish("q", str(i))
    assert q.message_count == 3
    b.advance(1)  # the policy's TTL still applies: only max-length was overridden
    assert q.message_count == 0


def test_highest_priority_policy_wins(b: Broker) -> None:
    b.vhost.set_policies(
        [
            {"name": "low", "pattern": ".*", "priority": 1, "definition": {"max-length": 1}},
            {"name": "high", "pattern": "^q", "priority": 5, "definition": {"max-length": 3}},
            {"name": "mid", "pattern": "q$", "priority": 2, "definition": {"max-length": 2}},
        ]
    )
    q = b.queue("q")
    for i in range(5):
        b.publish("q", str(i))
    assert q.message_count == 3


def test_policy_for_exchanges_does_not_apply_to_queues(b: Broker) -> None:
    b.vhost.set_policies([{"name": "p", "pattern": ".*", "apply-to": "exchanges", "definition": {"max-length": 1}}])
    q = b.queue("q")
    for i in range(3):
        b.publish("q", str(i))
    assert q.message_count == 3


def test_policy_of_another_vhost_does_not_apply(b: Broker) -> None:
    b.vhost.set_policies([{"name": "p", "vhost": "other", "pattern": ".*", "definition": {"max-length": 1}}])
    q = b.queue("q")
    for i in range(3):
        b.publish("q", str(i))
    assert q.message_count == 3


def test_removing_policy_lifts_its_limits(b: Broker) -> None:
    q = b.queue("q")
    b.vhost.set_policies([{"name": "p", "pattern": ".*", "definition": {"max-length": 1}}])
    b.vhost.set_policies([])
    for i in range(3):
        b.publish("q", str(i))
    assert q.message_count == 3


def test_policy_expires_deletes_unused_queue(b: Broker) -> None:
    b.queue("q")
    b.vhost.set_policies([{"name": "p", "pattern": ".*", "definition": {"expires": 500}}])
    b.advance(0.5)
    assert "q" not in b.vhost.queues


# -- alternate exchange -------------------------------------------------------------------------------------


def test_unroutable_message_goes_to_alternate_exchange(b: Broker) -> None:
    b.exchange("ae", "fanout")
    unrouted = b.queue("unrouted")
    b.bind("unrouted", "ae")
    b.exchange("main", "direct", **{"alternate-exchange": "ae"})
    routed = b.queue("routed")
    b.bind("routed", "main", "k")
    assert b.publish("k", "hit", exchange="main") == [routed]
    assert b.publish("other", "miss", exchange="main") == [unrouted]
    entry = only(unrouted)
    assert (entry.message.body, entry.message.routing_key, entry.message.exchange) == (b"miss", "other", "main")
    assert bodies(routed) == [b"hit"]


def test_alternate_exchange_chain(b: Broker) -> None:
    b.exchange("ae2", "fanout")
    end = b.queue("end")
    b.bind("end", "ae2")
    b.exchange("ae1", "direct", **{"alternate-exchange": "ae2"})
    b.exchange("main", "direct", **{"alternate-exchange": "ae1"})
    assert b.publish("k", "x", exchange="main") == [end]


def test_alternate_exchange_cycle_stops(b: Broker) -> None:
    b.exchange("ae1", "direct", **{"alternate-exchange": "ae2"})
    b.exchange("ae2", "direct", **{"alternate-exchange": "ae1"})
    b.exchange("main", "direct", **{"alternate-exchange": "ae1"})
    assert b.publish("k", "x", exchange="main") == []
    b.exchange("self", "direct", **{"alternate-exchange": "self"})
    assert b.publish("k", "x", exchange="self") == []


def test_missing_alternate_exchange_is_ignored(b: Broker) -> None:
    b.exchange("main", "direct", **{"alternate-exchange": "not-there"})
    assert b.publish("k", "x", exchange="main") == []


def test_alternate_exchange_of_an_exchange_reached_by_binding(b: Broker) -> None:
    b.exchange("ae", "fanout")
    caught = b.queue("caught")
    b.bind("caught", "ae")
    b.exchange("inner", "direct", **{"alternate-exchange": "ae"})
    b.exchange("outer", "fanout")
    b.vhost.bind_exchange("inner", "outer", "", None)
    assert b.publish("k", "x", exchange="outer") == [caught]


def test_alternate_exchange_not_used_when_routed(b: Broker) -> None:
    b.exchange("ae", "fanout")
    caught = b.queue("caught")
    b.bind("caught", "ae")
    b.exchange("main", "topic", **{"alternate-exchange": "ae"})
    hit = b.queue("hit")
    b.bind("hit", "main", "a.*")
    assert b.publish("a.b", "x", exchange="main") == [hit]
    assert caught.message_count == 0


# -- CC / BCC -----------------------------------------------------------------------------------------------


def test_cc_routes_copies_and_is_kept(b: Broker) -> None:
    qs = [b.queue(name) for name in ("main", "cc1", "cc2")]
    got = b.publish("main", "x", headers={"CC": ["cc1", "cc2", "missing"], "app": 1})
    assert set(got) == set(qs)
    for q in qs:
        entry = only(q)
        assert entry.message.headers == {"CC": ["cc1", "cc2", "missing"], "app": 1}
        assert entry.message.routing_key == "main"


def test_bcc_routes_copies_and_is_removed(b: Broker) -> None:
    main, hidden, seen = b.queue("main"), b.queue("hidden"), b.queue("seen")
    got = b.publish("main", "x", headers={"BCC": ["hidden"], "CC": ["seen"]})
    assert set(got) == {main, hidden, seen}
    for q in (main, hidden, seen):
        assert only(q).message.headers == {"CC": ["seen"]}


def test_cc_through_a_topic_exchange_each_queue_once(b: Broker) -> None:
    b.exchange("t", "topic")
    q1, q2 = b.queue("q1"), b.queue("q2")
    b.bind("q1", "t", "a.#")
    b.bind("q2", "t", "b.#")
    got = b.publish("a.1", "x", exchange="t", headers={"CC": ["a.2", "b.1"], "BCC": ["b.2"]})
    assert set(got) == {q1, q2}
    assert (q1.message_count, q2.message_count) == (1, 1)


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        ({"CC": "k"}, 'invalid message: {unacceptable_type_in_header,"CC",longstr}'),
        ({"BCC": 5}, 'invalid message: {unacceptable_type_in_header,"BCC",signedint}'),
    ],
)
def test_cc_bcc_of_wrong_type_is_refused(b: Broker, headers: dict[str, Any], text: str) -> None:
    q = b.queue("q")
    with pytest.raises(PreconditionFailed) as refused:
        b.publish("q", "x", headers=headers)
    assert str(refused.value) == text
    assert q.message_count == 0


def test_alternate_exchange_from_a_policy_and_the_argument_wins(b: Broker) -> None:
    b.exchange("ae-policy", "fanout")
    b.exchange("ae-arg", "fanout")
    by_policy, by_arg = b.queue("by-policy"), b.queue("by-arg")
    b.bind("by-policy", "ae-policy")
    b.bind("by-arg", "ae-arg")
    b.exchange("plain", "direct")
    b.exchange("explicit", "direct", **{"alternate-exchange": "ae-arg"})
    b.vhost.set_policies([{"vhost": "/", "name": "ae", "pattern": "^(plain|explicit)$", "apply-to": "exchanges",
                           "definition": {"alternate-exchange": "ae-policy"}, "priority": 0}])
    assert b.publish("k", "x", exchange="plain") == [by_policy]
    assert b.publish("k", "x", exchange="explicit") == [by_arg]
