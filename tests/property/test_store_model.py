"""A classic queue over a segment store against a plain-Python model (RabbitMQ's classic_queue_prop_SUITE).

Rules publish (persistent or transient), get (ack or no-ack mode), ack, reject with requeue, purge, sync,
and restart the queue: cleanly (close the store, reopen it, recover) or dirtily (as after a power loss:
the newest segment file loses a random number of the bytes written since the last sync, then recover).

The model is the ready list (in publish order) and the unacked set. After a clean restart, transient
messages are gone and unacked persistent ones are ready again, redelivered, in their original places.
After a dirty restart, additionally, a suffix of the persistent messages may be lost, but only messages
whose append had not been synced; the model then takes over exactly what was recovered.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conveyor.core.message import Message, QueuedMessage
from conveyor.core.queue.classic import Queue
from conveyor.store.api import Position
from conveyor.store.segments import SegmentMessageStore

WINDOW = 3
SEGMENT_SIZE = 200
FIRST = Position(0, 0)


@dataclass
class Model:
    """One published message as the model sees it."""

    number: int
    persistent: bool
    synced: bool = False  # its append is known to be on disk (a sync ran after it)
    delivered: bool = False  # ever handed out in ack mode: comes back redelivered after a restart
    redelivered: bool = False  # what the next delivery must say

    @property
    def body(self) -> bytes:
        return f"p{self.number}".encode()


class QueueStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="conveyor-prop-"))
        self.pending: list[object] = []
        self.published = 0
        self.ready: list[Model] = []  # in publish order
        self.unacked: dict[int, tuple[QueuedMessage, Model]] = {}
        self.synced_sizes: dict[str, int] = {}
        self.store = self._open_store()
        self.queue = self._new_queue()

    # -- plumbing ------------------------------------------------------------------------------

    def _open_store(self) -> SegmentMessageStore:
        return SegmentMessageStore(self.directory, segment_size=SEGMENT_SIZE)

    def _new_queue(self) -> Queue:
        return Queue("q", durable=True, schedule=self.pending.append, store=self.store, window=WINDOW)

    def _all(self) -> list[Model]:
        return sorted([*self.ready, *(m for _, m in self.unacked.values())], key=lambda m: m.number)

    def _record_sync(self) -> None:
        for model in self._all():
            model.synced = True
        self.synced_sizes = {p.name: p.stat().st_size for p in self.directory.glob("msgs.*")}

    def _survivors(self) -> list[Model]:
        """What a restart should bring back: persistent messages still owed, in publish order."""
        survivors = [m for m in self._all() if m.persistent]
        for model in survivors:
            model.redelivered = model.delivered
        return survivors

    def _restart_with(self, expected: list[Model], *, dirty: bool) -> None:
        on_disk = [(m.body, redelivered) for _, m, redelivered in self.store.read_from(FIRST, None)]
        if dirty:
            # Only a suffix may be missing, and only of messages whose append was never synced.
            assert [(m.body, m.redelivered) for m in expected[: len(on_disk)]] == on_disk
            lost = expected[len(on_disk) :]
            assert all(not m.synced for m in lost), f"synced messages lost: {[m.body for m in lost if m.synced]}"
            expected = expected[: len(on_disk)]
        else:
            assert on_disk == [(m.body, m.redelivered) for m in expected]
        self.pending.clear()
        self.queue = self._new_queue()
        assert self.queue.recover() == len(expected)
        self.ready = expected
        self.unacked = {}
        self._record_sync()  # what survived a restart is on disk; the next crash can only lose newer bytes

    # -- rules ---------------------------------------------------------------------------------

    @rule(persistent=st.booleans())
    def publish(self, persistent: bool) -> None:
        self.published += 1
        model = Model(self.published, persistent)
        self.queue.push(Message("", "q", b"\x00\x00", model.body, persistent=persistent))
        self.ready.append(model)

    @rule(no_ack=st.booleans())
    def get(self, no_ack: bool) -> None:
        entry = self.queue.get(no_ack)
        if not self.ready:
            assert entry is None
            return
        model = self.ready.pop(0)
        assert entry is not None, f"expected {model.body!r}, queue was empty"
        assert (entry.message.body, entry.redelivered) == (model.body, model.redelivered)
        if not no_ack:
            model.delivered = True
            self.unacked[model.number] = (entry, model)

    @precondition(lambda self: self.unacked)
    @rule(pick=st.integers(0, 1 << 16))
    def ack(self, pick: int) -> None:
        numbers = sorted(self.unacked)
        entry, _ = self.unacked.pop(numbers[pick % len(numbers)])
        self.queue.ack(entry)

    @precondition(lambda self: self.unacked)
    @rule(pick=st.integers(0, 1 << 16))
    def requeue(self, pick: int) -> None:
        numbers = sorted(self.unacked)
        entry, model = self.unacked.pop(numbers[pick % len(numbers)])
        self.queue.requeue([entry])
        model.redelivered = True
        self.ready = sorted([*self.ready, model], key=lambda m: m.number)

    @rule()
    def purge(self) -> None:
        assert self.queue.purge() == len(self.ready)
        self.ready = []

    @rule()
    def sync(self) -> None:
        synced: list[bool] = []
        self.store.sync(lambda: synced.append(True))
        assert synced == [True]
        self._record_sync()

    @rule()
    def clean_restart(self) -> None:
        expected = self._survivors()
        self.store.close()
        self.store = self._open_store()
        self._restart_with(expected, dirty=False)

    @rule(lose=st.integers(0, 1 << 16))
    def dirty_restart(self, lose: int) -> None:
        """Power loss: the newest segment keeps what was synced plus some of the bytes written since."""
        expected = self._survivors()
        self.store.close()
        segments = sorted(self.directory.glob("msgs.*"))
        if segments:
            newest = segments[-1]
            size = newest.stat().st_size
            unsynced = size - min(self.synced_sizes.get(newest.name, 0), size)
            os.truncate(newest, size - lose % (unsynced + 1))
        self.store = self._open_store()
        self._restart_with(expected, dirty=True)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def counts_match(self) -> None:
        assert self.queue.message_count == len(self.ready)
        assert self.queue.unacked == len(self.unacked)
        assert self.store.count >= sum(m.persistent for m in self._all())

    @invariant()
    def window_is_the_head_of_the_queue(self) -> None:
        in_memory = [(e.message.body, e.redelivered) for e in self.queue.ready]
        assert in_memory == [(m.body, m.redelivered) for m in self.ready[: len(in_memory)]]

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


QueueStoreMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
TestQueueStoreModel = QueueStoreMachine.TestCase


def test_replay_ack_of_a_lost_record_does_not_swallow_the_next_message() -> None:
    """A fixed run of the machine: an unsynced message is delivered and acked, and power is lost.

    Its ack entry is on disk but its record is not; the next message is appended at the same offset,
    and must not be taken for the acked one (neither now nor after another restart).
    """
    machine = QueueStoreMachine()
    try:
        machine.publish(persistent=True)  # p1 - stays owed
        machine.publish(persistent=True)  # p2
        machine.sync()
        machine.publish(persistent=True)  # p3 - never synced
        machine.get(no_ack=False)  # p1
        machine.get(no_ack=False)  # p2
        machine.get(no_ack=False)  # p3
        machine.ack(pick=2)  # p3: its ack entry reaches the ack log
        machine.dirty_restart(lose=1)  # p3's record loses its last byte: torn, dropped
        machine.publish(persistent=True)  # p4, at p3's old offset
        machine.counts_match()
        machine.clean_restart()
        machine.counts_match()
        machine.window_is_the_head_of_the_queue()
    finally:
        machine.teardown()
