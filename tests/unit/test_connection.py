"""The sans-IO Connection: handshake, channels, content assembly, errors, close handshakes, heartbeats."""

from __future__ import annotations

from typing import Any

import pytest
from amqp_client import (
    PLAIN_GUEST,
    ServerPair,
    body_frame,
    decode_output,
    header_frame,
    method_frame,
    publish,
)

from conveyor.amqp import spec
from conveyor.amqp.connection import CLOSING, OPEN, START_SENT, TUNED
from conveyor.amqp.errors import HardError, SoftError
from conveyor.amqp.framing import HEARTBEAT_FRAME, PROTOCOL_HEADER, FrameBuffer, encode_frame
from conveyor.core.errors import NotFound


class RecordingHandler:
    """Stand-in session: records every callback; ``fail_with`` makes the next method/content raise."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.fail_with: BaseException | None = None
        self.closing_calls = 0

    def _maybe_fail(self) -> None:
        exc, self.fail_with = self.fail_with, None
        if exc is not None:
            raise exc

    def connection_opened(self, vhost: str, user: str) -> None:
        self.events.append(("opened", vhost, user))

    def channel_opened(self, channel: int) -> None:
        self.events.append(("channel_opened", channel))

    def channel_closed(self, channel: int) -> None:
        self.events.append(("channel_closed", channel))

    def connection_closing(self) -> None:
        self.closing_calls += 1

    def method(self, channel: int, method: spec.Method) -> None:
        self.events.append(("method", channel, method))
        self._maybe_fail()

    def content(self, channel: int, method: spec.Method, properties: bytes, body: bytes) -> None:
        self.events.append(("content", channel, method, bytes(properties), bytes(body)))
        self._maybe_fail()


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def pair(handler: RecordingHandler) -> ServerPair:
    return ServerPair(handler)


@pytest.fixture
def opened(pair: ServerPair, handler: RecordingHandler) -> ServerPair:
    """Handshake done and channel 1 open; handler events cleared."""
    pair.handshake()
    pair.open_channel(1)
    handler.events.clear()
    return pair


def start_ok(response: bytes = PLAIN_GUEST, mechanism: str = "PLAIN") -> bytes:
    return method_frame(0, spec.ConnectionStartOk({"product": "t"}, mechanism, response, "en_US"))


# -- handshake -----------------------------------------------------------------------------------------


def test_handshake(pair: ServerPair, handler: RecordingHandler) -> None:
    out = pair.send(PROTOCOL_HEADER)
    start = out.only(spec.ConnectionStart)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert b"PLAIN" in start.mechanisms.split()
    assert start.server_properties["capabilities"]["publisher_confirms"] is True
    assert out[0].channel == 0
    assert pair.conn.state == START_SENT

    tune = pair.send(start_ok()).only(spec.ConnectionTune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131072, 60)
    assert pair.conn.user == "guest"

    assert pair.call(0, spec.ConnectionTuneOk(2047, 131072, 60)) == []
    assert pair.conn.state == TUNED
    assert pair.conn.heartbeat == 60

    out = pair.call(0, spec.ConnectionOpen(virtual_host="/"))
    assert out.names() == ["connection.open-ok"]
    assert pair.conn.state == OPEN
    assert handler.events == [("opened", "/", "guest")]
    assert pair.conn.client_properties == {"product": "t"}


def test_protocol_header_one_byte_at_a_time(pair: ServerPair) -> None:
    for i in range(len(PROTOCOL_HEADER) - 1):
        assert pair.send(PROTOCOL_HEADER[i : i + 1]) == []
    assert pair.send(PROTOCOL_HEADER[-1:]).names() == ["connection.start"]


def test_whole_handshake_split_at_every_offset() -> None:
    stream = b"".join([
        PROTOCOL_HEADER,
        start_ok(),
        method_frame(0, spec.ConnectionTuneOk(2047, 131072, 0)),
        method_frame(0, spec.ConnectionOpen("/")),
        method_frame(1, spec.ChannelOpen()),
    ])
    for cut in range(len(stream) + 1):
        handler = RecordingHandler()
        pair = ServerPair(handler)
        out = pair.send(stream[:cut], stream[cut:])
        assert out.names() == [
            "connection.start", "connection.tune", "connection.open-ok", "channel.open-ok"
        ], cut
        assert handler.events == [("opened", "/", "guest"), ("channel_opened", 1)]


@pytest.mark.parametrize(
    "header",
    [b"AMQP\x00\x00\x09\x00", b"AMQP\x01\x01\x00\x09", b"AMQP\x00\x00\x08\x00", b"GET / HTTP/1.1\r\n", b"XYZ"],
)
def test_wrong_protocol_header_is_answered_with_ours_and_closed(pair: ServerPair, header: bytes) -> None:
    out = pair.send(header)
    assert out.protocol_header
    assert out == []
    assert pair.conn.closed
    assert pair.send(PROTOCOL_HEADER) == []  # nothing more once closed


def test_bad_credentials_close_with_access_refused(pair: ServerPair, handler: RecordingHandler) -> None:
    pair.send(PROTOCOL_HEADER)
    close = pair.send(start_ok(b"\x00guest\x00wrong")).only(spec.ConnectionClose)
    assert close.reply_code == spec.ACCESS_REFUSED == 403
    assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN")
    assert (close.class_id, close.method_id) == (10, 11)
    assert pair.conn.state == CLOSING
    assert handler.events == []
    assert pair.call(0, spec.ConnectionCloseOk()) == []
    assert pair.conn.closed


def test_unsupported_mechanism_is_refused(pair: ServerPair) -> None:
    pair.send(PROTOCOL_HEADER)
    close = pair.send(start_ok(mechanism="EXTERNAL")).only(spec.ConnectionClose)
    assert close.reply_code == 403


def test_unknown_vhost_is_not_allowed(pair: ServerPair) -> None:
    pair.send(PROTOCOL_HEADER, start_ok(), method_frame(0, spec.ConnectionTuneOk(0, 0, 0)))
    close = pair.call(0, spec.ConnectionOpen("nope")).only(spec.ConnectionClose)
    assert close.reply_code == spec.NOT_ALLOWED


def test_tune_ok_frame_max_below_minimum_is_refused(pair: ServerPair) -> None:
    pair.send(PROTOCOL_HEADER, start_ok())
    close = pair.call(0, spec.ConnectionTuneOk(0, 4096, 0)).only(spec.ConnectionClose)
    assert close.reply_code == spec.NOT_ALLOWED


def test_method_out_of_handshake_order_is_command_invalid(pair: ServerPair) -> None:
    pair.send(PROTOCOL_HEADER)
    close = pair.call(0, spec.ConnectionOpen("/")).only(spec.ConnectionClose)
    assert close.reply_code == spec.COMMAND_INVALID


def test_channel_frame_before_open_is_refused(pair: ServerPair) -> None:
    pair.send(PROTOCOL_HEADER, start_ok())
    close = pair.call(1, spec.ChannelOpen()).only(spec.ConnectionClose)
    assert close.reply_code == spec.COMMAND_INVALID


# -- channels -----------------------------------------------------------------------------------------


def test_frame_for_unopened_channel_closes_connection_504(opened: ServerPair, handler: RecordingHandler) -> None:
    close = opened.call(7, spec.BasicQos(prefetch_count=1)).only(spec.ConnectionClose)
    assert close.reply_code == spec.CHANNEL_ERROR == 504
    assert close.reply_text == "CHANNEL_ERROR - expected 'channel.open'"
    assert handler.events == [("channel_closed", 1)]  # closing the connection ends its channels


def test_body_frame_for_unopened_channel_closes_connection_504(opened: ServerPair) -> None:
    close = opened.send(body_frame(9, b"x")).only(spec.ConnectionClose)
    assert close.reply_code == 504


def test_second_channel_open_is_a_channel_error(opened: ServerPair) -> None:
    close = opened.call(1, spec.ChannelOpen()).only(spec.ConnectionClose)
    assert close.reply_code == 504


def test_more_open_channels_than_channel_max_is_not_allowed(pair: ServerPair) -> None:
    pair.send(PROTOCOL_HEADER, start_ok(), method_frame(0, spec.ConnectionTuneOk(2, 131072, 0)))
    pair.call(0, spec.ConnectionOpen("/"))
    pair.open_channel(1)
    pair.open_channel(60000)  # RabbitMQ limits how many are open, not the ids
    close = pair.call(3, spec.ChannelOpen()).only(spec.ConnectionClose)
    assert close.reply_code == spec.NOT_ALLOWED


def test_methods_go_to_the_handler(opened: ServerPair, handler: RecordingHandler) -> None:
    assert opened.call(1, spec.BasicQos(prefetch_count=5)) == []
    assert handler.events == [("method", 1, spec.BasicQos(prefetch_count=5))]


def test_client_channel_close(opened: ServerPair, handler: RecordingHandler) -> None:
    out = opened.call(1, spec.ChannelClose(200, "bye", 0, 0))
    assert out.names() == ["channel.close-ok"]
    assert out[0].channel == 1
    assert handler.events == [("channel_closed", 1)]
    assert 1 not in opened.conn.channels
    assert opened.open_channel(1)  # the id can be reused


# -- content assembly ------------------------------------------------------------------------------------


def test_content_split_over_several_body_frames(opened: ServerPair, handler: RecordingHandler) -> None:
    props = spec.BasicProperties(content_type="text/plain", delivery_mode=2)
    frames = publish(1, "ex", "rk", b"abcdefghij", props, chunks=[3, 4, 3])
    assert opened.send(frames) == []
    assert handler.events == [
        ("content", 1, spec.BasicPublish(exchange="ex", routing_key="rk"), props.encode(), b"abcdefghij")
    ]


def test_content_fed_one_byte_at_a_time(opened: ServerPair, handler: RecordingHandler) -> None:
    frames = publish(1, "", "q", b"0123456789" * 5, chunks=[1, 20, 29]) + publish(1, "", "q2", b"z")
    for i in range(len(frames)):
        opened.conn.receive_data(frames[i : i + 1])
    assert [(e[0], e[2].routing_key, e[4]) for e in handler.events] == [
        ("content", "q", b"0123456789" * 5),
        ("content", "q2", b"z"),
    ]
    assert opened.output() == []


def test_zero_size_body_completes_at_the_header(opened: ServerPair, handler: RecordingHandler) -> None:
    opened.send(publish(1, "", "q", b""))
    assert handler.events == [("content", 1, spec.BasicPublish(routing_key="q"), b"\x00\x00", b"")]
    opened.call(1, spec.BasicQos())  # the channel is back to expecting methods
    assert handler.events[-1][0] == "method"


def test_contents_on_two_channels_interleave(opened: ServerPair, handler: RecordingHandler) -> None:
    opened.open_channel(2)
    handler.events.clear()
    opened.send(
        method_frame(1, spec.BasicPublish(routing_key="a")),
        method_frame(2, spec.BasicPublish(routing_key="b")),
        header_frame(2, 2),
        header_frame(1, 1),
        body_frame(1, b"1"),
        body_frame(2, b"2"),
        body_frame(2, b"2"),
    )
    assert [(e[1], e[4]) for e in handler.events] == [(1, b"1"), (2, b"22")]


@pytest.mark.parametrize(
    "intruder",
    [
        method_frame(1, spec.BasicQos()),  # method where a header is due
        body_frame(1, b"x"),  # body where a header is due
    ],
)
def test_unexpected_frame_instead_of_header_is_505(opened: ServerPair, intruder: bytes) -> None:
    close = opened.send(method_frame(1, spec.BasicPublish()), intruder).only(spec.ConnectionClose)
    assert close.reply_code == spec.UNEXPECTED_FRAME == 505


def test_unexpected_method_in_the_middle_of_the_body_is_505(
    opened: ServerPair, handler: RecordingHandler
) -> None:
    out = opened.send(
        method_frame(1, spec.BasicPublish()),
        header_frame(1, 10),
        body_frame(1, b"abc"),
        method_frame(1, spec.BasicPublish()),
    )
    assert out.only(spec.ConnectionClose).reply_code == 505
    assert handler.events == [("channel_closed", 1)]  # closing the connection ends its channels


def test_header_frame_without_a_method_is_505(opened: ServerPair) -> None:
    close = opened.send(header_frame(1, 3)).only(spec.ConnectionClose)
    assert close.reply_code == 505


def test_header_for_the_wrong_class_is_505(opened: ServerPair) -> None:
    close = opened.send(method_frame(1, spec.BasicPublish()), header_frame(1, 3, class_id=50)).only(
        spec.ConnectionClose
    )
    assert close.reply_code == 505


def test_body_larger_than_announced_is_a_frame_error(opened: ServerPair) -> None:
    close = opened.send(method_frame(1, spec.BasicPublish()), header_frame(1, 2), body_frame(1, b"abc")).only(
        spec.ConnectionClose
    )
    assert close.reply_code == spec.FRAME_ERROR


def test_content_split_at_frame_max_on_output(opened: ServerPair) -> None:
    body = bytes(range(256)) * 1200  # 307200 bytes: three body frames at frame_max 131072
    opened.conn.send_content(1, spec.BasicDeliver("c", 1, False, "", "q"), b"\x00\x00", body)
    raw = b"".join(opened.conn.data_to_send())
    frames = FrameBuffer(131072).feed(raw)
    assert [(t, len(p)) for t, _, p in frames[2:]] == [(3, 131064), (3, 131064), (3, 307200 - 2 * 131064)]
    (delivery,) = decode_output([raw])
    assert delivery.body == body
    assert delivery.method == spec.BasicDeliver("c", 1, False, "", "q")


def test_empty_content_on_output_has_no_body_frame(opened: ServerPair) -> None:
    opened.conn.send_content(1, spec.BasicGetOk(1, False, "", "q", 0), b"\x00\x00", b"")
    raw = b"".join(opened.conn.data_to_send())
    assert [t for t, _, _ in FrameBuffer(131072).feed(raw)] == [1, 2]


# -- errors ---------------------------------------------------------------------------------------------


def test_soft_error_closes_only_the_channel(opened: ServerPair, handler: RecordingHandler) -> None:
    opened.open_channel(2)
    handler.events.clear()
    handler.fail_with = SoftError(spec.NOT_FOUND, "no queue 'q' in vhost '/'")
    out = opened.call(1, spec.QueueDeclare(queue="q", passive=True))
    close = out.only(spec.ChannelClose)
    assert out[0].channel == 1
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no queue 'q' in vhost '/'"
    assert (close.class_id, close.method_id) == (50, 10)
    assert opened.conn.state == OPEN
    assert handler.events[-1] == ("channel_closed", 1)
    handler.events.clear()

    # until close-ok, the channel's frames (methods, content, even a new close) are dropped
    assert opened.call(1, spec.BasicQos()) == []
    assert opened.send(publish(1, "", "q", b"body", chunks=[2, 2])) == []
    assert opened.send(header_frame(1, 5)) == []
    assert handler.events == []

    # other channels are undisturbed
    opened.call(2, spec.BasicQos())
    assert handler.events == [("method", 2, spec.BasicQos())]

    assert opened.call(1, spec.ChannelCloseOk()) == []
    assert 1 not in opened.conn.channels
    opened.open_channel(1)


def test_core_error_maps_to_a_channel_close(opened: ServerPair, handler: RecordingHandler) -> None:
    handler.fail_with = NotFound("no exchange 'x' in vhost '/'")
    close = opened.send(publish(1, "x", "", b"m")).only(spec.ChannelClose)
    assert close.reply_code == 404
    assert close.reply_text == "NOT_FOUND - no exchange 'x' in vhost '/'"
    assert (close.class_id, close.method_id) == (60, 40)


def test_client_close_while_we_wait_for_close_ok_gets_close_ok(opened: ServerPair, handler: RecordingHandler) -> None:
    handler.fail_with = SoftError(spec.PRECONDITION_FAILED, "x")
    opened.call(1, spec.BasicQos())
    out = opened.call(1, spec.ChannelClose(200, "", 0, 0))
    assert out.names() == ["channel.close-ok"]


def test_hard_error_closes_the_connection(opened: ServerPair, handler: RecordingHandler) -> None:
    handler.fail_with = HardError(spec.NOT_IMPLEMENTED, "immediate=true")
    out = opened.call(1, spec.BasicQos())
    close = out.only(spec.ConnectionClose)
    assert out[0].channel == 0
    assert close.reply_code == 540
    assert close.reply_text == "NOT_IMPLEMENTED - immediate=true"
    assert opened.conn.state == CLOSING


def test_internal_error_in_the_handler_is_541(opened: ServerPair, handler: RecordingHandler) -> None:
    handler.fail_with = RuntimeError("boom")
    close = opened.call(1, spec.BasicQos()).only(spec.ConnectionClose)
    assert close.reply_code == spec.INTERNAL_ERROR
    assert "boom" in close.reply_text


def test_garbage_method_payload_is_a_syntax_error(opened: ServerPair) -> None:
    close = opened.send(encode_frame(spec.FRAME_METHOD, 1, b"\x00\x3c\x00\x28\x00")).only(spec.ConnectionClose)
    assert close.reply_code == spec.SYNTAX_ERROR


def test_oversized_frame_closes_with_frame_error(opened: ServerPair) -> None:
    close = opened.send(b"\x03\x00\x01\x00\x10\x00\x00").only(spec.ConnectionClose)
    assert close.reply_code == 501


def test_bad_frame_end_closes_with_frame_error(opened: ServerPair) -> None:
    frame = method_frame(1, spec.BasicQos())[:-1] + b"\x00"
    close = opened.send(frame).only(spec.ConnectionClose)
    assert close.reply_code == 501


def test_heartbeat_on_a_channel_is_an_unexpected_frame(opened: ServerPair) -> None:
    close = opened.send(b"\x08\x00\x01\x00\x00\x00\x00\xce").only(spec.ConnectionClose)
    assert (close.reply_code, close.reply_text) == (505, "UNEXPECTED_FRAME - type 8, all octets = <<>>")  # RabbitMQ's


def test_after_connection_close_only_close_ok_counts(opened: ServerPair, handler: RecordingHandler) -> None:
    opened.conn.close()
    close = opened.output().only(spec.ConnectionClose)
    assert close.reply_code == spec.CONNECTION_FORCED
    out = opened.send(
        method_frame(1, spec.BasicQos()),
        publish(1, "", "q", b"x"),
        method_frame(3, spec.ChannelOpen()),
        method_frame(0, spec.ConnectionOpen("/")),
        header_frame(1, 1),
        b"\x08\x00\x00\x00\x00\x00\x00\xce",
    )
    assert out == []
    assert handler.events == [("channel_closed", 1)]  # closing the connection ends its channels
    assert opened.conn.state == CLOSING
    assert opened.call(0, spec.ConnectionCloseOk()) == []
    assert opened.conn.closed


def test_client_close_during_our_close_gets_close_ok(opened: ServerPair) -> None:
    opened.conn.close()
    opened.output()
    assert opened.call(0, spec.ConnectionClose(200, "", 0, 0)).names() == ["connection.close-ok"]


def test_client_connection_close(opened: ServerPair, handler: RecordingHandler) -> None:
    out = opened.call(0, spec.ConnectionClose(200, "Normal shutdown", 0, 0))
    assert out.names() == ["connection.close-ok"]
    assert opened.conn.closed
    assert opened.conn.close_reason == "client closed: 200 Normal shutdown"
    assert opened.call(1, spec.BasicQos()) == []
    assert handler.events == [("channel_closed", 1)]  # closing the connection ends its channels


def test_exclusive_resources_are_released_before_close_ok(opened: ServerPair, handler: RecordingHandler) -> None:
    # RabbitMQ ends the channels and deletes the exclusive queues, then sends close-ok (or its own
    # close): a client may redeclare them on a new connection before it closes the old socket.
    seen: list[tuple[int, list[bytes]]] = []
    handler.connection_closing = lambda: seen.append((len(handler.events), list(opened.conn._out)))
    out = opened.call(0, spec.ConnectionClose(200, "", 0, 0))
    assert out.names() == ["connection.close-ok"]
    assert seen == [(1, [])]  # after the channel closed, before close-ok was written


def test_exclusive_resources_are_released_before_our_close(opened: ServerPair, handler: RecordingHandler) -> None:
    seen: list[list[bytes]] = []
    handler.connection_closing = lambda: seen.append(list(opened.conn._out))
    opened.conn.close()
    assert seen == [[]]
    assert opened.output().names() == ["connection.close"]


def test_frames_after_a_hard_error_in_the_same_chunk_are_ignored(
    opened: ServerPair, handler: RecordingHandler
) -> None:
    handler.fail_with = HardError(spec.COMMAND_INVALID, "x")
    out = opened.send(method_frame(1, spec.BasicQos()) + method_frame(1, spec.BasicQos(prefetch_count=2)))
    assert out.names() == ["connection.close"]
    assert [e[0] for e in handler.events] == ["method", "channel_closed"]  # the second qos is never handled


# -- heartbeats -------------------------------------------------------------------------------------------


@pytest.fixture
def beating(pair: ServerPair) -> ServerPair:
    pair.handshake(heartbeat=60)
    assert pair.conn.heartbeat == 60
    return pair


def test_silent_peer_is_dead_after_four_ticks(beating: ServerPair) -> None:
    conn = beating.conn
    assert conn.tick()  # consumes "something was received" from the handshake
    assert [conn.tick() for _ in range(4)] == [True, True, True, False]
    assert conn.closed
    assert "missed heartbeats" in conn.close_reason


def test_any_received_bytes_keep_the_peer_alive(beating: ServerPair) -> None:
    conn = beating.conn
    for _ in range(20):
        assert conn.tick()
        assert conn.tick()
        assert conn.tick()
        conn.receive_data(HEARTBEAT_FRAME)
    assert conn.state == OPEN


def test_tick_after_no_output_emits_a_heartbeat(beating: ServerPair) -> None:
    conn = beating.conn
    conn.tick()  # output was sent during the handshake: no heartbeat needed yet
    assert conn.data_to_send() == []
    conn.receive_data(HEARTBEAT_FRAME)
    conn.tick()
    assert conn.data_to_send() == [HEARTBEAT_FRAME]


def test_no_heartbeat_when_something_was_sent_since_the_last_tick(beating: ServerPair) -> None:
    conn = beating.conn
    conn.tick()
    conn.send_method(1, spec.BasicQosOk())
    conn.data_to_send()
    conn.receive_data(HEARTBEAT_FRAME)
    conn.tick()
    assert conn.data_to_send() == []


def test_heartbeat_zero_disables_both_directions(pair: ServerPair) -> None:
    pair.handshake(heartbeat=0)
    conn = pair.conn
    for _ in range(10):
        assert conn.tick()
    assert conn.data_to_send() == []
    assert conn.state == OPEN


# -- the publish lane (framing.py) ---------------------------------------------------------------------


def test_repeated_publishes_in_one_chunk_reach_the_handler_whole(
    opened: ServerPair, handler: RecordingHandler
) -> None:
    props = spec.BasicProperties(delivery_mode=2).encode()
    assert opened.send(publish(1, "", "q", b"m0", props)) == []  # the lane learns this method frame
    assert opened.conn._frames.publish_lane is not None
    stream = b"".join(publish(1, "", "q", f"m{i}".encode(), props) for i in range(1, 5))
    stream += publish(1, "", "other", b"x") + publish(1, "", "q", b"m5", props)
    assert opened.send(stream) == []
    method_q = spec.BasicPublish(exchange="", routing_key="q")
    assert handler.events == [("content", 1, method_q, props, f"m{i}".encode()) for i in range(5)] + [
        ("content", 1, spec.BasicPublish(exchange="", routing_key="other"), b"\x00\x00", b"x"),
        ("content", 1, method_q, props, b"m5"),
    ]


def test_lane_publishes_on_a_channel_we_closed_are_dropped(opened: ServerPair, handler: RecordingHandler) -> None:
    opened.send(publish(1, "", "q", b"first"))  # teaches the lane this method frame
    handler.fail_with = SoftError(spec.NOT_FOUND, "no queue")
    assert opened.send(publish(1, "", "q", b"second")).only(spec.ChannelClose).reply_code == 404
    handler.events.clear()
    assert opened.send(publish(1, "", "q", b"third") * 3) == []
    assert handler.events == []
    assert opened.call(1, spec.ChannelCloseOk()) == []
    opened.open_channel(1)


def test_lane_publish_while_content_is_expected_is_505(opened: ServerPair, handler: RecordingHandler) -> None:
    opened.send(publish(1, "", "q", b"first"))
    started = method_frame(1, spec.BasicPublish(exchange="", routing_key="q"))  # no header or body follows
    close = opened.send(started + publish(1, "", "q", b"second")).only(spec.ConnectionClose)
    assert close.reply_code == spec.UNEXPECTED_FRAME
