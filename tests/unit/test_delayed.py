"""The x-delayed-message exchange and its store: declaration, holding, release order, restart, no cap.

No vhost, no sockets, no sleeps: a ManualClock moves time, and ``Vhost`` below is a stand-in for the
vhost's ``release`` that routes through the exchange (one hop) and records what it released.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conveyor.core.clock import ManualClock
from conveyor.core.errors import PreconditionFailed
from conveyor.core.exchange import EXCHANGE_TYPES
from conveyor.core.exchange.base import Exchange
from conveyor.core.exchange.delayed import DelayedExchange, parse_delay
from conveyor.core.message import Message
from conveyor.store.api import Position
from conveyor.store.delayed import DelayedStore

DAY = 24 * 3600.0


class Codec:
    """A stand-in for the front-end's properties codec: properties are JSON here."""

    def __call__(self, properties: bytes) -> dict[str, Any] | None:
        return self.decode(properties).get("headers")

    def decode(self, properties: bytes) -> dict[str, Any]:
        return json.loads(properties) if properties else {}

    def encode(self, values: dict[str, Any]) -> bytes:
        return json.dumps(values).encode()


CODEC = Codec()


class Dest:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Dest({self.name})"


class Vhost:
    """Records every release as (exchange, message) and routes it, like VirtualHost.release."""

    def __init__(self) -> None:
        self.released: list[tuple[Exchange, Message]] = []
        self.fail = 0  # the next ``fail`` releases raise

    def release(self, exchange: Exchange, message: Message) -> list[Any]:
        if self.fail:
            self.fail -= 1
            raise OSError("disk full")
        self.released.append((exchange, message))
        out: set[Any] = set()
        exchange.route(message.routing_key, message.headers if exchange.NEEDS_HEADERS else None, out)
        return sorted(out, key=lambda d: d.name)

    @property
    def bodies(self) -> list[bytes]:
        return [m.body for _, m in self.released]


def msg(body: str, delay: Any = None, routing_key: str = "k", persistent: bool = False, **headers: Any) -> Message:
    if delay is not None:
        headers["x-delay"] = delay
    properties = CODEC.encode({"headers": headers}) if headers else b""
    return Message("dx", routing_key, properties, body.encode(), persistent=persistent, decoder=CODEC)


def delayed(kind: str = "direct", name: str = "dx", durable: bool = False) -> DelayedExchange:
    return DelayedExchange(name, durable=durable, arguments={"x-delayed-type": kind})


def setup(
    kind: str = "direct", store: DelayedStore | None = None, clock: ManualClock | None = None
) -> tuple[DelayedExchange, Vhost, ManualClock, Dest]:
    x = delayed(kind, durable=store is not None)
    vhost = Vhost()
    clock = clock or ManualClock()
    x.attach(vhost.release, clock, store)
    q = Dest("q")
    if kind != "headers":
        x.bind(q, "k", {})
    return x, vhost, clock, q


# -- declaration -------------------------------------------------------------------------------------


def test_registered_and_built_from_the_delayed_type() -> None:
    assert EXCHANGE_TYPES["x-delayed-message"] is DelayedExchange
    for kind in ("direct", "fanout", "topic", "headers"):
        x = DelayedExchange("d", durable=True, arguments={"x-delayed-type": kind})
        assert x.TYPE == "x-delayed-message"
        assert x.DEFERS
        assert x.delayed_type == kind
        assert x.NEEDS_HEADERS is (kind == "headers")
        assert x.durable
        assert x.arguments == {"x-delayed-type": kind}
        assert x.pending == 0


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        (None, "Invalid argument, 'x-delayed-type' must be an existing exchange type"),
        ({}, "Invalid argument, 'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": 5}, "Invalid argument, 'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": None}, "Invalid argument, 'x-delayed-type' must be an existing exchange type"),
        ({"x-delayed-type": "nope"}, "unknown exchange type 'nope'"),
        (
            {"x-delayed-type": "x-delayed-message"},
            "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        ),
    ],
)
def test_declare_validates_the_delayed_type(arguments: dict[str, Any] | None, text: str) -> None:
    with pytest.raises(PreconditionFailed) as info:
        DelayedExchange("d", arguments=arguments)
    assert str(info.value) == text


def test_delayed_type_may_come_as_bytes() -> None:
    assert DelayedExchange("d", arguments={"x-delayed-type": b"topic"}).delayed_type == "topic"


def test_bindings_follow_the_delayed_type() -> None:
    x = delayed("topic")
    a, b = Dest("a"), Dest("b")
    assert x.bind(a, "orders.*", {})
    assert not x.bind(a, "orders.*", {})
    x.bind(b, "#", {})
    out: set[Any] = set()
    x.route("orders.new", None, out)
    assert out == {a, b}
    assert x.bindings() == [(a, "orders.*", {}), (b, "#", {})]
    assert x.unbind(a, "orders.*", {})
    assert x.unbind_all(b) == 1
    assert x.is_unused()
    out.clear()
    x.route("orders.new", None, out)
    assert out == set()
    h = delayed("headers")
    with pytest.raises(PreconditionFailed, match="Invalid x-match field value"):
        h.bind(a, "", {"x-match": "some"})


def test_defer_needs_attach() -> None:
    with pytest.raises(RuntimeError, match="not attached"):
        delayed().defer(msg("a", 10))


# -- the x-delay header ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1500, 1500),
        (0, 0),
        (-5, -5),
        (1500.9, 1500),
        ("1500", 1500),
        (b"+20", 20),
        ("-20", -20),
        ("15s", None),
        (" 15", None),
        ("1_000", None),
        (True, None),
        (float("nan"), None),
        ([1], None),
    ],
)
def test_parse_delay(value: Any, expected: int | None) -> None:
    assert parse_delay({"x-delay": value}) == expected


def test_parse_delay_without_header() -> None:
    assert parse_delay(None) is None
    assert parse_delay({}) is None
    assert parse_delay({"x-delay": None}) is None


@pytest.mark.parametrize("delay", [None, 0, -1000, "soon", False])
def test_no_positive_delay_is_released_at_once(delay: Any) -> None:
    x, vhost, clock, q = setup()
    reached = x.defer(msg("now", delay))
    assert reached == [q]  # what release returned: the publisher's queues (mandatory, confirms)
    assert vhost.released == [(x, vhost.released[0][1])]
    assert vhost.bodies == [b"now"]
    assert x.pending == 0
    assert clock.pending == 0


def test_no_headers_at_all_is_released_at_once() -> None:
    x, vhost, _, _ = setup()
    x.defer(Message("dx", "k", b"", b"plain"))
    assert vhost.bodies == [b"plain"]


# -- holding and release ------------------------------------------------------------------------------


def test_held_until_due_then_released_in_due_order() -> None:
    x, vhost, clock, _ = setup()
    assert x.defer(msg("c", 3000)) == []  # held: counts as unroutable now, as with the plugin
    x.defer(msg("a", 1000))
    x.defer(msg("b", "2000"))
    assert x.pending == 3
    assert clock.pending == 1  # one timer, whatever the number of held messages
    clock.advance(0.999)
    assert vhost.released == []
    clock.advance(0.001)
    assert vhost.bodies == [b"a"]
    clock.advance(1.0)
    assert vhost.bodies == [b"a", b"b"]
    clock.advance(0.5)
    assert vhost.bodies == [b"a", b"b"]
    clock.advance(0.5)
    assert vhost.bodies == [b"a", b"b", b"c"]
    assert all(exchange is x for exchange, _ in vhost.released)
    assert x.pending == 0
    assert clock.pending == 0


def test_same_due_time_keeps_publish_order() -> None:
    x, vhost, clock, _ = setup()
    for i in range(5):
        x.defer(msg(f"m{i}", 2000))
    x.defer(msg("late", 3000))
    clock.advance(1.0)
    x.defer(msg("m5", 1000))  # due at the same time as m0..m4, published after them
    x.defer(msg("m6", 1000.4))  # truncated to 1000 ms, as the plugin does
    clock.advance(1.0)
    assert vhost.bodies == [f"m{i}".encode() for i in range(7)]
    clock.advance(1.0)
    assert vhost.bodies[-1] == b"late"


def test_earlier_message_rearms_the_single_timer() -> None:
    x, vhost, clock, _ = setup()
    x.defer(msg("late", 10_000))
    x.defer(msg("early", 100))
    assert clock.pending == 1
    clock.advance(0.1)
    assert vhost.bodies == [b"early"]
    assert clock.pending == 1
    clock.advance(9.9)
    assert vhost.bodies == [b"early", b"late"]


def test_routed_with_the_bindings_at_release_time() -> None:
    x, vhost, clock, q = setup("fanout")
    other = Dest("other")
    x.defer(msg("m", 1000))
    x.unbind(q, "k", {})
    x.bind(other, "", {})
    clock.advance(1.0)
    assert vhost.bodies == [b"m"]
    out: set[Any] = set()
    x.route("k", None, out)
    assert out == {other}


def test_released_message_carries_negative_x_delay() -> None:
    x, vhost, clock, _ = setup()
    x.defer(msg("m", "1500", app="v"))
    clock.advance(1.5)
    (_, released), = vhost.released
    assert released.headers == {"app": "v", "x-delay": -1500}
    assert parse_delay(released.headers) == -1500  # a second delayed exchange would not hold it again
    assert released.body == b"m"


def test_message_without_encoding_codec_keeps_its_header() -> None:
    x, vhost, clock, _ = setup()
    plain = Message("dx", "k", b"h", b"m", decoder=lambda _p: {"x-delay": 10})
    x.defer(plain)
    clock.advance(0.01)
    assert vhost.released[0][1] is plain


def test_headers_typed_exchange_routes_by_headers() -> None:
    x, vhost, clock, _ = setup("headers")
    red, blue = Dest("red"), Dest("blue")
    x.bind(red, "", {"x-match": "all", "colour": "red"})
    x.bind(blue, "", {"x-match": "any", "colour": "blue", "shade": "navy"})
    x.defer(msg("r", 500, colour="red"))
    x.defer(msg("b", 500, colour="blue"))
    x.defer(msg("n", 500, colour="green"))
    assert x.NEEDS_HEADERS
    clock.advance(0.5)
    routed = {m.body: vhost.release(x, m) for _, m in list(vhost.released)}
    assert routed == {b"r": [red], b"b": [blue], b"n": []}


def test_sixty_days_is_no_cap() -> None:
    x, vhost, clock, _ = setup()
    sixty_days_ms = 60 * 24 * 3600 * 1000  # more than Erlang's 2^32-1 ms timer limit of the plugin
    assert sixty_days_ms > 2**32 - 1
    x.defer(msg("far", sixty_days_ms))
    x.defer(msg("near", 1000))
    clock.advance(59 * DAY)
    assert vhost.bodies == [b"near"]
    clock.advance(DAY - 0.001)
    assert vhost.bodies == [b"near"]
    clock.advance(0.001)
    assert vhost.bodies == [b"near", b"far"]


def test_release_failure_is_retried() -> None:
    x, vhost, clock, _ = setup()
    x.defer(msg("a", 100))
    x.defer(msg("b", 100))
    vhost.fail = 1
    clock.advance(0.1)
    assert vhost.released == []
    assert x.pending == 2
    clock.advance(DelayedExchange.RETRY_SECONDS)
    assert vhost.bodies == [b"a", b"b"]
    assert x.pending == 0


def test_release_is_batched_per_timer_callback() -> None:
    x, vhost, clock, _ = setup()
    x.RELEASE_BATCH = 3  # type: ignore[misc]
    for i in range(10):
        x.defer(msg(f"m{i}", 100))
    clock.advance(0.1)  # the follow-up callbacks are due at once, so advance runs them too
    assert vhost.bodies == [f"m{i}".encode() for i in range(10)]


def test_release_may_defer_again() -> None:
    x, vhost, clock, _ = setup()

    def release(exchange: Exchange, message: Message) -> list[Any]:
        reached = vhost.release(exchange, message)
        if message.body == b"first":
            x.defer(msg("second", 250))  # a consumer publishing from inside the release
        return reached

    x.attach(release, clock, None)
    x.defer(msg("first", 250))
    x.defer(msg("other", 1000))
    clock.advance(0.25)
    assert vhost.bodies == [b"first"]
    clock.advance(0.25)
    assert vhost.bodies == [b"first", b"second"]
    assert clock.pending == 1
    clock.advance(0.5)
    assert vhost.bodies == [b"first", b"second", b"other"]


def test_destroy_drops_held_messages_and_timer() -> None:
    x, vhost, clock, _ = setup()
    x.defer(msg("a", 100))
    x.destroy()
    assert x.pending == 0
    assert clock.pending == 0
    clock.advance(1.0)
    assert vhost.released == []


# -- durability --------------------------------------------------------------------------------------


def open_store(path: Path, **kwargs: Any) -> DelayedStore:
    return DelayedStore(path / "dx", decoder=CODEC, **kwargs)


def test_persistent_messages_wait_in_the_store_not_in_ram(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    x, vhost, clock, _ = setup(store=store)
    x.defer(msg("p", 1000, persistent=True))
    x.defer(msg("t", 1000, persistent=False))
    assert store.count == 1
    handles = [entry[2] for entry in sorted(x._heap)]
    assert isinstance(handles[0], Position)  # the body is on disk only
    assert isinstance(handles[1], Message)  # transient: RAM only, as in RabbitMQ
    clock.advance(1.0)
    assert vhost.bodies == [b"p", b"t"]
    released = vhost.released[0][1]
    assert released.persistent
    assert released.headers == {"x-delay": -1000}
    assert store.count == 0  # deleted once released
    x.close()


def test_non_delayed_persistent_message_never_touches_the_store(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    x, vhost, _, _ = setup(store=store)
    x.defer(msg("p", None, persistent=True))
    assert vhost.bodies == [b"p"]
    assert store.count == 0
    x.close()


def test_restart_keeps_the_schedule(tmp_path: Path) -> None:
    clock = ManualClock(start=1000.0, wall_start=1_700_000_000.0)
    x, vhost, clock, _ = setup(store=open_store(tmp_path), clock=clock)
    x.defer(msg("b-10s", 10_000, persistent=True))
    x.defer(msg("a-5s", 5_000, persistent=True))
    x.defer(msg("c-10s", 10_000, persistent=True))  # same due as b: stays after it
    x.defer(msg("d-60s", 60_000, persistent=True))
    x.defer(msg("transient", 1_000))
    x.close()
    assert clock.pending == 0

    # 30 s later (wall clock); the new process has its own monotonic clock.
    clock2 = ManualClock(start=5.0, wall_start=1_700_000_030.0)
    x2, vhost2, _, _ = setup(store=open_store(tmp_path), clock=clock2)
    assert x2.recover() == 4
    assert x2.pending == 4
    assert vhost2.released == []  # never from inside recover: the broker may not be ready yet
    clock2.advance(0)
    assert vhost2.bodies == [b"a-5s", b"b-10s", b"c-10s"]  # overdue: at once, in due order
    assert all(exchange is x2 for exchange, _ in vhost2.released)
    clock2.advance(29.5)  # binary fractions: ManualClock sums floats
    assert vhost2.bodies == [b"a-5s", b"b-10s", b"c-10s"]
    clock2.advance(0.5)
    assert vhost2.bodies == [b"a-5s", b"b-10s", b"c-10s", b"d-60s"]
    assert vhost.released == []
    x2.close()

    x3, _, _, _ = setup(store=open_store(tmp_path), clock=ManualClock())
    assert x3.recover() == 0  # released messages do not come back
    x3.close()


def test_restart_before_due_keeps_publish_order_for_equal_dues(tmp_path: Path) -> None:
    clock = ManualClock(start=1000.0, wall_start=1_700_000_000.0)
    x, _, _, _ = setup(store=open_store(tmp_path, segment_size=300), clock=clock)  # rolls over segments
    for i in range(12):
        x.defer(msg(f"m{i:02}", 60_000, persistent=True))
    x.close()
    clock2 = ManualClock(start=50.0, wall_start=1_700_000_010.0)
    x2, vhost2, _, _ = setup(store=open_store(tmp_path, segment_size=300), clock=clock2)
    assert x2.recover() == 12
    clock2.advance(49.999)
    assert vhost2.released == []
    clock2.advance(0.001)
    assert vhost2.bodies == [f"m{i:02}".encode() for i in range(12)]
    x2.close()


def test_destroy_removes_the_store_files(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    x, vhost, clock, _ = setup(store=store)
    x.defer(msg("p", 1000, persistent=True))
    assert any((tmp_path / "dx").iterdir())
    x.destroy()
    assert not (tmp_path / "dx").exists()
    assert x.pending == 0
    clock.advance(1.0)
    assert vhost.released == []


def test_recover_without_store_is_empty() -> None:
    x, _, _, _ = setup()
    assert x.recover() == 0


# -- the store on its own ----------------------------------------------------------------------------


def test_store_round_trip_scan_and_delete(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_size=300)
    original = msg("hello", 5, persistent=True, app="v")
    positions = [store.append(original, 1_700_000_000_000 + i) for i in range(6)]
    assert positions == sorted(positions)
    assert len({p.segment for p in positions}) > 1
    back = store.read(positions[2])
    assert (back.exchange, back.routing_key, back.properties, back.body, back.persistent) == (
        original.exchange,
        original.routing_key,
        original.properties,
        original.body,
        True,
    )
    assert back.headers == {"app": "v", "x-delay": 5}
    store.delete(positions[0])
    store.delete(positions[0])  # idempotent
    assert store.scan() == [(1_700_000_000_000 + i, positions[i]) for i in range(1, 6)]
    assert store.count == 5
    store.close()
    reopened = open_store(tmp_path, segment_size=300)
    assert reopened.scan() == [(1_700_000_000_000 + i, positions[i]) for i in range(1, 6)]
    assert json.loads((tmp_path / "dx" / "meta.json").read_text())["kind"] == "x-delayed-message"
    reopened.destroy()
    assert not (tmp_path / "dx").exists()
