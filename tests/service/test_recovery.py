"""Start-up against damaged state, and a journal that cannot be written."""
from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.client import Client, ClientError
from engine.messages import Deposit, PlaceOrder
from engine.service import journal as journal_module
from engine.service.protocol import ERR_JOURNAL_WRITE_FAILED as ERR_JOURNAL
from servers import TOKENS, run, serving, write_config

EXCHANGE = str(Path(sys.executable).with_name("exchange"))


async def some_commands(server, n=20):
    c = await Client.connect("127.0.0.1", server.port, token=TOKENS["admin"], gateway_id="ops")
    for i in range(n):
        await c.request(Deposit(2, "USDT", 1000 + i, ref=f"d{i}"))
    await c.request(PlaceOrder(2, "o", "BTC-USDT", "buy", price=100, qty=1))
    await c.close()


def serve_fails(config: Path) -> str:
    """`exchange serve` must refuse to start: exit 2, one line, no traceback."""
    done = subprocess.run([EXCHANGE, "serve", "--config", str(config)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [x for x in done.stderr.splitlines() if x.startswith("exchange: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_corrupt_middle_record_stops_start_up_naming_file_and_offset(tmp_path):
    run(_fill(tmp_path))
    [segment] = sorted((tmp_path / "journal").glob("*.wal"))
    data = bytearray(segment.read_bytes())
    data[100] ^= 0xFF
    segment.write_bytes(bytes(data))
    line = serve_fails(tmp_path / "exchange.toml")
    assert segment.name in line and "offset" in line


def test_torn_tail_is_truncated_and_serving_goes_on(tmp_path):
    run(_fill(tmp_path, snapshot=False))
    [segment] = sorted((tmp_path / "journal").glob("*.wal"))
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 3)           # the last record torn by a crash

    async def go():
        async with serving(tmp_path) as server:
            assert server.recovered.truncated_bytes > 0
            assert server.state.seq == 20      # the torn 21st command was never acknowledged
    run(go())


def test_missing_snapshot_is_rebuilt_from_the_journal(tmp_path):
    run(_fill(tmp_path))
    snaps = list((tmp_path / "journal" / "snapshots").glob("*.snap"))
    assert snaps
    expected = None

    async def state_hash():
        async with serving(tmp_path) as server:
            return server.state.seq, server.state.engine.state_hash()
    expected = run(state_hash())
    for s in (tmp_path / "journal" / "snapshots").glob("*.snap"):
        s.unlink()
    assert run(state_hash()) == expected


def test_snapshot_from_another_config_is_refused(tmp_path):
    run(_fill(tmp_path))
    config = tmp_path / "exchange.toml"
    config.write_text(config.read_text().replace("taker_fee_bps = 5", "taker_fee_bps = 7"))
    assert "configuration" in serve_fails(config)


def test_journal_write_error_is_answered_and_nothing_is_applied(tmp_path, monkeypatch):
    async def go():
        async with serving(tmp_path) as server:
            c = await Client.connect("127.0.0.1", server.port, token=TOKENS["admin"],
                                     gateway_id="ops")
            await c.request(Deposit(2, "USDT", 5))
            real_write = os.write
            failing = {"on": True}

            def write(fd, data):
                if failing["on"] and fd == server.journal._fd:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_write(fd, data)
            monkeypatch.setattr(journal_module.os, "write", write)
            with pytest.raises(ClientError) as e:
                await c.request(Deposit(2, "USDT", 7))
            assert e.value.reason == ERR_JOURNAL
            assert server.state.seq == 1 and server.state.engine.balance(2, "USDT") == (5, 0)
            failing["on"] = False                # space again: serving goes on
            events = await c.request(Deposit(2, "USDT", 9))
            assert events[0].seq == 2
            await c.close()
    run(go())
    # what was acknowledged is what a restart recovers

    async def after():
        async with serving(tmp_path) as server:
            return server.state.seq, server.state.engine.balance(2, "USDT")
    assert run(after()) == (2, (14, 0))


async def _fill(folder: Path, snapshot: bool = True):
    async with serving(folder, snapshot_every=1_000_000) as server:
        await some_commands(server)
        if not snapshot:
            await server.abort()
            server._listener = None



def test_snapshots_prune_the_journal_and_recovery_still_agrees(tmp_path, db_url):
    """Small segments and frequent snapshots: old segments and snapshots go,
    and a restart (from a snapshot and the tail) lands on the same state."""
    kw = dict(snapshot_every=500, segment_bytes_max=65536, database_url=db_url)

    async def fill():
        async with serving(tmp_path, **kw) as server:
            c = await Client.connect("127.0.0.1", server.port, token=TOKENS["admin"],
                                     gateway_id="ops")
            for k in range(0, 3000, 100):      # 30 turns of 100 commands
                await c.request_many(Deposit(2 + i % 5, "USDT", 1000 + i, ref=f"deposit-{i}")
                                     for i in range(k, k + 100))
            await c.close()
            await server.settle_backlog()
            return server.state.seq, server.state.engine.state_hash()

    async def again():
        async with serving(tmp_path, **kw) as server:
            return (server.state.seq, server.state.engine.state_hash(),
                    server.journal.first_seq, len(server.snapshots.list()))
    seq, digest = run(fill())
    seq2, digest2, first_seq, snapshots = run(again())
    assert (seq2, digest2) == (seq, digest) == (3000, digest)
    assert first_seq > 1                  # pruned: segments wholly below the snapshot are gone
    assert snapshots <= 3
