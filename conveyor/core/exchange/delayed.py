"""The ``x-delayed-message`` exchange: RabbitMQ's delayed-message plugin, durable and without a cap.

Declaration (as rabbitmq-delayed-message-exchange validates it)
    The ``x-delayed-type`` argument names the exchange type that routes (direct, fanout, topic,
    headers, or any other registered non-deferring type). Missing or not a string: 406 "Invalid
    argument, 'x-delayed-type' must be an existing exchange type"; "x-delayed-message" itself: 406
    "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'"; a string naming no
    type: 406 "unknown exchange type '<t>'" (the plugin calls ``rabbit_exchange:check_type``, which
    says 406 in current RabbitMQ, 503 in older releases).
    Bindings are validated, indexed and routed by an inner exchange of that type; this class keeps the
    binding registry (base class) and hands every index hook to the inner one.

The ``x-delay`` header (the plugin's ``get_delay``)
    An integer is taken as is; a float or decimal is truncated; a string is parsed as an integer
    (``[+-]?digits``). Anything else, a missing header, or a delay <= 0 means no delay: the message is
    routed at once. The plugin also delivers at once a delay above 2^32-1 ms (Erlang's timer limit,
    ~49.7 days); Conveyor has no cap. A string that is not an integer makes the plugin's channel
    crash; Conveyor delivers it at once instead.

Holding
    One heap of ``(due, seq, handle)`` in RAM, ``due`` in integer milliseconds of the clock's monotonic
    time and ``seq`` the publish order (so messages due in the same millisecond keep it). ``handle``
    is the store Position of a persistent message of a durable exchange (its body is only on disk)
    or the Message itself otherwise. Transient messages do not survive a restart, as transient
    messages never do in Conveyor (the plugin's one-node Mnesia table kept them too).
    The store keeps due times as wall-clock milliseconds, so ``recover`` maps them back onto the
    monotonic clock: what fell due while the broker was down is released at once, in due order.

    One timer at a time, for the earliest due time. When it fires, due messages are released in
    order (``release(self, message)`` routes them through this exchange, i.e. the inner type, with
    the bindings as they are then), at most ``RELEASE_BATCH`` per loop turn; persistent ones are
    deleted from the store after their release. A release that raises (a queue's disk is full) puts
    the message back and retries after ``RETRY_SECONDS``; a retry may duplicate it in queues that
    took it the first time, which at-least-once delivery allows.

    As the plugin does, a held message's ``x-delay`` header becomes ``-delay`` (so that a consumer, or
    another delayed exchange downstream, sees it was delayed and does not delay it again). The header
    is rewritten when the message is taken, through the front-end's properties codec (``decode`` and
    ``encode``); with a decoder that cannot encode, the message keeps its header as published.

Difference from the plugin we accept: a message that reaches this exchange through an
exchange-to-exchange binding is routed without delay (the vhost routes such hops itself).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar, Protocol

from conveyor.core.clock import Clock, Timer
from conveyor.core.errors import PreconditionFailed
from conveyor.core.exchange.base import Destination, Exchange
from conveyor.core.message import Message

__all__ = ["DelayedExchange", "HeldStore", "parse_delay"]

log = logging.getLogger(__name__)

_INTEGER_TEXT = re.compile(rb"[+-]?[0-9]+")


class HeldStore(Protocol):
    """What the exchange needs from its store (conveyor.store.delayed.DelayedStore)."""

    def append(self, message: Message, due_wall_ms: int) -> Any: ...
    def read(self, position: Any) -> Message: ...
    def delete(self, position: Any) -> None: ...
    def scan(self) -> list[tuple[int, Any]]: ...
    def close(self) -> None: ...
    def destroy(self) -> None: ...


def parse_delay(headers: dict[str, Any] | None) -> int | None:
    """The ``x-delay`` header as an integer number of milliseconds, or None when it has no usable value."""
    if not headers:
        return None
    value = headers.get("x-delay")
    if value is None or isinstance(value, bool):  # a bool is no integer in an AMQP table
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (float, Decimal)):
        return math.trunc(value) if math.isfinite(value) else None
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value)
        return int(text) if _INTEGER_TEXT.fullmatch(text) else None
    return None


def _swap_delay_header(message: Message, delay: int) -> Message:
    """The message with ``x-delay`` set to ``-delay``, as the plugin releases it (or as is, if it cannot)."""
    codec = message.decoder
    decode = getattr(codec, "decode", None)
    encode = getattr(codec, "encode", None)
    if decode is None or encode is None:
        return message
    try:
        values = decode(message.properties)
        values["headers"] = {**(values.get("headers") or {}), "x-delay": -delay}
        properties = encode(values)
    except Exception:  # properties the codec cannot round-trip: keep the message as published
        log.debug("cannot rewrite x-delay of a message to exchange %r", message.exchange, exc_info=True)
        return message
    return Message(message.exchange, message.routing_key, properties, message.body, message.persistent, codec)


class DelayedExchange(Exchange):
    TYPE: ClassVar[str] = "x-delayed-message"
    DEFERS: ClassVar[bool] = True
    # NEEDS_HEADERS is set per instance in __init__: that of the inner type.

    RELEASE_BATCH: ClassVar[int] = 1000  # messages released per timer callback (per loop turn)
    RETRY_SECONDS: ClassVar[float] = 1.0  # after a release failed

    __slots__ = ("_clock", "_heap", "_inner", "_release", "_seq", "_store", "_timer", "_timer_due")

    def __init__(
        self,
        name: str,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        from conveyor.core.exchange import EXCHANGE_TYPES  # the registry imports this module

        kind = (arguments or {}).get("x-delayed-type")
        if isinstance(kind, (bytes, bytearray)):
            kind = bytes(kind).decode("utf-8", "surrogateescape")
        if not isinstance(kind, str):
            raise PreconditionFailed("Invalid argument, 'x-delayed-type' must be an existing exchange type")
        if kind == self.TYPE:
            raise PreconditionFailed("Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'")
        cls = EXCHANGE_TYPES.get(kind)
        if cls is None or cls.DEFERS:
            raise PreconditionFailed(f"unknown exchange type '{kind}'")
        # The inner exchange is only an index: bindings are registered here (base class) and each one
        # that really appears or goes is handed to it through the index hooks below.
        self._inner = cls(name, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments)
        super().__init__(name, durable=durable, auto_delete=auto_delete, internal=internal, arguments=arguments)
        self.NEEDS_HEADERS = cls.NEEDS_HEADERS  # type: ignore[misc]  # per instance: the inner type's
        self.route = self._inner.route  # type: ignore[method-assign]  # routing is the inner type's, no extra call
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = itertools.count()
        self._release: Callable[[Exchange, Message], Any] | None = None
        self._clock: Clock | None = None
        self._store: HeldStore | None = None
        self._timer: Timer | None = None
        self._timer_due = 0

    @property
    def delayed_type(self) -> str:
        return self._inner.TYPE

    @property
    def store(self) -> HeldStore | None:
        return self._store

    @property
    def pending(self) -> int:
        """Messages held (in RAM or in the store)."""
        return len(self._heap)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self._inner.TYPE}) pending={len(self._heap)}>"

    # -- bindings: the inner type's rules and index ----------------------------------------------

    def _validate(self, routing_key: str, arguments: dict[str, Any]) -> None:
        self._inner._validate(routing_key, arguments)

    def _index_add(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        self._inner._index_add(destination, routing_key, arguments)

    def _index_remove(self, destination: Destination, routing_key: str, arguments: dict[str, Any]) -> None:
        self._inner._index_remove(destination, routing_key, arguments)

    def route(self, routing_key: str, headers: dict[str, Any] | None, out: set[Destination]) -> None:
        self._inner.route(routing_key, headers, out)  # replaced per instance by the inner's bound method

    # -- holding ---------------------------------------------------------------------------------

    def attach(
        self, release: Callable[[Exchange, Message], Any], clock: Clock, store: HeldStore | None
    ) -> None:
        """Wire the exchange to its vhost: ``release`` routes a message now; ``store`` may be None."""
        self._release = release
        self._clock = clock
        self._store = store

    def defer(self, message: Message) -> list[Any]:
        """Hold ``message`` until its ``x-delay`` has passed, or release it at once if it has none.

        Returns what ``release`` returned when the message went at once (the queues it reached), and
        ``[]`` when it is held - as in RabbitMQ, a held message counts as unroutable for ``mandatory``.
        May raise the store's StoreError (the message was not taken).
        """
        release, clock = self._release, self._clock
        if release is None or clock is None:
            raise RuntimeError(f"{self!r} is not attached to a vhost")
        delay = parse_delay(message.headers)
        if delay is None or delay <= 0:
            reached = release(self, message)
            return reached if reached is not None else []
        due = round(clock.now() * 1000.0) + delay
        message = _swap_delay_header(message, delay)
        store = self._store
        handle: Any = message
        if store is not None and message.persistent:
            handle = store.append(message, round(clock.wall() * 1000.0) + delay)
        heapq.heappush(self._heap, (due, next(self._seq), handle))
        if self._timer is None or due < self._timer_due:
            self._arm()
        return []

    def recover(self) -> int:
        """Index what the store holds (after ``attach``, at broker start) and arm the timer.

        Call it once the queues and bindings are back: overdue messages are released on the next
        timer callback, in due order.
        """
        store, clock = self._store, self._clock
        if clock is None:
            raise RuntimeError(f"{self!r} is not attached to a vhost")
        if store is None:
            return 0
        # One offset for the whole scan, so equal wall due times stay equal (and keep publish order).
        offset = round(clock.now() * 1000.0) - round(clock.wall() * 1000.0)
        entries = store.scan()
        heap = self._heap
        for due_wall, position in entries:
            heap.append((due_wall + offset, next(self._seq), position))
        heapq.heapify(heap)
        self._arm()
        return len(entries)

    def _arm(self) -> None:
        """Have one timer, for the earliest due time (none when nothing is held)."""
        clock = self._clock
        assert clock is not None
        if self._timer is not None:
            if self._heap and self._timer_due == self._heap[0][0]:
                return
            self._timer.cancel()
            self._timer = None
        if self._heap:
            due = self._heap[0][0]
            self._schedule(due, max(due - clock.now() * 1000.0, 0.0) / 1000.0)

    def _schedule(self, due: int, seconds: float) -> None:
        assert self._clock is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._clock.call_later(seconds, self._fire)

    def _fire(self) -> None:
        self._timer = None
        clock, release, store = self._clock, self._release, self._store
        assert clock is not None and release is not None
        heap = self._heap
        # Due times are whole milliseconds; a timer that fires a fraction early still counts as due.
        now = clock.now() * 1000.0 + 0.5
        for _ in range(self.RELEASE_BATCH):
            if not heap or heap[0][0] > now:
                break
            entry = heapq.heappop(heap)
            handle = entry[2]
            stored = not isinstance(handle, Message)
            try:
                if stored:
                    assert store is not None
                    message = store.read(handle)
                else:
                    message = handle
                release(self, message)
            except KeyError:
                log.warning("delayed message at %s in exchange %r is gone from its store", handle, self.name)
                continue
            except Exception:
                log.exception("cannot release a delayed message from exchange %r; retrying", self.name)
                heapq.heappush(heap, entry)
                self._schedule(heap[0][0], self.RETRY_SECONDS)
                return
            if stored:
                assert store is not None
                store.delete(handle)
        if heap and heap[0][0] <= now:
            self._schedule(heap[0][0], 0.0)  # the rest on the next loop turn
        else:
            self._arm()

    # -- end of life -----------------------------------------------------------------------------

    def _drop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()

    def destroy(self) -> None:
        """The exchange was deleted: held messages go, and so do the store's files."""
        self._drop()
        if self._store is not None:
            self._store.destroy()
            self._store = None

    def close(self) -> None:
        """Broker shutdown: stop the timer and close the store (transient held messages are lost)."""
        self._drop()
        if self._store is not None:
            self._store.close()
            self._store = None
