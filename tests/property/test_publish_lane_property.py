"""The frame buffer's publish lane changes how frames are grouped, never what they are.

Streams mix lane publishes with look-alikes the lane must refuse (another routing key or channel, a
body split over frames, an empty body, a nonzero weight, a header of another class, a truncated
triple) and other frames, cut anywhere. Flattening each lane item back into its three frames must give
exactly what a buffer without a lane returns, and every lane item must be a publish the lane names.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.amqp import spec
from conveyor.amqp.framing import FRAME_PUBLISH, FrameBuffer, encode_frame

FRAME_MAX = 4096
LANE_CHANNEL = 1
LANE_PAYLOAD = spec.BasicPublish(exchange="", routing_key="q").encode()
OTHER_PAYLOAD = spec.BasicPublish(exchange="", routing_key="other").encode()
LANE_TAG = object()


def header(body_size: int, properties: bytes = b"\x10\x00\x02", class_id: int = 60, weight: int = 0) -> bytes:
    return struct.pack("!HHQ", class_id, weight, body_size) + properties


def publish(channel: int, payload: bytes, body: bytes, **header_args: int) -> list[tuple[int, int, bytes]]:
    frames = [(spec.FRAME_METHOD, channel, payload), (spec.FRAME_HEADER, channel, header(len(body), **header_args))]
    for start in range(0, len(body), FRAME_MAX - 8):
        frames.append((spec.FRAME_BODY, channel, body[start : start + FRAME_MAX - 8]))
    return frames


bodies = st.binary(min_size=1, max_size=64)
pieces = st.one_of(
    bodies.map(lambda body: publish(LANE_CHANNEL, LANE_PAYLOAD, body)),  # the lane's own
    bodies.map(lambda body: publish(LANE_CHANNEL, OTHER_PAYLOAD, body)),
    bodies.map(lambda body: publish(2, LANE_PAYLOAD, body)),
    st.just(publish(LANE_CHANNEL, LANE_PAYLOAD, bytes(FRAME_MAX + 10))),  # two body frames
    st.just(publish(LANE_CHANNEL, LANE_PAYLOAD, b"")),  # no body frame at all
    bodies.map(lambda body: publish(LANE_CHANNEL, LANE_PAYLOAD, body, weight=1)),
    bodies.map(lambda body: publish(LANE_CHANNEL, LANE_PAYLOAD, body, class_id=50)),
    bodies.map(lambda body: publish(LANE_CHANNEL, LANE_PAYLOAD, body)[:2]),  # header, then no body
    st.just([(spec.FRAME_HEARTBEAT, 0, b"")]),
    st.just([(spec.FRAME_METHOD, LANE_CHANNEL, spec.BasicAck(delivery_tag=7).encode())]),
)


def flatten(items: list[tuple[int, int, object]]) -> list[tuple[int, int, bytes]]:
    frames: list[tuple[int, int, bytes]] = []
    for frame_type, channel, payload in items:
        if frame_type != FRAME_PUBLISH:
            frames.append((frame_type, channel, payload))  # type: ignore[arg-type]
            continue
        tag, properties, body = payload  # type: ignore[misc]
        assert tag is LANE_TAG and channel == LANE_CHANNEL
        frames.append((spec.FRAME_METHOD, channel, LANE_PAYLOAD))
        frames.append((spec.FRAME_HEADER, channel, header(len(body), properties)))
        frames.append((spec.FRAME_BODY, channel, body))
    return frames


@settings(max_examples=300, deadline=None)
@given(st.lists(pieces, max_size=12), st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_lane_items_flatten_to_the_plain_parse(chosen: list[list[tuple[int, int, bytes]]], cuts: list[int]) -> None:
    frames = [frame for piece in chosen for frame in piece]
    stream = b"".join(encode_frame(*frame) for frame in frames)
    plain = FrameBuffer(FRAME_MAX)
    laned = FrameBuffer(FRAME_MAX)
    laned.publish_lane = (encode_frame(spec.FRAME_METHOD, LANE_CHANNEL, LANE_PAYLOAD), LANE_TAG)
    plain_out: list[tuple[int, int, bytes]] = []
    laned_out: list[tuple[int, int, object]] = []
    start = 0
    for cut in [*sorted(min(cut, len(stream)) for cut in cuts), len(stream)]:
        plain_out += plain.feed(stream[start:cut])
        laned_out += laned.feed(stream[start:cut])
        start = cut
    assert plain_out == frames
    assert flatten(laned_out) == frames
    assert plain.error is None and laned.error is None
    assert len(laned) == 0


def test_a_lane_publish_comes_out_whole() -> None:
    buffer = FrameBuffer(FRAME_MAX)
    buffer.publish_lane = (encode_frame(spec.FRAME_METHOD, LANE_CHANNEL, LANE_PAYLOAD), LANE_TAG)
    stream = b"".join(encode_frame(*frame) for frame in publish(LANE_CHANNEL, LANE_PAYLOAD, b"hello") * 2)
    assert buffer.feed(stream) == [(FRAME_PUBLISH, LANE_CHANNEL, (LANE_TAG, b"\x10\x00\x02", b"hello"))] * 2
