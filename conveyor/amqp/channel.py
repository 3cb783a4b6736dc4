"""Per-channel AMQP state: consumers, QoS credit, unacked deliveries, confirms and transactions.

Delivery tags are per channel and increase from 1. ``unacked`` maps each tag still owed an ack to
its queue entry, in tag order (an OrderedDict, so ``multiple`` acks pop from the front in O(1)).

QoS follows RabbitMQ, not the spec: ``basic.qos(global=false)`` sets the limit for consumers created
*afterwards* on this channel, each counted alone; ``global=true`` sets one limit shared by all the
channel's consumers. Zero means unlimited. ``can_deliver`` checks both.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from conveyor.amqp import spec
from conveyor.amqp.errors import SoftError, reply_text
from conveyor.core.clock import Timer
from conveyor.core.message import QueuedMessage
from conveyor.core.queue.classic import Queue

if TYPE_CHECKING:
    from conveyor.amqp.reply_to import ReplyConsumer
    from conveyor.amqp.session import Session

log = logging.getLogger("conveyor.amqp")

_DELIVER_ID = b"\x00\x3c\x00\x3c"  # basic.deliver: class 60, method 60
_DELIVER_CACHE_SIZE = 256  # routing keys whose encoded deliver tail a consumer remembers
_FRAME_HEAD = struct.Struct("!BHI")
_TAG_AND_FLAG = struct.Struct("!QB")  # delivery-tag, then the redelivered bit

Unacked = tuple[QueuedMessage, "AMQPConsumer | None", "float | None"]  # entry, consumer, ack deadline


def queue_timeout(queue: Queue, broker: Any) -> int | None:
    """The acknowledgement timeout (ms) for deliveries from ``queue`` when the consumer sets none:
    the queue's (argument or policy), else the broker's ``consumer_timeout``; None when off."""
    settings = getattr(queue, "settings", None)
    seconds = getattr(settings, "consumer_timeout", None)
    if seconds is not None:
        return round(seconds * 1000)
    value = queue.arguments.get("x-consumer-timeout")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return getattr(broker, "consumer_timeout", None) or None


class AMQPConsumer:
    """A basic.consume subscription; implements ``conveyor.core.consumer.Consumer``."""

    __slots__ = (
        "_encoded", "_method_head",
        "channel", "exclusive", "no_ack", "owner", "prefetch", "priority", "queue", "tag", "timeout", "unacked",
    )

    def __init__(self, channel: Channel, queue: Queue, tag: str, no_ack: bool, exclusive: bool,
                 priority: int, prefetch: int, timeout: int | None = None) -> None:
        self.channel = channel
        self.queue = queue
        self.tag = tag
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.prefetch = prefetch
        self.owner = channel.session
        self.unacked = 0
        self.timeout = timeout  # ms an unacked delivery may stay unacked; None: no limit
        tag_bytes = tag.encode("utf-8", "surrogateescape")
        self._method_head = _DELIVER_ID + bytes((len(tag_bytes),)) + tag_bytes
        self._encoded: dict[str, tuple[str, bytes, bytes]] = {}  # routing key -> see _encode_deliver

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
            timeout = self.timeout
            channel.unacked[tag] = (entry, self, channel.deadline(timeout) if timeout else None)
            self.unacked += 1
        message = entry.message
        # The basic.deliver method frame is the same for every message with the same exchange and
        # routing key but for the delivery tag and redelivered flag: encode the rest once.
        routing_key = message.routing_key
        exchange = message.exchange
        encoded = self._encoded.get(routing_key)
        if encoded is None or encoded[0] != exchange:
            encoded = self._encode_deliver(exchange, routing_key)
        channel.session.conn.send_delivery(
            channel.id, encoded[1], _TAG_AND_FLAG.pack(tag, entry.redelivered), encoded[2],
            message.properties, message.body,
        )

    def _encode_deliver(self, exchange: str, routing_key: str) -> tuple[str, bytes, bytes]:
        """(exchange, the method frame up to the delivery tag, the rest of it after the redelivered
        flag, frame end included) for deliveries of messages with this exchange and routing key."""
        if len(self._encoded) >= _DELIVER_CACHE_SIZE:
            self._encoded.clear()
        payload = spec.BasicDeliver(self.tag, 0, False, exchange, routing_key).encode()
        split = len(self._method_head)
        prefix = _FRAME_HEAD.pack(spec.FRAME_METHOD, self.channel.id, len(payload)) + payload[:split]
        encoded = self._encoded[routing_key] = (exchange, prefix, payload[split + 9 :] + b"\xce")
        return encoded

    def cancelled_by_server(self) -> None:
        self.channel.server_cancel(self)


class Channel:
    def __init__(self, session: Session, channel_id: int) -> None:
        self.session = session
        self.id = channel_id
        self.consumers: dict[str, AMQPConsumer] = {}
        self.unacked: OrderedDict[int, Unacked] = OrderedDict()
        self.reply: ReplyConsumer | None = None  # the direct reply-to consumer, if any
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
        self._timer: Timer | None = None  # the acknowledgement-timeout timer, due at _timer_due
        self._timer_due = 0.0
        self._last_due = 0.0  # the latest deadline given out; deadlines stay in tag order while _in_order
        self._in_order = True

    # -- delivery settlement -------------------------------------------------------------------

    def _take(self, delivery_tag: int, multiple: bool) -> list[Unacked]:
        unacked = self.unacked
        if multiple:
            if delivery_tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            if delivery_tag not in unacked:  # RabbitMQ requires the exact tag, even with multiple
                raise SoftError(spec.PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}")
            taken = []
            popitem = unacked.popitem
            while True:  # tags are in order: pop up to and including delivery_tag
                tag, item = popitem(last=False)
                taken.append(item)
                if tag == delivery_tag:
                    return taken
        try:
            return [unacked.pop(delivery_tag)]
        except KeyError:
            raise SoftError(spec.PRECONDITION_FAILED, f"unknown delivery tag {delivery_tag}") from None

    def settle(self, delivery_tag: int, multiple: bool, requeue: bool | None) -> None:
        """ack (requeue=None), or reject/nack with or without requeue."""
        taken = self._take(delivery_tag, multiple)
        woken: set[Queue] = set()
        last = None
        for _, consumer, _ in taken:
            if consumer is not None:
                consumer.unacked -= 1
                if consumer is not last:
                    woken.add(consumer.queue)
                    last = consumer
        if requeue:
            self._requeue(entry for entry, _, _ in taken)
        elif requeue is None:
            for entry, _, _ in taken:
                entry.queue.ack(entry)
        else:  # reject/nack without requeue: dead-lettered if the queue has a DLX
            for entry, _, _ in taken:
                entry.queue.reject(entry)
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
        for _, consumer, _ in taken:
            if consumer is not None:
                consumer.unacked -= 1
        self._requeue(entry for entry, _, _ in taken)

    # -- acknowledgement timeout ---------------------------------------------------------------

    def deadline(self, timeout: int) -> float:
        """The time by which a delivery made now must be acked (``timeout`` ms); arms the timer."""
        clock = self.session.vhost.clock
        due = clock.now() + timeout / 1000.0
        if due < self._last_due:
            self._in_order = False
        self._last_due = due
        if self._timer is None or due < self._timer_due:
            self._arm(clock, due - clock.now(), due)
        return due

    def _arm(self, clock: Any, delay: float, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = clock.call_later(delay, self._check_timeouts)

    def _check_timeouts(self) -> None:
        """The timer fired: time the channel out if a delivery is overdue, else wait for the next."""
        self._timer = None
        session = self.session
        if session.channels.get(self.id) is not self:
            return
        clock = session.vhost.clock
        now = clock.now()
        earliest: float | None = None
        for entry, consumer, due in self.unacked.values():
            if due is None:
                continue
            if due <= now:
                self._timed_out(entry, consumer)
                return
            if earliest is None or due < earliest:
                earliest = due
            if self._in_order:
                break
        if earliest is None:
            self._in_order, self._last_due = True, 0.0
        else:
            self._arm(clock, earliest - now, earliest)

    def _timed_out(self, entry: QueuedMessage, consumer: AMQPConsumer | None) -> None:
        timeout = consumer.timeout if consumer is not None else queue_timeout(entry.queue, self.session.broker)
        log.warning(
            "consumer %s on channel %d has timed out waiting for delivery acknowledgement; timeout used: %s ms",
            consumer.tag if consumer is not None else "(basic.get)", self.id, timeout,
        )
        text = (
            f"delivery acknowledgement on channel {self.id} timed out. Timeout value used: {timeout} ms. "
            "This timeout value can be configured, see consumers doc guide to learn more"
        )
        # close_channel calls back channel_closed -> close(), which requeues the unacked deliveries
        self.session.conn.close_channel(self.id, spec.PRECONDITION_FAILED, reply_text(spec.PRECONDITION_FAILED, text))

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.reply is not None:
            self.reply.unregister()
            self.reply = None
        consumers = list(self.consumers.values())
        self.consumers.clear()
        for consumer in consumers:  # first, so requeued messages cannot go back to them
            consumer.queue.remove_consumer(consumer)
        self.recover()
