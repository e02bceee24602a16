"""Ledger operations: ``exchange replay``, ``exchange reconcile``, ``exchange db``.

- ``replay --journal DIR [--to SEQ] [--resettle] [--config FILE]``: the engine
  state from the newest snapshot at or below the target plus the journal;
  prints the seq reached, the state hash and the totals per asset.
  ``--resettle`` also writes every seq PostgreSQL is missing, exactly once
  (the writer skips what is at or below ``last_seq``).
- ``reconcile [--journal DIR] [--config FILE]``: ``settlement.audit``'s checks
  of the database alone and, with a journal, the engine replayed to the
  database's ``last_seq`` against the ledger and the balances; recorded in
  ``reconciliation_runs``; exit 1 on any discrepancy.
- ``db migrate|status|url|stop``: ``python -m settlement``'s commands.

Replay reads the journal and never writes it: a torn last record is left
alone (the server truncates it when it starts) and replay stops before it.
The server keeps no lock file, so nothing stops replay from reading a journal
a live server is appending to; that is safe (it reads the complete records
present when it opened the journal), but the state it prints is then already
behind.  The database comes from ``--config``'s ``[database] url``, else
``DATABASE_URL``, else (reconcile and db only) the embedded server.
"""
from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from pathlib import Path

from engine.service.cli import arg, command
from engine.service.journal import Journal
from engine.service.recovery import (ENGINE_ID, RecoveryError, rebuild, replay, replay_engine,
                                     snapshot_dir)
from engine.service.snapshots import SnapshotStore
from engine.service.state import ServiceState
from settlement.errors import DatabaseUnavailable

EXIT_DISCREPANCY = 1
OUTSIDE_WORLD, FEES = 0, 1      # engine.ledger's system accounts


# ================================================================ journal, read-only
def _open_journal(directory: str) -> Journal:
    """The journal at ``directory``, read-only: safe beside a live server
    (a torn last record is skipped, never cut)."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise RecoveryError(f"journal not found: {path} is not a directory")
    journal = Journal(path, read_only=True)
    journal.open()
    if not journal.segments():
        raise RecoveryError(f"journal not found: no journal segments (*.wal) in {path}")
    if journal.torn_bytes:
        print(f"note: the journal's last record is torn ({journal.torn_bytes} bytes); "
              "replay stops before it", file=sys.stderr)
    return journal


def _load_config(path: str | None):
    if path is None:
        return None
    from engine.service.config import load_config
    return load_config(path)


def _start_state(journal: Journal, upto_seq: int, config) -> tuple[ServiceState, int]:
    """recovery.rebuild on the journal's own ``snapshots`` folder."""
    return rebuild(config, journal, SnapshotStore(snapshot_dir(journal.directory)), upto_seq=upto_seq)


# ================================================================ output
def _console():
    from rich.console import Console
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=1000)     # plain: a line is never wrapped


def _table(title: str):
    """A rich table; plain columns (no box drawing) when stdout is not a terminal."""
    from rich import box
    from rich.table import Table
    return Table(title=title, box=box.HEAVY_HEAD if sys.stdout.isatty() else None)


class _Progress:
    """A rich progress bar on a terminal; a few plain lines otherwise."""

    def __init__(self, start_seq: int, stop_seq: int):
        self.start_seq, self.stop_seq = start_seq, stop_seq
        self.began = time.perf_counter()
        self._bar = None
        if sys.stdout.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)
            self._bar = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=True)
            self._task = self._bar.add_task("replay", total=max(0, stop_seq - start_seq))

    def __enter__(self):
        if self._bar is not None:
            self._bar.start()
        return self

    def update(self, seq: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=seq - self.start_seq)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()

    def summary(self, replayed: int) -> str:
        seconds = max(time.perf_counter() - self.began, 1e-9)
        return f"replayed {replayed} commands in {seconds:.2f} s ({replayed / seconds:,.0f} commands/s)"


def asset_totals(eng) -> list[tuple[str, int, int, int]]:
    """(asset, users' available + locked, fees account, outside world) per asset."""
    out = []
    accounts = [a for a in eng.accounts() if a >= 2]
    for asset in eng.assets:
        name = asset.name
        users = sum(sum(eng.balance(a, name)) for a in accounts)
        out.append((name, users, sum(eng.balance(FEES, name)), sum(eng.balance(OUTSIDE_WORLD, name))))
    return out


def _print_state(console, state: ServiceState, snapshot_seq: int) -> None:
    eng = state.engine
    start = f"snapshot at seq {snapshot_seq}" if snapshot_seq else "a fresh engine"
    console.print(f"seq reached: {state.seq} (from {start})")
    console.print(f"state hash: {eng.state_hash()}")
    table = _table("totals per asset (minor units)")
    for column in ("asset", "users (available + locked)", "fees account", "outside world", "sum"):
        table.add_column(column, justify="left" if column == "asset" else "right")
    for name, users, fees, outside in asset_totals(eng):
        table.add_row(name, str(users), str(fees), str(outside), str(users + fees + outside))
    console.print(table)


# ================================================================ replay
def _database_url(config, *, embedded: bool) -> str | None:
    if config is not None and config.database.url:
        return config.database.url
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return url
    if embedded:
        from settlement.database import embedded_url
        return embedded_url()
    return None


# what a bad URL, an unreachable server or a refused query raise: one line, exit 2
DB_ERRORS = (OSError, ValueError, TimeoutError)      # ValueError: a malformed DSN or port


def _db_error(exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"database: {type(exc).__name__}: {exc}")


async def _connect(url: str):
    from settlement import history
    return await history.connect(url)       # a failure is one LedgerQueryError line


@command("replay", help="rebuild engine state from snapshot + journal; optionally resettle",
         args=[arg("--journal", required=True, metavar="DIR", help="the journal folder"),
               arg("--to", type=int, default=None, metavar="SEQ", help="stop at this seq"),
               arg("--resettle", action="store_true",
                   help="write every seq PostgreSQL is missing (exactly once)"),
               arg("--config", default=None, metavar="FILE",
                   help="the server's configuration: a fresh engine when no snapshot covers "
                        "the start; the database URL for --resettle")])
def replay_command(args) -> int:
    config = _load_config(args.config)
    if args.to is not None and args.to < 0:
        raise RecoveryError(f"--to must be >= 0, not {args.to}")
    journal = _open_journal(args.journal)
    to_seq = journal.last_seq if args.to is None else args.to
    if to_seq > journal.last_seq:
        raise RecoveryError(f"--to {to_seq} is past the journal's last seq {journal.last_seq}")
    console = _console()
    collecting = gc.isenabled()
    gc.disable()            # as recovery: replay builds no cyclic garbage
    try:
        if args.resettle:
            url = _database_url(config, embedded=False)
            if url is None:
                raise DatabaseUnavailable("--resettle needs a database: pass --config FILE with "
                                          "[database] url, or set DATABASE_URL")
            state, base, replayed, written = asyncio.run(
                _resettle(journal, to_seq, config, url, console))
        else:
            state, base = _start_state(journal, to_seq, config)
            with _Progress(state.seq, to_seq) as progress:
                replayed = replay_engine(state.engine, journal, to_seq=to_seq,
                                         progress=progress.update)
                progress.update(state.seq)
            console.print(progress.summary(replayed))
    finally:
        if collecting:
            gc.enable()
        journal.close()
    _print_state(console, state, base)
    if args.resettle:
        console.print(written)
    return 0


async def _resettle(journal, to_seq: int, config, url: str, console):
    """Recovery's approach: the snapshot at or below the database's
    ``last_seq``, replayed to it, then the later commands' events to a
    SettlementWriter."""
    import asyncpg

    from settlement import SettlementWriter, audit, migrate
    try:
        await migrate(url)
    except (*DB_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _db_error(exc) from None
    kw = {}
    if config is not None:
        db = config.database
        kw = dict(batch_events_max=db.batch_events_max, queue_events_max=db.queue_events_max,
                  flush_interval_ms=db.flush_interval_ms)
    writer = None
    try:
        conn = await _connect(url)
        try:
            settled = await audit.last_seq(conn, ENGINE_ID)
        finally:
            await conn.close()
        if settled > journal.last_seq:
            raise RecoveryError(f"PostgreSQL has settled up to seq {settled} but the journal in "
                                f"{journal.directory} ends at seq {journal.last_seq}: "
                                "wrong journal or database")
        state, base = _start_state(journal, min(settled, to_seq), config)
        writer = SettlementWriter(url, engine_id=ENGINE_ID, assets=state.engine.assets, **kw)
        await writer.start()
        replayed = 0
        with _Progress(state.seq, to_seq) as progress:
            replayed += replay(state, journal, to_seq=min(settled, to_seq), progress=progress.update)
            first = state.seq + 1
            for record in journal.read(from_seq=first, to_seq=to_seq):
                events, _, _ = state.apply(record.gateway_id, record.request_id, record.command,
                                           replaying=True)
                await writer.put(events)
                replayed += 1
                if replayed % 4096 == 0:
                    progress.update(record.seq)
            await writer.flush()
            progress.update(state.seq)
        console.print(progress.summary(replayed))
        committed = writer.committed_seq
        await writer.close()
        writer = None
    except (*DB_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _db_error(exc) from None
    finally:
        if writer is not None:
            await writer.abort()
    if first > to_seq:
        written = f"resettled: nothing to write (the database is at seq {settled})"
    else:
        written = (f"resettled seqs {first}..{to_seq} ({to_seq - first + 1} commands); "
                   f"the database is now at seq {committed}")
    return state, base, replayed, written


# ================================================================ reconcile
@command("reconcile", help="check the ledger: sums == balances, zero-sum assets, locks, engine",
         args=[arg("--journal", default=None, metavar="DIR",
                   help="also compare with the engine state replayed to the database's last_seq"),
               arg("--config", default=None, metavar="FILE",
                   help="the server's configuration ([database] url; a fresh engine for replay)")])
def reconcile_command(args) -> int:
    config = _load_config(args.config)
    journal = _open_journal(args.journal) if args.journal else None
    url = _database_url(config, embedded=True)
    try:
        findings, through_seq, run_id = asyncio.run(_reconcile(url, journal, config))
    finally:
        if journal is not None:
            journal.close()
    _print_findings(findings, through_seq, run_id)
    return EXIT_DISCREPANCY if findings else 0


async def _reconcile(url: str, journal, config):
    import asyncpg

    from settlement import audit
    from settlement.reconcile import compare
    conn = await _connect(url)
    try:
        if not await conn.fetchval("SELECT to_regclass('settlement_state') IS NOT NULL"):
            raise DatabaseUnavailable("database: not migrated (run: exchange db migrate)")
        # last_seq and the sums the engine is compared with come from one snapshot of the
        # database: a server settling meanwhile cannot make them disagree
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            through_seq = await audit.last_seq(conn, ENGINE_ID)
            names = await audit.asset_names(conn)
            ledger = await audit.ledger_sums(conn)
            table = await audit.balances_table(conn)
        findings = await audit.audit(conn)
        source = "database"
        if journal is not None:
            source = "journal"
            if through_seq > journal.last_seq:
                raise RecoveryError(f"the database is at seq {through_seq} but the journal in "
                                    f"{journal.directory} ends at seq {journal.last_seq}")
            state, _ = _start_state(journal, through_seq, config)
            replay_engine(state.engine, journal, to_seq=through_seq)
            for d in compare(state.engine, names, ledger, table):
                if d.check != "supply":         # audit has checked it
                    findings.append(audit.Finding(d.account, d.asset, d.bucket, d.expected,
                                                  d.actual, f"engine-{d.check}", None,
                                                  f"engine at seq {through_seq}"))
        run_id = await audit.record_run(conn, engine_id=ENGINE_ID, through_seq=through_seq,
                                        source=source, findings=findings)
        return findings, through_seq, run_id
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _db_error(exc) from None
    finally:
        await conn.close()


def _print_findings(findings, through_seq: int, run_id: int) -> None:
    console = _console()
    console.print(f"reconciled through seq {through_seq} (run {run_id})")
    if findings:
        table = _table("discrepancies (minor units)")
        for column in ("check", "account", "asset", "bucket", "expected", "actual", "first seq",
                       "note"):
            table.add_column(column, justify="right" if column in (
                "account", "expected", "actual", "first seq") else "left")
        for f in findings:
            table.add_row(f.check, "all" if f.account < 0 else str(f.account), f.asset, f.bucket,
                          str(f.expected), str(f.actual),
                          "" if f.first_seq is None else str(f.first_seq), f.note)
        console.print(table)
        print(f"reconciliation: {len(findings)} discrepancies")
    else:
        print("reconciliation: balanced")


# ================================================================ db
@command("db", help="the settlement database: migrate | status | url | stop",
         args=[arg("action", choices=("migrate", "status", "url", "stop")),
               arg("--config", default=None, metavar="FILE",
                   help="the server's configuration ([database] url)")])
def db_command(args) -> int:
    import asyncpg

    from settlement.__main__ import main as settlement_main
    config = _load_config(args.config)
    if config is not None and config.database.url:
        os.environ["DATABASE_URL"] = config.database.url    # this process only
    try:
        return settlement_main([args.action])
    except (*DB_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _db_error(exc) from None
