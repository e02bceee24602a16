"""Seeded order-flow generator for benchmarks and long tests.

``generate(mix, n, seed)`` returns a list of engine commands: first one
deposit per account and asset, then ``n`` flow commands drawn from the mix.
Random draws come from a numpy ``Generator`` (PCG64) seeded with ``seed``, so a
(mix, n, seed, accounts, symbols) tuple always gives the same commands.

The generator is closed-loop: it feeds every command to an oracle engine and
reads the events to know which orders are open (cancels and moves name live
orders, like a real client would).  Engines are deterministic and books
interchangeable, so the oracle's book implementation does not change the
stream.

Mixes (shares of flow commands):
- ``exchange_core``: 9% GTC limit, 3% IOC, 6% cancel, 82% move (replace to a new
  price around a moving mid), after exchange-core's benchmark.
- ``insert_heavy``: 60% GTC limit, 10% IOC, 15% cancel, 15% move: the book grows.
- ``full``: every command type (market orders with budgets and caps, FOK,
  post-only, stops, every STP mode, qty-reducing replaces, deposits,
  withdrawals, adjustments, halts) for property and settlement tests.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from engine import Asset, Engine, Instrument
from engine.messages import (Accepted, Adjust, CancelOrder, Cancelled, Deposit, Halt, PlaceOrder,
                             Replaced, ReplaceOrder, Resume, Trade, Withdraw)

MID_TICKS = 3_000_000          # 30,000.00 USDT
DEPOSIT_QUOTE = 10**15         # per account, minor units (1e9 USDT)
DEPOSIT_BASE = 10**13          # per account (100,000 BTC)

MIXES = {
    "exchange_core": {"gtc": 9, "ioc": 3, "cancel": 6, "move": 82},
    "insert_heavy": {"gtc": 60, "ioc": 10, "cancel": 15, "move": 15},
    "full": {"gtc": 30, "ioc": 5, "fok": 2, "post_only": 4, "market": 4, "stop": 4,
             "cancel": 12, "move": 25, "reduce": 5, "deposit": 3, "withdraw": 3, "adjust": 1,
             "halt": 0.05, "resume": 1.95},
}
GTC_CROSS_SHARE = 0.10         # of GTC orders priced through the mid (they trade)
MOVE_CROSS_SHARE = 0.02        # of moves priced through the mid


def market_config(symbols: int = 1):
    """(assets, instruments): USDT-quoted markets with maker 2 bps / taker 5 bps."""
    bases = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOT", "LTC", "BCH"][:symbols]
    assets = [Asset("USDT", 6)] + [Asset(b, 8) for b in bases]
    instruments = [Instrument(f"{b}-USDT", b, "USDT", "0.01", "0.0001", min_qty=1,
                              maker_fee_bps=2, taker_fee_bps=5) for b in bases]
    return assets, instruments


class _OpenOrders:
    """Open order ids with O(1) add, remove and random pick."""

    def __init__(self):
        self.ids: list[int] = []
        self.pos: dict[int, int] = {}
        self.info: dict[int, list] = {}      # order_id -> [account, symbol, side, price, qty]

    def add(self, order_id, account, symbol, side, price, qty):
        self.pos[order_id] = len(self.ids)
        self.ids.append(order_id)
        self.info[order_id] = [account, symbol, side, price, qty]

    def discard(self, order_id):
        i = self.pos.pop(order_id, None)
        if i is None:
            return
        last = self.ids.pop()
        if last != order_id:
            self.ids[i] = last
            self.pos[last] = i
        del self.info[order_id]

    def pick(self, r: float):
        return self.ids[int(r * len(self.ids))]


def generate(mix: str = "exchange_core", n: int = 100_000, seed: int = 1, accounts: int = 1000,
             symbols: int = 1, prefill: int = 2000, oracle_book: str = "auto") -> list:
    """Deposits, then ``prefill`` resting GTC orders per symbol (not crossing),
    then ``n`` commands of the mix.  While fewer than half the prefill are
    open, a cancel turns into a GTC order so the book keeps its depth."""
    weights = MIXES[mix]
    kinds = list(weights)
    p = np.array([weights[k] for k in kinds], dtype=np.float64)
    rng = np.random.Generator(np.random.PCG64(seed))
    assets, instruments = market_config(symbols)
    engine = Engine(assets, instruments, book=oracle_book, max_open_orders=100_000)
    first_account = 2
    cmds = []
    for a in range(first_account, first_account + accounts):
        for asset in assets:
            cmds.append(Deposit(a, asset.name, DEPOSIT_QUOTE if asset.name == "USDT" else DEPOSIT_BASE))
    for c in cmds:
        engine.submit(c)

    op = rng.choice(len(kinds), size=n, p=p / p.sum())
    op = np.concatenate([np.full(prefill * symbols, -1, dtype=op.dtype), op])
    n += prefill * symbols
    acct = rng.integers(first_account, first_account + accounts, size=n)
    sym = rng.integers(0, symbols, size=n)
    side = rng.integers(0, 2, size=n)
    # distance from mid in ticks: mostly near the top of book, sometimes far
    offset = np.abs(rng.normal(0, 40, size=n)).astype(np.int64) + 1
    cross_draw = rng.random(size=n)
    qty = rng.geometric(0.05, size=n).astype(np.int64)
    walk = rng.choice(np.array([-1, 0, 1]), size=n, p=[0.05, 0.9, 0.05])   # slow drift of the mid
    pick = rng.random(size=n)
    extra = rng.integers(0, 1 << 30, size=n)
    stp_modes = ("cancel_newest", "cancel_oldest", "cancel_both", "decrement")
    symbols_list = [ins.symbol for ins in instruments]
    mids = [MID_TICKS] * symbols
    halted = [False] * symbols
    open_orders = _OpenOrders()
    book_floor = prefill * symbols // 2
    ids = {"cid": 0}

    def next_cid():
        ids["cid"] += 1
        return f"c{ids['cid']}"

    for i in range(n):
        s = int(sym[i])
        mids[s] = max(10_000, mids[s] + int(walk[i]))
        mid = mids[s]
        kind = kinds[op[i]] if op[i] >= 0 else "prefill"
        cross = cross_draw[i] < (MOVE_CROSS_SHARE if kind == "move" else GTC_CROSS_SHARE)
        a = int(acct[i])
        sd = "buy" if side[i] == 0 else "sell"
        off = int(offset[i])
        q = int(qty[i])
        symbol = symbols_list[s]
        bid, ask = engine.top(symbol)
        price = _price(sd, mid, off, cross and kind != "prefill", bid, ask)
        if kind in ("cancel", "move", "reduce") and not open_orders.ids:
            kind = "gtc"
        elif kind == "cancel" and len(open_orders.ids) < book_floor:
            kind = "gtc"          # keep the book from draining: a thin book is not the workload
        if kind == "gtc" or kind == "prefill":
            c = PlaceOrder(a, next_cid(), symbol, sd, price=price, qty=q)
        elif kind == "ioc":
            aggressive = mid + off if sd == "buy" else max(1, mid - off)
            c = PlaceOrder(a, next_cid(), symbol, sd, tif="ioc", price=aggressive, qty=q)
        elif kind == "fok":
            aggressive = mid + off if sd == "buy" else max(1, mid - off)
            c = PlaceOrder(a, next_cid(), symbol, sd, tif="fok", price=aggressive, qty=q,
                           stp=stp_modes[extra[i] % 4])
        elif kind == "post_only":
            c = PlaceOrder(a, next_cid(), symbol, sd, price=price, qty=q, post_only=True)
        elif kind == "market":
            if sd == "buy" and extra[i] % 2:
                c = PlaceOrder(a, next_cid(), symbol, sd, type="market",
                               quote_qty=q * mid * 3, stp=stp_modes[extra[i] % 4])
            elif sd == "buy":
                c = PlaceOrder(a, next_cid(), symbol, sd, type="market", price=mid + off, qty=q,
                               stp=stp_modes[extra[i] % 4])
            else:
                c = PlaceOrder(a, next_cid(), symbol, sd, type="market", qty=q,
                               stp=stp_modes[extra[i] % 4])
        elif kind == "stop":
            # buy stops above the mid, sell stops below: they trigger as the price walks
            stop_price = mid + off if sd == "buy" else max(1, mid - off)
            if extra[i] % 2:
                limit = stop_price + 5 if sd == "buy" else max(1, stop_price - 5)
                c = PlaceOrder(a, next_cid(), symbol, sd, type="stop_limit", price=limit, qty=q,
                               stop_price=stop_price, tif=("gtc", "ioc")[extra[i] % 4 // 2])
            elif sd == "buy":
                c = PlaceOrder(a, next_cid(), symbol, sd, type="stop_market", stop_price=stop_price,
                               quote_qty=q * mid * 2)
            else:
                c = PlaceOrder(a, next_cid(), symbol, sd, type="stop_market", stop_price=stop_price,
                               qty=q)
        elif kind == "cancel":
            oid = open_orders.pick(pick[i])
            owner = open_orders.info[oid][0]
            c = CancelOrder(owner, order_id=oid)
        elif kind == "move":
            oid = open_orders.pick(pick[i])
            owner, osym, oside, oprice, oqty = open_orders.info[oid]
            if osym != symbol:
                bid, ask = engine.top(osym)
            m = mids[symbols_list.index(osym)]
            c = ReplaceOrder(owner, oid, price=_price(oside, m, off, cross, bid, ask))
        elif kind == "reduce":
            oid = open_orders.pick(pick[i])
            owner, osym, oside, oprice, oqty = open_orders.info[oid]
            c = ReplaceOrder(owner, oid, qty=max(1, oqty // 2))
        elif kind == "deposit":
            c = Deposit(a, "USDT" if extra[i] % 2 else assets[1 + s].name, q * 10**6, ref=f"d{i}")
        elif kind == "withdraw":
            c = Withdraw(a, "USDT" if extra[i] % 2 else assets[1 + s].name, q * 10**6, ref=f"w{i}")
        elif kind == "adjust":
            c = Adjust(a, "USDT", (q if extra[i] % 2 else -q) * 1000, "ops", f"correction {i}")
        elif kind == "halt":
            c = Halt(symbol)
            halted[s] = True
        elif kind == "resume":
            if not halted[s]:
                c = PlaceOrder(a, next_cid(), symbol, sd, price=price, qty=q)
            else:
                c = Resume(symbol)
                halted[s] = False
        else:  # pragma: no cover
            raise AssertionError(kind)
        cmds.append(c)
        for e in engine.submit(c):
            t = type(e)
            if t is Trade:
                for oid, left in ((e.maker_order_id, e.maker_remaining),
                                  (e.taker_order_id, e.taker_remaining)):
                    if left:
                        if oid in open_orders.info:
                            open_orders.info[oid][4] = left
                    else:
                        open_orders.discard(oid)
            elif t is Accepted:
                if e.price is not None and e.qty:
                    open_orders.add(e.order_id, e.account, e.symbol, e.side, e.price, e.qty)
            elif t is Cancelled:
                open_orders.discard(e.order_id)
            elif t is Replaced:
                info = open_orders.info.get(e.order_id)
                if info is not None:
                    info[3], info[4] = e.price, e.qty
    return cmds


def _price(side: str, mid: int, off: int, cross: bool, bid: int, ask: int) -> int:
    """A buy ``off`` ticks under the mid (sell: over), kept off the opposite
    best so that it rests; or, when ``cross``, ``off`` ticks through the mid."""
    if side == "buy":
        if cross:
            return mid + off
        price = mid - off
        return max(1, min(price, ask - 1) if ask else price)
    if cross:
        return max(1, mid - off)
    price = mid + off
    return max(price, bid + 1) if bid else price


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mix", default="exchange_core", choices=sorted(MIXES))
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--accounts", type=int, default=1000)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    cmds = generate(args.mix, args.n, args.seed, args.accounts)
    dt = time.perf_counter() - t
    counts: dict[str, int] = {}
    for c in cmds:
        counts[type(c).__name__] = counts.get(type(c).__name__, 0) + 1
    print(f"{len(cmds)} commands in {dt:.2f}s: {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
