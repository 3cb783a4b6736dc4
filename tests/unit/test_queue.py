"""The classic queue: FIFO, round-robin with credit, requeue order, purge, the pump budget, end of life."""

from __future__ import annotations

import pytest
from stand_ins import Scheduler, StandInConsumer

from conveyor.core.errors import AccessRefused, NotFound
from conveyor.core.message import Message
from conveyor.core.queue.classic import PUMP_BUDGET, Queue


@pytest.fixture
def scheduler() -> Scheduler:
    return Scheduler()


@pytest.fixture
def queue(scheduler: Scheduler) -> Queue:
    return Queue("q", schedule=scheduler)


def msg(body: bytes | str) -> Message:
    return Message("", "q", b"\x00\x00", body.encode() if isinstance(body, str) else body)


def push_all(queue: Queue, *bodies: str) -> None:
    for body in bodies:
        queue.push(msg(body))


def ready_bodies(queue: Queue) -> list[bytes]:
    return [e.message.body for e in queue.ready]


# -- push / get -----------------------------------------------------------------------------------------


def test_push_get_is_fifo(queue: Queue, scheduler: Scheduler) -> None:
    push_all(queue, "1", "2", "3")
    assert queue.message_count == 3
    assert scheduler.pending == []  # no consumer, no pump
    got = [queue.get(no_ack=True) for _ in range(3)]
    assert [e.message.body for e in got] == [b"1", b"2", b"3"]
    assert [e.seq for e in got] == [1, 2, 3]
    assert queue.get(no_ack=True) is None
    assert queue.unacked == 0


def test_get_with_ack_counts_unacked_until_acked(queue: Queue) -> None:
    push_all(queue, "a")
    entry = queue.get(no_ack=False)
    assert entry is not None
    assert (queue.message_count, queue.unacked, entry.delivery_count, entry.redelivered) == (0, 1, 1, False)
    queue.ack(entry)
    assert queue.unacked == 0


def test_one_shared_message_object_per_entry(queue: Queue) -> None:
    m = msg("x")
    queue.push(m)
    entry = queue.get(no_ack=True)
    assert entry is not None and entry.message is m and entry.queue is queue


# -- consumers and the pump ---------------------------------------------------------------------------------


def test_delivery_happens_in_the_scheduled_pump_not_inline(queue: Queue, scheduler: Scheduler) -> None:
    c = StandInConsumer("c")
    queue.add_consumer(c)
    push_all(queue, "1", "2", "3")
    assert c.received == []
    assert len(scheduler.pending) == 1  # one pump for many pushes
    scheduler.run()
    assert c.bodies() == [b"1", b"2", b"3"]
    assert queue.unacked == 3
    assert queue.message_count == 0


def test_messages_waiting_before_the_consumer_are_delivered(queue: Queue, scheduler: Scheduler) -> None:
    push_all(queue, "1", "2")
    c = StandInConsumer("c")
    queue.add_consumer(c)
    scheduler.run()
    assert c.bodies() == [b"1", b"2"]


def test_round_robin_across_consumers(queue: Queue, scheduler: Scheduler) -> None:
    consumers = [StandInConsumer(t) for t in "abc"]
    for c in consumers:
        queue.add_consumer(c)
    push_all(queue, *[str(i) for i in range(9)])
    scheduler.run()
    assert [c.bodies() for c in consumers] == [[b"0", b"3", b"6"], [b"1", b"4", b"7"], [b"2", b"5", b"8"]]


def test_round_robin_continues_across_pumps(queue: Queue, scheduler: Scheduler) -> None:
    a, b = StandInConsumer("a"), StandInConsumer("b")
    queue.add_consumer(a)
    queue.add_consumer(b)
    for i in range(4):
        push_all(queue, str(i))
        scheduler.run()
    assert (a.bodies(), b.bodies()) == ([b"0", b"2"], [b"1", b"3"])


def test_consumer_without_credit_is_skipped(queue: Queue, scheduler: Scheduler) -> None:
    starved, fed = StandInConsumer("starved", credit=0), StandInConsumer("fed")
    queue.add_consumer(starved)
    queue.add_consumer(fed)
    push_all(queue, "1", "2", "3")
    scheduler.run()
    assert starved.received == []
    assert fed.bodies() == [b"1", b"2", b"3"]


def test_credit_limits_and_wake_resumes(queue: Queue, scheduler: Scheduler) -> None:
    a, b = StandInConsumer("a", credit=1), StandInConsumer("b", credit=2)
    queue.add_consumer(a)
    queue.add_consumer(b)
    push_all(queue, *"123456")
    scheduler.run()
    assert (a.bodies(), b.bodies()) == ([b"1"], [b"2", b"3"])
    assert ready_bodies(queue) == [b"4", b"5", b"6"]
    assert scheduler.pending == []  # nobody has credit: the pump does not spin
    a.credit = 5
    queue.wake()
    assert len(scheduler.pending) == 1
    queue.wake()
    assert len(scheduler.pending) == 1  # at most one pump scheduled
    scheduler.run()
    assert a.bodies() == [b"1", b"4", b"5", b"6"]


def test_no_ack_consumer_does_not_count_unacked(queue: Queue, scheduler: Scheduler) -> None:
    c = StandInConsumer("c", no_ack=True)
    queue.add_consumer(c)
    push_all(queue, "1", "2")
    scheduler.run()
    assert queue.unacked == 0
    assert [e.delivery_count for e in c.received] == [1, 1]


def test_higher_priority_consumer_is_served_first(queue: Queue, scheduler: Scheduler) -> None:
    low, high = StandInConsumer("low"), StandInConsumer("high", credit=2, priority=10)
    queue.add_consumer(low)
    queue.add_consumer(high)
    push_all(queue, *"1234")
    scheduler.run()
    assert high.bodies() == [b"1", b"2"]
    assert low.bodies() == [b"3", b"4"]


def test_pump_budget_reschedules(queue: Queue, scheduler: Scheduler) -> None:
    c = StandInConsumer("c")
    queue.add_consumer(c)
    total = PUMP_BUDGET * 2 + 10
    for i in range(total):
        queue.push(msg(str(i)))
    assert len(scheduler.pending) == 1
    scheduler.run_one()
    assert len(c.received) == PUMP_BUDGET
    assert len(scheduler.pending) == 1  # work remains: the pump rescheduled itself
    scheduler.run_one()
    assert len(c.received) == 2 * PUMP_BUDGET
    assert scheduler.run() == 1
    assert len(c.received) == total
    assert [e.seq for e in c.received] == list(range(1, total + 1))
    assert scheduler.pending == []


def test_behind_means_a_backlog_that_a_consumer_with_credit_waits_for(queue: Queue, scheduler: Scheduler) -> None:
    push_all(queue, *(str(i) for i in range(PUMP_BUDGET + 20)))
    assert not queue.behind()  # no consumer: a backlog, but nobody waits for it
    consumer = StandInConsumer("c", credit=0)
    queue.add_consumer(consumer)
    assert not queue.behind()  # the consumer is what holds messages back
    consumer.credit = 10
    assert queue.behind()
    scheduler.run()
    assert len(consumer.received) == 10 and consumer.credit == 0
    assert queue.message_count > PUMP_BUDGET and not queue.behind()  # out of credit again
    consumer.credit = None
    scheduler.run()  # nothing scheduled: credit came back without a wake()
    queue.wake()
    scheduler.run()
    assert queue.message_count == 0 and not queue.behind()


def test_exact_budget_does_not_reschedule_an_empty_pump(queue: Queue, scheduler: Scheduler) -> None:
    c = StandInConsumer("c")
    queue.add_consumer(c)
    for i in range(PUMP_BUDGET):
        queue.push(msg(str(i)))
    scheduler.run_one()
    assert len(c.received) == PUMP_BUDGET
    assert scheduler.pending == []


# -- requeue ---------------------------------------------------------------------------------------------


def deliver_n(queue: Queue, scheduler: Scheduler, n: int) -> StandInConsumer:
    c = StandInConsumer("c", credit=n)
    queue.add_consumer(c)
    scheduler.run()
    assert len(c.received) == n
    return c


def test_requeue_goes_back_in_original_order_ahead_of_newer(queue: Queue, scheduler: Scheduler) -> None:
    push_all(queue, *"12345")
    c = deliver_n(queue, scheduler, 3)
    queue.remove_consumer(c)
    e1, e2, _e3 = c.received
    queue.requeue([e2, e1])  # any order in, seq order back
    assert ready_bodies(queue) == [b"1", b"2", b"4", b"5"]
    assert [e.redelivered for e in queue.ready] == [True, True, False, False]
    assert queue.unacked == 1


def test_requeue_wakes_the_pump_and_redelivers(queue: Queue, scheduler: Scheduler) -> None:
    push_all(queue, "1", "2")
    c = deliver_n(queue, scheduler, 2)
    queue.requeue(c.received[:1])
    c.credit = 1
    scheduler.run()
    assert c.bodies() == [b"1", b"2", b"1"]
    assert c.received[2].redelivered
    assert c.received[2].delivery_count == 2


def test_interleaved_requeues_use_the_merge_path(queue: Queue) -> None:
    push_all(queue, *"12345")
    got = [queue.get(no_ack=False) for _ in range(4)]  # 1..4 out, 5 ready
    e1, e2, e3, e4 = got
    queue.requeue([e1])  # [1, 5]: fast path
    queue.requeue([e3])  # 3 > 1: merge -> [1, 3, 5]
    assert ready_bodies(queue) == [b"1", b"3", b"5"]
    queue.requeue([e4, e2])  # merge both -> [1, 2, 3, 4, 5]
    assert ready_bodies(queue) == [b"1", b"2", b"3", b"4", b"5"]
    assert [e.redelivered for e in queue.ready] == [True, True, True, True, False]
    assert [e.seq for e in queue.ready] == [1, 2, 3, 4, 5]
    assert queue.unacked == 0


def test_requeue_of_nothing_is_a_no_op(queue: Queue, scheduler: Scheduler) -> None:
    queue.requeue([])
    assert queue.unacked == 0
    assert scheduler.pending == []


def test_requeue_into_a_deleted_queue_drops_the_messages(queue: Queue) -> None:
    push_all(queue, "1", "2")
    entry = queue.get(no_ack=False)
    assert entry is not None
    queue.delete()
    queue.requeue([entry])
    assert queue.ready == type(queue.ready)()
    assert queue.unacked == 0


# -- purge and delete --------------------------------------------------------------------------------------


def test_purge_drops_ready_and_leaves_unacked(queue: Queue, scheduler: Scheduler) -> None:
    push_all(queue, *"1234")
    c = deliver_n(queue, scheduler, 1)
    assert queue.purge() == 3
    assert queue.message_count == 0
    assert queue.unacked == 1
    queue.requeue(c.received)  # the unacked one can still come back
    assert ready_bodies(queue) == [b"1"]


def test_delete_cancels_consumers_and_counts_ready(queue: Queue, scheduler: Scheduler) -> None:
    a, b = StandInConsumer("a", credit=0), StandInConsumer("b", credit=0)
    queue.add_consumer(a)
    queue.add_consumer(b)
    push_all(queue, "1", "2")
    assert queue.delete() == 2
    assert queue.consumers == []
    assert not a.cancelled  # consumers are told on the next loop turn, after the deleter's reply
    scheduler.run()
    assert a.cancelled and b.cancelled
    assert queue.deleted
    with pytest.raises(NotFound):
        queue.add_consumer(StandInConsumer("late"))


def test_remove_unknown_consumer_is_harmless(queue: Queue) -> None:
    queue.remove_consumer(StandInConsumer("never-added"))


# -- exclusivity and auto-delete ----------------------------------------------------------------------------


def test_exclusive_consumer_refuses_others(queue: Queue) -> None:
    queue.add_consumer(StandInConsumer("x", exclusive=True))
    with pytest.raises(AccessRefused, match="in exclusive use"):
        queue.add_consumer(StandInConsumer("y"))
    with pytest.raises(AccessRefused):
        queue.add_consumer(StandInConsumer("z", exclusive=True))


def test_exclusive_consumer_refused_when_others_exist(queue: Queue) -> None:
    queue.add_consumer(StandInConsumer("a"))
    with pytest.raises(AccessRefused) as info:
        queue.add_consumer(StandInConsumer("x", exclusive=True))
    assert str(info.value) == "queue 'q' in vhost '/' in exclusive use"


def test_exclusive_consumer_leaving_frees_the_queue(queue: Queue) -> None:
    x = StandInConsumer("x", exclusive=True)
    queue.add_consumer(x)
    queue.remove_consumer(x)
    queue.add_consumer(StandInConsumer("y"))
    assert queue.consumer_count == 1


def test_auto_delete_when_last_consumer_leaves(scheduler: Scheduler) -> None:
    unused: list[Queue] = []
    queue = Queue("ad", auto_delete=True, schedule=scheduler, on_unused=unused.append)
    a, b = StandInConsumer("a"), StandInConsumer("b")
    queue.add_consumer(a)
    queue.add_consumer(b)
    queue.remove_consumer(a)
    assert unused == []
    queue.remove_consumer(b)
    assert unused == [queue]


def test_no_auto_delete_without_the_flag(scheduler: Scheduler) -> None:
    unused: list[Queue] = []
    queue = Queue("q", schedule=scheduler, on_unused=unused.append)
    c = StandInConsumer("c")
    queue.add_consumer(c)
    queue.remove_consumer(c)
    assert unused == []


def test_auto_delete_queue_that_never_had_a_consumer_stays(scheduler: Scheduler) -> None:
    unused: list[Queue] = []
    queue = Queue("ad", auto_delete=True, schedule=scheduler, on_unused=unused.append)
    queue.remove_consumer(StandInConsumer("stranger"))
    assert unused == []
