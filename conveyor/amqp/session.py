"""AMQP channel methods -> core calls, and core callbacks -> frames.

One ``Session`` per connection. The connection (sans-IO) hands it complete commands; each handler
validates, calls the core, and replies. Handlers only raise: ``Connection.fail`` turns the error into
the right close. Handlers are looked up by method class in ``_HANDLERS`` (one dict lookup per frame).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

from conveyor.amqp import reply_to, spec
from conveyor.amqp.channel import AMQPConsumer, Channel, queue_timeout
from conveyor.amqp.connection import Connection
from conveyor.amqp.errors import HardError, SoftError
from conveyor.amqp.properties import decode_headers, expiration_error, is_persistent
from conveyor.core.message import Message
from conveyor.core.vhost import VirtualHost
from conveyor.store.api import StoreError

_NO_ROUTE = "NO_ROUTE"
_CONSUMER_TIMEOUT = "x-consumer-timeout"
_USER_ID_FLAG = 0x10  # basic property flag bit of user-id (in the low byte of the flags word)
_PROPERTIES_CACHE_SIZE = 256
_EXPIRATION_FLAG = 0x01  # basic property flag 0x0100 (expiration), in the high byte of the flags word


class Session:
    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.conn: Connection = None  # type: ignore[assignment]  # set by the server glue
        self.vhost: VirtualHost = None  # type: ignore[assignment]
        self.channels: dict[int, Channel] = {}
        self._confirming: set[Channel] = set()  # channels with confirms to send after this input
        self.has_published = False  # publishers, not consumers, are blocked by a disk alarm
        self.last_routed: list[Any] = []  # the queues the latest publish reached (for flow control)
        self._sync_marks: dict[Channel, int] = {}  # per channel, the last publish that awaits a group commit
        # Raw properties that needed no check -> (that bytes object, persistent). Most publishers send
        # the same few property lists; their messages then share one copy, and skip the checks.
        self._properties: dict[bytes, tuple[bytes, bool]] = {}

    # -- connection callbacks ------------------------------------------------------------------

    def connection_opened(self, vhost: str, user: str) -> None:
        self.vhost = self.broker.vhosts[vhost]

    def channel_opened(self, channel: int) -> None:
        self.channels[channel] = Channel(self, channel)

    def channel_closed(self, channel: int) -> None:
        state = self.channels.pop(channel, None)
        if state is not None:
            self._confirming.discard(state)
            state.close()

    def connection_closing(self) -> None:
        """Connection.close was sent or received (channels are already closed): the exclusive queues
        go now, as RabbitMQ deletes them before close-ok, not when the socket drops."""
        if self.vhost is not None:
            self.vhost.owner_closed(self)

    def connection_lost(self) -> None:
        """The transport is gone: close every channel, then drop this connection's exclusive queues."""
        for channel in list(self.channels):
            self.channel_closed(channel)
        if self.vhost is not None:
            self.vhost.owner_closed(self)

    def method(self, channel: int, method: spec.Method) -> None:
        handler = _HANDLERS.get(type(method))
        if handler is None:
            raise HardError(spec.COMMAND_INVALID, "unimplemented method")
        handler(self, self.channels[channel], method)

    def set_paused(self, paused: bool) -> None:
        """Flow control from the transport: stop or resume deliveries to this connection."""
        for channel in self.channels.values():
            channel.paused = paused
            if not paused:
                for consumer in channel.consumers.values():
                    consumer.queue.wake()

    def flush_confirms(self) -> None:
        """Send the publisher confirms earned by the input just processed, one frame per channel
        in the common case. Persistent messages that reached a durable queue are confirmed only
        after the group commit that makes them durable (``_synced``); confirms stay in order."""
        if self._sync_marks:
            marks, self._sync_marks = self._sync_marks, {}
            self.broker.committer.when_synced(lambda ok: self._synced(ok, marks))
        if not self._confirming:
            return
        for channel in self._confirming:
            if self.channels.get(channel.id) is channel:
                self._send_confirms(channel)
        self._confirming.clear()

    def _send_confirms(self, channel: Channel) -> None:
        upto = channel.unsynced[0] - 1 if channel.unsynced else channel.publish_seq
        start = channel.confirmed_upto + 1
        if upto < start:
            return
        send = self.conn.send_method
        if channel.failed:
            for seq in sorted(f for f in channel.failed if f <= upto):
                if seq > start:
                    send(channel.id, spec.BasicAck(delivery_tag=seq - 1, multiple=seq - 1 > start))
                send(channel.id, spec.BasicNack(delivery_tag=seq, multiple=False, requeue=False))
                channel.failed.discard(seq)
                start = seq + 1
        if upto >= start:
            send(channel.id, spec.BasicAck(delivery_tag=upto, multiple=upto > start))
        channel.confirmed_upto = upto

    def _synced(self, ok: bool, marks: dict[Channel, int]) -> None:
        """A group commit finished: confirms waiting on it can go (as nacks if it failed)."""
        for channel, upto in marks.items():
            unsynced = channel.unsynced
            while unsynced and unsynced[0] <= upto:
                seq = unsynced.popleft()
                if not ok:
                    channel.failed.add(seq)
            self._confirming.add(channel)
        self.flush_confirms()

    # -- helpers -------------------------------------------------------------------------------

    def _queue_name(self, channel: Channel, name: str) -> str:
        if name:
            return name
        if not channel.last_queue:
            raise SoftError(spec.NOT_FOUND, "no previously declared queue")
        return channel.last_queue

    def _reply(self, channel: Channel, method: spec.Method) -> None:
        self.conn.send_method(channel.id, method)

    # -- exchange ------------------------------------------------------------------------------

    def _exchange_declare(self, channel: Channel, m: spec.ExchangeDeclare) -> None:
        self.vhost.declare_exchange(
            m.exchange, m.type, passive=m.passive, durable=m.durable, auto_delete=m.auto_delete,
            internal=m.internal, arguments=m.arguments,
        )
        if not m.nowait:
            self._reply(channel, spec.ExchangeDeclareOk())

    def _exchange_delete(self, channel: Channel, m: spec.ExchangeDelete) -> None:
        self.vhost.delete_exchange(m.exchange, if_unused=m.if_unused)
        if not m.nowait:
            self._reply(channel, spec.ExchangeDeleteOk())

    def _exchange_bind(self, channel: Channel, m: spec.ExchangeBind) -> None:
        self.vhost.bind_exchange(m.destination, m.source, m.routing_key, m.arguments)
        if not m.nowait:
            self._reply(channel, spec.ExchangeBindOk())

    def _exchange_unbind(self, channel: Channel, m: spec.ExchangeUnbind) -> None:
        self.vhost.unbind_exchange(m.destination, m.source, m.routing_key, m.arguments)
        if not m.nowait:
            self._reply(channel, spec.ExchangeUnbindOk())

    # -- queue ---------------------------------------------------------------------------------

    def _queue_declare(self, channel: Channel, m: spec.QueueDeclare) -> None:
        if m.queue.startswith(reply_to.REPLY_QUEUE):
            # RabbitMQ: the pseudo-queue and live reply addresses "exist" (0 messages, 1 consumer),
            # passive or not; any other amq.rabbitmq.reply-to* name is not found.
            if not reply_to.exists(m.queue):
                raise SoftError(spec.NOT_FOUND, f"no queue '{m.queue}' in vhost '{self.vhost.name}'")
            channel.last_queue = m.queue
            if not m.nowait:
                self._reply(channel, spec.QueueDeclareOk(m.queue, 0, 1))
            return
        queue = self.vhost.declare_queue(  # "" is a new server-named queue, never the last one declared
            m.queue, self, passive=m.passive, durable=m.durable, exclusive=m.exclusive,
            auto_delete=m.auto_delete, arguments=m.arguments,
        )
        channel.last_queue = queue.name
        if not m.nowait:
            self._reply(channel, spec.QueueDeclareOk(queue.name, queue.message_count, queue.consumer_count))

    def _queue_bind(self, channel: Channel, m: spec.QueueBind) -> None:
        name = self._queue_name(channel, m.queue)
        self.vhost.bind_queue(name, m.exchange, m.routing_key, m.arguments, self)
        if not m.nowait:
            self._reply(channel, spec.QueueBindOk())

    def _queue_unbind(self, channel: Channel, m: spec.QueueUnbind) -> None:
        name = self._queue_name(channel, m.queue)
        self.vhost.unbind_queue(name, m.exchange, m.routing_key, m.arguments, self)
        self._reply(channel, spec.QueueUnbindOk())

    def _queue_purge(self, channel: Channel, m: spec.QueuePurge) -> None:
        count = self.vhost.purge_queue(self._queue_name(channel, m.queue), self)
        if not m.nowait:
            self._reply(channel, spec.QueuePurgeOk(message_count=count))

    def _queue_delete(self, channel: Channel, m: spec.QueueDelete) -> None:
        count = self.vhost.delete_queue(
            self._queue_name(channel, m.queue), self, if_unused=m.if_unused, if_empty=m.if_empty
        )
        if not m.nowait:
            self._reply(channel, spec.QueueDeleteOk(message_count=count))

    # -- basic ---------------------------------------------------------------------------------

    def _basic_qos(self, channel: Channel, m: spec.BasicQos) -> None:
        if m.prefetch_size:
            raise HardError(spec.NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})")
        if m.global_:
            channel.global_prefetch = m.prefetch_count
            for consumer in channel.consumers.values():
                consumer.queue.wake()
        else:
            channel.prefetch = m.prefetch_count
        self._reply(channel, spec.BasicQosOk())

    def _basic_consume(self, channel: Channel, m: spec.BasicConsume) -> None:
        if m.queue == reply_to.REPLY_QUEUE:
            self._reply_consume(channel, m)
            return
        queue = self.vhost.get_queue(self._queue_name(channel, m.queue), self)
        tag = m.consumer_tag or _new_tag()
        if tag in channel.consumers:
            raise HardError(spec.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'")
        arguments = m.arguments or {}
        priority = arguments.get("x-priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise SoftError(spec.PRECONDITION_FAILED, f"invalid arg 'x-priority' for {queue.describe()}")
        timeout = None
        if not m.no_ack:
            timeout = arguments.get(_CONSUMER_TIMEOUT)
            if timeout is None:
                timeout = queue_timeout(queue, self.broker)
            elif not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
                raise SoftError(spec.PRECONDITION_FAILED, f"invalid arg '{_CONSUMER_TIMEOUT}' for {queue.describe()}")
        consumer = AMQPConsumer(channel, queue, tag, m.no_ack, m.exclusive, priority, channel.prefetch, timeout)
        queue.add_consumer(consumer)  # deliveries come from a scheduled pump, after consume-ok
        channel.consumers[tag] = consumer
        if not m.nowait:
            self._reply(channel, spec.BasicConsumeOk(consumer_tag=tag))

    def _reply_consume(self, channel: Channel, m: spec.BasicConsume) -> None:
        """basic.consume from amq.rabbitmq.reply-to: the channel's one direct reply-to consumer."""
        if m.consumer_tag in channel.consumers:
            raise HardError(spec.NOT_ALLOWED, f"attempt to reuse consumer tag '{m.consumer_tag}'")
        if not m.no_ack:
            raise SoftError(spec.PRECONDITION_FAILED, "reply consumer cannot acknowledge")
        if channel.reply is not None:
            raise SoftError(spec.PRECONDITION_FAILED, "reply consumer already set")
        channel.reply = reply_to.ReplyConsumer(channel, m.consumer_tag or _new_tag())
        if not m.nowait:
            self._reply(channel, spec.BasicConsumeOk(consumer_tag=channel.reply.tag))

    def _basic_cancel(self, channel: Channel, m: spec.BasicCancel) -> None:
        reply = channel.reply
        if reply is not None and reply.tag == m.consumer_tag:
            reply.unregister()
            channel.reply = None
            if not m.nowait:
                self._reply(channel, spec.BasicCancelOk(consumer_tag=m.consumer_tag))
            return
        consumer = channel.consumers.pop(m.consumer_tag, None)
        if consumer is not None:
            consumer.queue.remove_consumer(consumer)
        if not m.nowait:
            self._reply(channel, spec.BasicCancelOk(consumer_tag=m.consumer_tag))

    def _basic_get(self, channel: Channel, m: spec.BasicGet) -> None:
        queue = self.vhost.get_queue(self._queue_name(channel, m.queue), self)
        entry = queue.get(m.no_ack)
        if entry is None:
            self._reply(channel, spec.BasicGetEmpty())
            return
        channel.next_tag += 1
        tag = channel.next_tag
        if not m.no_ack:
            timeout = queue_timeout(queue, self.broker)
            channel.unacked[tag] = (entry, None, channel.deadline(timeout) if timeout else None)
        message = entry.message
        self.conn.send_content(
            channel.id,
            spec.BasicGetOk(tag, entry.redelivered, message.exchange, message.routing_key, queue.message_count),
            message.properties,
            message.body,
        )

    def content(self, channel_id: int, m: spec.BasicPublish, properties: bytes, body: bytes) -> None:
        """A complete basic.publish (the only content-bearing method a client may send)."""
        channel = self.channels[channel_id]
        if m.immediate:
            raise HardError(spec.NOT_IMPLEMENTED, "immediate=true")
        self.has_published = True
        known = self._properties.get(properties)
        if known is not None:  # plain properties seen before: nothing to check, and one shared copy
            properties, persistent = known
        else:
            properties, persistent = self._check_properties(channel, m, properties)
        message = Message(m.exchange, m.routing_key, properties, body, persistent, decode_headers)
        if channel.tx is not None:
            self.vhost.get_exchange(m.exchange)  # a missing exchange fails now, not at commit
            channel.tx.append(("publish", m.mandatory, message))
            return
        self._route(channel, m.mandatory, message)

    def _check_properties(self, channel: Channel, m: spec.BasicPublish, properties: bytes) -> tuple[bytes, bool]:
        """Validate (and, for direct reply-to, rewrite) a publish's raw properties. Returns the
        properties and persistence; valid ones are remembered for the next publish that sends the
        same bytes, unless they name a reply-to (its rewrite depends on the channel's state)."""
        original = properties
        has_reply_to = len(properties) > 1 and properties[0] & 0x02
        if has_reply_to:  # maybe amq.rabbitmq.reply-to
            self.vhost.get_exchange(m.exchange)  # RabbitMQ checks the exchange first
            properties = reply_to.rewrite(properties, channel.reply)
        if len(properties) > 1 and properties[1] & _USER_ID_FLAG:
            user_id = spec.BasicProperties.decode(properties).user_id
            if user_id != self.conn.user:
                raise SoftError(
                    spec.PRECONDITION_FAILED,
                    f"user_id property set to '{user_id}' but authenticated user was '{self.conn.user}'",
                )
        if len(properties) > 1 and properties[0] & _EXPIRATION_FLAG:
            expiration = spec.BasicProperties.decode(properties).expiration or ""
            problem = expiration_error(expiration)
            if problem is not None:  # RabbitMQ's check at publish (rabbit_basic:parse_expiration)
                raise SoftError(spec.PRECONDITION_FAILED, f"invalid expiration '{expiration}': {problem}")
        known = (properties, is_persistent(properties))
        if not has_reply_to:
            if len(self._properties) >= _PROPERTIES_CACHE_SIZE:
                self._properties.clear()
            self._properties[original] = known
        return known

    def _route(self, channel: Channel, mandatory: bool, message: Message) -> None:
        if not message.exchange and message.routing_key.startswith(reply_to.REPLY_PREFIX):
            self._route_reply(channel, mandatory, message)
            return
        vhost = self.vhost
        try:
            routed = vhost.publish(message.exchange, message)
            self.last_routed = routed
        except StoreError as exc:
            self.broker.store_failed(exc)
            if not channel.confirm:  # nobody to nack: say so rather than drop the message silently
                raise HardError(spec.RESOURCE_ERROR, f"cannot store message: {exc}") from exc
            channel.publish_seq += 1
            channel.failed.add(channel.publish_seq)
            self._confirming.add(channel)
            return
        sync = message.persistent and any(queue.store is not None for queue in routed)
        rejected = vhost.rejected  # queues that refused it (x-overflow reject-publish)
        if not routed:
            exchange = vhost.exchanges.get(message.exchange)
            if exchange is not None and exchange.DEFERS:  # held back to be routed later, not lost
                sync = message.persistent and getattr(exchange, "store", None) is not None
                rejected = 0  # not routed yet: whatever ``rejected`` says is about an earlier message
            elif mandatory and not rejected:  # refused is routed: nacked, never returned (RabbitMQ)
                self._return(channel, message)
        if channel.confirm:
            channel.publish_seq += 1
            if rejected:  # nacked even when other queues took it, as RabbitMQ does
                channel.failed.add(channel.publish_seq)
            if sync:
                channel.unsynced.append(channel.publish_seq)
                self._sync_marks[channel] = channel.publish_seq
            self._confirming.add(channel)

    def _route_reply(self, channel: Channel, mandatory: bool, message: Message) -> None:
        """A reply to amq.rabbitmq.reply-to.<token>: straight to that consumer, if it still exists."""
        consumer = reply_to.consumer_for(message.routing_key)
        if consumer is not None:
            consumer.deliver(message)
        elif mandatory:
            self._return(channel, message)
        if channel.confirm:
            channel.publish_seq += 1
            self._confirming.add(channel)

    def _return(self, channel: Channel, message: Message) -> None:
        self.conn.send_content(
            channel.id,
            spec.BasicReturn(spec.NO_ROUTE, _NO_ROUTE, message.exchange, message.routing_key),
            message.properties,
            message.body,
        )

    def _basic_ack(self, channel: Channel, m: spec.BasicAck) -> None:
        self._settle(channel, m.delivery_tag, m.multiple, None)

    def _basic_nack(self, channel: Channel, m: spec.BasicNack) -> None:
        self._settle(channel, m.delivery_tag, m.multiple, m.requeue)

    def _basic_reject(self, channel: Channel, m: spec.BasicReject) -> None:
        self._settle(channel, m.delivery_tag, False, m.requeue)

    def _settle(self, channel: Channel, tag: int, multiple: bool, requeue: bool | None) -> None:
        if channel.tx is not None:
            if not multiple and (tag not in channel.unacked or tag in channel.tx_settled):
                raise SoftError(spec.PRECONDITION_FAILED, f"unknown delivery tag {tag}")
            channel.tx_settled.add(tag)
            channel.tx.append(("settle", tag, multiple, requeue))
            return
        channel.settle(tag, multiple, requeue)

    def _basic_recover(self, channel: Channel, m: spec.BasicRecover) -> None:
        if not m.requeue:
            raise HardError(spec.NOT_IMPLEMENTED, "requeue=false")
        channel.recover()
        self._reply(channel, spec.BasicRecoverOk())

    def _basic_recover_async(self, channel: Channel, m: spec.BasicRecoverAsync) -> None:
        if not m.requeue:
            raise HardError(spec.NOT_IMPLEMENTED, "requeue=false")
        channel.recover()

    # -- confirm and tx ------------------------------------------------------------------------

    def _confirm_select(self, channel: Channel, m: spec.ConfirmSelect) -> None:
        if channel.tx is not None:
            raise SoftError(spec.PRECONDITION_FAILED, "cannot switch from tx to confirm mode")
        channel.confirm = True
        if not m.nowait:
            self._reply(channel, spec.ConfirmSelectOk())

    def _tx_select(self, channel: Channel, m: spec.TxSelect) -> None:
        if channel.confirm:
            raise SoftError(spec.PRECONDITION_FAILED, "cannot switch from confirm to tx mode")
        if channel.tx is None:
            channel.tx = []
        self._reply(channel, spec.TxSelectOk())

    def _tx_commit(self, channel: Channel, m: spec.TxCommit) -> None:
        if channel.tx is None:
            raise SoftError(spec.PRECONDITION_FAILED, "channel is not transactional")
        pending, channel.tx = channel.tx, []
        channel.tx_settled.clear()
        for item in pending:
            if item[0] == "publish":
                self._route(channel, item[1], item[2])
            else:
                channel.settle(item[1], item[2], item[3])
        self._reply(channel, spec.TxCommitOk())

    def _tx_rollback(self, channel: Channel, m: spec.TxRollback) -> None:
        if channel.tx is None:
            raise SoftError(spec.PRECONDITION_FAILED, "channel is not transactional")
        channel.tx = []
        channel.tx_settled.clear()
        self._reply(channel, spec.TxRollbackOk())

    # -- channel and access --------------------------------------------------------------------

    def _channel_flow(self, channel: Channel, m: spec.ChannelFlow) -> None:
        if not m.active:
            raise HardError(spec.NOT_IMPLEMENTED, "active=false")
        self._reply(channel, spec.ChannelFlowOk(active=True))

    def _access_request(self, channel: Channel, m: spec.AccessRequest) -> None:
        self._reply(channel, spec.AccessRequestOk(ticket=1))


def _new_tag() -> str:
    return "amq.ctag-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


_HANDLERS: dict[type[spec.Method], Callable[[Session, Channel, Any], None]] = {
    spec.ExchangeDeclare: Session._exchange_declare,
    spec.ExchangeDelete: Session._exchange_delete,
    spec.ExchangeBind: Session._exchange_bind,
    spec.ExchangeUnbind: Session._exchange_unbind,
    spec.QueueDeclare: Session._queue_declare,
    spec.QueueBind: Session._queue_bind,
    spec.QueueUnbind: Session._queue_unbind,
    spec.QueuePurge: Session._queue_purge,
    spec.QueueDelete: Session._queue_delete,
    spec.BasicQos: Session._basic_qos,
    spec.BasicConsume: Session._basic_consume,
    spec.BasicCancel: Session._basic_cancel,
    spec.BasicGet: Session._basic_get,
    spec.BasicAck: Session._basic_ack,
    spec.BasicNack: Session._basic_nack,
    spec.BasicReject: Session._basic_reject,
    spec.BasicRecover: Session._basic_recover,
    spec.BasicRecoverAsync: Session._basic_recover_async,
    spec.ConfirmSelect: Session._confirm_select,
    spec.TxSelect: Session._tx_select,
    spec.TxCommit: Session._tx_commit,
    spec.TxRollback: Session._tx_rollback,
    spec.ChannelFlow: Session._channel_flow,
    spec.AccessRequest: Session._access_request,
}
