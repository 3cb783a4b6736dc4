"""Consumer acknowledgement timeout (RabbitMQ's consumer_timeout), driven by a ManualClock."""

from __future__ import annotations

import pytest
from amqp_client import ServerOutput, StandInBroker, publish
from amqp_client import SessionClient as Client
from amqp_client import connect_session as connect

from conveyor.amqp import spec
from conveyor.amqp.connection import OPEN


@pytest.fixture
def broker() -> StandInBroker:
    return StandInBroker()


@pytest.fixture
def c(broker: StandInBroker) -> Client:
    return connect(broker)


def text(channel: int, ms: int) -> str:
    return (
        f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. Timeout value used: "
        f"{ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
    )


def setup(c: Client, queue_args: dict[str, object] | None = None, consumer_args: dict[str, object] | None = None,
          n: int = 1, channel: int = 1) -> ServerOutput:
    c.call(channel, spec.QueueDeclare(queue="q", arguments=queue_args or {}))
    for i in range(n):
        c.send(publish(channel, "", "q", f"m{i}".encode()))
    return c.call(channel, spec.BasicConsume(queue="q", consumer_tag="ct", arguments=consumer_args or {}))


def test_off_by_default(c: Client, broker: StandInBroker) -> None:
    setup(c)
    assert broker.clock.pending == 0
    assert c.advance(3600) == []
    assert c.conn.state == OPEN and 1 in c.conn.channels


def test_queue_argument_times_out_and_requeues(c: Client, broker: StandInBroker) -> None:
    out = setup(c, queue_args={"x-consumer-timeout": 1000}, n=2)
    assert out.names() == ["basic.consume-ok", "basic.deliver", "basic.deliver"]
    assert broker.clock.pending == 1  # one timer per channel, not per delivery
    assert c.advance(0.999) == []
    out = c.advance(0.002)
    close = out.only(spec.ChannelClose)
    assert (close.reply_code, close.reply_text) == (406, text(1, 1000))
    assert (close.class_id, close.method_id) == (0, 0)
    assert c.call(1, spec.ChannelCloseOk()) == []
    queue = broker.vhost.queues["q"]
    assert (queue.message_count, queue.unacked) == (2, 0)
    c.open_channel(1)
    got = c.call(1, spec.BasicGet(queue="q", no_ack=True))
    assert (got[0].method.redelivered, got[0].body) == (True, b"m0")


def test_acked_in_time_is_fine_and_the_timer_moves_on(c: Client, broker: StandInBroker) -> None:
    setup(c, queue_args={"x-consumer-timeout": 1000})
    c.advance(0.5)
    c.send(publish(1, "", "q", b"late"))  # delivered at t=0.5, due at t=1.5
    c.call(1, spec.BasicAck(delivery_tag=1))
    assert c.advance(0.9) == []  # t=1.4: the timer fired at 1.0, found tag 2 not yet due, re-armed
    assert broker.clock.pending == 1
    out = c.advance(0.2)
    assert out.only(spec.ChannelClose).reply_text == text(1, 1000)


def test_all_acked_leaves_no_timer(c: Client, broker: StandInBroker) -> None:
    setup(c, queue_args={"x-consumer-timeout": 1000})
    c.call(1, spec.BasicAck(delivery_tag=1))
    assert c.advance(5) == []
    assert broker.clock.pending == 0


def test_consumer_argument_wins_over_the_queue(c: Client) -> None:
    setup(c, queue_args={"x-consumer-timeout": 60_000}, consumer_args={"x-consumer-timeout": 200})
    out = c.advance(0.25)
    assert out.only(spec.ChannelClose).reply_text == text(1, 200)


def test_broker_setting_applies_when_nothing_else_does() -> None:
    broker = StandInBroker(consumer_timeout=5000)
    c = connect(broker)
    c.open_channel(7)
    setup(c, channel=7)
    assert c.advance(4.9) == []
    assert c.advance(0.2).only(spec.ChannelClose).reply_text == text(7, 5000)
    assert 1 in c.conn.channels  # only the channel that timed out closes


def test_queue_argument_wins_over_the_broker_setting() -> None:
    broker = StandInBroker(consumer_timeout=5000)
    c = connect(broker)
    setup(c, queue_args={"x-consumer-timeout": 300})
    assert c.advance(0.4).only(spec.ChannelClose).reply_text == text(1, 300)


def test_no_ack_consumers_never_time_out(c: Client, broker: StandInBroker) -> None:
    c.call(1, spec.QueueDeclare(queue="q", arguments={"x-consumer-timeout": 100}))
    c.send(publish(1, "", "q", b"m"))
    c.call(1, spec.BasicConsume(queue="q", no_ack=True))
    assert c.advance(10) == []
    assert broker.clock.pending == 0


def test_basic_get_deliveries_time_out_too(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue="q", arguments={"x-consumer-timeout": 100}))
    c.send(publish(1, "", "q", b"m"))
    assert c.call(1, spec.BasicGet(queue="q")).names() == ["basic.get-ok"]
    assert c.advance(0.2).only(spec.ChannelClose).reply_text == text(1, 100)


def test_shorter_timeout_after_a_longer_one_rearms_earlier(c: Client, broker: StandInBroker) -> None:
    c.call(1, spec.QueueDeclare(queue="slow"))
    c.call(1, spec.QueueDeclare(queue="fast"))
    c.call(1, spec.BasicConsume(queue="slow", consumer_tag="s", arguments={"x-consumer-timeout": 10_000}))
    c.call(1, spec.BasicConsume(queue="fast", consumer_tag="f", arguments={"x-consumer-timeout": 1000}))
    c.send(publish(1, "", "slow", b"s"))
    c.send(publish(1, "", "fast", b"f"))
    assert broker.clock.pending == 1
    out = c.advance(1.01)
    assert out.only(spec.ChannelClose).reply_text == text(1, 1000)


def test_out_of_order_deadlines_are_all_checked(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue="slow"))
    c.call(1, spec.QueueDeclare(queue="fast"))
    c.call(1, spec.BasicConsume(queue="slow", consumer_tag="s", arguments={"x-consumer-timeout": 10_000}))
    c.call(1, spec.BasicConsume(queue="fast", consumer_tag="f", arguments={"x-consumer-timeout": 1000}))
    c.send(publish(1, "", "slow", b"s"))  # tag 1, due at 10 s
    c.send(publish(1, "", "fast", b"f"))  # tag 2, due at 1 s
    c.call(1, spec.BasicAck(delivery_tag=2))
    c.advance(0.5)
    c.send(publish(1, "", "fast", b"g"))  # tag 3, due at 1.5 s
    assert c.advance(0.6) == []  # t=1.1: nothing due; the next deadline is tag 3's, behind tag 1
    out = c.advance(0.5)
    assert out.only(spec.ChannelClose).reply_text == text(1, 1000)


def test_closing_the_channel_cancels_the_timer(c: Client, broker: StandInBroker) -> None:
    setup(c, queue_args={"x-consumer-timeout": 1000})
    c.call(1, spec.ChannelClose(reply_code=200, reply_text="bye"))
    assert broker.clock.pending == 0
    assert c.advance(2) == []


@pytest.mark.parametrize("bad", [0, -1, "100", 1.5, True])
def test_invalid_consumer_argument_is_refused(c: Client, bad: object) -> None:
    c.call(1, spec.QueueDeclare(queue="q"))
    out = c.call(1, spec.BasicConsume(queue="q", arguments={"x-consumer-timeout": bad}))
    close = out.only(spec.ChannelClose)
    assert (close.reply_code, close.reply_text) == (
        406, "PRECONDITION_FAILED - invalid arg 'x-consumer-timeout' for queue 'q' in vhost '/'"
    )
