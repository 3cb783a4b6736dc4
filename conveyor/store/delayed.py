"""The store of an ``x-delayed-message`` exchange: held persistent messages, each with its due time.

Built on the segment store (segments.py), not beside it: one directory per durable delayed exchange,
holding ordinary segment files and ack logs, written and recovered by a ``SegmentMessageStore``. What
this class adds is the due time, carried inside the record so that the segment format stays the same.

Record format
-------------
A record is a segment record (see segments.py) whose body is prefixed with the due time::

    segment payload = u8 flags | u8 len | exchange | u8 len | routing key
                      | u32 len | basic properties as received on the wire
                      | u64 due time (big-endian, milliseconds since the Unix epoch) | body

The due time is wall-clock time, so a schedule survives a restart (the monotonic clock does not).
Records are always written persistent (flags bit 0 set): only persistent messages come here, and a
record is live until ``delete`` logs it in the ack log, which the exchange does once it has released
the message to its queues. Positions increase in append order, which is publish order, so ``scan``
lists records with equal due times in the order they were published.

``meta.json`` says ``"kind": "x-delayed-message"`` for people and tools (it is not read back).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.core.message import Message
from conveyor.store.api import Position, StoreError
from conveyor.store.segments import DEFAULT_SEGMENT_SIZE, Committer, SegmentMessageStore

__all__ = ["DUE_PREFIX", "DelayedStore"]

DUE_PREFIX = struct.Struct("!Q")  # the due time in the body prefix: u64 ms since the epoch


class DelayedStore:
    """Held messages of one durable delayed exchange, indexed by due time. Event loop only."""

    def __init__(
        self,
        directory: Path,
        committer: Committer | None = None,
        decoder: Callable[[bytes], Any] | None = None,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        meta: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.decoder = decoder
        info = {"kind": "x-delayed-message", **(meta or {})}
        # The segment store is the one that registers with the committer (mark_dirty(itself)), so the
        # committer fsyncs its files directly; this class holds no file of its own.
        self.segments = SegmentMessageStore(
            directory, committer=committer, segment_size=segment_size, decoder=decoder, meta=info
        )

    def append(self, message: Message, due_wall_ms: int) -> Position:
        """Write ``message`` to be released at ``due_wall_ms``; durable after the next commit."""
        if not 0 <= due_wall_ms < 1 << 64:
            raise StoreError(f"due time {due_wall_ms} ms is out of range")
        stored = Message(
            message.exchange,
            message.routing_key,
            message.properties,
            DUE_PREFIX.pack(due_wall_ms) + message.body,
            persistent=True,
        )
        return self.segments.append(stored, persistent=True)

    def read(self, position: Position) -> Message:
        """The message at ``position`` as it was published (prefix stripped). KeyError if it is gone."""
        stored = self.segments.read(position)
        return Message(
            stored.exchange,
            stored.routing_key,
            stored.properties,
            stored.body[DUE_PREFIX.size :],
            persistent=True,
            decoder=self.decoder,
        )

    def delete(self, position: Position) -> None:
        """The message was released: its record is dead (idempotent)."""
        self.segments.delete(position)

    def scan(self) -> list[tuple[int, Position]]:
        """``(due_wall_ms, position)`` of every live record, in append order.

        Each record is read once and only its due time kept, so memory grows with the number of
        held messages, not with their bodies.
        """
        found: list[tuple[int, Position]] = []
        for position, stored, _redelivered in self.segments.recovered():
            body = stored.body
            if len(body) < DUE_PREFIX.size:
                raise StoreError(f"{self.directory}: record {position} has no due time; not a delayed store")
            found.append((DUE_PREFIX.unpack_from(body)[0], position))
        return found

    @property
    def count(self) -> int:
        """Live (held) messages in the store."""
        return self.segments.count

    def sync(self, callback: Callable[[], None]) -> None:
        """fsync now on this thread, then call ``callback`` (tests, shutdown)."""
        self.segments.sync(callback)

    def close(self) -> None:
        self.segments.close()

    def destroy(self) -> None:
        """The exchange was deleted: the directory and its files go."""
        self.segments.destroy()
