"""The pure event -> row mapping (settlement.rows): no database here."""
from __future__ import annotations

import random

import pytest

from engine.messages import (Accepted, Adjust, AdjustmentPending, Adjusted, AdminAction,
                             CancelOrder, Cancelled, Clocked, Deposit, PlaceOrder, Rejected, Trade,
                             Transfer, WithdrawalRejected, WithdrawalRequested)
from engine.reasons import CANCEL_ADMIN
from engine.flow import new_engine, run
from settlement.rows import (AUDIT_COLUMNS, BALANCE_COLUMNS, ORDER_COLUMNS, ORDER_UPDATE_COLUMNS,
                             TRADE_COLUMNS, TRANSFER_COLUMNS, BatchBuilder, MappingError, build)

IDS = {"BTC": 1, "ETH": 2, "USDT": 3}


def _submit_all(engine, commands):
    return [engine.submit(c) for c in commands]


def _trading_day():
    engine = new_engine()
    return engine, _submit_all(engine, [
        Deposit(2, "USDT", 10**12), Deposit(3, "BTC", 10**9),
        PlaceOrder(2, "b1", "BTC-USDT", "buy", price=3_000_000, qty=100),
        PlaceOrder(3, "s1", "BTC-USDT", "sell", price=2_900_000, qty=60),      # partial fill of b1
        PlaceOrder(3, "s2", "BTC-USDT", "sell", price=2_900_000, qty=60),      # fills b1, rests 20
        CancelOrder(3, client_order_id="s2"),
        Adjust(2, "USDT", -7, admin="ops", reason="ticket-1"),
        CancelOrder(3, order_id=999),                                           # rejected
    ])


def test_transfer_rows_are_the_events_field_by_field():
    engine, commands = _trading_day()
    b = build(commands, IDS)
    transfers = [(i, ev) for events in commands for i, ev in enumerate(events) if type(ev) is Transfer]
    assert len(b.transfers) == len(transfers)
    for row, (i, ev) in zip(b.transfers, transfers):
        r = dict(zip(TRANSFER_COLUMNS, row))
        assert r["seq"] == ev.seq and r["event_index"] == i
        assert r["asset_id"] == IDS[ev.asset] and r["amount"] == ev.amount
        assert (r["source_account"], r["source_bucket"]) == (ev.source_account, ev.source_bucket)
        assert (r["target_account"], r["target_bucket"]) == (ev.target_account, ev.target_bucket)
        assert r["kind"] == ev.kind and r["ref"] == ev.ref
        assert r["order_id"] == (ev.order_id or None) and r["trade_id"] == (ev.trade_id or None)
        assert (r["source_balance"], r["target_balance"]) == (ev.source_balance, ev.target_balance)
    assert b.first_seq == 1 and b.last_seq == engine.seq == 8
    assert b.n_commands == 8 and b.n_events == sum(map(len, commands))


def test_trade_rows_carry_base_and_quote_amounts_from_their_transfers():
    _, commands = _trading_day()
    b = build(commands, IDS)
    assert len(b.trades) == 2
    t = dict(zip(TRADE_COLUMNS, b.trades[0]))
    assert (t["trade_id"], t["price_ticks"], t["qty_lots"]) == (1, 3_000_000, 60)
    assert (t["base_asset_id"], t["quote_asset_id"]) == (IDS["BTC"], IDS["USDT"])
    assert t["base_amount"] == 60 * 10_000                # lots * base unit (0.0001 BTC = 10^4)
    assert t["quote_amount"] == 3_000_000 * 60 * 1        # ticks * lots * notional unit
    assert t["maker_account"] == 2 and t["taker_side"] == "sell"


def test_adjustments_write_the_audit_row():
    _, commands = _trading_day()
    b = build(commands, IDS)
    (row,) = b.audit
    adjusted = next(ev for events in commands for ev in events if type(ev) is Adjusted)
    assert row == (adjusted.seq, 0, 2, IDS["USDT"], -7, "ops", "ticket-1",
                   adjusted.available_before, adjusted.available_before - 7,
                   "adjust", "", "", "", None, "")


def test_admin_acts_write_action_rows_and_approved_adjustments_say_so():
    commands = [
        [AdminAction(1, "ops", "halt", target="BTC-USDT", before="trading", after="halted")],
        [AdjustmentPending(2, 7, 2, "USDT", 10**9, "alice", "refund #12"),
         AdminAction(2, "alice", "adjust_request", 2, "USDT", "refund #12", "", "7")],
        [Adjusted(3, 2, "USDT", 10**9, "alice", "refund #12", 5, 10**9 + 5, adjustment_id=7,
                  approved_by="bob"),
         AdminAction(3, "bob", "adjust_approve", 2, "7", "refund #12", "pending", "approved"),
         Transfer(3, "USDT", 10**9, 0, "available", 2, "available", "adjust", ref="refund #12",
                  source_balance=-10**9, target_balance=10**9 + 5)],
    ]
    b = build(commands, IDS)
    rows = [dict(zip(AUDIT_COLUMNS, r)) for r in b.audit]
    # the approval's AdminAction writes no row of its own: its Adjusted row audits it
    assert [(r["seq"], r["event_index"], r["action"]) for r in rows] == \
        [(1, 0, "halt"), (2, 1, "adjust_request"), (3, 0, "adjust_approve")]
    halt, request, money = rows
    # an act names no account (0) as NULL, and never carries money
    assert (halt["account_id"], halt["target"], halt["before"], halt["after"]) == \
        (None, "BTC-USDT", "trading", "halted")
    assert all(r[k] is None for r in (halt, request)
               for k in ("asset_id", "amount", "available_before", "available_after",
                         "adjustment_id"))
    assert (request["admin"], request["account_id"], request["reason"]) == ("alice", 2, "refund #12")
    assert (money["amount"], money["adjustment_id"], money["approved_by"], money["admin"]) == \
        (10**9, 7, "bob", "alice")
    assert money["available_after"] == money["available_before"] + money["amount"]
    assert b.n_rows == 4 and not b.has_ref_keys      # an adjust's ref is no key


def test_clock_and_withdrawal_events_write_no_row_but_count():
    hold = Transfer(2, "USDT", 30, 2, "available", 2, "locked", "withdraw_hold", ref="w-1",
                    source_balance=70, target_balance=30)
    commands = [
        [Clocked(1, 1_700_000_000_000_000_000)],
        [WithdrawalRequested(2, 1, 2, "USDT", 30, "w-1"), hold],
        [WithdrawalRejected(3, 1, 2, "USDT", 30, "w-1", "ops", "sanctions screening"),
         AdminAction(3, "ops", "withdrawal_reject", 2, "1", "sanctions screening", "pending",
                     "rejected"),
         Transfer(3, "USDT", 30, 2, "locked", 2, "available", "withdraw_release", ref="w-1",
                  source_balance=0, target_balance=100)],
        [Clocked(4, 1_700_000_000_000_000_001)],
    ]
    b = build(commands, IDS)
    assert (b.first_seq, b.last_seq, b.n_commands, b.n_events) == (1, 4, 4, 7)
    assert [r[TRANSFER_COLUMNS.index("kind")] for r in b.transfers] == \
        ["withdraw_hold", "withdraw_release"]
    assert [r[AUDIT_COLUMNS.index("action")] for r in b.audit] == ["withdrawal_reject"]
    assert b.has_ref_keys
    (balance,) = b.balance_rows()
    assert dict(zip(BALANCE_COLUMNS, balance))["locked_delta"] == 0
    assert not build(commands[:1], IDS).has_ref_keys


def test_an_admin_cancel_is_a_cancelled_order_with_reason_admin():
    engine = new_engine()
    commands = _submit_all(engine, [
        Deposit(2, "USDT", 10**12),
        PlaceOrder(2, "b1", "BTC-USDT", "buy", price=3_000_000, qty=100)])
    (accepted,) = [ev for ev in commands[1] if type(ev) is Accepted]
    commands.append([Cancelled(3, accepted.order_id, 2, 100, CANCEL_ADMIN),
                     AdminAction(3, "ops", "cancel_order", 2, str(accepted.order_id))])
    new, _ = build(commands, IDS).order_rows()
    (order,) = [dict(zip(ORDER_COLUMNS, r)) for r in new]
    assert (order["status"], order["cancel_reason"]) == ("cancelled", "admin")


def test_order_states_in_one_batch_and_as_updates_across_batches():
    engine, commands = _trading_day()
    whole = build(commands, IDS)
    new, updates = whole.order_rows()
    assert updates == []
    orders = {r[0]: dict(zip(ORDER_COLUMNS, r)) for r in new}
    assert orders[1]["status"] == "filled" and orders[1]["filled_qty_lots"] == 100
    assert orders[1]["open_qty_lots"] == 0 and orders[1]["accepted_seq"] == 3
    assert orders[2]["status"] == "filled" and orders[2]["filled_qty_lots"] == 60
    assert orders[3]["status"] == "cancelled" and orders[3]["cancel_reason"] == "user"
    assert orders[3]["filled_qty_lots"] == 40 and orders[3]["updated_seq"] == 6

    # split after the first order rested: b1's later fills become an update
    second = build(commands[3:], IDS)
    assert second.first_seq == 4
    new, updates = second.order_rows()
    assert {r[0] for r in new} == {2, 3}
    (update,) = updates
    u = dict(zip(ORDER_UPDATE_COLUMNS, update))
    assert u == {"order_id": 1, "price_ticks": None, "open_qty_lots": 0, "filled_qty_lots": 100,
                 "status": "filled", "cancel_reason": None, "updated_seq": 5}


def test_quote_sized_market_buy_ends_filled():
    engine = new_engine()
    commands = _submit_all(engine, [
        Deposit(2, "USDT", 10**12), Deposit(3, "BTC", 10**9),
        PlaceOrder(3, "s", "BTC-USDT", "sell", price=3_000_000, qty=1000),
        PlaceOrder(2, "m", "BTC-USDT", "buy", type="market", tif="ioc", quote_qty=3_006_000),
    ])
    new, _ = build(commands, IDS).order_rows()
    market = dict(zip(ORDER_COLUMNS, next(r for r in new if r[2] == "m")))
    assert market["qty_lots"] == 0 and market["filled_qty_lots"] == 1
    assert market["status"] == "filled"
    assert engine.order(market["order_id"]) is None


def test_balance_rows_sum_deltas_and_keep_the_last_reported_balance():
    engine, commands = _trading_day()
    rows = {(r[0], r[1]): dict(zip(BALANCE_COLUMNS, r)) for r in build(commands, IDS).balance_rows()}
    for (account, asset_id), r in rows.items():
        asset = next(k for k, v in IDS.items() if v == asset_id)
        available, locked = engine.balance(account, asset)
        assert r["available_delta"] == available and r["locked_delta"] == locked
        assert r["available_after"] in (None, available) and r["locked_after"] in (None, locked)
    assert rows[(0, IDS["USDT"])]["available_delta"] < 0          # the outside world
    assert rows[(1, IDS["USDT"])]["locked_after"] is None           # fees never lock


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_split_into_batches_folds_to_the_engine_balances(seed):
    """Differential: batches of random sizes, deltas folded, == engine state;
    each batch's reported post-balances == the fold so far."""
    engine, commands = run(seed=seed, n=4_000)
    rng = random.Random(seed)
    folded: dict[tuple[int, int], list[int]] = {}
    i = 0
    while i < len(commands):
        j = min(len(commands), i + rng.randint(1, 400))
        for account, asset_id, d_av, d_lk, av_after, lk_after, _ in build(commands[i:j], IDS).balance_rows():
            f = folded.setdefault((account, asset_id), [0, 0])
            f[0] += d_av
            f[1] += d_lk
            assert av_after is None or av_after == f[0]
            assert lk_after is None or lk_after == f[1]
        i = j
    for account in engine.accounts():
        for name, asset_id in IDS.items():
            assert tuple(folded.get((account, asset_id), (0, 0))) == engine.balance(account, name)


def test_rejected_only_commands_write_nothing_but_count():
    engine = new_engine()
    events = engine.submit(CancelOrder(5, order_id=1))
    assert type(events[0]) is Rejected
    b = build([events], IDS)
    assert (b.n_rows, b.n_commands, b.last_seq) == (0, 1, 1)
    assert b.balance_rows() == [] and b.order_rows() == ([], [])


def test_mapping_errors():
    engine, commands = _trading_day()
    with pytest.raises(MappingError, match="gap"):
        build([commands[0], commands[2]], IDS)
    with pytest.raises(MappingError, match="two commands|one command"):
        build([commands[0] + commands[1]], IDS)
    with pytest.raises(MappingError, match="unknown asset"):
        build(commands, {"BTC": 1, "ETH": 2})
    with pytest.raises(MappingError, match="at least one event"):
        BatchBuilder(IDS).add([])
    bad = Transfer(1, "USDT", 5, 0, "available", 2, "frozen", "deposit", target_balance=5)
    with pytest.raises(MappingError, match="target_bucket"):
        BatchBuilder(IDS).add([bad])
    with pytest.raises(MappingError, match="without its"):
        BatchBuilder(IDS).add([Transfer(1, "USDT", 5, 2, "locked", 3, "available", "trade",
                                        trade_id=9)])
    lonely = Trade(1, 9, "BTC-USDT", 1, 1, 1, 2, 2, 3, "buy", 0, 0)
    with pytest.raises(MappingError, match="without both"):
        BatchBuilder(IDS).add([lonely])
    with pytest.raises(MappingError, match="accepted after"):
        BatchBuilder(IDS).add([Accepted(1, 1, 2, "", "BTC-USDT", "buy", 1, 1),
                               Accepted(1, 1, 2, "", "BTC-USDT", "buy", 1, 1)])
    with pytest.raises(MappingError, match="unknown admin action 'reboot'"):
        BatchBuilder(IDS).add([AdminAction(1, "ops", "reboot")])
    err = pytest.raises(MappingError, build, commands, {}).value
    assert err.events == commands[0]          # the offending command's events travel with it
