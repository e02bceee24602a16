"""Long random streams through a real Engine into a real PostgreSQL, with faults.

Each test ends in ``assert_settled``: every event exactly once, ledger ==
balances table == engine, every asset sums to zero, orders match.
"""
from __future__ import annotations

import asyncio
import os
import random

import asyncpg
import pytest

from settle_checks import assert_settled
from settle_db import BalancesLocked
from engine.flow import CROSS_ASSETS as ASSETS, Flow, new_engine, run
from settlement import SettlementWriter

STREAM_COMMANDS = int(os.environ.get("EXCHANGE_SETTLE_COMMANDS", "120000"))
SOAK = os.environ.get("EXCHANGE_SOAK", "") not in ("", "0")


async def _feed(writer, commands, every=0, pause_s=0.0):
    for i, events in enumerate(commands):
        await writer.put(events)
        if every and i % every == 0:
            await asyncio.sleep(pause_s)


def test_long_random_stream_settles_exactly(db_url):
    """100k+ commands, engine driven live: every put is one Engine.submit."""
    engine = new_engine()
    flow = Flow("ledger", seed=20240601, engine=engine)
    commands = []

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=10_000,
                                  flush_interval_ms=20)
        await writer.start()
        for i, cmd in enumerate(flow.commands(STREAM_COMMANDS)):
            events = engine.submit(cmd)
            flow.observe(events)
            commands.append(events)
            await writer.put(events)
            if i % 2000 == 0:
                await asyncio.sleep(0)     # a server would serve sockets between commands
        await writer.flush()
        assert writer.committed_seq == engine.seq
        await writer.close()
        return writer.stats

    stats = asyncio.run(main())
    counts = assert_settled(db_url, engine, commands)
    engine.validate()
    assert stats.commands == len(commands) == STREAM_COMMANDS
    assert stats.events == sum(len(e) for e in commands)
    assert stats.batches >= 2
    assert counts["trades"] > 10_000 and counts["audit_log"] > 1_000, counts


def test_replay_and_writer_restart_never_double_book(db_url):
    """A writer dies mid-stream (uncommitted events lost with it); a new one is
    fed the whole stream from seq 1; a third one, again: no duplicate, no gap."""
    engine, commands = run(seed=7, n=20_000)

    async def main():
        first = SettlementWriter(db_url, assets=ASSETS, batch_events_max=2_000)
        await first.start()
        await _feed(first, commands[:9_000])
        await first.flush()
        await _feed(first, commands[9_000:12_000])      # queued, maybe partly committed
        await first.abort()                              # crash
        lost = len(first.pending_events())

        second = SettlementWriter(db_url, assets=ASSETS, batch_events_max=2_000)
        await second.start()
        assert 9_000 <= second.committed_seq <= 12_000
        await _feed(second, commands)
        await second.close()

        third = SettlementWriter(db_url, assets=ASSETS)
        await third.start()
        assert third.committed_seq == len(commands)
        await _feed(third, commands)
        await third.close()
        return lost, second.stats, third.stats

    lost, second, third = asyncio.run(main())
    assert second.skipped_commands >= 9_000
    assert third.skipped_commands == len(commands) and third.batches == 0
    assert_settled(db_url, engine, commands)


def test_connection_killed_mid_batch_is_retried_exactly_once(db_url):
    """Deterministic: the writer has COPYed a batch's transfers inside its
    transaction and waits on a lock we hold; we terminate its backend there.
    Then random kills while the rest of the stream flows."""
    engine, commands = run(seed=11, n=30_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=1_500,
                                  flush_interval_ms=5)
        await writer.start()
        admin = await asyncpg.connect(db_url)   # outside any transaction: fresh pg_stat_activity
        async with BalancesLocked(db_url) as lock:     # the batch's balance update waits
            await _feed(writer, commands[:500])
            for _ in range(500):
                state = await admin.fetchrow(
                    "SELECT pid, xact_start IS NOT NULL AS in_xact, query FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                    "AND application_name LIKE 'settlement-writer:%'")
                if state:
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("writer never blocked mid-batch")
            assert state["pid"] in writer.backend_pids
            assert state["in_xact"] and "balances" in state["query"], dict(state)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", state["pid"])
            await lock.release()
        assert await admin.fetchval("SELECT count(*) FROM transfers") == 0   # rolled back

        kills = 0
        rng = random.Random(3)

        async def killer():
            nonlocal kills
            while True:
                await asyncio.sleep(rng.uniform(0.02, 0.08))
                pids = writer.backend_pids
                if pids and await admin.fetchval("SELECT pg_terminate_backend($1)",
                                                 rng.choice(pids)):
                    kills += 1

        killing = asyncio.create_task(killer())
        await _feed(writer, commands[500:], every=200, pause_s=0.002)
        await asyncio.sleep(0.3)
        killing.cancel()
        await writer.close()
        await admin.close()
        return writer.stats, kills

    stats, kills = asyncio.run(main())
    assert kills >= 3, kills
    assert stats.retries >= 2 and stats.reconnects >= 2, stats
    assert_settled(db_url, engine, commands)


def test_commit_acknowledgement_lost_is_not_booked_twice(db_url):
    """The COMMIT reached PostgreSQL but its answer did not (the connection
    died right after): the retry finds last_seq past the batch and skips it."""
    engine, commands = run(seed=5, n=6_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=1_000)
        real_commit = writer._commit
        lost = {"n": 0}

        async def commit_then_lose_answer(conn, batch, builder, previous, **kw):
            await real_commit(conn, batch, builder, previous, **kw)
            if lost["n"] < 3:
                lost["n"] += 1
                conn.terminate()
                raise asyncpg.ConnectionDoesNotExistError("connection lost after COMMIT")

        writer._commit = commit_then_lose_answer
        await writer.start()
        await _feed(writer, commands)
        await writer.close()
        return writer.stats, lost["n"]

    stats, lost = asyncio.run(main())
    assert lost == 3 and stats.skipped_batches == 3 and stats.retries == 3, stats
    assert_settled(db_url, engine, commands)


def test_two_writers_of_one_engine_settle_each_command_once(db_url):
    """Two writers (say, a failover overlap) fed the same stream concurrently:
    the settlement_state row lock serialises them; each seq lands once."""
    engine, commands = run(seed=9, n=15_000)

    async def main():
        a = SettlementWriter(db_url, assets=ASSETS, batch_events_max=700, flush_interval_ms=2)
        b = SettlementWriter(db_url, assets=ASSETS, batch_events_max=1_100, flush_interval_ms=3)
        await a.start()
        await b.start()
        await asyncio.gather(_feed(a, commands, every=50, pause_s=0.001),
                             _feed(b, commands, every=70, pause_s=0.001))
        await a.close()
        await b.close()
        return a.stats, b.stats

    sa, sb = asyncio.run(main())
    assert sa.batches + sb.batches > 0
    assert sa.skipped_batches + sb.skipped_batches + sa.trimmed_batches + sb.trimmed_batches > 0
    assert sa.commands + sb.commands == len(commands)
    assert_settled(db_url, engine, commands)


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="soak test: set EXCHANGE_SOAK=1")
def test_soak_million_commands(db_url):
    engine, commands = run(seed=99, n=1_000_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS)
        await writer.start()
        await _feed(writer, commands, every=5_000, pause_s=0)
        await writer.close()

    asyncio.run(main())
    assert_settled(db_url, engine, commands)
