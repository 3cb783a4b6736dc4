"""A minimal, fast, blocking-socket AMQP 0-9-1 client for load generation.

Only what ``conveyor perf`` needs: connect (PLAIN, heartbeats off), one channel, declare/delete
queues, qos, confirm.select, publishing from pre-encoded frames in pipelined batches, and a raw
delivery parser for consumers. Nothing here decodes a message it does not have to: a delivery's
method frame is read with ``struct`` directly and only the first 16 body bytes (the perf stamp) are
looked at.
"""

from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from conveyor.amqp import spec
from conveyor.amqp.framing import FRAME_END, PROTOCOL_HEADER, FrameBuffer, encode_frame

DEFAULT_URI = "amqp://guest:guest@127.0.0.1:5672/"
CHANNEL = 1

# The stamp at the start of every perf message body, 16 bytes:
#   key (8 B): producer id in the top 16 bits, sequence number (from 1) in the low 48 bits
#   send time (8 B): time.time_ns() when the producer sent it
STAMP = struct.Struct("!QQ")
STAMP_SIZE = STAMP.size
SEQ_BITS = 48
SEQ_MASK = (1 << SEQ_BITS) - 1
MAX_PRODUCERS = 1 << (64 - SEQ_BITS)  # producer ids 0 .. 65535
MAX_SEQ = SEQ_MASK


def stamp_key(producer: int, seq: int) -> int:
    """The stamp's first field: ``producer`` (0 .. 65535) and ``seq`` (0 .. 2**48-1) in one 64-bit number."""
    if not 0 <= producer < MAX_PRODUCERS or not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"producer {producer} / sequence {seq} do not fit the stamp")
    return (producer << SEQ_BITS) | seq


def pack_stamp(producer: int, seq: int, sent_ns: int) -> bytes:
    return STAMP.pack(stamp_key(producer, seq), sent_ns)


def unpack_stamp(body: bytes) -> tuple[int, int, int]:
    """``(producer, seq, sent_ns)`` from the first 16 bytes of a perf message body."""
    key, sent_ns = STAMP.unpack_from(body, 0)
    return key >> SEQ_BITS, key & SEQ_MASK, sent_ns


_FRAME_HEAD = struct.Struct("!BHI")
_DELIVER = b"\x00\x3c\x00\x3c"
_ACK = b"\x00\x3c\x00\x50"
_NACK = b"\x00\x3c\x00\x78"
_Q = struct.Struct("!Q")
_ACK_FRAME = struct.Struct("!BHI4sQB")


class AMQPError(Exception):
    """The broker closed the channel or connection, or the connection broke."""


@dataclass(frozen=True)
class URI:
    host: str
    port: int
    user: str
    password: str
    vhost: str

    @classmethod
    def parse(cls, uri: str) -> URI:
        u = urlparse(uri)
        if u.scheme not in ("amqp", ""):
            raise ValueError(f"only amqp:// URIs are supported, not {u.scheme}://")
        vhost = unquote(u.path[1:]) if u.path.startswith("/") else unquote(u.path)
        return cls(
            host=u.hostname or "127.0.0.1",
            port=u.port or 5672,
            user=unquote(u.username or "guest"),
            password=unquote(u.password or "guest"),
            vhost=vhost or "/",
        )

    def safe(self) -> str:
        """The URI without the password, for printing."""
        vhost = "" if self.vhost == "/" else self.vhost
        return f"amqp://{self.user}@{self.host}:{self.port}/{vhost}"


class Connection:
    """One socket, one channel (number 1). Blocking; ``read`` takes a timeout."""

    def __init__(self, uri: URI, product: str = "conveyor-perf") -> None:
        self.sock = socket.create_connection((uri.host, uri.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = FrameBuffer(1 << 24)
        self.pending: list[tuple[int, int, bytes]] = []
        self.sock.sendall(PROTOCOL_HEADER)
        start = self.expect(spec.ConnectionStart)
        assert isinstance(start, spec.ConnectionStart)
        self.server_properties: dict = dict(start.server_properties)
        response = b"\0" + uri.user.encode() + b"\0" + uri.password.encode()
        props = {"product": product, "capabilities": {"publisher_confirms": True, "basic.nack": True}}
        self.send(0, spec.ConnectionStartOk(props, "PLAIN", response, "en_US"))
        tune = self.expect(spec.ConnectionTune)
        assert isinstance(tune, spec.ConnectionTune)
        self.frame_max = tune.frame_max or 131072
        self.send(0, spec.ConnectionTuneOk(tune.channel_max, self.frame_max, 0))  # heartbeats off
        self.send(0, spec.ConnectionOpen(uri.vhost))
        self.expect(spec.ConnectionOpenOk)
        self.send(CHANNEL, spec.ChannelOpen())
        self.expect(spec.ChannelOpenOk)
        self.sock.settimeout(None)

    # -- low level ------------------------------------------------------------------------------

    def send(self, channel: int, method: spec.Method) -> None:
        self.sock.sendall(encode_frame(spec.FRAME_METHOD, channel, method.encode()))

    def read(self, timeout: float | None) -> list[tuple[int, int, bytes]]:
        """Frames available within ``timeout`` seconds (0 = poll, None = block); [] on timeout."""
        if self.pending:
            frames, self.pending = self.pending, []
            return frames
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return []
        data = self.sock.recv(1 << 18)
        if not data:
            raise AMQPError("broker closed the connection")
        frames = self.frames.feed(data)
        if self.frames.error is not None:
            raise AMQPError(f"framing error from broker: {self.frames.error}")
        return frames

    def check_close(self, payload: bytes) -> None:
        """Raise if a method frame payload is a channel.close or connection.close."""
        method = spec.decode_method(payload)
        if isinstance(method, spec.ChannelClose | spec.ConnectionClose):
            kind = "channel" if isinstance(method, spec.ChannelClose) else "connection"
            try:
                if isinstance(method, spec.ChannelClose):
                    self.send(CHANNEL, spec.ChannelCloseOk())
                else:
                    self.send(0, spec.ConnectionCloseOk())
            except OSError:
                pass
            raise AMQPError(f"broker closed the {kind}: {method.reply_code} {method.reply_text}")

    def expect(self, cls: type[spec.Method]) -> spec.Method:
        """Wait for the next method frame (skipping content) and require it to be ``cls``."""
        while True:
            frames = self.read(30.0)
            if not frames:
                raise AMQPError(f"timed out waiting for {cls.NAME}")
            for i, (frame_type, _channel, payload) in enumerate(frames):
                if frame_type != spec.FRAME_METHOD:
                    continue
                self.check_close(payload)
                method = spec.decode_method(payload)
                if isinstance(method, spec.ConnectionBlocked | spec.ConnectionUnblocked):
                    continue
                self.pending = frames[i + 1 :] + self.pending
                if not isinstance(method, cls):
                    raise AMQPError(f"expected {cls.NAME}, got {method!r}")
                return method

    def call(self, method: spec.Method, reply: type[spec.Method]) -> spec.Method:
        self.send(CHANNEL, method)
        return self.expect(reply)

    # -- AMQP operations ------------------------------------------------------------------------

    def queue_declare(self, queue: str, durable: bool) -> None:
        self.call(spec.QueueDeclare(queue=queue, durable=durable), spec.QueueDeclareOk)

    def queue_delete(self, queue: str) -> None:
        self.call(spec.QueueDelete(queue=queue), spec.QueueDeleteOk)

    def exchange_declare(self, exchange: str, kind: str, durable: bool) -> None:
        self.call(spec.ExchangeDeclare(exchange=exchange, type=kind, durable=durable), spec.ExchangeDeclareOk)

    def exchange_delete(self, exchange: str) -> None:
        """Delete ``exchange``; a missing one is fine (RabbitMQ and Conveyor answer delete-ok)."""
        self.call(spec.ExchangeDelete(exchange=exchange), spec.ExchangeDeleteOk)

    def queue_bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        self.call(spec.QueueBind(queue=queue, exchange=exchange, routing_key=routing_key), spec.QueueBindOk)

    def qos(self, prefetch: int) -> None:
        self.call(spec.BasicQos(prefetch_count=prefetch), spec.BasicQosOk)

    def confirm_select(self) -> None:
        self.call(spec.ConfirmSelect(), spec.ConfirmSelectOk)

    def consume(self, queue: str, no_ack: bool) -> None:
        self.call(spec.BasicConsume(queue=queue, consumer_tag="perf", no_ack=no_ack), spec.BasicConsumeOk)

    def close(self) -> None:
        """Close politely (best effort, short timeout); then the socket."""
        try:
            self.sock.settimeout(2.0)
            self.send(0, spec.ConnectionClose(spec.REPLY_SUCCESS, "perf done", 0, 0))
            deadline_reads = 200
            while deadline_reads:
                deadline_reads -= 1
                frames = self.read(2.0)
                if not frames:
                    break
                if any(t == spec.FRAME_METHOD and p[:4] == b"\x00\x0a\x00\x33" for t, _, p in frames):
                    break
        except (OSError, AMQPError):
            pass
        finally:
            self.sock.close()


def publish_template(
    routing_key: str, size: int, persistent: bool, frame_max: int, exchange: str = ""
) -> tuple[bytes, int]:
    """One whole message (method, header and body frames) and the offset of its stamp.

    Published to ``exchange`` (default: the default exchange, where the routing key is the queue name).
    The body is ``size`` bytes (at least the stamp); it is split over several body frames when it does
    not fit in one. The stamp lives at the start of the first body frame's payload.
    """
    properties = spec.BasicProperties(delivery_mode=2 if persistent else 1).encode()
    publish = spec.BasicPublish(exchange=exchange, routing_key=routing_key)
    method = encode_frame(spec.FRAME_METHOD, CHANNEL, publish.encode())
    header = encode_frame(spec.FRAME_HEADER, CHANNEL, struct.pack("!HHQ", 60, 0, size) + properties)
    chunk = frame_max - 8
    body = bytes(size)
    body_frames = b"".join(encode_frame(spec.FRAME_BODY, CHANNEL, body[i : i + chunk]) for i in range(0, size, chunk))
    stamp_offset = len(method) + len(header) + 7
    return method + header + body_frames, stamp_offset


def ack_frame(delivery_tag: int, multiple: bool) -> bytes:
    return _ACK_FRAME.pack(spec.FRAME_METHOD, CHANNEL, 13, _ACK, delivery_tag, 1 if multiple else 0) + FRAME_END


def parse_confirm(payload: bytes) -> tuple[bool, int, bool] | None:
    """``(is_ack, delivery_tag, multiple)`` for a basic.ack/basic.nack payload, else None."""
    head = payload[:4]
    if head in (_ACK, _NACK):
        (tag,) = _Q.unpack_from(payload, 4)
        return head == _ACK, tag, bool(payload[12] & 1)
    return None


def parse_deliver(payload: bytes) -> tuple[int, bool] | None:
    """``(delivery_tag, redelivered)`` for a basic.deliver payload, else None."""
    if payload[:4] != _DELIVER:
        return None
    off = 5 + payload[4]
    (tag,) = _Q.unpack_from(payload, off)
    return tag, bool(payload[off + 8] & 1)
