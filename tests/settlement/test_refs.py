"""Idempotency refs in the ledger (migration 0003, settlement.refs) on a real
PostgreSQL: the unique indexes agree with REF_KEYS, refuse a reused ref and
nothing else, and a reused ref stops the writer with an error naming it."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from engine.ledger import (AVAILABLE, BUCKETS, KIND_ADJUST, KIND_DEPOSIT, KIND_WITHDRAW,
                           KIND_WITHDRAW_HOLD, KIND_WITHDRAW_RELEASE, LOCKED, SYSTEM_FEES,
                           SYSTEM_OUTSIDE, TRANSFER_KINDS)
from engine.messages import Deposit, PlaceOrder, Withdraw, WithdrawalRequested
from engine.flow import CROSS_ASSETS, new_engine
from settle_checks import assert_settled
from settle_events import ASSETS, Books
from settlement import LedgerRejected, SettlementWriter, register_assets
from settlement.refs import REF_KEY_BY_INDEX, REF_KEYS, REF_KINDS

NEW_ROW_ID = 2**62      # a transfer booked after the migration


async def _with_conn(url, fn):
    conn = await asyncpg.connect(url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


_UNIQUE_INDEXES = """
    SELECT c.relname AS name, pg_get_expr(i.indpred, i.indrelid) AS predicate,
           array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 ORDER BY k.n) AS columns
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = 'transfers'::regclass AND i.indisunique AND NOT i.indisprimary
"""


def test_the_unique_indexes_restate_ref_keys(db_url):
    """Each live index covers exactly the (kind, source bucket, ref) REF_KEYS
    says, on the columns it says: PostgreSQL evaluates the index's own
    predicate on every combination."""
    candidates = [(kind, bucket, ref) for kind in TRANSFER_KINDS for bucket in BUCKETS
                  for ref in ("", "r-1")]

    async def read(conn):
        found = {}
        for r in await conn.fetch(_UNIQUE_INDEXES):
            covered = await conn.fetch(
                f"SELECT n, ({r['predicate']}) AS covered FROM unnest($1::int[], $2::bigint[], "
                "$3::text[], $4::text[], $5::text[]) AS transfers(n, id, kind, source_bucket, ref) "
                "ORDER BY n", list(range(len(candidates))), [NEW_ROW_ID] * len(candidates),
                *[list(c) for c in zip(*candidates)])
            found[r["name"]] = (tuple(r["columns"]), [row["covered"] for row in covered])
        return found

    found = asyncio.run(_with_conn(db_url, read))
    assert set(found) == set(REF_KEY_BY_INDEX)
    for key in REF_KEYS:
        columns, covered = found[key.index]
        assert columns == (("kind",) if key.by_kind else ()) + (f"{key.account}_account",
                                                                "asset_id", "ref"), key.index
        assert covered == [key.applies(*c) for c in candidates], key.index
    # the namespaces of the engine: every deposit and withdrawal kind is keyed, adjust never
    assert REF_KINDS == {KIND_DEPOSIT, KIND_WITHDRAW, KIND_WITHDRAW_HOLD, KIND_WITHDRAW_RELEASE}


# (kind, source, target) of a transfer; the user account is 2
_MOVES = {
    "deposit": (KIND_DEPOSIT, (SYSTEM_OUTSIDE, AVAILABLE), (2, AVAILABLE)),
    "withdraw": (KIND_WITHDRAW, (2, AVAILABLE), (SYSTEM_OUTSIDE, AVAILABLE)),
    "fee sweep": (KIND_WITHDRAW, (SYSTEM_FEES, AVAILABLE), (SYSTEM_OUTSIDE, AVAILABLE)),
    "hold": (KIND_WITHDRAW_HOLD, (2, AVAILABLE), (2, LOCKED)),
    "approve": (KIND_WITHDRAW, (2, LOCKED), (SYSTEM_OUTSIDE, AVAILABLE)),
    "release": (KIND_WITHDRAW_RELEASE, (2, LOCKED), (2, AVAILABLE)),
    "adjust": (KIND_ADJUST, (SYSTEM_OUTSIDE, AVAILABLE), (2, AVAILABLE)),
    "adjust out": (KIND_ADJUST, (2, AVAILABLE), (SYSTEM_OUTSIDE, AVAILABLE)),
    "deposit to 3": (KIND_DEPOSIT, (SYSTEM_OUTSIDE, AVAILABLE), (3, AVAILABLE)),
    "withdraw from 3": (KIND_WITHDRAW, (3, AVAILABLE), (SYSTEM_OUTSIDE, AVAILABLE)),
}
# (first, second, refused): the same ref "r" on asset 1 unless said otherwise
_PAIRS = [
    ("deposit", "deposit", True),
    ("deposit", "deposit to 3", False),         # another account
    ("deposit", "withdraw", False),             # another namespace
    ("withdraw", "withdraw", True),
    ("fee sweep", "fee sweep", True),
    ("withdraw", "hold", True),                 # one withdraw namespace: started twice
    ("hold", "hold", True),
    ("hold", "approve", False),                 # a withdrawal's life: hold, then approve ...
    ("hold", "release", False),                 # ... or release
    ("approve", "release", True),               # ... never both
    ("approve", "approve", True),
    ("release", "release", True),
    ("withdraw", "approve", True),              # the withdraw kind once
    ("withdraw", "withdraw from 3", False),
    ("adjust", "adjust", False),                # an adjust's ref is its reason
    ("adjust out", "adjust", False),
    ("deposit", "adjust", False),
]


@pytest.mark.parametrize("first, second, refused", _PAIRS)
def test_a_reused_ref_is_refused_in_its_namespace_only(db_url, first, second, refused):
    async def check(conn):
        await register_assets(conn, ASSETS)

        async def insert(move, asset_id=1, ref="r"):
            kind, (source, source_bucket), (target, target_bucket) = _MOVES[move]
            await conn.execute(
                "INSERT INTO transfers (seq, event_index, asset_id, amount, source_account, "
                "source_bucket, target_account, target_bucket, kind, ref, source_balance, "
                "target_balance) VALUES (1, 0, $1, 5, $2, $3, $4, $5, $6, $7, 0, 0)",
                asset_id, source, source_bucket, target, target_bucket, kind, ref)

        await insert(first)
        await insert(second, asset_id=2)        # another asset: always its own key
        await insert(second, ref="")            # no ref: never a key
        if refused:
            with pytest.raises(asyncpg.UniqueViolationError) as err:
                await insert(second)
            assert err.value.constraint_name in REF_KEY_BY_INDEX
        else:
            await insert(second)
    asyncio.run(_with_conn(db_url, check))


async def _settle(url, commands, **kw):
    writer = SettlementWriter(url, assets=ASSETS, **kw)
    await writer.start()
    error = None
    try:
        for events in commands:
            await writer.put(events)
        await writer.flush()
    except LedgerRejected as exc:
        error = exc
    try:
        await writer.close()
    except LedgerRejected:
        assert error is not None
    return writer, error


async def _last_seq(url):
    return await _with_conn(url, lambda c: c.fetchval(
        "SELECT coalesce(max(last_seq), 0) FROM settlement_state"))


def test_a_deposit_ref_already_in_the_ledger_stops_the_writer_naming_the_transfer(db_url):
    books = Books()
    books.deposit(2, "USDT", 100, ref="d-1")
    books.deposit(3, "USDT", 100, ref="d-1")            # another account: its own ref
    writer, error = asyncio.run(_settle(db_url, books.commands))
    assert error is None and writer.committed_seq == 2
    again = books.deposit(2, "USDT", 50, ref="d-1")
    writer, error = asyncio.run(_settle(db_url, [again]))
    assert error is not None
    assert error.sqlstate == "23505" and error.constraint == "transfers_deposit_ref_key"
    assert writer.stats.retries == 1        # once under the state row lock: still there
    message = str(error)
    assert message.startswith(
        "duplicate ref 'd-1': transfer seq 3 event 0, deposit of 50 USDT from account 0 "
        "available to account 2 available, reuses the ref of seq 1 event 0 "
        "(transfers_deposit_ref_key: a deposit ref is used once per (account, asset))"), message
    (row,) = error.rows
    assert (row["seq"], row["kind"], row["target_account"], row["ref"], row["first_seq"]) == \
        (3, KIND_DEPOSIT, 2, "d-1", 1)
    assert error.events == again and writer.pending_events() == again
    assert asyncio.run(_last_seq(db_url)) == 2          # nothing of the refused batch


def test_a_ref_reused_within_one_batch_names_the_second_use(db_url):
    books = Books()
    books.deposit(2, "BTC", 1_000)
    hold = lambda seq: [  # noqa: E731
        WithdrawalRequested(seq, seq, 2, "BTC", 100, "w-1"),
        books.transfer(seq, "BTC", 100, (2, AVAILABLE), (2, LOCKED), KIND_WITHDRAW_HOLD,
                       ref="w-1")]
    books.command(hold)
    books.command(hold)                     # the engine would say duplicate_ref
    writer, error = asyncio.run(_settle(db_url, books.commands, flush_interval_ms=60_000))
    assert error is not None and error.constraint in REF_KEY_BY_INDEX
    assert "duplicate ref 'w-1': transfer seq 3 event 1, withdraw_hold of 100 BTC from " \
           "account 2 available to account 2 locked, reuses the ref of seq 2 event 1" \
        in str(error), str(error)
    assert [r["seq"] for r in error.rows] == [3]
    assert asyncio.run(_last_seq(db_url)) == 0          # one batch, refused whole


def test_two_writers_of_one_engine_settle_refs_once(db_url):
    """Failover overlap on a stream of refs: the rows keyed by a ref go in only
    under the pipeline's order, so a collision between the two writers is a
    retry (or a deadlock PostgreSQL detects), and each transfer lands once."""
    engine = new_engine()
    commands = []
    for i in range(1_500):
        account = 2 + i % 7
        commands.append(engine.submit(Deposit(account, "USDT", 10_000 + i, ref=f"d-{i}")))
        if i % 3 == 0:
            commands.append(engine.submit(Withdraw(account, "USDT", 7, ref=f"w-{i}")))
        if i % 5 == 0:
            commands.append(engine.submit(PlaceOrder(account, f"o{i}", "BTC-USDT", "buy",
                                                     price=100 + i % 9, qty=1)))

    async def feed(writer, every):
        for n, events in enumerate(commands):
            await writer.put(events)
            if n % every == 0:
                await asyncio.sleep(0.001)

    async def main():
        a = SettlementWriter(db_url, assets=CROSS_ASSETS, batch_events_max=70, flush_interval_ms=2)
        b = SettlementWriter(db_url, assets=CROSS_ASSETS, batch_events_max=110, flush_interval_ms=3)
        await a.start()
        await b.start()
        await asyncio.gather(feed(a, 50), feed(b, 70))
        await a.close()
        await b.close()
        return a.stats, b.stats

    sa, sb = asyncio.run(main())
    assert sa.commands + sb.commands == len(commands)
    assert_settled(db_url, engine, commands)
