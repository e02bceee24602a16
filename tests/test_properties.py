"""Property tests: random command streams of every kind, invariants after every command.

After each command (``check``): per asset all balances of all accounts sum to
zero (account 0 included); each account's locked equals what its open orders
reserve plus its pending withdrawals' holds; nothing but account 0 is
negative; no book is crossed (``Engine.validate``); every trade obeys
price-time priority: the resting orders one incoming order meets are exactly
the front of the opposite side's queue as it stood before the command, each
trade at the resting order's price and within the incoming order's limit; a
frozen account has no order accepted and nothing withdrawn; and a snapshot
restores to the same state (every 25 commands).  The money controls (refs,
withdrawal requests and approvals, tiers, the clock, freezes, admin cancels,
large adjustments) are drawn along with the orders.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from support import ASSETS, BOOKS, SYMBOL, engine_class, instrument, of
from engine import AccountTier
from engine.core import DAY_NS
from engine.messages import (Accepted, Adjust, ApproveAdjustment, ApproveWithdrawal, CancelAll,
                             CancelOrder, Cancelled, Clock, Deposit, FreezeAccount, Halt,
                             PlaceOrder, RejectWithdrawal, Replaced, ReplaceOrder,
                             RequestWithdrawal, Resume, SetAccountTier, Trade, Transfer, Triggered,
                             UnfreezeAccount, Withdraw)

ACCOUNTS = (2, 3, 4, 5)
SIDES = ("buy", "sell")
STPS = ("cancel_newest", "cancel_oldest", "cancel_both", "decrement")


def opposite_queue(eng, side):
    """Resting order ids of the side a ``side`` order trades against, in priority order,
    with their prices."""
    want = 1 if side == "buy" else 0
    return [(oid, price) for oid, _acct, s, price, *_ in eng._book.dump(0) if s == want]


def check(eng, cmd):
    """Submit ``cmd``, then assert every invariant; returns the events."""
    taker_side = limit = None
    if type(cmd) is PlaceOrder and cmd.type in ("limit", "market") and cmd.side in SIDES:
        taker_side, limit = cmd.side, cmd.price
    elif type(cmd) is ReplaceOrder:
        o = eng.order(cmd.order_id)
        if o is not None and o["status"] == "resting" and o["account"] == cmd.account:
            taker_side, limit = o["side"], cmd.price if cmd.price is not None else o["price"]
    queue = opposite_queue(eng, taker_side) if taker_side else None
    frozen = {a for a in ACCOUNTS if eng.is_frozen(a)}
    events = eng.submit(cmd)
    assert {e.seq for e in events} <= {eng.seq}
    assert events or type(cmd) is CancelAll       # only a CancelAll with nothing to do is silent
    eng.validate()
    for e in events:
        if type(e) is Accepted:
            assert e.account not in frozen, "a frozen account's order accepted"
        elif type(e) is Transfer and e.kind in ("withdraw", "withdraw_hold"):
            assert e.source_account not in frozen, "a frozen account withdrawn from"
    if queue is not None and not of(events, Triggered):
        price_of = dict(queue)
        touched = []
        for e in events:
            if type(e) is Trade:
                oid = e.maker_order_id
                assert e.price == price_of[oid], "trade not at the maker's price"
                if limit is not None:
                    assert e.price <= limit if taker_side == "buy" else e.price >= limit
            elif type(e) in (Cancelled, Replaced) and e.order_id in price_of:   # STP on a maker
                oid = e.order_id
            else:
                continue
            if not touched or touched[-1] != oid:
                touched.append(oid)
        assert touched == [oid for oid, _ in queue[:len(touched)]], "price-time priority broken"
    return events


_price = st.integers(90, 110)
_qty = st.integers(1, 30)
_account = st.sampled_from(ACCOUNTS)
_side = st.sampled_from(SIDES)
_stp = st.sampled_from(STPS)
_limit = st.builds(lambda a, s, p, q, tif, post, stp: PlaceOrder(
    a, "", SYMBOL, s, price=p, qty=q, tif=tif, post_only=post and tif == "gtc", stp=stp),
    _account, _side, _price, _qty, st.sampled_from(("gtc", "gtc", "ioc", "fok")),
    st.booleans(), _stp)
_market = st.one_of(
    st.builds(lambda a, q, stp: PlaceOrder(a, "", SYMBOL, "sell", type="market", qty=q, stp=stp),
              _account, _qty, _stp),
    st.builds(lambda a, b, stp: PlaceOrder(a, "", SYMBOL, "buy", type="market", quote_qty=b, stp=stp),
              _account, st.integers(1, 5000), _stp),
    st.builds(lambda a, p, q: PlaceOrder(a, "", SYMBOL, "buy", type="market", price=p, qty=q),
              _account, _price, _qty))
_stop = st.builds(lambda a, s, p, q, sp, kind: PlaceOrder(
    a, "", SYMBOL, s, type=kind, price=p if (kind == "stop_limit" or s == "buy") else None,
    qty=q, stop_price=sp, tif="gtc"),
    _account, _side, _price, _qty, _price, st.sampled_from(("stop_limit", "stop_market")))
_money = st.one_of(
    st.builds(Deposit, _account, st.sampled_from(("USD", "ABC")), st.integers(1, 5000)),
    st.builds(Withdraw, _account, st.sampled_from(("USD", "ABC")), st.integers(1, 5000)),
    st.builds(lambda a, amt: Adjust(a, "USD", amt, "ops", "fix"), _account,
              st.integers(-3000, 3000).filter(bool)))
_new = {"limit": _limit, "market": _market, "stop": _stop, "money": _money}
# weights by repetition: mostly orders, then amends and money controls, rarely halts
_KIND = st.sampled_from(["limit"] * 8 + ["market"] * 2 + ["stop"] * 2 + ["cancel"] * 3
                        + ["replace"] * 5 + ["money"] * 2 + ["control"] + ["controls"] * 4)
TIERS = [AccountTier("default", withdrawal_daily_limit={"USD": 5_000},
                     withdrawal_auto_approve={"USD": 200}),
         AccountTier("vip", maker_fee_bps=0, taker_fee_bps=5, symbol_fees={SYMBOL: (1, 4)},
                     withdrawal_daily_limit={"USD": 20_000, "ABC": 100},
                     withdrawal_auto_approve={"USD": 1_000, "ABC": 10}),
         AccountTier("pro", maker_fee_bps=30, taker_fee_bps=60)]
_asset = st.sampled_from(("USD", "ABC"))
_ref = st.sampled_from(("", "r1", "r2"))
_admin = st.sampled_from(("ann", "bo"))
_CONTROLS = ("request", "request", "approve", "reject", "clock", "tier", "freeze", "unfreeze",
             "cancel_all", "admin_cancel", "big_adjust", "approve_adjustment", "ref_money")


def draw_control(data, eng, live):
    """A money-control command, naming pending withdrawals and adjustments and live orders."""
    kind = data.draw(st.sampled_from(_CONTROLS))
    a = data.draw(_account)
    if kind == "request":
        return RequestWithdrawal(a, data.draw(_asset), data.draw(st.integers(1, 3000)),
                                 ref=data.draw(_ref))
    if kind in ("approve", "reject"):
        pending = [w.withdrawal_id for w in eng.pending_withdrawals()]
        wid = data.draw(st.sampled_from(pending)) if pending and data.draw(st.integers(0, 5)) else 99
        if kind == "approve":
            return ApproveWithdrawal(wid, data.draw(_admin))
        return RejectWithdrawal(wid, data.draw(_admin), "declined")
    if kind == "clock":
        step = data.draw(st.sampled_from((0, 10**9, DAY_NS // 2, DAY_NS, -1)))
        return Clock(max(0, eng.now + step) if step >= 0 else eng.now - 1)
    if kind == "tier":
        return SetAccountTier(a, data.draw(st.sampled_from(("default", "vip", "pro", "gold"))),
                              data.draw(_admin))
    if kind == "freeze":
        return FreezeAccount(a, data.draw(_admin), "review", cancel_orders=data.draw(st.booleans()))
    if kind == "unfreeze":
        frozen = [x for x in ACCOUNTS if eng.is_frozen(x)]
        if frozen and data.draw(st.integers(0, 5)):
            a = data.draw(st.sampled_from(frozen))
        return UnfreezeAccount(a, data.draw(_admin), "cleared")
    if kind == "cancel_all":
        return CancelAll(a, symbol=data.draw(st.sampled_from((None, SYMBOL))),
                         admin=data.draw(st.sampled_from(("", "ops"))))
    if kind == "admin_cancel":
        oid = data.draw(st.sampled_from(live)) if live else 1
        o = eng.order(oid)
        return CancelOrder(o["account"] if o else a, order_id=oid, admin="ops")
    if kind == "big_adjust":
        return Adjust(a, "USD", data.draw(st.integers(-6000, 6000).filter(bool)), data.draw(_admin),
                      "correction")
    if kind == "approve_adjustment":
        pending = [p.adjustment_id for p in eng.pending_adjustments()]
        aid = data.draw(st.sampled_from(pending)) if pending and data.draw(st.integers(0, 5)) else 99
        return ApproveAdjustment(aid, data.draw(_admin))
    cls = data.draw(st.sampled_from((Deposit, Withdraw)))
    return cls(a, data.draw(_asset), data.draw(st.integers(1, 500)), ref=data.draw(_ref))


def draw_command(data, eng, known_ids):
    if eng.market(SYMBOL).halted and data.draw(st.booleans()):
        return Resume(SYMBOL)
    kind = data.draw(_KIND)
    if kind in _new:
        return data.draw(_new[kind])
    if kind == "control":
        return data.draw(st.sampled_from((Halt(SYMBOL), Resume(SYMBOL))))
    # mostly open orders; sometimes closed ones, which must be unknown by now
    live = [oid for oid in known_ids if eng.order(oid) is not None]
    if kind == "controls":
        return draw_control(data, eng, live)
    pool = live if live and data.draw(st.integers(0, 4)) else known_ids
    oid = data.draw(st.sampled_from(pool)) if pool else 1
    o = eng.order(oid)
    # mostly the owner; sometimes someone else, who must get unknown_order
    account = o["account"] if o and data.draw(st.integers(0, 9)) else data.draw(_account)
    if kind == "cancel":
        return CancelOrder(account, order_id=oid)
    return ReplaceOrder(account, oid, price=data.draw(st.one_of(st.none(), _price)),
                        qty=data.draw(st.one_of(st.none(), _qty)))


class EngineMachine(RuleBasedStateMachine):
    book = "python"

    @initialize()
    def setup(self):
        self.eng = engine_class(self.book)(ASSETS, [instrument()], book=self.book, max_open_orders=50,
                                           tiers=TIERS, adjustment_approval_threshold={"USD": 2000})
        self.known_ids = []
        for a in ACCOUNTS:
            self.eng.submit(Deposit(a, "USD", 20_000))
            self.eng.submit(Deposit(a, "ABC", 200))

    @rule(data=st.data())
    def step(self, data):
        cmd = draw_command(data, self.eng, self.known_ids[-40:])
        for e in check(self.eng, cmd):
            if type(e) is Accepted:
                self.known_ids.append(e.order_id)

    @invariant()
    def restorable(self):
        if self.eng.seq % 25 == 0:
            assert engine_class(self.book).restore(self.eng.snapshot(), book=self.book).state_hash() == self.eng.state_hash()


_examples = int(os.environ.get("EXCHANGE_PROPERTY_EXAMPLES", "150"))
for _book in BOOKS:
    _cls = type(f"EngineMachine_{_book}", (EngineMachine,), {"book": _book})
    _cls.TestCase.settings = settings(max_examples=_examples, stateful_step_count=60, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
    globals()[f"TestEngineMachine_{_book}"] = _cls.TestCase


def test_long_full_mix_stream_keeps_every_invariant(book):
    """A long stream of the benchmark's 'full' mix (every command type): the
    invariants every 50 commands, priority checked on every taker."""
    from engine.flow import generate, market_config
    cmds = generate("full", 6_000, seed=11, accounts=20, prefill=200)
    assets, instruments = market_config()
    eng = engine_class(book)(assets, instruments, book=book, max_open_orders=100_000)
    for i, c in enumerate(cmds):
        if i % 50 == 0:
            eng.validate()
        eng.submit(c)
    eng.validate()
    assert eng.seq == len(cmds)
