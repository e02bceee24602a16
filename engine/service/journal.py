"""The journal: the append-only, checksummed record of every command, the source of truth.

The server appends each loop turn's commands here (one ``append``, one
``write()``) before it applies them or answers anyone; replay feeds the journal
back through a fresh engine.  This module owns the files and their format; it
never interprets a command, never touches the engine, and does no asyncio: the
server calls it synchronously from its event loop.

On disk: a directory of segments, each named by the first seq it holds
(``00000000000000000001.wal``), each a run of records::

    u32 little-endian body length | u32 little-endian zlib.crc32(body) | body

where the body is a msgpack ``JournalRecord`` (``[seq, gateway_id, request_id,
received_ns, command]``).  Seqs are contiguous across segments.  A segment is
rotated between batches once it has reached ``segment_bytes_max``.

Durability of each ``fsync`` policy, for a command the server acknowledged
(it acknowledges only after ``append`` returned):

- ``always``: the command is on disk (fdatasync after every batch).
- ``batch``: a crash of the process loses nothing; a crash of the machine may
  lose the last ``fsync_interval_ms`` of commands (fdatasync when the last one
  is older than that, on ``append`` or when the server calls ``sync``).
- ``off``: a crash of the process loses nothing; a crash of the machine may
  lose whatever the OS had not yet written.

Rotation fsyncs the finished segment and the directory under every policy, so
a machine crash can only shorten the last segment, never leave a gap.

Recovery (``open``): a torn last record of the last segment -- what a crash
in the middle of a write leaves -- is logged and truncated.  Anything else
that is wrong (a bad record with valid records after it, a seq gap, a record
that passes its checksum but does not decode) raises ``JournalCorrupt`` and
changes nothing: that needs an operator, not a guess.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec

from engine.messages import Command

__all__ = [
    "JournalRecord", "Journal", "Segment", "JournalCorrupt", "JournalWriteError",
    "HEADER", "RECORD_BYTES_MAX", "FSYNC_POLICIES", "segment_name",
]

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")            # body length, crc32(body)
RECORD_BYTES_MAX = 1 << 20               # a body longer than this is garbage, never allocated
FSYNC_POLICIES = ("always", "batch", "off")
_SEGMENT_RE = re.compile(r"^(\d{20})\.wal$")
_READ_BUFFER_BYTES = 1 << 20
_monotonic_ns = time.monotonic_ns        # a module attribute so tests can move the clock


class JournalRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One journaled command.  ``received_ns`` is the server's wall clock when
    the command arrived, for operators only: the engine never sees it (time
    enters the engine as a journaled ``Clock`` command)."""
    seq: int
    gateway_id: str
    request_id: int
    received_ns: int
    command: Command


class Segment(NamedTuple):
    path: Path
    first_seq: int


class JournalCorrupt(Exception):
    """A record that is wrong where a crash cannot have torn it.  Names the
    segment file and the byte offset of the bad record."""

    def __init__(self, path: Path, offset: int, reason: str):
        super().__init__(f"journal segment {path}: {reason} at byte offset {offset}")
        self.path = path
        self.offset = offset
        self.reason = reason


class JournalWriteError(Exception):
    """Appending (writing, fsyncing, rotating) failed; the ``OSError`` is the
    cause.  If ``Journal.failed`` is false the batch was removed again and the
    journal is as before the call (the server may retry later, e.g. after
    ENOSPC); if it is true the journal can no longer vouch for its file and
    refuses every further append: stop, and recover with ``open`` on a new
    ``Journal``."""


class _SeqOnly(msgspec.Struct, array_like=True):
    """A record's first field alone (msgspec skips the rest of the array)."""
    seq: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JournalRecord)
_seq_decoder = msgspec.msgpack.Decoder(_SeqOnly)


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.wal"


def fsync_directory(directory: Path) -> None:
    """Make creations, renames and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _datasync(fd: int) -> None:
    # Looked up at call time so tests can count or fail it.
    getattr(os, "fdatasync", os.fsync)(fd)


class _BadFrame(Exception):
    def __init__(self, offset: int, reason: str, length: int = 0):
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.length = length        # the body length the header claims, when it was in range


def _frames(f, end: int) -> Iterator[tuple[int, memoryview]]:
    """(offset, body) of each checked frame of the segment file ``f`` (read
    from offset 0) up to byte ``end``; a bad frame raises ``_BadFrame``.
    The segment is read in one call (a segment is bounded by
    ``segment_bytes_max`` plus one batch) and cut with offsets."""
    data = f.read(end)
    view = memoryview(data)
    size = len(data)
    unpack = HEADER.unpack_from
    header_size = HEADER.size
    crc32 = zlib.crc32
    offset = 0
    while offset < end:
        if end - offset < header_size:
            raise _BadFrame(offset, f"short header ({end - offset} of {header_size} bytes)")
        if size - offset < header_size:
            raise _BadFrame(offset, "short header (file shrank while read)")
        length, crc = unpack(data, offset)
        if not 0 < length <= RECORD_BYTES_MAX:
            raise _BadFrame(offset, f"record length {length} out of range 1..{RECORD_BYTES_MAX}")
        start = offset + header_size
        if start + length > end:
            raise _BadFrame(offset, f"short body ({end - start} of {length} bytes)", length)
        if start + length > size:
            raise _BadFrame(offset, "short body (file shrank while read)", length)
        body = view[start:start + length]
        if crc32(body) != crc:
            raise _BadFrame(offset, "checksum mismatch", length)
        yield offset, body
        offset = start + length


def _holds_a_frame(buf: memoryview) -> bool:
    """Does a checksum-valid frame start anywhere in ``buf`` after byte 0?
    Then the bad frame at 0 is not a torn tail: valid data follows it."""
    for p in range(1, len(buf) - HEADER.size + 1):
        length, crc = HEADER.unpack_from(buf, p)
        start = p + HEADER.size
        if 0 < length <= RECORD_BYTES_MAX and start + length <= len(buf) \
                and zlib.crc32(buf[start:start + length]) == crc:
            return True
    return False


def _all_zero(f, offset: int, end: int) -> bool:
    f.seek(offset)
    while offset < end:
        chunk = f.read(min(_READ_BUFFER_BYTES, end - offset))
        if not chunk or chunk.count(0) != len(chunk):
            return False
        offset += len(chunk)
    return True


class Journal:
    """Append-only journal of ``JournalRecord``s in ``directory`` (created if missing).

    ``open()`` first (or ``with Journal(...) as journal:``), then ``append``
    batches and ``read`` them back.  One process, one thread, per directory.
    """

    def __init__(self, directory: str | os.PathLike, *, fsync: str = "always",
                 fsync_interval_ms: float = 5, segment_bytes_max: int = 64 << 20,
                 read_only: bool = False):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        if not fsync_interval_ms >= 0:
            raise ValueError(f"fsync_interval_ms must be >= 0, not {fsync_interval_ms!r}")
        if not segment_bytes_max > 0:
            raise ValueError(f"segment_bytes_max must be > 0, not {segment_bytes_max!r}")
        self.directory = Path(directory)
        self.fsync = fsync
        self.fsync_interval_ms = fsync_interval_ms
        self.segment_bytes_max = segment_bytes_max
        self.truncated_bytes = 0            # torn tail removed by open()
        # read_only: check and read, never write, truncate or prune -- safe beside a
        # live server; a torn last record is skipped (torn_bytes), not cut
        self.read_only = read_only
        self.torn_bytes = 0
        self.failed = False                 # see JournalWriteError
        self._opened = False
        self._closed = False
        self._first_seq = 1
        self._last_seq = 0
        self._fd: int | None = None         # active (last) segment, O_APPEND
        self._active: Segment | None = None
        self._size = 0                      # bytes of the active segment
        self._dirty = False                 # written since the last fdatasync
        self._synced_seq = 0                # the last seq an fdatasync covered
        self._last_sync_ns = 0

    # ------------------------------------------------------------ properties
    @property
    def last_seq(self) -> int:
        """Seq of the last record (0 when the journal is empty)."""
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        """Every record up to this seq has been fdatasynced (under ``off``: the
        last seq written; what the OS holds is all that policy promises)."""
        return self._last_seq if self.fsync == "off" or not self._dirty else self._synced_seq

    @property
    def first_seq(self) -> int:
        """Seq of the first record kept (> 1 once segments were pruned)."""
        return self._first_seq

    # ------------------------------------------------------------------ open
    def open(self) -> int:
        """Check every record of every segment, truncate a torn tail, and
        return the last seq (0 if the journal is empty)."""
        assert not self._opened, "Journal.open() called twice"
        if not self.read_only:
            self.directory.mkdir(parents=True, exist_ok=True)
        segments = self.segments()
        last_seq = segments[0].first_seq - 1 if segments else 0
        good_end = 0
        for index, segment in enumerate(segments):
            is_last = index == len(segments) - 1
            if segment.first_seq != last_seq + 1:
                raise JournalCorrupt(segment.path, 0, f"segment starts at seq {segment.first_seq}, "
                                     f"the one before ends at seq {last_seq} (a gap)")
            seq_before = last_seq
            last_seq, good_end = self._check_segment(segment, last_seq, is_last)
            if not is_last and last_seq == seq_before:
                raise JournalCorrupt(segment.path, 0, "empty segment before the last one")
        if segments:
            self._active = segments[-1]
            self._first_seq = segments[0].first_seq
            self._size = good_end
            if not self.read_only:
                self._fd = os.open(self._active.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                assert os.fstat(self._fd).st_size == good_end
        self._last_seq = last_seq
        self._opened = True
        return last_seq

    def _check_segment(self, segment: Segment, last_seq: int, is_last: bool) -> tuple[int, int]:
        """Check one segment's records; returns (last seq, byte length kept)."""
        path = segment.path
        # read-only (replay tools): the seq alone is checked here, the whole
        # record when read() decodes it; a writer checks everything it will append to
        decoder = _seq_decoder if self.read_only else _decoder
        with open(path, "rb", buffering=_READ_BUFFER_BYTES) as f:
            end = os.fstat(f.fileno()).st_size
            try:
                for offset, body in _frames(f, end):
                    try:
                        record = decoder.decode(body)
                    except msgspec.DecodeError as exc:
                        raise JournalCorrupt(path, offset, f"undecodable record ({exc})") from None
                    if record.seq != last_seq + 1:
                        raise JournalCorrupt(path, offset, f"record seq {record.seq} where "
                                             f"{last_seq + 1} was expected")
                    last_seq = record.seq
                return last_seq, end
            except _BadFrame as bad:
                if not (is_last and self._is_torn_tail(f, bad, end)):
                    raise JournalCorrupt(path, bad.offset, bad.reason) from None
                torn_offset, torn_reason = bad.offset, bad.reason
        cut_bytes = end - torn_offset
        if self.read_only:
            self.torn_bytes = cut_bytes
            return last_seq, torn_offset
        log.warning("journal segment %s: torn last record at byte offset %d (%s); "
                    "truncating %d bytes", path, torn_offset, torn_reason, cut_bytes)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, torn_offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.truncated_bytes = cut_bytes
        return last_seq, torn_offset

    @staticmethod
    def _is_torn_tail(f, bad: _BadFrame, end: int) -> bool:
        """Could ``bad`` be the last record, cut short by a crash mid-write?"""
        if end - bad.offset < HEADER.size:
            return True                              # short header
        if bad.length == 0:                          # length out of range: only a zero-filled
            return _all_zero(f, bad.offset, end)     # tail (size on disk, data not) is a crash
        if bad.offset + HEADER.size + bad.length < end:
            return False                             # bad crc with bytes after it
        # Short body or bad crc at the very end: torn, unless a valid record
        # starts inside what it claims (then it is a corrupt length, not a tear).
        f.seek(bad.offset)
        tail = f.read(end - bad.offset)              # <= HEADER.size + RECORD_BYTES_MAX
        return not _holds_a_frame(memoryview(tail))

    # ---------------------------------------------------------------- append
    def append(self, records: list[JournalRecord]) -> None:
        """Journal one batch: one ``write()``, then fsync per policy.  The
        records' seqs must continue ``last_seq`` one by one."""
        assert self._opened and not self._closed, "append on a journal not open"
        assert not self.read_only, "append on a read-only journal"
        if self.failed:
            raise JournalWriteError("the journal failed earlier and refuses appends; "
                                    "restart and recover with open()")
        if not records:
            return
        assert records[0].seq == self._last_seq + 1, \
            f"batch starts at seq {records[0].seq}, journal ends at {self._last_seq}"
        parts = []
        seq = self._last_seq
        for record in records:
            assert record.seq == seq + 1, f"seq {record.seq} after {seq} in one batch"
            seq = record.seq
            body = _encoder.encode(record)
            if len(body) > RECORD_BYTES_MAX:
                raise ValueError(f"record seq {record.seq} is {len(body)} bytes, "
                                 f"more than RECORD_BYTES_MAX={RECORD_BYTES_MAX}")
            parts.append(HEADER.pack(len(body), zlib.crc32(body)))
            parts.append(body)
        buf = b"".join(parts)

        if self._fd is None or self._size >= self.segment_bytes_max:
            self._rotate(records[0].seq)
        start = self._size
        try:
            self._write_all(buf)
        except OSError as exc:
            self._undo(start)
            raise JournalWriteError(f"journal segment {self._active.path}: writing seqs "
                                    f"{records[0].seq}..{seq} failed: {exc}") from exc
        self._size = start + len(buf)
        self._last_seq = seq
        self._dirty = True
        if self.fsync == "always" or (
                self.fsync == "batch"
                and _monotonic_ns() - self._last_sync_ns >= self.fsync_interval_ms * 1_000_000):
            try:
                self._sync_now()
            except JournalWriteError:
                self._undo(start)        # not acknowledged: take it back if we can
                self._size = start
                self._last_seq = records[0].seq - 1
                raise

    def _write_all(self, buf: bytes) -> None:
        view = memoryview(buf)
        while view:
            n = os.write(self._fd, view)
            if n <= 0:
                raise OSError(errno.EIO, "write() wrote nothing")
            view = view[n:]

    def _undo(self, start: int) -> None:
        """Cut the active segment back to ``start`` after a failed batch; if
        even that fails the journal is ``failed``."""
        try:
            os.ftruncate(self._fd, start)
            if self.fsync != "off":
                os.fsync(self._fd)
        except OSError as exc:
            self.failed = True
            log.error("journal segment %s: could not cut a failed batch back to byte %d: %s",
                      self._active.path, start, exc)

    def _rotate(self, first_seq: int) -> None:
        """Finish the active segment (fsync, close) and start ``first_seq``'s."""
        if self._fd is not None:
            if self._dirty:
                self._sync_now()
            os.close(self._fd)
            self._fd = None
        path = self.directory / segment_name(first_seq)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                         0o644)
        except OSError as exc:          # nothing changed: a later append may retry
            raise JournalWriteError(f"journal: creating segment {path} failed: {exc}") from exc
        self._fd = fd
        self._active = Segment(path, first_seq)
        self._size = 0
        try:
            fsync_directory(self.directory)
        except OSError as exc:
            self.failed = True
            raise JournalWriteError(f"journal: fsync of {self.directory} failed: {exc}") from exc

    # ------------------------------------------------------------------ sync
    def sync_due(self) -> bool:
        """``batch`` policy: has a written record waited ``fsync_interval_ms``?"""
        return (self.fsync == "batch" and self._dirty
                and _monotonic_ns() - self._last_sync_ns >= self.fsync_interval_ms * 1_000_000)

    def sync(self) -> None:
        """fdatasync the active segment now if anything is unsynced (any policy)."""
        if self.failed:
            raise JournalWriteError("the journal failed earlier; restart and recover with open()")
        if self._dirty:
            self._sync_now()

    def _sync_now(self) -> None:
        try:
            _datasync(self._fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages
            # and a retry would "succeed": never trust this file again.
            self.failed = True
            raise JournalWriteError(f"journal segment {self._active.path}: fsync failed: "
                                    f"{exc}") from exc
        self._dirty = False
        self._synced_seq = self._last_seq
        self._last_sync_ns = _monotonic_ns()

    # ------------------------------------------------------------------ read
    def read(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[JournalRecord]:
        """The records from ``from_seq`` to ``to_seq`` (inclusive; default: the
        last seq when called), in order, across segments, checked again."""
        assert self._opened, "read on a journal not open"
        if from_seq < self._first_seq and self._last_seq >= from_seq:
            raise ValueError(f"seq {from_seq} was pruned: the journal starts at seq "
                             f"{self._first_seq}")
        stop_seq = self._last_seq if to_seq is None else min(to_seq, self._last_seq)
        segments = self.segments()
        return self._read(segments, max(from_seq, 1), stop_seq)

    def _read(self, segments: list[Segment], from_seq: int, stop_seq: int
              ) -> Iterator[JournalRecord]:
        for index, segment in enumerate(segments):
            if segment.first_seq > stop_seq:
                return
            if index + 1 < len(segments) and segments[index + 1].first_seq <= from_seq:
                continue                # wholly before from_seq
            seq = segment.first_seq
            with open(segment.path, "rb", buffering=_READ_BUFFER_BYTES) as f:
                end = os.fstat(f.fileno()).st_size
                frames = _frames(f, end)
                while seq <= stop_seq:
                    try:
                        item = next(frames, None)
                    except _BadFrame as bad:
                        raise JournalCorrupt(segment.path, bad.offset, bad.reason) from None
                    if item is None:
                        break           # end of segment
                    offset, body = item
                    if seq >= from_seq:
                        try:
                            record = _decoder.decode(body)
                        except msgspec.DecodeError as exc:
                            raise JournalCorrupt(segment.path, offset,
                                                 f"undecodable record ({exc})") from None
                        if record.seq != seq:
                            raise JournalCorrupt(segment.path, offset, f"record seq {record.seq}"
                                                 f" where {seq} was expected")
                        yield record
                    seq += 1

    # ------------------------------------------------------------- segments
    def segments(self) -> list[Segment]:
        """The segment files, oldest first."""
        found = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        for name in names:
            match = _SEGMENT_RE.match(name)
            if match:
                first_seq = int(match.group(1))
                if first_seq < 1:
                    raise JournalCorrupt(self.directory / name, 0, "segment named seq 0")
                found.append(Segment(self.directory / name, first_seq))
        found.sort(key=lambda s: s.first_seq)
        return found

    def prune(self, keep_from_seq: int) -> list[Path]:
        """Delete the oldest segments all of whose records are < ``keep_from_seq``
        (never the active one); returns the deleted paths."""
        assert not self.read_only, "prune on a read-only journal"
        segments = self.segments()
        deleted = []
        for segment, following in zip(segments, segments[1:]):
            if following.first_seq > keep_from_seq:
                break
            os.unlink(segment.path)     # oldest first: a crash leaves a contiguous journal
            deleted.append(segment.path)
            self._first_seq = following.first_seq
        if deleted:
            fsync_directory(self.directory)
            log.info("journal: pruned %d segments, now starts at seq %d",
                     len(deleted), self._first_seq)
        return deleted

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        """fsync what is unsynced (unless the policy is ``off``) and close."""
        if self._closed:
            return
        self._closed = True
        if self._fd is None:
            return
        try:
            if self._dirty and self.fsync != "off" and not self.failed:
                self._sync_now()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Journal:
        if not self._opened:
            self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
