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

Queue features (arguments or policy, see arguments.py), each costing nothing when off:

* TTL: an entry gets ``expires_at`` from x-message-ttl and/or its ``expiration`` property. Expired
  messages are never delivered: the head is checked when taken, and a heap of expiry times with one
  timer drops (and dead-letters) messages that expire anywhere in the queue, without scans. Dropped
  entries stay in ``ready`` marked GONE and are skipped when reached (lazy deletion, ``_dead`` counts
  them). Messages paged out to the store are checked when they are read back.
* Length limits: past x-max-length / x-max-length-bytes the head is dropped (dead-lettered as
  ``maxlen``) or, with x-overflow=reject-publish[-dlx], the new message is refused (push returns False).
* Dead-lettering goes through the ``dead_letter`` hook the vhost supplies (it builds x-death).
* Priorities (x-max-priority): ``ready`` is a set of FIFOs, highest served first (ready.py); such a queue keeps
  all its messages in memory (no paging).
* x-single-active-consumer: only the earliest consumer still attached is served.
* x-delivery-limit: a message requeued more often than the limit is dead-lettered (``delivery_limit``).
* x-expires: an unused queue (no consumers, no basic.get, no redeclare) deletes itself.

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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from conveyor.core.clock import Clock, SystemClock, Timer
from conveyor.core.consumer import Consumer
from conveyor.core.errors import AccessRefused, NotFound
from conveyor.core.message import GONE, OUT, READY, Message, QueuedMessage
from conveyor.core.queue.arguments import QueueSettings
from conveyor.core.queue.ready import Fifo, PriorityReady
from conveyor.store.api import Position

if TYPE_CHECKING:
    from conveyor.store.api import MessageStore

PUMP_BUDGET = 256
DEFAULT_WINDOW = 4096  # messages of a durable queue kept in memory; the rest wait in the store
_FIRST = Position(0, 0)  # before every record of a store

DeadLetter = Callable[["Queue", Message, str], None]


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
        settings: QueueSettings | None = None,
        clock: Clock | None = None,
        dead_letter: DeadLetter | None = None,
        on_expired: Callable[[Queue], None] | None = None,
    ) -> None:
        self.name = name
        self.vhost_name = vhost_name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
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
        self.clock: Clock = clock or SystemClock()
        self._dead_letter_hook = dead_letter
        self._on_expired = on_expired  # x-expires hook: the vhost deletes the queue
        self._dead = 0  # GONE entries still sitting in ``ready``
        self._bytes = 0  # body bytes of the ready messages (memory and tail)
        self._uncounted = 0  # recovered tail messages whose bytes are counted when read back
        self._ttl_heap: list[tuple[float, int, QueuedMessage]] = []
        self._ttl_timer: Timer | None = None
        self._expires_timer: Timer | None = None
        self._arrivals: list[Consumer] = []  # consumers in the order they came (single active consumer)
        self.ready: Any = Fifo()
        self.settings = QueueSettings()
        self.apply_settings(settings or QueueSettings.resolve(self.arguments))

    def apply_settings(self, settings: QueueSettings) -> None:
        """Take up new settings (at declare, or when a policy changes)."""
        self.settings = settings
        if settings.max_priority and not isinstance(self.ready, PriorityReady):
            entries = list(self.ready)
            self.ready = PriorityReady(settings.max_priority)
            for entry in entries:
                self.ready.append(entry)
            self.window = 1 << 62  # priority queues keep every message in memory
        self._limited = settings.max_length is not None or settings.max_length_bytes is not None
        self._ttl = settings.message_ttl
        if self._limited and settings.overflow == "drop-head":
            self._trim()  # a new limit applies to the backlog already there (RabbitMQ's init_max_length)
        self.touch()

    def _trim(self) -> None:
        max_length, max_bytes = self.settings.max_length, self.settings.max_length_bytes
        while (max_length is not None and self.message_count > max_length) or (
            max_bytes is not None and self._bytes > max_bytes
        ):
            entry = self._take_head()
            if entry is None:
                break
            self._drop(entry, "maxlen")

    def __repr__(self) -> str:
        return f"Queue({self.name!r}, ready={self.message_count}, unacked={self.unacked})"

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def message_count(self) -> int:
        """Messages ready for delivery (AMQP's message-count excludes unacked ones)."""
        return len(self.ready) - self._dead + self._tail_count

    @property
    def consumer_count(self) -> int:
        return len(self.consumers)

    def describe(self) -> str:
        return f"queue '{self.name}' in vhost '{self.vhost_name}'"

    # -- messages in ---------------------------------------------------------------------------

    def push(self, message: Message) -> bool:
        """Enqueue; False if the queue refused it (x-overflow=reject-publish[-dlx] at its limit).

        Raises the store's StoreError if a message that must be written cannot be.
        """
        if self._limited and not self._make_room(message):
            return self.settings.overflow == "drop-head"  # dropped at once is still accepted
        decoder = message.decoder
        if self._ttl is None and (decoder is None or decoder.expiration(message.properties) is None):
            expires_at = None  # the common case, without the call below
        else:
            expires_at = self._expiry_of(message)
        if expires_at is not None and expires_at <= self.clock.now():
            # TTL 0: delivered only if a consumer can take it right now, as RabbitMQ does.
            if not self._can_take_now():
                self._dead_letter(message, "expired")
                return True
            expires_at = None
        store = self.store
        self._bytes += len(message.body)
        if store is not None and (self._tail_count or len(self.ready) >= self.window):
            position = store.append(message, message.persistent)
            if not self._tail_count:
                self._tail_cursor = position
            self._tail_count += 1
        else:
            self._seq += 1
            entry = QueuedMessage(message, self, self._seq)
            if store is not None and message.persistent:
                entry.position = store.append(message)
            if expires_at is not None:
                self._track_expiry(entry, expires_at)
            self.ready.append(entry)
        if self.consumers and not self._pump_scheduled:
            self._pump_scheduled = True
            self._schedule(self._pump)
        return True

    def behind(self) -> bool:
        """More ready messages than one pump run delivers, while a consumer could take one now: the
        broker, not the consumers, is what holds messages back. Front-ends slow publishers then."""
        return len(self.ready) > PUMP_BUDGET and bool(self.consumers) and self._can_take_now()

    def _can_take_now(self) -> bool:
        return any(consumer.can_deliver() for consumer in self.consumers)

    def _expiry_of(self, message: Message) -> float | None:
        ttl = self._ttl
        decoder = message.decoder
        if decoder is not None:
            raw = decoder.expiration(message.properties)
            if raw is not None:
                try:
                    per_message = int(raw) / 1000.0
                except ValueError:
                    per_message = None  # validated at publish by the front-end; ignore here
                if per_message is not None and (ttl is None or per_message < ttl):
                    ttl = per_message
        return None if ttl is None else self.clock.now() + ttl

    def _make_room(self, message: Message) -> bool:
        """Enforce the length limits before ``message`` joins; False means refuse it."""
        settings = self.settings
        max_length, max_bytes = settings.max_length, settings.max_length_bytes
        size = len(message.body)

        def over() -> bool:
            return (max_length is not None and self.message_count + 1 > max_length) or (
                max_bytes is not None and self._bytes + size > max_bytes
            )

        if not over():
            return True
        if settings.overflow != "drop-head":
            if settings.overflow == "reject-publish-dlx":
                self._dead_letter(message, "maxlen")
            return False
        while over():
            entry = self._take_head()
            if entry is None:
                if not over():  # taking the head dropped expired messages, which made room
                    return True
                self._dead_letter(message, "maxlen")  # the new message alone is over the limit
                return False
            self._drop(entry, "maxlen")
        return True

    # -- TTL -----------------------------------------------------------------------------------

    def _track_expiry(self, entry: QueuedMessage, expires_at: float) -> None:
        entry.expires_at = expires_at
        heap = self._ttl_heap
        heapq.heappush(heap, (expires_at, entry.seq, entry))
        if heap[0][2] is entry:
            self._arm_ttl_timer()

    def _arm_ttl_timer(self) -> None:
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()
            self._ttl_timer = None
        if self._ttl_heap and not self.deleted:
            delay = self._ttl_heap[0][0] - self.clock.now()
            self._ttl_timer = self.clock.call_later(delay, self._expire_due)

    def _expire_due(self) -> None:
        """Drop every ready message whose time is up, wherever it is in the queue."""
        self._ttl_timer = None
        now = self.clock.now()
        heap = self._ttl_heap
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            if entry.state == READY and entry.expires_at is not None and entry.expires_at <= now:
                entry.state = GONE
                self._dead += 1
                self._drop(entry, "expired")
        if self._dead and self._dead * 2 > len(self.ready):
            self._compact()
        self._arm_ttl_timer()

    def _compact(self) -> None:
        """Rebuild ``ready`` without GONE entries once they are half of it (keeps memory bounded)."""
        live = [entry for entry in self.ready if entry.state != GONE]
        self.ready.clear()
        for entry in live:
            self.ready.append(entry)
        self._dead = 0

    def _drop(self, entry: QueuedMessage, reason: str) -> None:
        """A ready message leaves without delivery (expired, or dropped at the length limit)."""
        self._bytes -= len(entry.message.body)
        if entry.position is not None and self.store is not None:
            self.store.delete(entry.position)
            entry.position = None
        self._dead_letter(entry.message, reason)

    def _dead_letter(self, message: Message, reason: str) -> None:
        if self._dead_letter_hook is not None and self.settings.dead_letter_exchange is not None:
            self._dead_letter_hook(self, message, reason)

    def recover(self) -> int:
        """Take up the messages the store kept across a restart; returns how many."""
        store = self.store
        if store is None:
            return 0
        count = store.recover()  # forgets transient messages, which do not survive a restart
        if count:
            self._tail_count = count
            self._uncounted = count
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
            expires_at = self._expiry_of(message)
            if expires_at is not None:
                self._track_expiry(entry, expires_at)
            self.ready.append(entry)
            if self._uncounted:  # recovered after a restart: its bytes were never counted
                self._bytes += len(message.body)
                self._uncounted -= 1
            loaded += 1
        self._tail_count -= loaded
        if not self._tail_count:
            self._tail_cursor = None

    # -- messages out --------------------------------------------------------------------------

    def _take_head(self) -> QueuedMessage | None:
        """The oldest (highest-priority) live ready message, removed from ``ready``; expired ones are
        dropped on the way."""
        ready = self.ready
        while True:
            if self._tail_count and len(ready) - self._dead <= self.window // 2:
                self._refill()
                ready = self.ready
            if not ready:
                return None
            entry = ready.popleft()
            if entry.state == GONE:
                self._dead -= 1
                continue
            expires_at = entry.expires_at
            if expires_at is not None and expires_at <= self.clock.now():
                entry.state = GONE  # popped already: the TTL timer must not drop it a second time
                self._drop(entry, "expired")
                continue
            entry.state = OUT
            return entry

    def get(self, no_ack: bool) -> QueuedMessage | None:
        """basic.get: take the head message, or None when nothing is ready."""
        self.touch()
        entry = self._take_head()
        if entry is None:
            return None
        self._handed_out(entry, no_ack)
        return entry

    def _handed_out(self, entry: QueuedMessage, no_ack: bool) -> None:
        entry.delivery_count += 1
        self._bytes -= len(entry.message.body)
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
        entry.state = GONE
        if entry.position is not None and self.store is not None:
            self.store.delete(entry.position)
            entry.position = None

    def reject(self, entry: QueuedMessage) -> None:
        """reject/nack without requeue: gone, and dead-lettered as ``rejected`` when the queue has a DLX."""
        self._discard(entry, "rejected")

    def _discard(self, entry: QueuedMessage, reason: str) -> None:
        """A delivered message leaves for good and is dead-lettered (if the queue has a DLX)."""
        self.ack(entry)
        self._dead_letter(entry.message, reason)

    def requeue(self, entries: Iterable[QueuedMessage]) -> None:
        """Put delivered messages back at their original positions, marked redelivered.

        Messages past x-delivery-limit, and messages whose TTL ran out while they were out, do not
        come back: they are dead-lettered (``delivery_limit``, ``expired``), as in RabbitMQ.
        """
        limit = self.settings.delivery_limit
        now = self.clock.now()
        back: list[QueuedMessage] = []
        for entry in sorted(entries, key=_seq_of):
            if limit is not None:
                if entry.delivery_count > limit:
                    self._discard(entry, "delivery_limit")
                    continue
                if entry.message.decoder is not None:
                    entry.message = entry.message.with_properties(
                        {"headers": {**(entry.message.headers or {}), "x-delivery-count": entry.delivery_count}}
                    )
            if not self.deleted and entry.expires_at is not None and entry.expires_at <= now:
                self._discard(entry, "expired")
                continue
            back.append(entry)
        self.unacked -= len(back)
        if self.deleted or not back:
            return
        for entry in back:
            entry.redelivered = True
            entry.state = READY
            self._bytes += len(entry.message.body)
        self.ready = self.ready.put_back(back)
        self.wake()

    def purge(self) -> int:
        """Drop every ready message (unacked ones stay owed); returns how many."""
        count = self.message_count
        store = self.store
        for entry in self.ready:
            if entry.state != GONE:
                entry.state = GONE
                if store is not None and entry.position is not None:
                    store.delete(entry.position)
                    entry.position = None
        if store is not None and self._tail_count:
            store.delete_from(self._tail_cursor or _FIRST)
        self.ready.clear()
        self._dead = 0
        self._bytes = 0
        self._ttl_heap.clear()
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
        self._arrivals.append(consumer)
        self._had_consumer = True
        self._cancel_expiry()
        self.wake()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self._arrivals.remove(consumer)
        if not self.consumers:
            if self.auto_delete and self._had_consumer and self._on_unused:
                self._on_unused(self)
                return
            self.touch()
        elif self.settings.single_active_consumer:
            self.wake()  # the next consumer in line becomes active

    def wake(self) -> None:
        """Credit may have come back (an ack, a qos change, a writable transport): deliver again."""
        if (self.ready or self._tail_count) and self.consumers and not self._pump_scheduled:
            self._pump_scheduled = True
            self._schedule(self._pump)

    def _pick(self) -> Consumer | None:
        """The next consumer with credit: highest priority first, round-robin among equals."""
        if self.settings.single_active_consumer:
            active = self._arrivals[0] if self._arrivals else None
            return active if active is not None and active.can_deliver() else None
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
        budget = PUMP_BUDGET
        consumers = self.consumers
        if len(consumers) == 1:
            # The common case, no one to choose between: the loop below without a _pick per message
            # (that call is 2.5% of a publish+deliver+ack in bench/hotpath.py consume).
            consumer = consumers[0]
            no_ack, can_deliver, deliver = consumer.no_ack, consumer.can_deliver, consumer.deliver
            while budget and can_deliver():
                entry = self._take_head()
                if entry is None:
                    break
                self._handed_out(entry, no_ack)
                deliver(entry)
                budget -= 1
        while budget and (self.ready or self._tail_count):
            consumer = self._pick()
            if consumer is None:
                return  # nobody has credit; an ack or qos change calls wake()
            entry = self._take_head()
            if entry is None:
                break
            self._handed_out(entry, consumer.no_ack)
            consumer.deliver(entry)
            budget -= 1
        if (self.ready or self._tail_count) and self.consumers and not budget:
            self._pump_scheduled = True
            self._schedule(self._pump)

    # -- queue expiry (x-expires) --------------------------------------------------------------

    def touch(self) -> None:
        """The queue was used (declared, basic.get): restart its x-expires countdown if it has one."""
        expires = self.settings.expires
        if expires is None or self.consumers or self.deleted:
            return
        self._cancel_expiry()
        self._expires_timer = self.clock.call_later(expires, self._expired)

    def _cancel_expiry(self) -> None:
        if self._expires_timer is not None:
            self._expires_timer.cancel()
            self._expires_timer = None

    def _expired(self) -> None:
        self._expires_timer = None
        if not self.consumers and not self.deleted and self._on_expired is not None:
            self._on_expired(self)

    # -- end of life ---------------------------------------------------------------------------

    def delete(self) -> int:
        """Mark deleted, tell consumers, drop ready messages; returns how many were dropped."""
        count = self.message_count
        self.deleted = True
        self.ready.clear()
        self._dead = 0
        self._ttl_heap.clear()
        self._tail_count = 0
        for timer in (self._ttl_timer, self._expires_timer):
            if timer is not None:
                timer.cancel()
        if self.store is not None:
            self.store.destroy()
            self.store = None
        consumers, self.consumers = self.consumers, []
        self._arrivals = []
        for consumer in consumers:
            # Told on the next loop turn, as RabbitMQ does: the deleting client gets its delete-ok
            # before any basic.cancel, even when the deleted queue's consumer is on the same channel.
            self._schedule(consumer.cancelled_by_server)
        return count


def _seq_of(entry: QueuedMessage) -> int:
    return entry.seq
