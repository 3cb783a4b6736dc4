"""Direct reply-to (amq.rabbitmq.reply-to) end to end through Session, without sockets.

The expected codes and texts are RabbitMQ 3.10's, checked against a running RabbitMQ.
"""

from __future__ import annotations

import gc

import pytest
from amqp_client import ServerOutput, StandInBroker, publish
from amqp_client import SessionClient as Client
from amqp_client import connect_session as connect

from conveyor.amqp import reply_to, spec

RT = "amq.rabbitmq.reply-to"


@pytest.fixture
def broker() -> StandInBroker:
    return StandInBroker()


@pytest.fixture
def c(broker: StandInBroker) -> Client:
    return connect(broker)


def reply_consume(client: Client, channel: int = 1, tag: str = "", **kwargs: object) -> ServerOutput:
    kwargs.setdefault("no_ack", True)
    return client.call(channel, spec.BasicConsume(queue=RT, consumer_tag=tag, **kwargs))


def request(client: Client, queue: str = "requests", channel: int = 1, **props: object) -> spec.BasicProperties:
    """Publish a request with reply-to amq.rabbitmq.reply-to and read back the properties it got."""
    out = client.send(publish(channel, "", queue, b"req", spec.BasicProperties(reply_to=RT, **props)))
    assert out == [], out.names()
    got = client.call(channel, spec.BasicGet(queue=queue, no_ack=True))
    assert got.names() == ["basic.get-ok"], got.names()
    return spec.BasicProperties.decode(got[0].properties)


def close_of(out: ServerOutput) -> tuple[int, str]:
    close = out.only(spec.ChannelClose)
    return close.reply_code, close.reply_text


def test_consume_ok_returns_the_tag(c: Client) -> None:
    out = reply_consume(c, tag="mine")
    assert out.methods() == [spec.BasicConsumeOk(consumer_tag="mine")]
    c.open_channel(2)
    tag = reply_consume(c, channel=2).only(spec.BasicConsumeOk).consumer_tag
    assert tag.startswith("amq.ctag-")


def test_reply_consumer_must_be_no_ack(c: Client) -> None:
    assert close_of(reply_consume(c, no_ack=False)) == (406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_second_reply_consumer_on_a_channel_is_refused(c: Client) -> None:
    reply_consume(c, tag="a")
    assert close_of(reply_consume(c, tag="b")) == (406, "PRECONDITION_FAILED - reply consumer already set")


def test_publish_with_reply_to_needs_a_reply_consumer_on_the_channel(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue="requests"))
    out = c.send(publish(1, "", "requests", b"req", spec.BasicProperties(reply_to=RT)))
    code, text = close_of(out)
    assert (code, text) == (406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    assert out.only(spec.ChannelClose).class_id == 60


def test_reply_consumer_on_another_channel_does_not_count(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(c, channel=1)
    c.open_channel(2)
    out = c.send(publish(2, "", "requests", b"req", spec.BasicProperties(reply_to=RT)))
    assert close_of(out)[1] == "PRECONDITION_FAILED - fast reply consumer does not exist"


def test_round_trip(broker: StandInBroker) -> None:
    client, server = connect(broker), connect(broker)
    client.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(client, tag="replies")
    props = request(client, correlation_id="c1", content_type="text/plain")
    assert props.reply_to.startswith(RT + ".") and len(props.reply_to) > len(RT) + 20
    assert (props.correlation_id, props.content_type) == ("c1", "text/plain")  # other properties kept
    assert request(client).reply_to == props.reply_to  # one address per consumer

    answer = spec.BasicProperties(correlation_id="c1")
    assert server.send(publish(1, "", props.reply_to, b"resp", answer)) == []
    out = client.output()
    (cmd,) = out
    assert cmd.method == spec.BasicDeliver("replies", cmd.method.delivery_tag, False, "", props.reply_to)
    assert (cmd.body, cmd.properties) == (b"resp", answer.encode())


def test_reply_delivery_tag_is_the_next_tag_unused(broker: StandInBroker) -> None:
    """RabbitMQ sends replies with the channel's next delivery tag and does not use it up."""
    client, server = connect(broker), connect(broker)
    client.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(client)
    address = request(client).reply_to  # basic.get used tag 1
    server.send(publish(1, "", address, b"a"), publish(1, "", address, b"b"))
    assert [cmd.method.delivery_tag for cmd in client.output()] == [2, 2]


def test_other_properties_are_not_rewritten(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue="requests"))
    raw = spec.BasicProperties(reply_to="my-own-queue", message_id="m").encode()
    c.send(publish(1, "", "requests", b"req", raw))  # no reply consumer needed
    assert c.call(1, spec.BasicGet(queue="requests", no_ack=True))[0].properties == raw


def test_the_rewrite_happens_at_publish_in_a_transaction(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(c)
    c.call(1, spec.TxSelect())
    c.send(publish(1, "", "requests", b"req", spec.BasicProperties(reply_to=RT)))
    c.call(1, spec.TxCommit())
    got = c.call(1, spec.BasicGet(queue="requests", no_ack=True))
    assert spec.BasicProperties.decode(got[0].properties).reply_to.startswith(RT + ".")


def test_confirmed_and_not_returned_when_delivered(broker: StandInBroker) -> None:
    client, server = connect(broker), connect(broker)
    client.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(client)
    address = request(client).reply_to
    server.call(1, spec.ConfirmSelect())
    out = server.send(publish(1, "", address, b"resp", mandatory=True))
    assert out.methods() == [spec.BasicAck(delivery_tag=1, multiple=False)]
    assert len(client.output()) == 1


def test_unknown_or_gone_address_is_returned_when_mandatory(broker: StandInBroker) -> None:
    client, server = connect(broker), connect(broker)
    client.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(client, tag="r")
    address = request(client).reply_to
    assert client.call(1, spec.BasicCancel(consumer_tag="r")).methods() == [spec.BasicCancelOk(consumer_tag="r")]
    server.call(1, spec.ConfirmSelect())
    for rk in (address, RT + ".garbage", RT):
        out = server.send(publish(1, "", rk, b"resp", mandatory=True))
        assert out.names() == ["basic.return", "basic.ack"], (rk, out.names())
        assert out[0].method == spec.BasicReturn(312, "NO_ROUTE", "", rk)
    assert server.send(publish(1, "", address, b"resp")).names() == ["basic.ack"]  # dropped quietly
    assert client.output() == []


def test_channel_close_forgets_the_address(broker: StandInBroker) -> None:
    client, server = connect(broker), connect(broker)
    client.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(client)
    address = request(client).reply_to
    assert reply_to.consumer_for(address) is not None
    client.call(1, spec.ChannelClose(reply_code=200, reply_text="bye"))
    assert reply_to.consumer_for(address) is None
    out = server.send(publish(1, "", address, b"resp", mandatory=True))
    assert out.names() == ["basic.return"]


def test_connection_loss_forgets_the_address(broker: StandInBroker) -> None:
    client = connect(broker)
    client.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(client)
    address = request(client).reply_to
    client.session.connection_lost()
    assert reply_to.consumer_for(address) is None


def test_registry_holds_consumers_weakly(broker: StandInBroker) -> None:
    client = connect(broker)
    client.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(client)
    address = request(client).reply_to
    del client
    gc.collect()
    assert reply_to.consumer_for(address) is None


def test_reconsume_gets_a_new_address(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(c, tag="r")
    first = request(c).reply_to
    c.call(1, spec.BasicCancel(consumer_tag="r"))
    reply_consume(c, tag="r")
    assert request(c).reply_to != first
    assert reply_to.consumer_for(first) is None


def test_declare_of_the_pseudo_queue_and_live_addresses(c: Client) -> None:
    for passive in (True, False):
        out = c.call(1, spec.QueueDeclare(queue=RT, passive=passive))
        assert out.methods() == [spec.QueueDeclareOk(RT, 0, 1)]
    c.call(1, spec.QueueDeclare(queue="requests"))
    reply_consume(c)
    address = request(c).reply_to
    assert c.call(1, spec.QueueDeclare(queue=address, passive=True)).methods() == [
        spec.QueueDeclareOk(address, 0, 1)
    ]
    assert c.call(1, spec.QueueDeclare(queue=RT, nowait=True)) == []


@pytest.mark.parametrize("name", [RT + ".garbage", RT + "X"])
@pytest.mark.parametrize("passive", [True, False])
def test_declare_of_other_reply_names_is_404(c: Client, name: str, passive: bool) -> None:
    out = c.call(1, spec.QueueDeclare(queue=name, passive=passive))
    assert close_of(out) == (404, f"NOT_FOUND - no queue '{name}' in vhost '/'")


def test_the_pseudo_queue_is_not_a_real_queue(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue=RT))
    out = c.call(1, spec.QueueBind(queue="", exchange="amq.fanout"))  # "" = the last declared: RT
    assert close_of(out) == (404, f"NOT_FOUND - no queue '{RT}' in vhost '/'")
    c.open_channel(2)
    assert close_of(c.call(2, spec.BasicGet(queue=RT)))[0] == 404


def test_reply_tag_clashing_with_a_consumer_tag_is_a_connection_error(c: Client) -> None:
    c.call(1, spec.QueueDeclare(queue="q"))
    c.call(1, spec.BasicConsume(queue="q", consumer_tag="t"))
    close = reply_consume(c, tag="t").only(spec.ConnectionClose)
    assert (close.reply_code, close.reply_text) == (530, "NOT_ALLOWED - attempt to reuse consumer tag 't'")


def test_missing_exchange_is_reported_before_the_reply_consumer(c: Client) -> None:
    out = c.send(publish(1, "nope", "rk", b"x", spec.BasicProperties(reply_to=RT)))
    assert close_of(out)[0] == 404


def test_cancel_of_the_reply_consumer_with_nowait(c: Client) -> None:
    reply_consume(c, tag="r", nowait=True)
    assert c.output() == []
    assert c.session.channels[1].reply is not None
    assert c.call(1, spec.BasicCancel(consumer_tag="r", nowait=True)) == []
    assert c.session.channels[1].reply is None
