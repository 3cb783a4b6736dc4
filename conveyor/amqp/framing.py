"""AMQP 0-9-1 frames: the protocol header and the frame buffer. Pure, no I/O.

A frame is ``type:octet channel:short size:long payload:size frame-end:0xCE``. ``FrameBuffer.feed``
takes whatever bytes the transport delivered, in any split, and returns every complete frame as
``(type, channel, payload)``. Leftover bytes of an incomplete frame are kept, and the buffer is
compacted once per ``feed`` rather than once per frame.

The publish lane: a publisher sends the same basic.publish method frame again and again, each followed
by a content header and (for bodies up to frame_max) one body frame. When the connection names that
method frame in ``publish_lane``, ``feed`` recognises it with one comparison and returns the three
frames as one item, already split into properties and body. That spares most of the per-frame work
on the broker's busiest path; anything that does not fit exactly is parsed frame by frame as usual.

The size check happens as soon as the 7-byte frame header is in, so a peer announcing a 4 GiB frame
is refused before we buffer any of it. A framing error does not raise: the frames before it are
returned, ``error`` is set, and the buffer accepts nothing more (the connection is to be closed).
"""

from __future__ import annotations

import struct
from typing import Any

from conveyor.amqp import spec

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_HEADER = struct.Struct("!BHI")
FRAME_END = b"\xce"
FRAME_PUBLISH = -1  # not a wire frame type: a publish's method, header and body frames taken together
_CONTENT_HEADER_FRAME = struct.Struct("!BHIHHQ")  # frame head, then class, weight and body size
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


class FrameError(Exception):
    """The byte stream is not valid framing; the connection must close with ``reply_code``."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text


class FrameBuffer:
    """Reassembles frames from a byte stream split anywhere."""

    __slots__ = ("_buf", "error", "frame_max", "publish_lane")

    def __init__(self, frame_max: int) -> None:
        self._buf = bytearray()
        self.error: FrameError | None = None
        self.frame_max = frame_max  # the largest whole frame allowed, header and end octet included
        # The publish lane (set by the connection): a whole method frame, as bytes, and a tag for it.
        # Where the stream repeats that frame followed by a content header and one body frame, the
        # three come out as one item, ``(FRAME_PUBLISH, channel, (tag, properties, body))``.
        self.publish_lane: tuple[bytes, Any] | None = None

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, int, Any]]:
        if self.error is not None:
            return []
        size_limit = self.frame_max - 8
        unpack = FRAME_HEADER.unpack_from
        pending = self._buf
        if pending:
            pending += data
            # Until the first frame is whole there is nothing to parse: keep gathering, without
            # copying (a large frame arrives over many reads).
            if len(pending) < 7:
                return []
            size = unpack(pending, 0)[2]
            if size <= size_limit and len(pending) < size + 8:
                return []
            buf = bytes(pending)
            self._buf = bytearray()
        else:
            buf = data if type(data) is bytes else bytes(data)
        # Payloads are slices of one bytes object: bytes, hashable, one copy each.
        frames: list[tuple[int, int, Any]] = []
        append = frames.append
        off = 0
        available = len(buf)
        lane_frame, lane_tag = self.publish_lane or (None, None)
        if lane_frame is not None:
            lane_channel = int.from_bytes(lane_frame[1:3], "big")
            lane_size = len(lane_frame)
            starts_lane = buf.startswith
            unpack_header = _CONTENT_HEADER_FRAME.unpack_from
        while available - off >= 7:
            if lane_frame is not None and starts_lane(lane_frame, off):
                # A publish: if its header and body frames are here and ordinary, take all three at
                # once. Anything unusual falls through to the frame-by-frame parse below.
                h = off + lane_size
                if available - h >= 19:
                    frame_type, channel, size, class_id, weight, body_size = unpack_header(buf, h)
                    header_end = h + 7 + size
                    b = header_end + 1
                    if (
                        frame_type == 2 and channel == lane_channel and class_id == 60 and weight == 0
                        and 12 <= size <= size_limit and 0 < body_size <= size_limit
                        and available - b >= 7 and buf[header_end] == 0xCE
                    ):
                        frame_type, channel, size = unpack(buf, b)
                        body_end = b + 7 + size
                        if (
                            frame_type == 3 and channel == lane_channel and size == body_size
                            and body_end < available and buf[body_end] == 0xCE
                        ):
                            content = (lane_tag, buf[h + 19 : header_end], buf[b + 7 : body_end])
                            append((FRAME_PUBLISH, channel, content))
                            off = body_end + 1
                            continue
            frame_type, channel, size = unpack(buf, off)
            if size > size_limit:
                self.error = FrameError(
                    spec.FRAME_ERROR,
                    f"type {frame_type}, first 16 octets = {buf[off:off + 16]!r}: "
                    f"{{frame_too_large,{size},{size_limit}}}",
                )
                break
            end = off + 7 + size
            if end >= available:
                break
            if buf[end] != 0xCE:
                self.error = FrameError(spec.FRAME_ERROR, f"type {frame_type}, frame end octet missing")
                break
            append((frame_type, channel, buf[off + 7 : end]))
            off = end + 1
        if self.error is None and off < available:
            self._buf = bytearray(buf[off:])
        return frames


def encode_frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(frame_type, channel, len(payload)) + payload + FRAME_END
