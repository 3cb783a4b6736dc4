"""pika's AsyncioConnection adapter: connect, declare, publish, consume one, ack, close."""

from __future__ import annotations

import asyncio

import pika
from pika.adapters.asyncio_connection import AsyncioConnection


async def _round_trip(params: pika.ConnectionParameters, queue: str) -> dict:
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    result: dict = {}

    def fail(exc) -> None:
        if not done.done():
            done.set_exception(exc if isinstance(exc, BaseException) else RuntimeError(str(exc)))

    def on_open(conn: AsyncioConnection) -> None:
        conn.channel(on_open_callback=lambda ch: on_channel(conn, ch))

    def on_channel(conn: AsyncioConnection, ch) -> None:
        ch.add_on_close_callback(lambda _ch, reason: result.setdefault("channel_closed", reason))
        ch.queue_declare(queue, exclusive=True, callback=lambda frame: on_declared(ch, frame))

    def on_declared(ch, frame) -> None:
        result["declared"] = frame.method.queue
        ch.confirm_delivery(ack_nack_callback=lambda f: result.setdefault("confirm", type(f.method).__name__),
                            callback=lambda _f: on_confirm_mode(ch))

    def on_confirm_mode(ch) -> None:
        ch.basic_consume(queue, lambda c, m, p, b: on_message(c, m, p, b))
        ch.basic_publish("", queue, b"async hello", pika.BasicProperties(content_type="text/plain"))

    def on_message(ch, method, props, body) -> None:
        result["body"] = body
        result["content_type"] = props.content_type
        result["redelivered"] = method.redelivered
        ch.basic_ack(method.delivery_tag)
        ch.close()
        ch.connection.close()

    def on_closed(_conn, reason) -> None:
        result["closed"] = reason
        if not done.done():
            done.set_result(None)

    conn = AsyncioConnection(
        params,
        on_open_callback=on_open,
        on_open_error_callback=lambda _c, exc: fail(exc),
        on_close_callback=on_closed,
        custom_ioloop=loop,
    )
    try:
        await asyncio.wait_for(done, 10)
    finally:
        if not conn.is_closed and not conn.is_closing:
            conn.close()
    return result


def test_asyncio_connection_round_trip(broker, names):
    q = names.queue()
    result = asyncio.run(_round_trip(broker.params(), q))
    assert result["declared"] == q
    assert result["confirm"] == "Ack"
    assert result["body"] == b"async hello"
    assert result["content_type"] == "text/plain"
    assert result["redelivered"] is False
    assert "channel_closed" in result
