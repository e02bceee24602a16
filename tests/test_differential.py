"""Differential test: the engine against a slow, obviously correct matcher.

The model below keeps every resting order in one plain list and, for each
incoming order, sorts the candidates by price then arrival.  No levels, no
indexes, no cleverness.  Long random streams of limit (GTC/IOC), market and
cancel commands go through both; every command must produce the same trades
(price, qty, maker, taker) and the same cancellations, and the books must end
equal.
"""
from __future__ import annotations

import random

import pytest

from support import ASSETS, SYMBOL, engine_class, instrument, of
from engine.messages import Accepted, CancelOrder, Cancelled, Deposit, PlaceOrder, Trade


class SlowMatcher:
    def __init__(self):
        self.resting = []          # dicts: id, account, side, price, qty, arrival
        self.next_id = 1
        self.clock = 0

    def place(self, account, side, price, qty, tif, market):
        """Returns (order id, trades, cancelled remaining or None)."""
        oid = self.next_id
        self.next_id += 1
        if side == "buy":
            crosses = [o for o in self.resting if o["side"] == "sell" and (price is None or o["price"] <= price)]
            crosses.sort(key=lambda o: (o["price"], o["arrival"]))
        else:
            crosses = [o for o in self.resting if o["side"] == "buy" and (price is None or o["price"] >= price)]
            crosses.sort(key=lambda o: (-o["price"], o["arrival"]))
        trades = []
        for o in crosses:
            if qty == 0:
                break
            if o["account"] == account:            # self-trade prevention: cancel the newest
                return oid, trades, qty
            q = min(qty, o["qty"])
            trades.append((o["price"], q, o["id"], oid))
            o["qty"] -= q
            qty -= q
            if o["qty"] == 0:
                self.resting.remove(o)
        if qty and tif == "gtc" and not market:
            self.clock += 1
            self.resting.append({"id": oid, "account": account, "side": side, "price": price,
                                 "qty": qty, "arrival": self.clock})
            return oid, trades, None
        return oid, trades, (qty or None)

    def cancel(self, account, oid):
        for o in self.resting:
            if o["id"] == oid and o["account"] == account:
                self.resting.remove(o)
                return o["qty"]
        return None

    def depth(self, side):
        levels = {}
        for o in self.resting:
            if o["side"] == side:
                levels[o["price"]] = levels.get(o["price"], 0) + o["qty"]
        return sorted(levels.items(), reverse=(side == "buy"))


def run_stream(book, seed, n):
    rnd = random.Random(seed)
    eng = engine_class(book)(ASSETS, [instrument()], book=book, max_open_orders=10**6)
    accounts = list(range(2, 12))
    for a in accounts:
        eng.submit(Deposit(a, "USD", 10**14))
        eng.submit(Deposit(a, "ABC", 10**11))
    model = SlowMatcher()
    mid = 1000
    compared = 0
    for _ in range(n):
        mid = max(50, mid + rnd.choice((-1, 0, 0, 1)))
        account = rnd.choice(accounts)
        side = rnd.choice(("buy", "sell"))
        r = rnd.random()
        if r < 0.15 and model.resting:
            o = rnd.choice(model.resting)
            owner = o["account"] if rnd.random() < 0.9 else account
            expected = model.cancel(owner, o["id"])
            ev = eng.submit(CancelOrder(owner, order_id=o["id"]))
            got = [c.remaining_qty for c in of(ev, Cancelled)]
            assert got == ([] if expected is None else [expected])
            continue
        qty = rnd.randint(1, 40)
        if r < 0.25:                                     # market
            price = mid + rnd.randint(0, 30) if side == "buy" else None
            cmd = PlaceOrder(account, "", SYMBOL, side, type="market", price=price, qty=qty)
            oid, trades, cancelled = model.place(account, side, price, qty, "ioc", True)
        else:
            off = rnd.randint(-5, 30)
            price = mid - off if side == "buy" else mid + off
            tif = "ioc" if r < 0.35 else "gtc"
            cmd = PlaceOrder(account, "", SYMBOL, side, tif=tif, price=price, qty=qty)
            oid, trades, cancelled = model.place(account, side, price, qty, tif, False)
        ev = eng.submit(cmd)
        assert of(ev, Accepted)[0].order_id == oid
        assert [(t.price, t.qty, t.maker_order_id, t.taker_order_id) for t in of(ev, Trade)] == trades
        assert [c.remaining_qty for c in of(ev, Cancelled)] == ([] if cancelled is None else [cancelled])
        compared += len(trades)
    bids, asks = eng.depth(SYMBOL, 10**6)
    assert bids == model.depth("buy") and asks == model.depth("sell")
    eng.validate()
    return compared


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_matches_the_slow_model(book, seed):
    trades = run_stream(book, seed, 30_000)
    assert trades > 5_000          # the stream really trades
