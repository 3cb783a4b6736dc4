"""A queue's ready list: the messages waiting for a consumer, in the order they go out.

An ordinary queue's is a FIFO ordered by ``seq`` (enqueue order). A priority queue's
(x-max-priority) is one FIFO per priority, highest served first. Both put requeued messages back in
their original places, ahead of newer ones (``put_back``), and both hand out entries with
``popleft``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator

from conveyor.core.message import QueuedMessage


def _seq_of(entry: QueuedMessage) -> int:
    return entry.seq


class Fifo(deque[QueuedMessage]):
    """The ready list of an ordinary queue."""

    def put_back(self, back: list[QueuedMessage]) -> Fifo:
        """Requeued entries (sorted by seq) into their places; returns the list to keep."""
        if not self or back[-1].seq < self[0].seq:
            self.extendleft(reversed(back))  # the usual case: all requeued are older than all ready
            return self
        return Fifo(heapq.merge(back, self, key=_seq_of))


class PriorityReady:
    """The ready list of a priority queue: one FIFO per priority, highest first."""

    def __init__(self, max_priority: int) -> None:
        self.max_priority = max_priority
        self._levels: dict[int, deque[QueuedMessage]] = {}
        self._count = 0

    def _level(self, entry: QueuedMessage) -> deque[QueuedMessage]:
        message = entry.message
        priority = message.decoder.priority(message.properties) if message.decoder is not None else 0
        priority = min(priority, self.max_priority)
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = deque()
        return level

    def append(self, entry: QueuedMessage) -> None:
        self._level(entry).append(entry)
        self._count += 1

    def popleft(self) -> QueuedMessage:
        for priority in sorted(self._levels, reverse=True):
            level = self._levels[priority]
            if level:
                self._count -= 1
                return level.popleft()
        raise IndexError("pop from an empty queue")

    def put_back(self, back: list[QueuedMessage]) -> PriorityReady:
        for entry in reversed(back):
            level = self._level(entry)
            if not level or entry.seq < level[0].seq:
                level.appendleft(entry)
            else:
                merged = deque(heapq.merge([entry], level, key=_seq_of))
                level.clear()
                level.extend(merged)
            self._count += 1
        return self

    def clear(self) -> None:
        self._levels.clear()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[QueuedMessage]:
        for priority in sorted(self._levels, reverse=True):
            yield from self._levels[priority]
