"""The snapshot store: engine snapshots at a seq, written atomically, read back checked.

Recovery is the latest valid snapshot plus the journal after its seq.  This
module owns the snapshot files only; it never calls the engine (the server
passes ``Engine.snapshot()`` bytes in and ``Engine.restore`` takes them out)
and never touches the journal.  A snapshot is an optimisation: a failed write
raises ``OSError`` and leaves the previous snapshots as they were.

A snapshot file ``snapshot-<seq, 20 digits>.snap`` is::

    8-byte magic | u64 LE seq | u64 LE data length | u32 LE zlib.crc32(data) | data

It is written to a temp file (``.snapshot-<seq>-<pid>-*.tmp``) in the same
directory, fsynced, renamed into place, and the directory fsynced: a reader
sees a whole snapshot or none.  A file that fails its checks (a disk error, a
hand edit) is logged and skipped.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path
from typing import NamedTuple

from .journal import fsync_directory

__all__ = ["SnapshotStore", "Snapshot", "MAGIC", "HEADER", "snapshot_name"]

log = logging.getLogger(__name__)

MAGIC = b"EXSNAP\x00\x01"                 # format version in the last byte
HEADER = struct.Struct("<8sQQI")          # magic, seq, data length, crc32(data)
_NAME_RE = re.compile(r"^snapshot-(\d{20})\.snap$")
_TEMP_RE = re.compile(r"^\.snapshot-\d{20}-(\d+)-.*\.tmp$")


class Snapshot(NamedTuple):
    seq: int
    path: Path


def snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:020d}.snap"


class SnapshotStore:
    """Snapshots in ``directory`` (created on the first write)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def write(self, seq: int, data: bytes) -> Path:
        """Store ``data`` as the snapshot at ``seq``, atomically; returns its path."""
        if seq < 0:
            raise ValueError(f"snapshot seq must be >= 0, not {seq}")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / snapshot_name(seq)
        fd, temp = tempfile.mkstemp(dir=self.directory, suffix=".tmp",
                                    prefix=f".snapshot-{seq:020d}-{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(HEADER.pack(MAGIC, seq, len(data), zlib.crc32(data)))
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        fsync_directory(self.directory)
        return path

    def list(self) -> list[Snapshot]:
        """The snapshot files by name, oldest first (not checked)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = [Snapshot(int(m.group(1)), self.directory / name)
                 for name in names if (m := _NAME_RE.match(name))]
        found.sort()
        return found

    def latest(self) -> tuple[int, bytes] | None:
        """(seq, data) of the newest snapshot that passes its checks, or None."""
        for snapshot in reversed(self.list()):
            data = self.load(snapshot)
            if data is not None:
                return snapshot.seq, data
        return None

    def load(self, snapshot: Snapshot) -> bytes | None:
        """The data of ``snapshot`` if its header and checksum check, else None (logged)."""
        problem = None
        try:
            with open(snapshot.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                header = f.read(HEADER.size)
                if len(header) < HEADER.size:
                    problem = f"short header ({len(header)} of {HEADER.size} bytes)"
                else:
                    magic, seq, length, crc = HEADER.unpack(header)
                    if magic != MAGIC:
                        problem = f"bad magic {magic!r}"
                    elif seq != snapshot.seq:
                        problem = f"header says seq {seq}, name says {snapshot.seq}"
                    elif HEADER.size + length != size:       # checked before reading
                        problem = (f"header says {length} data bytes, "
                                   f"file holds {size - HEADER.size}")
                    else:
                        data = f.read(length)
                        if len(data) != length:
                            problem = "file shrank while read"
                        elif zlib.crc32(data) != crc:
                            problem = "checksum mismatch"
                        else:
                            return data
        except OSError as exc:
            problem = f"unreadable ({exc})"
        log.warning("snapshot %s is invalid, skipped: %s", snapshot.path, problem)
        return None

    def prune(self, keep: int = 2, keep_from_seq: int | None = None) -> list[Path]:
        """Delete all snapshots but the newest ``keep`` valid ones and any at or
        after ``keep_from_seq``, and temp files other processes left behind;
        returns the deleted paths."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, not {keep}")
        deleted = []
        kept_valid = 0
        for snapshot in reversed(self.list()):
            if kept_valid < keep and self.load(snapshot) is not None:
                kept_valid += 1
                continue
            if keep_from_seq is not None and snapshot.seq >= keep_from_seq:
                continue
            os.unlink(snapshot.path)
            deleted.append(snapshot.path)
        for name in os.listdir(self.directory) if self.directory.exists() else ():
            m = _TEMP_RE.match(name)
            if m and int(m.group(1)) != os.getpid():    # this process may be writing its own
                os.unlink(self.directory / name)
                deleted.append(self.directory / name)
        if deleted:
            fsync_directory(self.directory)
        return deleted
