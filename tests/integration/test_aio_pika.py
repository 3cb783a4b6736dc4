"""aio-pika (robust connection, confirms on by default, RPC, QoS). Plain asyncio.run inside sync tests."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
from aio_pika.exceptions import ChannelClosed, ChannelNotFoundEntity, DeliveryError


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_connect_robust_declare_publish_iterate(broker, names):
    q = names.queue()

    async def main():
        conn = await aio_pika.connect_robust(broker.url)
        async with conn:
            ch = await conn.channel()
            queue = await ch.declare_queue(q)
            for i in range(3):
                await ch.default_exchange.publish(aio_pika.Message(f"m{i}".encode()), routing_key=q)
            got = []
            async with queue.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 3:
                        break
            declared = await ch.declare_queue(q, passive=True)
            return got, declared.declaration_result.message_count

    got, remaining = run(main())
    assert got == [b"m0", b"m1", b"m2"]
    assert remaining == 0


def test_ack_nack_reject(broker, names):
    q = names.queue()

    async def main():
        async with await aio_pika.connect_robust(broker.url) as conn:
            ch = await conn.channel()
            queue = await ch.declare_queue(q)
            for body in (b"keep", b"retry", b"drop"):
                await ch.default_exchange.publish(aio_pika.Message(body), routing_key=q)
            m1 = await queue.get(timeout=5)
            m2 = await queue.get(timeout=5)
            m3 = await queue.get(timeout=5)
            await m1.ack()
            await m2.nack(requeue=True)
            await m3.reject(requeue=False)
            # RabbitMQ requeues asynchronously: a basic.get right after the nack may find nothing yet
            again = None
            for _ in range(500):
                again = await queue.get(timeout=5, fail=False)
                if again is not None:
                    break
                await asyncio.sleep(0.01)
            assert again is not None
            await again.ack()
            empty = await queue.get(timeout=5, fail=False)
            return again.body, again.redelivered, empty

    body, redelivered, empty = run(main())
    assert (body, redelivered, empty) == (b"retry", True, None)


def test_confirms_on_by_default_and_mandatory_return(broker, names):
    q = names.queue()
    x = names.exchange()

    async def main():
        async with await aio_pika.connect_robust(broker.url) as conn:
            ch = await conn.channel(on_return_raises=True)
            assert ch.publisher_confirms
            await ch.declare_queue(q)
            confirm = await ch.default_exchange.publish(aio_pika.Message(b"ok"), routing_key=q)
            ex = await ch.declare_exchange(x, aio_pika.ExchangeType.DIRECT)
            with pytest.raises(DeliveryError) as ei:
                await ex.publish(aio_pika.Message(b"lost"), routing_key="nobody", mandatory=True)
            return confirm, ei.value

    confirm, err = run(main())
    assert type(confirm).__name__ == "Ack"
    assert err.message.body == b"lost"


def test_rpc_reply_to_correlation_id(broker, names):
    rpc_q = names.queue("rpc")

    async def server(conn, ready: asyncio.Event):
        ch = await conn.channel()
        queue = await ch.declare_queue(rpc_q, auto_delete=True)
        ready.set()
        async with queue.iterator() as it:
            async for message in it:
                async with message.process():
                    n = int(message.body)
                    await ch.default_exchange.publish(
                        aio_pika.Message(str(n * n).encode(), correlation_id=message.correlation_id),
                        routing_key=message.reply_to,
                    )
                    if n == 0:
                        return

    async def main():
        # plain (non-robust) connection: robust queues invent client-side names for "" declarations
        async with await aio_pika.connect(broker.url) as conn:
            ready = asyncio.Event()
            srv = asyncio.create_task(server(conn, ready))
            await ready.wait()
            ch = await conn.channel()
            callback_q = await ch.declare_queue("", exclusive=True)
            assert callback_q.name.startswith("amq.gen-")
            futures: dict[str, asyncio.Future] = {}

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage):
                await message.ack()
                futures.pop(message.correlation_id).set_result(int(message.body))

            await callback_q.consume(on_reply)
            results = []
            for n in (2, 3, 12, 0):
                cid = str(uuid.uuid4())
                fut = asyncio.get_running_loop().create_future()
                futures[cid] = fut
                await ch.default_exchange.publish(
                    aio_pika.Message(str(n).encode(), correlation_id=cid, reply_to=callback_q.name),
                    routing_key=rpc_q,
                )
                results.append(await fut)
            await srv
            return results

    assert run(main()) == [4, 9, 144, 0]


def test_qos_prefetch(broker, names):
    q = names.queue()

    async def main():
        async with await aio_pika.connect_robust(broker.url) as conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=2)
            queue = await ch.declare_queue(q)
            for i in range(5):
                await ch.default_exchange.publish(aio_pika.Message(str(i).encode()), routing_key=q)
            received: asyncio.Queue = asyncio.Queue()
            await queue.consume(received.put)
            first = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(received.get(), 0.3)  # prefetch window full
            await first[0].ack()
            third = await asyncio.wait_for(received.get(), 5)
            await first[1].ack()
            await third.ack()
            rest = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
            for m in rest:
                await m.ack()
            return [m.body for m in [*first, third, *rest]]

    assert run(main()) == [b"0", b"1", b"2", b"3", b"4"]


def test_channel_error_surfaces(broker, names):
    q = names.queue("missing")

    async def main():
        async with await aio_pika.connect_robust(broker.url) as conn:
            ch = await conn.channel()
            with pytest.raises(ChannelClosed) as ei:
                await ch.declare_queue(q, passive=True)
            return ei.value

    err = run(main())
    assert isinstance(err, ChannelNotFoundEntity)  # aiormq maps reply code 404 to this class
    assert err.args == (f"NOT_FOUND - no queue '{q}' in vhost '/'",)
