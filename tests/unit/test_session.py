"""Session + core end to end, without sockets: client bytes in, decoded server commands out.

Each test builds a real ``Connection`` and ``Session`` over a stand-in broker whose vhost schedules
queue pumps into a list; ``ServerPair.send`` runs input, then ``flush_confirms`` (as the glue does
after each read), then the scheduled pumps, and decodes what the connection wrote.
"""

from __future__ import annotations

import pytest
from amqp_client import ServerOutput, StandInBroker, header_frame, method_frame, publish
from amqp_client import SessionClient as Client
from amqp_client import connect_session as connect

from conveyor.amqp import spec
from conveyor.amqp.connection import CLOSING, OPEN


@pytest.fixture
def broker() -> StandInBroker:
    return StandInBroker()


@pytest.fixture
def c(broker: StandInBroker) -> Client:
    return connect(broker)


def declare(client: Client, queue: str = "q", channel: int = 1, **kwargs: object) -> spec.QueueDeclareOk:
    return client.call(channel, spec.QueueDeclare(queue=queue, **kwargs)).only(spec.QueueDeclareOk)


def consume(client: Client, queue: str = "q", tag: str = "ctag", channel: int = 1, **kwargs: object) -> ServerOutput:
    return client.call(channel, spec.BasicConsume(queue=queue, consumer_tag=tag, **kwargs))


def deliveries(out: ServerOutput) -> list[tuple[int, bool, bytes]]:
    """(delivery_tag, redelivered, body) of every basic.deliver in ``out``."""
    return [(cmd.method.delivery_tag, cmd.method.redelivered, cmd.body) for cmd in out
            if isinstance(cmd.method, spec.BasicDeliver)]


def channel_close(out: ServerOutput) -> spec.ChannelClose:
    return out.only(spec.ChannelClose)


# -- declare / bind / publish / get ---------------------------------------------------------------------


def test_queue_declare_and_redeclare(c: Client, broker: StandInBroker) -> None:
    ok = declare(c, "q")
    assert (ok.queue, ok.message_count, ok.consumer_count) == ("q", 0, 0)
    c.send(publish(1, "", "q", b"m"))
    ok = declare(c, "q")
    assert ok.message_count == 1
    assert "q" in broker.vhost.queues


def test_server_named_queue(c: Client) -> None:
    ok = declare(c, "", exclusive=True)
    assert ok.queue.startswith("amq.gen-")
    # "" means the last queue declared on the channel
    assert c.call(1, spec.QueueBind(queue="", exchange="amq.fanout")).names() == ["queue.bind-ok"]


def test_passive_declare_of_missing_queue_is_404(c: Client) -> None:
    close = channel_close(c.call(1, spec.QueueDeclare(queue="nope", passive=True)))
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no queue 'nope' in vhost '/'"
    assert (close.class_id, close.method_id) == (50, 10)
    assert c.conn.state == OPEN


def test_inequivalent_redeclare_is_406(c: Client) -> None:
    declare(c, "q", durable=False)
    close = channel_close(c.call(1, spec.QueueDeclare(queue="q", durable=True)))
    assert close.reply_code == 406
    assert "inequivalent arg 'durable'" in close.reply_text


def test_nowait_declare_sends_nothing(c: Client, broker: StandInBroker) -> None:
    assert c.call(1, spec.QueueDeclare(queue="q", nowait=True)) == []
    assert "q" in broker.vhost.queues


def test_publish_through_exchange_binding_and_get(c: Client) -> None:
    assert c.call(1, spec.ExchangeDeclare(exchange="logs", type="topic")).names() == ["exchange.declare-ok"]
    declare(c, "errors")
    assert c.call(1, spec.QueueBind(queue="errors", exchange="logs", routing_key="*.error")).names() == [
        "queue.bind-ok"
    ]
    props = spec.BasicProperties(content_type="text/plain", headers={"k": "v"}, delivery_mode=2)
    body = bytes(range(256)) * 10
    assert c.send(publish(1, "logs", "app.error", body, props, chunks=[1000, 1000, 560])) == []
    assert c.send(publish(1, "logs", "app.info", b"dropped")) == []

    got = c.call(1, spec.BasicGet(queue="errors"))
    (cmd,) = got
    assert cmd.method == spec.BasicGetOk(1, False, "logs", "app.error", 0)
    assert cmd.body == body
    assert cmd.properties == props.encode()  # the publisher's property bytes, reused as is
    assert c.call(1, spec.BasicGet(queue="errors")).names() == ["basic.get-empty"]


def test_get_message_count_counts_the_rest(c: Client) -> None:
    declare(c)
    c.send(publish(1, "", "q", b"1"), publish(1, "", "q", b"2"), publish(1, "", "q", b"3"))
    cmd = c.call(1, spec.BasicGet(queue="q", no_ack=True))[0]
    assert (cmd.method.message_count, cmd.body) == (2, b"1")


def test_publish_to_missing_exchange_is_404(c: Client) -> None:
    close = channel_close(c.send(publish(1, "nope", "rk", b"x")))
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no exchange 'nope' in vhost '/'"
    assert (close.class_id, close.method_id) == (60, 40)


def test_immediate_is_not_implemented(c: Client) -> None:
    frames = method_frame(1, spec.BasicPublish(routing_key="q", immediate=True)) + header_frame(1, 0)
    close = c.send(frames).only(spec.ConnectionClose)
    assert close.reply_code == spec.NOT_IMPLEMENTED


def test_large_delivery_is_split_at_frame_max(c: Client) -> None:
    declare(c)
    body = b"z" * 300_000
    c.send(publish(1, "", "q", body, chunks=[131_064, 131_064, 300_000 - 2 * 131_064]))
    out = consume(c, no_ack=True)
    assert deliveries(out) == [(1, False, body)]


def test_empty_body_is_delivered_without_a_body_frame(c: Client) -> None:
    # RabbitMQ sends no body frame for empty content, and aiormq fails on an empty one.
    declare(c)
    consume(c, no_ack=True)
    c.send(publish(1, "", "q", b"x"))  # the next publish of this method frame takes the publish lane
    out = c.send(publish(1, "", "q", b"") + publish(1, "", "q", b"y"))
    assert deliveries(out) == [(2, False, b""), (3, False, b"y")]  # decode_output refuses a stray body frame


def test_user_id_must_match_the_authenticated_user(c: Client) -> None:
    declare(c)
    assert c.send(publish(1, "", "q", b"ok", spec.BasicProperties(user_id="guest"))) == []
    close = channel_close(c.send(publish(1, "", "q", b"bad", spec.BasicProperties(user_id="mallory"))))
    assert close.reply_code == 406
    assert "user_id property set to 'mallory'" in close.reply_text


def test_malformed_properties_are_a_syntax_error_not_an_internal_error(c: Client) -> None:
    # user-id flag set but the property list is empty: a client's encoding bug, not ours
    out = c.send(publish(1, "", "q", b"x", b"\x00\x10"))
    close = out.only(spec.ConnectionClose)
    assert close.reply_code == spec.SYNTAX_ERROR, close


def test_malformed_headers_table_to_a_headers_exchange_is_a_syntax_error(c: Client) -> None:
    declare(c)
    c.call(1, spec.QueueBind(queue="q", exchange="amq.headers", arguments={"x-match": "any", "a": 1}))
    bad_headers = b"\x20\x00" + b"\x00\x00\x00\x09" + b"\x01aZ"  # table length past the end
    close = c.send(publish(1, "amq.headers", "", b"x", bad_headers)).only(spec.ConnectionClose)
    assert close.reply_code == spec.SYNTAX_ERROR, close


# -- consume / ack / nack / reject / recover -------------------------------------------------------------


def test_consume_then_deliver_then_ack(c: Client, broker: StandInBroker) -> None:
    declare(c)
    out = consume(c)
    assert out.names() == ["basic.consume-ok"]
    assert out[0].method.consumer_tag == "ctag"
    out = c.send(publish(1, "", "q", b"hello"))
    (cmd,) = out
    assert cmd.method == spec.BasicDeliver("ctag", 1, False, "", "q")
    assert cmd.body == b"hello"
    queue = broker.vhost.queues["q"]
    assert queue.unacked == 1
    assert c.call(1, spec.BasicAck(delivery_tag=1)) == []
    assert queue.unacked == 0
    assert c.session.channels[1].unacked == {}


def test_consume_ok_comes_before_deliveries_of_waiting_messages(c: Client) -> None:
    declare(c)
    c.send(publish(1, "", "q", b"1"), publish(1, "", "q", b"2"))
    out = consume(c)
    assert out.names() == ["basic.consume-ok", "basic.deliver", "basic.deliver"]
    assert deliveries(out) == [(1, False, b"1"), (2, False, b"2")]


def test_server_generated_consumer_tag(c: Client) -> None:
    declare(c)
    tag = consume(c, tag="").only(spec.BasicConsumeOk).consumer_tag
    assert tag.startswith("amq.ctag-")


def test_reused_consumer_tag_is_not_allowed(c: Client) -> None:
    declare(c)
    consume(c)
    assert consume(c).only(spec.ConnectionClose).reply_code == spec.NOT_ALLOWED


def test_consume_from_missing_queue_is_404(c: Client) -> None:
    assert channel_close(consume(c, "nope")).reply_code == 404


def test_cancel_stops_deliveries(c: Client, broker: StandInBroker) -> None:
    declare(c)
    consume(c)
    assert c.call(1, spec.BasicCancel(consumer_tag="ctag")).only(spec.BasicCancelOk).consumer_tag == "ctag"
    assert c.send(publish(1, "", "q", b"x")) == []
    assert broker.vhost.queues["q"].message_count == 1


def test_round_robin_between_two_consumers(c: Client) -> None:
    declare(c)
    consume(c, tag="a")
    consume(c, tag="b")
    out = c.send(*(publish(1, "", "q", str(i).encode()) for i in range(4)))
    assert [(cmd.method.consumer_tag, cmd.body) for cmd in out] == [("a", b"0"), ("b", b"1"), ("a", b"2"), ("b", b"3")]


def test_prefetch_limits_unacked_per_consumer(c: Client) -> None:
    declare(c)
    assert c.call(1, spec.BasicQos(prefetch_count=2)).names() == ["basic.qos-ok"]
    out = c.send(*(publish(1, "", "q", str(i).encode()) for i in range(5)))
    assert out == []
    out = consume(c)
    assert deliveries(out) == [(1, False, b"0"), (2, False, b"1")]
    assert deliveries(c.call(1, spec.BasicAck(delivery_tag=1))) == [(3, False, b"2")]
    assert deliveries(c.call(1, spec.BasicAck(delivery_tag=3, multiple=True))) == [(4, False, b"3"), (5, False, b"4")]


def test_global_prefetch_is_shared_by_the_channel(c: Client) -> None:
    declare(c, "q1")
    declare(c, "q2")
    c.call(1, spec.BasicQos(prefetch_count=1, global_=True))
    c.send(publish(1, "", "q1", b"a"), publish(1, "", "q2", b"b"))
    out = consume(c, "q1", "t1")
    out += consume(c, "q2", "t2")
    assert len(deliveries(out)) == 1
    out = c.call(1, spec.BasicAck(delivery_tag=1))
    assert deliveries(out) == [(2, False, b"b")]


def test_prefetch_zero_is_unlimited(c: Client) -> None:
    declare(c)
    c.call(1, spec.BasicQos(prefetch_count=0))
    consume(c)
    out = c.send(*(publish(1, "", "q", b"x") for _ in range(50)))
    assert len(deliveries(out)) == 50


def test_no_ack_consumer_needs_no_acks(c: Client, broker: StandInBroker) -> None:
    declare(c)
    consume(c, no_ack=True)
    c.send(publish(1, "", "q", b"x"))
    assert broker.vhost.queues["q"].unacked == 0
    assert c.session.channels[1].unacked == {}


def test_nack_with_requeue_redelivers(c: Client) -> None:
    declare(c)
    consume(c)
    c.send(publish(1, "", "q", b"1"), publish(1, "", "q", b"2"))
    out = c.call(1, spec.BasicNack(delivery_tag=2, multiple=True, requeue=True))
    assert deliveries(out) == [(3, True, b"1"), (4, True, b"2")]


def test_reject_with_requeue_redelivers_and_without_drops(c: Client, broker: StandInBroker) -> None:
    declare(c)
    c.call(1, spec.BasicQos(prefetch_count=1))
    consume(c)
    c.send(publish(1, "", "q", b"1"))
    assert deliveries(c.call(1, spec.BasicReject(delivery_tag=1, requeue=True))) == [(2, True, b"1")]
    assert c.call(1, spec.BasicReject(delivery_tag=2, requeue=False)) == []
    queue = broker.vhost.queues["q"]
    assert (queue.message_count, queue.unacked) == (0, 0)


def test_recover_requeues_all_unacked_in_order(c: Client) -> None:
    declare(c)
    c.call(1, spec.BasicQos(prefetch_count=3))
    consume(c)
    c.send(*(publish(1, "", "q", str(i).encode()) for i in range(4)))
    assert deliveries(c.call(1, spec.BasicAck(delivery_tag=2))) == [(4, False, b"3")]  # 0, 2 and 3 unacked
    out = c.call(1, spec.BasicRecover(requeue=True))
    assert out.names()[0] == "basic.recover-ok"
    assert deliveries(out) == [(5, True, b"0"), (6, True, b"2"), (7, True, b"3")]


def test_recover_without_requeue_is_not_implemented(c: Client) -> None:
    assert c.call(1, spec.BasicRecover(requeue=False)).only(spec.ConnectionClose).reply_code == 540


def test_unknown_delivery_tag_is_406(c: Client) -> None:
    close = channel_close(c.call(1, spec.BasicAck(delivery_tag=42)))
    assert close.reply_code == 406
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 42"
    assert (close.class_id, close.method_id) == (60, 80)
    assert c.conn.state == OPEN


def test_double_ack_is_406(c: Client) -> None:
    declare(c)
    consume(c)
    c.send(publish(1, "", "q", b"x"))
    c.call(1, spec.BasicAck(delivery_tag=1))
    assert channel_close(c.call(1, spec.BasicAck(delivery_tag=1))).reply_text.endswith("unknown delivery tag 1")


def test_multiple_ack_of_an_unknown_tag_is_406_as_in_rabbitmq(c: Client) -> None:
    # rabbit_channel:collect_acks walks the unacked queue looking for the exact tag, also when
    # multiple=true, and fails with "unknown delivery tag" when it is not there.
    declare(c)
    consume(c)
    c.send(publish(1, "", "q", b"1"), publish(1, "", "q", b"2"))
    close = channel_close(c.call(1, spec.BasicAck(delivery_tag=5, multiple=True)))
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 5"


def test_multiple_ack_with_tag_zero_acks_everything(c: Client, broker: StandInBroker) -> None:
    declare(c)
    consume(c)
    c.send(publish(1, "", "q", b"1"), publish(1, "", "q", b"2"))
    assert c.call(1, spec.BasicAck(delivery_tag=0, multiple=True)) == []
    assert broker.vhost.queues["q"].unacked == 0


def test_channel_close_requeues_unacked_in_order_with_redelivered(c: Client, broker: StandInBroker) -> None:
    declare(c)
    c.open_channel(2)
    c.call(1, spec.BasicQos(prefetch_count=3))
    consume(c, channel=1)
    out = c.send(*(publish(1, "", "q", str(i).encode()) for i in range(5)))
    assert [d[0] for d in deliveries(out)] == [1, 2, 3]
    assert deliveries(c.call(1, spec.BasicAck(delivery_tag=2))) == [(4, False, b"3")]
    assert c.call(1, spec.BasicGet(queue="q"))[0].body == b"4"  # a basic.get's delivery counts too
    assert c.send(publish(2, "", "q", b"late")) == []  # prefetch is full: stays ready
    out = c.call(1, spec.ChannelClose(200, "", 0, 0))
    assert out.names() == ["channel.close-ok"]
    queue = broker.vhost.queues["q"]
    assert [(e.message.body, e.redelivered) for e in queue.ready] == [
        (b"0", True), (b"2", True), (b"3", True), (b"4", True), (b"late", False),
    ]
    assert queue.unacked == 0
    out = consume(c, channel=2, tag="again")
    assert [(d[1], d[2]) for d in deliveries(out)] == [
        (True, b"0"), (True, b"2"), (True, b"3"), (True, b"4"), (False, b"late"),
    ]


def test_get_without_ack_is_requeued_when_the_channel_closes(c: Client, broker: StandInBroker) -> None:
    declare(c)
    c.send(publish(1, "", "q", b"x"))
    c.call(1, spec.BasicGet(queue="q"))
    c.call(1, spec.ChannelClose(200, "", 0, 0))
    c.open_channel(1)
    cmd = c.call(1, spec.BasicGet(queue="q"))[0]
    assert (cmd.method.redelivered, cmd.body) == (True, b"x")


def test_soft_error_requeues_the_channel_unacked(c: Client, broker: StandInBroker) -> None:
    declare(c)
    consume(c)
    c.send(publish(1, "", "q", b"x"))
    channel_close(c.call(1, spec.BasicAck(delivery_tag=99)))
    queue = broker.vhost.queues["q"]
    assert [(e.message.body, e.redelivered) for e in queue.ready] == [(b"x", True)]
    assert queue.consumers == []


def test_deleting_a_consumed_queue_sends_basic_cancel(c: Client, broker: StandInBroker) -> None:
    other = connect(broker)
    declare(c)
    consume(other)
    out = c.call(1, spec.QueueDelete(queue="q"))
    assert out.names() == ["queue.delete-ok"]
    assert other.output().only(spec.BasicCancel).consumer_tag == "ctag"


def test_auto_delete_queue_goes_when_its_last_consumer_cancels(c: Client, broker: StandInBroker) -> None:
    declare(c, "ad", auto_delete=True)
    consume(c, "ad")
    c.call(1, spec.BasicCancel(consumer_tag="ctag"))
    assert "ad" not in broker.vhost.queues


# -- publisher confirms -------------------------------------------------------------------------------------


def test_confirms_are_batched_per_input(c: Client) -> None:
    declare(c)
    assert c.call(1, spec.ConfirmSelect()).names() == ["confirm.select-ok"]
    out = c.send(publish(1, "", "q", b"1"), publish(1, "", "q", b"2"), publish(1, "", "q", b"3"))
    assert out.methods() == [spec.BasicAck(delivery_tag=3, multiple=True)]
    out = c.send(publish(1, "", "q", b"4"))
    assert out.methods() == [spec.BasicAck(delivery_tag=4, multiple=False)]


def test_unroutable_publish_is_still_confirmed(c: Client) -> None:
    c.call(1, spec.ConfirmSelect())
    out = c.send(publish(1, "", "no-such-queue", b"x"))
    assert out.methods() == [spec.BasicAck(delivery_tag=1, multiple=False)]


def test_mandatory_return_comes_before_the_confirm(c: Client) -> None:
    c.call(1, spec.ConfirmSelect())
    out = c.send(publish(1, "amq.direct", "nowhere", b"lost", spec.BasicProperties(message_id="m1"), mandatory=True))
    assert out.names() == ["basic.return", "basic.ack"]
    ret = out[0]
    assert ret.method == spec.BasicReturn(312, "NO_ROUTE", "amq.direct", "nowhere")
    assert ret.body == b"lost"
    assert ret.properties == spec.BasicProperties(message_id="m1").encode()
    assert out[1].method == spec.BasicAck(delivery_tag=1)


def test_mandatory_routed_message_is_not_returned(c: Client) -> None:
    declare(c)
    assert c.send(publish(1, "", "q", b"x", mandatory=True)) == []


def test_confirms_on_two_channels_are_separate(c: Client) -> None:
    declare(c)
    c.open_channel(2)
    c.call(1, spec.ConfirmSelect())
    c.call(2, spec.ConfirmSelect())
    out = c.send(publish(1, "", "q", b"a"), publish(2, "", "q", b"b"), publish(2, "", "q", b"c"))
    assert sorted((cmd.channel, cmd.method.delivery_tag, cmd.method.multiple) for cmd in out) == [
        (1, 1, False), (2, 2, True),
    ]


def test_confirm_after_tx_is_refused(c: Client) -> None:
    c.call(1, spec.TxSelect())
    assert channel_close(c.call(1, spec.ConfirmSelect())).reply_code == 406


# -- transactions -------------------------------------------------------------------------------------------


def test_tx_publish_is_held_until_commit(c: Client, broker: StandInBroker) -> None:
    declare(c)
    assert c.call(1, spec.TxSelect()).names() == ["tx.select-ok"]
    c.send(publish(1, "", "q", b"1"), publish(1, "", "q", b"2"))
    queue = broker.vhost.queues["q"]
    assert queue.message_count == 0
    assert c.call(1, spec.TxCommit()).names() == ["tx.commit-ok"]
    assert [e.message.body for e in queue.ready] == [b"1", b"2"]


def test_tx_rollback_discards_publishes_and_acks(c: Client, broker: StandInBroker) -> None:
    declare(c)
    consume(c)
    c.send(publish(1, "", "q", b"1"))
    c.call(1, spec.TxSelect())
    c.send(publish(1, "", "q", b"2"))
    c.call(1, spec.BasicAck(delivery_tag=1))
    assert c.call(1, spec.TxRollback()).names() == ["tx.rollback-ok"]
    queue = broker.vhost.queues["q"]
    assert queue.unacked == 1  # the ack was rolled back
    assert c.call(1, spec.TxCommit()).names() == ["tx.commit-ok"]
    assert queue.unacked == 1
    assert queue.message_count == 0  # the publish was rolled back


def test_tx_ack_takes_effect_at_commit(c: Client, broker: StandInBroker) -> None:
    declare(c)
    consume(c)
    c.send(publish(1, "", "q", b"1"))
    c.call(1, spec.TxSelect())
    c.call(1, spec.BasicAck(delivery_tag=1))
    queue = broker.vhost.queues["q"]
    assert queue.unacked == 1
    c.call(1, spec.TxCommit())
    assert queue.unacked == 0


def test_tx_unknown_tag_fails_at_once(c: Client) -> None:
    c.call(1, spec.TxSelect())
    close = channel_close(c.call(1, spec.BasicAck(delivery_tag=7)))
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 7"


def test_tx_publish_to_missing_exchange_fails_at_publish(c: Client) -> None:
    c.call(1, spec.TxSelect())
    assert channel_close(c.send(publish(1, "nope", "", b"x"))).reply_code == 404


def test_commit_without_select_is_406(c: Client) -> None:
    assert channel_close(c.call(1, spec.TxCommit())).reply_code == 406


# -- exclusivity and connection end -------------------------------------------------------------------------


def test_exclusive_queue_is_locked_to_its_connection(c: Client, broker: StandInBroker) -> None:
    declare(c, "mine", exclusive=True)
    other = connect(broker)
    for method in (
        spec.QueueDeclare(queue="mine", exclusive=True),
        spec.QueueDeclare(queue="mine", passive=True),
        spec.BasicConsume(queue="mine"),
        spec.BasicGet(queue="mine"),
        spec.QueuePurge(queue="mine"),
        spec.QueueDelete(queue="mine"),
        spec.QueueBind(queue="mine", exchange="amq.fanout"),
    ):
        close = channel_close(other.call(1, method))
        assert close.reply_code == 405, method
        assert close.reply_text.startswith(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'"
        )
        other.call(1, spec.ChannelCloseOk())
        other.open_channel(1)
    assert declare(c, "mine", exclusive=True).queue == "mine"


def test_exclusive_consumer_from_another_connection_is_403(c: Client, broker: StandInBroker) -> None:
    declare(c)
    consume(c, exclusive=True)
    other = connect(broker)
    close = channel_close(consume(other))
    assert close.reply_code == 403
    assert close.reply_text == "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"


def test_connection_lost_deletes_exclusive_queues_and_requeues(c: Client, broker: StandInBroker) -> None:
    declare(c, "mine", exclusive=True)
    declare(c, "shared")
    consume(c, "shared")
    c.send(publish(1, "", "shared", b"x"))
    c.session.connection_lost()
    broker_queues = broker.vhost.queues
    assert "mine" not in broker_queues
    shared = broker_queues["shared"]
    assert shared.consumers == []
    assert [(e.message.body, e.redelivered) for e in shared.ready] == [(b"x", True)]
    assert shared.unacked == 0


def test_exclusive_queue_of_a_closed_connection_can_be_redeclared(c: Client, broker: StandInBroker) -> None:
    declare(c, "mine", exclusive=True)
    c.call(0, spec.ConnectionClose(200, "", 0, 0))
    c.session.connection_lost()
    other = connect(broker)
    assert declare(other, "mine", exclusive=True).queue == "mine"


def test_no_deliveries_after_the_server_sent_connection_close(c: Client, broker: StandInBroker) -> None:
    # After connection.close the client discards everything but close/close-ok, so a delivery sent
    # now is lost for a no-ack consumer: the session must stop its consumers when the close goes out.
    declare(c)
    consume(c, no_ack=True)
    assert c.call(9, spec.BasicQos()).only(spec.ConnectionClose).reply_code == 504  # a hard error
    assert c.conn.state == CLOSING
    other = connect(broker)
    other.send(publish(1, "", "q", b"x"))
    assert c.output() == []
    assert [e.message.body for e in broker.vhost.queues["q"].ready] == [b"x"]


def test_no_ack_message_is_not_lost_after_client_connection_close(c: Client, broker: StandInBroker) -> None:
    # Between close-ok and the transport's connection_lost, a pump must not hand this closed
    # connection a no-ack delivery that can never be written.
    declare(c)
    consume(c, no_ack=True)
    assert c.call(0, spec.ConnectionClose(200, "", 0, 0)).names() == ["connection.close-ok"]
    other = connect(broker)
    other.send(publish(1, "", "q", b"x"))
    assert [e.message.body for e in broker.vhost.queues["q"].ready] == [b"x"]


def test_no_deliveries_after_a_broker_shutdown_close(c: Client, broker: StandInBroker) -> None:
    declare(c)
    consume(c)
    c.conn.close()
    assert c.output().names() == ["connection.close"]
    other = connect(broker)
    other.send(publish(1, "", "q", b"x"))
    assert c.output() == []


def test_channel_flow_active_is_ok(c: Client) -> None:
    assert c.call(1, spec.ChannelFlow(active=True)).only(spec.ChannelFlowOk).active is True


def test_access_request_is_answered(c: Client) -> None:
    assert c.call(1, spec.AccessRequest()).names() == ["access.request-ok"]
