"""The message as the core sees it.

A message is created once by a front-end and shared, never copied, by every queue it is routed to.
Its properties stay in the wire form the publisher sent (AMQP's property flags + property list), so a
delivery re-uses those bytes; the core decodes them only when routing or a queue feature needs a
field (the headers exchange, later TTL and dead-lettering), through the ``decoder`` the front-end
supplied. That keeps the core free of any wire format while costing nothing on the common path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Message:
    __slots__ = ("_headers", "body", "decoder", "exchange", "persistent", "properties", "routing_key")

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
        persistent: bool = False,
        decoder: Callable[[bytes], dict[str, Any] | None] | None = None,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties  # raw, as received
        self.body = body
        self.persistent = persistent
        self.decoder = decoder  # raw properties -> headers table (or None)
        self._headers: dict[str, Any] | bool | None = False  # False: not decoded yet

    @property
    def headers(self) -> dict[str, Any] | None:
        """The application headers table, decoded on first use."""
        headers = self._headers
        if headers is False:
            headers = self.decoder(self.properties) if self.decoder is not None else None
            self._headers = headers
        return headers  # type: ignore[return-value]

    @property
    def body_size(self) -> int:
        return len(self.body)

    def __repr__(self) -> str:
        return f"Message(exchange={self.exchange!r}, routing_key={self.routing_key!r}, {len(self.body)} bytes)"


class QueuedMessage:
    """One message's place in one queue: redelivery state and its order in the queue.

    ``seq`` increases with every enqueue, so requeued messages can be put back in their original
    order ahead of newer ones by comparing ``seq``.
    """

    __slots__ = ("delivery_count", "message", "position", "queue", "redelivered", "seq")

    def __init__(self, message: Message, queue: Any, seq: int) -> None:
        self.message = message
        self.queue = queue
        self.seq = seq
        self.redelivered = False
        self.delivery_count = 0
        self.position: Any = None  # where the queue's store keeps it, if it does

    def __repr__(self) -> str:
        return f"QueuedMessage(seq={self.seq}, redelivered={self.redelivered}, {self.message!r})"
