"""Stand-ins shared by the core unit tests: a recording consumer and a hand-run event loop."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.core.message import QueuedMessage


class StandInConsumer:
    """Records deliveries; ``credit`` None is unlimited, otherwise each delivery spends one."""

    def __init__(
        self,
        tag: str = "c",
        credit: int | None = None,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        priority: int = 0,
        owner: object = None,
    ) -> None:
        self.tag = tag
        self.credit = credit
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.owner = owner
        self.received: list[QueuedMessage] = []
        self.cancelled = False

    def can_deliver(self) -> bool:
        return self.credit is None or self.credit > 0

    def deliver(self, entry: QueuedMessage) -> None:
        if self.credit is not None:
            assert self.credit > 0, "delivered without credit"
            self.credit -= 1
        self.received.append(entry)

    def cancelled_by_server(self) -> None:
        self.cancelled = True

    def bodies(self) -> list[bytes]:
        return [e.message.body for e in self.received]


class Scheduler:
    """The event loop's call_soon, as a list the test runs explicitly."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def __call__(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)

    def run_one(self) -> None:
        self.pending.pop(0)()

    def run(self, check: Callable[[], None] = lambda: None) -> int:
        """Run until nothing is pending, calling ``check`` after each callback; returns how many ran."""
        ran = 0
        while self.pending:
            self.run_one()
            check()
            ran += 1
        return ran
