"""The classic queue: ready messages, unacked accounting, consumers served round-robin.

Theory of operation
-------------------
``ready`` holds the messages waiting for a consumer, ordered by ``seq`` (their enqueue order).
A message handed to a consumer that must ack leaves ``ready`` and is counted in ``unacked``; the
consumer's front-end remembers it and later calls ``ack`` (gone for good) or ``requeue`` (back into
``ready`` at its original position, ahead of newer messages, with ``redelivered`` set).

Consumers are served by priority (``x-priority``, default 0): a lower-priority consumer gets a
message only when every higher-priority one is out of credit; equals share round-robin.

Delivery is a *pump*: a callback scheduled once (``schedule`` is the event loop's ``call_soon`` in
the server, a plain list in unit tests) whenever there may be work — a publish, a new consumer,
credit coming back. One pump run delivers up to ``PUMP_BUDGET`` messages round-robin among the
consumers that have credit, then reschedules itself if work remains, so one busy queue cannot starve
the event loop and no message ever gets a task or a future of its own.

Invariants
----------
* ``ready`` is sorted by ``seq``; ``requeue`` keeps it so.
* ``unacked`` equals the number of delivered, not yet settled messages (no-ack deliveries excluded).
* At most one pump is scheduled at a time (``_pump_scheduled``).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from conveyor.core.consumer import Consumer
from conveyor.core.errors import AccessRefused, NotFound
from conveyor.core.message import Message, QueuedMessage

PUMP_BUDGET = 256


class Queue:
    TYPE = "classic"

    def __init__(
        self,
        name: str,
        vhost_name: str = "/",
        *,
        durable: bool = False,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        schedule: Callable[[Callable[[], None]], Any] = lambda fn: fn(),
        on_unused: Callable[[Queue], None] | None = None,
    ) -> None:
        self.name = name
        self.vhost_name = vhost_name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.ready: deque[QueuedMessage] = deque()
        self.unacked = 0
        self.consumers: list[Consumer] = []
        self.deleted = False
        self._schedule = schedule
        self._on_unused = on_unused  # auto-delete hook: called when the last consumer leaves
        self._had_consumer = False
        self._pump_scheduled = False
        self._rr = 0
        self._seq = 0

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, ready={len(self.ready)}, unacked={self.unacked})"

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        """Messages ready for delivery (AMQP's message-count excludes unacked ones)."""
        return len(self.ready)

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def describe(self) -> str:
        return f"queue '{self.name}' in vhost '{self.vhost_name}'"

    # -- messages in ---------------------------------------------------------------------------

    def push(self, message: Message) -> None:
        self._seq += 1
        self.ready.append(QueuedMessage(message, self, self._seq))
        if self.consumers and not self._pump_scheduled:
            self._pump_scheduled = True
            self._schedule(self._pump)

    # -- messages out --------------------------------------------------------------------------

    def get(self, no_ack: bool) -> QueuedMessage | None:
        """basic.get: take the head message, or None when nothing is ready."""
        if not self.ready:
            return None
        entry = self.ready.popleft()
        entry.delivery_count += 1
        if not no_ack:
            self.unacked += 1
        return entry

    def ack(self, entry: QueuedMessage) -> None:
        """A delivered message was settled for good (ack, or reject/nack without requeue)."""
        self.unacked -= 1

    def requeue(self, entries: Iterable[QueuedMessage]) -> None:
        """Put delivered messages back at their original positions, marked redelivered."""
        back = sorted(entries, key=_seq_of)
        if not back:
            return
        for entry in back:
            entry.redelivered = True
        self.unacked -= len(back)
        if self.deleted:
            return
        ready = self.ready
        if not ready or back[-1].seq < ready[0].seq:
            ready.extendleft(reversed(back))  # the usual case: all requeued are older than all ready
        else:
            self.ready = deque(heapq.merge(back, ready, key=_seq_of))
        self.wake()

    def purge(self) -> int:
        count = len(self.ready)
        self.ready.clear()
        return count

    # -- consumers -----------------------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        if self.deleted:
            raise NotFound(f"no {self.describe()}")
        if self.consumers and (consumer.exclusive or any(c.exclusive for c in self.consumers)):
            raise AccessRefused(f"{self.describe()} in exclusive use")
        # Kept sorted by descending priority (stable: equal priorities keep arrival order).
        index = len(self.consumers)
        while index and self.consumers[index - 1].priority < consumer.priority:
            index -= 1
        self.consumers.insert(index, consumer)
        self._had_consumer = True
        self.wake()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if not self.consumers and self.auto_delete and self._had_consumer and self._on_unused:
            self._on_unused(self)

    def wake(self) -> None:
        """Credit may have come back (an ack, a qos change, a writable transport): deliver again."""
        if self.ready and self.consumers and not self._pump_scheduled:
            self._pump_scheduled = True
            self._schedule(self._pump)

    def _pick(self) -> Consumer | None:
        """The next consumer with credit: highest priority first, round-robin among equals."""
        consumers = self.consumers
        count = len(consumers)
        start = 0
        while start < count:
            priority = consumers[start].priority
            end = start + 1
            while end < count and consumers[end].priority == priority:
                end += 1
            width = end - start
            first = self._rr % width
            for step in range(width):
                consumer = consumers[start + (first + step) % width]
                if consumer.can_deliver():
                    self._rr = first + step + 1
                    return consumer
            start = end
        return None

    def _pump(self) -> None:
        self._pump_scheduled = False
        ready = self.ready
        budget = PUMP_BUDGET
        while ready and budget:
            consumer = self._pick()
            if consumer is None:
                return  # nobody has credit; an ack or qos change calls wake()
            entry = ready.popleft()
            entry.delivery_count += 1
            if not consumer.no_ack:
                self.unacked += 1
            consumer.deliver(entry)
            budget -= 1
        if ready and self.consumers and not budget:
            self._pump_scheduled = True
            self._schedule(self._pump)

    # -- end of life ---------------------------------------------------------------------------

    def delete(self) -> int:
        """Mark deleted, tell consumers, drop ready messages; returns how many were dropped."""
        self.deleted = True
        count = len(self.ready)
        self.ready.clear()
        consumers, self.consumers = self.consumers, []
        for consumer in consumers:
            # Told on the next loop turn, as RabbitMQ does: the deleting client gets its delete-ok
            # before any basic.cancel, even when the deleted queue's consumer is on the same channel.
            self._schedule(consumer.cancelled_by_server)
        return count


def _seq_of(entry: QueuedMessage) -> int:
    return entry.seq
