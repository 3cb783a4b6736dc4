"""The broker's per-message CPU cost without sockets: a repeatable loop for profiling the hot path.

``conveyor perf`` measures the whole system (kernel, client processes, two cores shared by three
processes), which is what users see but too noisy to tell a 5% change from chance. This script runs
the real broker code (``Broker``, ``AMQPProtocol``, session, vhost, queues, and the segment store for
persistent runs) on a real uvloop event loop, but hands it bytes directly instead of through a socket:
a stand-in transport collects what it writes. Each scenario feeds pre-encoded client frames in
32 KiB chunks, one chunk per loop turn as the server reads them, and reports messages per CPU-second.

    python bench/hotpath.py                  # every scenario, 3 repeats each
    python bench/hotpath.py publish --profile  # one scenario under cProfile (top functions)

Scenarios: ``publish`` (16 B transient to one queue, no consumer), ``persistent`` (16 B persistent
to a durable queue with confirms), ``consume`` (publish and deliver to one consumer, prefetch 1000,
a multiple ack every 100), ``fanout`` (publish to a fanout exchange with 10 queues, no consumers).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from conveyor.amqp import spec
from conveyor.amqp.framing import PROTOCOL_HEADER, FrameBuffer, encode_frame
from conveyor.amqp.server import READ_SIZE, AMQPProtocol
from conveyor.app import Broker, tune_garbage_collector
from conveyor.config import Settings

CHANNEL = 1
BODY = bytes(16)


class CollectingTransport:
    """The part of an asyncio transport the protocol uses; keeps what it would have written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def writelines(self, data: list[bytes]) -> None:
        self.chunks.extend(data)

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def method(m: spec.Method) -> bytes:
    return encode_frame(spec.FRAME_METHOD, CHANNEL, m.encode())


def publish_frames(exchange: str, routing_key: str, persistent: bool) -> bytes:
    properties = spec.BasicProperties(delivery_mode=2 if persistent else 1).encode()
    return (
        method(spec.BasicPublish(exchange=exchange, routing_key=routing_key))
        + encode_frame(spec.FRAME_HEADER, CHANNEL, struct.pack("!HHQ", 60, 0, len(BODY)) + properties)
        + encode_frame(spec.FRAME_BODY, CHANNEL, BODY)
    )


class Client:
    """Drives one AMQPProtocol: handshake, then raw frames; returns the server's frames."""

    def __init__(self, broker: Broker) -> None:
        self.protocol = AMQPProtocol(broker)
        self.transport = CollectingTransport()
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]
        self.frames = FrameBuffer(1 << 20)

    def send(self, data: bytes) -> None:
        view = self.protocol.get_buffer(-1)
        for start in range(0, len(data), READ_SIZE):
            chunk = data[start : start + READ_SIZE]
            view[: len(chunk)] = chunk
            self.protocol.buffer_updated(len(chunk))

    def received(self) -> list[tuple[int, int, bytes]]:
        return self.frames.feed(self.transport.take())

    async def open(self) -> None:
        self.send(PROTOCOL_HEADER)
        self.send(
            encode_frame(
                spec.FRAME_METHOD, 0,
                spec.ConnectionStartOk({"product": "hotpath"}, "PLAIN", b"\0guest\0guest", "en_US").encode(),
            )
            + encode_frame(spec.FRAME_METHOD, 0, spec.ConnectionTuneOk(2047, 131072, 0).encode())
            + encode_frame(spec.FRAME_METHOD, 0, spec.ConnectionOpen("/").encode())
            + method(spec.ChannelOpen())
        )
        await settle()
        self.received()


async def settle() -> None:
    """Let every callback scheduled so far (and those they schedule) run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def feed(client: Client, stream: bytes, on_turn: Callable[[], None] | None = None) -> None:
    """Feed ``stream`` one read-sized chunk per loop turn, as the server reads a busy socket."""
    for start in range(0, len(stream), READ_SIZE):
        client.send(stream[start : start + READ_SIZE])
        await asyncio.sleep(0)
        if on_turn is not None:
            on_turn()
    await settle()


async def scenario_publish(broker: Broker, n: int) -> float:
    client = Client(broker)
    await client.open()
    client.send(method(spec.QueueDeclare(queue="q")))
    stream = publish_frames("", "q", False) * n
    await settle()
    t0 = time.process_time()
    await feed(client, stream, client.transport.chunks.clear)
    elapsed = time.process_time() - t0
    assert broker.vhosts["/"].queues["q"].message_count == n
    return elapsed


async def scenario_persistent(broker: Broker, n: int) -> float:
    client = Client(broker)
    await client.open()
    client.send(method(spec.QueueDeclare(queue="dq", durable=True)) + method(spec.ConfirmSelect()))
    await settle()
    client.received()
    stream = publish_frames("", "dq", True) * n
    t0 = time.process_time()
    await feed(client, stream, client.transport.chunks.clear)
    while broker.vhosts["/"].queues["dq"].message_count < n:
        await asyncio.sleep(0.001)
    elapsed = time.process_time() - t0
    return elapsed


async def scenario_consume(broker: Broker, n: int) -> float:
    producer = Client(broker)
    consumer = Client(broker)
    await producer.open()
    await consumer.open()
    producer.send(method(spec.QueueDeclare(queue="cq")))
    consumer.send(method(spec.BasicQos(prefetch_count=1000)) + method(spec.BasicConsume(queue="cq", no_ack=False)))
    await settle()
    consumer.received()
    delivered = 0
    pending = 0
    last_tag = 0
    deliver = b"\x00\x3c\x00\x3c"

    def drain() -> None:
        nonlocal delivered, pending, last_tag
        acks = []
        for frame_type, _, payload in consumer.received():
            if frame_type == 1 and payload[:4] == deliver:
                off = 5 + payload[4]
                (last_tag,) = struct.unpack_from("!Q", payload, off)
                delivered += 1
                pending += 1
                if pending >= 100:
                    acks.append(method(spec.BasicAck(delivery_tag=last_tag, multiple=True)))
                    pending = 0
        if acks:
            consumer.send(b"".join(acks))

    stream = publish_frames("", "cq", False) * n
    t0 = time.process_time()

    def on_turn() -> None:
        producer.transport.chunks.clear()
        drain()

    await feed(producer, stream, on_turn)
    while delivered < n:
        drain()
        if pending:
            consumer.send(method(spec.BasicAck(delivery_tag=last_tag, multiple=True)))
            pending = 0
        await asyncio.sleep(0)
    return time.process_time() - t0


async def scenario_fanout(broker: Broker, n: int) -> float:
    client = Client(broker)
    await client.open()
    setup = method(spec.ExchangeDeclare(exchange="fan", type="fanout"))
    for i in range(10):
        setup += method(spec.QueueDeclare(queue=f"f{i}")) + method(spec.QueueBind(queue=f"f{i}", exchange="fan"))
    client.send(setup)
    await settle()
    stream = publish_frames("fan", "", False) * n
    t0 = time.process_time()
    await feed(client, stream, client.transport.chunks.clear)
    elapsed = time.process_time() - t0
    assert broker.vhosts["/"].queues["f9"].message_count == n
    return elapsed


SCENARIOS = {
    "publish": (scenario_publish, 300_000),
    "persistent": (scenario_persistent, 200_000),
    "consume": (scenario_consume, 200_000),
    "fanout": (scenario_fanout, 100_000),
}


async def run_one(name: str, count: int | None) -> tuple[int, float]:
    target, default = SCENARIOS[name]
    n = count or default
    with tempfile.TemporaryDirectory() as data_dir:
        broker = Broker(Settings(data_dir=data_dir, heartbeat=0))
        broker.recover()
        elapsed = await target(broker, n)
        broker.committer.close()
    return n, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # ([] among the choices: argparse checks the empty default of nargs="*" against them too.)
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], help="default: all")
    parser.add_argument("--count", type=int, help="messages per run (default depends on the scenario)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="run once under cProfile and print the top 30")
    parser.add_argument(
        "--default-gc", action="store_true", help="keep CPython's collector settings (conveyor serve tunes them)"
    )
    args = parser.parse_args()
    if not args.default_gc:
        tune_garbage_collector()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    for name in args.scenarios or list(SCENARIOS):
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            runner(run_one(name, args.count))
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(30)
            continue
        rates = []
        for _ in range(args.repeats):
            n, elapsed = runner(run_one(name, args.count))
            rates.append(n / elapsed)
        rates.sort()
        print(f"{name:<11} {rates[len(rates) // 2]:>10,.0f} msg/CPU-s  (min {rates[0]:,.0f}, max {rates[-1]:,.0f})")


if __name__ == "__main__":
    main()
