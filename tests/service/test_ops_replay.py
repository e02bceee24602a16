"""`exchange replay`, driven as an operator would: a subprocess in a temporary folder."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import asyncpg

from engine.client import Client, ClientError
from engine.messages import CancelOrder, Deposit, PlaceOrder, ReplaceOrder
from engine.service.config import load_config
from engine.service.journal import Journal
from servers import TOKENS, run, serving

EXCHANGE = str(Path(sys.executable).with_name("exchange"))


async def flow(server, n_orders: int = 300, seed: int = 7) -> None:
    """Deposits, then a seeded flow of crossing limit orders, cancels,
    amends and market orders on two instruments."""
    rnd = random.Random(seed)
    c = await Client.connect("127.0.0.1", server.port, token=TOKENS["admin"], gateway_id="ops")
    for account in (2, 3, 4, 5):
        # refs are idempotency keys: each call's deposits are new money, so new refs
        await c.request(Deposit(account, "USDT", 50_000_000_000, ref=f"u{account}-{seed}"))
        await c.request(Deposit(account, "BTC", 500_000_000, ref=f"b{account}-{seed}"))
        await c.request(Deposit(account, "ETH", 5_000_000_000, ref=f"e{account}-{seed}"))
    open_ids: list[tuple[int, int]] = []
    for i in range(n_orders):
        account = rnd.choice((2, 3, 4, 5))
        roll = rnd.random()
        try:
            if roll < 0.1 and open_ids:
                order_id, owner = open_ids.pop(rnd.randrange(len(open_ids)))
                await c.request(CancelOrder(owner, order_id=order_id))
            elif roll < 0.2 and open_ids:
                order_id, owner = rnd.choice(open_ids)
                await c.request(ReplaceOrder(owner, order_id,
                                             price=3_000_000 + rnd.randint(-500, 500)))
            elif roll < 0.25:
                await c.request(PlaceOrder(account, f"m{i}", "BTC-USDT", rnd.choice(("buy", "sell")),
                                           type="market", price=3_100_000 if roll < 0.23 else 2_900_000,
                                           qty=rnd.randint(1, 50), tif="ioc"))
            else:
                symbol = "BTC-USDT" if roll < 0.85 else "ETH-BTC"
                price = 3_000_000 + rnd.randint(-600, 600) if symbol == "BTC-USDT" \
                    else 5_000 + rnd.randint(-50, 50)
                events = await c.request(PlaceOrder(account, f"o{i}", symbol,
                                                    rnd.choice(("buy", "sell")), price=price,
                                                    qty=rnd.randint(1, 80)))
                if events and type(events[0]).__name__ == "Accepted":
                    open_ids.append((events[0].order_id, account))
        except ClientError:
            pass        # a reject (an order already gone) is part of the flow
    await c.close()


def record(folder: Path, *, database_url: str | None = None, snapshot_every: int = 1_000_000,
           n_orders: int = 300) -> tuple[int, str]:
    """Run a server with ``flow`` in ``folder``; (seq, state hash) at the end."""
    async def go():
        async with serving(folder, snapshot_every=snapshot_every,
                           database_url=database_url) as server:
            await flow(server, n_orders)
            if database_url:
                await server.settle_backlog()
            return server.state.seq, server.state.engine.state_hash()
    return run(go())


def hash_at(folder: Path, seq: int) -> str:
    """The state hash at ``seq`` from a fresh engine fed the journal in-process."""
    config = load_config(folder / "exchange.toml")
    engine = config.new_engine()
    with Journal(folder / "journal") as journal:
        for record_ in journal.read(to_seq=seq):
            engine.submit(record_.command)
    assert engine.seq == seq
    return engine.state_hash()


def exchange(*args, cwd: Path, env: dict | None = None, timeout: float = 120):
    done = subprocess.run([EXCHANGE, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def field(output: str, name: str) -> str:
    match = re.search(rf"^{name}: (\S+)", output, re.M)
    assert match, output
    return match.group(1)


def test_replay_reproduces_the_live_state_hash_and_any_seq(tmp_path):
    # snapshots every 200 commands: replay starts from one and needs no configuration
    seq, live_hash = record(tmp_path, snapshot_every=200)
    assert list((tmp_path / "journal" / "snapshots").glob("*.snap"))
    done = exchange("replay", "--journal", tmp_path / "journal", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert int(field(done.stdout, "seq reached")) == seq
    assert field(done.stdout, "state hash") == live_hash
    for name in ("BTC", "USDT", "ETH"):
        [row] = [line.split() for line in done.stdout.splitlines() if line.split()[:1] == [name]]
        assert row[-1] == "0", row          # users + fees + outside world: each asset sums to zero
    assert hash_at(tmp_path, seq) == live_hash

    # --to a seq past a snapshot, and one below every snapshot (needs --config)
    for to in (seq - 37, 150):
        args = ["replay", "--journal", tmp_path / "journal", "--to", to]
        if to < 200:
            refused = exchange(*args, cwd=tmp_path)
            assert refused.returncode == 2
            [line] = refused.stderr.strip().splitlines()
            assert "--config" in line
            args += ["--config", tmp_path / "exchange.toml"]
        done = exchange(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert int(field(done.stdout, "seq reached")) == to
        assert field(done.stdout, "state hash") == hash_at(tmp_path, to)


def test_replay_never_writes_the_journal(tmp_path):
    record(tmp_path, n_orders=20)
    [segment] = sorted((tmp_path / "journal").glob("*.wal"))
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size - 3)           # a torn last record, as a crash leaves it
    before = segment.read_bytes()
    done = exchange("replay", "--journal", tmp_path / "journal", "--config",
                    tmp_path / "exchange.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "torn" in done.stderr
    assert segment.read_bytes() == before
    with Journal(tmp_path / "journal") as journal:        # the server's open() truncates
        last = journal.last_seq
    assert int(field(done.stdout, "seq reached")) == last


def test_resettle_writes_exactly_the_missing_seqs(tmp_path, db_url):
    # settle only part of the journal: a first server settles, a second runs without settlement
    async def settled_part():
        async with serving(tmp_path, database_url=db_url) as server:
            await flow(server, 60, seed=1)
            await server.settle_backlog()
            return server.state.seq
    part = run(settled_part())
    seq, live_hash = record(tmp_path, n_orders=120)     # database off: the ledger stays behind
    assert seq > part

    async def ledger():
        conn = await asyncpg.connect(db_url)
        try:
            return (await conn.fetchval("SELECT last_seq FROM settlement_state"),
                    await conn.fetchval("SELECT count(*) FROM transfers"),
                    await conn.fetchval("SELECT count(DISTINCT seq) FROM transfers WHERE seq > $1",
                                        part),
                    await conn.fetchval("SELECT count(*) FROM (SELECT seq, event_index FROM "
                                        "transfers GROUP BY 1, 2 HAVING count(*) > 1) d"))
        finally:
            await conn.close()
    last, transfers_before, _, _ = run(ledger())
    assert last == part

    env = {**os.environ, "DATABASE_URL": db_url}
    done = exchange("replay", "--journal", tmp_path / "journal", "--resettle", "--config",
                    tmp_path / "exchange.toml", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert f"resettled seqs {part + 1}..{seq}" in done.stdout
    assert field(done.stdout, "state hash") == live_hash
    last, transfers_after, later_seqs, duplicates = run(ledger())
    assert last == seq and later_seqs > 0 and duplicates == 0
    assert transfers_after > transfers_before

    again = exchange("replay", "--journal", tmp_path / "journal", "--resettle", "--config",
                     tmp_path / "exchange.toml", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing to write" in again.stdout
    assert run(ledger())[1] == transfers_after

    rec = exchange("reconcile", "--journal", tmp_path / "journal", "--config",
                   tmp_path / "exchange.toml", cwd=tmp_path, env=env)
    assert rec.stdout.splitlines()[-1] == "reconciliation: balanced", rec.stdout + rec.stderr
    assert rec.returncode == 0


def test_user_mistakes_are_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    for args in (["replay", "--journal", tmp_path / "nowhere"],
                 ["replay", "--journal", tmp_path]):                     # a folder, no segments
        done = exchange(*args, cwd=tmp_path, env=env)
        assert done.returncode == 2
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("exchange: error: journal not found"), line
    record(tmp_path, n_orders=5)
    done = exchange("replay", "--journal", tmp_path / "journal", "--resettle", cwd=tmp_path, env=env)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "DATABASE_URL" in line
