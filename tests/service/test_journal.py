"""The journal on real files: format, group commit, fsync policies, rotation,
recovery from torn tails, refusal of corruption, write errors, pruning.

Frames are built here independently of the module (``frame``), so the tests
also pin the on-disk format.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.messages import Adjust, CancelOrder, Deposit, Halt, PlaceOrder, ReplaceOrder
from engine.service import journal as journal_module
from engine.service.journal import (
    RECORD_BYTES_MAX, Journal, JournalCorrupt, JournalRecord, JournalWriteError, Segment,
)

HEADER_BYTES = 8


def command(seq: int):
    kind = seq % 6
    if kind == 0:
        return Deposit(2 + seq % 3, "USD", 1_000 + seq, ref=f"dep-{seq}")
    if kind == 1:
        return PlaceOrder(3, f"c-{seq}", "ABC-USD", "buy" if seq % 2 else "sell",
                          price=100 + seq % 9, qty=1 + seq % 7)
    if kind == 2:
        return CancelOrder(3, order_id=seq)
    if kind == 3:
        return ReplaceOrder(4, order_id=seq, qty=2)
    if kind == 4:
        return Adjust(5, "ABC", -seq, admin="ops", reason=f"fix ünïcode {seq}")
    return Halt("ABC-USD")


def rec(seq: int) -> JournalRecord:
    return JournalRecord(seq, f"gw-{seq % 3}", 10_000 + seq, 1_700_000_000_000_000_000 + seq,
                         command(seq))


def recs(first: int, last: int) -> list[JournalRecord]:
    return [rec(s) for s in range(first, last + 1)]


def frame(record: JournalRecord) -> bytes:
    body = msgspec.msgpack.encode(record)
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def build(directory: Path, batches: list[list[JournalRecord]], **kw) -> None:
    with Journal(directory, **kw) as journal:
        for batch in batches:
            journal.append(batch)


def reopen(directory: Path, **kw) -> tuple[Journal, int]:
    journal = Journal(directory, **kw)
    return journal, journal.open()


def read_all(directory: Path) -> list[JournalRecord]:
    journal, _ = reopen(directory)
    try:
        return list(journal.read())
    finally:
        journal.close()


def snapshot_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


class Counter:
    """Wraps an os function, counting calls on the journal's files."""

    def __init__(self, monkeypatch, name: str):
        self.calls = 0
        self.real = getattr(os, name)
        monkeypatch.setattr(os, name, self)

    def __call__(self, *args):
        self.calls += 1
        return self.real(*args)


# ------------------------------------------------------------------ format
def test_format_on_disk(tmp_path):
    records = recs(1, 3)
    build(tmp_path, [records])
    [segment] = tmp_path.iterdir()
    assert segment.name == "00000000000000000001.wal"
    assert segment.read_bytes() == b"".join(frame(r) for r in records)


def test_empty_journal(tmp_path):
    journal, last_seq = reopen(tmp_path / "new")
    assert last_seq == 0
    assert list(journal.read()) == []
    assert journal.segments() == []
    journal.append(recs(1, 2))
    journal.close()
    assert read_all(tmp_path / "new") == recs(1, 2)


def test_round_trip_across_rotations(tmp_path):
    sizes = [1, 7, 30, 3, 12]
    batches, seq = [], 0
    while seq < 600:
        size = sizes[len(batches) % len(sizes)]
        batches.append(recs(seq + 1, seq + size))
        seq += size
    build(tmp_path, batches, segment_bytes_max=2_000)
    records = [r for batch in batches for r in batch]

    journal, last_seq = reopen(tmp_path)
    assert last_seq == records[-1].seq
    segments = journal.segments()
    assert len(segments) >= 5
    batch_starts = {batch[0].seq for batch in batches}
    for segment in segments:
        assert segment.path.name == f"{segment.first_seq:020d}.wal"
        assert segment.first_seq in batch_starts            # never inside a batch
    for segment in segments[:-1]:                           # rotated once past the limit
        assert segment.path.stat().st_size >= 2_000
    assert list(journal.read()) == records
    for from_seq, to_seq in [(1, 1), (2, 77), (150, 151), (333, 600), (599, None), (590, 10**9)]:
        expected = [r for r in records if r.seq >= from_seq and (to_seq is None or r.seq <= to_seq)]
        assert list(journal.read(from_seq, to_seq)) == expected
    journal.append(recs(last_seq + 1, last_seq + 5))          # continues after reopen
    journal.close()
    assert read_all(tmp_path) == records + recs(last_seq + 1, last_seq + 5)


def test_context_manager_opens_and_closes(tmp_path):
    with Journal(tmp_path) as journal:
        assert journal.last_seq == 0
        journal.append(recs(1, 4))
        assert journal.last_seq == 4
    with Journal(tmp_path) as journal:
        assert journal.last_seq == 4
        assert [r.seq for r in journal.read()] == [1, 2, 3, 4]


# ----------------------------------------------------------- group commit
def test_group_commit_is_one_write_and_one_fsync(tmp_path, monkeypatch):
    journal, _ = reopen(tmp_path, fsync="always")
    journal.append(recs(1, 1))                # the segment exists: no rotation below
    writes = Counter(monkeypatch, "write")
    syncs = Counter(monkeypatch, "fdatasync")
    journal.append(recs(2, 301))
    assert writes.calls == 1
    assert syncs.calls == 1
    journal.close()
    assert read_all(tmp_path) == recs(1, 301)


def test_short_writes_are_continued(tmp_path, monkeypatch):
    journal, _ = reopen(tmp_path)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:37])))
    journal.append(recs(1, 50))
    monkeypatch.undo()
    journal.close()
    assert read_all(tmp_path) == recs(1, 50)


def test_fsync_off_never_syncs_records(tmp_path, monkeypatch):
    journal, _ = reopen(tmp_path, fsync="off")
    journal.append(recs(1, 1))
    syncs = Counter(monkeypatch, "fdatasync")
    for seq in range(2, 50):
        journal.append([rec(seq)])
    assert not journal.sync_due()
    journal.close()
    assert syncs.calls == 0


def test_fsync_batch_syncs_at_most_once_per_interval(tmp_path, monkeypatch):
    now = [1_000_000_000]
    monkeypatch.setattr(journal_module, "_monotonic_ns", lambda: now[0])
    journal, _ = reopen(tmp_path, fsync="batch", fsync_interval_ms=5)
    syncs = Counter(monkeypatch, "fdatasync")
    journal.append(recs(1, 2))                 # idle before: the first batch syncs at once
    assert syncs.calls == 1
    assert not journal.sync_due()
    now[0] += 1_000_000                        # +1 ms
    journal.append(recs(3, 4))
    assert syncs.calls == 1
    assert not journal.sync_due()
    now[0] += 4_000_000                        # 5 ms since the last sync: due
    assert journal.sync_due()
    journal.sync()                             # the server's timer
    assert syncs.calls == 2
    assert not journal.sync_due()
    now[0] += 6_000_000
    assert not journal.sync_due()              # nothing unsynced
    journal.append(recs(5, 5))                 # > interval since the last sync: syncs now
    assert syncs.calls == 3
    now[0] += 1_000_000
    journal.append(recs(6, 6))
    journal.close()                            # close syncs what is left
    assert syncs.calls == 4


def test_append_checks_seqs_and_sizes(tmp_path):
    journal, _ = reopen(tmp_path)
    journal.append(recs(1, 3))
    with pytest.raises(AssertionError):
        journal.append(recs(5, 6))             # gap
    with pytest.raises(AssertionError):
        journal.append([rec(4), rec(6)])       # gap inside the batch
    with pytest.raises(AssertionError):
        journal.append(recs(3, 4))             # repeat
    huge = JournalRecord(4, "gw", 1, 0, Deposit(2, "USD", 1, ref="x" * RECORD_BYTES_MAX))
    with pytest.raises(ValueError, match="RECORD_BYTES_MAX"):
        journal.append([huge])
    journal.append([])
    journal.append(recs(4, 4))
    journal.close()
    assert read_all(tmp_path) == recs(1, 4)


# -------------------------------------------------------------- torn tails
def make_base(directory: Path) -> tuple[list[JournalRecord], Segment, int]:
    """Three segments; the last one holds records 21..25, each its own batch.
    Returns the records, the last segment and the offset of its last record."""
    batches = [recs(1, 10), recs(11, 20)] + [[rec(s)] for s in range(21, 26)]
    records = [r for batch in batches for r in batch]
    with Journal(directory, segment_bytes_max=1) as journal:   # every batch fills a segment
        for batch in batches[:3]:
            journal.append(batch)
    with Journal(directory, segment_bytes_max=10**6) as journal:
        for batch in batches[3:]:
            journal.append(batch)
        last = journal.segments()[-1]
    assert last.first_seq == 21
    last_offset = sum(len(frame(r)) for r in records[20:24])
    return records, last, last_offset


def test_torn_last_record_at_every_cut_point(tmp_path, caplog):
    base = tmp_path / "base"
    records, last, last_offset = make_base(base)
    end = last.path.stat().st_size
    assert end - last_offset == len(frame(records[-1]))
    for cut in range(last_offset + 1, end):
        directory = tmp_path / f"cut-{cut}"
        shutil.copytree(base, directory)
        segment = directory / last.path.name
        os.truncate(segment, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.service.journal"):
            journal, last_seq = reopen(directory)
        assert last_seq == 24, cut
        assert journal.truncated_bytes == cut - last_offset
        assert segment.stat().st_size == last_offset
        [warning] = caplog.records
        message = warning.getMessage()
        assert str(segment) in message
        assert f"offset {last_offset}" in message
        assert f"truncating {cut - last_offset} bytes" in message
        journal.append([rec(25)])                 # the next append continues
        journal.close()
        assert read_all(directory) == records
        shutil.rmtree(directory)


def test_torn_tail_truncated_also_when_cut_exactly_at_a_record(tmp_path):
    records, last, last_offset = make_base(tmp_path)
    os.truncate(last.path, last_offset)           # a clean cut: nothing torn
    journal, last_seq = reopen(tmp_path)
    assert (last_seq, journal.truncated_bytes) == (24, 0)
    assert list(journal.read()) == records[:24]


def test_bad_checksum_of_the_very_last_record_is_torn(tmp_path):
    records, last, last_offset = make_base(tmp_path)
    data = bytearray(last.path.read_bytes())
    data[-1] ^= 0x40
    last.path.write_bytes(bytes(data))
    journal, last_seq = reopen(tmp_path)
    assert last_seq == 24
    assert journal.truncated_bytes == len(data) - last_offset
    assert list(journal.read()) == records[:24]


def test_zero_filled_tail_is_torn(tmp_path):
    """A crash can leave the file's new size on disk but not its data: zeros."""
    records, last, _ = make_base(tmp_path)
    size = last.path.stat().st_size
    with open(last.path, "ab") as f:
        f.write(bytes(5000))
    journal, last_seq = reopen(tmp_path)
    assert (last_seq, journal.truncated_bytes) == (25, 5000)
    assert last.path.stat().st_size == size
    assert list(journal.read()) == records


def test_a_torn_first_batch_leaves_an_empty_last_segment(tmp_path):
    build(tmp_path, [recs(1, 5), recs(6, 9)], segment_bytes_max=1)
    second = tmp_path / "00000000000000000006.wal"
    os.truncate(second, 3)
    journal, last_seq = reopen(tmp_path, segment_bytes_max=1)
    assert (last_seq, journal.truncated_bytes) == (5, 3)
    journal.append(recs(6, 7))
    journal.close()
    assert read_all(tmp_path) == recs(1, 7)
    assert [s.first_seq for s in Journal(tmp_path).segments()] == [1, 6]


# ------------------------------------------------------------- corruption
def record_offset(records: list[JournalRecord], index: int) -> int:
    return sum(len(frame(r)) for r in records[:index])


def assert_corrupt(directory: Path, path: Path, offset: int, match: str = "") -> JournalCorrupt:
    before = snapshot_files(directory)
    with pytest.raises(JournalCorrupt, match=match) as info:
        reopen(directory)
    assert str(path) in str(info.value)
    assert f"byte offset {offset}" in str(info.value)
    assert (info.value.path, info.value.offset) == (path, offset)
    assert snapshot_files(directory) == before            # nothing truncated
    return info.value


def test_corrupt_middle_record(tmp_path):
    records = recs(1, 20)
    build(tmp_path, [records])
    segment = tmp_path / "00000000000000000001.wal"
    offset = record_offset(records, 7)
    data = bytearray(segment.read_bytes())
    data[offset + HEADER_BYTES + 5] ^= 0x01                 # one bit of record 8's body
    segment.write_bytes(bytes(data))
    assert_corrupt(tmp_path, segment, offset, "checksum mismatch")


def test_corrupt_length_with_valid_records_after_it_is_not_torn(tmp_path):
    """A flipped length that points past the end looks like a short body; the
    valid records after it show it is corruption, and none of them is cut."""
    records = recs(1, 20)
    build(tmp_path, [records])
    segment = tmp_path / "00000000000000000001.wal"
    offset = record_offset(records, 15)
    data = bytearray(segment.read_bytes())
    struct.pack_into("<I", data, offset, len(data))         # within the limit, past the end
    segment.write_bytes(bytes(data))
    assert_corrupt(tmp_path, segment, offset, "short body")


def test_torn_record_in_an_earlier_segment_is_corrupt(tmp_path):
    build(tmp_path, [recs(1, 5), recs(6, 9)], segment_bytes_max=1)
    first = tmp_path / "00000000000000000001.wal"
    size = first.stat().st_size
    os.truncate(first, size - 2)
    assert_corrupt(tmp_path, first, record_offset(recs(1, 5), 4), "short body")


def test_seq_gap_across_segments(tmp_path):
    build(tmp_path, [recs(1, 5), recs(6, 9), recs(10, 12)], segment_bytes_max=1)
    (tmp_path / "00000000000000000006.wal").unlink()
    assert_corrupt(tmp_path, tmp_path / "00000000000000000010.wal", 0, "gap")


def test_segment_name_disagreeing_with_its_records(tmp_path):
    build(tmp_path, [recs(1, 5), recs(6, 9)], segment_bytes_max=1)
    second = tmp_path / "00000000000000000006.wal"
    second.write_bytes(b"".join(frame(r) for r in recs(7, 9)))
    assert_corrupt(tmp_path, second, 0, "record seq 7 where 6 was expected")


def test_seq_gap_inside_a_segment(tmp_path):
    segment = tmp_path / "00000000000000000001.wal"
    segment.write_bytes(b"".join(frame(rec(s)) for s in (1, 2, 4, 5)))
    offset = len(frame(rec(1))) + len(frame(rec(2)))
    assert_corrupt(tmp_path, segment, offset, "record seq 4 where 3 was expected")


def test_valid_checksum_but_undecodable_is_corrupt_even_at_the_tail(tmp_path):
    records = recs(1, 3)
    build(tmp_path, [records])
    segment = tmp_path / "00000000000000000001.wal"
    body = b"\x93\x01\x02\x03"                                 # msgpack [1, 2, 3]
    with open(segment, "ab") as f:
        f.write(struct.pack("<II", len(body), zlib.crc32(body)) + body)
    assert_corrupt(tmp_path, segment, record_offset(records, 3), "undecodable")


def test_garbage_length_allocates_nothing_big(tmp_path):
    records = recs(1, 10)
    build(tmp_path, [records])
    segment = tmp_path / "00000000000000000001.wal"
    good = segment.read_bytes()
    for where, data in [
        ("middle", good[:record_offset(records, 4)] + struct.pack("<I", 0xFFFF_FFFF)
         + good[record_offset(records, 4) + 4:]),
        ("tail", good + struct.pack("<II", 0xFFFF_FFF0, 0) + b"garbage"),
        ("zero length", good + struct.pack("<II", 0, 0) + b"x"),
    ]:
        segment.write_bytes(data)
        offset = record_offset(records, 4) if where == "middle" else len(good)
        tracemalloc.start()
        try:
            assert_corrupt(tmp_path, segment, offset, "out of range")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, (where, peak)


# ------------------------------------------------------------ write errors
def fail_once(monkeypatch, name: str, err: int = errno.ENOSPC, after_bytes: int | None = None):
    """os.<name> raises OSError(err) once; with ``after_bytes`` (os.write only)
    the first call first writes that many bytes (a short write), the next raises."""
    real = getattr(os, name)
    state = {"armed": True, "short_done": after_bytes is None}

    def fake(fd, *args):
        if state["armed"]:
            if not state["short_done"]:
                state["short_done"] = True
                return real(fd, bytes(args[0][:after_bytes]))
            state["armed"] = False
            raise OSError(err, os.strerror(err))
        return real(fd, *args)
    monkeypatch.setattr(os, name, fake)


@pytest.mark.parametrize("after_bytes", [None, 1, 500])
def test_write_error_leaves_only_complete_batches(tmp_path, monkeypatch, after_bytes):
    journal, _ = reopen(tmp_path)
    journal.append(recs(1, 10))
    journal.append(recs(11, 20))
    size = (tmp_path / "00000000000000000001.wal").stat().st_size
    fail_once(monkeypatch, "write", after_bytes=after_bytes)
    with pytest.raises(JournalWriteError) as info:
        journal.append(recs(21, 40))
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert not journal.failed
    assert journal.last_seq == 20
    assert (tmp_path / "00000000000000000001.wal").stat().st_size == size

    fresh, last_seq = reopen(tmp_path)
    assert (last_seq, fresh.truncated_bytes) == (20, 0)
    assert list(fresh.read()) == recs(1, 20)
    fresh.close()

    journal.append(recs(21, 40))                 # the fault is gone: the same batch goes in
    journal.close()
    assert read_all(tmp_path) == recs(1, 40)


def test_write_error_when_even_the_cut_back_fails(tmp_path, monkeypatch):
    """Then the journal refuses appends; a restart sees the whole batches before
    and, of the failed one, at most complete records (never acknowledged, like
    a crash between write and reply); the torn rest is truncated."""
    journal, _ = reopen(tmp_path)
    journal.append(recs(1, 10))
    fail_once(monkeypatch, "write", after_bytes=len(frame(rec(11))) + 3)
    fail_once(monkeypatch, "ftruncate", errno.EIO)
    with pytest.raises(JournalWriteError):
        journal.append(recs(11, 20))
    assert journal.failed
    with pytest.raises(JournalWriteError, match="refuses"):
        journal.append(recs(11, 20))
    monkeypatch.undo()
    journal.close()
    fresh, last_seq = reopen(tmp_path)
    assert last_seq == 11
    assert fresh.truncated_bytes == 3
    assert list(fresh.read()) == recs(1, 11)


def test_fsync_error_takes_the_batch_back_and_fails_the_journal(tmp_path, monkeypatch):
    journal, _ = reopen(tmp_path, fsync="always")
    journal.append(recs(1, 10))
    size = (tmp_path / "00000000000000000001.wal").stat().st_size
    fail_once(monkeypatch, "fdatasync", errno.EIO)
    with pytest.raises(JournalWriteError, match="fsync") as info:
        journal.append(recs(11, 12))
    assert info.value.__cause__.errno == errno.EIO
    assert journal.failed
    assert journal.last_seq == 10
    assert (tmp_path / "00000000000000000001.wal").stat().st_size == size
    with pytest.raises(JournalWriteError):
        journal.append(recs(11, 12))
    with pytest.raises(JournalWriteError):
        journal.sync()
    journal.close()
    assert read_all(tmp_path) == recs(1, 10)


def test_segment_creation_error_is_retryable(tmp_path, monkeypatch):
    journal, _ = reopen(tmp_path, segment_bytes_max=1)
    journal.append(recs(1, 3))
    real_open = os.open

    def no_new_files(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "no space")
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", no_new_files)
    with pytest.raises(JournalWriteError):
        journal.append(recs(4, 5))
    assert not journal.failed
    monkeypatch.undo()
    journal.append(recs(4, 5))
    journal.close()
    assert read_all(tmp_path) == recs(1, 5)


# ------------------------------------------------------------------ prune
def test_prune(tmp_path):
    batches = [recs(1, 5), recs(6, 9), recs(10, 14), recs(15, 15), recs(16, 20)]
    build(tmp_path, batches, segment_bytes_max=1)
    journal, _ = reopen(tmp_path, segment_bytes_max=1)
    assert [s.first_seq for s in journal.segments()] == [1, 6, 10, 15, 16]
    assert journal.prune(5) == []                        # 1..5 holds 5
    assert journal.prune(6) == [tmp_path / "00000000000000000001.wal"]
    assert journal.prune(9) == []                        # 6..9 holds 9
    assert journal.prune(10) == [tmp_path / "00000000000000000006.wal"]
    assert journal.first_seq == 10
    assert [r.seq for r in journal.read(10)] == list(range(10, 21))
    with pytest.raises(ValueError, match="pruned"):
        journal.read(9)
    assert len(journal.prune(10**9)) == 2                # never the active segment
    assert [s.first_seq for s in journal.segments()] == [16]
    journal.append(recs(21, 22))
    journal.close()
    fresh, last_seq = reopen(tmp_path)
    assert (fresh.first_seq, last_seq) == (16, 22)
    assert list(fresh.read(16)) == recs(16, 22)


# ------------------------------------------------------------ properties
@pytest.fixture(scope="module")
def base_journal(tmp_path_factory):
    directory = tmp_path_factory.mktemp("base")
    batches = [recs(1, 8), recs(9, 12), recs(13, 13), recs(14, 20)]
    build(directory, batches, segment_bytes_max=200)
    return directory, [r for b in batches for r in b]


def torn_frames():
    """A prefix (never the whole) of a valid next frame, then maybe more bytes."""
    return st.builds(lambda cut, more: frame(rec(21))[:cut] + more,
                     st.integers(1, len(frame(rec(21))) - 1), st.binary(max_size=40))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(st.binary(min_size=1, max_size=300), torn_frames(),
                         st.integers(1, 3000).map(bytes)))
def test_garbage_tail_is_truncated_or_reported_never_lost_prefix(base_journal, garbage):
    assume(not garbage.startswith(frame(rec(21))))       # a whole next record is no garbage
    base, records = base_journal
    with tempfile.TemporaryDirectory(dir=base.parent) as scratch:
        directory = Path(scratch) / "j"
        shutil.copytree(base, directory)
        last = Journal(directory).segments()[-1].path
        good = last.read_bytes()
        last.write_bytes(good + garbage)
        journal = Journal(directory)
        try:
            journal.open()
        except JournalCorrupt as exc:
            assert exc.path == last
            assert last.read_bytes() == good + garbage       # nothing cut
            return
        try:
            assert journal.last_seq == 20
            assert journal.truncated_bytes == len(garbage)
            assert last.read_bytes() == good
            assert list(journal.read()) == records
        finally:
            journal.close()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_is_corrupt_or_a_torn_last_record(base_journal, data):
    base, records = base_journal
    with tempfile.TemporaryDirectory(dir=base.parent) as scratch:
        directory = Path(scratch) / "j"
        shutil.copytree(base, directory)
        segments = Journal(directory).segments()
        segment = data.draw(st.sampled_from(segments))
        good = segment.path.read_bytes()
        position = data.draw(st.integers(0, len(good) - 1))
        flipped = bytearray(good)
        flipped[position] ^= data.draw(st.integers(1, 255))
        segment.path.write_bytes(bytes(flipped))
        is_last = segment == segments[-1]
        last_offset = len(good) - len(frame(records[-1]))
        journal = Journal(directory)
        try:
            journal.open()
        except JournalCorrupt as exc:
            assert exc.path == segment.path
            assert segment.path.read_bytes() == bytes(flipped)
            return
        try:                        # accepted: only as a torn last record, cut off
            assert is_last and position >= last_offset, position
            assert journal.last_seq == 19
            assert segment.path.read_bytes() == good[:last_offset]
            assert list(journal.read()) == records[:-1]
        finally:
            journal.close()


# -------------------------------------------------------- a full filesystem
@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: a failed test's traceback may still hold the journal's open fd.
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False, timeout=30)


def test_full_filesystem(tiny_tmpfs):
    directory = tiny_tmpfs / "journal"
    journal, _ = reopen(directory, fsync="always", segment_bytes_max=16 << 10)
    seq = 0
    for _ in range(10_000):
        batch = recs(seq + 1, seq + 25)
        try:
            journal.append(batch)
        except JournalWriteError as exc:
            assert isinstance(exc.__cause__, OSError)
            assert exc.__cause__.errno in (errno.ENOSPC, errno.EDQUOT)
            break
        seq += 25
    else:
        pytest.fail("a 64 KiB tmpfs never filled up")
    assert seq > 0
    assert not journal.failed
    assert journal.last_seq == seq
    with pytest.raises(JournalWriteError):                   # still full: refused again
        journal.append(recs(seq + 1, seq + 25))
    fresh, last_seq = reopen(directory)
    assert (last_seq, fresh.truncated_bytes) == (seq, 0)
    assert list(fresh.read()) == recs(1, seq)
    fresh.close()
    journal.close()
