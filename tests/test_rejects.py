"""A test per reject reason, and garbage input that must be answered, not raised.

Each case: the commands that set the scene, then the command that must be
rejected with that reason — leaving balances and books exactly as they were.
"""
from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import ASSETS, SYMBOL, engine_class, instrument, of
from engine import AccountTier
from engine import reasons as R
from engine.core import _Snapshot
from engine.messages import (Accepted, Adjust, ApproveAdjustment, ApproveWithdrawal, CancelAll,
                             CancelOrder, Clock, Deposit, FreezeAccount, Halt, PlaceOrder,
                             Rejected, RejectWithdrawal, ReplaceOrder, RequestWithdrawal, Resume,
                             SetAccountTier, UnfreezeAccount, Withdraw, decode_events, encode)

INT64_MAX = 2**63 - 1
LONE = "\ud800"            # a lone surrogate: a str UTF-8 cannot encode
NUL = "\x00"               # UTF-8 carries it, PostgreSQL text refuses it


class _Int(int):
    """An int subclass: not an int the engine accepts."""


def po(account=2, side="buy", price=100, qty=10, cid="", symbol=SYMBOL, **kw):
    return PlaceOrder(account, cid, symbol, side, price=price, qty=qty, **kw)


CASES = {
    R.INVALID_COMMAND: ([], "not a command"),
    R.INVALID_ACCOUNT: ([], po(account=1)),
    R.INVALID_CLIENT_ORDER_ID: ([], po(cid="x" * 65)),
    R.UNKNOWN_SYMBOL: ([], po(symbol="NOPE-USD")),
    R.UNKNOWN_ASSET: ([], Deposit(2, "NOPE", 5)),
    R.INVALID_SIDE: ([], po(side="long")),
    R.INVALID_TYPE: ([], po(type="iceberg")),
    R.INVALID_TIF: ([], po(tif="day")),
    R.INVALID_STP: ([], po(stp="none")),
    R.INVALID_COMBINATION: ([], po(post_only=True, tif="ioc")),
    R.MARKET_BUY_WITHOUT_LIMIT: ([], po(type="market", price=None)),
    R.PRICE_OUT_OF_RANGE: ([], po(price=0)),
    R.STOP_PRICE_OUT_OF_RANGE: ([], po(type="stop_limit", stop_price=0)),
    R.QTY_OUT_OF_RANGE: ([], po(qty=0)),
    R.QUOTE_QTY_OUT_OF_RANGE: ([], po(type="market", price=None, quote_qty=0)),
    R.BELOW_MIN_NOTIONAL: ([], po(price=1, qty=1)),        # min_notional 50 in this engine
    R.INVALID_AMOUNT: ([], Deposit(2, "USD", 0)),
    R.INVALID_REF: ([], Adjust(2, "USD", 5, "", "no admin")),
    R.DUPLICATE_CLIENT_ORDER_ID: ([po(cid="a")], po(cid="a")),
    R.TOO_MANY_OPEN_ORDERS: ([po(price=90 + i) for i in range(3)], po(price=95)),  # limit 3
    R.HALTED: ([Halt(SYMBOL)], po()),
    R.ALREADY_HALTED: ([Halt(SYMBOL)], Halt(SYMBOL)),
    R.NOT_HALTED: ([], Resume(SYMBOL)),
    R.INSUFFICIENT_FUNDS: ([], po(qty=100_000)),
    R.AMOUNT_OVERFLOW: ([], Deposit(2, "USD", INT64_MAX)),
    R.UNKNOWN_ORDER: ([], CancelOrder(2, order_id=12345)),
    R.ORDER_NOT_REPLACEABLE: ([po(type="stop_limit", stop_price=150)], ReplaceOrder(2, 1, qty=5)),
    R.POST_ONLY_WOULD_TRADE: ([po(account=3, side="sell", price=100)], po(post_only=True)),
    R.FOK_UNFILLABLE: ([po(account=3, side="sell", price=100, qty=5)], po(tif="fok")),
    # money controls (this engine: a daily USD withdrawal limit of 500,000 in the default
    # tier, adjustments over 100,000 USD wait for a second admin)
    R.DUPLICATE_REF: ([Deposit(2, "USD", 5, ref="wire-1")], Deposit(2, "USD", 5, ref="wire-1")),
    R.ACCOUNT_FROZEN: ([FreezeAccount(2, "ops", "kyc")], po()),
    R.ALREADY_FROZEN: ([FreezeAccount(2, "ops", "kyc")], FreezeAccount(2, "ops", "again")),
    R.NOT_FROZEN: ([], UnfreezeAccount(2, "ops", "never frozen")),
    R.UNKNOWN_TIER: ([], SetAccountTier(2, "gold", "ops")),
    R.WITHDRAWAL_LIMIT_EXCEEDED: ([RequestWithdrawal(2, "USD", 400_000)],
                                  RequestWithdrawal(2, "USD", 100_001)),
    R.UNKNOWN_WITHDRAWAL: ([RequestWithdrawal(2, "USD", 5)], ApproveWithdrawal(2, "ops")),
    R.UNKNOWN_ADJUSTMENT: ([Adjust(2, "USD", 200_000, "ann", "big")], ApproveAdjustment(2, "bo")),
    R.SAME_ADMIN: ([Adjust(2, "USD", 200_000, "ann", "big")], ApproveAdjustment(1, "ann")),
    R.CLOCK_BACKWARDS: ([Clock(10**18)], Clock(10**18 - 1)),
    R.INVALID_TIME: ([], Clock(-1)),
}


def test_every_reject_reason_has_a_case():
    assert set(CASES) == R.REJECT_REASONS


def fresh(book):
    eng = engine_class(book)(ASSETS, [instrument(min_notional=50)], book=book, max_open_orders=3,
                             tiers=[AccountTier("default", withdrawal_daily_limit={"USD": 500_000}),
                                    AccountTier("vip", maker_fee_bps=0)],
                             adjustment_approval_threshold={"USD": 100_000})
    for account in (2, 3):
        eng.submit(Deposit(account, "USD", 1_000_000))
        eng.submit(Deposit(account, "ABC", 1_000))
    return eng


@pytest.mark.parametrize("reason", sorted(CASES))
def test_reject_reason(book, reason):
    setup, command = CASES[reason]
    eng = fresh(book)
    for c in setup:
        assert not of(eng.submit(c), Rejected), c
    before = state_but_seq(eng)
    ev = eng.submit(command)
    assert [type(e) for e in ev] == [Rejected], ev
    assert ev[0].reason == reason
    assert ev[0].seq == eng.seq
    assert state_but_seq(eng) == before        # a reject changes nothing but the seq
    eng.validate()


def state_but_seq(eng):
    snap = msgspec.msgpack.decode(eng.snapshot(), type=_Snapshot)
    snap.seq = 0
    return snap


@pytest.mark.parametrize("bad", [
    po(price=100.5), po(qty=2.0), po(qty=True), po(price="100"), po(account=None),
    po(account=-7), po(symbol=None), po(side=None), po(cid=None), po(stp=1),
    po(post_only="yes"), po(type="market", price=None, quote_qty=1.5),
    po(type="stop_market", stop_price=None, price=None, quote_qty=100),
    po(price=2**70), po(qty=2**70), po(type="market", price=None, quote_qty=2**64),
    CancelOrder(2), CancelOrder(2, order_id="1"), CancelOrder("2", order_id=1),
    CancelOrder(2, client_order_id=5), ReplaceOrder(2, None), ReplaceOrder(2, 1, price=None, qty=None),
    Deposit(2, "USD", 1.0), Deposit(2, "USD", -5), Deposit(2, None, 5), Deposit(0, "USD", 5),
    Deposit(2, "USD", 5, ref=None), Withdraw(2, "USD", 10**9), Withdraw(2, "USD", 0),
    Adjust(2, "USD", 0, "a", "b"), Adjust(2, "USD", -10**9, "a", "b"), Adjust(2, "USD", 5, "a", None),
    Halt(None), Resume(["x"]), None, 42, object(),
    # ids no BIGINT can hold: rejected, and never echoed into an event the codec cannot carry
    po(account=2**63), Deposit(2**70, "USD", 5), CancelOrder(2**70, order_id=1),
    CancelOrder(2, order_id=2**70), ReplaceOrder(2, 2**64, price=5), ReplaceOrder(2**64, 1, price=5),
    # text the wire cannot carry: rejected, and not echoed into the event
    po(cid=LONE), po(cid="ok" + LONE, side="long"), CancelOrder(2, client_order_id=LONE),
    Deposit(2, "USD", 5, ref=LONE), Withdraw(2, "USD", 5, ref=LONE),
    Adjust(2, "USD", 5, LONE, "fix"), Adjust(2, "USD", 5, "ops", "fix" + LONE),
    # text the ledger cannot store: rejected at the edge, never passed on to halt settlement
    po(cid="a" + NUL), po(cid=NUL + "é"), CancelOrder(2, client_order_id=NUL),
    Deposit(2, "USD", 5, ref="bad" + NUL + "ref"), Withdraw(2, "USD", 5, ref=NUL),
    Adjust(2, "USD", 5, "ops" + NUL, "fix"), Adjust(2, "USD", 5, "ops", "fi" + NUL + "x"),
    # a quote-sized stop's qty must still be the int 0 (or a valid quantity)
    po(type="stop_market", stop_price=150, price=None, quote_qty=100, qty=0.0),
    po(type="stop_market", stop_price=150, price=None, quote_qty=100, qty=False),
    po(type="stop_market", stop_price=150, price=None, quote_qty=100, qty=_Int(0)),
    po(type="market", price=None, quote_qty=100, qty=0.0),
    # money controls: wrong types, system accounts, text the ledger cannot carry
    RequestWithdrawal(2, "USD", 1.0), RequestWithdrawal(1, "USD", 5), RequestWithdrawal(2, "USD", 0),
    RequestWithdrawal(2, "USD", 5, ref=NUL), RequestWithdrawal(2, "USD", 5, ref=None),
    RequestWithdrawal(2, "USD", 2**70), RequestWithdrawal(2**70, "USD", 5),
    ApproveWithdrawal("1", "ops"), ApproveWithdrawal(1, ""), ApproveWithdrawal(2**70, "ops"),
    RejectWithdrawal(1, "ops", LONE), RejectWithdrawal(None, "ops", "x"),
    SetAccountTier(0, "default", "ops"), SetAccountTier(1, "vip", "ops"),
    SetAccountTier(2, None, "ops"), SetAccountTier(2, "default", ""), SetAccountTier(2, "vip", NUL),
    Clock(2**63), Clock(True), Clock(1.5), Clock(None),
    FreezeAccount(1, "ops", "x"), FreezeAccount(2, "ops", "x", cancel_orders="yes"),
    FreezeAccount(2, "", "x"), FreezeAccount(2, "ops", ""), FreezeAccount(2, "ops", "x" * 257),
    UnfreezeAccount(2**64, "ops", "x"), UnfreezeAccount(2, "ops", None),
    CancelAll(2, symbol="NOPE-USD"), CancelAll(2, symbol=5), CancelAll(2, admin=NUL),
    CancelAll(2, admin=None), CancelAll(-1), CancelAll(2**64),
    CancelOrder(2, order_id=1, admin=LONE), CancelOrder(2, order_id=1, admin=5),
    ApproveAdjustment(None, "ops"), ApproveAdjustment(1, None),
    Halt(SYMBOL, admin=NUL), Resume(SYMBOL, admin=5), Adjust(2, "USD", 2**70, "a", "b"),
])
def test_garbage_is_rejected_not_raised(book, bad):
    eng = fresh(book)
    ev = eng.submit(bad)
    assert [type(e) for e in ev] == [Rejected], ev
    assert ev[0].reason in R.REJECT_REASONS
    assert decode_events(encode(ev)) == ev       # every event fits the wire and the ledger
    assert NUL not in ev[0].client_order_id and LONE not in ev[0].client_order_id
    eng.validate()
    eng.snapshot()
    # the engine carries on
    assert of(eng.submit(po()), Accepted)


@pytest.mark.parametrize("limit", [0, -1, 2**63, 2**64, 1.5, True])
def test_max_open_orders_must_fit_the_snapshot(book, limit):
    with pytest.raises(ValueError):
        engine_class(book)(ASSETS, [instrument()], book=book, max_open_orders=limit)


_junk = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                  st.floats(allow_nan=True), st.text(max_size=4), st.sampled_from(
                      ["buy", "sell", "limit", "market", "stop_limit", "stop_market", "gtc",
                       "ioc", "fok", "decrement", "cancel_both", SYMBOL, "USD", "ABC"]),
                  st.lists(st.integers(), max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.builds(PlaceOrder, _junk, _junk, _junk, _junk, _junk, _junk, _junk, _junk, _junk, _junk,
              _junk, _junk),
    st.builds(CancelOrder, _junk, _junk, _junk),
    st.builds(ReplaceOrder, _junk, _junk, _junk, _junk),
    st.builds(Deposit, _junk, _junk, _junk, _junk),
    st.builds(Withdraw, _junk, _junk, _junk, _junk),
    st.builds(Adjust, _junk, _junk, _junk, _junk, _junk),
    st.builds(Halt, _junk, _junk), st.builds(Resume, _junk, _junk),
    st.builds(RequestWithdrawal, _junk, _junk, _junk, _junk),
    st.builds(ApproveWithdrawal, _junk, _junk), st.builds(RejectWithdrawal, _junk, _junk, _junk),
    st.builds(SetAccountTier, _junk, _junk, _junk), st.builds(Clock, _junk),
    st.builds(FreezeAccount, _junk, _junk, _junk, _junk),
    st.builds(UnfreezeAccount, _junk, _junk, _junk), st.builds(CancelAll, _junk, _junk, _junk),
    st.builds(ApproveAdjustment, _junk, _junk), st.builds(CancelOrder, _junk, _junk, _junk, _junk),
))
def test_fuzzed_fields_never_crash_or_corrupt(book, cmd):
    eng = fresh(book)
    eng.submit(po(account=3, side="sell", price=101, qty=3))
    eng.submit(po(account=2, side="buy", price=99, qty=3, cid="r"))
    eng.submit(RequestWithdrawal(2, "USD", 7, ref="w"))           # withdrawal 1, pending
    eng.submit(Adjust(3, "USD", -200_000, "ann", "big"))        # adjustment 1, pending
    ev = eng.submit(cmd)
    assert decode_events(encode(ev)) == ev
    eng.validate()
    restored = type(eng).restore(eng.snapshot(), book=book)
    assert restored.state_hash() == eng.state_hash()
    assert (of(eng.submit(po(account=3, price=98, qty=1)), Accepted) or eng.market(SYMBOL).halted
            or eng.is_frozen(3))
