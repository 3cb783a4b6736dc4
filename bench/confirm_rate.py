"""Confirmed-publish rate of any AMQP 0-9-1 broker, with a window of outstanding confirms.

A deliberately small client: one socket, frames pre-encoded once, publishes pipelined in batches so
the client is not what limits the rate (it uses well under one core). Publishes N messages to a fresh
queue with publisher confirms, keeping at most WINDOW unconfirmed, and reports messages per second.
Used for Conveyor and RabbitMQ alike, in the same run, so the two can be compared.

Usage: python bench/confirm_rate.py --port 5672 [--messages N] [--size B] [--window W] [--persistent]
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
import uuid

from conveyor.amqp import spec
from conveyor.amqp.framing import PROTOCOL_HEADER, FrameBuffer, encode_frame


class Client:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = FrameBuffer(1 << 20)
        self.pending: list[tuple[int, int, bytes]] = []
        self.sock.sendall(PROTOCOL_HEADER)
        self.expect(spec.ConnectionStart)
        self.send(0, spec.ConnectionStartOk({"product": "confirm_rate"}, "PLAIN", b"\0guest\0guest", "en_US"))
        tune = self.expect(spec.ConnectionTune)
        self.send(0, spec.ConnectionTuneOk(tune.channel_max, tune.frame_max, 0))
        self.send(0, spec.ConnectionOpen("/"))
        self.expect(spec.ConnectionOpenOk)
        self.send(1, spec.ChannelOpen())
        self.expect(spec.ChannelOpenOk)

    def send(self, channel: int, method: spec.Method) -> None:
        self.sock.sendall(encode_frame(spec.FRAME_METHOD, channel, method.encode()))

    def next_method(self) -> spec.Method:
        while not self.pending:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("broker closed the connection")
            self.pending.extend(self.frames.feed(data))
        frame_type, _, payload = self.pending.pop(0)
        if frame_type != spec.FRAME_METHOD:
            return self.next_method()
        return spec.decode_method(payload)

    def expect(self, cls: type[spec.Method]) -> spec.Method:
        method = self.next_method()
        if not isinstance(method, cls):
            raise RuntimeError(f"expected {cls.NAME}, got {method!r}")
        return method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--window", type=int, default=1000, help="most unconfirmed messages at a time")
    parser.add_argument("--persistent", action="store_true", help="delivery_mode=2 to a durable queue")
    args = parser.parse_args()

    client = Client(args.host, args.port)
    queue = f"confirm-rate-{uuid.uuid4().hex[:8]}"
    client.send(1, spec.QueueDeclare(queue=queue, durable=args.persistent))
    client.expect(spec.QueueDeclareOk)
    client.send(1, spec.ConfirmSelect())
    client.expect(spec.ConfirmSelectOk)

    properties = spec.BasicProperties(delivery_mode=2 if args.persistent else 1).encode()
    body = b"x" * args.size
    one = b"".join((
        encode_frame(spec.FRAME_METHOD, 1, spec.BasicPublish(routing_key=queue).encode()),
        encode_frame(spec.FRAME_HEADER, 1, struct.pack("!HHQ", 60, 0, len(body)) + properties),
        encode_frame(spec.FRAME_BODY, 1, body),
    ))
    batch = max(1, args.window // 4)
    sent = confirmed = 0
    started = time.monotonic()
    while confirmed < args.messages:
        room = min(args.window - (sent - confirmed), args.messages - sent)
        if room >= batch or (room > 0 and sent + room == args.messages):
            client.sock.sendall(one * room)
            sent += room
            continue
        method = client.next_method()
        if isinstance(method, spec.BasicAck):
            confirmed = method.delivery_tag if method.multiple else confirmed + 1
        elif isinstance(method, spec.BasicNack):
            raise RuntimeError(f"broker nacked message {method.delivery_tag}")
    elapsed = time.monotonic() - started
    kind = "persistent, durable queue" if args.persistent else "transient"
    print(f"{args.messages} x {args.size} B {kind}, window {args.window}: {args.messages / elapsed:,.0f} msg/s")
    client.send(1, spec.QueueDelete(queue=queue))
    client.expect(spec.QueueDeleteOk)
    client.sock.close()


if __name__ == "__main__":
    main()
