"""``exchange balances``, ``exchange snapshot-balances``, ``exchange overview``:
the ledger as operators read it (queries in ``settlement.history``).

The database is ``--config FILE``'s ``[database] url`` when given, else
``DATABASE_URL``, else the embedded server.  Tables are rich tables on a
terminal and plain, borderless text otherwise; ``--csv`` writes CSV.
Amounts are exact decimals in the asset's scale.  These commands only read
the ledger; ``snapshot-balances`` writes the daily snapshot table.
"""
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import sys

from engine.ledger import TRANSFER_KINDS
from engine.service.cli import arg, command

_CONFIG = arg("--config", metavar="FILE",
              help="take the database from this server configuration's [database] url")


def _url(args) -> str:
    if args.config:
        from engine.service.config import load_config
        url = load_config(args.config).database.url
        if url:
            return url
    from settlement.database import database_url
    return database_url()


def _run(coro_fn, args):
    """Run ``coro_fn(conn)`` on a connection to the ledger."""
    from settlement import history

    import asyncpg

    async def main():
        conn = await history.connect(_url(args))
        try:
            return await coro_fn(conn)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as e:
            raise history.LedgerQueryError(f"lost the settlement database: {e}") from None
        finally:
            if not conn.is_closed():
                await conn.close()
    return asyncio.run(main())


def _account(text: str) -> int:
    from settlement.history import whole_number
    return whole_number(text, what="account")


# ================================================================ output
def _console():
    from rich.console import Console
    console = Console()
    if not console.is_terminal:         # plain text, never cut to 80 columns
        console = Console(width=10_000, no_color=True, highlight=False)
    return console


def _table(columns: list[tuple[str, bool]], rows, title: str | None = None):
    """A rich table; ``columns``: (header, right-aligned)."""
    from rich import box
    from rich.table import Table
    console = _console()
    table = Table(box=box.SIMPLE_HEAD if console.is_terminal else None,
                  show_edge=False, pad_edge=False, highlight=False)
    for header, right in columns:
        table.add_column(header, justify="right" if right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    if title:                           # a title of its own: a table's title wraps at its width
        console.print(title, soft_wrap=True, highlight=False, markup=False,
                      style="bold" if console.is_terminal else None)
    console.print(table)


def _csv(header: list[str], rows) -> None:
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(header)
    out.writerows(rows)


def _fmt_time(t: dt.datetime | None) -> str:
    return "" if t is None else t.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def _signed(amount_minor: int, scale: int) -> str:
    from settlement.history import format_minor
    return ("+" if amount_minor > 0 else "") + format_minor(amount_minor, scale)


# ================================================================ balances
@command("balances",
         help="an account's balances from the ledger, now or at a seq or time, and its history",
         args=[arg("account", metavar="ACCOUNT", help="the account id"),
               arg("--at", metavar="SEQ|TIME",
                   help="balances right after this seq, or after every transfer the ledger "
                        "booked at or before this time (ISO 8601, UTC unless a zone is given; "
                        "the ledger's clock is transfers.created_at, when settlement booked "
                        "the transfer); default: now, from the balances table"),
               arg("--history", action="store_true",
                   help="list the account's movements in seq order with each bucket's "
                        "balance before and after"),
               arg("--since", metavar="SEQ|TIME", help="history from this seq (inclusive) or time (inclusive)"),
               arg("--until", metavar="SEQ|TIME", help="history to this seq (inclusive) or time (exclusive)"),
               arg("--kind", metavar="KIND", help=f"history of one transfer kind: {', '.join(TRANSFER_KINDS)}"),
               arg("--csv", action="store_true", help="write CSV to stdout"),
               _CONFIG])
def balances(args) -> int:
    from settlement import history
    account = _account(args.account)
    if not args.history and (args.since or args.until or args.kind):
        raise history.LedgerQueryError("--since, --until and --kind go with --history")
    if args.history and args.at:
        raise history.LedgerQueryError("--at and --history do not combine: use --until")
    if args.history:
        since = history.parse_point(args.since, what="--since") if args.since else None
        until = history.parse_point(args.until, what="--until") if args.until else None
        moves = _run(lambda c: history.history(c, account, since=since, until=until,
                                               kind=args.kind), args)
        _print_history(account, moves, args.csv)
        return 0
    at = history.parse_point(args.at, what="--at") if args.at else None

    async def query(conn):
        await history.check_account(conn, account)     # the schema and the account first
        settled = await history.last_seq(conn)
        if type(at) is int and at > settled:
            raise history.LedgerQueryError(f"--at {at} is past what is settled (seq {settled})")
        if at is None:
            return await history.balances_now(conn, account), None, settled
        rows, found = await history.balances_at(conn, account, at)
        return rows, found, settled
    rows, found, settled = _run(query, args)
    _print_balances(account, at, rows, found, settled, args.csv)
    return 0


def _print_balances(account, at, rows, found, settled, as_csv) -> None:
    from settlement.history import format_minor as dec
    table = [(b.asset.name, dec(b.available, b.asset.scale), dec(b.locked, b.asset.scale),
              dec(b.available + b.locked, b.asset.scale)) for b in rows]
    if as_csv:
        _csv(["account", "asset", "available", "locked", "total"], [(account, *r) for r in table])
        return
    if at is None:
        title = f"account {account}: current balances (settled through seq {settled})"
    else:
        where = f"seq {at}" if isinstance(at, int) else _fmt_time(at)
        via = (f", from the {found['snapshot_day']} snapshot (seq {found['snapshot_seq']}) on"
               if found["snapshot_day"] else "")
        title = (f"account {account} at {where}: last transfer at seq {found['through_seq']}{via}"
                 f" (settled through seq {settled})")
    _table([("asset", False), ("available", True), ("locked", True), ("total", True)], table, title)
    if not rows:
        print("no balances")


_HISTORY_HEADER = ["seq", "time", "kind", "asset", "bucket", "change", "before", "after",
                   "counterparty", "order_id", "trade_id", "ref"]


def _print_history(account, moves, as_csv) -> None:
    from settlement.history import format_minor as dec
    rows = []
    for m in moves:
        s = m.asset.scale
        rows.append((m.seq, _fmt_time(m.time), m.kind, m.asset.name, m.bucket,
                     _signed(m.change, s), dec(m.before, s), dec(m.after, s),
                     f"{m.other_account}/{m.other_bucket}",
                     "" if m.order_id is None else m.order_id,
                     "" if m.trade_id is None else m.trade_id, m.ref))
    if as_csv:
        _csv(_HISTORY_HEADER, rows)
        return
    right = {"seq", "change", "before", "after", "order_id", "trade_id"}
    _table([(h, h in right) for h in _HISTORY_HEADER], rows,
           f"account {account}: {len(rows)} movements")


# ================================================================ snapshot-balances
@command("snapshot-balances",
         help="write the end-of-day balances of every account for a UTC day (once per day)",
         args=[arg("--date", metavar="YYYY-MM-DD",
                   help="the UTC day, by the ledger's clock (transfers.created_at); default: "
                        "yesterday. A day not yet over is refused; a day already written is "
                        "left unchanged"),
               _CONFIG])
def snapshot_balances(args) -> int:
    from settlement import history
    day = None
    if args.date:
        try:
            day = dt.date.fromisoformat(args.date)
        except ValueError:
            raise history.LedgerQueryError(f"--date {args.date!r} is not a date YYYY-MM-DD") from None

    async def main(conn):
        d = day or (await history.today_utc(conn) - dt.timedelta(days=1))
        return await history.snapshot_balances(conn, d)
    snap = _run(main, args)
    verb = "written" if snap.written else "already taken, unchanged"
    print(f"snapshot {snap.day.isoformat()}: {verb}: through seq {snap.through_seq}, "
          f"{snap.rows} (account, asset) balances")
    return 0


# ================================================================ overview
@command("overview",
         help="per asset: deposits, withdrawals, adjustments, fees and user balances, and "
              "whether they add up (exit 1 if not)",
         args=[arg("--asset", metavar="A", help="one asset only"), _CONFIG])
def overview(args) -> int:
    from settlement import history
    from settlement.history import format_minor as dec
    assets = _run(lambda c: history.overview(c, args.asset), args)
    rows = []
    for o in assets:
        s = o.asset.scale
        rows.append((o.asset.name, *(dec(v, s) for v in (
            o.deposits, o.withdrawals, o.adjustments, o.fees, o.user_available, o.user_locked,
            o.user_total, o.difference))))
    _table([("asset", False), ("deposits", True), ("withdrawals", True), ("adjustments", True),
            ("fees", True), ("user available", True), ("user locked", True),
            ("user balances", True), ("difference", True)], rows,
           "deposits - withdrawals + adjustments = user balances + fees")
    bad = 0
    for o in assets:
        if o.difference == 0:
            print(f"{o.asset.name}: adds up")
            continue
        bad += 1
        gap = dec(abs(o.difference), o.asset.scale)
        side = "user balances + fees fall short of" if o.difference > 0 else \
            "user balances + fees exceed"
        print(f"{o.asset.name}: does not add up: {side} deposits - withdrawals + adjustments "
              f"by {gap}")
    return 1 if bad else 0
