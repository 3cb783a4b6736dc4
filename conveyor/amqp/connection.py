"""The AMQP 0-9-1 connection as a sans-IO state machine.

Bytes go in through ``receive_data``; bytes to write come out of ``data_to_send``; time comes in
through ``tick``. Nothing here touches a socket, a clock or the event loop, so every rule below is
unit-testable by feeding bytes.

Theory of operation
-------------------
Connection states, in order::

    AWAIT_HEADER --header ok--> START_SENT --start-ok--> TUNE_SENT --tune-ok--> TUNED
        --connection.open--> OPEN --(either side) close--> CLOSING --close-ok--> CLOSED

A wrong protocol header is answered with our header and the connection ends (the spec's rule).
In OPEN, frames for channel 0 are connection methods handled here; frames for other channels go
through the channel's content assembler (method -> header -> body*) and complete commands are
handed to the ``handler`` (the session), which implements channel-level semantics.

Errors have one path: anything raised while handling a frame reaches ``fail``, which maps it
(``errors.reply_for``) to a channel close (soft error on a channel) or a connection close (hard
error, or any error on channel 0). After we send Channel.Close, that channel's frames are dropped
until Close-Ok; after Connection.Close everything but Close/Close-Ok is dropped.

Heartbeats: the glue calls ``tick()`` every half interval. A tick with nothing sent since the last
one emits a heartbeat frame; four ticks (two intervals) with nothing received mark the peer dead.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, Protocol

from conveyor.amqp import spec
from conveyor.amqp.errors import HardError, reply_for, reply_text
from conveyor.amqp.framing import FRAME_PUBLISH, HEARTBEAT_FRAME, PROTOCOL_HEADER, FrameBuffer, encode_frame
from conveyor.amqp.values import DecodeError

log = logging.getLogger("conveyor.amqp")

AWAIT_HEADER, START_SENT, TUNE_SENT, TUNED, OPEN, CLOSING, CLOSED = range(7)

_CONTENT_HEADER = struct.Struct("!HHQ")
_HEADER_FRAME_HEAD = struct.Struct("!BHIHHQ")  # a content header frame up to its properties
_END_AND_BODY_HEAD = struct.Struct("!BBHI")  # the end octet of one frame and the head of a body frame
_FRAME_HEADER = struct.Struct("!BHI")
_FRAME_END = b"\xce"
_PUBLISH_CACHE_SIZE = 256  # distinct basic.publish method frames remembered per connection
_KNOWN_FRAME_TYPES = frozenset({spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY, spec.FRAME_HEARTBEAT})


class Handler(Protocol):
    """What the connection needs from the session above it."""

    def connection_opened(self, vhost: str, user: str) -> None: ...
    def channel_opened(self, channel: int) -> None: ...
    def channel_closed(self, channel: int) -> None: ...
    def connection_closing(self) -> None: ...
    def method(self, channel: int, method: spec.Method) -> None: ...
    def content(self, channel: int, method: spec.Method, properties: bytes, body: bytes) -> None: ...


class Authenticator(Protocol):
    def __call__(self, mechanism: str, response: bytes) -> str | None:
        """The user name if the credentials are valid, else None."""
        ...


class _Channel:
    """Per-channel framing state: open/closing, and the content being assembled."""

    __slots__ = ("body_parts", "body_received", "body_size", "closing", "method", "properties")

    def __init__(self) -> None:
        self.closing = False
        self.method: spec.Method | None = None  # a content-bearing method awaiting its content
        self.properties: bytes | None = None
        self.body_size = 0
        self.body_received = 0
        self.body_parts: list[bytes] = []


class Connection:
    """Sans-IO AMQP 0-9-1 server connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        server_properties: dict[str, Any],
        authenticate: Authenticator,
        check_vhost: Callable[[str, str], str | None],
        heartbeat: int = 60,
        frame_max: int = 131072,
        channel_max: int = 2047,
        on_output: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.state = AWAIT_HEADER
        self.server_properties = server_properties
        self.client_properties: dict[str, Any] = {}
        self.authenticate = authenticate
        self.check_vhost = check_vhost  # (user, vhost) -> why access is refused, or None
        self.heartbeat = heartbeat
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.user = ""
        self.vhost = ""
        self.close_reason: str = ""
        self.peer_closes_socket = False
        self.channels: dict[int, _Channel] = {}
        self._frames = FrameBuffer(max(frame_max, spec.FRAME_MIN_SIZE))
        self._header = b""
        self._out: list[bytes] = []
        self._on_output = on_output
        self._received = False
        self._sent = False
        self._idle_ticks = 0
        self._current: spec.Method | None = None  # the method being handled, for close replies
        self._publishes: dict[bytes, spec.Method] = {}  # basic.publish payload -> its decoded method
        self._lane_method: spec.Method | None = None  # the publish the frame buffer's lane recognises
        self._lane_channel = 0

    # -- output --------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self._out and self._on_output is not None:
            self._on_output()
        self._out.append(data)

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        if out:
            self._sent = True
        return out

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def capabilities(self) -> dict[str, Any]:
        return self.client_properties.get("capabilities") or {}

    def send_method(self, channel: int, method: spec.Method) -> None:
        self._write(encode_frame(spec.FRAME_METHOD, channel, method.encode()))

    def send_content(self, channel: int, method: spec.Method, properties: bytes, body: bytes) -> None:
        """A content-bearing method with its header and body frames, split at frame_max."""
        payload = method.encode()
        head = _FRAME_HEADER.pack(spec.FRAME_METHOD, channel, len(payload))
        self._write(head + payload + _FRAME_END + self._content(channel, properties, body))

    def send_delivery(
        self, channel: int, prefix: bytes, tag_and_flag: bytes, suffix: bytes, properties: bytes, body: bytes
    ) -> None:
        """A basic.deliver whose method frame the consumer has mostly pre-encoded (see
        ``channel.AMQPConsumer``): ``prefix`` is the frame head up to the consumer tag, ``suffix``
        the exchange and routing key with the frame end. The hot path of every delivery."""
        size = len(body)
        if not size or size > self.frame_max - 8:  # no body frame at all, or several
            self._write(prefix + tag_and_flag + suffix + self._content(channel, properties, body))
            return
        self._write(
            b"".join(
                (
                    prefix,
                    tag_and_flag,
                    suffix,
                    _HEADER_FRAME_HEAD.pack(spec.FRAME_HEADER, channel, 12 + len(properties), 60, 0, size),
                    properties,
                    _END_AND_BODY_HEAD.pack(0xCE, spec.FRAME_BODY, channel, size),
                    body,
                    _FRAME_END,
                )
            )
        )

    def _content(self, channel: int, properties: bytes, body: bytes) -> bytes:
        """The content header frame and the body frames, split at frame_max."""
        parts = [
            _FRAME_HEADER.pack(spec.FRAME_HEADER, channel, 12 + len(properties)),
            _CONTENT_HEADER.pack(60, 0, len(body)),
            properties,
            _FRAME_END,
        ]
        chunk = self.frame_max - 8
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            parts.append(_FRAME_HEADER.pack(spec.FRAME_BODY, channel, len(piece)))
            parts.append(piece)
            parts.append(_FRAME_END)
        return b"".join(parts)

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Process bytes from the peer; never raises for anything the peer sent."""
        if self.state == CLOSED or not data:
            return
        self._received = True
        if self.state == AWAIT_HEADER:
            self._header += data
            if len(self._header) < 8:
                if not PROTOCOL_HEADER.startswith(self._header):
                    self._refuse_header()
                return
            header, data = self._header[:8], self._header[8:]
            if header != PROTOCOL_HEADER:
                self._refuse_header()
                return
            self._send_start()
            if not data:
                return
        self._receive_frames(self._frames.feed(data))
        error = self._frames.error
        if error is not None and self.state not in (CLOSING, CLOSED):
            self._close_connection(error.reply_code, reply_text(error.reply_code, error.reply_text), 0, 0)

    def _receive_frames(self, frames: list[tuple[int, int, Any]]) -> None:
        channels = self.channels
        publishes = self._publishes
        handler = self.handler
        for frame_type, channel, payload in frames:
            if frame_type == FRAME_PUBLISH:  # a whole publish from the frame buffer's lane
                state = channels.get(channel)
                if self.state == OPEN and state is not None and not state.closing and state.method is None:
                    (method, _), properties, body = payload
                    self._current = method
                    try:
                        handler.content(channel, method, properties, body)
                    except Exception as exc:  # the one mapping point
                        self.fail(channel, exc)
                else:  # not the moment for a publish: the three frames, one by one
                    (_, method_payload), properties, body = payload
                    header = _CONTENT_HEADER.pack(60, 0, len(body)) + properties
                    self._receive_frames(
                        [
                            (spec.FRAME_METHOD, channel, method_payload),
                            (spec.FRAME_HEADER, channel, header),
                            (spec.FRAME_BODY, channel, body),
                        ]
                    )
                continue
            if self.state != OPEN:
                if self.state == CLOSED:
                    return
                self._current = None
                try:
                    self._frame(frame_type, channel, payload)
                except Exception as exc:  # the one mapping point
                    self.fail(channel, exc)
                continue
            # Publishes outside the lane (its first, a chunk boundary, another routing key): a method
            # frame seen before on this connection skips the decode. Anything else takes the general route.
            state = channels.get(channel) if channel else None
            try:
                if frame_type == spec.FRAME_METHOD and state is not None and not state.closing and state.method is None:
                    method = publishes.get(payload)
                    if method is not None:
                        self._current = state.method = method
                        if method is not self._lane_method or channel != self._lane_channel:
                            self._set_publish_lane(channel, payload, method)
                        continue
                self._current = None
                self._frame(frame_type, channel, payload)
            except Exception as exc:  # the one mapping point
                self.fail(channel, exc)

    def _set_publish_lane(self, channel: int, payload: bytes, method: spec.Method) -> None:
        """Let the frame buffer hand over the next publishes of this method frame whole (framing.py)."""
        self._lane_method, self._lane_channel = method, channel
        self._frames.publish_lane = (encode_frame(spec.FRAME_METHOD, channel, payload), (method, payload))

    def _refuse_header(self) -> None:
        self._write(PROTOCOL_HEADER)
        self.close_reason = "bad protocol header"
        self.state = CLOSED

    def _send_start(self) -> None:
        self.state = START_SENT
        self.send_method(
            0,
            spec.ConnectionStart(
                server_properties=self.server_properties, mechanisms=b"PLAIN AMQPLAIN", locales=b"en_US"
            ),
        )

    def _frame(self, frame_type: int, channel: int, payload: bytes) -> None:
        # Reply texts below are RabbitMQ's, Erlang-isms included, since clients and tests match them.
        if frame_type == spec.FRAME_HEARTBEAT:
            if channel != 0:
                raise HardError(spec.UNEXPECTED_FRAME, "type 8, all octets = <<>>")
            return
        if frame_type not in _KNOWN_FRAME_TYPES:
            raise HardError(spec.FRAME_ERROR, f"type {frame_type}, all octets = <<>>: unknown_frame")
        if channel == 0:
            if frame_type != spec.FRAME_METHOD:
                raise HardError(spec.UNEXPECTED_FRAME, "expected method frame, got non method frame instead")
            method = _decode(payload)
            self._current = method
            if method.CLASS_ID != spec.ConnectionStart.CLASS_ID and self.state == OPEN:
                raise HardError(spec.CHANNEL_ERROR, "unexpected method in connection state running")
            self._connection_method(method)
            return
        if self.state != OPEN:
            if self.state == CLOSING:
                return
            raise HardError(spec.COMMAND_INVALID, "channel frame before connection.open")
        state = self.channels.get(channel)
        if state is None:
            if frame_type == spec.FRAME_METHOD:
                method = _decode(payload)
                self._current = method
                if isinstance(method, spec.ChannelOpen):
                    self._open_channel(channel)
                    return
                if isinstance(method, spec.ChannelCloseOk):
                    return  # a late close-ok for a channel already gone
            raise HardError(spec.CHANNEL_ERROR, "expected 'channel.open'")
        if state.closing:
            if frame_type == spec.FRAME_METHOD:
                method = _decode(payload)
                if isinstance(method, spec.ChannelCloseOk):
                    del self.channels[channel]
                elif isinstance(method, spec.ChannelClose):
                    self.send_method(channel, spec.ChannelCloseOk())
            return
        if state.method is not None:
            self._content_frame(channel, state, frame_type, payload)
            return
        if frame_type != spec.FRAME_METHOD:
            raise HardError(spec.UNEXPECTED_FRAME, "expected method frame, got non method frame instead")
        method = _decode(payload)
        self._current = method
        if method.CONTENT:
            state.method = method
            if type(method) is spec.BasicPublish:
                # Publishers repeat the same few exchange/routing-key pairs: decode each once, and
                # share one method object (and its routing-key string) among their messages.
                if len(self._publishes) >= _PUBLISH_CACHE_SIZE:
                    self._publishes.clear()
                self._publishes[payload] = method
                self._set_publish_lane(channel, payload, method)
            return
        if isinstance(method, spec.ChannelClose):
            del self.channels[channel]
            self.handler.channel_closed(channel)
            self.send_method(channel, spec.ChannelCloseOk())
            return
        if isinstance(method, spec.ChannelCloseOk):
            return  # close-ok without our close: ignore, as RabbitMQ does
        if isinstance(method, spec.ChannelOpen):
            raise HardError(spec.CHANNEL_ERROR, "second 'channel.open' seen")
        self.handler.method(channel, method)

    def _content_frame(self, channel: int, state: _Channel, frame_type: int, payload: bytes) -> None:
        method = state.method
        assert method is not None
        if state.properties is None:
            if frame_type != spec.FRAME_HEADER:
                raise HardError(
                    spec.UNEXPECTED_FRAME,
                    f"expected content header for class {method.CLASS_ID}, got non content header frame instead",
                )
            try:
                class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(payload, 0)
            except struct.error as exc:
                raise HardError(spec.FRAME_ERROR, "content header frame too short") from exc
            if class_id != method.CLASS_ID:
                raise HardError(
                    spec.UNEXPECTED_FRAME,
                    f"expected content header for class {method.CLASS_ID}, got one for class {class_id} instead",
                )
            state.properties = payload[12:]
            state.body_size = body_size
            state.body_received = 0
            if body_size == 0:
                self._complete_content(channel, state)
            return
        if frame_type != spec.FRAME_BODY:
            raise HardError(
                spec.UNEXPECTED_FRAME,
                "expected content body, got non content body frame instead",
            )
        state.body_parts.append(payload)
        state.body_received += len(payload)
        if state.body_received >= state.body_size:
            if state.body_received > state.body_size:
                raise HardError(spec.FRAME_ERROR, "content body larger than its header announced")
            self._complete_content(channel, state)

    def _complete_content(self, channel: int, state: _Channel) -> None:
        method, properties, parts = state.method, state.properties, state.body_parts
        state.method = None
        state.properties = None
        state.body_parts = []
        self._current = method
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        assert method is not None and properties is not None
        self.handler.content(channel, method, properties, body)

    def _open_channel(self, channel: int) -> None:
        # RabbitMQ limits how many channels are open at once, not the channel ids used.
        if self.channel_max and len(self.channels) >= self.channel_max:
            raise HardError(
                spec.NOT_ALLOWED,
                f"number of channels opened ({len(self.channels)}) has reached the negotiated "
                f"channel_max ({self.channel_max})",
            )
        self.channels[channel] = _Channel()
        self.handler.channel_opened(channel)
        self.send_method(channel, spec.ChannelOpenOk())

    # -- connection class ----------------------------------------------------------------------

    def _connection_method(self, method: spec.Method) -> None:
        state = self.state
        if state == CLOSING:
            if isinstance(method, spec.ConnectionCloseOk):
                self.state = CLOSED
            elif isinstance(method, spec.ConnectionClose):
                self.send_method(0, spec.ConnectionCloseOk())
            return
        if isinstance(method, spec.ConnectionClose):
            self.close_reason = f"client closed: {method.reply_code} {method.reply_text}".strip()
            self._drop_channels()
            self.send_method(0, spec.ConnectionCloseOk())
            self.state = CLOSED
            self.peer_closes_socket = True  # as RabbitMQ: the client, having close-ok, closes the TCP socket
            return
        if state == START_SENT and isinstance(method, spec.ConnectionStartOk):
            self._start_ok(method)
        elif state == TUNE_SENT and isinstance(method, spec.ConnectionTuneOk):
            self._tune_ok(method)
        elif state == TUNED and isinstance(method, spec.ConnectionOpen):
            refused = self.check_vhost(self.user, method.virtual_host)
            if refused is not None:
                raise HardError(spec.NOT_ALLOWED, refused)
            self.vhost = method.virtual_host
            self.state = OPEN
            self.handler.connection_opened(self.vhost, self.user)
            self.send_method(0, spec.ConnectionOpenOk())
        elif state == OPEN and isinstance(method, spec.ConnectionUpdateSecret):
            self.send_method(0, spec.ConnectionUpdateSecretOk())
        elif isinstance(method, spec.ConnectionCloseOk):
            return
        else:
            raise HardError(spec.COMMAND_INVALID, f"unexpected method {method.NAME} on channel 0")

    def _start_ok(self, method: spec.ConnectionStartOk) -> None:
        self.client_properties = method.client_properties or {}
        mechanism = method.mechanism
        if mechanism not in ("PLAIN", "AMQPLAIN"):
            raise HardError(spec.ACCESS_REFUSED, f"unsupported authentication mechanism '{mechanism}'")
        user = self.authenticate(mechanism, method.response)
        if user is None:
            raise HardError(
                spec.ACCESS_REFUSED,
                f"Login was refused using authentication mechanism {mechanism}. "
                "For details see the broker logfile.",
            )
        self.user = user
        self.state = TUNE_SENT
        self.send_method(
            0, spec.ConnectionTune(channel_max=self.channel_max, frame_max=self.frame_max, heartbeat=self.heartbeat)
        )

    def _tune_ok(self, method: spec.ConnectionTuneOk) -> None:
        if method.frame_max and method.frame_max < spec.FRAME_MIN_SIZE:
            raise HardError(
                spec.NOT_ALLOWED, f"frame_max={method.frame_max} < {spec.FRAME_MIN_SIZE} min size"
            )
        if method.frame_max > self.frame_max:
            raise HardError(spec.NOT_ALLOWED, f"frame_max={method.frame_max} > {self.frame_max} max size")
        if method.channel_max > self.channel_max:
            raise HardError(
                spec.NOT_ALLOWED, f"channel_max={method.channel_max} > {self.channel_max} max size"
            )
        if method.frame_max:
            self.frame_max = method.frame_max
            self._frames.frame_max = method.frame_max
        if method.channel_max:
            self.channel_max = method.channel_max
        self.heartbeat = method.heartbeat
        self.state = TUNED

    # -- errors and closing --------------------------------------------------------------------

    def fail(self, channel: int, exc: BaseException) -> None:
        """Turn an exception raised while handling ``channel``'s frame into the right close."""
        if self.state in (CLOSING, CLOSED):
            return
        reply = reply_for(exc)
        if reply is None:
            log.exception("internal error on channel %d", channel, exc_info=exc)
            code, text, hard = spec.INTERNAL_ERROR, reply_text(spec.INTERNAL_ERROR, str(exc) or repr(exc)), True
        else:
            code, text, hard = reply
        current = self._current
        class_id = current.CLASS_ID if current is not None else 0
        method_id = current.METHOD_ID if current is not None else 0
        if hard or channel == 0 or self.state != OPEN:
            self._close_connection(code, text, class_id, method_id)
        else:
            self.close_channel(channel, code, text, class_id, method_id)

    def close_channel(self, channel: int, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        """Server-initiated channel close; the session forgets the channel at once."""
        state = self.channels.get(channel)
        if state is None or state.closing:
            return
        state.closing = True
        state.method = None
        state.body_parts = []
        self.handler.channel_closed(channel)
        self.send_method(
            channel, spec.ChannelClose(reply_code=code, reply_text=text, class_id=class_id, method_id=method_id)
        )

    def _close_connection(self, code: int, text: str, class_id: int, method_id: int) -> None:
        self.close_reason = text
        log.warning("closing connection: %s", text)
        if self.state in (AWAIT_HEADER, CLOSED):
            self.state = CLOSED
            return
        self._drop_channels()
        self.send_method(
            0, spec.ConnectionClose(reply_code=code, reply_text=text, class_id=class_id, method_id=method_id)
        )
        self.state = CLOSING

    def _drop_channels(self) -> None:
        """The connection is closing: every channel ends now, so no delivery goes out to a client
        that would discard it (its unacked messages are requeued at once, not when the socket drops).
        Then the connection's exclusive queues go, before close-ok (or our close) is sent, as RabbitMQ
        does: a client may reconnect and redeclare them as soon as it reads close-ok, while its old
        socket is still open."""
        channels = list(self.channels)
        self.channels.clear()
        for channel in channels:
            self.handler.channel_closed(channel)
        self.handler.connection_closing()

    def close(self, code: int = spec.CONNECTION_FORCED, text: str = "broker forced connection closure") -> None:
        """Server-initiated close, e.g. at shutdown."""
        if self.state not in (CLOSING, CLOSED):
            self._close_connection(code, reply_text(code, text), 0, 0)

    # -- time ----------------------------------------------------------------------------------

    def tick(self) -> bool:
        """Called every heartbeat/2 seconds. Returns False when the peer is to be considered dead."""
        if self._received:
            self._received = False
            self._idle_ticks = 0
        else:
            self._idle_ticks += 1
            if self._idle_ticks >= 4 and self.heartbeat:
                self.close_reason = f"missed heartbeats from client, timeout: {self.heartbeat}s"
                self.state = CLOSED
                return False
        if not self._sent and self.state in (OPEN, TUNED) and self.heartbeat:
            self._write(HEARTBEAT_FRAME)
        self._sent = False
        return True


def _decode(payload: bytes) -> spec.Method:
    try:
        return spec.decode_method(payload)
    except DecodeError as exc:
        raise HardError(spec.SYNTAX_ERROR, str(exc)) from exc
