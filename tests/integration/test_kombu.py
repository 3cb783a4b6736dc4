"""kombu over py-amqp, and py-amqp used directly."""

from __future__ import annotations

import contextlib
import socket
import time

import amqp
import kombu
import pytest
from kombu import Consumer, Exchange, Producer, Queue


def test_kombu_simple_queue(broker, names):
    q = names.queue()
    names.exchanges.append(q)  # SimpleQueue declares a direct exchange named like the queue
    with kombu.Connection(broker.url, transport="pyamqp") as conn:
        sq = conn.SimpleQueue(q)
        try:
            sq.put({"order": 1, "item": "pizza"})
            sq.put("plain text")
            m1 = sq.get(block=True, timeout=5)
            assert m1.payload == {"order": 1, "item": "pizza"}
            assert m1.content_type == "application/json"
            m1.ack()
            m2 = sq.get(block=True, timeout=5)
            assert m2.payload == "plain text"
            m2.ack()
            with pytest.raises(sq.Empty):
                sq.get(block=False)
        finally:
            sq.close()


def test_kombu_producer_consumer_drain_events(broker, names):
    xname, qname = names.exchange(), names.queue()
    exchange = Exchange(xname, type="topic", durable=False)
    queue = Queue(qname, exchange=exchange, routing_key="orders.#", durable=False)
    received = []
    with kombu.Connection(broker.url) as conn:
        producer = Producer(conn.channel(), exchange=exchange, serializer="json")
        producer.publish({"n": 1}, routing_key="orders.new", declare=[queue], headers={"h": "v"})
        producer.publish({"n": 2}, routing_key="orders.paid.card")
        producer.publish({"n": 3}, routing_key="other")  # unmatched

        def on_message(body, message):
            received.append((body, message.headers, message.delivery_info["routing_key"]))
            message.ack()

        with Consumer(conn.channel(), queues=[queue], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 5
            while len(received) < 2 and time.monotonic() < deadline:
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=0.2)
    assert received == [({"n": 1}, {"h": "v"}, "orders.new"), ({"n": 2}, {}, "orders.paid.card")]


def test_kombu_requeue_and_reject(broker, names):
    q = names.queue()
    names.exchanges.append(q)
    with kombu.Connection(broker.url) as conn:
        sq = conn.SimpleQueue(q)
        try:
            sq.put("a")
            m = sq.get(timeout=5)
            m.requeue()
            m = sq.get(timeout=5)
            assert m.payload == "a"
            assert m.delivery_info["redelivered"] is True
            m.reject()
            with pytest.raises(sq.Empty):
                sq.get(block=False)
        finally:
            sq.close()


def test_py_amqp_direct(broker, names):
    q, x = names.queue(), names.exchange()
    conn = amqp.Connection(f"{broker.host}:{broker.port}", userid="guest", password="guest", virtual_host="/")
    conn.connect()
    try:
        assert conn.server_capabilities["publisher_confirms"] is True
        ch = conn.channel()
        ch.exchange_declare(x, "direct", auto_delete=False)
        name, count, consumers = ch.queue_declare(q, auto_delete=False)
        assert (name, count, consumers) == (q, 0, 0)
        ch.queue_bind(q, x, routing_key="rk")
        ch.basic_publish(amqp.Message("hello", content_type="text/plain", application_headers={"k": 1}),
                         exchange=x, routing_key="rk")
        ch.basic_publish(amqp.Message(b"\x00bin"), exchange=x, routing_key="rk")
        msg = None
        deadline = time.monotonic() + 5
        while msg is None and time.monotonic() < deadline:  # publish is async; get may race it
            msg = ch.basic_get(q)
        assert msg is not None
        assert msg.body == "hello"  # py-amqp decodes str bodies it sent with content_encoding utf-8
        assert msg.properties["content_type"] == "text/plain"
        assert msg.headers == {"k": 1}
        assert msg.delivery_info["routing_key"] == "rk"
        assert msg.delivery_info["message_count"] == 1
        ch.basic_ack(msg.delivery_tag)

        got = []

        def cb(message):
            got.append(message.body)
            ch.basic_ack(message.delivery_tag)

        tag = ch.basic_consume(q, callback=cb)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=0.2)
        assert got == [b"\x00bin"]
        ch.basic_cancel(tag)
        assert ch.queue_delete(q) == 0
        ch.close()
    finally:
        conn.close()


def test_py_amqp_confirms_and_channel_error(broker, names):
    q = names.queue()
    with amqp.Connection(f"{broker.host}:{broker.port}", confirm_publish=True) as conn:
        ch = conn.channel()
        ch.queue_declare(q)
        ch.basic_publish(amqp.Message("confirmed"), routing_key=q)  # waits for basic.ack
        assert ch.queue_declare(q, passive=True).message_count == 1
        with pytest.raises(amqp.exceptions.NotFound) as ei:
            conn.channel().queue_declare(names.queue("missing"), passive=True)
        assert ei.value.reply_code == 404
        assert ei.value.reply_text.startswith("NOT_FOUND - no queue ")
        # py-amqp's shape: method_name set from the (class, method) the broker named
        assert ei.value.method_sig == (50, 10)
