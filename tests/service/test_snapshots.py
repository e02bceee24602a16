"""The snapshot store on real files: round trip, atomic writes, invalid files
skipped, pruning."""
from __future__ import annotations

import errno
import logging
import os
import struct
import zlib

import pytest

from engine.service.snapshots import MAGIC, Snapshot, SnapshotStore


def payload(seq: int, size: int = 1000) -> bytes:
    return bytes((seq * 7 + i) % 251 for i in range(size))


def corrupt(path, position: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x10
    path.write_bytes(bytes(data))


def test_round_trip_and_format(tmp_path):
    store = SnapshotStore(tmp_path / "snaps")
    assert store.latest() is None
    assert store.list() == []
    path = store.write(10, payload(10))
    assert path == tmp_path / "snaps" / "snapshot-00000000000000000010.snap"
    raw = path.read_bytes()
    assert raw[:28] == struct.pack("<8sQQI", MAGIC, 10, 1000, zlib.crc32(payload(10)))
    assert raw[28:] == payload(10)
    store.write(200, payload(200, 5))
    store.write(30, b"")
    assert store.latest() == (200, payload(200, 5))
    assert store.list() == [Snapshot(s, tmp_path / "snaps" / f"snapshot-{s:020d}.snap")
                            for s in (10, 30, 200)]
    assert SnapshotStore(tmp_path / "snaps").latest() == (200, payload(200, 5))


def test_rewriting_a_seq_replaces_it(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(5, b"first")
    store.write(5, b"second")
    assert store.latest() == (5, b"second")
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot-00000000000000000005.snap"]


def test_write_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    store = SnapshotStore(tmp_path)
    data = payload(7, 50_000)
    seen = []
    real_replace, real_fsync = os.replace, os.fsync
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    def replace(source, target):
        # The temp file is complete and fsynced, in the same directory.
        assert os.path.dirname(source) == str(tmp_path)
        assert os.path.basename(source).startswith(".snapshot-00000000000000000007-")
        assert len(synced) == 1
        seen.append(open(source, "rb").read())
        real_replace(source, target)
    monkeypatch.setattr(os, "replace", replace)
    store.write(7, data)
    assert len(seen[0]) == 28 + len(data)
    assert len(synced) == 2                                  # the file, then the directory
    assert store.latest() == (7, data)


def test_failed_write_leaves_no_file_and_the_previous_snapshot(tmp_path, monkeypatch):
    store = SnapshotStore(tmp_path)
    store.write(10, payload(10))

    def broken_fsync(fd):
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        store.write(20, payload(20))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot-00000000000000000010.snap"]
    assert store.latest() == (10, payload(10))


def test_leftover_temp_and_corrupt_newest_are_skipped(tmp_path, caplog):
    store = SnapshotStore(tmp_path)
    store.write(10, payload(10))
    store.write(20, payload(20))
    newest = store.write(30, payload(30))
    corrupt(newest)
    (tmp_path / ".snapshot-00000000000000000040-999999-abc.tmp").write_bytes(b"half a snapsh")
    with caplog.at_level(logging.WARNING, logger="engine.service.snapshots"):
        assert store.latest() == (20, payload(20))
    [warning] = caplog.records
    assert str(newest) in warning.getMessage()
    assert "checksum mismatch" in warning.getMessage()


@pytest.mark.parametrize("damage, reason", [
    (lambda p: os.truncate(p, 28 + 500), "file holds 500"),
    (lambda p: os.truncate(p, 10), "short header"),
    (lambda p: corrupt(p, 0), "bad magic"),
    (lambda p: corrupt(p, 9), "header says seq"),
    (lambda p: corrupt(p, 19), "data bytes"),                # the length field's high bytes
    (lambda p: p.write_bytes(b""), "short header"),
])
def test_each_kind_of_damage_is_detected(tmp_path, caplog, damage, reason):
    store = SnapshotStore(tmp_path)
    store.write(1, payload(1))
    damage(store.write(2, payload(2)))
    with caplog.at_level(logging.WARNING, logger="engine.service.snapshots"):
        assert store.latest() == (1, payload(1))
    assert reason in caplog.text


def test_a_snapshot_under_the_wrong_name_is_invalid(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(1, payload(1))
    path = store.write(2, payload(2))
    path.rename(tmp_path / "snapshot-00000000000000000003.snap")
    assert store.latest() == (1, payload(1))


def test_prune(tmp_path):
    store = SnapshotStore(tmp_path)
    for seq in (10, 20, 30, 40, 50, 60):
        store.write(seq, payload(seq))
    corrupt(tmp_path / "snapshot-00000000000000000060.snap")
    stale = tmp_path / ".snapshot-00000000000000000070-999999-x.tmp"      # a dead writer's
    own = tmp_path / f".snapshot-00000000000000000080-{os.getpid()}-y.tmp"  # maybe writing now
    stale.write_bytes(b"x")
    own.write_bytes(b"y")

    deleted = store.prune(keep=3, keep_from_seq=45)
    assert {p.name for p in deleted} == {"snapshot-00000000000000000010.snap",
                                         "snapshot-00000000000000000020.snap", stale.name}
    assert [s.seq for s in store.list()] == [30, 40, 50, 60]   # 60 is invalid but >= 45
    assert own.exists()

    store.prune()                                             # keep=2 valid: 50, 40
    assert [s.seq for s in store.list()] == [40, 50]
    assert store.latest() == (50, payload(50))
    with pytest.raises(ValueError):
        store.prune(keep=0)


def test_prune_of_an_empty_or_missing_store(tmp_path):
    assert SnapshotStore(tmp_path / "missing").prune() == []
    assert SnapshotStore(tmp_path).prune() == []
