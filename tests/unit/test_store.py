"""The message store contract (store/api.py), run against every implementation, plus segment-file specifics.

Every contract test goes through the one parametrized ``store_factory`` fixture ("memory", "segments").
The segment store gets a 300-byte segment size so that a handful of records already rolls over to a new
segment and acks exercise segment deletion. ``reopen()`` is a clean restart: the segment store is closed
and a new one opened on the same directory; the memory store is the same object (its "restart" is
``recovered()``, which forgets transient messages).

Tests named ``test_segments_*`` are for the segment store only: on-disk format, torn writes, group commit.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.core.message import Message
from conveyor.store.api import MessageStore, Position
from conveyor.store.memory import MemoryMessageStore
from conveyor.store.segments import (
    DATA_DIR_FORMAT,
    HEADER,
    FormatError,
    SegmentMessageStore,
    check_data_dir,
)
from conveyor.store.sync import GroupCommitter

SMALL_SEGMENT = 300
FIRST = Position(0, 0)
PROPERTIES = b"\x90\x00\x0atext/plain\x02"  # content-type + delivery-mode 2, as on the wire


def msg(
    body: str | bytes, persistent: bool = True, exchange: str = "amq.direct", routing_key: str = "orders"
) -> Message:
    data = body.encode() if isinstance(body, str) else body
    return Message(exchange, routing_key, PROPERTIES, data, persistent=persistent)


def bodies(records: Iterator[tuple[Position, Message, bool]]) -> list[bytes]:
    return [m.body for _, m, _ in records]


class StoreHarness:
    """One store under test and a clean restart of it."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.store: MessageStore = self._open()

    def _open(self) -> MessageStore:
        if self.kind == "memory":
            return MemoryMessageStore()
        return SegmentMessageStore(self.directory, segment_size=SMALL_SEGMENT)

    def reopen(self) -> MessageStore:
        if self.kind == "segments":
            self.store.close()
            self.store = self._open()
        return self.store


@pytest.fixture(params=["memory", "segments"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    harness = StoreHarness(request.param, tmp_path / "queue")
    yield harness
    harness.store.close()


# -- the contract, for every implementation -------------------------------------------------------


def test_append_positions_increase_and_read_back(store_factory: StoreHarness) -> None:
    store = store_factory.store
    positions = [store.append(msg(f"m{i:02d}", exchange=f"x{i}", routing_key=f"rk.{i}")) for i in range(20)]
    assert positions == sorted(positions)
    assert len(set(positions)) == 20
    assert store.count == 20
    for i, position in enumerate(positions):
        message = store.read(position)
        assert (message.exchange, message.routing_key, message.properties, message.body) == (
            f"x{i}", f"rk.{i}", PROPERTIES, f"m{i:02d}".encode(),
        )
        assert message.persistent


def test_positions_keep_increasing_after_reopen(store_factory: StoreHarness) -> None:
    store = store_factory.store
    before = [store.append(msg(f"a{i}")) for i in range(7)]
    store = store_factory.reopen()
    after = [store.append(msg(f"b{i}")) for i in range(7)]
    assert before + after == sorted(before + after)
    assert bodies(store.recovered()) == [f"a{i}".encode() for i in range(7)] + [f"b{i}".encode() for i in range(7)]


def test_delete_is_idempotent(store_factory: StoreHarness) -> None:
    store = store_factory.store
    positions = [store.append(msg(f"m{i}")) for i in range(3)]
    store.delete(positions[1])
    store.delete(positions[1])
    assert store.count == 2
    assert bodies(store.read_from(FIRST, None)) == [b"m0", b"m2"]
    store = store_factory.reopen()
    store.delete(positions[1])
    assert store.count == 2
    assert bodies(store.recovered()) == [b"m0", b"m2"]


def test_read_from_order_and_limit(store_factory: StoreHarness) -> None:
    store = store_factory.store
    positions = [store.append(msg(f"m{i:02d}")) for i in range(12)]
    assert [p for p, _, _ in store.read_from(FIRST, None)] == positions
    assert [p for p, _, _ in store.read_from(positions[3], 4)] == positions[3:7]
    assert list(store.read_from(positions[3], 0)) == []
    assert [p for p, _, _ in store.read_from(positions[9], 100)] == positions[9:]
    store.delete(positions[4])
    store.delete(positions[5])
    assert [p for p, _, _ in store.read_from(positions[3], 3)] == [positions[3], positions[6], positions[7]]
    # A deleted position as the start: reading begins at the next live record.
    assert [p for p, _, _ in store.read_from(positions[4], 1)] == [positions[6]]
    assert all(not redelivered for _, _, redelivered in store.read_from(FIRST, None))


def test_read_from_persistent_only(store_factory: StoreHarness) -> None:
    store = store_factory.store
    for i in range(10):
        store.append(msg(f"m{i}", persistent=i % 3 != 0), persistent=i % 3 != 0)
    assert bodies(store.read_from(FIRST, None)) == [f"m{i}".encode() for i in range(10) if i % 3 != 0]
    assert bodies(store.read_from(FIRST, None, persistent_only=False)) == [f"m{i}".encode() for i in range(10)]
    assert bodies(store.read_from(FIRST, 2, persistent_only=False)) == [b"m0", b"m1"]


def test_transient_records_are_not_recovered_after_reopen(store_factory: StoreHarness) -> None:
    store = store_factory.store
    for i in range(10):
        store.append(msg(f"m{i}", persistent=i % 2 == 0), persistent=i % 2 == 0)
    store = store_factory.reopen()
    expected = [f"m{i}".encode() for i in range(0, 10, 2)]
    assert bodies(store.recovered()) == expected
    assert store.count == 5
    # Not even the broker's own backlog read sees them any more.
    assert bodies(store.read_from(FIRST, None, persistent_only=False)) == expected
    store.append(msg("late", persistent=False), persistent=False)
    assert bodies(store.read_from(FIRST, None, persistent_only=False)) == [*expected, b"late"]


def test_persistent_records_survive_reopen_with_their_content(store_factory: StoreHarness) -> None:
    store = store_factory.store
    positions = [store.append(msg(bytes(range(i, i + 30)), exchange="", routing_key=f"k{i}")) for i in range(15)]
    for position in positions[::4]:
        store.delete(position)
    store = store_factory.reopen()
    recovered = list(store.recovered())
    kept = [i for i in range(15) if i % 4]
    assert [p for p, _, _ in recovered] == [positions[i] for i in kept]
    for (_, message, redelivered), i in zip(recovered, kept, strict=True):
        assert (message.exchange, message.routing_key, message.properties, message.body) == (
            "", f"k{i}", PROPERTIES, bytes(range(i, i + 30)),
        )
        assert message.persistent
        assert not redelivered
    assert store.count == len(kept)


def test_delivered_marker_becomes_redelivered_after_reopen(store_factory: StoreHarness) -> None:
    store = store_factory.store
    positions = [store.append(msg(f"m{i}")) for i in range(8)]
    for i in (1, 2, 6):
        store.mark_delivered(positions[i])
    store.mark_delivered(positions[7])
    store.delete(positions[7])  # delivered, then acked: gone for good
    store = store_factory.reopen()
    assert [(m.body, redelivered) for _, m, redelivered in store.recovered()] == [
        (f"m{i}".encode(), i in (1, 2, 6)) for i in range(7)
    ]


def test_delete_from(store_factory: StoreHarness) -> None:
    store = store_factory.store
    positions = [store.append(msg(f"m{i}", persistent=i != 7), persistent=i != 7) for i in range(12)]
    store.delete(positions[5])
    assert store.delete_from(positions[4]) == 7  # 4, 6..11 (5 was already gone; 7 is transient, still live)
    assert store.count == 4
    assert bodies(store.read_from(FIRST, None, persistent_only=False)) == [b"m0", b"m1", b"m2", b"m3"]
    assert store.delete_from(positions[4]) == 0
    store = store_factory.reopen()
    assert bodies(store.recovered()) == [b"m0", b"m1", b"m2", b"m3"]
    assert store.delete_from(FIRST) == 4
    assert store.count == 0
    store = store_factory.reopen()
    assert list(store.recovered()) == []


def test_count_follows_appends_and_deletes(store_factory: StoreHarness) -> None:
    store = store_factory.store
    assert store.count == 0
    positions = [store.append(msg(f"m{i}")) for i in range(9)]
    assert store.count == 9
    for n, position in enumerate(positions, 1):
        store.delete(position)
        assert store.count == 9 - n
    store = store_factory.reopen()
    assert store.count == 0
    assert list(store.recovered()) == []


def test_sync_calls_back(store_factory: StoreHarness) -> None:
    store = store_factory.store
    store.append(msg("m"))
    called: list[int] = []
    store.sync(lambda: called.append(1))
    assert called == [1]


def test_destroy(store_factory: StoreHarness) -> None:
    store = store_factory.store
    for i in range(10):
        store.append(msg(f"m{i}"))
    store.destroy()
    assert store.count == 0
    assert list(store.read_from(FIRST, None, persistent_only=False)) == []
    if store_factory.kind == "segments":
        assert not store_factory.directory.exists()


# -- segment store only ------------------------------------------------------------------------------


def segment_files(directory: Path, kind: str = "msgs") -> list[str]:
    return sorted(p.name for p in directory.glob(f"{kind}.*"))


_opened: list[SegmentMessageStore] = []


def open_segments(directory: Path, segment_size: int = SMALL_SEGMENT) -> SegmentMessageStore:
    store = SegmentMessageStore(directory, segment_size=segment_size)
    _opened.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_segment_stores() -> Iterator[None]:
    """A failed assertion must not leave files open (filterwarnings=error turns that into noise)."""
    yield
    while _opened:
        _opened.pop().close()


def test_segments_files_are_deleted_once_all_records_are_acked(tmp_path: Path) -> None:
    store = open_segments(tmp_path)
    positions = [store.append(msg(f"message {i:02d}")) for i in range(30)]
    numbers = sorted({p.segment for p in positions})
    assert len(numbers) >= 4, "the test wants several segments"
    first, newest = numbers[0], numbers[-1]
    # Acking all but one record of the first segment keeps it; the last ack removes it and its ack log.
    in_first = [p for p in positions if p.segment == first]
    for position in in_first[:-1]:
        store.delete(position)
    assert f"msgs.{first:010d}" in segment_files(tmp_path)
    assert f"acks.{first:010d}" in segment_files(tmp_path, "acks")
    store.delete(in_first[-1])
    assert f"msgs.{first:010d}" not in segment_files(tmp_path)
    assert f"acks.{first:010d}" not in segment_files(tmp_path, "acks")
    # Ack everything: every older segment goes; the newest may stay (it is the one being appended to).
    for position in positions:
        store.delete(position)
    assert segment_files(tmp_path) in ([], [f"msgs.{newest:010d}"])
    assert store.count == 0
    # Appending after that continues with increasing positions, and a restart finds exactly that.
    later = store.append(msg("later"))
    assert later > positions[-1]
    store.close()
    store = open_segments(tmp_path)
    assert bodies(store.recovered()) == [b"later"]


def test_segments_emptied_after_a_reopen_then_appended_to(tmp_path: Path) -> None:
    store = open_segments(tmp_path)
    positions = [store.append(msg(f"message {i:02d}")) for i in range(12)]
    newest = positions[-1].segment
    store.close()
    store = open_segments(tmp_path)
    for position in positions:
        store.delete(position)
    assert segment_files(tmp_path) in ([], [f"msgs.{newest:010d}"])
    again = store.append(msg("again"))
    assert again > positions[-1]
    assert bodies(store.read_from(FIRST, None)) == [b"again"]
    store.close()
    store = open_segments(tmp_path)
    assert bodies(store.recovered()) == [b"again"]


def test_segments_acked_old_segments_go_at_reopen(tmp_path: Path) -> None:
    store = open_segments(tmp_path)
    positions = [store.append(msg(f"message {i:02d}")) for i in range(20)]
    store.close()
    # Acks logged but the segments still on disk (as after a crash between ack and delete): simulate by
    # writing the ack entries of every record of the first segment by hand.
    first = positions[0].segment
    with open(tmp_path / f"acks.{first:010d}", "ab") as f:
        for position in positions:
            if position.segment == first:
                f.write(position.offset.to_bytes(4, "big"))
    store = open_segments(tmp_path)
    assert f"msgs.{first:010d}" not in segment_files(tmp_path)
    expected = [f"message {i:02d}".encode() for i, p in enumerate(positions) if p.segment != first]
    assert bodies(store.recovered()) == expected
    store.close()


def _three_records(directory: Path) -> tuple[list[Position], bytes]:
    store = open_segments(directory, segment_size=1 << 20)
    positions = [store.append(msg(f"record number {i}")) for i in range(3)]
    store.close()
    assert len({p.segment for p in positions}) == 1
    return positions, (directory / f"msgs.{positions[0].segment:010d}").read_bytes()


def test_segments_torn_last_record_is_dropped_and_truncated_at_every_offset(tmp_path: Path) -> None:
    positions, original = _three_records(tmp_path / "original")
    name = f"msgs.{positions[0].segment:010d}"
    last = positions[2].offset
    assert last < len(original)
    for cut in range(last + 1, len(original)):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / name).write_bytes(original[:cut])
        store = open_segments(directory, segment_size=1 << 20)
        assert bodies(store.recovered()) == [b"record number 0", b"record number 1"], cut
        assert store.count == 2
        assert (directory / name).stat().st_size == last, cut
        store.append(msg("after the tear"))
        store.close()
        store = open_segments(directory, segment_size=1 << 20)
        assert bodies(store.recovered()) == [b"record number 0", b"record number 1", b"after the tear"], cut
        store.close()


def test_segments_torn_header_is_rewritten(tmp_path: Path) -> None:
    positions, original = _three_records(tmp_path)
    path = tmp_path / f"msgs.{positions[0].segment:010d}"
    path.write_bytes(original[:5])
    store = open_segments(tmp_path, segment_size=1 << 20)
    assert list(store.recovered()) == []
    assert path.read_bytes() == HEADER
    store.append(msg("fresh"))
    store.close()
    store = open_segments(tmp_path, segment_size=1 << 20)
    assert bodies(store.recovered()) == [b"fresh"]
    store.close()


def test_segments_bad_crc_in_the_middle_drops_it_and_everything_after_it(tmp_path: Path) -> None:
    positions, original = _three_records(tmp_path)
    path = tmp_path / f"msgs.{positions[0].segment:010d}"
    corrupted = bytearray(original)
    corrupted[positions[2].offset - 3] ^= 0xFF  # a body byte of the middle record
    path.write_bytes(bytes(corrupted))
    store = open_segments(tmp_path, segment_size=1 << 20)
    assert bodies(store.recovered()) == [b"record number 0"]
    assert store.count == 1
    assert path.stat().st_size == positions[1].offset
    store.close()


def test_segments_torn_ack_entry_is_ignored(tmp_path: Path) -> None:
    positions, _ = _three_records(tmp_path)
    acks = tmp_path / f"acks.{positions[0].segment:010d}"
    acks.write_bytes(positions[0].offset.to_bytes(4, "big") + positions[2].offset.to_bytes(4, "big")[:2])
    store = open_segments(tmp_path, segment_size=1 << 20)
    assert bodies(store.recovered()) == [b"record number 1", b"record number 2"]
    assert store.count == 2
    store.close()


def test_segments_ack_after_a_torn_ack_entry_survives_a_restart(tmp_path: Path) -> None:
    positions, _ = _three_records(tmp_path)
    acks = tmp_path / f"acks.{positions[0].segment:010d}"
    acks.write_bytes(positions[2].offset.to_bytes(4, "big")[:2])  # a crash tore the ack of record 2
    store = open_segments(tmp_path, segment_size=1 << 20)
    assert bodies(store.recovered()) == [b"record number 0", b"record number 1", b"record number 2"]
    store.delete(positions[1])
    store.close()
    store = open_segments(tmp_path, segment_size=1 << 20)
    assert bodies(store.recovered()) == [b"record number 0", b"record number 2"]
    store.close()


def test_segments_ack_entries_past_a_torn_tail_do_not_apply_to_new_records(tmp_path: Path) -> None:
    # Record 2 was appended, delivered and acked, and the ack log reached the disk but the record did not
    # (page cache writeback has no order). The new record written at the same offset is a new message.
    positions, original = _three_records(tmp_path)
    path = tmp_path / f"msgs.{positions[0].segment:010d}"
    acks = tmp_path / f"acks.{positions[0].segment:010d}"
    acks.write_bytes((positions[2].offset | 0x80000000).to_bytes(4, "big") + positions[2].offset.to_bytes(4, "big"))
    path.write_bytes(original[: positions[2].offset + 5])
    store = open_segments(tmp_path, segment_size=1 << 20)
    assert bodies(store.recovered()) == [b"record number 0", b"record number 1"]
    new = store.append(msg("new message"))
    assert new == positions[2]  # same offset as the lost record
    assert store.count == 3
    assert bodies(store.read_from(FIRST, None)) == [b"record number 0", b"record number 1", b"new message"]
    store.close()
    store = open_segments(tmp_path, segment_size=1 << 20)
    assert [(m.body, r) for _, m, r in store.recovered()] == [
        (b"record number 0", False), (b"record number 1", False), (b"new message", False),
    ]
    store.close()


def test_segments_newer_format_version_is_refused(tmp_path: Path) -> None:
    positions, original = _three_records(tmp_path)
    path = tmp_path / f"msgs.{positions[0].segment:010d}"
    path.write_bytes(original[:4] + (2).to_bytes(2, "big") + original[6:])
    with pytest.raises(FormatError, match="upgrade"):
        open_segments(tmp_path)
    assert path.stat().st_size == len(original), "a newer file must not be touched"


def test_segments_not_a_segment_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "msgs.0000000001").write_bytes(b"GARBAGE-NOT-A-SEGMENT")
    with pytest.raises(FormatError):
        open_segments(tmp_path)


def test_check_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    check_data_dir(data_dir)
    assert (data_dir / "FORMAT").read_text().strip() == str(DATA_DIR_FORMAT)
    check_data_dir(data_dir)  # our own format: fine
    (data_dir / "FORMAT").write_text(f"{DATA_DIR_FORMAT + 1}\n")
    with pytest.raises(FormatError, match="upgrade"):
        check_data_dir(data_dir)
    (data_dir / "FORMAT").write_text("banana\n")
    with pytest.raises(FormatError):
        check_data_dir(data_dir)


def test_segments_flush_for_sync_covers_a_segment_closed_by_rollover(tmp_path: Path) -> None:
    # Group commit (sync.py) fsyncs exactly the descriptors flush_for_sync returns, then confirms every
    # message appended before. Records appended to a segment that was rolled over since the last sync must
    # be covered, or their confirms go out while they are only in the page cache.
    store = open_segments(tmp_path)
    store.sync(lambda: None)
    positions = [store.append(msg(f"message {i:02d}")) for i in range(8)]
    assert positions[0].segment != positions[-1].segment
    written = {os.stat(tmp_path / f"msgs.{n:010d}").st_ino for n in {p.segment for p in positions}}
    fds = store.flush_for_sync()
    covered = {os.fstat(fd).st_ino for fd in fds}
    assert written <= covered
    store.close()


def test_segments_group_commit_runs_callbacks_after_one_fsync(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[tuple[int, bool, int]], int, int]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(loop)
        store = SegmentMessageStore(tmp_path, committer=committer, segment_size=SMALL_SEGMENT)
        try:
            store.append(msg("one"))
            store.append(msg("two"))
            results: list[tuple[int, bool, int]] = []
            done = loop.create_future()
            for i in range(50):
                committer.when_synced(lambda ok, i=i: results.append((i, ok, committer.commits)))
            committer.when_synced(done.set_result)
            assert results == [], "callbacks wait for the fsync"
            assert await done is True
            first_commits = committer.commits
            # Writes after that need a commit of their own.
            store.append(msg("three"))
            again = loop.create_future()
            committer.when_synced(again.set_result)
            assert await again is True
            return results, first_commits, committer.commits
        finally:
            committer.close()
            store.close()

    results, first_commits, commits = asyncio.run(scenario())
    assert first_commits == 1
    assert commits == 2
    assert results == [(i, True, 1) for i in range(50)]


def test_segments_group_commit_with_nothing_dirty_calls_back_without_fsync(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, int]:
        committer = GroupCommitter(asyncio.get_running_loop())
        try:
            done = asyncio.get_running_loop().create_future()
            committer.when_synced(done.set_result)
            return await done, committer.commits
        finally:
            committer.close()

    assert asyncio.run(scenario()) == (True, 0)


class PipeSyncable:
    """A store whose "file" is a pipe: fsync on it fails with EINVAL, as on a broken disk."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def flush_for_sync(self) -> list[int]:
        return [self.read_fd]

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def test_segments_group_commit_reports_a_failed_fsync(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[list[bool], int]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(loop)
        broken = PipeSyncable()
        store = SegmentMessageStore(tmp_path, committer=committer)
        try:
            store.append(msg("one"))
            committer.mark_dirty(broken)
            results: list[bool] = []
            done = loop.create_future()
            committer.when_synced(results.append)
            committer.when_synced(done.set_result)
            await done
            return results, committer.commits
        finally:
            committer.close()
            store.close()
            broken.close()

    results, commits = asyncio.run(scenario())
    assert results == [False]
    assert commits == 1
    assert "fsync failed" in caplog.text
