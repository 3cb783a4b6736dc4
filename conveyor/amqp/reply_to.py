"""Direct reply-to (RabbitMQ's ``amq.rabbitmq.reply-to``): RPC replies without a reply queue.

A client consumes (no-ack only) from the pseudo-queue ``amq.rabbitmq.reply-to`` on a channel, then
publishes requests on that same channel with the ``reply-to`` property set to that name. The broker
rewrites the property to ``amq.rabbitmq.reply-to.<token>``, a per-consumer address. Whoever answers
publishes to the default exchange with that address as routing key, and the reply goes straight to the
consumer: no queue, no store, no ack. When the consumer is cancelled or its channel closes, the token
is forgotten and later replies are unroutable (a mandatory one comes back as basic.return).

The token is random (RabbitMQ encodes the channel's pid plus a random key; either way clients treat it
as opaque). Live tokens are kept in one process-wide registry, as RabbitMQ routes a reply to the
channel whatever vhost the replier is in. The registry holds its consumers weakly, so a session
dropped without ``connection_lost`` (tests) leaves nothing behind; channels also unregister on close.
"""

from __future__ import annotations

import base64
import os
import weakref
from typing import TYPE_CHECKING

from conveyor.amqp import spec
from conveyor.amqp.errors import SoftError

if TYPE_CHECKING:
    from conveyor.amqp.channel import Channel
    from conveyor.core.message import Message

REPLY_QUEUE = "amq.rabbitmq.reply-to"
REPLY_PREFIX = REPLY_QUEUE + "."
_REPLY_TO_FLAG = 0x02  # basic property flag 0x0200 (reply-to), in the high byte of the flags word

_consumers: weakref.WeakValueDictionary[str, ReplyConsumer] = weakref.WeakValueDictionary()


class ReplyConsumer:
    """The one direct reply-to consumer a channel may have."""

    __slots__ = ("__weakref__", "address", "channel", "tag", "token")

    def __init__(self, channel: Channel, tag: str) -> None:
        self.channel = channel
        self.tag = tag
        self.token = base64.b64encode(os.urandom(24)).decode()
        self.address = REPLY_PREFIX + self.token
        _consumers[self.token] = self

    def unregister(self) -> None:
        if _consumers.get(self.token) is self:
            del _consumers[self.token]

    def deliver(self, message: Message) -> None:
        """Send a reply now. As RabbitMQ does, the delivery tag is the channel's next tag, which the
        reply does not use up (a no-ack delivery is never acked, so the number is never read)."""
        channel = self.channel
        channel.session.conn.send_content(
            channel.id,
            spec.BasicDeliver(self.tag, channel.next_tag + 1, False, message.exchange, message.routing_key),
            message.properties,
            message.body,
        )


def consumer_for(address: str) -> ReplyConsumer | None:
    """The live consumer behind ``amq.rabbitmq.reply-to.<token>``, if there is one."""
    return _consumers.get(address[len(REPLY_PREFIX):]) if address.startswith(REPLY_PREFIX) else None


def exists(name: str) -> bool:
    """queue.declare of a reply-to name succeeds for the pseudo-queue itself and for live addresses."""
    return name == REPLY_QUEUE or consumer_for(name) is not None


def rewrite(properties: bytes, reply: ReplyConsumer | None) -> bytes:
    """The properties with ``reply-to: amq.rabbitmq.reply-to`` replaced by the channel's address.

    Decodes only when the reply-to flag is set; other values are left alone. Without a reply consumer
    on the channel, such a publish is refused as RabbitMQ refuses it.
    """
    if len(properties) < 2 or not properties[0] & _REPLY_TO_FLAG:
        return properties
    decoded = spec.BasicProperties.decode(properties)
    if decoded.reply_to != REPLY_QUEUE:
        return properties
    if reply is None:
        raise SoftError(spec.PRECONDITION_FAILED, "fast reply consumer does not exist")
    decoded.reply_to = reply.address
    return decoded.encode()
