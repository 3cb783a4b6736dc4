"""Time for the core: read it and set timers through one object, so tests can move it by hand.

The server passes a ``LoopClock`` (the event loop's clock and timers); unit tests pass a
``ManualClock`` and call ``advance``, which runs due timers in order. No core module reads the time
or sleeps on its own, so TTLs, expiries and delays are testable without waiting.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds, for expiries and delays."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps users see (x-death ``time``)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """The event loop's time and timers (the loop is any object with ``time`` and ``call_later``)."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop

    def now(self) -> float:
        return float(self._loop.time())

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_later(max(delay, 0.0), callback)  # type: ignore[no-any-return]


class SystemClock:
    """Real time with timers that never fire: for a core used without an event loop (scripts)."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        raise RuntimeError("SystemClock has no timers: give the core a LoopClock or a ManualClock")


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "due")

    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to: ``advance(seconds)`` runs the timers that fall due."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer(self._now + max(delay, 0.0), callback)
        heapq.heappush(self._timers, (timer.due, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            due, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, due)
            if not timer.cancelled:
                timer.callback()
        self._now = target

    @property
    def pending(self) -> int:
        return sum(1 for _, _, t in self._timers if not t.cancelled)
