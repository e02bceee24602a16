"""`exchange reconcile` and `exchange db`, driven as an operator would, on a real PostgreSQL."""
from __future__ import annotations

import json
import os

import asyncpg
from test_ops_replay import exchange, record

from servers import run


def reconcile(tmp_path, db_url, *extra):
    env = {**os.environ, "DATABASE_URL": db_url}
    return exchange("reconcile", *extra, cwd=tmp_path, env=env)


async def sql(url: str, *statements: str):
    conn = await asyncpg.connect(url)
    try:
        out = None
        for statement in statements:
            out = await conn.fetch(statement)
        return out
    finally:
        await conn.close()


def runs(db_url):
    return run(sql(db_url, "SELECT status, discrepancy_count, discrepancies, source "
                           "FROM reconciliation_runs ORDER BY id"))


def test_reconcile_is_balanced_on_a_clean_ledger(tmp_path, db_url):
    seq, _ = record(tmp_path, database_url=db_url)
    for extra in ((), ("--journal", tmp_path / "journal", "--config", tmp_path / "exchange.toml")):
        done = reconcile(tmp_path, db_url, *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines()[-1] == "reconciliation: balanced"
        assert f"through seq {seq}" in done.stdout
    assert [(r["status"], r["discrepancy_count"], r["source"]) for r in runs(db_url)] == [
        ("ok", 0, "database"), ("ok", 0, "journal")]


def _one_transfer(db_url, where: str):
    [row] = run(sql(db_url, "SELECT t.id, t.seq, t.source_account, t.target_account, "
                            "t.target_bucket, t.amount, a.name FROM transfers t "
                            f"JOIN assets a USING (asset_id) WHERE {where} ORDER BY t.id LIMIT 1"))
    return row


def test_reconcile_names_an_injected_balance_change(tmp_path, db_url):
    seq, _ = record(tmp_path, database_url=db_url)
    # account 3's USDT available, changed behind the ledger's back
    [before] = run(sql(db_url, "SELECT b.available, b.asset_id, b.updated_seq FROM balances b "
                               "JOIN assets a "
                               "USING (asset_id) WHERE account_id = 3 AND a.name = 'USDT'"))
    run(sql(db_url, "ALTER TABLE balances DISABLE TRIGGER ALL",
            f"UPDATE balances SET available = available + 1000 WHERE account_id = 3 "
            f"AND asset_id = {before['asset_id']}",
            "ALTER TABLE balances ENABLE TRIGGER ALL"))
    done = reconcile(tmp_path, db_url)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("reconciliation: ") and last.endswith(" discrepancies"), last
    [run_] = runs(db_url)
    assert run_["status"] == "mismatch"
    found = json.loads(run_["discrepancies"])
    assert run_["discrepancy_count"] == len(found) == int(last.split()[1])
    # the ledger against the table, naming account, asset, bucket and the seq they part from
    [hit] = [d for d in found if d["check"] == "balances"]
    assert (hit["account"], hit["asset"], hit["bucket"]) == (3, "USDT", "available")
    assert (hit["expected"], hit["actual"]) == (before["available"], before["available"] + 1000)
    # the ledger never held the table's value: they part at the row's last write
    assert hit["first_seq"] == before["updated_seq"]
    # the whole asset no longer sums to zero
    assert any(d["check"] == "supply" and d["asset"] == "USDT" and d["actual"] == 1000
               for d in found)
    assert all(d["check"] in ("balances", "supply") for d in found), found
    assert "USDT" in done.stdout and "available" in done.stdout


def test_reconcile_names_a_deleted_ledger_row_and_its_seq(tmp_path, db_url):
    seq, _ = record(tmp_path, database_url=db_url)
    # the USDT deposit to account 2: later transfers of that bucket follow it
    deposit = run(sql(db_url, "SELECT t.id, t.seq, t.target_account, t.amount, a.name "
                              "FROM transfers t JOIN assets a USING (asset_id) "
                              "WHERE kind = 'deposit' AND target_account = 2 AND a.name = 'USDT'"))[0]
    run(sql(db_url, "ALTER TABLE transfers DISABLE TRIGGER ALL",
            f"DELETE FROM transfers WHERE id = {deposit['id']}",
            "ALTER TABLE transfers ENABLE TRIGGER ALL"))
    done = reconcile(tmp_path, db_url, "--journal", tmp_path / "journal",
                     "--config", tmp_path / "exchange.toml")
    assert done.returncode == 1, done.stdout + done.stderr
    [run_] = runs(db_url)
    found = json.loads(run_["discrepancies"])
    assert done.stdout.splitlines()[-1] == f"reconciliation: {len(found)} discrepancies"

    def one(check, account):
        [d] = [d for d in found if d["check"] == check and d["account"] == account
               and d["asset"] == "USDT" and d["bucket"] == "available"]
        return d
    # the ledger now sums to less than the balances table, for both ends of the row
    user, world = one("balances", 2), one("balances", 0)
    assert user["actual"] - user["expected"] == deposit["amount"]
    assert world["expected"] - world["actual"] == deposit["amount"]
    # the chain of stored post-transfer balances breaks after the deleted row
    chain = one("chain", 2)
    assert chain["first_seq"] > deposit["seq"]
    assert user["first_seq"] == chain["first_seq"]
    # and the engine replayed from the journal agrees with the table, not the ledger
    engine_ledger = one("engine-ledger", 2)
    assert engine_ledger["expected"] - engine_ledger["actual"] == deposit["amount"]
    assert not [d for d in found if d["check"] == "engine-balances"]


def test_reconcile_checks_locks_against_open_orders(tmp_path, db_url):
    record(tmp_path, database_url=db_url)
    [row] = run(sql(db_url, "SELECT account_id, asset_id FROM balances WHERE account_id >= 2 "
                            "AND locked > 0 ORDER BY 1, 2 LIMIT 1"))
    # move 5 from locked to available: the table still sums, the orders no longer do
    run(sql(db_url, "ALTER TABLE balances DISABLE TRIGGER ALL",
            f"UPDATE balances SET locked = locked - 5, available = available + 5 "
            f"WHERE account_id = {row['account_id']} AND asset_id = {row['asset_id']}",
            "ALTER TABLE balances ENABLE TRIGGER ALL"))
    done = reconcile(tmp_path, db_url)
    assert done.returncode == 1
    found = json.loads(runs(db_url)[0]["discrepancies"])
    [orders] = [d for d in found if d["check"] == "orders"]
    assert orders["account"] == row["account_id"] and orders["bucket"] == "locked"
    assert orders["expected"] - orders["actual"] == 5
    assert not [d for d in found if d["check"] == "supply"]


def test_db_subcommands_and_user_mistakes(tmp_path, db_url):
    env = {**os.environ, "DATABASE_URL": db_url}
    done = exchange("db", "status", cwd=tmp_path, env=env)
    assert done.returncode == 0 and "schema version" in done.stdout, done.stdout + done.stderr
    done = exchange("db", "migrate", cwd=tmp_path, env=env)
    assert done.returncode == 0 and "schema up to date" in done.stdout
    done = exchange("db", "url", cwd=tmp_path, env=env)
    assert done.stdout.strip() == db_url
    # a database that is not there, one that is not migrated, a journal that is not there
    missing = db_url.rsplit("/", 1)[0] + "/exchange_test_does_not_exist"
    for env_url, args in ((missing, ["reconcile"]), (missing, ["db", "status"]),
                          (db_url, ["reconcile", "--journal", tmp_path / "nowhere"])):
        done = exchange(*args, cwd=tmp_path, env={**os.environ, "DATABASE_URL": env_url})
        assert done.returncode == 2, done.stdout + done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("exchange: error: "), line
