"""One test per matching and balance rule (ARCHITECTURE.md "Matching rules",
"Balances and transfers"), on every book implementation.

Market ABC-USD in whole units: notional = price * qty; maker 10 bps, taker
20 bps, so a buy reserves notional + ceil(notional * 20 / 10000).
Accounts 2..5 start with 10,000,000 USD and 100,000 ABC.
"""
from __future__ import annotations

import pytest

from support import SYMBOL, of
from engine import reasons as R
from engine.messages import (Accepted, Adjust, Adjusted, CancelOrder, Cancelled, Deposit, Halt,
                             Halted, PlaceOrder, Rejected, Replaced, ReplaceOrder, Resume, Resumed,
                             Trade, Transfer, Triggered, Withdraw)

USD0, ABC0 = 10_000_000, 100_000


def place(eng, account, side, price=None, qty=10, cid="", **kw):
    return eng.submit(PlaceOrder(account, cid, SYMBOL, side, price=price, qty=qty, **kw))


def order_id(events):
    return of(events, Accepted)[0].order_id


def trades(events):
    return [(t.price, t.qty, t.maker_order_id, t.taker_order_id) for t in of(events, Trade)]


# ------------------------------------------------------------------ matching
def test_price_then_time_priority(make_engine):
    eng = make_engine()
    a = order_id(place(eng, 3, "sell", 101))
    b = order_id(place(eng, 4, "sell", 100))
    c = order_id(place(eng, 5, "sell", 100))
    ev = place(eng, 2, "buy", 101, qty=25)
    t = order_id(ev)
    assert trades(ev) == [(100, 10, b, t), (100, 10, c, t), (101, 5, a, t)]
    assert eng.depth(SYMBOL, 5) == ([], [(101, 5)])
    eng.validate()


def test_trade_prints_at_the_maker_price(make_engine):
    eng = make_engine()
    place(eng, 3, "buy", 100)
    ev = place(eng, 2, "sell", 90)
    assert [t.price for t in of(ev, Trade)] == [100]


def test_gtc_rests_its_remainder(make_engine):
    eng = make_engine()
    place(eng, 3, "sell", 100, qty=4)
    ev = place(eng, 2, "buy", 100, qty=10)
    assert trades(ev)[0][:2] == (100, 4)
    assert not of(ev, Cancelled)
    assert eng.depth(SYMBOL, 5) == ([(100, 6)], [])
    # what is left stays reserved: 6 lots at 100 plus the worst-case rise of the
    # cumulative fee: ceil(1000 * 20 bps) = 2 in all, 1 already charged
    assert eng.balance(2, "USD")[1] == 600 + 1


def test_ioc_cancels_its_remainder_and_releases_everything(make_engine):
    eng = make_engine()
    place(eng, 3, "sell", 100, qty=5)
    ev = place(eng, 2, "buy", 100, qty=10, tif="ioc")
    assert trades(ev)[0][:2] == (100, 5)
    [c] = of(ev, Cancelled)
    assert (c.remaining_qty, c.reason) == (5, R.CANCEL_IOC)
    assert eng.balance(2, "USD") == (USD0 - 500 - 1, 0)
    assert eng.depth(SYMBOL, 5) == ([], [])


def test_fok_fills_entirely_or_is_rejected(make_engine):
    eng = make_engine()
    place(eng, 3, "sell", 100, qty=5)
    place(eng, 4, "sell", 101, qty=5)
    ev = place(eng, 2, "buy", 100, qty=10, tif="fok")
    assert [type(e) for e in ev] == [Rejected] and ev[0].reason == R.FOK_UNFILLABLE
    assert eng.balance(2, "USD") == (USD0, 0)
    ev = place(eng, 2, "buy", 101, qty=10, tif="fok")
    assert [t[:2] for t in trades(ev)] == [(100, 5), (101, 5)]
    assert eng.balance(2, "USD")[1] == 0


def test_market_buy_spends_at_most_its_quote_budget_fees_included(make_engine):
    eng = make_engine()
    place(eng, 3, "sell", 100, qty=10)
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "buy", type="market", quote_qty=500))
    # largest notional N with N + ceil(N * 20 / 10000) <= 500 is 499: 4 lots (400) + fee 1
    assert trades(ev)[0][:2] == (100, 4)
    assert of(ev, Trade)[0].taker_fee == 1
    assert eng.balance(2, "USD") == (USD0 - 401, 0)
    assert of(ev, Cancelled)[0].reason == R.CANCEL_IOC


def test_market_buy_with_price_cap_stops_at_the_cap(make_engine):
    eng = make_engine()
    place(eng, 3, "sell", 100, qty=5)
    place(eng, 4, "sell", 110, qty=5)
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "buy", type="market", price=105, qty=10))
    assert [t[:2] for t in trades(ev)] == [(100, 5)]
    assert of(ev, Cancelled)[0].remaining_qty == 5
    assert eng.balance(2, "USD") == (USD0 - 500 - 1, 0)
    assert eng.depth(SYMBOL, 5) == ([], [(110, 5)])


def test_market_buy_without_budget_or_cap_is_rejected(make_engine):
    eng = make_engine()
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "buy", type="market", qty=10))
    assert ev[0].reason == R.MARKET_BUY_WITHOUT_LIMIT


def test_market_sell_sweeps_down_to_its_floor(make_engine):
    eng = make_engine()
    place(eng, 3, "buy", 100, qty=5)
    place(eng, 4, "buy", 90, qty=5)
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "sell", type="market", price=95, qty=10))
    assert [t[:2] for t in trades(ev)] == [(100, 5)]
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "sell", type="market", qty=10))
    assert [t[:2] for t in trades(ev)] == [(90, 5)]
    assert of(ev, Cancelled)[0].remaining_qty == 5
    assert eng.balance(2, "ABC") == (ABC0 - 10, 0)
    eng.validate()


def test_market_orders_never_rest(make_engine):
    eng = make_engine()
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "sell", type="market", qty=10, tif="gtc"))
    assert of(ev, Cancelled)[0].reason == R.CANCEL_IOC
    assert eng.depth(SYMBOL, 5) == ([], [])


def test_post_only_rests_or_is_rejected(make_engine):
    eng = make_engine()
    place(eng, 3, "buy", 100)
    ev = place(eng, 2, "sell", 100, post_only=True)
    assert ev[0].reason == R.POST_ONLY_WOULD_TRADE
    ev = place(eng, 2, "sell", 101, post_only=True)
    assert of(ev, Accepted) and not of(ev, Trade)
    assert eng.depth(SYMBOL, 5) == ([(100, 10)], [(101, 10)])
    # a replace into the spread that would cross is refused too, the order stays
    ev = eng.submit(ReplaceOrder(2, order_id(ev), price=100))
    assert ev[0].reason == R.POST_ONLY_WOULD_TRADE
    assert eng.depth(SYMBOL, 5) == ([(100, 10)], [(101, 10)])


# ------------------------------------------------------------------ stops
def _print_trade(eng, price, qty=1):
    """Make the last trade price ``price`` with two fresh orders."""
    place(eng, 4, "sell", price, qty=qty)
    return place(eng, 5, "buy", price, qty=qty)


def test_buy_stop_triggers_when_last_reaches_it(make_engine):
    eng = make_engine()
    ev = eng.submit(PlaceOrder(2, "s", SYMBOL, "buy", type="stop_limit", price=106, qty=5,
                               stop_price=105))
    stop = order_id(ev)
    assert eng.depth(SYMBOL, 5) == ([], [])            # waiting, not on the book
    place(eng, 3, "sell", 106, qty=5)
    ev = _print_trade(eng, 104)
    assert not of(ev, Triggered)
    ev = _print_trade(eng, 105)
    assert [t.order_id for t in of(ev, Triggered)] == [stop]
    assert (stop, 106, 5) in [(t.taker_order_id, t.price, t.qty) for t in of(ev, Trade)]
    eng.validate()


def test_sell_stop_triggers_when_last_falls_to_it(make_engine):
    eng = make_engine()
    place(eng, 3, "buy", 90, qty=5)
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "sell", type="stop_market", qty=5, stop_price=95))
    stop = order_id(ev)
    assert not of(_print_trade(eng, 96), Triggered)
    ev = _print_trade(eng, 95)
    assert [t.order_id for t in of(ev, Triggered)] == [stop]
    assert [(t.price, t.qty, t.taker_order_id) for t in of(ev, Trade)][-1] == (90, 5, stop)
    eng.validate()


def test_stop_cascade_runs_within_the_command_in_acceptance_order(make_engine):
    eng = make_engine()
    # two buy stops both reached by one print; the earlier accepted goes first
    a = order_id(eng.submit(PlaceOrder(2, "", SYMBOL, "buy", type="stop_market", qty=1,
                                       price=200, stop_price=103)))
    b = order_id(eng.submit(PlaceOrder(3, "", SYMBOL, "buy", type="stop_market", qty=1,
                                       price=200, stop_price=102)))
    # a third stop only reached by the price the first ones print
    c = order_id(eng.submit(PlaceOrder(2, "", SYMBOL, "buy", type="stop_market", qty=1,
                                       price=200, stop_price=110)))
    place(eng, 4, "sell", 110, qty=1)      # stop a will print 110 and trigger c
    place(eng, 4, "sell", 120, qty=5)
    ev = _print_trade(eng, 105)
    assert [t.order_id for t in of(ev, Triggered)] == [a, b, c]
    assert [(t.taker_order_id, t.price) for t in of(ev, Trade)][1:] == [(a, 110), (b, 120), (c, 120)]
    assert {e.seq for e in ev} == {eng.seq}
    eng.validate()


def test_stop_already_reached_on_arrival_triggers_at_once(make_engine):
    eng = make_engine()
    _print_trade(eng, 100)
    place(eng, 3, "sell", 101, qty=2)
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "buy", type="stop_limit", price=101, qty=2,
                               stop_price=95))
    assert of(ev, Triggered) and trades(ev)[0][:2] == (101, 2)


def test_cancel_a_waiting_stop_releases_its_reserve(make_engine):
    eng = make_engine()
    ev = eng.submit(PlaceOrder(2, "", SYMBOL, "buy", type="stop_market", quote_qty=5000,
                               stop_price=150))
    assert eng.balance(2, "USD") == (USD0 - 5000, 5000)
    ev = eng.submit(CancelOrder(2, order_id=order_id(ev)))
    assert of(ev, Cancelled)[0].reason == R.CANCEL_USER
    assert eng.balance(2, "USD") == (USD0, 0)


# ------------------------------------------------------------------ replace
def test_replace_smaller_qty_same_price_keeps_priority(make_engine):
    eng = make_engine()
    a = order_id(place(eng, 3, "sell", 100))
    place(eng, 4, "sell", 100)
    ev = eng.submit(ReplaceOrder(3, a, qty=5))
    [r] = of(ev, Replaced)
    assert (r.qty, r.priority_kept) == (5, True)
    assert of(ev, Transfer)[0].amount == 5 and of(ev, Transfer)[0].kind == "unlock"
    assert trades(place(eng, 2, "buy", 100, qty=5))[0][2] == a


def test_replace_larger_qty_or_new_price_loses_priority(make_engine):
    eng = make_engine()
    a = order_id(place(eng, 3, "sell", 100))
    b = order_id(place(eng, 4, "sell", 100))
    ev = eng.submit(ReplaceOrder(3, a, qty=15))
    assert of(ev, Replaced)[0].priority_kept is False
    assert trades(place(eng, 2, "buy", 100, qty=5))[0][2] == b
    c = order_id(place(eng, 5, "sell", 101))
    eng.submit(ReplaceOrder(5, c, price=100))     # moves behind a at 100
    ev = place(eng, 2, "buy", 100, qty=30)
    assert [t[2] for t in trades(ev)] == [b, a, c]


def test_replace_to_a_crossing_price_trades_at_once(make_engine):
    eng = make_engine()
    bid = order_id(place(eng, 2, "buy", 100))
    a = order_id(place(eng, 3, "sell", 105))
    ev = eng.submit(ReplaceOrder(3, a, price=100))
    assert [type(e) for e in ev][0] is Replaced
    assert trades(ev) == [(100, 10, bid, a)]
    assert eng.depth(SYMBOL, 5) == ([], [])
    eng.validate()


def test_replace_moves_the_lock_by_the_difference(make_engine):
    eng = make_engine()
    a = order_id(place(eng, 2, "buy", 100))              # 1000 + fee 2
    assert eng.balance(2, "USD") == (USD0 - 1002, 1002)
    ev = eng.submit(ReplaceOrder(2, a, price=110))       # 1100 + fee ceil(2.2) = 1103
    [t] = of(ev, Transfer)
    assert (t.kind, t.amount) == ("lock", 101)
    assert eng.balance(2, "USD") == (USD0 - 1103, 1103)
    ev = eng.submit(ReplaceOrder(2, a, price=50, qty=4))  # 200 + 1
    assert of(ev, Transfer)[0].kind == "unlock"
    assert eng.balance(2, "USD") == (USD0 - 201, 201)
    eng.validate()


# ------------------------------------------------------------------ self-trade prevention
def test_stp_cancel_newest_cancels_the_incoming_order(make_engine):
    eng = make_engine()
    m = order_id(place(eng, 2, "sell", 100))
    ev = place(eng, 2, "buy", 100, stp="cancel_newest")
    assert not of(ev, Trade)
    [c] = of(ev, Cancelled)
    assert (c.order_id, c.remaining_qty, c.reason) == (order_id(ev), 10, R.CANCEL_STP)
    assert eng.order(m) is not None
    assert eng.balance(2, "USD") == (USD0, 0)


def test_stp_cancel_oldest_cancels_the_resting_order_and_goes_on(make_engine):
    eng = make_engine()
    mine = order_id(place(eng, 2, "sell", 100))
    other = order_id(place(eng, 3, "sell", 100))
    ev = place(eng, 2, "buy", 100, stp="cancel_oldest")
    assert [(c.order_id, c.reason) for c in of(ev, Cancelled)] == [(mine, R.CANCEL_STP)]
    assert trades(ev)[0][2] == other
    assert eng.balance(2, "ABC") == (ABC0 + 10, 0)
    eng.validate()


def test_stp_cancel_both(make_engine):
    eng = make_engine()
    mine = order_id(place(eng, 2, "sell", 100))
    ev = place(eng, 2, "buy", 100, stp="cancel_both")
    assert {c.order_id for c in of(ev, Cancelled)} == {mine, order_id(ev)}
    assert eng.depth(SYMBOL, 5) == ([], [])
    assert eng.balance(2, "USD") == (USD0, 0) and eng.balance(2, "ABC") == (ABC0, 0)


def test_stp_decrement_reduces_both_by_the_smaller(make_engine):
    eng = make_engine()
    big = order_id(place(eng, 2, "sell", 100, qty=10))
    ev = place(eng, 2, "buy", 100, qty=4, stp="decrement")
    small = order_id(ev)
    assert not of(ev, Trade)
    assert [(r.order_id, r.qty, r.priority_kept) for r in of(ev, Replaced)] == [(big, 6, True)]
    assert [(c.order_id, c.remaining_qty) for c in of(ev, Cancelled)] == [(small, 4)]
    assert eng.balance(2, "ABC") == (ABC0 - 6, 6)
    assert eng.balance(2, "USD") == (USD0, 0)
    # the other way round: the resting order is the smaller one, the taker goes on
    ev = place(eng, 2, "buy", 100, qty=8, stp="decrement")
    assert [(c.order_id, c.remaining_qty) for c in of(ev, Cancelled)] == [(big, 6)]
    assert [(r.order_id, r.qty) for r in of(ev, Replaced)] == [(order_id(ev), 2)]
    assert eng.depth(SYMBOL, 5) == ([(100, 2)], [])
    eng.validate()


# ------------------------------------------------------------------ halt
def test_halt_rejects_new_orders_and_resume_reopens(make_engine):
    eng = make_engine()
    a = order_id(place(eng, 3, "sell", 100))
    assert of(eng.submit(Halt(SYMBOL)), Halted)
    assert place(eng, 2, "buy", 100)[0].reason == R.HALTED
    assert eng.submit(ReplaceOrder(3, a, price=101))[0].reason == R.HALTED
    assert eng.submit(Halt(SYMBOL))[0].reason == R.ALREADY_HALTED
    assert of(eng.submit(CancelOrder(3, order_id=a)), Cancelled)     # cancels still work
    assert of(eng.submit(Resume(SYMBOL)), Resumed)
    assert eng.submit(Resume(SYMBOL))[0].reason == R.NOT_HALTED
    assert of(place(eng, 2, "buy", 100), Accepted)


# ------------------------------------------------------------------ fees and locks
def test_fees_round_up_on_the_cumulative_notional(make_engine):
    eng = make_engine()
    for acct in (3, 4, 5):
        place(eng, acct, "sell", 100, qty=1)
    ev = place(eng, 2, "buy", 100, qty=3)
    # per fill 100 * 20 bps = 0.2: cumulative ceil gives 1, 0, 0 (total ceil(0.6) = 1)
    assert [t.taker_fee for t in of(ev, Trade)] == [1, 0, 0]
    assert [t.maker_fee for t in of(ev, Trade)] == [1, 1, 1]   # three makers, one fill each
    assert eng.balance(1, "USD") == (4, 0)
    assert eng.balance(2, "USD") == (USD0 - 301, 0)


def test_maker_fee_accumulates_across_fills(make_engine):
    eng = make_engine()
    m = order_id(place(eng, 3, "sell", 100, qty=5))
    fees = [of(place(eng, 2, "buy", 100, qty=1), Trade)[0].maker_fee for _ in range(5)]
    # 5 fills of notional 100 at 10 bps: ceil(0.1), then nothing until ceil(0.5)
    assert fees == [1, 0, 0, 0, 0]
    assert eng.order(m) is None


def test_price_improvement_is_released(make_engine):
    eng = make_engine()
    place(eng, 3, "sell", 90)
    ev = place(eng, 2, "buy", 100)                  # reserves 1002, pays 900 + 2
    assert [(t.kind, t.amount) for t in of(ev, Transfer) if t.source_account == 2 and t.target_account == 2] \
        == [("lock", 1002), ("unlock", 100)]
    assert eng.balance(2, "USD") == (USD0 - 902, 0)


def test_maker_fee_below_reserved_taker_fee_is_released(make_engine):
    eng = make_engine(maker_fee_bps=0, taker_fee_bps=50)
    m = order_id(place(eng, 2, "buy", 100))         # 1000 + 5 reserved
    assert eng.balance(2, "USD")[1] == 1005
    ev = place(eng, 3, "sell", 100, qty=4)          # maker pays 400, fee 0
    unlock = [t for t in of(ev, Transfer) if t.kind == "unlock" and t.order_id == m]
    assert [u.amount for u in unlock] == [2]        # 1005 - 400 - (600 + 3)
    assert eng.balance(2, "USD") == (USD0 - 1005 + 2, 603)
    eng.validate()


def test_cancel_releases_exactly_what_is_left(make_engine):
    eng = make_engine()
    a = order_id(place(eng, 2, "buy", 100))
    place(eng, 3, "sell", 100, qty=3)
    ev = eng.submit(CancelOrder(2, order_id=a))
    assert of(ev, Cancelled)[0].remaining_qty == 7
    assert eng.balance(2, "USD") == (USD0 - 300 - 1, 0)
    eng.validate()


# ------------------------------------------------------------------ transfers
def test_deposit_withdraw_adjust_move_money_through_account_zero(make_engine):
    eng = make_engine(funded=False)
    ev = eng.submit(Deposit(2, "USD", 500, ref="wire-1"))
    [t] = of(ev, Transfer)
    assert (t.source_account, t.target_account, t.kind, t.ref) == (0, 2, "deposit", "wire-1")
    assert (t.source_balance, t.target_balance) == (-500, 500)
    ev = eng.submit(Withdraw(2, "USD", 200))
    assert of(ev, Transfer)[0].kind == "withdraw"
    ev = eng.submit(Adjust(2, "USD", -50, "alice", "chargeback"))
    [a] = of(ev, Adjusted)
    assert (a.admin, a.reason, a.available_before, a.available_after) == ("alice", "chargeback", 300, 250)
    assert of(ev, Transfer)[0].target_account == 0
    assert eng.balance(2, "USD") == (250, 0) and eng.balance(0, "USD") == (-250, 0)
    eng.validate()


def test_every_balance_change_is_a_transfer_with_post_balances(make_engine):
    eng = make_engine()
    seen = {}
    for cmd_events in (place(eng, 3, "sell", 100, qty=5), place(eng, 2, "buy", 101, qty=8),
                       eng.submit(Withdraw(3, "USD", 7))):
        for t in of(cmd_events, Transfer):
            assert t.amount > 0
            seen[(t.source_account, t.asset, t.source_bucket)] = t.source_balance
            seen[(t.target_account, t.asset, t.target_bucket)] = t.target_balance
    for (acct, asset, bucket), value in seen.items():
        assert eng.balance(acct, asset)[bucket == "locked"] == value


def test_every_command_takes_the_next_seq_and_ids_are_sequential(make_engine):
    eng = make_engine()
    start = eng.seq
    ev1 = place(eng, 3, "sell", 100)
    ev2 = place(eng, 2, "sell", -5)                 # rejected: still a seq
    ev3 = place(eng, 2, "buy", 100, qty=4)
    assert [{e.seq for e in ev} for ev in (ev1, ev2, ev3)] == [{start + 1}, {start + 2}, {start + 3}]
    assert order_id(ev3) == order_id(ev1) + 1
    ev4 = place(eng, 4, "buy", 100, qty=4)
    assert of(ev4, Trade)[0].trade_id == of(ev3, Trade)[0].trade_id + 1


# ------------------------------------------------------------------ limits and ids
def test_open_order_limit_per_account_is_configurable(make_engine):
    eng = make_engine(max_open_orders=2)
    place(eng, 2, "buy", 90)
    place(eng, 2, "buy", 91)
    assert place(eng, 2, "buy", 92)[0].reason == R.TOO_MANY_OPEN_ORDERS
    # orders that cannot rest are not limited
    assert of(place(eng, 2, "buy", 92, tif="ioc"), Cancelled)
    assert of(place(eng, 3, "buy", 92), Accepted)


def test_client_order_id_cancel_and_reuse(make_engine):
    eng = make_engine()
    place(eng, 2, "buy", 90, cid="x")
    assert place(eng, 2, "buy", 91, cid="x")[0].reason == R.DUPLICATE_CLIENT_ORDER_ID
    assert of(place(eng, 3, "buy", 91, cid="x"), Accepted)     # per account
    assert of(eng.submit(CancelOrder(2, client_order_id="x")), Cancelled)
    assert of(place(eng, 2, "buy", 91, cid="x"), Accepted)     # free again once closed


def test_another_accounts_order_is_unknown(make_engine):
    eng = make_engine()
    a = order_id(place(eng, 2, "buy", 90))
    for cmd in (CancelOrder(3, order_id=a), ReplaceOrder(3, a, price=91)):
        ev = eng.submit(cmd)
        assert ev[0].reason == R.UNKNOWN_ORDER
    assert eng.order(a)["qty"] == 10


@pytest.mark.parametrize("side", ["buy", "sell"])
def test_depth_is_aggregated_best_first(make_engine, side):
    eng = make_engine()
    for price, qty in ((100, 1), (102, 2), (100, 3), (101, 4)):
        place(eng, 2, side, price, qty=qty)
    bids, asks = eng.depth(SYMBOL, 2)
    levels = bids if side == "buy" else asks
    assert levels == ([(102, 2), (101, 4)] if side == "buy" else [(100, 4), (101, 4)])


def test_every_leg_names_the_order_it_belongs_to(make_engine):
    eng = make_engine()
    maker = order_id(place(eng, 3, "sell", 100))
    ev = place(eng, 2, "buy", 100, qty=4)
    taker = order_id(ev)
    legs = {(t.kind, t.asset, t.source_account): t.order_id for t in of(ev, Transfer)}
    assert legs[("trade", "ABC", 3)] == maker          # base out of the seller's lock
    assert legs[("trade", "USD", 2)] == taker          # quote out of the buyer's lock
    assert legs[("fee", "USD", 2)] == taker
    assert legs[("fee", "USD", 3)] == maker
    # so an order's transfers are its whole history: lock, trade legs, fees
    history = [t for t in of(ev, Transfer) if t.order_id == maker]
    assert {t.kind for t in history} == {"trade", "fee"}
