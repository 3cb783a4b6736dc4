"""In-memory store: the same contract as the segment store, nothing survives the process.

Used by tests (every store test runs against both implementations) and as the reference behaviour.
"Recovery" here means reopening the same object, which is what a clean restart looks like to a queue.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from conveyor.core.message import Message
from conveyor.store.api import Position


class MemoryMessageStore:
    def __init__(self) -> None:
        self._messages: dict[Position, tuple[Message, bool]] = {}  # position -> (message, persistent)
        self._delivered: set[Position] = set()
        self._next = 0

    def append(self, message: Message, persistent: bool = True) -> Position:
        self._next += 1
        position = Position(1, self._next)
        self._messages[position] = (message, persistent)
        return position

    def delete(self, position: Position) -> None:
        self._messages.pop(position, None)
        self._delivered.discard(position)

    def delete_from(self, position: Position) -> int:
        doomed = [p for p in self._messages if p >= position]
        for p in doomed:
            self.delete(p)
        return len(doomed)

    def mark_delivered(self, position: Position) -> None:
        if position in self._messages:
            self._delivered.add(position)

    def read(self, position: Position) -> Message:
        return self._messages[position][0]

    def read_from(
        self, position: Position, limit: int | None, *, persistent_only: bool = True
    ) -> Iterator[tuple[Position, Message, bool]]:
        if limit is not None and limit <= 0:
            return
        count = 0
        for p in sorted(p for p in self._messages if p >= position):
            message, persistent = self._messages[p]
            if persistent_only and not persistent:
                continue
            yield p, message, p in self._delivered
            count += 1
            if limit is not None and count >= limit:
                return

    def recover(self) -> int:
        # A restart forgets transient messages, as the segment store's scan does.
        for p in [p for p, (_, persistent) in self._messages.items() if not persistent]:
            self.delete(p)
        return len(self._messages)

    def recovered(self) -> Iterator[tuple[Position, Message, bool]]:
        self.recover()
        return self.read_from(Position(0, 0), None)

    def sync(self, callback: Callable[[], None]) -> None:
        callback()  # memory is as durable as it gets

    def flush_for_sync(self) -> list[int]:
        return []

    def close(self) -> None:
        pass

    def destroy(self) -> None:
        self._messages.clear()
        self._delivered.clear()

    @property
    def count(self) -> int:
        return len(self._messages)


class MemoryDefinitionStore:
    def __init__(self) -> None:
        self._definitions: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        return copy.deepcopy(self._definitions)

    def save(self, definitions: dict[str, Any]) -> None:
        self._definitions = copy.deepcopy(definitions)
