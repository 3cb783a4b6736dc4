"""A tiny test-only AMQP client codec, and a sans-IO server harness (h11's ConnectionPair idea).

The client side encodes what a client sends (protocol header, methods, content frames split any way)
and decodes what the server wrote back into ``Command`` objects, assembling method + header + body the
way a client library does. ``ServerPair`` wires a ``Connection`` to a handler and runs the callbacks a
queue schedules, so a test is "bytes in, decoded commands out" with no socket and no event loop.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from conveyor.amqp import spec
from conveyor.amqp.connection import Connection
from conveyor.amqp.framing import PROTOCOL_HEADER, FrameBuffer, encode_frame
from conveyor.amqp.session import Session
from conveyor.core.clock import ManualClock
from conveyor.core.vhost import VirtualHost

CONTENT_HEADER = struct.Struct("!HHQ")
PLAIN_GUEST = b"\x00guest\x00guest"
SERVER_PROPERTIES: dict[str, Any] = {
    "product": "Conveyor",
    "capabilities": {"publisher_confirms": True, "basic.nack": True, "consumer_cancel_notify": True},
}


# -- client-side encoding ----------------------------------------------------------------------


def method_frame(channel: int, method: spec.Method) -> bytes:
    return encode_frame(spec.FRAME_METHOD, channel, method.encode())


def header_frame(channel: int, body_size: int, properties: bytes = b"\x00\x00", class_id: int = 60) -> bytes:
    return encode_frame(spec.FRAME_HEADER, channel, CONTENT_HEADER.pack(class_id, 0, body_size) + properties)


def body_frame(channel: int, data: bytes) -> bytes:
    return encode_frame(spec.FRAME_BODY, channel, data)


def content_frames(
    channel: int,
    method: spec.Method,
    body: bytes = b"",
    properties: spec.BasicProperties | bytes | None = None,
    chunks: Iterable[int] | None = None,
) -> bytes:
    """A content-bearing method with its header and body; ``chunks`` gives the body frame sizes."""
    if properties is None:
        raw = b"\x00\x00"
    elif isinstance(properties, bytes):
        raw = properties
    else:
        raw = properties.encode()
    out = [method_frame(channel, method), header_frame(channel, len(body), raw)]
    if chunks is None:
        chunks = [len(body)] if body else []
    start = 0
    for size in chunks:
        out.append(body_frame(channel, body[start : start + size]))
        start += size
    assert start == len(body), "chunks must cover the body"
    return b"".join(out)


def publish(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes = b"",
    properties: spec.BasicProperties | bytes | None = None,
    *,
    mandatory: bool = False,
    chunks: Iterable[int] | None = None,
) -> bytes:
    method = spec.BasicPublish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    return content_frames(channel, method, body, properties, chunks)


# -- decoding what the server wrote --------------------------------------------------------------


@dataclass
class Command:
    """One server command: a method, plus properties and body when it carries content."""

    channel: int
    method: spec.Method | None  # None for a heartbeat frame
    properties: bytes | None = None
    body: bytes | None = None

    @property
    def name(self) -> str:
        return "heartbeat" if self.method is None else self.method.NAME


class ServerOutput(list[Command]):
    """The decoded commands, plus whether the server sent a protocol header (a refusal)."""

    protocol_header = False

    def names(self) -> list[str]:
        return [c.name for c in self]

    def methods(self, cls: type[spec.Method] | None = None) -> list[Any]:
        return [c.method for c in self if c.method is not None and (cls is None or isinstance(c.method, cls))]

    def only(self, cls: type[spec.Method]) -> Any:
        found = self.methods(cls)
        assert len(found) == 1, f"expected one {cls.NAME}, got {self.names()}"
        return found[0]


def decode_output(chunks: Iterable[bytes], frame_max: int = 1 << 20) -> ServerOutput:
    data = b"".join(chunks)
    out = ServerOutput()
    if data.startswith(PROTOCOL_HEADER):
        out.protocol_header = True
        data = data[len(PROTOCOL_HEADER) :]
    frames = FrameBuffer(frame_max)
    pending: dict[int, Command] = {}
    remaining: dict[int, int] = {}
    for frame_type, channel, payload in frames.feed(data):
        if frame_type == spec.FRAME_METHOD:
            assert channel not in pending, f"method frame in the middle of content on channel {channel}"
            method = spec.decode_method(payload)
            command = Command(channel, method)
            if method.CONTENT:
                pending[channel] = command
            else:
                out.append(command)
        elif frame_type == spec.FRAME_HEADER:
            command = pending[channel]
            _class_id, _weight, size = CONTENT_HEADER.unpack_from(payload, 0)
            command.properties = payload[12:]
            command.body = b""
            remaining[channel] = size
            if size == 0:
                out.append(pending.pop(channel))
        elif frame_type == spec.FRAME_BODY:
            assert channel in pending, f"body frame without content in progress on channel {channel}"
            command = pending[channel]
            assert command.body is not None
            command.body += payload
            remaining[channel] -= len(payload)
            assert remaining[channel] >= 0, "server sent more body than announced"
            if remaining[channel] == 0:
                out.append(pending.pop(channel))
        elif frame_type == spec.FRAME_HEARTBEAT:
            out.append(Command(channel, None))
        else:  # pragma: no cover
            raise AssertionError(f"unknown frame type {frame_type}")
    assert not pending, "server left content half sent"
    assert len(frames) == 0, "server output ends with a partial frame"
    return out


# -- the pair ----------------------------------------------------------------------------------


def authenticate(mechanism: str, response: bytes) -> str | None:
    return "guest" if mechanism == "PLAIN" and response == PLAIN_GUEST else None


class ServerPair:
    """A server ``Connection`` and its handler, driven with client bytes; no socket, no loop.

    ``after_input`` is run after each input, as the glue runs ``session.flush_confirms``;
    ``pending`` holds the callbacks queues scheduled (the event loop's ``call_soon``), and
    ``send`` runs them before collecting output unless ``run_scheduled=False``.
    """

    def __init__(
        self,
        handler: Any,
        *,
        pending: list[Callable[[], None]] | None = None,
        after_input: Callable[[], None] | None = None,
        vhosts: Iterable[str] = ("/",),
        **conn_kwargs: Any,
    ) -> None:
        known = set(vhosts)
        self.conn = Connection(
            handler,
            server_properties=SERVER_PROPERTIES,
            authenticate=authenticate,
            check_vhost=lambda user, vhost: None if vhost in known else f"vhost {vhost} not found",
            **conn_kwargs,
        )
        self.pending = pending if pending is not None else []
        self.after_input = after_input

    def run_scheduled(self) -> int:
        ran = 0
        while self.pending:
            self.pending.pop(0)()
            ran += 1
        return ran

    def output(self) -> ServerOutput:
        return decode_output(self.conn.data_to_send())

    def send(self, *chunks: bytes, run_scheduled: bool = True) -> ServerOutput:
        for chunk in chunks:
            self.conn.receive_data(chunk)
        if self.after_input is not None:
            self.after_input()
        if run_scheduled:
            self.run_scheduled()
        return self.output()

    def call(self, channel: int, method: spec.Method, **kwargs: Any) -> ServerOutput:
        return self.send(method_frame(channel, method), **kwargs)

    def handshake(self, *, heartbeat: int = 0, frame_max: int = 131072, vhost: str = "/") -> ServerOutput:
        out = self.send(PROTOCOL_HEADER)
        assert out.names() == ["connection.start"], out.names()
        out = self.call(0, spec.ConnectionStartOk(
            client_properties={"product": "test", "capabilities": {"consumer_cancel_notify": True}},
            mechanism="PLAIN", response=PLAIN_GUEST, locale="en_US",
        ))
        assert out.names() == ["connection.tune"], out.names()
        out = self.call(0, spec.ConnectionTuneOk(channel_max=2047, frame_max=frame_max, heartbeat=heartbeat))
        assert out == [], out.names()
        return self.call(0, spec.ConnectionOpen(virtual_host=vhost))

    def open_channel(self, channel: int = 1) -> ServerOutput:
        out = self.call(channel, spec.ChannelOpen())
        assert out.names() == ["channel.open-ok"], out.names()
        return out


class StandInBroker:
    """What ``Session`` needs from ``conveyor.app.Broker``: one vhost on a manual clock, with the
    event loop's call_soon as the list ``pending``. Extra keywords go to the VirtualHost."""

    def __init__(self, consumer_timeout: int | None = None, **vhost_kwargs: Any) -> None:
        self.pending: list[Callable[[], None]] = []
        self.clock = ManualClock()
        self.consumer_timeout = consumer_timeout  # ms, as the broker's setting
        self.vhosts = {"/": VirtualHost("/", schedule=self.pending.append, clock=self.clock, **vhost_kwargs)}

    @property
    def vhost(self) -> VirtualHost:
        return self.vhosts["/"]


class SessionClient(ServerPair):
    """A client talking to a real Session over the sans-IO connection."""

    session: Session

    def advance(self, seconds: float) -> ServerOutput:
        """Move the broker's clock, run what fell due, and return what the server sent."""
        self.session.broker.clock.advance(seconds)
        self.run_scheduled()
        return self.output()


def connect_session(broker: StandInBroker) -> SessionClient:
    """A handshaken client with channel 1 open."""
    session = Session(broker)
    client = SessionClient(session, pending=broker.pending, after_input=session.flush_confirms, vhosts=broker.vhosts)
    session.conn = client.conn
    client.session = session
    assert client.handshake().names() == ["connection.open-ok"]
    client.open_channel(1)
    return client
