"""Schema and migrations on a real PostgreSQL: idempotence, constraints, triggers, views."""
from __future__ import annotations

import asyncio
import importlib
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from settlement import MigrationError, migrate, register_assets
from settlement.assets import AssetMismatch
from settlement.migrate import migrations
from engine import Asset
from engine.ledger import (BUCKETS, FIRST_USER_ACCOUNT, SYSTEM_ACCOUNTS, SYSTEM_OUTSIDE,
                           TRANSFER_KINDS)
from engine.reasons import ACTION_ADJUST, ACTION_ADJUST_APPROVE, ADMIN_ACTIONS

ROOT = Path(__file__).resolve().parents[2]


def _run(coro):
    return asyncio.run(coro)


async def _with_conn(url, fn):
    conn = await asyncpg.connect(url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


def test_migrate_is_idempotent_and_recorded(make_db):
    url = make_db(migrated=False)
    versions = [m.version for m in migrations()]
    assert _run(migrate(url)) == versions
    assert _run(migrate(url)) == []
    assert _run(migrate(url)) == []
    rows = _run(_with_conn(url, lambda c: c.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")))
    assert [(r["version"], r["name"], r["checksum"]) for r in rows] == \
        [(m.version, m.name, m.checksum) for m in migrations()]


def test_concurrent_migrations_apply_each_file_once(make_db):
    url = make_db(migrated=False)

    async def main():
        return await asyncio.gather(*(migrate(url) for _ in range(4)))

    results = _run(main())
    assert sorted(results, key=len) == [[], [], [], [m.version for m in migrations()]]


def test_an_edited_migration_is_refused(db_url):
    _run(_with_conn(db_url, lambda c: c.execute(
        "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")))
    with pytest.raises(MigrationError, match="never edit"):
        _run(migrate(db_url))


def test_a_database_newer_than_the_code_is_refused(db_url):
    _run(_with_conn(db_url, lambda c: c.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')")))
    with pytest.raises(MigrationError, match="does not know"):
        _run(migrate(db_url))


async def _seed(conn):
    await register_assets(conn, [Asset("BTC", 8), Asset("USDT", 6)])
    await conn.execute("INSERT INTO accounts (id, kind) VALUES (2, 'user')")
    await conn.execute("""
        INSERT INTO transfers (seq, event_index, asset_id, amount, source_account, source_bucket,
                               target_account, target_bucket, kind, source_balance, target_balance)
        VALUES (1, 0, 1, 5, 0, 'available', 2, 'available', 'deposit', -5, 5)""")
    await conn.execute("""
        INSERT INTO trades (trade_id, seq, event_index, symbol, price_ticks, qty_lots, base_asset_id,
            quote_asset_id, base_amount, quote_amount, maker_order_id, taker_order_id,
            maker_account, taker_account, taker_side, maker_fee, taker_fee,
            maker_remaining_lots, taker_remaining_lots)
        VALUES (1, 2, 0, 'BTC-USDT', 3000000, 1, 1, 2, 10000, 3000000, 1, 2, 2, 3, 'buy', 3, 6, 0, 0)""")
    await conn.execute("""
        INSERT INTO audit_log (seq, event_index, account_id, asset_id, amount, admin, reason,
                               available_before, available_after, action)
        VALUES (3, 0, 2, 1, -1, 'ops', 'why', 5, 4, 'adjust')""")


@pytest.mark.parametrize("table", ["transfers", "trades", "audit_log"])
@pytest.mark.parametrize("statement", ["UPDATE {t} SET seq = seq + 1", "DELETE FROM {t}",
                                       "TRUNCATE {t}"])
def test_ledger_tables_are_append_only(db_url, table, statement):
    async def check(conn):
        await _seed(conn)
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await conn.execute(statement.format(t=table))
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 1
    _run(_with_conn(db_url, check))


@pytest.mark.parametrize("sql, constraint", [
    ("INSERT INTO balances VALUES (2, 1, -1, 0, 1)", "balances_available_nonnegative"),
    ("INSERT INTO balances VALUES (2, 1, 0, -1, 1)", "balances_locked_nonnegative"),
    ("INSERT INTO balances VALUES (1, 1, -1, 0, 1)", "balances_available_nonnegative"),
    ("INSERT INTO balances VALUES (1, 1, 0, 5, 1)", "balances_system_unlocked"),
    ("INSERT INTO accounts VALUES (7, 'system')", "accounts_kind_by_id"),
    ("INSERT INTO transfers (seq, event_index, asset_id, amount, source_account, source_bucket,"
     " target_account, target_bucket, kind, source_balance, target_balance)"
     " VALUES (9, 0, 1, 0, 0, 'available', 2, 'available', 'deposit', 0, 0)", "transfers_amount_check"),
    ("INSERT INTO transfers (seq, event_index, asset_id, amount, source_account, source_bucket,"
     " target_account, target_bucket, kind, source_balance, target_balance)"
     " VALUES (9, 0, 1, 5, 0, 'available', 2, 'frozen', 'deposit', 0, 0)", "transfers_target_bucket_check"),
    ("INSERT INTO transfers (seq, event_index, asset_id, amount, source_account, source_bucket,"
     " target_account, target_bucket, kind, source_balance, target_balance)"
     " VALUES (9, 0, 1, 5, 2, 'available', 2, 'available', 'lock', 0, 0)", "transfers_moves"),
    ("INSERT INTO audit_log (seq, event_index, account_id, asset_id, amount, admin, reason,"
     " available_before, available_after, action) VALUES (9, 0, 2, 1, 5, 'ops', 'x', 0, 6, 'adjust')",
     "audit_log_arithmetic"),
    # an action row: its action is a known one; a money row is whole, and an adjustment
    # that names who and why
    ("INSERT INTO audit_log (seq, event_index, admin, reason, action)"
     " VALUES (9, 0, 'ops', '', 'reboot')",
     "audit_log_action_check"),
    ("INSERT INTO audit_log (seq, event_index, account_id, asset_id, amount, admin, reason,"
     " action) VALUES (9, 0, 2, 1, 5, 'ops', 'x', 'adjust')", "audit_log_money_whole"),
    ("INSERT INTO audit_log (seq, event_index, account_id, asset_id, amount, admin, reason,"
     " available_before, available_after, action) VALUES (9, 0, 2, 1, 5, 'ops', 'x', 0, 5, 'freeze')",
     "audit_log_money_is_adjustment"),
    ("INSERT INTO audit_log (seq, event_index, account_id, asset_id, amount, admin, reason,"
     " available_before, available_after, action) VALUES (9, 0, 2, 1, 5, '', 'x', 0, 5, 'adjust')",
     "audit_log_money_is_adjustment"),
    ("INSERT INTO transfers (seq, event_index, asset_id, amount, source_account, source_bucket,"
     " target_account, target_bucket, kind, source_balance, target_balance)"
     " VALUES (9, 0, 1, 5, 2, 'available', 2, 'locked', 'withdraw_held', 0, 0)",
     "transfers_kind_check"),
])
def test_check_constraints(db_url, sql, constraint):
    async def check(conn):
        await _seed(conn)
        with pytest.raises(asyncpg.CheckViolationError) as err:
            await conn.execute(sql)
        assert err.value.constraint_name == constraint
    _run(_with_conn(db_url, check))


def test_the_outside_world_may_go_negative(db_url):
    async def check(conn):
        await _seed(conn)
        await conn.execute("INSERT INTO balances VALUES (0, 1, -5, 0, 1), (2, 1, 5, 0, 1)")
        return await conn.fetch("SELECT account_id, asset, available, total FROM balances_view "
                                "ORDER BY account_id")
    rows = _run(_with_conn(db_url, check))
    assert [(r["account_id"], r["asset"], r["available"]) for r in rows] == \
        [(0, "BTC", Decimal("-0.00000005")), (2, "BTC", Decimal("0.00000005"))]


def test_views_show_exact_numeric_amounts(db_url):
    async def check(conn):
        await _seed(conn)
        values = [await conn.fetchval("SELECT minor_to_decimal($1, $2)", amount, scale)
                  for amount, scale in [(123456789, 8), (2**63 - 1, 18), (-(2**63), 0), (1, 6), (0, 2)]]
        await conn.execute("""
            INSERT INTO trades (trade_id, seq, event_index, symbol, price_ticks, qty_lots,
                base_asset_id, quote_asset_id, base_amount, quote_amount, maker_order_id,
                taker_order_id, maker_account, taker_account, taker_side, maker_fee, taker_fee,
                maker_remaining_lots, taker_remaining_lots)
            VALUES (2, 4, 0, 'BTC-USDT', 1, 1, 1, 2, 1, 123456789012345678, 1, 2, 2, 3, 'buy',
                    0, 0, 0, 0)""")
        big = await conn.fetchval("SELECT price FROM trades_view WHERE trade_id = 2")
        assert big == Decimal("12345678901234567800"), big
        trade = await conn.fetchrow("SELECT * FROM trades_view WHERE trade_id = 1")
        transfer = await conn.fetchrow("SELECT * FROM transfers_view")
        audit = await conn.fetchrow("SELECT * FROM audit_log_view")
        return values, trade, transfer, audit
    values, trade, transfer, audit = _run(_with_conn(db_url, check))
    assert values == [Decimal("1.23456789"), Decimal("9.223372036854775807"),
                      Decimal(-(2**63)), Decimal("0.000001"), Decimal("0.00")]
    assert str(values[3]) == "0.000001"
    assert trade["base_amount"] == Decimal("0.0001") and trade["quote_amount"] == Decimal("3")
    assert trade["price"] == Decimal("30000") and trade["taker_fee"] == Decimal("0.000006")
    assert transfer["amount"] == Decimal("0.00000005") and transfer["asset"] == "BTC"
    assert audit["amount"] == Decimal("-0.00000001")


def test_register_assets_is_idempotent_and_refuses_a_changed_scale(db_url):
    ids = _run(register_assets(db_url, [Asset("BTC", 8), Asset("USDT", 6)]))
    again = _run(register_assets(db_url, [Asset("USDT", 6), Asset("ETH", 18)]))
    assert again["BTC"] == ids["BTC"] and again["USDT"] == ids["USDT"] and "ETH" in again
    with pytest.raises(AssetMismatch, match="scale"):
        _run(register_assets(db_url, [Asset("BTC", 6)]))


def test_cli_migrate_status_balances(make_db):
    url = make_db(migrated=False)
    env = {**os.environ, "DATABASE_URL": url}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "settlement", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    first = cli("migrate")
    assert first.returncode == 0, first.stderr
    assert "applied migrations [1" in first.stdout
    again = cli("migrate")
    assert again.returncode == 0 and "up to date" in again.stdout
    assert cli("url").stdout.strip() == url
    status = cli("status")
    assert status.returncode == 0 and "schema version" in status.stdout
    assert cli("balances").returncode == 0


def test_user_queries_are_served_by_indexes(db_url):
    """An account's transfers by time, a trade by id, an order's history."""
    from engine.flow import CROSS_ASSETS as ASSETS, run
    from settlement import SettlementWriter
    engine, commands = run(seed=13, n=3_000)

    async def settle():
        writer = SettlementWriter(db_url, assets=ASSETS)
        await writer.start()
        for events in commands:
            await writer.put(events)
        await writer.close()

    asyncio.run(settle())

    async def check(conn):
        await conn.execute("ANALYZE")
        await conn.execute("SET enable_seqscan = off")     # can an index serve it at all?

        async def plan(sql, *args):
            return "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))

        via_function = await conn.fetch("SELECT id FROM account_transfers(5)")
        naive = await conn.fetch("SELECT id FROM transfers WHERE source_account = 5 "
                                 "OR target_account = 5 ORDER BY created_at, id")
        assert [r["id"] for r in via_function] == [r["id"] for r in naive] and naive
        p = await plan("SELECT * FROM account_transfers(5, now() - interval '1 day')")
        assert "transfers_source_account_time" in p and "transfers_target_account_time" in p, p
        p = await plan("SELECT * FROM trades WHERE trade_id = 7")
        assert "trades_pkey" in p, p
        p = await plan("SELECT * FROM trades WHERE maker_order_id = 9 OR taker_order_id = 9")
        assert "trades_maker_order" in p and "trades_taker_order" in p, p
        p = await plan("SELECT * FROM transfers WHERE order_id = 9")
        assert "transfers_order" in p, p
        p = await plan("SELECT * FROM orders WHERE order_id = 9")
        assert "orders_pkey" in p, p
    _run(_with_conn(db_url, check))


def test_check_constraints_repeat_the_ledger_rules_of_engine_ledger(db_url):
    """The SQL CHECKs restate engine.ledger (PostgreSQL cannot import it): the
    buckets, the transfer kinds and the system-account boundary must agree."""
    async def read(conn):
        checks = {r["conname"]: r["def"] for r in await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE contype = 'c' AND conrelid IN ('transfers'::regclass, "
            "'balances'::regclass, 'accounts'::regclass, 'audit_log'::regclass)")}
        system = [r["id"] for r in await conn.fetch(
            "SELECT id FROM accounts WHERE kind = 'system' ORDER BY id")]
        return checks, system

    checks, system = _run(_with_conn(db_url, read))

    def literals(name):         # 'x'::text, in the order of the CHECK ('' left out)
        return tuple(t for t in re.findall(r"'([^']*)'::text", checks[name]) if t)

    def bounds(name, column):   # (column OP number) -> [(OP, number)]
        return [(op, int(n)) for op, n in re.findall(rf"\({column} ([<>=]+) (\d+)\)",
                                                     checks[name])]

    assert literals("transfers_source_bucket_check") == BUCKETS
    assert literals("transfers_target_bucket_check") == BUCKETS
    assert literals("transfers_kind_check") == TRANSFER_KINDS
    assert literals("audit_log_action_check") == ADMIN_ACTIONS
    assert literals("audit_log_money_is_adjustment") == (ACTION_ADJUST, ACTION_ADJUST_APPROVE)
    assert bounds("accounts_kind_by_id", "id") == [("<", FIRST_USER_ACCOUNT)]
    assert bounds("balances_system_unlocked", "account_id") == [(">=", FIRST_USER_ACCOUNT)]
    assert bounds("balances_available_nonnegative", "account_id") == [("=", SYSTEM_OUTSIDE)]
    assert bounds("balances_locked_nonnegative", "account_id") == [("=", SYSTEM_OUTSIDE)]
    assert tuple(system) == SYSTEM_ACCOUNTS == tuple(range(FIRST_USER_ACCOUNT))


# ---------------------------------------------------------------- 0003 on an older ledger
def _migrate_through(url, version, monkeypatch):
    """Migrate as code that shipped migrations 1..version would."""
    migrate_module = importlib.import_module("settlement.migrate")  # the name `migrate` is the function
    shipped = [m for m in migrations() if m.version <= version]
    with monkeypatch.context() as patch:
        patch.setattr(migrate_module, "migrations", lambda: shipped)
        assert _run(migrate(url)) == list(range(1, version + 1))


_SCHEMA_SQL = """
    SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'index ' || indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL
    SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' '
           || is_nullable || ' ' || coalesce(column_default, '-')
    FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL
    SELECT 'view ' || viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'
    UNION ALL
    SELECT 'trigger ' || tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    ORDER BY 1
"""


def test_a_ledger_at_0002_upgrades_to_the_schema_of_a_fresh_one(make_db, monkeypatch):
    fresh = make_db()
    old = make_db(migrated=False)
    _migrate_through(old, 2, monkeypatch)
    # an adjustment's audit row as 0001 wrote it
    _run(_with_conn(old, lambda c: c.execute(
        "INSERT INTO audit_log (seq, event_index, account_id, asset_id, amount, admin, reason, "
        "available_before, available_after) VALUES (3, 0, 2, 1, -1, 'ops', 'why', 5, 4)")))
    assert _run(migrate(old)) == [3]
    schema = [_run(_with_conn(url, lambda c: c.fetch(_SCHEMA_SQL))) for url in (fresh, old)]
    assert [tuple(r) for r in schema[0]] == [tuple(r) for r in schema[1]]
    [row] = _run(_with_conn(old, lambda c: c.fetch(
        "SELECT action, target, before, after, adjustment_id, approved_by, amount FROM audit_log")))
    assert tuple(row) == ("adjust", "", "", "", None, "", -1)


def test_0003_keeps_refs_reused_before_it_and_refuses_them_after(make_db, monkeypatch):
    """A ledger from before refs were keys may reuse one: the migration keeps
    those rows (append-only), leaves the later uses out of the index, and a
    new transfer reusing the ref still collides with the first."""
    url = make_db(migrated=False)
    _migrate_through(url, 2, monkeypatch)
    insert = ("INSERT INTO transfers (seq, event_index, asset_id, amount, source_account, "
              "source_bucket, target_account, target_bucket, kind, ref, source_balance, "
              "target_balance) VALUES ($1, 0, 1, 5, $2, 'available', $3, 'available', $4, $5, 0, 0)")
    legacy = [(1, 0, 2, "deposit", "dup"), (2, 0, 2, "deposit", "dup"), (3, 0, 2, "deposit", "once"),
              (4, 2, 0, "withdraw", "w"), (5, 2, 0, "withdraw", "w"), (6, 2, 0, "withdraw", "w"),
              (7, 0, 2, "adjust", "same reason"), (8, 0, 2, "adjust", "same reason")]

    async def seed(conn):
        await register_assets(conn, [Asset("BTC", 8)])
        await conn.executemany(insert, legacy)
    _run(_with_conn(url, seed))
    assert _run(migrate(url)) == [3]

    async def check(conn):
        ids = {r["seq"]: r["id"] for r in await conn.fetch("SELECT seq, id FROM transfers")}
        assert sorted(ids) == list(range(1, 9))             # nothing dropped
        comments = {r["name"]: r["comment"] for r in await conn.fetch(
            "SELECT c.relname AS name, obj_description(c.oid, 'pg_class') AS comment "
            "FROM pg_class c WHERE c.relname LIKE 'transfers_%ref_key'")}
        assert f"transfers.id {{{ids[2]}}}" in comments["transfers_deposit_ref_key"]
        assert f"transfers.id {{{ids[5]},{ids[6]}}}" in comments["transfers_withdraw_ref_key"]
        assert "Exempt" not in comments["transfers_withdrawal_end_ref_key"]
        for seq, source, target, kind, ref in [(9, 0, 2, "deposit", "dup"),
                                               (9, 0, 2, "deposit", "once"),
                                               (9, 2, 0, "withdraw", "w")]:
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(insert, seq, source, target, kind, ref)
        await conn.execute(insert, 9, 0, 2, "deposit", "new")
        await conn.execute(insert, 10, 0, 2, "adjust", "same reason")
    _run(_with_conn(url, check))
