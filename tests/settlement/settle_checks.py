"""The proof that a ledger is right: PostgreSQL against the engine's events and state.

``assert_settled(url, engine, commands)`` checks, for a database that settled
``commands`` (the per-command event lists an engine returned):

- every Transfer / Trade / Adjusted / AdminAction event is in the ledger
  exactly once, field by field, in (seq, event_index) order: no duplicate, no
  gap, nothing extra;
- the ledger summed per (account, asset, bucket) == the ``balances`` table ==
  the engine's ``balance(account, asset)`` for every account and asset;
- per asset the whole system sums to zero (the outside world included);
- ``orders`` holds every accepted order once, the open ones exactly the orders
  the engine still has open, with the engine's open quantity;
- ``settlement_state.last_seq`` is the last seq.
"""
from __future__ import annotations

import asyncio

import asyncpg

from engine.messages import Accepted, Adjusted, AdminAction, Trade, Transfer
from settlement.rows import AUDITED_BY_ADJUSTED
from engine.reasons import ACTION_ADJUST, ACTION_ADJUST_APPROVE

AUDIT_SELECT = ("SELECT seq, event_index, account_id, asset_id, amount, admin, reason, "
                "available_before, available_after, action, target, before, after, "
                "adjustment_id, approved_by FROM audit_log ORDER BY seq, event_index")


def expected_audit_row(ev, index, asset_ids):
    """The audit_log row of an Adjusted (money) or AdminAction (act) event."""
    if type(ev) is Adjusted:
        return (ev.seq, index, ev.account, asset_ids[ev.asset], ev.amount, ev.admin, ev.reason,
                ev.available_before, ev.available_after,
                ACTION_ADJUST_APPROVE if ev.adjustment_id else ACTION_ADJUST, "", "", "",
                ev.adjustment_id or None, ev.approved_by)
    assert type(ev) is AdminAction
    return (ev.seq, index, ev.account or None, None, None, ev.admin, ev.reason, None, None,
            ev.action, ev.target, ev.before, ev.after, None, "")


def expected_rows(commands, asset_ids):
    transfers, trades, audit = [], [], []
    accepted = set()
    for events in commands:
        for i, ev in enumerate(events):
            t = type(ev)
            if t is Transfer:
                transfers.append((ev.seq, i, asset_ids[ev.asset], ev.amount, ev.source_account,
                                  ev.source_bucket, ev.target_account, ev.target_bucket, ev.kind,
                                  ev.ref, ev.order_id or None, ev.trade_id or None,
                                  ev.source_balance, ev.target_balance))
            elif t is Trade:
                trades.append((ev.trade_id, ev.seq, i, ev.symbol, ev.price, ev.qty,
                               ev.maker_order_id, ev.taker_order_id, ev.maker_account,
                               ev.taker_account, ev.taker_side, ev.maker_fee, ev.taker_fee))
            elif t is Adjusted or t is AdminAction and ev.action not in AUDITED_BY_ADJUSTED:
                audit.append(expected_audit_row(ev, i, asset_ids))
            elif t is Accepted:
                accepted.add(ev.order_id)
    return transfers, trades, audit, accepted


async def _fetch(url):
    conn = await asyncpg.connect(url)
    try:
        asset_ids = {r["name"]: r["asset_id"] for r in await conn.fetch("SELECT * FROM assets")}
        transfers = [tuple(r) for r in await conn.fetch(
            "SELECT seq, event_index, asset_id, amount, source_account, source_bucket, "
            "target_account, target_bucket, kind, ref, order_id, trade_id, source_balance, "
            "target_balance FROM transfers ORDER BY seq, event_index")]
        trades = [tuple(r) for r in await conn.fetch(
            "SELECT trade_id, seq, event_index, symbol, price_ticks, qty_lots, maker_order_id, "
            "taker_order_id, maker_account, taker_account, taker_side, maker_fee, taker_fee "
            "FROM trades ORDER BY seq, event_index")]
        audit = [tuple(r) for r in await conn.fetch(AUDIT_SELECT)]
        ledger = {(r["account"], r["asset_id"], r["bucket"]): r["total"] for r in await conn.fetch("""
            SELECT account, asset_id, bucket, sum(delta)::bigint AS total FROM (
                SELECT target_account AS account, asset_id, target_bucket AS bucket, amount AS delta
                FROM transfers
                UNION ALL
                SELECT source_account, asset_id, source_bucket, -amount FROM transfers) x
            GROUP BY 1, 2, 3""")}
        balances = {(r["account_id"], r["asset_id"]): (r["available"], r["locked"])
                    for r in await conn.fetch("SELECT * FROM balances")}
        per_asset = {r["asset_id"]: r["total"] for r in await conn.fetch(
            "SELECT asset_id, sum(available + locked)::bigint AS total FROM balances GROUP BY 1")}
        orders = {r["order_id"]: (r["status"], r["open_qty_lots"]) for r in await conn.fetch(
            "SELECT order_id, status, open_qty_lots FROM orders")}
        last_seq = await conn.fetchval("SELECT max(last_seq) FROM settlement_state")
        return asset_ids, transfers, trades, audit, ledger, balances, per_asset, orders, last_seq
    finally:
        await conn.close()


def assert_settled(url: str, engine, commands) -> dict:
    """See the module docstring; returns row counts."""
    (asset_ids, transfers, trades, audit, ledger, balances, per_asset, orders,
     last_seq) = asyncio.run(_fetch(url))
    exp_transfers, exp_trades, exp_audit, accepted = expected_rows(commands, asset_ids)

    # every event exactly once, field by field
    assert len(transfers) == len(exp_transfers), (len(transfers), len(exp_transfers))
    assert transfers == exp_transfers
    assert len(trades) == len(exp_trades)
    assert trades == exp_trades
    assert audit == exp_audit
    assert last_seq == engine.seq == commands[-1][0].seq

    # ledger == balances table == engine
    for (account, asset_id), (available, locked) in balances.items():
        assert ledger.get((account, asset_id, "available"), 0) == available, (account, asset_id)
        assert ledger.get((account, asset_id, "locked"), 0) == locked, (account, asset_id)
    for (account, asset_id, bucket), total in ledger.items():
        assert (account, asset_id) in balances or total == 0, (account, asset_id, bucket, total)
    names = {v: k for k, v in asset_ids.items()}
    assert {a for a, _ in balances} <= set(engine.accounts())
    for account in engine.accounts():
        for asset in engine.assets:
            want = engine.balance(account, asset.name)
            got = balances.get((account, asset_ids[asset.name]), (0, 0))
            assert got == want, (account, asset.name, got, want)
    # the whole system sums to zero, per asset
    assert per_asset and all(total == 0 for total in per_asset.values()), \
        {names[a]: t for a, t in per_asset.items()}

    # orders: one row per accepted order; open == the engine's open orders
    assert set(orders) == accepted
    open_db = {oid for oid, (status, _) in orders.items() if status == "open"}
    open_engine = {oid for oid in accepted if engine.order(oid) is not None}
    assert open_db == open_engine, (sorted(open_db - open_engine)[:10],
                                    sorted(open_engine - open_db)[:10])
    for oid in open_engine:
        assert orders[oid][1] == engine.order(oid)["qty"], oid
    return {"transfers": len(transfers), "trades": len(trades), "audit_log": len(audit),
            "orders": len(orders), "commands": len(commands)}
