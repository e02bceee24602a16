"""The main job, end to end: ``python -m settlement demo``.

A seeded order flow (engine/flow.py) runs through the engine; every
event goes through a ``SettlementWriter`` into PostgreSQL -- ``DATABASE_URL``,
else the embedded server -- in a database of its own (``--database``, dropped
and created fresh on each run); then the ledger is reconciled against the
balances table and the engine, and a summary printed.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter

import asyncpg

from engine.flow import MIXES, Flow
from engine.ledger import FIRST_USER_ACCOUNT, SYSTEM_FEES

from .database import ENV_URL, create_database, database_url
from .migrate import migrate
from .reconcile import reconcile
from .writer import SettlementWriter


async def run(args) -> int:
    from engine import Engine
    from engine.messages import Trade
    flow = Flow(args.mix, args.seed, accounts=args.accounts)
    assets, instruments = flow.assets, flow.instruments
    print(f"generating {args.n:,} commands ({args.mix} mix, seed {args.seed}) ...", flush=True)
    cmds = [cmd for cmd, _ in flow.stream(flow.setup_count + args.n)]
    server = database_url()
    url = await create_database(server, args.database, replace=True)
    await migrate(url)
    where = "DATABASE_URL" if os.environ.get(ENV_URL, "").strip() else "embedded PostgreSQL"
    print(f"settling into database {args.database!r} ({where})", flush=True)

    engine = Engine(assets, instruments, book=args.book, max_open_orders=100_000)
    kinds: Counter = Counter()
    writer = SettlementWriter(url, engine_id="demo", assets=assets)
    await writer.start()
    t0 = time.perf_counter()
    for c in cmds:
        events = engine.submit(c)
        for e in events:
            kinds[type(e).__name__] += 1
        await writer.put(events)
    t_engine = time.perf_counter() - t0
    await writer.flush()
    t_all = time.perf_counter() - t0
    await writer.close()

    result = await reconcile(url, engine, engine_id="demo")
    conn = await asyncpg.connect(url)
    try:
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                  for t in ("transfers", "trades", "orders", "audit_log", "balances")}
        fees = await conn.fetch("SELECT asset, available FROM balances_view WHERE account_id = $1 "
                                "ORDER BY asset", SYSTEM_FEES)
        top = await conn.fetch(
            "SELECT account_id, asset, available, locked FROM balances_view WHERE account_id >= $1 "
            "ORDER BY account_id, asset LIMIT 4", FIRST_USER_ACCOUNT)
    finally:
        await conn.close()

    print(f"{len(cmds):,} commands on the {engine.book_implementation} book; settled "
          f"{sum(kinds.values()):,} events in {t_all:.2f}s "
          f"(engine and queue {t_engine:.2f}s, the rest waiting for the last commits)")
    print("events:  " + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common()))
    print("ledger:  " + ", ".join(f"{t} {n:,} rows" for t, n in counts.items()))
    assert counts["transfers"] == kinds["Transfer"] and counts["trades"] == kinds[Trade.__name__]
    print("fees:    " + ", ".join(f"{r['available']:f} {r['asset']}" for r in fees))
    for r in top:
        print(f"account {r['account_id']}: {r['asset']} {r['available']:f} available, "
              f"{r['locked']:f} locked")
    if result.ok:
        print(f"reconciliation #{result.run_id}: ok through seq {result.through_seq} -- ledger == "
              f"balances table == engine for every account and asset; every asset sums to zero")
        embedded = not os.environ.get(ENV_URL, "").strip()
        print(f"look around: psql \"{url}\""
              + ("  (embedded server: `python -m settlement url` keeps it up)" if embedded else ""))
        return 0
    print(f"reconciliation #{result.run_id}: {result.status} {result.note}")
    for d in result.discrepancies[:20]:
        print(f"  {d}")
    return 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m settlement demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000, help="flow commands (default 50,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="full", choices=sorted(MIXES))
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--book", default="auto", help="auto | python | cython")
    ap.add_argument("--database", default="exchange_demo",
                    help="database to (re)create on the server (default exchange_demo)")
    args = ap.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on Windows
        runner = asyncio.run
    return runner(run(args))
