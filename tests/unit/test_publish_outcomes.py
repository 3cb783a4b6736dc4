"""What a publisher hears back in edge cases: reject-publish nacks, and deferring (delayed) exchanges
with mandatory and confirms. Session + core end to end, without sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from amqp_client import SessionClient as Client
from amqp_client import StandInBroker as SharedBroker
from amqp_client import connect_session, publish

from conveyor.amqp import spec
from conveyor.core.message import Message

PERSISTENT = spec.BasicProperties(delivery_mode=2, headers={"x-delay": 1000})
TRANSIENT = spec.BasicProperties(headers={"x-delay": 1000})


class FakeHeldStore:
    """A delayed-message store that keeps nothing (the test only needs it to exist)."""

    def __init__(self) -> None:
        self.appended: list[Message] = []

    def append(self, message: Message, due_wall_ms: int) -> Any:
        self.appended.append(message)
        return message

    def read(self, position: Any) -> Message:
        return position  # type: ignore[no-any-return]

    def delete(self, position: Any) -> None:
        pass

    def scan(self) -> list[tuple[int, Any]]:
        return []

    def close(self) -> None:
        pass

    def destroy(self) -> None:
        pass


class FakeCommitter:
    def __init__(self) -> None:
        self.waiters: list[Callable[[bool], None]] = []

    def when_synced(self, callback: Callable[[bool], None]) -> None:
        self.waiters.append(callback)

    def sync(self, ok: bool = True) -> None:
        waiters, self.waiters = self.waiters, []
        for callback in waiters:
            callback(ok)


class StandInBroker(SharedBroker):
    """The shared stand-in, with a committer and held-message stores for deferring exchanges."""

    def __init__(self) -> None:
        self.committer = FakeCommitter()
        self.stores: list[FakeHeldStore] = []
        super().__init__(delayed_store_factory=self._held_store)

    def _held_store(self, exchange: Any) -> FakeHeldStore:
        store = FakeHeldStore()
        self.stores.append(store)
        return store


@pytest.fixture
def broker() -> StandInBroker:
    return StandInBroker()


@pytest.fixture
def c(broker: StandInBroker) -> Client:
    return connect_session(broker)


def delayed(c: Client, durable: bool = False) -> None:
    out = c.call(1, spec.ExchangeDeclare(exchange="dx", type="x-delayed-message", durable=durable,
                                         arguments={"x-delayed-type": "direct"}))
    assert out.names() == ["exchange.declare-ok"], out.names()
    c.call(1, spec.QueueDeclare(queue="dq", durable=durable))
    c.call(1, spec.QueueBind(queue="dq", exchange="dx", routing_key="k"))


# -- x-overflow=reject-publish --------------------------------------------------------------------


def reject_queue(c: Client, name: str = "full") -> None:
    c.call(1, spec.QueueDeclare(queue=name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}))


def test_reject_publish_is_nacked(c: Client) -> None:
    reject_queue(c)
    c.call(1, spec.ConfirmSelect())
    assert c.send(publish(1, "", "full", b"1")).methods() == [spec.BasicAck(1, False)]
    out = c.send(publish(1, "", "full", b"2", mandatory=True))
    assert out.methods() == [spec.BasicNack(2, False, False)]  # refused is not unroutable: no basic.return


def test_reject_publish_is_nacked_even_when_another_queue_took_it(c: Client, broker: StandInBroker) -> None:
    reject_queue(c)
    c.call(1, spec.QueueDeclare(queue="roomy"))
    for q in ("full", "roomy"):
        c.call(1, spec.QueueBind(queue=q, exchange="amq.fanout"))
    c.call(1, spec.ConfirmSelect())
    c.send(publish(1, "amq.fanout", "", b"1"))
    out = c.send(publish(1, "amq.fanout", "", b"2"), publish(1, "amq.fanout", "", b"3"))
    assert out.methods() == [spec.BasicNack(2, False, False), spec.BasicNack(3, False, False)]
    assert broker.vhost.queues["roomy"].message_count == 3


def test_reject_publish_without_confirms_sends_nothing(c: Client) -> None:
    reject_queue(c)
    assert c.send(publish(1, "", "full", b"1"), publish(1, "", "full", b"2", mandatory=True)) == []


# -- deferring exchanges --------------------------------------------------------------------------


def test_held_message_is_not_returned_as_unroutable(c: Client) -> None:
    delayed(c)
    c.call(1, spec.ConfirmSelect())
    out = c.send(publish(1, "dx", "k", b"later", TRANSIENT, mandatory=True))
    assert out.methods() == [spec.BasicAck(1, False)]


def test_held_message_after_a_rejected_one_is_acked(c: Client) -> None:
    reject_queue(c)
    delayed(c)
    c.call(1, spec.ConfirmSelect())
    c.send(publish(1, "", "full", b"1"))
    assert c.send(publish(1, "", "full", b"2")).methods() == [spec.BasicNack(2, False, False)]
    assert c.send(publish(1, "dx", "k", b"later", TRANSIENT)).methods() == [spec.BasicAck(3, False)]


def test_persistent_message_to_durable_deferring_exchange_waits_for_the_commit(
    c: Client, broker: StandInBroker
) -> None:
    delayed(c, durable=True)
    c.call(1, spec.ConfirmSelect())
    assert c.send(publish(1, "dx", "k", b"later", PERSISTENT)) == []
    assert len(broker.stores[0].appended) == 1
    broker.committer.sync()
    assert c.output().methods() == [spec.BasicAck(1, False)]


def test_transient_message_to_durable_deferring_exchange_is_confirmed_at_once(c: Client) -> None:
    delayed(c, durable=True)
    c.call(1, spec.ConfirmSelect())
    assert c.send(publish(1, "dx", "k", b"later", TRANSIENT)).methods() == [spec.BasicAck(1, False)]


# -- the expiration property is checked at publish (RabbitMQ 3.10's texts) --------------------------


@pytest.mark.parametrize(
    ("expiration", "reason"),
    [
        ("abc", "no_integer"),
        ("", "no_integer"),
        (" 5", "no_integer"),
        ("-", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("1.5", '{leftover_string,".5"}'),
        ("1e3", '{leftover_string,"e3"}'),
        ('5"x', '{leftover_string,"\\"x"}'),
    ],
)
def test_invalid_expiration_closes_the_channel(c: Client, expiration: str, reason: str) -> None:
    c.call(1, spec.QueueDeclare(queue="q"))
    close = c.send(publish(1, "", "q", b"x", spec.BasicProperties(expiration=expiration))).only(spec.ChannelClose)
    assert (close.reply_code, close.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}"
    )


@pytest.mark.parametrize("expiration", ["0", "+5", "-0", "007", "99999999999"])
def test_valid_expiration_is_accepted(c: Client, expiration: str) -> None:
    c.call(1, spec.QueueDeclare(queue="q"))
    assert c.send(publish(1, "", "q", b"x", spec.BasicProperties(expiration=expiration))) == []
