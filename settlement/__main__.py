"""``python -m settlement``: the settlement database from the command line.

    python -m settlement migrate            apply missing migrations (idempotent)
    python -m settlement url                print database_url() (keeps an embedded server running)
    python -m settlement status             schema version and last_seq per engine
    python -m settlement balances [-a N]    dump balances (NUMERIC, by asset scale)
    python -m settlement stop               stop the embedded server, if it runs
    python -m settlement demo [--n N ...]   the main job: order flow -> engine -> ledger, reconciled

The URL is ``DATABASE_URL`` when set, else the embedded server in
``EXCHANGE_PGDATA`` (see ``settlement.database``).
"""
from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from .database import database_url, default_pgdata, embedded_url, stop_embedded
from .migrate import migrate, migrations


def _url(keep_running: bool = False) -> str:
    import os
    if os.environ.get("DATABASE_URL", "").strip():
        return database_url()
    return embedded_url(keep_running=keep_running)


async def _status(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            print("schema: not migrated (run: python -m settlement migrate)")
            return 1
        version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
        print(f"schema version {version} (this code ships {len(migrations())})")
        for r in await conn.fetch("SELECT engine_id, last_seq, updated_at FROM settlement_state "
                                  "ORDER BY engine_id"):
            print(f"engine {r['engine_id']}: last_seq {r['last_seq']} at {r['updated_at']}")
        return 0
    finally:
        await conn.close()


async def _balances(url: str, account: int | None) -> int:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT account_id, asset, available, locked, total FROM balances_view "
            "WHERE $1::bigint IS NULL OR account_id = $1 ORDER BY account_id, asset", account)
        print(f"{'account':>10} {'asset':<8} {'available':>28} {'locked':>28}")
        for r in rows:
            print(f"{r['account_id']:>10} {r['asset']:<8} {r['available']:>28f} {r['locked']:>28f}")
        return 0
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m settlement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply missing migrations")
    sub.add_parser("url", help="print the database URL")
    sub.add_parser("status", help="schema version and last_seq")
    bal = sub.add_parser("balances", help="dump balances")
    bal.add_argument("-a", "--account", type=int, default=None)
    sub.add_parser("stop", help="stop the embedded server")
    sub.add_parser("demo", help="order flow -> engine -> ledger, reconciled (see --help)",
                   add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":          # the demo has options of its own
        from .demo import main as demo_main
        return demo_main(argv[1:])
    args = parser.parse_args(argv)

    if args.command == "stop":
        stopped = stop_embedded()
        print(f"embedded server in {default_pgdata()}: {'stopped' if stopped else 'not running'}")
        return 0
    if args.command == "url":
        print(_url(keep_running=True))
        return 0
    url = _url()
    if args.command == "migrate":
        applied = asyncio.run(migrate(url))
        print(f"applied migrations {applied}" if applied else "schema up to date")
        return 0
    if args.command == "status":
        return asyncio.run(_status(url))
    if args.command == "balances":
        return asyncio.run(_balances(url, args.account))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
