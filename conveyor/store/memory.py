"""In-memory store: for transient queues and tests. Nothing survives the process."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

from conveyor.core.message import Message
from conveyor.store.api import Position


class MemoryMessageStore:
    def __init__(self) -> None:
        self._messages: dict[Position, Message] = {}
        self._next = 0

    def append(self, message: Message) -> Position:
        self._next += 1
        position = Position(0, self._next)
        self._messages[position] = message
        return position

    def delete(self, position: Position) -> None:
        self._messages.pop(position, None)

    def read(self, position: Position) -> Message:
        return self._messages[position]

    def sync(self, callback: Callable[[], None]) -> None:
        callback()  # memory is as durable as it gets

    def recover(self) -> Iterator[tuple[Position, Message]]:
        yield from sorted(self._messages.items())

    def close(self) -> None:
        self._messages.clear()

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
