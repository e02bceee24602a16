"""Money controls, one test per rule and reject, on both engine variants:
idempotent refs, withdrawal holds and approval, account tiers (fees and
withdrawal limits), the clock, account freeze, admin cancels, the audit
record of every admin command, large adjustments waiting for a second admin,
and all of it across snapshot/restore and replay.

Market ABC-USD in whole units (support.instrument): maker 10 bps, taker 20
bps.  Tiers here: "default" (the instrument's fees; 100,000 USD a day,
auto-approval up to 100), "vip" (maker 0, taker 5; 1,000,000 a day,
auto-approval up to 5,000), "pro" (taker 50).  Adjustments over 50,000 USD
wait for a second admin.  Accounts 2..5 start with 1,000,000 USD and 100,000 ABC.
"""
from __future__ import annotations

import random

import msgspec
import pytest

from support import ASSETS, BOOKS, SYMBOL, engine_class, instrument, of
from engine import AccountTier, Asset, Instrument
from engine import reasons as R
from engine.core import DAY_NS
from engine.core import Engine as PureEngine
from engine.messages import (Accepted, AdminAction, Adjust, Adjusted, AdjustmentPending,
                             ApproveAdjustment, ApproveWithdrawal, CancelAll, CancelOrder,
                             Cancelled, Clock, Clocked, Deposit, FreezeAccount, Halt, Halted,
                             PendingAdjustment, PendingWithdrawal, PlaceOrder, Rejected,
                             RejectWithdrawal, ReplaceOrder, RequestWithdrawal, Resume, Resumed,
                             SetAccountTier, Trade, Transfer, Triggered, UnfreezeAccount,
                             Withdraw, WithdrawalCompleted, WithdrawalRejected,
                             WithdrawalRequested, decode_events, encode)

USD0, ABC0 = 1_000_000, 100_000
TIERS = [
    AccountTier("default", withdrawal_daily_limit={"USD": 100_000},
                withdrawal_auto_approve={"USD": 100}),
    AccountTier("vip", maker_fee_bps=0, taker_fee_bps=5,
                withdrawal_daily_limit={"USD": 1_000_000}, withdrawal_auto_approve={"USD": 5_000}),
    AccountTier("pro", taker_fee_bps=50),
]
THRESHOLD = {"USD": 50_000}


@pytest.fixture
def make(book):
    def make(tiers=TIERS, default_tier="default", threshold=THRESHOLD, assets=ASSETS,
             instruments=None, funded=True):
        eng = engine_class(book)(assets, instruments or [instrument()], book=book, tiers=tiers,
                                 default_tier=default_tier,
                                 adjustment_approval_threshold=threshold)
        if funded:
            for account in (2, 3, 4, 5):
                ok(eng, Deposit(account, "USD", USD0))
                ok(eng, Deposit(account, "ABC", ABC0))
        return eng
    return make


def ok(eng, cmd):
    """Submit a command that must be accepted; its events."""
    ev = eng.submit(cmd)
    assert not of(ev, Rejected), (cmd, ev)
    assert {e.seq for e in ev} <= {eng.seq}
    eng.validate()
    return ev


def rejected(eng, cmd, reason):
    """Submit a command that must be rejected with ``reason``, changing nothing but the seq."""
    before = _state_but_seq(eng)
    ev = eng.submit(cmd)
    assert [type(e) for e in ev] == [Rejected], ev
    assert ev[0].reason == reason, ev
    assert _state_but_seq(eng) == before
    eng.validate()
    return ev[0]


def _state_but_seq(eng):
    from engine.core import _Snapshot
    snap = msgspec.msgpack.decode(eng.snapshot(), type=_Snapshot)
    snap.seq = 0
    return snap


def place(eng, account, side, price, qty=10, **kw):
    return eng.submit(PlaceOrder(account, kw.pop("cid", ""), SYMBOL, side, price=price, qty=qty,
                                 **kw))


def order_id(events):
    return of(events, Accepted)[0].order_id


def transfer(eng, asset, amount, source, source_bucket, target, target_bucket, kind, ref=""):
    """The Transfer this command must emit, with the post balances it leaves."""
    sb = eng.balance(source, asset)[source_bucket == "locked"]
    tb = eng.balance(target, asset)[target_bucket == "locked"]
    return Transfer(eng.seq, asset, amount, source, source_bucket, target, target_bucket, kind,
                    ref, 0, 0, sb, tb)


def restored(eng):
    return type(eng).restore(eng.snapshot(), book=eng.book_implementation)


# ------------------------------------------------------------------ idempotent refs
def test_a_deposit_ref_is_used_once_per_account_and_asset(make):
    eng = make()
    ok(eng, Deposit(2, "USD", 500, ref="wire-1"))
    rejected(eng, Deposit(2, "USD", 500, ref="wire-1"), R.DUPLICATE_REF)
    rejected(eng, Deposit(2, "USD", 7, ref="wire-1"), R.DUPLICATE_REF)    # whatever the amount
    ok(eng, Deposit(3, "USD", 500, ref="wire-1"))          # another account
    ok(eng, Deposit(2, "ABC", 500, ref="wire-1"))          # another asset
    ok(eng, Withdraw(2, "USD", 500, ref="wire-1"))         # another kind
    ok(eng, Deposit(2, "USD", 500))                        # no ref: no check
    ok(eng, Deposit(2, "USD", 500))
    assert eng.balance(2, "USD") == (USD0 + 1000, 0)


def test_withdraw_and_request_withdrawal_share_one_ref_namespace(make):
    eng = make()
    ok(eng, Withdraw(2, "USD", 50, ref="out-1"))
    rejected(eng, RequestWithdrawal(2, "USD", 50, ref="out-1"), R.DUPLICATE_REF)
    ok(eng, RequestWithdrawal(2, "USD", 5_000, ref="out-2"))             # pending
    rejected(eng, Withdraw(2, "USD", 50, ref="out-2"), R.DUPLICATE_REF)
    # a rejected withdrawal keeps its ref used: the same request again is a duplicate
    ok(eng, RejectWithdrawal(1, "ops", "no"))
    rejected(eng, RequestWithdrawal(2, "USD", 5_000, ref="out-2"), R.DUPLICATE_REF)


def test_a_rejected_command_does_not_use_its_ref(make):
    eng = make()
    rejected(eng, Withdraw(2, "USD", USD0 + 1, ref="w"), R.INSUFFICIENT_FUNDS)
    rejected(eng, RequestWithdrawal(2, "USD", USD0 + 1, ref="w"), R.INSUFFICIENT_FUNDS)
    ok(eng, Withdraw(2, "USD", 10, ref="w"))
    rejected(eng, Deposit(2, "USD", 2**63 - 1, ref="d"), R.AMOUNT_OVERFLOW)
    ok(eng, Deposit(2, "USD", 10, ref="d"))


def test_refs_survive_snapshot_restore_and_replay(make, book):
    eng = make()
    commands = [Deposit(2, "USD", 5, ref="a"), Withdraw(2, "USD", 5, ref="b"),
                RequestWithdrawal(3, "USD", 5, ref="c"), Deposit(2, "ABC", 5, ref="x:1:é")]
    for c in commands:
        ok(eng, c)
    again = restored(eng)
    replayed = make()
    for c in commands:
        ok(replayed, c)
    for e in (eng, again, replayed):
        rejected(e, Deposit(2, "USD", 5, ref="a"), R.DUPLICATE_REF)
        rejected(e, Withdraw(2, "USD", 5, ref="b"), R.DUPLICATE_REF)
        rejected(e, Withdraw(3, "USD", 5, ref="c"), R.DUPLICATE_REF)
        rejected(e, Deposit(2, "ABC", 5, ref="x:1:é"), R.DUPLICATE_REF)
        ok(e, Deposit(2, "ABC", 5, ref="x:1"))
    assert eng.state_hash() == again.state_hash() == replayed.state_hash()


# ------------------------------------------------------------------ withdrawal holds
def test_request_holds_then_approval_sends_it_out(make):
    eng = make()
    ev = eng.submit(RequestWithdrawal(2, "USD", 30_000, ref="out-7"))
    seq = eng.seq
    assert ev == [WithdrawalRequested(seq, 1, 2, "USD", 30_000, "out-7"),
                  Transfer(seq, "USD", 30_000, 2, "available", 2, "locked", "withdraw_hold",
                           "out-7", 0, 0, USD0 - 30_000, 30_000)]
    assert eng.balance(2, "USD") == (USD0 - 30_000, 30_000)
    assert eng.pending_withdrawals() == [PendingWithdrawal(1, 2, "USD", 30_000, "out-7", seq, 0)]
    eng.validate()                       # locked == the hold
    ev = eng.submit(ApproveWithdrawal(1, "ops-ann"))
    seq = eng.seq
    assert ev == [WithdrawalCompleted(seq, 1, 2, "USD", 30_000, "out-7", "ops-ann"),
                  Transfer(seq, "USD", 30_000, 2, "locked", 0, "available", "withdraw", "out-7",
                           0, 0, 0, -(4 * USD0) + 30_000),
                  AdminAction(seq, "ops-ann", R.ACTION_WITHDRAWAL_APPROVE, 2, "1")]
    assert eng.balance(2, "USD") == (USD0 - 30_000, 0)
    assert eng.pending_withdrawals() == []
    rejected(eng, ApproveWithdrawal(1, "ops-ann"), R.UNKNOWN_WITHDRAWAL)
    rejected(eng, RejectWithdrawal(1, "ops-ann", "late"), R.UNKNOWN_WITHDRAWAL)
    eng.validate()


def test_rejecting_a_withdrawal_releases_the_hold(make):
    eng = make()
    ok(eng, RequestWithdrawal(2, "USD", 30_000, ref="out-7"))
    ev = eng.submit(RejectWithdrawal(1, "ops-bo", "sanctions check"))
    seq = eng.seq
    assert ev == [WithdrawalRejected(seq, 1, 2, "USD", 30_000, "out-7", "ops-bo", "sanctions check"),
                  Transfer(seq, "USD", 30_000, 2, "locked", 2, "available", "withdraw_release",
                           "out-7", 0, 0, 0, USD0),
                  AdminAction(seq, "ops-bo", R.ACTION_WITHDRAWAL_REJECT, 2, "1", "sanctions check")]
    assert eng.balance(2, "USD") == (USD0, 0)
    assert eng.pending_withdrawals() == []


def test_at_or_under_the_auto_approval_amount_it_completes_at_once(make):
    eng = make()
    ev = eng.submit(RequestWithdrawal(2, "USD", 100, ref="small"))     # default tier: <= 100
    seq = eng.seq
    assert [type(e) for e in ev] == [WithdrawalRequested, Transfer, WithdrawalCompleted, Transfer]
    assert ev[2] == WithdrawalCompleted(seq, 1, 2, "USD", 100, "small", "")
    assert [(t.kind, t.source_bucket, t.target_account) for t in of(ev, Transfer)] == [
        ("withdraw_hold", "available", 2), ("withdraw", "locked", 0)]
    assert eng.balance(2, "USD") == (USD0 - 100, 0)
    ev = eng.submit(RequestWithdrawal(2, "USD", 101))
    assert [type(e) for e in ev] == [WithdrawalRequested, Transfer]
    assert [w.withdrawal_id for w in eng.pending_withdrawals()] == [2]
    # an asset the tier gives no auto-approval amount always waits
    ev = eng.submit(RequestWithdrawal(2, "ABC", 1))
    assert [type(e) for e in ev] == [WithdrawalRequested, Transfer]


def test_a_held_amount_cannot_be_spent(make):
    eng = make()
    ok(eng, SetAccountTier(2, "vip", "ops"))                 # a daily limit of USD0
    ok(eng, RequestWithdrawal(2, "USD", USD0 - 500))
    rejected(eng, PlaceOrder(2, "", SYMBOL, "buy", price=100, qty=5), R.INSUFFICIENT_FUNDS)
    rejected(eng, Withdraw(2, "USD", 501), R.INSUFFICIENT_FUNDS)
    rejected(eng, RequestWithdrawal(2, "USD", 501), R.INSUFFICIENT_FUNDS)
    assert of(place(eng, 2, "buy", 49, qty=10), Accepted)   # 490 + fee 1 fits in 500


def test_pending_withdrawals_are_listed_by_id_and_by_account(make):
    eng = make()
    for account, amount in ((3, 1000), (2, 2000), (3, 3000)):
        ok(eng, RequestWithdrawal(account, "USD", amount))
    assert [w.withdrawal_id for w in eng.pending_withdrawals()] == [1, 2, 3]
    assert [(w.withdrawal_id, w.amount) for w in eng.pending_withdrawals(3)] == [(1, 1000), (3, 3000)]
    assert eng.pending_withdrawals(4) == []


def test_withdrawal_admin_texts_are_checked(make):
    eng = make()
    ok(eng, RequestWithdrawal(2, "USD", 1000))
    for cmd in (ApproveWithdrawal(1, ""), ApproveWithdrawal(1, "x" * 257),
                ApproveWithdrawal(1, "a\x00"), RejectWithdrawal(1, "ops", ""),
                RejectWithdrawal(1, "", "why"), RejectWithdrawal(1, "ops", "\ud800")):
        rejected(eng, cmd, R.INVALID_REF)
    for cmd in (ApproveWithdrawal(2, "ops"), ApproveWithdrawal(-1, "ops"),
                ApproveWithdrawal("1", "ops"), ApproveWithdrawal(True, "ops")):
        rejected(eng, cmd, R.UNKNOWN_WITHDRAWAL)
    rejected(eng, RequestWithdrawal(1, "USD", 5), R.INVALID_ACCOUNT)    # system accounts use Withdraw


# ------------------------------------------------------------------ tiers: configuration
def test_tiers_are_validated_with_clear_errors(book):
    with pytest.raises(ValueError, match="rebates"):
        AccountTier("mm", maker_fee_bps=-1)
    with pytest.raises(ValueError, match="rebates"):
        AccountTier("mm", symbol_fees={SYMBOL: (-2, 5)})
    for bad in (dict(taker_fee_bps=10_001), dict(maker_fee_bps=1.5), dict(maker_fee_bps=True),
                dict(symbol_fees={SYMBOL: (1, 2, 3)}), dict(symbol_fees={SYMBOL: 5}),
                dict(withdrawal_daily_limit={"USD": -1}), dict(withdrawal_auto_approve={"USD": 1.0}),
                dict(withdrawal_daily_limit={"": 5})):
        with pytest.raises(ValueError):
            AccountTier("t", **bad)
    for name in ("", "a\x00", "\ud800", "x" * 65, None):
        with pytest.raises(ValueError):
            AccountTier(name)
    cls = engine_class(book)
    for tiers, default, error in (
            ([AccountTier("a"), AccountTier("a")], "a", "duplicate tier"),
            ([AccountTier("a")], "default", "default_tier"),
            ([AccountTier("default", symbol_fees={"NOPE-USD": (1, 1)})], "default", "unknown symbol"),
            ([AccountTier("default", withdrawal_daily_limit={"BTC": 1})], "default", "unknown asset"),
            (["default"], "default", "AccountTier")):
        with pytest.raises((ValueError, TypeError), match=error):
            cls(ASSETS, [instrument()], book=book, tiers=tiers, default_tier=default)
    for threshold in ({"BTC": 5}, {"USD": -1}, {"USD": 2**63}, [("USD", 5)]):
        with pytest.raises(ValueError):
            cls(ASSETS, [instrument()], book=book, adjustment_approval_threshold=threshold)


def test_without_tiers_there_is_one_default_tier_at_the_instruments_fees(book):
    eng = engine_class(book)(ASSETS, [instrument()], book=book)
    assert eng.account_tier(2) == "default"
    assert eng.fee_rates(2, SYMBOL) == (10, 20)
    rejected(eng, SetAccountTier(2, "vip", "ops"), R.UNKNOWN_TIER)
    ok(eng, SetAccountTier(2, "default", "ops"))


def test_the_default_tier_may_be_any_of_them(make):
    eng = make(default_tier="vip")
    assert eng.account_tier(7) == "vip"
    assert eng.fee_rates(7, SYMBOL) == (0, 5)
    ok(eng, SetAccountTier(7, "default", "ops"))
    assert eng.fee_rates(7, SYMBOL) == (10, 20)


def test_market_limits_hold_at_the_largest_tier_rate(book):
    cls = engine_class(book)
    ins = Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001", taker_fee_bps=30)
    assets = [Asset("BTC", 8), Asset("USDT", 6)]
    plain = cls(assets, [ins], book=book).market("BTC-USDT")
    tiered = cls(assets, [ins], book=book, tiers=[AccountTier("default"),
                                                  AccountTier("whale", taker_fee_bps=10_000)])
    m = tiered.market("BTC-USDT")
    assert m.fees == [(0, 30, 30), (0, 10_000, 10_000)]
    assert m.max_qty < plain.max_qty
    notional = m.max_price * m.max_qty * m.notional_unit
    assert notional * 2 <= 2**63 - 1       # a buy's reservation at 10,000 bps fits int64


# ------------------------------------------------------------------ tiers: fees
def test_orders_pay_and_reserve_at_their_tier_rates(make):
    eng = make()
    ok(eng, SetAccountTier(2, "vip", "ops"))
    ev = place(eng, 2, "buy", 100, qty=100)               # notional 10,000
    assert [t.amount for t in of(ev, Transfer)] == [10_000 + 5]   # vip reserve: max(0, 5) bps
    ev = place(eng, 3, "sell", 100, qty=100)              # default taker against a vip maker
    [t] = of(ev, Trade)
    assert (t.maker_fee, t.taker_fee) == (0, 20)
    ev = place(eng, 3, "buy", 100, qty=100)               # default maker
    ev = place(eng, 2, "sell", 100, qty=100)              # vip taker
    [t] = of(ev, Trade)
    assert (t.maker_fee, t.taker_fee) == (10, 5)
    assert eng.balance(1, "USD") == (0 + 20 + 10 + 5, 0)
    assert eng.balance(2, "USD") == (USD0 - 10_000 + 10_000 - 5, 0)


def test_symbol_fees_override_the_tier_rate_on_one_market(make):
    tiers = [AccountTier("default"),
             AccountTier("mm", maker_fee_bps=1, taker_fee_bps=2, symbol_fees={SYMBOL: (0, 3)})]
    eng = make(tiers=tiers)
    ok(eng, SetAccountTier(2, "mm", "ops"))
    assert eng.fee_rates(2, SYMBOL) == (0, 3)
    place(eng, 3, "sell", 100, qty=100)
    [t] = of(place(eng, 2, "buy", 100, qty=100), Trade)
    assert t.taker_fee == 3


def test_a_tier_change_does_not_reprice_resting_orders(make):
    eng = make()
    ok(eng, SetAccountTier(2, "vip", "ops"))
    resting = order_id(place(eng, 2, "buy", 100, qty=100))       # reserved at vip: 10,005
    ok(eng, SetAccountTier(2, "pro", "ops"))                     # pro: maker 10, taker 50
    assert eng.order(resting)["tier"] == "vip"
    assert eng.order(resting)["reserved"] == 10_005
    ev = place(eng, 3, "sell", 100, qty=40)
    assert of(ev, Trade)[0].maker_fee == 0                       # still vip's maker rate
    ev = ok(eng, ReplaceOrder(2, resting, price=101))            # a move keeps its rates too
    assert eng.order(resting)["reserved"] == 60 * 101 + 4        # ceil(6060 * 5 / 10000)
    ok(eng, CancelOrder(2, order_id=resting))
    assert eng.balance(2, "USD")[1] == 0
    # a new order is priced at the account's tier now
    ev = place(eng, 2, "buy", 100, qty=100)
    assert of(ev, Transfer)[0].amount == 10_000 + 50


def test_a_stop_keeps_the_rates_of_its_acceptance(make):
    eng = make()
    ok(eng, SetAccountTier(2, "vip", "ops"))
    ev = ok(eng, PlaceOrder(2, "", SYMBOL, "buy", type="stop_market", quote_qty=10_005,
                            stop_price=100))
    ok(eng, SetAccountTier(2, "default", "ops"))
    place(eng, 3, "sell", 100, qty=200)
    place(eng, 4, "sell", 100, qty=1)
    ev = place(eng, 5, "buy", 100, qty=1)                    # prints 100: the stop triggers
    assert of(ev, Triggered)
    [t] = [t for t in of(ev, Trade) if t.taker_account == 2]
    # the budget at vip's taker rate buys 100 lots: 10,000 + ceil(10,000 * 5 bps) = 10,005
    assert (t.qty, t.taker_fee) == (100, 5)
    assert eng.balance(2, "USD") == (USD0 - 10_005, 0)


def test_set_account_tier_is_audited(make):
    eng = make()
    ev = eng.submit(SetAccountTier(2, "vip", "ops-ann"))
    assert ev == [AdminAction(eng.seq, "ops-ann", R.ACTION_SET_TIER, 2, "", "", "default", "vip")]
    assert eng.account_tier(2) == "vip"
    rejected(eng, SetAccountTier(2, "gold", "ops"), R.UNKNOWN_TIER)
    rejected(eng, SetAccountTier(2, 5, "ops"), R.UNKNOWN_TIER)
    for account in (0, 1, -2, 2**63, "2"):
        rejected(eng, SetAccountTier(account, "vip", "ops"), R.INVALID_ACCOUNT)
    rejected(eng, SetAccountTier(2, "vip", ""), R.INVALID_REF)


# ------------------------------------------------------------------ withdrawal limits and the clock
def test_the_daily_limit_counts_requests_per_utc_day(make):
    eng = make()
    day = 20_000 * DAY_NS                                  # some day in 2024
    ok(eng, Clock(day + 10))
    ok(eng, RequestWithdrawal(2, "USD", 60_000))
    ok(eng, RequestWithdrawal(2, "USD", 40_000))           # 100,000: the limit exactly
    rejected(eng, RequestWithdrawal(2, "USD", 1), R.WITHDRAWAL_LIMIT_EXCEEDED)
    assert eng.withdrawn_today(2, "USD") == 100_000
    ok(eng, RequestWithdrawal(3, "USD", 100_000))          # per account
    ok(eng, RequestWithdrawal(2, "ABC", 50_000))           # no limit for ABC in this tier
    ok(eng, Withdraw(2, "USD", 1))                         # the system Withdraw is not limited
    ok(eng, Clock(day + DAY_NS - 1))
    rejected(eng, RequestWithdrawal(2, "USD", 1), R.WITHDRAWAL_LIMIT_EXCEEDED)
    ok(eng, Clock(day + DAY_NS))                           # midnight UTC: a new allowance
    assert eng.withdrawn_today(2, "USD") == 0
    ok(eng, RequestWithdrawal(2, "USD", 100_000))
    # rejecting yesterday's request gives nothing back to today
    ok(eng, RejectWithdrawal(1, "ops", "no"))
    rejected(eng, RequestWithdrawal(2, "USD", 1), R.WITHDRAWAL_LIMIT_EXCEEDED)
    # rejecting today's gives its amount back
    today = eng.pending_withdrawals(2)[-1].withdrawal_id
    ok(eng, RejectWithdrawal(today, "ops", "no"))
    assert eng.withdrawn_today(2, "USD") == 0
    ok(eng, RequestWithdrawal(2, "USD", 100_000))


def test_auto_approved_withdrawals_count_too_and_tiers_differ(make):
    eng = make(tiers=[AccountTier("default", withdrawal_daily_limit={"USD": 1_000},
                                  withdrawal_auto_approve={"USD": 100}), TIERS[1]])
    for _ in range(10):
        assert of(ok(eng, RequestWithdrawal(2, "USD", 100)), WithdrawalCompleted)   # 1,000 in all
    rejected(eng, RequestWithdrawal(2, "USD", 1), R.WITHDRAWAL_LIMIT_EXCEEDED)
    ok(eng, SetAccountTier(2, "vip", "ops"))                # the tier's limit applies from now on
    ev = ok(eng, RequestWithdrawal(2, "USD", 5_000))
    assert of(ev, WithdrawalCompleted)
    assert eng.withdrawn_today(2, "USD") == 6_000


def test_the_clock_only_moves_forward(make):
    eng = make(funded=False)
    assert eng.now == 0
    assert eng.submit(Clock(5)) == [Clocked(eng.seq, 5)]
    ok(eng, Clock(5))                                      # the same time again is fine
    rejected(eng, Clock(4), R.CLOCK_BACKWARDS)
    for bad in (-1, 2**63, 1.5, True, None, "7"):
        rejected(eng, Clock(bad), R.INVALID_TIME)
    ok(eng, Clock(2**63 - 1))
    assert eng.now == 2**63 - 1
    assert restored(eng).now == 2**63 - 1


def test_a_pending_withdrawal_remembers_when_it_was_requested(make):
    eng = make()
    ok(eng, Clock(123))
    ok(eng, RequestWithdrawal(2, "USD", 1000, ref="r"))
    [w] = eng.pending_withdrawals()
    assert (w.requested_seq, w.requested_ts_ns) == (eng.seq, 123)


# ------------------------------------------------------------------ freeze
def test_freeze_cancels_every_open_order_in_id_order(make):
    eng = make()
    a = order_id(place(eng, 2, "buy", 90))
    b = order_id(ok(eng, PlaceOrder(2, "", SYMBOL, "sell", type="stop_limit", price=80, qty=5,
                                    stop_price=85)))
    c = order_id(place(eng, 2, "sell", 120, qty=7))
    other = order_id(place(eng, 3, "buy", 91))
    ok(eng, RequestWithdrawal(2, "USD", 1000))               # a hold stays held
    ev = eng.submit(FreezeAccount(2, "ops-ann", "court order"))
    seq = eng.seq
    assert [(e.order_id, e.remaining_qty, e.reason) for e in of(ev, Cancelled)] == [
        (a, 10, R.CANCEL_ADMIN), (b, 5, R.CANCEL_ADMIN), (c, 7, R.CANCEL_ADMIN)]
    assert [(t.kind, t.order_id) for t in of(ev, Transfer)] == [("unlock", a), ("unlock", b),
                                                                ("unlock", c)]
    assert ev[-1] == AdminAction(seq, "ops-ann", R.ACTION_FREEZE, 2, "", "court order",
                                 "active", "frozen")
    assert eng.open_order_count(2) == 0 and eng.order(other) is not None
    assert eng.balance(2, "USD") == (USD0 - 1000, 1000)
    assert eng.balance(2, "ABC") == (ABC0, 0)
    assert eng.is_frozen(2)


def test_a_frozen_account_may_not_trade_or_withdraw_but_may_deposit_and_cancel(make):
    eng = make()
    kept = order_id(place(eng, 2, "buy", 90))
    ok(eng, RequestWithdrawal(2, "USD", 1000))
    ev = ok(eng, FreezeAccount(2, "ops", "kyc", cancel_orders=False))
    assert [type(e) for e in ev] == [AdminAction]
    assert eng.order(kept) is not None
    for cmd in (PlaceOrder(2, "", SYMBOL, "buy", price=90, qty=1),
                PlaceOrder(2, "", SYMBOL, "sell", type="market", qty=1),
                ReplaceOrder(2, kept, price=91), ReplaceOrder(2, kept, qty=5),
                RequestWithdrawal(2, "USD", 5), Withdraw(2, "USD", 5)):
        rejected(eng, cmd, R.ACCOUNT_FROZEN)
    rejected(eng, ApproveWithdrawal(1, "ops"), R.ACCOUNT_FROZEN)     # nothing leaves it
    ok(eng, Deposit(2, "USD", 5, ref="in"))
    ok(eng, Adjust(2, "USD", 5, "ops", "correction"))
    ok(eng, RejectWithdrawal(1, "ops", "frozen"))                    # released back to it
    assert of(place(eng, 3, "sell", 90, qty=4), Trade)               # its resting order still fills
    ok(eng, CancelOrder(2, order_id=kept))
    rejected(eng, FreezeAccount(2, "ops", "again"), R.ALREADY_FROZEN)
    ev = eng.submit(UnfreezeAccount(2, "ops-bo", "cleared"))
    assert ev == [AdminAction(eng.seq, "ops-bo", R.ACTION_UNFREEZE, 2, "", "cleared", "frozen",
                              "active")]
    rejected(eng, UnfreezeAccount(2, "ops", "again"), R.NOT_FROZEN)
    ok(eng, PlaceOrder(2, "", SYMBOL, "buy", price=90, qty=1))


def test_freeze_checks_its_fields(make):
    eng = make()
    for account in (0, 1, -5, 2**63, None):
        rejected(eng, FreezeAccount(account, "ops", "x"), R.INVALID_ACCOUNT)
        rejected(eng, UnfreezeAccount(account, "ops", "x"), R.INVALID_ACCOUNT)
    rejected(eng, FreezeAccount(2, "ops", ""), R.INVALID_REF)
    rejected(eng, FreezeAccount(2, "", "x"), R.INVALID_REF)
    rejected(eng, FreezeAccount(2, "ops", "x", cancel_orders=1), R.INVALID_COMBINATION)
    rejected(eng, UnfreezeAccount(7, "ops", "x"), R.NOT_FROZEN)      # an account never seen
    ok(eng, FreezeAccount(7, "ops", "before it opens"))               # may be frozen already
    rejected(eng, RequestWithdrawal(7, "USD", 1), R.ACCOUNT_FROZEN)


# ------------------------------------------------------------------ admin cancels
def test_an_admin_cancel_is_audited(make):
    eng = make()
    oid = order_id(place(eng, 2, "buy", 90))
    rejected(eng, CancelOrder(3, order_id=oid, admin="ops"), R.UNKNOWN_ORDER)   # owner must match
    ev = eng.submit(CancelOrder(2, order_id=oid, admin="ops-ann"))
    seq = eng.seq
    assert ev[0] == Cancelled(seq, oid, 2, 10, R.CANCEL_ADMIN)
    assert [t.kind for t in of(ev, Transfer)] == ["unlock"]
    assert ev[-1] == AdminAction(seq, "ops-ann", R.ACTION_CANCEL_ORDER, 2, str(oid))
    assert eng.balance(2, "USD") == (USD0, 0)
    # by client order id too
    place(eng, 2, "buy", 90, cid="x")
    ev = ok(eng, CancelOrder(2, client_order_id="x", admin="ops"))
    assert of(ev, Cancelled)[0].reason == R.CANCEL_ADMIN


TWO_MARKETS = dict(assets=[Asset("ABC", 0), Asset("USD", 0), Asset("XYZ", 0)],
                   instruments=[instrument(), Instrument("XYZ-USD", "XYZ", "USD", "1", "1")])


def test_cancel_all_of_an_account_or_one_of_its_markets(make):
    eng = make(**TWO_MARKETS)
    ok(eng, Deposit(2, "XYZ", 100))
    mine = [order_id(place(eng, 2, "buy", 90)), order_id(place(eng, 2, "sell", 200, qty=3))]
    x = order_id(ok(eng, PlaceOrder(2, "", "XYZ-USD", "sell", price=50, qty=4)))
    stop = order_id(ok(eng, PlaceOrder(2, "", SYMBOL, "buy", type="stop_market", quote_qty=500,
                                       stop_price=150)))
    other = order_id(place(eng, 3, "buy", 91))
    ev = ok(eng, CancelAll(2, symbol=SYMBOL))
    assert [(c.order_id, c.reason) for c in of(ev, Cancelled)] == [
        (mine[0], R.CANCEL_USER), (mine[1], R.CANCEL_USER), (stop, R.CANCEL_USER)]
    assert not of(ev, AdminAction)
    assert eng.order(x) is not None and eng.order(other) is not None
    ev = eng.submit(CancelAll(2, admin="ops-ann"))
    seq = eng.seq
    assert [(c.order_id, c.reason) for c in of(ev, Cancelled)] == [(x, R.CANCEL_ADMIN)]
    assert ev[-1] == AdminAction(seq, "ops-ann", R.ACTION_CANCEL_ALL, 2, "")
    assert eng.open_order_count(2) == 0
    assert eng.balance(2, "USD") == (USD0, 0) and eng.balance(2, "XYZ") == (100, 0)
    # nothing open: accepted, no events; an admin's is still audited
    assert eng.submit(CancelAll(2)) == []
    assert eng.submit(CancelAll(9, symbol="XYZ-USD", admin="ops")) == [
        AdminAction(eng.seq, "ops", R.ACTION_CANCEL_ALL, 9, "XYZ-USD")]
    rejected(eng, CancelAll(2, symbol="NOPE-USD"), R.UNKNOWN_SYMBOL)
    rejected(eng, CancelAll(2, admin="a\x00"), R.INVALID_REF)
    rejected(eng, CancelAll(-1), R.INVALID_ACCOUNT)


@pytest.mark.parametrize("cids", ["all", "some"])
def test_cancel_all_finds_orders_by_client_id_or_by_walking_the_books(make, cids):
    """All open orders with a client order id: found through the account's own
    map; some without: by a walk.  The same cancels either way."""
    eng = make(**TWO_MARKETS)
    ok(eng, Deposit(2, "XYZ", 100))
    ids = [order_id(place(eng, 2, "buy", 90, cid="a")),
           order_id(ok(eng, PlaceOrder(2, "b", "XYZ-USD", "sell", price=50, qty=4))),
           order_id(place(eng, 2, "sell", 200, qty=3, cid="" if cids == "some" else "c")),
           order_id(ok(eng, PlaceOrder(2, "d", SYMBOL, "sell", type="stop_limit", price=80,
                                       qty=5, stop_price=85)))]
    place(eng, 3, "buy", 91, cid="a")
    ev = ok(eng, CancelAll(2, symbol=SYMBOL))
    assert [c.order_id for c in of(ev, Cancelled)] == [ids[0], ids[2], ids[3]]
    ev = ok(eng, CancelAll(2))
    assert [c.order_id for c in of(ev, Cancelled)] == [ids[1]]
    assert eng.open_order_count(2) == 0 and eng.open_order_count(3) == 1


def test_cancel_all_works_on_a_halted_market(make):
    eng = make()
    oid = order_id(place(eng, 2, "buy", 90))
    ok(eng, Halt(SYMBOL))
    ev = ok(eng, CancelAll(2))
    assert [c.order_id for c in of(ev, Cancelled)] == [oid]


# ------------------------------------------------------------------ audit of the other admin commands
def test_halt_and_resume_are_audited(make):
    eng = make()
    ev = eng.submit(Halt(SYMBOL, admin="ops-ann"))
    assert ev == [Halted(eng.seq, SYMBOL), AdminAction(eng.seq, "ops-ann", R.ACTION_HALT, 0, SYMBOL)]
    ev = eng.submit(Resume(SYMBOL))                     # an old caller names no admin
    assert ev == [Resumed(eng.seq, SYMBOL), AdminAction(eng.seq, "", R.ACTION_RESUME, 0, SYMBOL)]
    rejected(eng, Halt(SYMBOL, admin="x" * 257), R.INVALID_REF)


def test_an_adjustment_is_audited_with_its_balances_as_decimals(book):
    assets = [Asset("ABC", 0), Asset("USD", 2)]
    eng = engine_class(book)(assets, [instrument()], book=book)
    ok(eng, Deposit(2, "USD", 12_345))
    ev = eng.submit(Adjust(2, "USD", -345, "ops-ann", "chargeback"))
    seq = eng.seq
    assert [type(e) for e in ev] == [Adjusted, Transfer, AdminAction]
    assert ev[0] == Adjusted(seq, 2, "USD", -345, "ops-ann", "chargeback", 12_345, 12_000, 0, "")
    assert ev[-1] == AdminAction(seq, "ops-ann", R.ACTION_ADJUST, 2, "USD", "chargeback",
                                 "123.45", "120.00")


# ------------------------------------------------------------------ large adjustments
def test_a_large_adjustment_waits_for_a_second_admin(make):
    eng = make()
    ok(eng, Adjust(2, "USD", 50_000, "ann", "at the threshold"))       # not over it: at once
    ev = eng.submit(Adjust(2, "USD", -50_001, "ann", "reversal"))
    seq = eng.seq
    assert ev == [AdjustmentPending(seq, 1, 2, "USD", -50_001, "ann", "reversal"),
                  AdminAction(seq, "ann", R.ACTION_ADJUST_REQUEST, 2, "1", "reversal")]
    assert eng.balance(2, "USD") == (USD0 + 50_000, 0)                 # nothing moved
    assert eng.pending_adjustments() == [PendingAdjustment(1, 2, "USD", -50_001, "ann",
                                                           "reversal", seq)]
    rejected(eng, ApproveAdjustment(1, "ann"), R.SAME_ADMIN)
    rejected(eng, ApproveAdjustment(2, "bo"), R.UNKNOWN_ADJUSTMENT)
    ev = eng.submit(ApproveAdjustment(1, "bo"))
    seq = eng.seq
    assert [type(e) for e in ev] == [Adjusted, Transfer, AdminAction]
    assert ev[0] == Adjusted(seq, 2, "USD", -50_001, "ann", "reversal", USD0 + 50_000,
                             USD0 - 1, 1, "bo")
    assert (ev[1].kind, ev[1].amount, ev[1].source_account, ev[1].target_account) == (
        "adjust", 50_001, 2, 0)
    assert ev[2] == AdminAction(seq, "bo", R.ACTION_ADJUST_APPROVE, 2, "1", "reversal",
                                str(USD0 + 50_000), str(USD0 - 1))
    assert eng.pending_adjustments() == []
    rejected(eng, ApproveAdjustment(1, "carol"), R.UNKNOWN_ADJUSTMENT)
    ok(eng, Adjust(2, "ABC", 10**6, "ann", "no threshold for ABC"))     # applied at once


def test_an_approval_the_balance_cannot_take_leaves_it_pending(make):
    eng = make()
    ok(eng, Adjust(2, "USD", -60_000, "ann", "fee reversal"))
    ok(eng, Withdraw(2, "USD", USD0 - 100))
    rejected(eng, ApproveAdjustment(1, "bo"), R.INSUFFICIENT_FUNDS)
    assert len(eng.pending_adjustments()) == 1
    ok(eng, Deposit(2, "USD", 60_000))
    ok(eng, ApproveAdjustment(1, "bo"))
    assert eng.balance(2, "USD") == (100, 0)
    rejected(eng, Adjust(2, "USD", -10**6, "ann", "too much"), R.INSUFFICIENT_FUNDS)
    rejected(eng, ApproveAdjustment(1, ""), R.INVALID_REF)


# ------------------------------------------------------------------ state
def _busy(eng):
    """One of everything the money controls keep, left in the engine."""
    ok(eng, Clock(20_000 * DAY_NS + 5))
    ok(eng, Deposit(2, "USD", 5, ref="dep"))
    ok(eng, Withdraw(3, "USD", 5, ref="wd"))
    ok(eng, RequestWithdrawal(2, "USD", 3_000, ref="req"))       # pending, counted today
    ok(eng, RequestWithdrawal(4, "USD", 50))                     # auto-approved
    ok(eng, SetAccountTier(3, "vip", "ops"))
    place(eng, 3, "buy", 95, qty=100)                            # a vip order resting
    ok(eng, PlaceOrder(3, "s", SYMBOL, "sell", type="stop_market", qty=5, stop_price=80))
    ok(eng, FreezeAccount(5, "ops", "kyc", cancel_orders=False))
    ok(eng, Adjust(4, "USD", 70_000, "ann", "big"))              # pending adjustment


def test_snapshot_restore_keeps_every_money_control(make):
    eng = make()
    _busy(eng)
    again = restored(eng)
    assert again.snapshot() == eng.snapshot()
    again.validate()
    assert again.now == eng.now
    assert again.pending_withdrawals() == eng.pending_withdrawals()
    assert again.pending_adjustments() == eng.pending_adjustments()
    assert again.account_tier(3) == "vip" and again.is_frozen(5)
    assert again.withdrawn_today(2, "USD") == 3_000
    assert again.tiers == eng.tiers and again.adjustment_approval_threshold == THRESHOLD
    # both carry on identically
    tail = [Deposit(2, "USD", 5, ref="dep"), Withdraw(3, "USD", 5, ref="wd"),
            RequestWithdrawal(2, "USD", 7_001), RequestWithdrawal(2, "USD", 7_000),
            ApproveWithdrawal(1, "bo"), ApproveAdjustment(1, "bo"), place_cmd(4, "sell", 95, 50),
            PlaceOrder(5, "", SYMBOL, "buy", price=90, qty=1), UnfreezeAccount(5, "ops", "ok"),
            Clock(20_001 * DAY_NS), RequestWithdrawal(2, "USD", 10_000), CancelAll(3, admin="ops")]
    for c in tail:
        assert encode(again.submit(c)) == encode(eng.submit(c)), c
    assert again.state_hash() == eng.state_hash()


def place_cmd(account, side, price, qty):
    return PlaceOrder(account, "", SYMBOL, side, price=price, qty=qty)


def test_the_snapshot_carries_the_configuration(make, book):
    eng = make(default_tier="pro")
    again = engine_class(book).restore(eng.snapshot(), book=book)
    assert again.default_tier == "pro" and again.account_tier(99) == "pro"
    assert again.fee_rates(99, SYMBOL) == eng.fee_rates(99, SYMBOL) == (10, 50)


@pytest.mark.skipif(len(BOOKS) < 2, reason="needs both engine variants")
def test_pure_and_accelerated_give_identical_events_on_money_streams():
    import engine
    for seed in range(3):
        engines = [PureEngine(ASSETS, [instrument()], book="python", tiers=TIERS,
                              adjustment_approval_threshold=THRESHOLD),
                   engine.Engine(ASSETS, [instrument()], book="cython", tiers=TIERS,
                                 adjustment_approval_threshold=THRESHOLD)]
        for cmd in money_stream(seed, 3_000):
            a, b = (encode(e.submit(cmd)) for e in engines)
            assert a == b, cmd
        engines[1].validate()
        assert engines[0].snapshot() == engines[1].snapshot()
        # and a snapshot of one restores on the other
        assert (PureEngine.restore(engines[1].snapshot(), book="python").state_hash()
                == engines[0].state_hash())


def money_stream(seed, n):
    """Random commands of every kind, money controls weighted up, some invalid."""
    rnd = random.Random(seed)
    accounts = (2, 3, 4, 5)
    out = [Deposit(a, asset, amount) for a in accounts for asset, amount in (("USD", 10**6),
                                                                             ("ABC", 10**5))]
    now = 0
    for i in range(n):
        a = rnd.choice(accounts)
        r = rnd.random()
        if r < 0.35:
            side = rnd.choice(("buy", "sell"))
            out.append(PlaceOrder(a, "", SYMBOL, side, price=rnd.randint(90, 110),
                                  qty=rnd.randint(1, 50), tif=rnd.choice(("gtc", "gtc", "ioc"))))
        elif r < 0.40:
            out.append(PlaceOrder(a, "", SYMBOL, "buy", type="stop_market",
                                  quote_qty=rnd.randint(100, 5000), stop_price=rnd.randint(95, 110)))
        elif r < 0.47:
            out.append(CancelOrder(a, order_id=rnd.randint(1, i + 1),
                                   admin=rnd.choice(("", "", "ops"))))
        elif r < 0.52:
            out.append(ReplaceOrder(a, rnd.randint(1, i + 1), price=rnd.randint(90, 110)))
        elif r < 0.60:
            out.append(RequestWithdrawal(a, rnd.choice(("USD", "ABC")), rnd.randint(1, 8_000),
                                         ref=rnd.choice(("", f"w{rnd.randint(0, 50)}"))))
        elif r < 0.65:
            out.append(ApproveWithdrawal(rnd.randint(1, 40), rnd.choice(("ann", "bo"))))
        elif r < 0.69:
            out.append(RejectWithdrawal(rnd.randint(1, 40), "bo", "no"))
        elif r < 0.73:
            out.append(Deposit(a, rnd.choice(("USD", "ABC")), rnd.randint(1, 9_000),
                               ref=rnd.choice(("", f"d{rnd.randint(0, 50)}"))))
        elif r < 0.76:
            out.append(Withdraw(a, "USD", rnd.randint(1, 9_000), ref=f"x{rnd.randint(0, 50)}"))
        elif r < 0.80:
            now += rnd.choice((0, 10**9, DAY_NS // 3, DAY_NS))
            out.append(Clock(now if rnd.random() < 0.95 else now - 1))
        elif r < 0.84:
            out.append(SetAccountTier(a, rnd.choice(("default", "vip", "pro", "gold")), "ops"))
        elif r < 0.88:
            out.append(FreezeAccount(a, "ops", "x", cancel_orders=rnd.random() < 0.5))
        elif r < 0.92:
            out.append(UnfreezeAccount(a, "ops", "y"))
        elif r < 0.95:
            out.append(CancelAll(a, symbol=rnd.choice((None, SYMBOL)),
                                 admin=rnd.choice(("", "ops"))))
        elif r < 0.98:
            out.append(Adjust(a, "USD", rnd.choice((-1, 1)) * rnd.randint(1, 90_000),
                              rnd.choice(("ann", "bo")), "fix"))
        else:
            out.append(ApproveAdjustment(rnd.randint(1, 10), rnd.choice(("ann", "bo"))))
    return out


def test_validate_counts_withdrawal_holds_in_locked(make):
    eng = make()
    ok(eng, RequestWithdrawal(2, "USD", 1000))
    eng.validate()
    eng._withdrawals.clear()              # a hold nothing accounts for any more
    with pytest.raises(AssertionError, match="locked"):
        eng.validate()


def test_new_events_fit_the_wire(make):
    eng = make()
    _busy(eng)
    for cmd in (ApproveWithdrawal(1, "bo"), ApproveAdjustment(1, "bo"), Halt(SYMBOL, admin="x"),
                FreezeAccount(2, "ops", "x")):
        ev = ok(eng, cmd)
        assert decode_events(encode(ev)) == ev


def test_the_money_mix_replays_and_restores_identically(book):
    """The seeded ``money`` flow (engine/flow.py): the same stream twice gives the same
    bytes, and a snapshot/restore in the middle changes nothing."""
    from engine.flow import engine_options, generate, market_config
    cmds = generate("money", 8_000, seed=9, oracle_book=book)
    assets, instruments = market_config(markets="cross")

    def fresh():
        return engine_class(book)(assets, instruments, book=book, **engine_options("money"))

    whole = fresh()
    expected = [encode(whole.submit(c)) for c in cmds]
    kinds = {type(e).__name__ for blob in expected for e in decode_events(blob)}
    assert {"WithdrawalRequested", "WithdrawalCompleted", "WithdrawalRejected", "AdminAction",
            "AdjustmentPending", "Clocked"} <= kinds
    half = len(cmds) // 2
    first = fresh()
    head = [encode(first.submit(c)) for c in cmds[:half]]
    again = restored(first)
    again.validate()
    tail = [encode(again.submit(c)) for c in cmds[half:]]
    assert head + tail == expected
    assert again.state_hash() == whole.state_hash()
    whole.validate()
