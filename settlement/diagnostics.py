"""What PostgreSQL refused, and why: the error a permanent batch failure raises.

Owns turning a refusal into a ``LedgerRejected`` that carries the offending
rows: the balance buckets a batch would take below what the balances CHECKs
allow (with the transfers that moved them), or the transfers a transfers
CHECK refuses.  Best effort and read only: it never changes the ledger, never
decides whether to retry, and its own failure never hides the original error.
"""
from __future__ import annotations

import logging
from typing import Sequence

import asyncpg

from engine.ledger import BUCKETS, SYSTEM_OUTSIDE, TRANSFER_KINDS, is_system_account

from .errors import LedgerRejected
from .rows import (B_UPDATED_SEQ, BALANCE_COLUMNS, T_AMOUNT, T_ASSET_ID, T_KIND,
                   T_SOURCE_ACCOUNT, T_SOURCE_BUCKET, T_TARGET_ACCOUNT, T_TARGET_BUCKET,
                   TRANSFER_COLUMNS, BatchBuilder)
from .sql import SQL_BALANCES_OF

log = logging.getLogger("settlement.writer")


async def permanent_error(exc: Exception, b: BatchBuilder, events: Sequence,
                          conn: asyncpg.Connection | None) -> LedgerRejected:
    """A LedgerRejected for ``exc`` with what is known about the offending rows."""
    sqlstate = getattr(exc, "sqlstate", None)
    constraint = getattr(exc, "constraint_name", None)
    table = getattr(exc, "table_name", None)
    detail = getattr(exc, "detail", None)
    rows: list = []
    if table == "balances" and conn is not None and not conn.is_closed():
        try:
            rows = await offending_balances(conn, b)
        except Exception:     # diagnosis is best effort; the error itself is what matters
            log.exception("could not diagnose the balance violation")
    elif table == "transfers":
        rows = offending_transfers(b)
    what = f"{type(exc).__name__}: {exc}"
    if table:
        what += f" (table {table}" + (f", constraint {constraint})" if constraint else ")")
    return LedgerRejected(f"PostgreSQL refused the batch: {what}", events=events,
                          rows=rows, sqlstate=sqlstate, constraint=constraint, detail=detail)


def offending_transfers(b: BatchBuilder) -> list[dict]:
    """The transfers of the batch that a transfers CHECK refuses."""
    return [dict(zip(TRANSFER_COLUMNS, t)) for t in b.transfers
            if t[T_AMOUNT] <= 0 or t[T_SOURCE_BUCKET] not in BUCKETS
            or t[T_TARGET_BUCKET] not in BUCKETS or t[T_KIND] not in TRANSFER_KINDS
            or (t[T_SOURCE_ACCOUNT] == t[T_TARGET_ACCOUNT]
                and t[T_SOURCE_BUCKET] == t[T_TARGET_BUCKET])]


async def offending_balances(conn: asyncpg.Connection, b: BatchBuilder) -> list[dict]:
    """The touched buckets that would break a balances CHECK, with the
    transfers of the batch that moved them."""
    rows = b.balance_rows()
    cols = list(zip(*rows)) if rows else [()] * len(BALANCE_COLUMNS)
    current = await conn.fetch(SQL_BALANCES_OF, *[list(c) for i, c in enumerate(cols)
                                                  if i != B_UPDATED_SEQ])
    bad = []
    for r in current:
        account, asset_id = r["account_id"], r["asset_id"]
        available = (r["available"] or 0) + r["available_delta"]
        locked = (r["locked"] or 0) + r["locked_delta"]
        # the balances CHECKs: only the outside world goes negative; system
        # accounts never lock
        if account == SYSTEM_OUTSIDE or (available >= 0 and locked >= 0
                                         and (not is_system_account(account) or locked == 0)):
            continue
        moved = [dict(zip(TRANSFER_COLUMNS, t)) for t in b.transfers
                 if t[T_ASSET_ID] == asset_id and account in (t[T_SOURCE_ACCOUNT],
                                                              t[T_TARGET_ACCOUNT])]
        bad.append({"account_id": account, "asset_id": asset_id,
                    "available_before": r["available"], "locked_before": r["locked"],
                    "available_after": available, "locked_after": locked,
                    "transfers": moved})
    return bad
