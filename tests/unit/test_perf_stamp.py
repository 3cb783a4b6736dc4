"""``conveyor perf``: the 16-byte stamp in every message body, and the per-group loss/duplicate check."""

from __future__ import annotations

import struct

import pytest

from conveyor.perf.client import MAX_PRODUCERS, MAX_SEQ, STAMP_SIZE, pack_stamp, stamp_key, unpack_stamp
from conveyor.perf.run import Options, check_group


def test_stamp_is_16_bytes_and_round_trips() -> None:
    assert STAMP_SIZE == 16
    for producer, seq, sent in [(0, 1, 0), (1, 2, 1_700_000_000_123_456_789), (MAX_PRODUCERS - 1, MAX_SEQ, 2**64 - 1)]:
        raw = pack_stamp(producer, seq, sent)
        assert len(raw) == 16
        assert unpack_stamp(raw + b"padding") == (producer, seq, sent)


def test_stamp_layout_producer_in_top_16_bits() -> None:
    raw = pack_stamp(3, 5, 7)
    assert struct.unpack("!QQ", raw) == ((3 << 48) | 5, 7)
    assert stamp_key(1, 0) == 1 << 48


@pytest.mark.parametrize(("producer", "seq"), [(MAX_PRODUCERS, 1), (-1, 1), (0, MAX_SEQ + 1), (0, -1)])
def test_stamp_rejects_what_does_not_fit(producer: int, seq: int) -> None:
    with pytest.raises(ValueError):
        stamp_key(producer, seq)


def test_size_default_and_minimum_is_the_stamp() -> None:
    opts = Options(uri="amqp://localhost/")
    opts.normalise()
    assert opts.size == 16
    small = Options(uri="amqp://localhost/", size=8)
    small.normalise()
    assert small.size == 16 and small.notes


def test_too_many_producers_for_the_stamp() -> None:
    with pytest.raises(ValueError):
        Options(uri="amqp://localhost/", producers=MAX_PRODUCERS + 1, consumers=0).normalise()


def consumer(seen: dict[int, set[int]], redelivered: set[tuple[int, int]] | None = None) -> dict:
    """A consumer result as the worker reports it: per producer a little-endian bitmap of sequence numbers."""
    bitmaps = {}
    for pid, seqs in seen.items():
        bits = sum(1 << s for s in seqs)
        bitmaps[pid] = bits.to_bytes(max(1, (bits.bit_length() + 7) // 8), "little")
    return {"seen": bitmaps, "duplicates": 0, "redelivered_duplicates": 0, "redelivered_seen": redelivered or set()}


def producer(published: int, nacked: list[int] | None = None) -> dict:
    return {"published": published, "nacked": nacked or []}


def test_check_group_complete() -> None:
    result = check_group([consumer({0: {1, 2}}), consumer({0: {3}, 1: {1}})], {0: producer(3), 1: producer(1)})
    assert (result["consumed"], result["lost"], result["duplicates"]) == (4, 0, 0)


def test_check_group_counts_lost_and_overlap_between_consumers() -> None:
    result = check_group([consumer({0: {1, 2}}), consumer({0: {2}})], {0: producer(4, nacked=[4])})
    assert result["lost"] == 1  # 3 missing; 4 was nacked, so the broker never took it
    assert result["missing"] == ["producer 0: 1 missing, first seq 3"]
    assert result["duplicates"] == 1
    assert result["consumed"] == 2


def test_check_group_overlap_with_redelivered_flag_is_not_a_duplicate() -> None:
    result = check_group([consumer({0: {1}}), consumer({0: {1}}, redelivered={(0, 1)})], {0: producer(1)})
    assert (result["duplicates"], result["redelivered_duplicates"]) == (0, 1)


def test_fanout_groups_each_need_every_message() -> None:
    # Two queues, each consumed by one consumer: each queue alone must have 1..3.
    producers = {0: producer(3)}
    q0 = check_group([consumer({0: {1, 2, 3}})], producers)
    q1 = check_group([consumer({0: {1, 3}})], producers)
    assert (q0["lost"], q1["lost"]) == (0, 1)
    # Merged as one group (the default exchange), the same deliveries would be 2 duplicates, not a loss.
    merged = check_group([consumer({0: {1, 2, 3}}), consumer({0: {1, 3}})], producers)
    assert (merged["lost"], merged["duplicates"]) == (0, 2)
