"""The message as the core sees it.

A message is created once by a front-end and shared, never copied, by every queue it is routed to.
Its properties stay in the wire form the publisher sent (AMQP's property flags + property list), so a
delivery re-uses those bytes; the core decodes them only when routing or a queue feature needs a
field (the headers exchange, later TTL and dead-lettering), through the ``decoder`` the front-end
supplied. That keeps the core free of any wire format while costing nothing on the common path.
"""

from __future__ import annotations

from typing import Any, Protocol


class PropertiesCodec(Protocol):
    """How the core reads and rewrites a front-end's raw properties (AMQP's, for now).

    Calling it gives the headers table; the other methods serve rarer paths: TTL, priorities, and
    rewriting a message when it is dead-lettered or loses its BCC header.
    """

    def __call__(self, properties: bytes) -> dict[str, Any] | None: ...
    def decode(self, properties: bytes) -> dict[str, Any]: ...
    def encode(self, values: dict[str, Any]) -> bytes: ...
    def expiration(self, properties: bytes) -> str | None: ...
    def priority(self, properties: bytes) -> int: ...


class Message:
    __slots__ = ("_headers", "body", "decoder", "exchange", "persistent", "properties", "routing_key")

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
        persistent: bool = False,
        decoder: PropertiesCodec | None = None,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties  # raw, as received
        self.body = body
        self.persistent = persistent
        self.decoder = decoder  # reads the raw properties: headers table on call, more on demand
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

    def with_properties(self, changes: dict[str, Any], routing_key: str | None = None,
                        exchange: str | None = None) -> Message:
        """A copy whose properties are re-encoded with ``changes`` (a value of None removes one)."""
        assert self.decoder is not None, "rewriting properties needs the front-end's codec"
        values = self.decoder.decode(self.properties)
        for key, value in changes.items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
        return Message(
            self.exchange if exchange is None else exchange,
            self.routing_key if routing_key is None else routing_key,
            self.decoder.encode(values),
            self.body,
            self.persistent,
            self.decoder,
        )

    def __repr__(self) -> str:
        return f"Message(exchange={self.exchange!r}, routing_key={self.routing_key!r}, {len(self.body)} bytes)"


class Long(int):
    """An integer header value the front-end must send as a 64-bit integer (AMQP 'l'), as RabbitMQ
    types the x-death count; plain ints take the narrowest encoding."""


READY, OUT, GONE = 0, 1, 2  # QueuedMessage.state: in the ready list, delivered, dropped/expired


class QueuedMessage:
    """One message's place in one queue: redelivery state and its order in the queue.

    ``seq`` increases with every enqueue, so requeued messages can be put back in their original
    order ahead of newer ones by comparing ``seq``.
    """

    __slots__ = ("delivery_count", "expires_at", "message", "position", "queue", "redelivered", "seq", "state")

    def __init__(self, message: Message, queue: Any, seq: int) -> None:
        self.message = message
        self.queue = queue
        self.seq = seq
        self.redelivered = False
        self.delivery_count = 0
        self.position: Any = None  # where the queue's store keeps it, if it does
        self.expires_at: float | None = None  # clock.now() after which it is expired (TTL)
        self.state = READY

    def __repr__(self) -> str:
        return f"QueuedMessage(seq={self.seq}, redelivered={self.redelivered}, {self.message!r})"
