"""SettlementWriter under faults and lifecycle races, on a real PostgreSQL:
duplicate keys, timeouts, cancelled statements, a silent network black hole,
close()/abort() with producers waiting, repeated errors, concurrent starts."""
from __future__ import annotations

import asyncio
import traceback

import asyncpg
import pytest

from engine.messages import Trade, Transfer
from settle_checks import assert_settled
from settle_db import BalancesLocked
from engine.flow import CROSS_ASSETS as ASSETS, run
from settle_proxy import BlackHoleProxy
from settlement import LedgerRejected, SettlementWriter, WriterClosed


async def _feed(writer, commands):
    for events in commands:
        await writer.put(events)


async def _wait_for_lock_wait(admin, timeout_s=10.0) -> int:
    """pid of a writer backend waiting on a lock."""
    for _ in range(int(timeout_s / 0.01)):
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND application_name LIKE 'settlement-writer:%'")
        if pid:
            return pid
        await asyncio.sleep(0.01)
    pytest.fail("the writer never waited on the lock")


def test_ids_another_writer_committed_are_skipped_not_fatal(db_url):
    """Writer B started before writer A committed the stream: B's batches
    meet A's trade and order ids.  B retries under the state row lock, finds
    last_seq past them and books nothing twice."""
    engine, commands = run(seed=31, n=4_000)

    async def main():
        a = SettlementWriter(db_url, assets=ASSETS, batch_events_max=500)
        b = SettlementWriter(db_url, assets=ASSETS, batch_events_max=700)
        await a.start()
        await b.start()                 # both read last_seq 0
        await _feed(a, commands)
        await a.close()
        await _feed(b, commands)        # all of it already committed by A
        await b.close()
        return b.stats

    stats = asyncio.run(main())
    assert stats.batches == 0 and stats.commands == 0, stats
    assert stats.skipped_batches >= 1 and stats.retries >= 1, stats
    assert_settled(db_url, engine, commands)


def test_a_duplicate_key_on_a_connection_that_then_drops_is_retried(db_url):
    """The duplicate-key answer arrives and the connection dies with it: the
    writer must not ask the dead connection anything, but retry the batch on a
    new one (under the state row lock) and settle it once."""
    engine, commands = run(seed=39, n=2_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=500)
        real_commit = writer._commit
        injected = {"n": 0}

        async def duplicate_then_drop(conn, flight, builder, previous, **kw):
            if injected["n"] < 2 and not kw.get("lock_first"):
                injected["n"] += 1
                conn.terminate()
                raise asyncpg.UniqueViolationError(
                    'duplicate key value violates unique constraint "trades_pkey"')
            await real_commit(conn, flight, builder, previous, **kw)

        writer._commit = duplicate_then_drop
        await writer.start()
        await _feed(writer, commands)
        await writer.close()
        return writer.stats, injected["n"]

    stats, injected = asyncio.run(main())
    assert injected == 2 and stats.retries >= 2 and stats.reconnects >= 2, stats
    assert_settled(db_url, engine, commands)


def test_a_real_duplicate_trade_id_stops_the_writer_with_the_batch(db_url):
    engine, commands = run(seed=32, n=2_000)
    first_trade = next(ev for events in commands for ev in events if isinstance(ev, Trade))

    async def main():
        conn = await asyncpg.connect(db_url)
        # a stray row with the id of a trade the engine is about to report
        await conn.execute(
            "INSERT INTO trades (trade_id, seq, event_index, symbol, price_ticks, qty_lots, "
            "base_asset_id, quote_asset_id, base_amount, quote_amount, maker_order_id, "
            "taker_order_id, maker_account, taker_account, taker_side, maker_fee, taker_fee, "
            "maker_remaining_lots, taker_remaining_lots) "
            "VALUES ($1, 0, 0, 'X', 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 'buy', 0, 0, 0, 0)",
            first_trade.trade_id)
        await conn.close()
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=500)
        await writer.start()
        with pytest.raises(LedgerRejected) as err:
            await _feed(writer, commands)
            await writer.flush()
        assert writer.pending_events()[0].seq <= first_trade.seq
        with pytest.raises(LedgerRejected):
            await writer.close()
        return err.value, writer.committed_seq

    error, committed = asyncio.run(main())
    assert error.sqlstate == "23505" and "trades" in str(error)
    assert any(ev.seq == first_trade.seq for ev in error.events)
    assert committed < first_trade.seq


def test_a_statement_timeout_is_retried_and_nothing_is_lost(db_url):
    engine, commands = run(seed=33, n=3_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=400,
                                  flush_interval_ms=5, command_timeout_s=0.3)
        await writer.start()
        async with BalancesLocked(db_url) as lock:
            await _feed(writer, commands[:300])
            await asyncio.sleep(1.0)            # several timeouts while the lock is held
            assert writer.committed_seq == 0
            assert writer.stats.retries >= 2, writer.stats
            await lock.release()
        await _feed(writer, commands[300:])
        await asyncio.wait_for(writer.close(), 60)
        return writer.stats

    stats = asyncio.run(main())
    assert stats.commands == len(commands), stats
    assert_settled(db_url, engine, commands)


def test_a_cancelled_statement_is_retried(db_url):
    """pg_cancel_backend (SQLSTATE 57014) is not an engine bug."""
    engine, commands = run(seed=34, n=2_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=400, flush_interval_ms=5)
        await writer.start()
        admin = await asyncpg.connect(db_url)
        async with BalancesLocked(db_url) as lock:
            await _feed(writer, commands[:300])
            pid = await _wait_for_lock_wait(admin)
            assert await admin.fetchval("SELECT pg_cancel_backend($1)", pid)
            for _ in range(500):
                if writer.stats.retries:
                    break
                await asyncio.sleep(0.01)
            assert writer.stats.retries >= 1 and writer.failure is None
            await lock.release()
        await _feed(writer, commands[300:])
        await asyncio.wait_for(writer.close(), 60)
        await admin.close()

    asyncio.run(main())
    assert_settled(db_url, engine, commands)


def test_a_lock_timeout_is_retried(db_url):
    """A database whose lock_timeout is short (SQLSTATE 55P03 while another
    session holds a lock the batch needs) delays the writer, never stops it."""
    engine, commands = run(seed=40, n=2_000)

    async def main():
        conn = await asyncpg.connect(db_url)
        dbname = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{dbname}" SET lock_timeout = 100')
        await conn.close()
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=400, flush_interval_ms=5)
        await writer.start()
        async with BalancesLocked(db_url) as lock:
            await _feed(writer, commands[:300])
            for _ in range(500):
                if writer.stats.retries >= 2:
                    break
                await asyncio.sleep(0.01)
            assert writer.stats.retries >= 2 and writer.failure is None, writer.stats
            await lock.release()
        await _feed(writer, commands[300:])
        await asyncio.wait_for(writer.close(), 60)

    asyncio.run(main())
    assert_settled(db_url, engine, commands)


@pytest.mark.parametrize("stall", [False, True], ids=["drops-packets", "stops-reading"])
def test_a_silent_network_black_hole_is_detected_and_survived(db_url, stall):
    """Mid-stream every open connection stops carrying data without an error
    or a close: its packets vanish, or nothing reads them any more (the
    sender's buffers fill).  The writer's timeouts notice, it reconnects (new
    connections work) and terminates the abandoned server sessions (one stuck
    in COPY would keep its locks: no server timeout ends it); everything
    settles once."""
    engine, commands = run(seed=35, n=6_000)

    async def main():
        proxy = await BlackHoleProxy(db_url).start()
        writer = SettlementWriter(proxy.url, assets=ASSETS, batch_events_max=300,
                                  flush_interval_ms=5, command_timeout_s=1.0)
        await writer.start()
        await _feed(writer, commands[:2_000])
        frozen = 0
        for events in commands[2_000:4_000]:
            await writer.put(events)
            if not frozen and events[0].seq % 250 == 0 and writer.stats.batches >= 3:
                frozen = proxy.freeze(stall=stall)
        await _feed(writer, commands[4_000:])
        await asyncio.wait_for(writer.close(), 120)
        await proxy.close()
        return writer.stats, frozen

    stats, frozen = asyncio.run(main())
    assert frozen >= 1
    assert stats.retries >= 1 and stats.reconnects >= 1, stats
    if stall:       # (dropped packets leave idle sessions the server may end first)
        assert stats.reaped_sessions >= 1, stats
    assert_settled(db_url, engine, commands)


def test_abort_during_close_ends_close_with_writer_closed(db_url):
    engine, commands = run(seed=42, n=1_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=100,
                                  queue_events_max=100_000, flush_interval_ms=5)
        await writer.start()
        async with BalancesLocked(db_url):
            await _feed(writer, commands)
            closing = asyncio.create_task(writer.close())
            await asyncio.sleep(0.2)
            assert not closing.done()
            await writer.abort()
            await asyncio.wait([closing], timeout=10)
        assert closing.done() and not closing.cancelled()
        assert isinstance(closing.exception(), WriterClosed), closing.exception()
        assert writer.pending_events()

    asyncio.run(main())


def test_abort_wakes_a_waiting_put_and_flush(db_url):
    engine, commands = run(seed=36, n=2_000)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=50, queue_events_max=100,
                                  flush_interval_ms=5)
        await writer.start()
        async with BalancesLocked(db_url):
            producer = asyncio.create_task(_feed(writer, commands))
            await asyncio.sleep(0.3)
            assert not producer.done()          # put() waits for room
            flusher = asyncio.create_task(writer.flush())
            await asyncio.sleep(0.1)
            assert not flusher.done()
            await asyncio.wait_for(writer.abort(), 10)
            done, _ = await asyncio.wait([producer, flusher], timeout=5)
            assert done == {producer, flusher}, "abort() left a waiter hanging"
            assert isinstance(producer.exception(), WriterClosed)
            assert isinstance(flusher.exception(), WriterClosed)
        assert writer.pending_events()          # nothing committed, nothing dropped
        with pytest.raises(WriterClosed):
            await writer.put(commands[-1])

    asyncio.run(main())


def test_close_with_a_put_waiting_commits_every_put_that_returned(db_url):
    """close() while a producer waits for room: that put() is either queued
    (and committed by close) or refused with WriterClosed; never accepted and
    left behind."""
    engine, commands = run(seed=37, n=2_000)
    returned: list[int] = []

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS, batch_events_max=50, queue_events_max=100,
                                  flush_interval_ms=5)
        await writer.start()

        async def producer():
            for events in commands:
                await writer.put(events)
                returned.append(events[0].seq)

        async with BalancesLocked(db_url) as lock:
            task = asyncio.create_task(producer())
            await asyncio.sleep(0.3)
            assert not task.done()
            closing = asyncio.create_task(writer.close())
            await asyncio.sleep(0.1)
            await lock.release()
            await asyncio.wait_for(closing, 60)
            await asyncio.wait([task], timeout=10)
        assert task.done(), "a put() hangs after close()"
        if task.exception() is not None:
            assert isinstance(task.exception(), WriterClosed)
        return writer.committed_seq

    committed = asyncio.run(main())
    assert returned and committed >= returned[-1]

    async def ledger():
        conn = await asyncpg.connect(db_url)
        try:
            return (await conn.fetchval("SELECT last_seq FROM settlement_state"),
                    await conn.fetchval("SELECT count(*) FROM transfers"))
        finally:
            await conn.close()

    settled = [c for c in commands if c[0].seq <= committed]
    assert asyncio.run(ledger()) == (
        committed, sum(isinstance(ev, Transfer) for c in settled for ev in c))


def test_a_failed_writer_raises_a_fresh_error_each_time(db_url):
    engine, commands = run(seed=38, n=100)

    async def main():
        writer = SettlementWriter(db_url, assets=ASSETS)
        await writer.start()
        await writer.put(commands[0])
        with pytest.raises(LedgerRejected):
            await writer.put(commands[2])       # a gap
        raised = []
        for _ in range(4):
            for call in (lambda: writer.put(commands[1]), writer.flush):
                try:
                    await call()
                except LedgerRejected as exc:
                    raised.append(exc)
        try:
            await writer.close()
        except LedgerRejected as exc:
            raised.append(exc)
        return writer.failure, raised

    original, raised = asyncio.run(main())
    assert len(raised) == 9 and len({id(e) for e in raised}) == 9
    assert all(e is not original and e.__cause__ is original for e in raised)
    assert all(str(e) == str(original) and e.events == original.events for e in raised)
    # the same call raises with the same traceback depth the first and the last time
    depth = [len(traceback.extract_tb(e.__traceback__)) for e in raised]
    assert depth[0:2] == depth[6:8], depth


def test_engines_starting_at_once_on_one_database_cannot_both_win(db_url):
    """The one-stream-per-database check and the insert of the state row are
    one atomic step: of writers of different engines starting together,
    exactly one gets the database, every round."""
    async def main():
        conn = await asyncpg.connect(db_url)
        for round_ in range(25):
            await conn.execute("DELETE FROM settlement_state")
            writers = [SettlementWriter(db_url, assets=ASSETS, engine_id=f"e{i}")
                       for i in range(4)]
            results = await asyncio.gather(*(w.start() for w in writers), return_exceptions=True)
            for w, r in zip(writers, results):
                if r is None:
                    await w.close()
            winners = [w.engine_id for w, r in zip(writers, results) if r is None]
            rows = await conn.fetch("SELECT engine_id FROM settlement_state")
            assert len(winners) == 1 and [r["engine_id"] for r in rows] == winners, \
                (round_, results, rows)
            assert all(isinstance(r, LedgerRejected) and "one engine stream" in str(r)
                       for r in results if r is not None), results
        await conn.close()

    asyncio.run(main())
