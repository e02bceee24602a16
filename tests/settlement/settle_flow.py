"""A small seeded order-flow generator for the settlement tests.

``Flow(seed)`` yields engine commands: funding deposits first, then a random
mix of limit (GTC/IOC/FOK, post-only), market, stop orders, cancels,
replaces, deposits, withdrawals, admin adjustments, a few halts and some
invalid commands, around a random-walk price, with few enough accounts that
self-trade prevention fires too.  It watches the engine's events
(``observe``) to pick real order ids for cancels and replaces.  The same seed
against a fresh engine gives the same commands, so the same events.
"""
from __future__ import annotations

import random

from engine import Asset, Engine, Instrument
from engine.messages import (Accepted, Adjust, CancelOrder, Cancelled, Deposit, Halt, PlaceOrder,
                             ReplaceOrder, Resume, Trade, Withdraw)

ASSETS = [Asset("BTC", 8), Asset("ETH", 8), Asset("USDT", 6)]
INSTRUMENTS = [
    Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001", maker_fee_bps=10, taker_fee_bps=20),
    Instrument("ETH-USDT", "ETH", "USDT", "0.01", "0.001", maker_fee_bps=5, taker_fee_bps=15),
    Instrument("ETH-BTC", "ETH", "BTC", "0.00001", "0.001", maker_fee_bps=0, taker_fee_bps=10),
]
# starting mid price in ticks, typical size in lots
_MARKETS = {"BTC-USDT": (3_000_000, 50), "ETH-USDT": (200_000, 500), "ETH-BTC": (6_670, 500)}
_FUNDING = {"BTC": 10**10, "ETH": 10**11, "USDT": 10**13}     # minor units per account


def new_engine() -> Engine:
    return Engine(ASSETS, INSTRUMENTS, book="python")


class Flow:
    def __init__(self, seed: int, accounts: int = 24):
        self.rng = random.Random(seed)
        self.accounts = list(range(2, 2 + accounts))
        self.mid = {s: p for s, (p, _) in _MARKETS.items()}
        self.open: dict[int, tuple[int, str]] = {}      # order_id -> (account, symbol)
        self.halted: set[str] = set()
        self._cid = 0

    def observe(self, events) -> None:
        for ev in events:
            t = type(ev)
            if t is Accepted:
                self.open[ev.order_id] = (ev.account, ev.symbol)
            elif t is Cancelled:
                self.open.pop(ev.order_id, None)
            elif t is Trade:
                self.mid[ev.symbol] = ev.price
                if ev.maker_remaining == 0:
                    self.open.pop(ev.maker_order_id, None)
                if ev.taker_remaining == 0:
                    self.open.pop(ev.taker_order_id, None)

    def commands(self, n: int):
        """n commands (the funding deposits count)."""
        count = 0
        for account in self.accounts:
            for asset, amount in _FUNDING.items():
                if count == n:
                    return
                yield Deposit(account, asset, amount, ref=f"fund-{account}-{asset}")
                count += 1
        while count < n:
            yield self._next()
            count += 1

    # ------------------------------------------------------------------
    def _price(self, symbol: str, spread: float = 0.004) -> int:
        mid = self.mid[symbol]
        return max(1, int(mid * (1 + self.rng.uniform(-spread, spread))))

    def _cid_next(self) -> str:
        self._cid += 1
        return f"c{self._cid}"

    def _next(self):
        r = self.rng.random()
        rng = self.rng
        account = rng.choice(self.accounts)
        symbol = rng.choice(list(_MARKETS))
        lots = max(1, int(_MARKETS[symbol][1] * rng.uniform(0.1, 2.0)))
        side = rng.choice(("buy", "sell"))
        stp = "cancel_newest" if rng.random() < 0.85 else rng.choice(
            ("cancel_oldest", "cancel_both", "decrement"))
        if r < 0.42:
            tif = "gtc" if rng.random() < 0.8 else rng.choice(("ioc", "fok"))
            return PlaceOrder(account, self._cid_next(), symbol, side, "limit", tif,
                              price=self._price(symbol), qty=lots, stp=stp)
        if r < 0.45:
            best = self._price(symbol, 0.002)
            far = int(best * (1.01 if side == "sell" else 0.99))  # rests without crossing, mostly
            return PlaceOrder(account, self._cid_next(), symbol, side, "limit", "gtc",
                              price=max(1, far), qty=lots, post_only=True)
        if r < 0.52:
            if side == "buy" and rng.random() < 0.5:
                budget = self.mid[symbol] * lots * (10 if symbol == "ETH-USDT" else 1)
                return PlaceOrder(account, self._cid_next(), symbol, "buy", "market", "ioc",
                                  quote_qty=max(1, budget), stp=stp)
            cap = int(self.mid[symbol] * (1.01 if side == "buy" else 0.99))
            return PlaceOrder(account, self._cid_next(), symbol, side, "market", "ioc",
                              price=max(1, cap) if side == "buy" or rng.random() < 0.5 else None,
                              qty=lots, stp=stp)
        if r < 0.55:
            up = rng.random() < 0.5
            stop = int(self.mid[symbol] * (1.002 if up else 0.998))
            if rng.random() < 0.5:
                return PlaceOrder(account, self._cid_next(), symbol, "buy" if up else "sell",
                                  "stop_limit", "gtc", price=self._price(symbol), qty=lots,
                                  stop_price=max(1, stop))
            return PlaceOrder(account, self._cid_next(), symbol, "buy" if up else "sell",
                              "stop_market", "ioc",
                              price=int(self.mid[symbol] * 1.02) if up else None, qty=lots,
                              stop_price=max(1, stop))
        if r < 0.71:
            if not self.open:
                return CancelOrder(account, order_id=10**9)
            oid = rng.choice(list(self.open)) if len(self.open) < 64 else \
                list(self.open)[rng.randrange(len(self.open))]
            owner, _ = self.open[oid]
            if rng.random() < 0.05:
                owner = account       # mostly someone else's: rejected as unknown
            return CancelOrder(owner, order_id=oid)
        if r < 0.79:
            if not self.open:
                return ReplaceOrder(account, 10**9, qty=1)
            oid = list(self.open)[rng.randrange(len(self.open))]
            owner, sym = self.open[oid]
            if rng.random() < 0.5:
                return ReplaceOrder(owner, oid, qty=max(1, int(_MARKETS[sym][1] * rng.uniform(0.1, 1.5))))
            return ReplaceOrder(owner, oid, price=self._price(sym))
        if r < 0.86:
            asset = rng.choice(list(_FUNDING))
            return Deposit(account, asset, rng.randint(1, _FUNDING[asset] // 1000), ref=f"d{self._cid}")
        if r < 0.92:
            asset = rng.choice(list(_FUNDING))
            return Withdraw(account, asset, rng.randint(1, _FUNDING[asset] // 500), ref=f"w{self._cid}")
        if r < 0.96:
            asset = rng.choice(list(_FUNDING))
            amount = rng.randint(1, _FUNDING[asset] // 2000) * rng.choice((1, -1))
            target = account if rng.random() < 0.97 else 1
            return Adjust(target, asset, amount, admin=rng.choice(("ops-ann", "ops-bo")),
                          reason=f"ticket-{rng.randrange(10**6)}")
        if r < 0.965:
            if symbol in self.halted:
                self.halted.discard(symbol)
                return Resume(symbol)
            self.halted.add(symbol)
            return Halt(symbol)
        if r < 0.975:
            return Resume(symbol) if symbol in self.halted else PlaceOrder(
                account, self._cid_next(), "NOPE-USDT", side, price=1, qty=1)
        # an invalid or doomed command: rejected, still a seq
        return rng.choice((
            Withdraw(account, "USDT", 10**18),
            Deposit(account, "DOGE", 5),
            PlaceOrder(1, "sys", symbol, side, price=1, qty=1),
            PlaceOrder(account, self._cid_next(), symbol, side, price=0, qty=1),
        ))


def run(seed: int, n: int, engine: Engine | None = None):
    """(engine, list of per-command event lists) for n commands of Flow(seed)."""
    engine = engine or new_engine()
    flow = Flow(seed)
    out = []
    for cmd in flow.commands(n):
        events = engine.submit(cmd)
        flow.observe(events)
        out.append(events)
    return engine, out
