"""Reconciliation: the PostgreSQL ledger against the balances table against the engine.

``await reconcile(url, engine, engine_id="main")`` compares, at the engine's
current ``seq`` (which must be the database's ``settlement_state.last_seq``):

- the ledger (``transfers`` summed per account, asset and bucket) with the
  engine's ``balance(account, asset)``;
- the ``balances`` table with the same;
- per asset, the whole system (outside world included) sums to zero.

Every difference becomes a ``Discrepancy(account, asset, bucket, expected,
actual, check)`` (expected: the engine's value).  The run is recorded in
``reconciliation_runs`` (status ok, mismatch or error) and returned.  It reads
only; it never repairs anything.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import asyncpg

from engine.ledger import BUCKETS


@dataclass(frozen=True)
class Discrepancy:
    account: int
    asset: str
    bucket: str            # available | locked | total (a whole-asset check)
    expected: int          # minor units
    actual: int
    check: str             # ledger | balances | supply


@dataclass
class Reconciliation:
    run_id: int
    engine_id: str
    through_seq: int
    status: str            # ok | mismatch | error
    discrepancies: list[Discrepancy] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# the ledger summed per (account, asset, bucket): one definition, audit.py uses it too
LEDGER_SUMS_SQL = """
    SELECT account, asset_id, bucket, sum(delta)::bigint AS total FROM (
        SELECT target_account AS account, asset_id, target_bucket AS bucket, amount AS delta
        FROM transfers
        UNION ALL
        SELECT source_account, asset_id, source_bucket, -amount FROM transfers) moves
    GROUP BY 1, 2, 3
"""


def compare(engine, asset_names: dict[int, str], ledger: dict, table: dict) -> list[Discrepancy]:
    """The pure comparison: ``ledger`` maps (account, asset_id, bucket) -> sum,
    ``table`` maps (account, asset_id) -> (available, locked)."""
    asset_ids = {name: i for i, name in asset_names.items()}
    accounts = set(engine.accounts()) | {k[0] for k in ledger} | {k[0] for k in table}
    out: list[Discrepancy] = []
    for account in sorted(accounts):
        for asset in (a.name for a in engine.assets):
            aid = asset_ids.get(asset)
            want = engine.balance(account, asset)
            row = table.get((account, aid), (0, 0))
            for b, bucket in enumerate(BUCKETS):
                got_ledger = ledger.get((account, aid, bucket), 0)
                if got_ledger != want[b]:
                    out.append(Discrepancy(account, asset, bucket, want[b], got_ledger, "ledger"))
                if row[b] != want[b]:
                    out.append(Discrepancy(account, asset, bucket, want[b], row[b], "balances"))
    for aid, asset in sorted(asset_names.items()):
        total = sum(a + lk for (acct, i), (a, lk) in table.items() if i == aid)
        if total != 0:
            out.append(Discrepancy(-1, asset, "total", 0, total, "supply"))
    return out


async def reconcile(url: str, engine, *, engine_id: str = "main") -> Reconciliation:
    conn = await asyncpg.connect(url)
    try:
        last_seq = await conn.fetchval(
            "SELECT last_seq FROM settlement_state WHERE engine_id = $1", engine_id) or 0
        run_id = await conn.fetchval(
            "INSERT INTO reconciliation_runs (engine_id, through_seq, source) VALUES ($1, $2, 'engine') "
            "RETURNING id", engine_id, last_seq)
        if last_seq != engine.seq:
            result = Reconciliation(run_id, engine_id, last_seq, "error",
                                    note=f"engine is at seq {engine.seq}, the ledger at {last_seq}")
        else:
            asset_names = {r["asset_id"]: r["name"] for r in await conn.fetch(
                "SELECT asset_id, name FROM assets")}
            ledger = {(r["account"], r["asset_id"], r["bucket"]): r["total"]
                      for r in await conn.fetch(LEDGER_SUMS_SQL)}
            table = {(r["account_id"], r["asset_id"]): tuple(r[bucket] for bucket in BUCKETS)
                     for r in await conn.fetch(
                         "SELECT account_id, asset_id, available, locked FROM balances")}
            found = compare(engine, asset_names, ledger, table)
            result = Reconciliation(run_id, engine_id, last_seq, "mismatch" if found else "ok", found)
        await conn.execute(
            "UPDATE reconciliation_runs SET status = $2, discrepancy_count = $3, "
            "discrepancies = $4::jsonb, note = $5, finished_at = now() WHERE id = $1",
            run_id, result.status, len(result.discrepancies),
            json.dumps([asdict(d) for d in result.discrepancies]), result.note)
        return result
    finally:
        await conn.close()
