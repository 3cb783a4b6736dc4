"""The interface a front-end implements to receive messages from a queue.

A queue never blocks on a consumer: it asks ``can_deliver()`` (the front-end's credit: prefetch,
flow control, a paused transport) and, when true, calls ``deliver()``, which must not raise. The
front-end records the delivery (for later ack/requeue) and encodes it for the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from conveyor.core.message import QueuedMessage


class Consumer(Protocol):
    tag: str
    no_ack: bool
    exclusive: bool
    priority: int
    owner: Any  # the connection (or session) that created it, for exclusivity checks

    def can_deliver(self) -> bool:
        """True when this consumer has credit for one more message right now."""
        ...

    def deliver(self, entry: QueuedMessage) -> None:
        """Hand one message over; the queue has already counted it as unacked unless no_ack."""
        ...

    def cancelled_by_server(self) -> None:
        """The queue went away (deleted); the front-end tells its client, if it can."""
        ...
