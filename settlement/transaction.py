"""One settlement batch, one PostgreSQL transaction, exactly once.

Owns the steps of a batch transaction (COPY the ledger rows, take the
engine's ``settlement_state`` row after the batch ahead, update orders and
balances, advance ``last_seq``) and the outcomes that tell the writer what to
do instead of committing.  See docs/settlement.md for why the steps are in
this order.  It never retries (the writer does), never opens a connection
and never bounds a statement by anything but ``command_timeout_s``.
"""
from __future__ import annotations

import asyncio
import json
from typing import Callable, Sequence

import asyncpg

from .errors import LedgerRejected
from .pipeline import Flight, PredecessorFailed
from .rows import (AUDIT_COLUMNS, B_ACCOUNT_ID, B_ASSET_ID, ORDER_COLUMNS, TRADE_COLUMNS,
                   TRANSFER_COLUMNS, BatchBuilder)
from .sql import (SQL_ADVANCE, SQL_APPLY_BALANCES, SQL_LOCK_STATE, SQL_NEW_ACCOUNTS,
                  SQL_NEW_BALANCES, SQL_ORDERS_NOT_UPDATED, SQL_UPDATE_ORDERS)


class NotYet(Exception):
    """The batch ahead rolled back to retry: roll back too and wait for it."""


class AlreadyCommitted(Exception):
    """last_seq is at or past the batch: roll back, nothing to do."""


class Trim(Exception):
    """Another writer committed the batch's first commands: roll back, redo the rest."""

    def __init__(self, last_seq: int):
        self.last_seq = last_seq


class Committer:
    """Commits the batches of engine ``engine_id``'s stream.

    ``failed()`` says whether the writer has stopped meanwhile (a batch then
    rolls back with ``PredecessorFailed``).  ``known_balances`` holds the
    (account, asset_id) pairs that have a balances row: rows are never
    deleted, so a pair is inserted once.
    """

    def __init__(self, engine_id: str, *, command_timeout_s: float,
                 failed: Callable[[], bool]):
        self.engine_id = engine_id
        self.command_timeout_s = command_timeout_s
        self._failed = failed
        self.known_balances: set[tuple[int, int]] = set()

    async def commit(self, conn: asyncpg.Connection, flight: Flight, b: BatchBuilder,
                     previous: Flight | None, *, lock_first: bool = False) -> int:
        """Commit ``b`` (the rows of ``flight.batch``, or of what is left of it)
        right after ``previous``; the ledger rows copied.  ``lock_first``: take
        the state row before COPYing anything (every retry: after a duplicate
        key or a transient failure last_seq decides whether the batch, or a
        prefix of it, is already committed)."""
        batch = flight.batch
        new_orders, order_updates = b.order_rows()
        copied = 0
        async with conn.transaction():
            if not lock_first:
                # Before the batch ahead holds the state row: only rows nothing else
                # can collide with (identity keys, no ref key), so that a transaction
                # waiting client-side holds nothing another writer's COPY could block on.
                copied += await self._copy_unkeyed(conn, b)
            if previous is not None and not previous.locked.is_set():
                await previous.locked.wait()
            if self._failed():
                raise PredecessorFailed()
            if not lock_first:
                # The batch ahead holds the state row (or has committed): every
                # other transaction that could insert these trade or order ids, or
                # these refs, now waits for a lock PostgreSQL can see, so a conflict
                # between two writers of one engine is a detected deadlock
                # (retried), not a hang.
                copied += await self._copy_keyed(conn, b, new_orders)
            last = await conn.fetchval(SQL_LOCK_STATE, self.engine_id)   # waits for its COMMIT
            flight.locked.set()
            if last is None:
                raise LedgerRejected(f"no settlement_state row for engine {self.engine_id!r}",
                                     events=batch.events())
            if last >= b.last_seq:
                raise AlreadyCommitted()
            if last >= b.first_seq:
                raise Trim(last)
            if b.first_seq != last + 1:
                if previous is not None and not previous.committed:
                    raise NotYet()      # it rolled back (to retry) instead of committing
                raise LedgerRejected(
                    f"batch starts at seq {b.first_seq} but the ledger is at {last}: a gap",
                    events=batch.events())
            if lock_first:
                copied += await self._copy_unkeyed(conn, b)
                copied += await self._copy_keyed(conn, b, new_orders)
            if order_updates:
                columns = [list(c) for c in zip(*order_updates)]
                updated = await conn.fetchval(SQL_UPDATE_ORDERS, *columns)
                if updated != len(order_updates):
                    bad = await conn.fetch(SQL_ORDERS_NOT_UPDATED, *columns)
                    raise LedgerRejected(
                        "order events for orders that are unknown, or no longer open",
                        events=batch.events(), rows=[dict(r) for r in bad])
            balance_rows = b.balance_rows()
            known = self.known_balances
            pairs = ((r[B_ACCOUNT_ID], r[B_ASSET_ID]) for r in balance_rows)
            new_pairs = [p for p in pairs if p not in known]
            if new_pairs:
                accounts, assets = [list(c) for c in zip(*new_pairs)]
                await conn.execute(SQL_NEW_ACCOUNTS, accounts)
                await conn.execute(SQL_NEW_BALANCES, accounts, assets)
            if balance_rows:
                updated, mismatched = await conn.fetchrow(
                    SQL_APPLY_BALANCES, *[list(c) for c in zip(*balance_rows)])
                mismatched = json.loads(mismatched)
                if mismatched:
                    raise LedgerRejected(
                        "balances after the batch differ from the engine's post-transfer balances "
                        "(a gap, a double booking or an engine bug)",
                        events=batch.events(), rows=mismatched)
                if updated != len(balance_rows):
                    raise LedgerRejected(f"updated {updated} balance rows of {len(balance_rows)}",
                                         events=batch.events())
            await conn.execute(SQL_ADVANCE, self.engine_id, b.last_seq)
        known.update(new_pairs)     # committed: balances rows are never deleted
        return copied

    async def _copy(self, conn: asyncpg.Connection, table: str, records: list,
                    columns: Sequence[str]) -> int:
        if records:
            # asyncpg's command_timeout does not bound a COPY whose socket stopped
            # draining (it waits for the transport to resume writing, untimed):
            # a hard bound, then the connection is dropped and the batch retried
            async with asyncio.timeout(self.command_timeout_s):
                await conn.copy_records_to_table(table, records=records, columns=columns)
        return len(records)

    async def _copy_unkeyed(self, conn: asyncpg.Connection, b: BatchBuilder) -> int:
        """COPY the rows whose keys PostgreSQL assigns (nothing can collide):
        the audit rows, and the transfers unless one carries a ref key."""
        copied = 0
        if not b.has_ref_keys:
            copied += await self._copy(conn, "transfers", b.transfers, TRANSFER_COLUMNS)
        return copied + await self._copy(conn, "audit_log", b.audit, AUDIT_COLUMNS)

    async def _copy_keyed(self, conn: asyncpg.Connection, b: BatchBuilder,
                          new_orders: list) -> int:
        """COPY the rows keyed by the engine: trades and new orders by id, and
        the transfers of a batch where one carries a ref, unique by that ref
        (settlement.refs): all of that batch's transfers, in one COPY."""
        copied = 0
        if b.has_ref_keys:
            copied += await self._copy(conn, "transfers", b.transfers, TRANSFER_COLUMNS)
        return (copied + await self._copy(conn, "trades", b.trades, TRADE_COLUMNS)
                + await self._copy(conn, "orders", new_orders, ORDER_COLUMNS))
