"""The classic queue with a message store: the in-memory window, the on-disk tail, acks, purge, recovery.

Every test runs against both store implementations through the parametrized ``harness`` fixture. The
queue keeps only ``WINDOW`` messages in ``ready``; the rest wait in the store (the "tail") and are paged
back in, in order, by basic.get and by the pump. ``harness.restart()`` is a clean restart: the store is
closed and reopened (the same object for the memory store) and a new queue recovers from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stand_ins import Scheduler, StandInConsumer

from conveyor.core.message import Message, QueuedMessage
from conveyor.core.queue.classic import Queue
from conveyor.store.api import MessageStore
from conveyor.store.memory import MemoryMessageStore
from conveyor.store.segments import SegmentMessageStore

WINDOW = 4


class Harness:
    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.scheduler = Scheduler()
        self.store: MessageStore = self._open()
        self.queue = self._queue()

    def _open(self) -> MessageStore:
        if self.kind == "memory":
            return MemoryMessageStore()
        return SegmentMessageStore(self.directory, segment_size=400)

    def _queue(self) -> Queue:
        return Queue("q", durable=True, schedule=self.scheduler, store=self.store, window=WINDOW)

    def restart(self) -> int:
        """Clean restart: a new queue over the reopened store; returns what ``recover`` returned."""
        if self.kind == "segments":
            self.store.close()
            self.store = self._open()
        self.scheduler = Scheduler()
        self.queue = self._queue()
        return self.queue.recover()


@pytest.fixture(params=["memory", "segments"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(request.param, tmp_path / "q")
    yield h
    h.store.close()


def msg(body: str, persistent: bool = True) -> Message:
    return Message("", "q", b"\x00\x00", body.encode(), persistent=persistent)


def names(n: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def drain_with_get(queue: Queue, no_ack: bool = False, *, window_holds: bool = True) -> list[QueuedMessage]:
    """basic.get until empty; ``window_holds``: nothing was requeued, so ``ready`` never passes the window."""
    got = []
    while (entry := queue.get(no_ack)) is not None:
        if window_holds:
            assert len(queue.ready) <= WINDOW
        got.append(entry)
    return got


def body_list(entries: list[QueuedMessage]) -> list[bytes]:
    return [e.message.body for e in entries]


def encoded(strings: list[str]) -> list[bytes]:
    return [s.encode() for s in strings]


def test_window_bounds_memory_and_a_consumer_gets_everything_in_order(harness: Harness) -> None:
    queue = harness.queue
    for body in names(50):
        queue.push(msg(body))
        assert len(queue.ready) <= WINDOW
    assert queue.message_count == 50
    assert harness.store.count == 50
    consumer = StandInConsumer()
    queue.add_consumer(consumer)

    def window_respected() -> None:
        assert len(queue.ready) <= WINDOW

    harness.scheduler.run(window_respected)
    assert consumer.bodies() == encoded(names(50))
    assert queue.message_count == 0
    assert queue.unacked == 50


def test_consumer_with_little_credit_gets_everything_in_order(harness: Harness) -> None:
    queue = harness.queue
    for body in names(30):
        queue.push(msg(body))
    consumer = StandInConsumer(credit=3)
    queue.add_consumer(consumer)
    acked = 0
    for _ in range(30):
        harness.scheduler.run()
        assert len(queue.ready) <= WINDOW
        for entry in consumer.received[acked:]:
            queue.ack(entry)
            consumer.credit = (consumer.credit or 0) + 1
            acked += 1
        queue.wake()
    assert consumer.bodies() == encoded(names(30))
    assert harness.store.count == 0


def test_messages_published_while_a_consumer_is_attached_arrive_in_order(harness: Harness) -> None:
    queue = harness.queue
    consumer = StandInConsumer(credit=0)
    queue.add_consumer(consumer)
    for body in names(20):
        queue.push(msg(body))
    harness.scheduler.run()
    assert consumer.received == []
    consumer.credit = None
    queue.wake()
    harness.scheduler.run()
    assert consumer.bodies() == encoded(names(20))


def test_basic_get_drains_in_order(harness: Harness) -> None:
    queue = harness.queue
    for body in names(50):
        queue.push(msg(body))
    got = drain_with_get(queue)
    assert body_list(got) == encoded(names(50))
    assert queue.get(False) is None
    assert queue.unacked == 50
    assert harness.store.count == 50  # delivered, not acked: still owed
    for entry in got:
        queue.ack(entry)
    assert queue.unacked == 0
    assert harness.store.count == 0


def test_ack_deletes_from_the_store(harness: Harness) -> None:
    queue = harness.queue
    for body in names(10):
        queue.push(msg(body))
    first, second = queue.get(False), queue.get(False)
    assert first is not None and second is not None
    assert harness.store.count == 10
    queue.ack(second)
    assert harness.store.count == 9
    queue.ack(first)
    assert harness.store.count == 8
    assert harness.restart() == 8
    assert body_list(drain_with_get(harness.queue)) == encoded(names(10)[2:])


def test_transient_messages_behind_the_tail_keep_their_order(harness: Harness) -> None:
    queue = harness.queue
    bodies = names(30)
    for i, body in enumerate(bodies):
        queue.push(msg(body, persistent=i % 3 != 1))
        assert len(queue.ready) <= WINDOW
    assert queue.message_count == 30
    assert body_list(drain_with_get(queue)) == encoded(bodies)


def test_transient_messages_do_not_survive_a_restart(harness: Harness) -> None:
    queue = harness.queue
    bodies = names(30)
    for i, body in enumerate(bodies):
        queue.push(msg(body, persistent=i % 3 != 1))
    persistent = [b for i, b in enumerate(bodies) if i % 3 != 1]
    assert harness.restart() == len(persistent)
    assert harness.queue.message_count == len(persistent)
    assert body_list(drain_with_get(harness.queue)) == encoded(persistent)


def test_transient_messages_paged_in_then_restart(harness: Harness) -> None:
    # Transient messages that went through the store's tail and were paged back into the window.
    queue = harness.queue
    bodies = names(12)
    for i, body in enumerate(bodies):
        queue.push(msg(body, persistent=i % 2 == 0))
    got = [queue.get(False) for _ in range(3)]  # pages some of the tail in
    assert body_list([e for e in got if e is not None]) == encoded(bodies[:3])
    persistent_left = [b for i, b in enumerate(bodies) if i % 2 == 0]
    assert harness.restart() == len(persistent_left)
    recovered = drain_with_get(harness.queue)
    assert body_list(recovered) == encoded(persistent_left)
    assert [e.redelivered for e in recovered] == [b in ("m000", "m002") for b in persistent_left]


def test_requeue_after_window_refills_keeps_order(harness: Harness) -> None:
    queue = harness.queue
    for body in names(20):
        queue.push(msg(body))
    taken = [queue.get(False) for _ in range(7)]
    entries = [e for e in taken if e is not None]
    assert body_list(entries) == encoded(names(7))
    queue.requeue(reversed(entries[1:6]))
    queue.ack(entries[0])
    queue.ack(entries[6])
    assert queue.message_count == 18
    rest = drain_with_get(queue, window_holds=False)  # requeued messages may overfill the window
    assert body_list(rest) == encoded(names(20)[1:6] + names(20)[7:])
    assert [e.redelivered for e in rest] == [True] * 5 + [False] * 13


def test_requeue_to_a_consumer_keeps_order_across_the_tail(harness: Harness) -> None:
    queue = harness.queue
    for body in names(20):
        queue.push(msg(body))
    head = [queue.get(False) for _ in range(3)]
    consumer = StandInConsumer()
    queue.add_consumer(consumer)
    queue.requeue([e for e in head if e is not None])
    harness.scheduler.run()
    assert consumer.bodies() == encoded(names(20))
    assert [e.redelivered for e in consumer.received] == [True] * 3 + [False] * 17


def test_purge_clears_memory_and_tail(harness: Harness) -> None:
    queue = harness.queue
    for i, body in enumerate(names(30)):
        queue.push(msg(body, persistent=i != 20))
    owed = [queue.get(False), queue.get(False)]
    assert queue.purge() == 28
    assert queue.message_count == 0
    assert len(queue.ready) == 0
    assert queue.get(False) is None
    assert harness.store.count == 2  # the two delivered ones are still owed
    for entry in owed:
        assert entry is not None
        queue.ack(entry)
    assert harness.store.count == 0
    # The queue works normally after a purge, through the window and the tail again.
    for body in names(10, "n"):
        queue.push(msg(body))
    assert body_list(drain_with_get(queue)) == encoded(names(10, "n"))


def test_purge_after_recovery_clears_the_store(harness: Harness) -> None:
    for body in names(25):
        harness.queue.push(msg(body))
    assert harness.restart() == 25
    assert harness.queue.purge() == 25
    assert harness.store.count == 0
    assert harness.restart() == 0
    assert harness.queue.message_count == 0


def test_recover_restores_count_order_and_redelivered(harness: Harness) -> None:
    queue = harness.queue
    bodies = names(20)
    for body in bodies:
        queue.push(msg(body))
    got = [queue.get(False) for _ in range(5)]
    entries = [e for e in got if e is not None]
    queue.ack(entries[1])
    queue.ack(entries[3])
    assert harness.restart() == 18
    queue = harness.queue
    assert queue.message_count == 18
    assert len(queue.ready) <= WINDOW
    expected = [b for i, b in enumerate(bodies) if i not in (1, 3)]
    recovered = drain_with_get(queue)
    assert body_list(recovered) == encoded(expected)
    assert [e.redelivered for e in recovered] == [b in ("m000", "m002", "m004") for b in expected]


def test_recovered_messages_reach_a_consumer(harness: Harness) -> None:
    for body in names(40):
        harness.queue.push(msg(body))
    assert harness.restart() == 40
    consumer = StandInConsumer()
    harness.queue.add_consumer(consumer)
    harness.scheduler.run()
    assert consumer.bodies() == encoded(names(40))


def test_no_ack_get_deletes_from_the_store(harness: Harness) -> None:
    queue = harness.queue
    for body in names(12):
        queue.push(msg(body))
    got = drain_with_get(queue, no_ack=True)
    assert body_list(got) == encoded(names(12))
    assert queue.unacked == 0
    assert harness.store.count == 0
    assert harness.restart() == 0


def test_no_ack_consumer_deletes_from_the_store(harness: Harness) -> None:
    queue = harness.queue
    consumer = StandInConsumer(no_ack=True)
    queue.add_consumer(consumer)
    for body in names(12):
        queue.push(msg(body))
    harness.scheduler.run()
    assert consumer.bodies() == encoded(names(12))
    assert queue.unacked == 0
    assert harness.store.count == 0


def test_delete_destroys_the_store(harness: Harness) -> None:
    queue = harness.queue
    for body in names(12):
        queue.push(msg(body))
    store = harness.store
    assert queue.delete() == 12
    assert store.count == 0
    if harness.kind == "segments":
        assert not harness.directory.exists()
