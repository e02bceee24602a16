"""Crash recovery: `exchange serve` as a real process, killed with SIGKILL at
random points while several clients send, restarted each time; a real
PostgreSQL ledger underneath."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg

from engine.client import Client, ClientError
from engine.messages import CancelOrder, Deposit, PlaceOrder, ReplaceOrder, Withdraw
from engine.service.config import load_config
from engine.service.recovery import open_journal, replay
from engine.service.state import ServiceState
from servers import TOKENS, write_config
from settlement.reconcile import reconcile

EXCHANGE = str(Path(sys.executable).with_name("exchange"))
KILLS = 10
SYMBOLS = ("BTC-USDT", "ETH-BTC")


def start_server(config: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([EXCHANGE, "serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("exchange: serving on "), line
    port = int(line.split()[3].rsplit(":", 1)[1])
    return proc, port


async def drive(port: int, rng: random.Random, acked: dict, round_no: int, stop_after_s: float):
    """Three trading gateways and the treasury send pipelined commands until
    the server dies; every reply received is recorded as acknowledged."""
    clients = []
    try:
        clients.append(await Client.connect("127.0.0.1", port, token=TOKENS["treasury"],
                                            gateway_id="treasury"))
        for g in range(3):
            clients.append(await Client.connect("127.0.0.1", port, token=TOKENS["trading"],
                                                gateway_id=f"gw{g}"))
    except (ClientError, OSError):
        return

    async def one(client, cmd):
        try:
            reply = await client.request_nowait(cmd)
        except ClientError:
            return
        acked[reply.seq] = reply.events

    async def gateway(i, client):
        n = 0
        while True:
            if i == 0:
                account = rng.randrange(2, 8)
                cmd = (Deposit(account, rng.choice(("USDT", "BTC", "ETH")), rng.randrange(1, 10**12),
                               ref=f"r{round_no}-{n}") if rng.random() < 0.9 else
                       Withdraw(account, "USDT", rng.randrange(1, 10**9)))
            else:
                account = rng.randrange(2, 8)
                r = rng.random()
                if r < 0.6:
                    sym = rng.choice(SYMBOLS)
                    mid = 3_000_000 if sym == "BTC-USDT" else 6_670
                    cmd = PlaceOrder(account, "", sym, rng.choice(("buy", "sell")),
                                     tif=rng.choice(("gtc", "gtc", "ioc")),
                                     price=mid + rng.randrange(-50, 50), qty=rng.randrange(1, 50))
                elif r < 0.8:
                    cmd = CancelOrder(account, order_id=rng.randrange(1, 2000))
                else:
                    cmd = ReplaceOrder(account, rng.randrange(1, 2000),
                                       price=3_000_000 + rng.randrange(-50, 50))
            n += 1
            try:
                asyncio.ensure_future(one(client, cmd))
            except ClientError:
                return
            if n % 20 == 0:
                await asyncio.sleep(0.001)

    tasks = [asyncio.ensure_future(gateway(i, c)) for i, c in enumerate(clients)]
    await asyncio.sleep(stop_after_s)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_kill_9_at_random_points(tmp_path, db_url):
    config_path = write_config(tmp_path, fsync="always", snapshot_every=700, database_url=db_url)
    rng = random.Random(7)
    acked: dict[int, list] = {}
    for round_no in range(KILLS):
        proc, port = start_server(config_path)
        asyncio.run(drive(port, rng, acked, round_no, rng.uniform(0.2, 0.8)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # a last start recovers, then a graceful stop: exit 0 after a snapshot
    proc, port = start_server(config_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert len(acked) > 100

    # a fresh replay of the whole journal from seq 1
    config = load_config(config_path)
    journal = open_journal(config)
    assert journal.first_seq == 1
    fresh = ServiceState(config.new_engine(book="python"), config_hash=config.config_hash())
    replayed = {}
    replay(fresh, journal, on_events=lambda seq, events: replayed.__setitem__(seq, events))
    journal.close()
    # every acknowledged command is in the journal, with the events that were acknowledged
    for seq, events in acked.items():
        assert replayed[seq] == events, seq
    # the recovered state (the shutdown snapshot) is the fresh replay's
    from engine.service.snapshots import SnapshotStore
    from engine.service.recovery import snapshot_dir
    import engine
    seq, data = SnapshotStore(snapshot_dir(config.journal.dir)).latest()
    assert seq == fresh.seq
    recovered = ServiceState.restore(data, engine.Engine, config_hash=config.config_hash())
    assert recovered.engine.state_hash() == fresh.engine.state_hash()

    async def check_ledger():
        conn = await asyncpg.connect(db_url)
        try:
            last = await conn.fetchval("SELECT last_seq FROM settlement_state")
            n_transfers = await conn.fetchval("SELECT count(*) FROM transfers")
        finally:
            await conn.close()
        assert last == fresh.seq
        expected = sum(type(e).__name__ == "Transfer" for evs in replayed.values() for e in evs)
        assert n_transfers == expected          # none settled twice, none skipped
        result = await reconcile(db_url, fresh.engine)
        assert result.ok and result.discrepancies == [], result.discrepancies[:5]
    asyncio.run(check_ledger())
