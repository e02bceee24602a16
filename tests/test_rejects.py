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
from engine import reasons as R
from engine.core import _Snapshot
from engine.messages import (Accepted, Adjust, CancelOrder, Deposit, Halt, PlaceOrder, Rejected,
                             ReplaceOrder, Resume, Withdraw, decode_events, encode)

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
}


def test_every_reject_reason_has_a_case():
    assert set(CASES) == R.REJECT_REASONS


def fresh(book):
    eng = engine_class(book)(ASSETS, [instrument(min_notional=50)], book=book, max_open_orders=3)
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
    st.builds(Halt, _junk), st.builds(Resume, _junk),
))
def test_fuzzed_fields_never_crash_or_corrupt(book, cmd):
    eng = fresh(book)
    eng.submit(po(account=3, side="sell", price=101, qty=3))
    eng.submit(po(account=2, side="buy", price=99, qty=3, cid="r"))
    ev = eng.submit(cmd)
    assert decode_events(encode(ev)) == ev
    eng.validate()
    assert of(eng.submit(po(account=3, price=98, qty=1)), Accepted) or eng.market(SYMBOL).halted
