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

Durable queues hold a message store (``store``). A persistent message is appended to it when it is
enqueued and deleted from it when it is acked, so a restart finds exactly the messages still owed.
To keep a long backlog off the heap, only a window of ``window`` messages lives in ``ready``; past
that, every new message (transient ones too) goes to the store only and is counted in ``_tail_count``;
``_tail_cursor`` is the position of the oldest such message. The pump and basic.get refill the window
from the store in order as consumers catch up. Non-durable queues have no store and no window.

Invariants
----------
* ``ready`` is sorted by ``seq``; ``requeue`` keeps it so.
* Every message in the tail is newer than every message in ``ready``; while the tail is non-empty,
  new messages join the tail (so FIFO order holds across memory and disk).
* An entry has a ``position`` exactly when its message is in the store.
* ``unacked`` equals the number of delivered, not yet settled messages (no-ack deliveries excluded).
* At most one pump is scheduled at a time (``_pump_scheduled``).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from conveyor.core.consumer import Consumer
from conveyor.core.errors import AccessRefused, NotFound
from conveyor.core.message import Message, QueuedMessage
from conveyor.store.api import Position

if TYPE_CHECKING:
    from conveyor.store.api import MessageStore

PUMP_BUDGET = 256
DEFAULT_WINDOW = 4096  # messages of a durable queue kept in memory; the rest wait in the store
_FIRST = Position(0, 0)  # before every record of a store


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
        store: MessageStore | None = None,
        window: int = DEFAULT_WINDOW,
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
        self.store = store
        self.window = window
        self._tail_count = 0
        self._tail_cursor: Position | None = None

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, ready={len(self.ready)}, unacked={self.unacked})"

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        """Messages ready for delivery (AMQP's message-count excludes unacked ones)."""
        return len(self.ready) + self._tail_count

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def describe(self) -> str:
        return f"queue '{self.name}' in vhost '{self.vhost_name}'"

    # -- messages in ---------------------------------------------------------------------------

    def push(self, message: Message) -> None:
        """Enqueue; raises the store's StoreError if a message that must be written cannot be."""
        store = self.store
        if store is None:
            self._seq += 1
            self.ready.append(QueuedMessage(message, self, self._seq))
        elif self._tail_count or len(self.ready) >= self.window:
            position = store.append(message, message.persistent)
            if not self._tail_count:
                self._tail_cursor = position
            self._tail_count += 1
        else:
            self._seq += 1
            entry = QueuedMessage(message, self, self._seq)
            if message.persistent:
                entry.position = store.append(message)
            self.ready.append(entry)
        if self.consumers and not self._pump_scheduled:
            self._pump_scheduled = True
            self._schedule(self._pump)

    def recover(self) -> int:
        """Take up the messages the store kept across a restart; returns how many."""
        store = self.store
        if store is None:
            return 0
        count = store.recover()  # forgets transient messages, which do not survive a restart
        if count:
            self._tail_count = count
            self._tail_cursor = None  # from the first live record
            self._refill()
        return count

    def _refill(self) -> None:
        """Move the oldest messages of the on-disk tail into memory, up to the window."""
        store = self.store
        wanted = self.window - len(self.ready)
        if store is None or wanted <= 0 or not self._tail_count:
            return
        start = self._tail_cursor
        if start is None:
            start = _FIRST
        loaded = 0
        take = min(wanted, self._tail_count)
        # One record more than taken, when the tail has it: its position is the new cursor.
        for position, message, redelivered in store.read_from(start, take + 1, persistent_only=False):
            if loaded == take:
                self._tail_cursor = position
                break
            self._seq += 1
            entry = QueuedMessage(message, self, self._seq)
            entry.position = position
            entry.redelivered = redelivered
            self.ready.append(entry)
            loaded += 1
        self._tail_count -= loaded
        if not self._tail_count:
            self._tail_cursor = None

    # -- messages out --------------------------------------------------------------------------

    def get(self, no_ack: bool) -> QueuedMessage | None:
        """basic.get: take the head message, or None when nothing is ready."""
        if self._tail_count and len(self.ready) <= self.window // 2:
            self._refill()
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self._handed_out(entry, no_ack)
        return entry

    def _handed_out(self, entry: QueuedMessage, no_ack: bool) -> None:
        entry.delivery_count += 1
        position = entry.position
        if no_ack:
            if position is not None:
                self.store.delete(position)  # type: ignore[union-attr]
                entry.position = None
        else:
            self.unacked += 1
            if position is not None:
                self.store.mark_delivered(position)  # type: ignore[union-attr]

    def ack(self, entry: QueuedMessage) -> None:
        """A delivered message was settled for good (ack, or reject/nack without requeue)."""
        self.unacked -= 1
        if entry.position is not None and self.store is not None:
            self.store.delete(entry.position)
            entry.position = None

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
        """Drop every ready message (unacked ones stay owed); returns how many."""
        count = len(self.ready) + self._tail_count
        store = self.store
        if store is not None:
            for entry in self.ready:
                if entry.position is not None:
                    store.delete(entry.position)
            if self._tail_count:
                store.delete_from(self._tail_cursor or _FIRST)
        self.ready.clear()
        self._tail_count = 0
        self._tail_cursor = None
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
        if (self.ready or self._tail_count) and self.consumers and not self._pump_scheduled:
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
        while budget:
            if self._tail_count and len(ready) <= self.window // 2:
                self._refill()
                ready = self.ready
            if not ready:
                break
            consumer = self._pick()
            if consumer is None:
                return  # nobody has credit; an ack or qos change calls wake()
            entry = ready.popleft()
            self._handed_out(entry, consumer.no_ack)
            consumer.deliver(entry)
            budget -= 1
        if (ready or self._tail_count) and self.consumers and not budget:
            self._pump_scheduled = True
            self._schedule(self._pump)

    # -- end of life ---------------------------------------------------------------------------

    def delete(self) -> int:
        """Mark deleted, tell consumers, drop ready messages; returns how many were dropped."""
        self.deleted = True
        count = len(self.ready) + self._tail_count
        self.ready.clear()
        self._tail_count = 0
        if self.store is not None:
            self.store.destroy()
            self.store = None
        consumers, self.consumers = self.consumers, []
        for consumer in consumers:
            # Told on the next loop turn, as RabbitMQ does: the deleting client gets its delete-ok
            # before any basic.cancel, even when the deleted queue's consumer is on the same channel.
            self._schedule(consumer.cancelled_by_server)
        return count


def _seq_of(entry: QueuedMessage) -> int:
    return entry.seq
