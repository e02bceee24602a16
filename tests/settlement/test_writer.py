"""SettlementWriter behaviour on a real PostgreSQL: batching, backpressure,
permanent errors, configuration guards."""
from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from engine.messages import Deposit, Transfer
from settle_checks import assert_settled
from settle_db import BalancesLocked
from engine.flow import CROSS_ASSETS as ASSETS, new_engine, run
from settlement import (DatabaseUnavailable, LedgerRejected, SettlementError, SettlementWriter,
                        register_assets)


async def _last_seq(url):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT coalesce(max(last_seq), 0) FROM settlement_state")
    finally:
        await conn.close()


def test_a_batch_commits_after_flush_interval_without_flush(db_url):
    engine = new_engine()
    events = engine.submit(Deposit(2, "USDT", 100))

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=10_000,
                                  flush_interval_ms=30)
        await writer.start()
        t0 = time.monotonic()
        await writer.put(events)
        while await _last_seq(db_url) < 1:
            assert time.monotonic() - t0 < 5, "the time bound never flushed"
            await asyncio.sleep(0.005)
        assert writer.stats.batches == 1
        await writer.close()

    asyncio.run(main())
    assert_settled(db_url, engine, [events])


def test_batches_are_cut_at_batch_events_max_and_hold_whole_commands(db_url):
    engine, commands = run(seed=21, n=3_000)
    committed: list[int] = []
    sizes = {events[0].seq: len(events) for events in commands}

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=200,
                                  flush_interval_ms=60_000, on_commit=committed.append)
        await writer.start()
        for events in commands[:-1]:
            await writer.put(events)
        # the size bound alone commits (the time bound is a minute away)
        t0 = time.monotonic()
        while writer.committed_seq < len(commands) - 400:
            assert time.monotonic() - t0 < 10
            await asyncio.sleep(0.01)
        await writer.put(commands[-1])
        await writer.flush()
        await writer.close()
        return writer.stats

    stats = asyncio.run(main())
    assert committed == sorted(committed) and committed[-1] == len(commands)
    previous = 0
    for last in committed[:-1]:          # the last batch was cut by flush()
        batch_events = sum(sizes[s] for s in range(previous + 1, last + 1))
        assert 200 <= batch_events <= 199 + sizes[last], (previous, last, batch_events)
        previous = last
    assert stats.batches == len(committed)
    assert_settled(db_url, engine, commands)


def test_backpressure_a_full_queue_makes_put_wait_and_nothing_is_dropped(db_url):
    engine, commands = run(seed=4, n=3_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=100, queue_events_max=300,
                                  flush_interval_ms=5)
        await writer.start()
        fed = 0

        async def producer():
            nonlocal fed
            for events in commands:
                await writer.put(events)
                fed += 1

        async with BalancesLocked(db_url) as lock:      # PostgreSQL "stalls"
            task = asyncio.create_task(producer())
            await asyncio.sleep(0.5)
            assert not task.done()                      # put() is waiting
            stalled_at = fed
            assert 0 < stalled_at < len(commands)
            buffered = sum(len(e) for e in commands[:stalled_at])
            # the queue bound, plus the batches in flight (one per pipeline slot)
            biggest = max(len(e) for e in commands)
            assert buffered <= 300 + biggest + writer.pipeline_depth * (100 + biggest), buffered
            await asyncio.sleep(0.3)
            assert fed == stalled_at                   # still waiting, nothing dropped or skipped
            assert writer.stats.skipped_commands == 0
            await lock.release()                       # PostgreSQL is back
        await asyncio.wait_for(task, 60)
        await writer.close()

    asyncio.run(main())
    assert_settled(db_url, engine, commands)


def _funded(n_users=2):
    engine = new_engine()
    commands = [engine.submit(Deposit(2 + i, "USDT", 100)) for i in range(n_users)]
    return engine, commands


async def _start_with(db_url, commands, **kw):
    writer = SettlementWriter(db_url, assets=ASSETS, **kw)
    await writer.start()
    for events in commands:
        await writer.put(events)
    await writer.flush()
    return writer


def test_check_violation_stops_the_writer_loudly_and_keeps_the_events(db_url):
    engine, commands = _funded()
    seq = engine.seq
    # an "engine bug": account 2 sends 500 USDT it does not have
    bad = [Transfer(seq + 1, "USDT", 500, 2, "available", 0, "available", "withdraw",
                    source_balance=-400, target_balance=-200 + 500)]
    after = [Transfer(seq + 2, "USDT", 1, 3, "available", 0, "available", "withdraw",
                      source_balance=99, target_balance=-200 + 500 + 1)]

    async def main():
        writer = await _start_with(db_url, commands, flush_interval_ms=50)
        await writer.put(bad)
        await writer.put(after)           # same batch as the bad one
        with pytest.raises(LedgerRejected) as err:
            await writer.flush()
        with pytest.raises(LedgerRejected):
            await writer.put(after)
        assert writer.pending_events() == bad + after
        assert [e[0].seq for e in writer.pending_commands()] == [seq + 1, seq + 2]
        with pytest.raises(SettlementError):
            await writer.close()
        return err.value

    error = asyncio.run(main())
    assert error.sqlstate == "23514" and error.constraint == "balances_available_nonnegative"
    assert error.events == bad + after
    (row,) = error.rows
    assert row["account_id"] == 2 and row["available_after"] == -400
    assert row["transfers"][0]["amount"] == 500
    assert "balances_available_nonnegative" in str(error) and "account_id': 2" in str(error)
    assert asyncio.run(_last_seq(db_url)) == seq        # nothing of the bad batch was committed
    assert_settled(db_url, engine, commands)


def test_a_post_balance_that_disagrees_with_the_ledger_is_refused(db_url):
    engine, commands = _funded()
    seq = engine.seq
    wrong = [Transfer(seq + 1, "USDT", 5, 2, "available", 0, "available", "withdraw",
                      source_balance=12345, target_balance=-195)]

    async def main():
        writer = await _start_with(db_url, commands)
        await writer.put(wrong)
        with pytest.raises(LedgerRejected, match="differ from the engine") as err:
            await writer.flush()
        assert writer.pending_events() == wrong
        with pytest.raises(LedgerRejected):
            await writer.close()
        return err.value

    error = asyncio.run(main())
    (row,) = error.rows
    assert (row["account_id"], row["available"], row["available_after"]) == (2, 95, 12345)
    assert asyncio.run(_last_seq(db_url)) == seq


def test_a_gap_in_the_stream_is_refused_at_put(db_url):
    engine, commands = _funded(3)

    async def main():
        writer = await _start_with(db_url, commands[:1])
        with pytest.raises(LedgerRejected, match="gap"):
            await writer.put(commands[2])
        assert writer.pending_events() == commands[2]
        with pytest.raises(LedgerRejected):
            await writer.put(commands[1])
        with pytest.raises(LedgerRejected):
            await writer.close()

    asyncio.run(main())
    assert asyncio.run(_last_seq(db_url)) == 1


def test_an_unknown_asset_is_refused_with_its_events(db_url):
    engine, commands = _funded()
    alien = [Transfer(engine.seq + 1, "DOGE", 5, 0, "available", 2, "available", "deposit",
                      source_balance=-5, target_balance=5)]

    async def main():
        writer = await _start_with(db_url, commands)
        with pytest.raises(LedgerRejected, match="unknown asset 'DOGE'") as err:
            await writer.put(alien)
        assert err.value.events == alien and writer.pending_events() == alien
        with pytest.raises(LedgerRejected):
            await writer.close()

    asyncio.run(main())


def test_assets_registered_beforehand_are_enough(db_url):
    engine, commands = _funded()
    asyncio.run(register_assets(db_url, ASSETS))

    async def main():
        writer = SettlementWriter(db_url)            # no assets=: read from the table
        await writer.start()
        for events in commands:
            await writer.put(events)
        await writer.close()

    asyncio.run(main())
    assert_settled(db_url, engine, commands)


def test_one_engine_stream_per_database(db_url):
    engine, commands = _funded()

    async def main():
        writer = await _start_with(db_url, commands, engine_id="main")
        await writer.close()
        other = SettlementWriter(db_url, assets=ASSETS, engine_id="shadow")
        with pytest.raises(LedgerRejected, match="holds the ledger of engine 'main'"):
            await other.start()

    asyncio.run(main())


def test_start_on_an_unmigrated_database_fails_at_once(make_db):
    url = make_db(migrated=False)

    async def main():
        writer = SettlementWriter(url, assets=ASSETS, reconnect_attempts_max=50)
        t0 = time.monotonic()
        with pytest.raises(asyncpg.UndefinedTableError):
            await writer.start()
        assert time.monotonic() - t0 < 5            # permanent: not retried

    asyncio.run(main())


def test_an_unreachable_server_ends_in_database_unavailable():
    async def main():
        writer = SettlementWriter("postgresql://postgres@127.0.0.1:1/postgres",
                                  reconnect_attempts_max=3, reconnect_delay_max_ms=20)
        with pytest.raises(DatabaseUnavailable):
            await writer.start()

    asyncio.run(main())


def test_usage_errors(db_url):
    engine, commands = _funded()

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS)
        with pytest.raises(RuntimeError, match="start"):
            await writer.put(commands[0])
        await writer.start()
        with pytest.raises(ValueError):
            await writer.put([])
        await writer.put(commands[0])
        await writer.put(commands[0])               # the same command again: skipped
        assert writer.stats.skipped_commands == 1
        await writer.close()
        with pytest.raises(RuntimeError):
            await writer.put(commands[1])

    asyncio.run(main())
    for bad in ({"batch_events_max": 0}, {"flush_interval_ms": 0},
                {"batch_events_max": 10, "queue_events_max": 5}, {"engine_id": ""}):
        with pytest.raises(ValueError):
            SettlementWriter(db_url, **bad)


def test_the_old_row_names_of_the_event_bounds_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="batch_rows_max.*batch_events_max"):
        writer = SettlementWriter("postgresql://unused", batch_rows_max=50)
    assert (writer.batch_events_max, writer.queue_events_max) == (50, 500)
    with pytest.warns(DeprecationWarning, match="queue_rows_max.*queue_events_max"):
        writer = SettlementWriter("postgresql://unused", batch_events_max=50, queue_rows_max=70)
    assert (writer.batch_events_max, writer.queue_events_max) == (50, 70)
    with pytest.raises(TypeError, match="both"):
        SettlementWriter("postgresql://unused", batch_rows_max=50, batch_events_max=60)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_max'"):
        SettlementWriter("postgresql://unused", batch_max=50)


def test_batch_statements_look_rows_up_by_key_however_big_the_tables(db_url):
    """The per-batch UPDATEs must not scan orders or balances: their cost would
    grow with the exchange's history."""
    from settlement.sql import KEYED_PLANS, SQL_APPLY_BALANCES, SQL_UPDATE_ORDERS
    engine, commands = run(seed=8, n=4_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS)
        await writer.start()
        for events in commands:
            await writer.put(events)
        await writer.close()
        conn = await asyncpg.connect(db_url, server_settings=KEYED_PLANS)
        try:
            await conn.execute("ANALYZE")
            ids = [r[0] for r in await conn.fetch("SELECT order_id FROM orders LIMIT 2000")]
            n = len(ids)
            order_plan = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN " + SQL_UPDATE_ORDERS, ids, [None] * n, [0] * n, [0] * n, ["open"] * n,
                [None] * n, [1] * n))
            keys = await conn.fetch("SELECT account_id, asset_id FROM balances")
            n = len(keys)
            balance_plan = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN " + SQL_APPLY_BALANCES, [k[0] for k in keys], [k[1] for k in keys],
                [0] * n, [0] * n, [None] * n, [None] * n, [1] * n))
            return order_plan, balance_plan
        finally:
            await conn.close()

    order_plan, balance_plan = asyncio.run(main())
    assert "Index Scan using orders_pkey" in order_plan and "Seq Scan" not in order_plan, order_plan
    assert "balances_pkey" in balance_plan and "Seq Scan" not in balance_plan, balance_plan


def test_a_failed_batch_keeps_the_batch_behind_it_uncommitted(db_url):
    """Pipelined: batch k+1 is in flight when batch k hits a CHECK; k+1 must
    roll back too (it would otherwise be committed past a hole)."""
    engine, commands = _funded()
    seq = engine.seq
    bad = [Transfer(seq + 1, "USDT", 500, 2, "available", 0, "available", "withdraw",
                    source_balance=-400, target_balance=300)]
    after = [Transfer(seq + 2, "USDT", 1, 3, "available", 0, "available", "withdraw",
                      source_balance=99, target_balance=301)]

    async def main():
        writer = await _start_with(db_url, commands, batch_events_max=1, pipeline_depth=2)
        await writer.put(bad)          # a batch of its own
        await writer.put(after)        # the next batch, in flight beside it
        with pytest.raises(LedgerRejected, match="balances_available_nonnegative"):
            await writer.flush()
        assert writer.pending_events() == bad + after
        assert writer.committed_seq == seq
        with pytest.raises(LedgerRejected):
            await writer.close()

    asyncio.run(main())
    assert asyncio.run(_last_seq(db_url)) == seq
    assert_settled(db_url, engine, commands)


@pytest.mark.parametrize("pipeline_depth", [1, 2])
def test_both_pipeline_depths_settle_the_same_ledger(make_db, pipeline_depth):
    engine, commands = run(seed=17, n=8_000)
    url = make_db()

    async def main():
        writer = SettlementWriter(url, assets=ASSETS, batch_events_max=800,
                                  pipeline_depth=pipeline_depth)
        await writer.start()
        for i, events in enumerate(commands):
            await writer.put(events)
            if i % 50 == 0:
                await asyncio.sleep(0)
        await writer.close()
        return writer.stats

    stats = asyncio.run(main())
    assert stats.batches > 10 and stats.commands == len(commands)
    assert_settled(url, engine, commands)
