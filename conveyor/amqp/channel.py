"""Per-channel AMQP state: consumers, QoS credit, unacked deliveries, confirms and transactions.

Delivery tags are per channel and increase from 1. ``unacked`` maps each tag still owed an ack to
its queue entry, in tag order (an OrderedDict, so ``multiple`` acks pop from the front in O(1)).

QoS follows RabbitMQ, not the spec: ``basic.qos(global=false)`` sets the limit for consumers created
*afterwards* on this channel, each counted alone; ``global=true`` sets one limit shared by all the
channel's consumers. Zero means unlimited. ``can_deliver`` checks both.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor.amqp import spec
from conveyor.amqp.errors import SoftError
from conveyor.core.message import QueuedMessage
from conveyor.core.queue.classic import Queue

if TYPE_CHECKING:
    from conveyor.amqp.session import Session


class AMQPConsumer:
    """A basic.consume subscription; implements ``conveyor.core.consumer.Consumer``."""

    __slots__ = ("channel", "exclusive", "no_ack", "owner", "prefetch", "priority", "queue", "tag", "unacked")

    def __init__(self, channel: Channel, queue: Queue, tag: str, no_ack: bool, exclusive: bool,
                 priority: int, prefetch: int) -> None:
        self.channel = channel
        self.queue = queue
        self.tag = tag
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.prefetch = prefetch
        self.owner = channel.session
        self.unacked = 0

    def can_deliver(self) -> bool:
        channel = self.channel
        if channel.paused:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        return not (channel.global_prefetch and len(channel.unacked) >= channel.global_prefetch)

    def deliver(self, entry: QueuedMessage) -> None:
        channel = self.channel
        channel.next_tag += 1
        tag = channel.next_tag
        if not self.no_ack:
            channel.unacked[tag] = (entry, self)
            self.unacked += 1
        message = entry.message
        channel.session.conn.send_content(
            channel.id,
            spec.BasicDeliver(self.tag, tag, entry.redelivered, message.exchange, message.routing_key),
            message.properties,
            message.body,
        )

    def cancelled_by_server(self) -> None:
        self.channel.server_cancel(self)


class Channel:
    def __init__(self, session: Session, channel_id: int) -> None:
        self.session = session
        self.id = channel_id
        self.consumers: dict[str, AMQPConsumer] = {}
        self.unacked: OrderedDict[int, tuple[QueuedMessage, AMQPConsumer | None]] = OrderedDict()
        self.next_tag = 0
        self.prefetch = 0  # for consumers created from now on (global=false)
        self.global_prefetch = 0  # shared by every consumer of the channel (global=true)
        self.paused = False  # channel.flow or a full transport
        self.last_queue = ""  # the "" queue name means the last queue declared on the channel
        self.confirm = False
        self.publish_seq = 0
        self.confirmed_upto = 0  # confirms are sent in batches by Session.flush_confirms
        self.unsynced: deque[int] = deque()  # publish seqs waiting for a group commit, in order
        self.failed: set[int] = set()  # publish seqs to nack (not stored, or their fsync failed)
        self.tx: list[tuple[Any, ...]] | None = None  # pending publishes/acks in tx mode
        self.tx_settled: set[int] = set()  # tags settled in the open transaction (a second settle is an error)

    # -- delivery settlement -------------------------------------------------------------------

    def _take(self, delivery_tag: int, multiple: bool) -> list[tuple[QueuedMessage, AMQPConsumer | None]]:
        unacked = self.unacked
        if multiple:
            if delivery_tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if delivery_tag not in unacked:  # RabbitMQ requires the exact tag, even with multiple
                raise SoftError(spec.PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
            taken = []
            while unacked:
                tag = next(iter(unacked))
                if tag > delivery_tag:
                    break
                taken.append(unacked.popitem(last=False)[1])
            return taken
        try:
            return [unacked.pop(delivery_tag)]
        except KeyError:
            raise SoftError(spec.PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}") from None

    def settle(self, delivery_tag: int, multiple: bool, requeue: bool | None) -> None:
        """ack (requeue=None), or reject/nack with or without requeue."""
        taken = self._take(delivery_tag, multiple)
        woken: set[Queue] = set()
        for _, consumer in taken:
            if consumer is not None:
                consumer.unacked -= 1
                woken.add(consumer.queue)
        if requeue:
            self._requeue(entry for entry, _ in taken)
        else:
            for entry, _ in taken:
                entry.queue.ack(entry)
        if self.global_prefetch:
            woken.update(c.queue for c in self.consumers.values())
        for queue in woken:
            queue.wake()

    def _requeue(self, entries: Iterable[QueuedMessage]) -> None:
        by_queue: dict[Queue, list[QueuedMessage]] = {}
        for entry in entries:
            by_queue.setdefault(entry.queue, []).append(entry)
        for queue, items in by_queue.items():
            queue.requeue(items)

    def recover(self) -> None:
        """basic.recover(requeue=true): every unacked delivery goes back to its queue."""
        taken = list(self.unacked.values())
        self.unacked.clear()
        for _, consumer in taken:
            if consumer is not None:
                consumer.unacked -= 1
        self._requeue(entry for entry, _ in taken)

    # -- consumers -----------------------------------------------------------------------------

    def server_cancel(self, consumer: AMQPConsumer) -> None:
        """The queue was deleted under a consumer: tell the client if it understands basic.cancel."""
        if self.consumers.pop(consumer.tag, None) is None:
            return
        conn = self.session.conn
        if conn.capabilities.get("consumer_cancel_notify") and self.id in conn.channels:
            conn.send_method(self.id, spec.BasicCancel(consumer_tag=consumer.tag, nowait=True))

    def close(self) -> None:
        """The channel is gone: consumers leave their queues, unacked deliveries are requeued."""
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for consumer in consumers:  # first, so requeued messages cannot go back to them
            consumer.queue.remove_consumer(consumer)
        self.recover()
