"""FrameBuffer: frames come out the same whatever the split; size and frame-end are checked early."""

from __future__ import annotations

import pytest

from conveyor.amqp import spec
from conveyor.amqp.framing import HEARTBEAT_FRAME, FrameBuffer, FrameError, encode_frame

FRAMES = [
    (spec.FRAME_METHOD, 0, spec.ConnectionTuneOk(2047, 131072, 60).encode()),
    (spec.FRAME_METHOD, 1, spec.BasicPublish(exchange="", routing_key="q").encode()),
    (spec.FRAME_HEADER, 1, b"\x00\x3c\x00\x00" + (5).to_bytes(8, "big") + b"\x00\x00"),
    (spec.FRAME_BODY, 1, b"hello"),
    (spec.FRAME_BODY, 2, b""),  # an empty body frame is legal framing
    (spec.FRAME_HEARTBEAT, 0, b""),
    (spec.FRAME_BODY, 65535, bytes(range(256)) * 4),
]
STREAM = b"".join(encode_frame(*f) for f in FRAMES)


def feed_all(buffer: FrameBuffer, pieces: list[bytes]) -> list[tuple[int, int, bytes]]:
    out = []
    for piece in pieces:
        out.extend(buffer.feed(piece))
    return out


def test_encode_frame_layout() -> None:
    assert encode_frame(spec.FRAME_BODY, 258, b"ab") == b"\x03\x01\x02\x00\x00\x00\x02ab\xce"
    assert encode_frame(spec.FRAME_HEARTBEAT, 0, b"") == HEARTBEAT_FRAME


def test_whole_stream_at_once() -> None:
    buffer = FrameBuffer(131072)
    assert buffer.feed(STREAM) == FRAMES
    assert len(buffer) == 0


def test_split_at_every_offset_into_two() -> None:
    for cut in range(len(STREAM) + 1):
        buffer = FrameBuffer(131072)
        assert feed_all(buffer, [STREAM[:cut], STREAM[cut:]]) == FRAMES, cut
        assert len(buffer) == 0


def test_split_at_every_pair_of_offsets_into_three() -> None:
    stream = b"".join(encode_frame(*f) for f in FRAMES[:4])
    expected = FRAMES[:4]
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1, 3):
            buffer = FrameBuffer(131072)
            assert feed_all(buffer, [stream[:first], stream[first:second], stream[second:]]) == expected


def test_one_byte_at_a_time() -> None:
    buffer = FrameBuffer(131072)
    out = []
    for i in range(len(STREAM)):
        out.extend(buffer.feed(STREAM[i : i + 1]))
    assert out == FRAMES
    assert len(buffer) == 0


def test_partial_frame_is_kept_until_complete() -> None:
    frame = encode_frame(spec.FRAME_BODY, 1, b"xyz")
    buffer = FrameBuffer(131072)
    assert buffer.feed(frame[:-1]) == []
    assert len(buffer) == len(frame) - 1
    assert buffer.feed(frame[-1:]) == [(spec.FRAME_BODY, 1, b"xyz")]


def test_frames_are_independent_bytes_not_views_of_the_buffer() -> None:
    buffer = FrameBuffer(131072)
    data = bytearray(encode_frame(spec.FRAME_BODY, 1, b"abc") + encode_frame(spec.FRAME_BODY, 1, b"d")[:3])
    (frame,) = buffer.feed(bytes(data))
    buffer.feed(encode_frame(spec.FRAME_BODY, 1, b"d")[3:])
    assert frame == (spec.FRAME_BODY, 1, b"abc")


def test_frame_of_exactly_frame_max_is_accepted() -> None:
    frame_max = 4096
    frame = encode_frame(spec.FRAME_BODY, 1, b"x" * (frame_max - 8))
    assert len(frame) == frame_max
    assert FrameBuffer(frame_max).feed(frame) == [(spec.FRAME_BODY, 1, b"x" * (frame_max - 8))]


def _error_after(buffer: FrameBuffer, data: bytes) -> FrameError:
    """Feed ``data`` and return the framing error it caused (feed never raises)."""
    buffer.feed(data)
    assert buffer.error is not None
    assert buffer.feed(b"more bytes are ignored") == []
    return buffer.error


def test_oversized_frame_is_refused_as_soon_as_the_header_is_in() -> None:
    frame_max = 4096
    header = encode_frame(spec.FRAME_BODY, 1, b"x" * (frame_max - 7))[:7]
    buffer = FrameBuffer(frame_max)
    for i in range(6):
        assert buffer.feed(header[i : i + 1]) == []
    assert _error_after(buffer, header[6:7]).reply_code == spec.FRAME_ERROR == 501


def test_four_gib_announcement_is_refused_without_buffering_it() -> None:
    error = _error_after(FrameBuffer(131072), b"\x03\x00\x01\xff\xff\xff\xff")
    assert error.reply_code == 501
    assert "frame_too_large" in error.reply_text


def test_oversized_frame_after_good_ones_in_the_same_chunk() -> None:
    good = encode_frame(spec.FRAME_BODY, 1, b"ok")
    buffer = FrameBuffer(4096)
    assert buffer.feed(good + b"\x03\x00\x01\x00\x01\x00\x00") == [(spec.FRAME_BODY, 1, b"ok")]
    assert buffer.error is not None and buffer.error.reply_code == 501


@pytest.mark.parametrize("bad_end", [b"\x00", b"\xcd", b"\xff"])
def test_bad_frame_end_is_a_frame_error(bad_end: bytes) -> None:
    frame = encode_frame(spec.FRAME_METHOD, 0, spec.ConnectionCloseOk().encode())[:-1] + bad_end
    assert _error_after(FrameBuffer(131072), frame).reply_code == 501


def test_bad_frame_end_detected_when_fed_byte_by_byte() -> None:
    frame = encode_frame(spec.FRAME_BODY, 3, b"abc")[:-1] + b"\x00"
    buffer = FrameBuffer(131072)
    for i in range(len(frame) - 1):
        assert buffer.feed(frame[i : i + 1]) == []
    assert _error_after(buffer, frame[-1:]).reply_code == 501


def test_frame_max_can_be_lowered_after_tune() -> None:
    buffer = FrameBuffer(131072)
    big = encode_frame(spec.FRAME_BODY, 1, b"x" * 9000)
    assert len(buffer.feed(big)) == 1
    buffer.frame_max = 8192
    assert _error_after(buffer, big).reply_code == 501
