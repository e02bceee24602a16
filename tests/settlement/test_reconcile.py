"""Reconciliation and the end-to-end demo, against a real PostgreSQL."""
from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg

from settle_db import drop_database
from engine.flow import CROSS_ASSETS as ASSETS, run
from settlement import SettlementWriter, with_database
from settlement.reconcile import reconcile

ROOT = Path(__file__).resolve().parents[2]


def settle(url, commands):
    async def main():
        writer = SettlementWriter(url, assets=ASSETS)
        await writer.start()
        for events in commands:
            await writer.put(events)
        await writer.flush()
        await writer.close()
    asyncio.run(main())


async def _query(url, sql, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def test_a_settled_stream_reconciles_and_the_run_is_recorded(db_url):
    engine, commands = run(seed=3, n=4_000)
    settle(db_url, commands)
    result = asyncio.run(reconcile(db_url, engine))
    assert result.status == "ok" and result.discrepancies == []
    assert result.through_seq == engine.seq
    [row] = asyncio.run(_query(db_url, "SELECT * FROM reconciliation_runs WHERE id = $1", result.run_id))
    assert (row["status"], row["discrepancy_count"], row["through_seq"]) == ("ok", 0, engine.seq)
    assert row["finished_at"] is not None


def test_a_tampered_balance_is_reported_with_account_asset_and_bucket(db_url):
    engine, commands = run(seed=4, n=3_000)
    settle(db_url, commands)
    account = max(a for a in engine.accounts() if a >= 2)
    available, _ = engine.balance(account, "USDT")
    asyncio.run(_query(db_url, "UPDATE balances SET available = available + 7 WHERE account_id = $1 "
                               "AND asset_id = (SELECT asset_id FROM assets WHERE name = 'USDT')", account))
    result = asyncio.run(reconcile(db_url, engine))
    assert result.status == "mismatch"
    found = {(d.account, d.asset, d.bucket, d.expected, d.actual, d.check) for d in result.discrepancies}
    assert (account, "USDT", "available", available, available + 7, "balances") in found
    assert (-1, "USDT", "total", 0, 7, "supply") in found
    # the ledger itself still agrees with the engine: only the table was touched
    assert not [d for d in result.discrepancies if d.check == "ledger"]
    [row] = asyncio.run(_query(db_url, "SELECT status, discrepancy_count, discrepancies "
                                       "FROM reconciliation_runs WHERE id = $1", result.run_id))
    assert row["status"] == "mismatch" and row["discrepancy_count"] == len(result.discrepancies) == 2


def test_an_engine_ahead_of_the_ledger_is_an_error_not_a_mismatch(db_url):
    engine, commands = run(seed=5, n=1_000)
    settle(db_url, commands[:-10])
    result = asyncio.run(reconcile(db_url, engine))
    assert result.status == "error" and "seq" in result.note


def test_the_demo_settles_and_reconciles_end_to_end(pg_server_url):
    """The README's main job, as a user runs it (on the test server)."""
    name = f"exchange_test_demo_{secrets.token_hex(4)}"
    env = {**os.environ, "DATABASE_URL": pg_server_url}
    try:
        out = subprocess.run([sys.executable, "-m", "settlement", "demo", "--n", "3000",
                              "--database", name], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "reconciliation #1: ok" in out.stdout
    finally:
        asyncio.run(drop_database(pg_server_url, with_database(pg_server_url, name)))
