"""Audit: the checks of the ledger that need the database alone.

``await audit(conn)`` compares, at whatever the database holds now:

- ``balances``: the ledger (``transfers`` summed per account, asset and
  bucket) with the ``balances`` table (expected: the ledger);
- ``chain``: each transfer's stored post-transfer balances with the running
  sum of the ledger's amounts for that bucket (a ledger row removed or
  altered breaks the chain at the next transfer of that bucket);
- ``supply``: per asset, the ``balances`` table sums to zero (the ledger does
  by construction: every row moves an amount from one bucket to another);
- ``orders``: every user's ``locked`` (the ``balances`` table) with what its
  open orders reserve plus its pending withdrawals hold.  The ``orders``
  table does not store the reservation, so "what an order reserves" is the
  ledger's net movement into the locked bucket under that order's id (every
  transfer touching an order's lock carries its id); an order that is no
  longer open must reserve nothing.  "What pending withdrawals hold" is the
  net movement into the locked bucket by the withdrawal kinds
  (``withdraw_hold`` in; ``withdraw`` from locked and ``withdraw_release``
  out);
- ``withdrawals``: that hold is never negative (more approved or released
  from locked than was ever held);
- ``snapshot``: every daily balance snapshot (``exchange snapshot-balances``)
  with the ledger summed up to the seq it covers.

Every difference is a ``Finding`` with ``first_seq``, where the ledger and
the balances part: for ``chain``, the first transfer whose stored balance the
amounts before it do not explain; for ``balances``, that seq when the
bucket's chain breaks, else the seq after the last transfer whose stored
balance equals the table's value, else the table row's ``updated_seq``.

``record_run`` writes a ``reconciliation_runs`` row.  This module reads and
records; it never repairs anything, and it knows nothing of the journal.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from engine.ledger import (AVAILABLE, BUCKETS, FIRST_USER_ACCOUNT, KIND_WITHDRAW,
                           KIND_WITHDRAW_HOLD, KIND_WITHDRAW_RELEASE, LOCKED)
from settlement.reconcile import LEDGER_SUMS_SQL

__all__ = ["Finding", "audit", "record_run", "last_seq", "ledger_sums", "balances_table",
           "asset_names", "first_disagreement"]

ALL_ACCOUNTS = -1       # Finding.account of a whole-asset check


@dataclass(frozen=True)
class Finding:
    account: int           # ALL_ACCOUNTS for a whole-asset (supply) check
    asset: str
    bucket: str            # available | locked | total
    expected: int          # minor units
    actual: int
    check: str             # balances | chain | supply | orders | withdrawals | snapshot | engine-ledger | engine-balances
    first_seq: int | None = None
    note: str = ""



# The first transfer per (account, asset, bucket) whose stored balance is not
# the running sum of the amounts before and including it.
_CHAIN_SQL = """
    WITH moves AS (
        SELECT id, seq, event_index, asset_id, target_account AS account,
               target_bucket AS bucket, amount AS delta, target_balance AS stored
        FROM transfers
        UNION ALL
        SELECT id, seq, event_index, asset_id, source_account, source_bucket, -amount,
               source_balance
        FROM transfers),
    run AS (
        SELECT *, sum(delta) OVER (PARTITION BY account, asset_id, bucket
                                   ORDER BY seq, event_index, id) AS running
        FROM moves)
    SELECT DISTINCT ON (account, asset_id, bucket)
           account, asset_id, bucket, seq, running::bigint AS running, stored
    FROM run WHERE running <> stored
    ORDER BY account, asset_id, bucket, seq, event_index, id
"""

_HISTORY_SQL = """
    SELECT seq, stored FROM (
        SELECT id, seq, event_index, target_balance AS stored FROM transfers
        WHERE target_account = $1 AND asset_id = $2 AND target_bucket = $3
        UNION ALL
        SELECT id, seq, event_index, source_balance FROM transfers
        WHERE source_account = $1 AND asset_id = $2 AND source_bucket = $3) h
    ORDER BY seq, event_index, id
"""

# Per order: its account, asset and net movement into the locked bucket.
_ORDER_LOCKS_SQL = """
    SELECT o.order_id, o.account_id, o.status, m.asset_id, sum(m.delta)::bigint AS held
    FROM orders o JOIN (
        SELECT order_id, target_account AS account, asset_id, amount AS delta FROM transfers
        WHERE order_id IS NOT NULL AND target_bucket = 'locked'
        UNION ALL
        SELECT order_id, source_account, asset_id, -amount FROM transfers
        WHERE order_id IS NOT NULL AND source_bucket = 'locked') m
      ON m.order_id = o.order_id AND m.account = o.account_id
    GROUP BY 1, 2, 3, 4
"""

# Per (account, asset): the net movement into the locked bucket by withdrawal
# transfers (they carry no order id): what pending withdrawals hold.
_WITHDRAWAL_KINDS = ", ".join(f"'{k}'" for k in (KIND_WITHDRAW_HOLD, KIND_WITHDRAW,
                                                 KIND_WITHDRAW_RELEASE))
_WITHDRAWAL_HOLDS_SQL = f"""
    SELECT account, asset_id, sum(delta)::bigint AS held FROM (
        SELECT target_account AS account, asset_id, amount AS delta FROM transfers
        WHERE kind IN ({_WITHDRAWAL_KINDS})
          AND target_bucket = '{LOCKED}' AND order_id IS NULL
        UNION ALL
        SELECT source_account, asset_id, -amount FROM transfers
        WHERE kind IN ({_WITHDRAWAL_KINDS})
          AND source_bucket = '{LOCKED}' AND order_id IS NULL) m
    GROUP BY 1, 2
"""


async def last_seq(conn, engine_id: str = "main") -> int:
    return await conn.fetchval(
        "SELECT last_seq FROM settlement_state WHERE engine_id = $1", engine_id) or 0


async def asset_names(conn) -> dict[int, str]:
    return {r["asset_id"]: r["name"] for r in await conn.fetch("SELECT asset_id, name FROM assets")}


async def ledger_sums(conn) -> dict[tuple[int, int, str], int]:
    return {(r["account"], r["asset_id"], r["bucket"]): r["total"]
            for r in await conn.fetch(LEDGER_SUMS_SQL)}


async def balances_table(conn) -> dict[tuple[int, int], tuple[int, int]]:
    return {(r["account_id"], r["asset_id"]): (r["available"], r["locked"])
            for r in await conn.fetch("SELECT account_id, asset_id, available, locked FROM balances")}


def first_disagreement(history: list[tuple[int, int]], value: int) -> int | None:
    """``history``: (seq, stored balance after) of one bucket, oldest first.
    The seq after the last transfer whose stored balance is ``value`` (the
    table stopped following the ledger there); None when the ledger ends at
    ``value`` or never held it."""
    for k in range(len(history) - 1, -1, -1):
        if history[k][1] == value:
            return history[k + 1][0] if k + 1 < len(history) else None
    return None


# Each daily snapshot against the ledger summed up to the seq it covers.
_SNAPSHOT_SQL = f"""
    WITH moves AS (
        SELECT target_account AS account, asset_id, target_bucket AS bucket, amount AS delta
        FROM transfers WHERE seq <= $2
        UNION ALL
        SELECT source_account, asset_id, source_bucket, -amount FROM transfers WHERE seq <= $2),
    ledger AS (
        SELECT account, asset_id,
               coalesce(sum(delta) FILTER (WHERE bucket = '{AVAILABLE}'), 0)::bigint AS available,
               coalesce(sum(delta) FILTER (WHERE bucket = '{LOCKED}'), 0)::bigint AS locked
        FROM moves GROUP BY 1, 2),
    snap AS (SELECT account_id AS account, asset_id, available, locked
             FROM daily_balances WHERE day = $1)
    SELECT coalesce(l.account, s.account) AS account, coalesce(l.asset_id, s.asset_id) AS asset_id,
           coalesce(l.available, 0) AS ledger_available, coalesce(l.locked, 0) AS ledger_locked,
           coalesce(s.available, 0) AS snap_available, coalesce(s.locked, 0) AS snap_locked
    FROM ledger l FULL JOIN snap s ON l.account = s.account AND l.asset_id = s.asset_id
    WHERE coalesce(l.available, 0) <> coalesce(s.available, 0)
       OR coalesce(l.locked, 0) <> coalesce(s.locked, 0)
"""


async def audit(conn) -> list[Finding]:
    """The database-only checks (see the module docstring), in a snapshot
    of the database (one repeatable-read transaction)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        names = await asset_names(conn)
        ledger = await ledger_sums(conn)
        table = await balances_table(conn)
        chain = await conn.fetch(_CHAIN_SQL)
        order_locks = await conn.fetch(_ORDER_LOCKS_SQL)
        withdrawal_holds = await conn.fetch(_WITHDRAWAL_HOLDS_SQL)
        updated = {(r["account_id"], r["asset_id"]): r["updated_seq"] for r in await conn.fetch(
            "SELECT account_id, asset_id, updated_seq FROM balances")}
        out: list[Finding] = []
        for snap in await conn.fetch("SELECT day, through_seq FROM daily_balance_snapshots "
                                     "ORDER BY day"):
            for r in await conn.fetch(_SNAPSHOT_SQL, snap["day"], snap["through_seq"]):
                for bucket in BUCKETS:
                    want, got = r[f"ledger_{bucket}"], r[f"snap_{bucket}"]
                    if want != got:
                        out.append(Finding(r["account"], names.get(r["asset_id"],
                                                                   f"#{r['asset_id']}"),
                                           bucket, want, got, "snapshot", snap["through_seq"],
                                           f"daily snapshot {snap['day']}"))
        chain_seq = {(r["account"], r["asset_id"], r["bucket"]): r["seq"] for r in chain}
        keys = {(a, i) for a, i, _ in ledger} | set(table)
        for account, aid in sorted(keys):
            row = table.get((account, aid), (0, 0))
            for b, bucket in enumerate(BUCKETS):
                want = ledger.get((account, aid, bucket), 0)
                if row[b] == want:
                    continue
                # where they part: the ledger's own chain breaks (a row missing
                # or altered); else the table stopped following the ledger; else
                # the table's last write (its value was never the ledger's)
                seq = chain_seq.get((account, aid, bucket))
                if seq is None:
                    history = [(r["seq"], r["stored"])
                               for r in await conn.fetch(_HISTORY_SQL, account, aid, bucket)]
                    seq = first_disagreement(history, row[b])
                if seq is None:
                    seq = updated.get((account, aid))
                out.append(Finding(account, names.get(aid, f"#{aid}"), bucket, want, row[b],
                                   "balances", seq))
    for r in chain:
        out.append(Finding(r["account"], names.get(r["asset_id"], f"#{r['asset_id']}"),
                           r["bucket"], r["running"], r["stored"], "chain", r["seq"],
                           "stored balance != running sum"))
    for aid, asset in sorted(names.items()):
        total = sum(a + lk for (_, i), (a, lk) in table.items() if i == aid)
        if total != 0:
            out.append(Finding(ALL_ACCOUNTS, asset, "total", 0, total, "supply"))
    reserved: dict[tuple[int, int], int] = {}
    for r in withdrawal_holds:
        key = (r["account"], r["asset_id"])
        if r["held"] < 0:
            out.append(Finding(r["account"], names.get(r["asset_id"], f"#{r['asset_id']}"),
                               "locked", 0, r["held"], "withdrawals",
                               note="more withdrawn or released from locked than withdrawals held"))
        reserved[key] = reserved.get(key, 0) + r["held"]
    for r in order_locks:
        key = (r["account_id"], r["asset_id"])
        if r["status"] == "open":
            reserved[key] = reserved.get(key, 0) + r["held"]
        elif r["held"] != 0:
            out.append(Finding(r["account_id"], names.get(r["asset_id"], f"#{r['asset_id']}"),
                               "locked", 0, r["held"], "orders",
                               note=f"order {r['order_id']} is {r['status']} but still holds"))
    for (account, aid), row in sorted(table.items()):
        if account < FIRST_USER_ACCOUNT:
            continue
        want = reserved.pop((account, aid), 0)
        if row[1] != want:
            out.append(Finding(account, names.get(aid, f"#{aid}"), "locked", want, row[1],
                               "orders", updated.get((account, aid)),
                               "locked != what the account's open orders reserve and its "
                               "pending withdrawals hold"))
    for (account, aid), want in sorted(reserved.items()):
        if want != 0:
            out.append(Finding(account, names.get(aid, f"#{aid}"), "locked", want, 0, "orders",
                               note="open orders and pending withdrawals reserve more than a "
                                    "missing balances row"))
    return out


async def record_run(conn, *, engine_id: str, through_seq: int, source: str,
                     findings: list[Finding], note: str = "") -> int:
    """One ``reconciliation_runs`` row for a finished run; its id."""
    return await conn.fetchval(
        "INSERT INTO reconciliation_runs (engine_id, through_seq, source, status, "
        "discrepancy_count, discrepancies, note, finished_at) "
        "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, now()) RETURNING id",
        engine_id, through_seq, source, "mismatch" if findings else "ok", len(findings),
        json.dumps([asdict(f) for f in findings]), note)
