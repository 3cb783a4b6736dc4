"""The store contract: what queues and the broker need from persistence.

The core owns the stores, not the protocol: a durable queue holds a ``MessageStore`` and writes a
persistent message to it when the message is enqueued, deletes it when the message is acked, and
reads it back on recovery. A front-end never sees a store. So a new implementation (segment files
on local disk next, a shared database later) plugs in here without touching ``amqp/``.

Contract, for every implementation (tests run the same suite against each):
* ``append`` returns a ``Position`` that stays valid until ``delete(position)``; positions of one store
  increase in append order, so recovery yields messages in their original order.
* ``delete`` is idempotent for a known position.
* ``sync(callback)`` calls ``callback`` once everything appended before the call is durable (at
  once for the memory store). Publisher confirms for persistent messages wait on it.
* ``recover`` is what a queue calls after a (re)start: transient records are forgotten, since they
  do not survive a restart, and the number of live persistent messages is returned.
* ``recovered`` yields the persistent messages that were appended and not deleted, in order, with
  whether each was delivered before (its redelivered flag); ``read_from`` does the same from a
  position on, transient records included when asked (the backlog paged out of memory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

from conveyor.core.message import Message


class StoreError(Exception):
    """The store could not do what was asked (disk full, unwritable directory, bad format)."""


class Position(NamedTuple):
    segment: int
    offset: int


class MessageStore(Protocol):
    def append(self, message: Message, persistent: bool = True) -> Position: ...
    def delete(self, position: Position) -> None: ...
    def delete_from(self, position: Position) -> int: ...
    def mark_delivered(self, position: Position) -> None: ...
    def read(self, position: Position) -> Message: ...
    def read_from(
        self, position: Position, limit: int | None, *, persistent_only: bool = True
    ) -> Iterator[tuple[Position, Message, bool]]: ...
    def recover(self) -> int: ...
    def recovered(self) -> Iterator[tuple[Position, Message, bool]]: ...
    def sync(self, callback: Callable[[], None]) -> None: ...
    def close(self) -> None: ...
    def destroy(self) -> None: ...

    @property
    def count(self) -> int: ...


class DefinitionStore(Protocol):
    """Durable topology: vhosts, users, permissions, exchanges, queues, bindings, policies.

    The document is RabbitMQ's definitions JSON shape, so export/import share the serialisation.
    """

    def load(self) -> dict[str, Any]: ...
    def save(self, definitions: dict[str, Any]) -> None: ...
