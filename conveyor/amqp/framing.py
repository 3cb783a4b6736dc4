"""AMQP 0-9-1 frames: the protocol header and the frame buffer. Pure, no I/O.

A frame is ``type:octet channel:short size:long payload:size frame-end:0xCE``. ``FrameBuffer.feed``
takes whatever bytes the transport delivered, in any split, and returns every complete frame as
``(type, channel, payload)``. Leftover bytes of an incomplete frame are kept, and the buffer is
compacted once per ``feed`` rather than once per frame.

The size check happens as soon as the 7-byte frame header is in, so a peer announcing a 4 GiB frame
is refused before we buffer any of it. A framing error does not raise: the frames before it are
returned, ``error`` is set, and the buffer accepts nothing more (the connection is to be closed).
"""

from __future__ import annotations

import struct

from conveyor.amqp import spec

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_HEADER = struct.Struct("!BHI")
FRAME_END = b"\xce"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


class FrameError(Exception):
    """The byte stream is not valid framing; the connection must close with ``reply_code``."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text


class FrameBuffer:
    """Reassembles frames from a byte stream split anywhere."""

    __slots__ = ("_buf", "error", "frame_max")

    def __init__(self, frame_max: int) -> None:
        self._buf = bytearray()
        self.error: FrameError | None = None
        self.frame_max = frame_max  # the largest whole frame allowed, header and end octet included

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
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
        frames: list[tuple[int, int, bytes]] = []
        append = frames.append
        off = 0
        available = len(buf)
        while available - off >= 7:
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
