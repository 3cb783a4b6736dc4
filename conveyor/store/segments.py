"""Per-queue segment files: the embedded, durable message store.

On-disk layout (one directory per durable queue, LavinMQ-style)
----------------------------------------------------------------
::

    <queue dir>/meta.json        {"vhost": "/", "queue": "orders"} - for people and tools, not read back
    <queue dir>/msgs.<N>         segment N (N = 1, 2, ... as 10 digits): the messages, append-only
    <queue dir>/acks.<N>         the ack/delivery log of segment N, append-only

A segment starts with an 8-byte header ``b"CVYM" | u16 format version | u16 0`` followed by records::

    u32 payload length | u32 CRC-32 of payload | payload
    payload = u8 flags (bit 0: persistent) | u8 len | exchange | u8 len | routing key
              | u32 len | basic properties as received on the wire | body (the rest)

An ack log is a sequence of big-endian u32 entries, each naming a record of its segment by offset:
``offset`` means the message was acked (gone for good); ``offset | 0x80000000`` means it was
delivered to a consumer (so after a crash it comes back with ``redelivered`` set).

Invariants
----------
* Records are written once, in queue order, and never modified; a message's Position is
  ``(segment number, record offset)``, and positions sort in queue order.
* A segment is rolled over when it passes ``segment_size``; only the newest segment is appended to.
* A record is *live* until acked. Transient records (flags bit 0 clear) are written only when the queue
  pages its backlog out of memory; they are dead after a restart, since transient messages do not
  survive one. A segment whose records are all dead is deleted with its ack log, the one being written
  included (a drained queue frees its disk at once); at start-up the newest is kept to append to.
* Ack-log entries naming offsets past a torn tail are dropped (on disk too) before anything is appended,
  so a new record written at that offset never inherits a stale ack.
* New segment files and their directory entries are fsynced by the commit after their creation; a
  writer retired by a rollover stays open until the commit that covers its last records.
* Recovery checks every record's length and CRC; the first bad one in a segment marks a torn write
  (a crash mid-append): the file is truncated there and nothing after it is ever delivered. A torn
  ack entry (fewer than 4 bytes at the end) is ignored.
* Durability comes from ``fsync`` by the group committer (sync.py), never from this class, so a write
  here is a cheap append to the OS page cache on the event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from conveyor.core.message import Message
from conveyor.store.api import Position, StoreError

MAGIC = b"CVYM"
FORMAT_VERSION = 1
HEADER = MAGIC + struct.pack("!HH", FORMAT_VERSION, 0)
DELIVERED = 0x80000000
DEFAULT_SEGMENT_SIZE = 8 * 1024 * 1024

_RECORD_HEAD = struct.Struct("!II")
_U32 = struct.Struct("!I")


class Committer(Protocol):
    """What a store needs from the group committer: to be fsynced at the next commit."""

    def mark_dirty(self, store: SegmentMessageStore) -> None: ...


class FormatError(StoreError):
    """A data directory written by a newer (or unknown) Conveyor format."""


DATA_DIR_FORMAT = 1  # the layout of the data directory as a whole (FORMAT file at its root)


def check_data_dir(data_dir: Path) -> None:
    """Create the data directory on first use; refuse one written by a newer Conveyor."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        marker = data_dir / "FORMAT"
        if not marker.exists():
            marker.write_text(f"{DATA_DIR_FORMAT}\n")
            return
        text = marker.read_text().strip()
    except OSError as exc:
        raise StoreError(f"cannot use data directory {data_dir}: {exc.strerror}") from exc
    if not text.isdigit():
        raise FormatError(f"{data_dir}/FORMAT is not a Conveyor data directory format number: {text[:40]!r}")
    if int(text) > DATA_DIR_FORMAT:
        raise FormatError(
            f"data directory {data_dir} was written in format {text} by a newer Conveyor; this one reads "
            f"format {DATA_DIR_FORMAT}: upgrade Conveyor, or start with another --data-dir"
        )


def encode_record(message: Message, persistent: bool) -> bytes:
    exchange = message.exchange.encode("utf-8", "surrogateescape")
    routing_key = message.routing_key.encode("utf-8", "surrogateescape")
    properties = message.properties
    payload = b"".join((
        b"\x01" if persistent else b"\x00",
        bytes((len(exchange),)), exchange,
        bytes((len(routing_key),)), routing_key,
        _U32.pack(len(properties)), properties,
        message.body,
    ))
    return _RECORD_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes, decoder: Any) -> Message:
    off = 1
    n = payload[off]
    exchange = payload[off + 1 : off + 1 + n].decode("utf-8", "surrogateescape")
    off += 1 + n
    n = payload[off]
    routing_key = payload[off + 1 : off + 1 + n].decode("utf-8", "surrogateescape")
    off += 1 + n
    (n,) = _U32.unpack_from(payload, off)
    properties = payload[off + 4 : off + 4 + n]
    body = payload[off + 4 + n :]
    return Message(exchange, routing_key, properties, body, persistent=bool(payload[0] & 1), decoder=decoder)


class _AppendLog:
    """An append-only file written with unbuffered ``os.write``.

    A failed append (ENOSPC, EIO) is cut back off with ``ftruncate``, so the file always ends on a
    whole record and a later append cannot land behind garbage. No user-space buffer means nothing
    is lost to a process crash once ``append`` returns, and the committer can fsync the fd as is.
    """

    __slots__ = ("fd", "path", "size")

    def __init__(self, path: Path, size: int | None = None, header: bytes = b"") -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            if size is None:
                size = os.fstat(self.fd).st_size
            os.ftruncate(self.fd, size)
            os.lseek(self.fd, size, os.SEEK_SET)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror}") from exc
        self.size = size
        if header and size == 0:
            self.append(header)

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self.fd, view[written:])
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
                os.lseek(self.fd, self.size, os.SEEK_SET)
            raise StoreError(f"cannot write to {self.path}: {exc.strerror}") from exc
        self.size += written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Segment:
    """What the store remembers of one segment: which records are live, which were delivered."""

    __slots__ = ("acked", "dead_below", "delivered", "end", "live", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self.live = 0  # records not yet acked (transient records from before a restart excluded)
        self.acked: set[int] = set()  # offsets acked (kept until the segment is deleted)
        self.delivered: set[int] = set()  # offsets delivered before a restart
        self.end = len(HEADER)  # the offset just past the last valid record
        self.dead_below = 0  # transient records before this offset were written before a restart


class SegmentMessageStore:
    """The message log of one durable queue. Not thread-safe: used from the event loop only."""

    def __init__(
        self,
        directory: Path,
        *,
        committer: Committer | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        decoder: Any = None,
        meta: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.committer = committer
        self.segment_size = segment_size
        self.decoder = decoder
        self.segments: dict[int, _Segment] = {}
        self._writer: _AppendLog | None = None
        self._writer_segment: _Segment | None = None
        self._acks: dict[int, _AppendLog] = {}
        self._readers: dict[int, BinaryIO] = {}
        self._dirty: list[_AppendLog] = []
        self._last_number = 0  # the highest segment number ever used in this directory
        self._retired: list[_AppendLog] = []  # rolled-over writers still owed an fsync
        self._directory_changed = False  # a file was created since the last commit
        self._directory_fd = -1
        directory.mkdir(parents=True, exist_ok=True)
        if meta is not None and not (directory / "meta.json").exists():
            (directory / "meta.json").write_text(json.dumps(meta))
        started = time.monotonic()
        self._scan()
        self.scan_seconds = time.monotonic() - started  # reported in the recovery log line
    # -- recovery scan -------------------------------------------------------------------------

    def _path(self, kind: str, number: int) -> Path:
        return self.directory / f"{kind}.{number:010d}"

    def _scan(self) -> None:
        numbers = sorted(int(p.name[5:]) for p in self.directory.glob("msgs.*") if p.name[5:].isdigit())
        self._last_number = numbers[-1] if numbers else 0
        for number in numbers:
            segment = _Segment(number)
            self._read_acks(segment)
            self._check_records(segment)
            self._drop_stale_acks(segment)
            self.segments[number] = segment
        # Segments with nothing live left (e.g. acks written just before a crash) go now.
        for number in numbers[:-1]:
            if self.segments[number].live == 0:
                self._remove_segment(number)

    def _drop_stale_acks(self, segment: _Segment) -> None:
        """Forget ack-log entries for offsets past a torn tail, on disk too.

        Page-cache writeback has no order: an ack may reach the disk while the record it names does
        not. After truncation, a new record lands at that offset and must not inherit the old entry.
        """
        stale = {o for o in segment.acked | segment.delivered if o >= segment.end}
        if not stale:
            return
        segment.acked -= stale
        segment.delivered -= stale
        entries = [o for o in sorted(segment.acked)] + [o | DELIVERED for o in sorted(segment.delivered)]
        path = self._path("acks", segment.number)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(_U32.pack(e) for e in entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read_acks(self, segment: _Segment) -> None:
        path = self._path("acks", segment.number)
        if not path.exists():
            return
        raw = path.read_bytes()
        for (entry,) in _U32.iter_unpack(raw[: len(raw) - len(raw) % 4]):
            if entry & DELIVERED:
                segment.delivered.add(entry & ~DELIVERED)
            else:
                segment.acked.add(entry)

    def _check_records(self, segment: _Segment) -> None:
        path = self._path("msgs", segment.number)
        with open(path, "rb") as f:
            head = f.read(len(HEADER))
            if len(head) < len(HEADER):
                segment.end = len(HEADER)
                self._truncate(path, 0, rewrite_header=True)
                return
            if head[:4] != MAGIC:
                raise FormatError(f"{path} is not a Conveyor segment file")
            (version,) = struct.unpack_from("!H", head, 4)
            if version > FORMAT_VERSION:
                raise FormatError(
                    f"{path} uses segment format {version}; this Conveyor reads format {FORMAT_VERSION} "
                    "and older: upgrade Conveyor to use this data directory"
                )
            off = len(HEADER)
            while True:
                head = f.read(8)
                if not head:
                    break
                if len(head) < 8:
                    self._truncate(path, off)
                    break
                size, crc = _RECORD_HEAD.unpack(head)
                payload = f.read(size)
                if len(payload) < size or zlib.crc32(payload) != crc or size < 7:
                    self._truncate(path, off)  # a torn write: nothing from here on is a message
                    break
                if payload[0] & 1 and off not in segment.acked:
                    segment.live += 1
                off += 8 + size
            segment.end = off
            segment.dead_below = off

    @staticmethod
    def _truncate(path: Path, offset: int, rewrite_header: bool = False) -> None:
        with open(path, "r+b") as f:
            f.truncate(offset)
            if rewrite_header:
                f.write(HEADER)
            f.flush()
            os.fsync(f.fileno())

    def recovered(self) -> Iterator[tuple[Position, Message, bool]]:
        """Live persistent messages found on disk, in order, with their redelivered flag."""
        return self.read_from(Position(0, 0), None)

    def recover(self) -> int:
        """Transient records were already left out by the scan at open; live persistent ones remain."""
        return self.count

    @property
    def count(self) -> int:
        return sum(s.live for s in self.segments.values())

    # -- writing -------------------------------------------------------------------------------

    def append(self, message: Message, persistent: bool = True) -> Position:
        """Append one record; durable once the committer's next fsync completes."""
        record = encode_record(message, persistent)
        segment = self._writer_segment
        if segment is None or (segment.end > len(HEADER) and segment.end + len(record) > self.segment_size):
            segment = self._roll()
        writer = self._writer
        assert writer is not None
        offset = segment.end
        writer.append(record)  # raises StoreError, leaving the file as it was
        segment.end += len(record)
        segment.live += 1
        self._mark_dirty(writer)
        return Position(segment.number, offset)

    def _roll(self) -> _Segment:
        """Open the newest segment for appending, or start a new one when it is full."""
        previous = self._writer_segment
        if self._writer is not None:
            if self._writer in self._dirty:
                self._retired.append(self._writer)  # closed after the commit that fsyncs it
            else:
                self._writer.close()
            self._writer = None
        last = self._last_number
        current = self.segments.get(last)
        if current is not None and previous is None and current.end < self.segment_size:
            segment = current  # after a restart, continue the newest segment
            self._writer = _AppendLog(self._path("msgs", last), segment.end)
        else:
            # Numbers are never reused, so a stale position can never name a record of a newer segment.
            self._last_number += 1
            segment = _Segment(self._last_number)
            self._writer = _AppendLog(self._path("msgs", segment.number), 0, HEADER)
            self._directory_changed = True  # the new file's name must be durable too
            self.segments[segment.number] = segment
            if current is not None and current.live == 0 and previous is current:
                self._remove_segment(current.number)
        self._writer_segment = segment
        return segment

    def _ack_log(self, number: int) -> _AppendLog:
        log = self._acks.get(number)
        if log is None:
            path = self._path("acks", number)
            size = path.stat().st_size if path.exists() else 0
            log = _AppendLog(path, size - size % 4)  # a torn entry at the end is cut off
            self._acks[number] = log
        return log

    def _mark_dirty(self, log: _AppendLog) -> None:
        if not self._dirty and self.committer is not None:
            self.committer.mark_dirty(self)
        if log not in self._dirty:
            self._dirty.append(log)

    def mark_delivered(self, position: Position) -> None:
        """Note a delivery, so a crash brings the message back flagged redelivered. Not fsynced."""
        with contextlib.suppress(StoreError):  # losing a marker loses a redelivered flag, never a message
            self._ack_log(position.segment).append(_U32.pack(position.offset | DELIVERED))

    def delete(self, position: Position) -> None:
        """The message was acked: log it, and drop the segment when nothing in it is live."""
        segment = self.segments.get(position.segment)
        if segment is None or position.offset in segment.acked:
            return
        segment.acked.add(position.offset)
        segment.live -= 1
        if segment.live == 0:
            if segment is self._writer_segment:  # fully acked: free its space now (a full disk needs it)
                assert self._writer is not None
                self._writer.close()
                self._writer = None
                self._writer_segment = None
            self._remove_segment(segment.number)
            return
        log = self._ack_log(position.segment)
        log.append(_U32.pack(position.offset))  # if this fails the message comes back after a restart
        self._mark_dirty(log)

    def delete_from(self, position: Position) -> int:
        """Ack every live record at or after ``position`` (a purge of the on-disk backlog)."""
        doomed = [Position(number, offset) for number, offset, _ in self._records_from(position, False)]
        for doomed_position in doomed:
            self.delete(doomed_position)
        return len(doomed)

    def _remove_segment(self, number: int) -> None:
        self.segments.pop(number, None)
        for cache in (self._acks, self._readers):
            f = cache.pop(number, None)
            if f is not None:
                if f in self._dirty:
                    self._dirty.remove(f)
                f.close()
        for kind in ("msgs", "acks"):
            with contextlib.suppress(FileNotFoundError):
                self._path(kind, number).unlink()

    # -- reading -------------------------------------------------------------------------------

    def read_from(
        self, position: Position, limit: int | None, *, persistent_only: bool = True
    ) -> Iterator[tuple[Position, Message, bool]]:
        """Live records from ``position`` on, in order: ``(position, message, redelivered)``.

        ``persistent_only`` skips transient records, which only the running broker that wrote them
        may read back (recovery must not resurrect them).
        """
        if limit is not None and limit <= 0:
            return
        for count, (number, offset, payload) in enumerate(self._records_from(position, persistent_only), 1):
            segment = self.segments[number]
            yield Position(number, offset), decode_payload(payload, self.decoder), offset in segment.delivered
            if limit is not None and count >= limit:
                return

    def _records_from(self, position: Position, persistent_only: bool) -> Iterator[tuple[int, int, bytes]]:
        """``(segment, offset, payload)`` of each live record from ``position`` on."""
        for number in sorted(n for n in self.segments if n >= position.segment):
            segment = self.segments.get(number)
            if segment is None:
                continue  # removed while the caller was iterating
            reader = self._reader(number)
            off = max(position.offset, len(HEADER)) if number == position.segment else len(HEADER)
            while off < segment.end:
                reader.seek(off)
                size, _crc = _RECORD_HEAD.unpack(reader.read(8))
                payload = reader.read(size)
                here = off
                off += 8 + size
                if here in segment.acked:
                    continue
                if not payload[0] & 1 and (persistent_only or here < segment.dead_below):
                    continue  # transient: only for the broker that wrote it, never after a restart
                yield number, here, payload

    def _reader(self, number: int) -> BinaryIO:
        reader = self._readers.get(number)
        if reader is None:
            reader = open(self._path("msgs", number), "rb")  # noqa: SIM115
            self._readers[number] = reader
        return reader

    def read(self, position: Position) -> Message:
        for pos, message, _ in self.read_from(position, 1, persistent_only=False):
            if pos == position:
                return message
        raise KeyError(position)

    # -- durability ----------------------------------------------------------------------------

    def flush_for_sync(self) -> list[int]:
        """The file descriptors written since the last call, for the committer to fsync (it dups them
        at once). Writers retired by a rollover are handed over once more, then closed next time."""
        for log in self._retired:
            if log not in self._dirty:
                log.close()
        self._retired = [log for log in self._retired if log.fd >= 0]
        dirty, self._dirty = self._dirty, []
        fds = [log.fd for log in dirty if log.fd >= 0]
        if self._directory_changed:
            self._directory_changed = False
            if self._directory_fd < 0:
                self._directory_fd = os.open(self.directory, os.O_RDONLY)
            fds.append(self._directory_fd)
        return fds

    def sync(self, callback: Callable[[], None]) -> None:
        """Flush and fsync now, on this thread (tests and shutdown; the broker uses the committer)."""
        for fd in self.flush_for_sync():
            os.fsync(fd)
        callback()

    def _close_files(self) -> None:
        for log in [self._writer, *self._acks.values(), *self._retired]:
            if log is not None:
                log.close()
        for reader in self._readers.values():
            reader.close()
        self._writer = None
        self._writer_segment = None
        self._acks.clear()
        self._readers.clear()
        self._dirty.clear()
        self._retired.clear()
        self._directory_changed = False
        if self._directory_fd >= 0:
            os.close(self._directory_fd)
            self._directory_fd = -1

    def close(self) -> None:
        self.sync(lambda: None)
        self._close_files()

    def destroy(self) -> None:
        """The queue was deleted: its files go."""
        self._close_files()
        self.segments.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
