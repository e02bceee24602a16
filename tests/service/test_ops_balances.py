"""``exchange balances``, ``snapshot-balances`` and ``overview`` driven as a
user would: the real console script, from a temporary folder, on a database
of its own filled by the engine and the settlement writer.  Balances at a
seq are checked against a fresh engine replayed to that seq."""
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from engine.flow import CROSS_ASSETS as ASSETS, Flow, new_engine
from engine.ledger import TRANSFER_KINDS
from servers import MINIMAL_CONFIG
from settlement import SettlementWriter

EXCHANGE = shutil.which("exchange") or str(Path(sys.executable).with_name("exchange"))
SEED, N = 7, 1_500
SCALE = {a.name: a.scale for a in ASSETS}


def _exchange(cwd, url, *argv, check=None):
    env = dict(os.environ, DATABASE_URL=url)
    r = subprocess.run([EXCHANGE, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=120)
    if check is not None:
        assert r.returncode == check, (r.returncode, r.stdout, r.stderr)
    return r


def _settle(url: str, stream) -> None:
    """Settle the (command, events) pairs of ``stream`` into the ledger at ``url``."""
    async def settle():
        writer = SettlementWriter(url, assets=ASSETS, batch_events_max=500, flush_interval_ms=5)
        await writer.start()
        for _, events in stream:
            await writer.put(events)
        await writer.close()
    asyncio.run(settle())


def _minor(text: str, asset: str) -> int:
    d = Decimal(text)
    assert "E" not in text and d.as_tuple().exponent == -SCALE[asset], (text, asset)
    return int(d.scaleb(SCALE[asset]))


def _fetch(url, sql, *params):
    async def main():
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql, *params)
        finally:
            await conn.close()
    return asyncio.run(main())


def _execute(url, sql):
    async def main():
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    asyncio.run(main())


@pytest.fixture(scope="module")
def ledger(tmp_path_factory, pg_server_url):
    """(url, engine, [(command, events)]): a seeded ledger flow settled into a new database."""
    from settle_db import create_database, drop_database
    from settlement import migrate
    url = asyncio.run(create_database(pg_server_url))
    try:
        asyncio.run(migrate(url))
        engine = new_engine()
        stream = list(Flow("ledger", SEED, engine=engine).stream(N))

        _settle(url, stream)
        yield url, engine, stream
    finally:
        asyncio.run(drop_database(pg_server_url, url))


@pytest.fixture
def cwd(tmp_path):
    return tmp_path


def _busy_account(url) -> int:
    rows = _fetch(url, "SELECT source_account AS a, count(*) FROM transfers WHERE source_account >= 2 "
                       "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1")
    return rows[0]["a"]


def _replayed(stream, seq):
    """A fresh engine that ran the same commands up to seq ``seq``."""
    engine = new_engine()
    for cmd, _ in stream:
        if engine.seq >= seq:
            break
        engine.submit(cmd)
    assert engine.seq == seq
    return engine


def _parse_balances_csv(text):
    rows = list(csv.DictReader(io.StringIO(text)))
    return {r["asset"]: (_minor(r["available"], r["asset"]), _minor(r["locked"], r["asset"]))
            for r in rows}


# ================================================================ balances --at
def test_balances_at_seq_equal_the_engine_replayed_to_that_seq(ledger, cwd):
    url, engine, stream = ledger
    account = _busy_account(url)
    last = engine.seq
    for seq in (1, last // 3, last // 2 + 1, last - 1, last):
        r = _exchange(cwd, url, "balances", str(account), "--at", str(seq), "--csv", check=0)
        got = _parse_balances_csv(r.stdout)
        replayed = _replayed(stream, seq)
        for asset in SCALE:
            assert got.get(asset, (0, 0)) == replayed.balance(account, asset), (seq, asset)


def test_balances_now_and_plain_table(ledger, cwd):
    url, engine, _ = ledger
    account = _busy_account(url)
    r = _exchange(cwd, url, "balances", str(account), "--csv", check=0)
    got = _parse_balances_csv(r.stdout)
    for asset in SCALE:
        assert got.get(asset, (0, 0)) == engine.balance(account, asset)
    table = _exchange(cwd, url, "balances", str(account), check=0).stdout
    assert "\x1b[" not in table                              # plain text off a terminal
    assert f"account {account}: current balances" in table
    for asset, (available, _) in got.items():
        assert f"{Decimal(available).scaleb(-SCALE[asset]):f}" in table


def test_balances_at_time_after_everything_is_now(ledger, cwd):
    url, engine, _ = ledger
    account = _busy_account(url)
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    got = _parse_balances_csv(_exchange(cwd, url, "balances", str(account), "--at", later, "--csv",
                                        check=0).stdout)
    for asset in SCALE:
        assert got.get(asset, (0, 0)) == engine.balance(account, asset)
    before = _parse_balances_csv(_exchange(cwd, url, "balances", str(account), "--at", "2000-01-01",
                                           "--csv", check=0).stdout)
    assert before == {}


# ================================================================ --history
def test_history_chains_and_ends_at_the_current_balance(ledger, cwd):
    url, engine, _ = ledger
    account = _busy_account(url)
    r = _exchange(cwd, url, "balances", str(account), "--history", "--csv", check=0)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) > 20
    seqs = [int(x["seq"]) for x in rows]
    assert seqs == sorted(seqs)
    last: dict[tuple[str, str], int] = {}
    for x in rows:
        key = (x["asset"], x["bucket"])
        before, after = _minor(x["before"], x["asset"]), _minor(x["after"], x["asset"])
        assert after - before == _minor(x["change"], x["asset"])
        assert before == last.get(key, 0), x                 # chains on from the previous one
        last[key] = after
    for asset in SCALE:
        assert (last.get((asset, "available"), 0), last.get((asset, "locked"), 0)) == \
            engine.balance(account, asset)


def test_history_filters_by_seq_and_kind(ledger, cwd):
    url, engine, _ = ledger
    account = _busy_account(url)
    lo, hi = engine.seq // 4, engine.seq // 2
    r = _exchange(cwd, url, "balances", str(account), "--history", "--since", str(lo),
                  "--until", str(hi), "--kind", "trade", "--csv", check=0)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows and all(lo <= int(x["seq"]) <= hi and x["kind"] == "trade" for x in rows)
    table = _exchange(cwd, url, "balances", str(account), "--history", "--kind", "deposit",
                      check=0).stdout
    body = table.split("movements", 1)[1].splitlines()[2:]
    assert body and all(" deposit " in line and " trade " not in line for line in body)
    everything = list(csv.DictReader(io.StringIO(_exchange(
        cwd, url, "balances", str(account), "--history", "--csv", check=0).stdout)))
    for kind in TRANSFER_KINDS:
        r = _exchange(cwd, url, "balances", str(account), "--history", "--kind", kind, "--csv",
                      check=0)
        # exactly this kind's rows of the whole log, none lost and none of another kind
        assert list(csv.DictReader(io.StringIO(r.stdout))) == [
            x for x in everything if x["kind"] == kind]


# ================================================================ snapshot-balances
def test_snapshot_balances_is_once_per_day_and_serves_at(make_db, cwd):
    url = make_db()
    engine = new_engine()
    stream = list(Flow("ledger", SEED + 1, engine=engine).stream(600))

    _settle(url, stream[:400])
    # the first 400 commands were booked two days ago (the ledger is append-only: a test moves
    # its clock with the triggers off), the rest today
    _execute(url, "ALTER TABLE transfers DISABLE TRIGGER ALL; "
                  "UPDATE transfers SET created_at = created_at - interval '2 days'; "
                  "ALTER TABLE transfers ENABLE TRIGGER ALL")
    _settle(url, stream[400:])
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).date().isoformat()
    snap_seq = stream[399][1][0].seq

    first = _exchange(cwd, url, "snapshot-balances", "--date", day, check=0)
    assert f"snapshot {day}: written: through seq {snap_seq}" in first.stdout
    table = "SELECT * FROM daily_balances ORDER BY day, account_id, asset_id"
    header = "SELECT * FROM daily_balance_snapshots ORDER BY day"
    written, written_header = _fetch(url, table), _fetch(url, header)
    assert written
    second = _exchange(cwd, url, "snapshot-balances", "--date", day, check=0)
    assert "already taken, unchanged" in second.stdout
    assert _fetch(url, table) == written and _fetch(url, header) == written_header
    # the snapshot holds every account's balances at its seq
    replayed = _replayed(stream, snap_seq)
    names = {r["asset_id"]: r["name"] for r in _fetch(url, "SELECT asset_id, name FROM assets")}
    for r in written:
        assert (r["available"], r["locked"]) == replayed.balance(r["account_id"], names[r["asset_id"]])
    # yesterday: on top of it; today is not over
    _exchange(cwd, url, "snapshot-balances", check=0)
    today = _exchange(cwd, url, "snapshot-balances", "--date",
                      dt.datetime.now(dt.timezone.utc).date().isoformat())
    assert today.returncode != 0 and "has not ended" in today.stderr
    # by time: the ledger's clock, transfers.created_at
    midnight = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
    old = list(csv.DictReader(io.StringIO(_exchange(
        cwd, url, "balances", "2", "--history", "--until", midnight, "--csv", check=0).stdout)))
    new = list(csv.DictReader(io.StringIO(_exchange(
        cwd, url, "balances", "2", "--history", "--since", midnight, "--csv", check=0).stdout)))
    assert old and new
    assert max(int(x["seq"]) for x in old) <= snap_seq < min(int(x["seq"]) for x in new)
    at_midnight = _parse_balances_csv(_exchange(cwd, url, "balances", "2", "--at", midnight, "--csv",
                                                check=0).stdout)
    for asset in SCALE:
        assert at_midnight.get(asset, (0, 0)) == replayed.balance(2, asset)
    # --at through the snapshot equals the engine, at and after the snapshot's seq
    account = written[-1]["account_id"] if written[-1]["account_id"] >= 2 else 2
    for seq in (snap_seq, snap_seq + 50, engine.seq):
        r = _exchange(cwd, url, "balances", str(account), "--at", str(seq), check=0)
        assert f" snapshot (seq {snap_seq}) on" in r.stdout.splitlines()[0]
        got = _parse_balances_csv(_exchange(cwd, url, "balances", str(account), "--at", str(seq),
                                            "--csv", check=0).stdout)
        for asset in SCALE:
            assert got.get(asset, (0, 0)) == _replayed(stream, seq).balance(account, asset)


# ================================================================ overview
def test_overview_adds_up_and_finds_a_deleted_ledger_row(make_db, cwd):
    url = make_db()
    engine = new_engine()
    stream = list(Flow("ledger", SEED + 2, engine=engine).stream(800))

    _settle(url, stream)
    clean = _exchange(cwd, url, "overview", check=0)
    lines = clean.stdout.strip().splitlines()
    assert lines[-len(SCALE):] == [f"{a}: adds up" for a in sorted(SCALE)]
    one = _exchange(cwd, url, "overview", "--asset", "USDT", check=0)
    assert one.stdout.strip().splitlines()[-1] == "USDT: adds up"

    victim = _fetch(url, "SELECT t.id, t.amount, a.name FROM transfers t JOIN assets a USING (asset_id) "
                         "WHERE kind = 'deposit' ORDER BY id DESC LIMIT 1")[0]
    _execute(url, "ALTER TABLE transfers DISABLE TRIGGER ALL; "
                  f"DELETE FROM transfers WHERE id = {victim['id']}; "
                  "ALTER TABLE transfers ENABLE TRIGGER ALL")
    broken = _exchange(cwd, url, "overview", check=1)
    gap = f"{Decimal(victim['amount']).scaleb(-SCALE[victim['name']]):f}"
    assert f"{victim['name']}: does not add up: user balances + fees exceed deposits - " \
           f"withdrawals + adjustments by {gap}" in broken.stdout
    others = [a for a in SCALE if a != victim["name"]]
    for a in others:
        assert f"{a}: adds up" in broken.stdout


# ================================================================ user mistakes
@pytest.mark.parametrize("argv, words", [
    (["balances", "999999"], "account 999999 is not in the ledger"),
    (["balances", "abc"], "account must be a whole number"),
    (["balances", "2", "--at", "yesterday-ish"], "neither a seq"),
    (["balances", "2", "--history", "--kind", "gift"], "unknown transfer kind"),
    (["overview", "--asset", "DOGE"], "asset 'DOGE' is not in the ledger"),
    (["snapshot-balances", "--date", "2026-13-01"], "is not a date"),
])
def test_a_mistake_is_one_line(ledger, cwd, argv, words):
    url, _, _ = ledger
    r = _exchange(cwd, url, *argv)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert words in r.stderr


@pytest.mark.parametrize("argv", [["balances", "2"], ["overview"], ["snapshot-balances"]])
def test_an_unreachable_database_is_one_line(cwd, argv):
    r = _exchange(cwd, "postgresql://postgres@127.0.0.1:1/postgres", *argv)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot reach the settlement database" in r.stderr


def test_the_database_comes_from_config_first(ledger, cwd):
    url, engine, _ = ledger
    config = cwd / "exchange.toml"
    config.write_text(CONFIG.format(url=url))
    r = _exchange(cwd, "postgresql://postgres@127.0.0.1:1/unused", "balances", "2",
                  "--config", str(config), "--csv", check=0)
    got = _parse_balances_csv(r.stdout)
    assert got and all(got[a] == engine.balance(2, a) for a in got)
    config.write_text("[database\n")
    r = _exchange(cwd, url, "overview", "--config", str(config))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


CONFIG = """
[database]
url = "{url}"
""" + MINIMAL_CONFIG


def test_reconcile_checks_the_daily_snapshots(make_db, cwd):
    url = make_db()
    engine = new_engine()
    stream = list(Flow("ledger", SEED + 2, engine=engine).stream(300))

    _settle(url, stream)
    _execute(url, "ALTER TABLE transfers DISABLE TRIGGER ALL; "
                  "UPDATE transfers SET created_at = created_at - interval '2 days'; "
                  "ALTER TABLE transfers ENABLE TRIGGER ALL")
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).date().isoformat()
    _exchange(cwd, url, "snapshot-balances", "--date", day, check=0)
    assert _exchange(cwd, url, "reconcile", check=0).stdout.splitlines()[-1] \
        == "reconciliation: balanced"
    _execute(url, "ALTER TABLE daily_balances DISABLE TRIGGER ALL; "
                  "UPDATE daily_balances SET available = available + 7 "
                  "WHERE (account_id, asset_id) = (SELECT account_id, asset_id FROM daily_balances "
                  "WHERE account_id >= 2 ORDER BY 1, 2 LIMIT 1); "
                  "ALTER TABLE daily_balances ENABLE TRIGGER ALL")
    found = _exchange(cwd, url, "reconcile", check=1)
    assert found.stdout.splitlines()[-1] == "reconciliation: 1 discrepancies"
    assert "snapshot" in found.stdout and day in found.stdout
