"""What PostgreSQL refused, and why: the error a permanent batch failure raises.

Owns turning a refusal into a ``LedgerRejected`` that carries the offending
rows: the balance buckets a batch would take below what the balances CHECKs
allow (with the transfers that moved them), the transfers a transfers CHECK
refuses, or the transfers whose ref is already used (a ref unique index,
``settlement.refs``), each beside the transfer that used it first.  Best
effort and read only: it never changes the ledger, never decides whether to
retry, and its own failure never hides the original error.
"""
from __future__ import annotations

import logging
from typing import Sequence

import asyncpg

from engine.ledger import BUCKETS, SYSTEM_OUTSIDE, TRANSFER_KINDS, is_system_account

from .errors import LedgerRejected
from .refs import REF_KEY_BY_INDEX, RefKey
from .rows import (B_UPDATED_SEQ, BALANCE_COLUMNS, T_AMOUNT, T_ASSET_ID, T_EVENT_INDEX, T_KIND,
                   T_REF, T_SEQ, T_SOURCE_ACCOUNT, T_SOURCE_BUCKET, T_TARGET_ACCOUNT,
                   T_TARGET_BUCKET, TRANSFER_COLUMNS, BatchBuilder)
from .sql import SQL_BALANCES_OF, SQL_REF_HOLDERS

log = logging.getLogger("settlement.writer")


async def permanent_error(exc: Exception, b: BatchBuilder, events: Sequence,
                          conn: asyncpg.Connection | None) -> LedgerRejected:
    """A LedgerRejected for ``exc`` with what is known about the offending rows."""
    sqlstate = getattr(exc, "sqlstate", None)
    constraint = getattr(exc, "constraint_name", None)
    table = getattr(exc, "table_name", None)
    detail = getattr(exc, "detail", None)
    rows: list = []
    lead = ""
    if table == "balances" and conn is not None and not conn.is_closed():
        try:
            rows = await offending_balances(conn, b)
        except Exception:     # diagnosis is best effort; the error itself is what matters
            log.exception("could not diagnose the balance violation")
    elif table == "transfers" and constraint in REF_KEY_BY_INDEX:
        try:
            rows = await offending_refs(conn, b, REF_KEY_BY_INDEX[constraint])
        except Exception:
            log.exception("could not diagnose the duplicate ref")
        lead = (describe_duplicate_ref(rows[0], b) if rows else
                f"duplicate ref ({REF_KEY_BY_INDEX[constraint].meaning})") + "; "
    elif table == "transfers":
        rows = offending_transfers(b)
    what = f"{type(exc).__name__}: {exc}"
    if table:
        what += f" (table {table}" + (f", constraint {constraint})" if constraint else ")")
    return LedgerRejected(f"{lead}PostgreSQL refused the batch: {what}", events=events,
                          rows=rows, sqlstate=sqlstate, constraint=constraint, detail=detail)


def _ref_key(ref_key: RefKey, t: Sequence) -> tuple | None:
    return ref_key.key(t[T_KIND], t[T_SOURCE_ACCOUNT], t[T_SOURCE_BUCKET], t[T_TARGET_ACCOUNT],
                       t[T_ASSET_ID], t[T_REF])


async def offending_refs(conn: asyncpg.Connection | None, b: BatchBuilder,
                         ref_key: RefKey) -> list[dict]:
    """The transfers of the batch whose ``ref_key`` is already taken: by an
    earlier transfer of the batch, or (when ``conn`` can still ask) by one in
    the ledger.  Each as a transfer row dict plus ``index`` and the first
    holder's ``first_seq``/``first_event_index``, in batch order."""
    first: dict[tuple, tuple[int, int]] = {}
    mine: list[tuple[tuple, Sequence]] = []
    for t in b.transfers:
        key = _ref_key(ref_key, t)
        if key is not None:
            mine.append((key, t))
    if mine and conn is not None and not conn.is_closed():
        accounts = sorted({key[1] for key, _ in mine})
        refs = sorted({key[3] for key, _ in mine})
        for r in await conn.fetch(SQL_REF_HOLDERS[ref_key.account], accounts, refs):
            key = ref_key.key(r["kind"], r["source_account"], r["source_bucket"],
                              r["target_account"], r["asset_id"], r["ref"])
            if key is not None and (key not in first or (r["seq"], r["event_index"]) < first[key]):
                first[key] = (r["seq"], r["event_index"])
    bad = []
    for key, t in mine:
        held = first.get(key)
        if held is None:
            first[key] = (t[T_SEQ], t[T_EVENT_INDEX])
            continue
        bad.append({**dict(zip(TRANSFER_COLUMNS, t)), "index": ref_key.index,
                    "first_seq": held[0], "first_event_index": held[1]})
    return bad


def describe_duplicate_ref(row: dict, b: BatchBuilder) -> str:
    """One line naming a transfer whose ref is taken (a row of ``offending_refs``)."""
    names = {asset_id: name for name, asset_id in b.asset_ids.items()}
    asset = names.get(row["asset_id"], f"asset #{row['asset_id']}")
    return (f"duplicate ref {row['ref']!r}: transfer seq {row['seq']} event "
            f"{row['event_index']}, {row['kind']} of {row['amount']} {asset} from account "
            f"{row['source_account']} {row['source_bucket']} to account "
            f"{row['target_account']} {row['target_bucket']}, reuses the ref of seq "
            f"{row['first_seq']} event {row['first_event_index']} ({row['index']}: "
            f"{REF_KEY_BY_INDEX[row['index']].meaning})")


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
