"""Seeded order flow: the commands that benchmarks, tests and demos feed the engine.

A ``Flow`` is an endless stream: one deposit per account and asset, then
``prefill`` resting GTC orders, then commands drawn from a mix.  It is closed
over the engine that runs it: it reads that engine's top of book and, through
``observe``, its events, so cancels and replaces name live orders as a
client's would.  Draws come from ``random.Random(seed)`` alone and engines
are deterministic whichever book runs, so the same mix, seed and options give
the same stream.  ``generate`` returns it as a list, ``run`` with the events.

Mixes (``MIXES``: shares of the drawn commands):
- ``exchange_core``: 9% GTC, 3% IOC, 6% cancel, 82% move (replace to a new
  price around a moving mid), after exchange-core's benchmark;
- ``insert_heavy``: 60% GTC, 10% IOC, 15% cancel, 15% move: the book grows;
- ``full``: every command type (market orders with budgets and caps, FOK,
  post-only, stops, every STP mode, qty-reducing replaces, deposits,
  withdrawals, adjustments, halts);
- ``ledger``: ``full`` with more adjustments and some invalid commands
  (rejected, still a seq).  By default on the cross markets (BTC-USDT,
  ETH-USDT, ETH-BTC) with 24 accounts, so self-trade prevention fires, and
  no prefill: the settlement tests' flow;
- ``cancel_heavy``: 45% GTC, 5% IOC, 45% cancel, 5% move: orders mostly die
  unfilled;
- ``sweep``: 80% GTC, 19% cancel, 1% sweeps: market orders of
  ``SWEEP_LOTS`` times the usual size, each eating ~60 resting orders on
  ~18 price levels while the GTC orders refill the book;
- ``peers``: 60% GTC, 37% cancel, 3% market orders by quantity: only what
  every other matching engine supports (benchmarks/peers/);
- ``money``: ``ledger`` plus the money controls: withdrawal requests,
  approvals and rejections, repeated deposit refs, the clock, account tiers,
  freezes, admin cancels and CancelAll, large adjustments and their
  approvals.  Its engines take ``engine_options("money")`` (tiers with fees
  and daily limits, an adjustment approval threshold); on an engine without
  them the tier changes are rejected, nothing else differs.
The other mixes default to the USDT markets (``market_config``), 1000
accounts and 2000 prefill orders per symbol; ``sweep`` and ``peers`` also to
``sides_apart`` (buys from even accounts, sells from odd ones, so no order
meets its own account and self-trade prevention never cuts a sweep short).
Market orders of the ``market_lots`` and ``sweep`` kinds are by quantity; a
buy carries a protection cap of twice the mid, which no resting order reaches.
"""
from __future__ import annotations

import argparse
import math
import random
import time
from bisect import bisect_right
from itertools import accumulate, islice
from typing import NamedTuple

from . import AccountTier, Asset, Engine, Instrument
from .ledger import FIRST_USER_ACCOUNT, SYSTEM_FEES
from .messages import (Accepted, Adjust, Adjusted, AdjustmentPending, AdminAction,
                       ApproveAdjustment, ApproveWithdrawal, CancelAll, CancelOrder, Cancelled,
                       Clock, Deposit, FreezeAccount, Halt, PlaceOrder, RejectWithdrawal,
                       Replaced, ReplaceOrder, RequestWithdrawal, Resume, SetAccountTier, Trade,
                       UnfreezeAccount, Withdraw, WithdrawalCompleted, WithdrawalRejected,
                       WithdrawalRequested)

MIXES = {
    "exchange_core": {"gtc": 9, "ioc": 3, "cancel": 6, "move": 82},
    "insert_heavy": {"gtc": 60, "ioc": 10, "cancel": 15, "move": 15},
    "full": {"gtc": 30, "ioc": 5, "fok": 2, "post_only": 4, "market": 4, "stop": 4,
             "cancel": 12, "move": 25, "reduce": 5, "deposit": 3, "withdraw": 3, "adjust": 1,
             "halt": 0.05, "resume": 1.95},
    "ledger": {"gtc": 30, "ioc": 5, "fok": 2, "post_only": 4, "market": 4, "stop": 4,
               "cancel": 12, "move": 25, "reduce": 5, "deposit": 3, "withdraw": 3, "adjust": 4,
               "halt": 0.1, "resume": 1.9, "invalid": 2},
    "cancel_heavy": {"gtc": 45, "ioc": 5, "cancel": 45, "move": 5},
    "sweep": {"gtc": 80, "cancel": 19, "sweep": 1},
    "peers": {"gtc": 60, "cancel": 37, "market_lots": 3},
    "money": {"gtc": 30, "ioc": 5, "fok": 2, "post_only": 4, "market": 4, "stop": 4,
              "cancel": 12, "move": 25, "reduce": 5, "deposit": 3, "withdraw": 3, "adjust": 4,
              "halt": 0.1, "resume": 1.9, "invalid": 2,
              "request": 5, "approve": 2, "reject": 1, "dup_deposit": 1, "clock": 2,
              "set_tier": 0.5, "freeze": 0.3, "unfreeze": 0.7, "cancel_all": 0.5,
              "admin_cancel": 1, "big_adjust": 1, "approve_adjustment": 1},
}
# (accounts, symbols, prefill per symbol, markets) when the caller gives None
_DEFAULTS = {"ledger": (24, None, 0, "cross"), "money": (24, None, 0, "cross")}
_SIDES_APART = ("sweep", "peers")    # mixes whose sides_apart defaults to True
SWEEP_LOTS = 60                # a sweep is this many times an ordinary order's size
MONEY_TIERS = ("default", "vip", "pro")
MONEY_EPOCH_NS = 1_767_225_600 * 10**9     # the money mix's first Clock: 2026-01-01 UTC
HOUR_NS = 3_600 * 10**9
_DEFAULT = (1000, None, 2000, "usdt")

GTC_CROSS_SHARE = 0.10         # of GTC orders priced through the mid (they trade)
MOVE_CROSS_SHARE = 0.02        # of moves priced through the mid
WALK_SHARE = 0.05              # of commands that move their symbol's mid one tick down (and up)
MAX_OPEN_ORDERS = 100_000      # per account, in the oracle engines this module makes
STP_MODES = ("cancel_newest", "cancel_oldest", "cancel_both", "decrement")


class _Market(NamedTuple):
    instrument: Instrument
    mid_ticks: int             # where the mid's random walk starts
    offset_ticks: int          # scale of an order's (half-normal) distance from the mid
    lots_mean: int             # mean order size (geometric)


_USDT_BASES = ("BTC", "ETH", "SOL", "XRP", "ADA", "DOT", "LTC", "BCH")
_CROSS = (   # (instrument, mid, offset scale, mean lots); funding and amount unit per asset
    (Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001", maker_fee_bps=10, taker_fee_bps=20),
     3_000_000, 40, 50),
    (Instrument("ETH-USDT", "ETH", "USDT", "0.01", "0.001", maker_fee_bps=5, taker_fee_bps=15),
     200_000, 20, 500),
    (Instrument("ETH-BTC", "ETH", "BTC", "0.00001", "0.001", maker_fee_bps=0, taker_fee_bps=10),
     6_670, 4, 500),
)
_CROSS_FUNDING = {"BTC": 10**10, "ETH": 10**11, "USDT": 10**13}     # minor units per account


def _markets(markets: str, symbols: int | None):
    """(assets, [_Market], {asset: funding}, {asset: amount unit}) of a market set."""
    if markets == "usdt":
        symbols = 1 if symbols is None else symbols
        if not 1 <= symbols <= len(_USDT_BASES):
            raise ValueError(f"usdt markets: symbols must be 1..{len(_USDT_BASES)}")
        bases = _USDT_BASES[:symbols]
        assets = [Asset("USDT", 6)] + [Asset(b, 8) for b in bases]
        ms = [_Market(Instrument(f"{b}-USDT", b, "USDT", "0.01", "0.0001", min_qty=1,
                                 maker_fee_bps=2, taker_fee_bps=5), 3_000_000, 40, 20)
              for b in bases]
        funding = {a.name: 10**15 if a.name == "USDT" else 10**13 for a in assets}
        unit = {a.name: 10**6 for a in assets}
        return assets, ms, funding, unit
    if markets == "cross":
        symbols = len(_CROSS) if symbols is None else symbols
        if not 1 <= symbols <= len(_CROSS):
            raise ValueError(f"cross markets: symbols must be 1..{len(_CROSS)}")
        assets = [Asset("BTC", 8), Asset("ETH", 8), Asset("USDT", 6)]
        ms = [_Market(*m) for m in _CROSS[:symbols]]
        unit = {name: amount // 20_000 for name, amount in _CROSS_FUNDING.items()}
        return assets, ms, dict(_CROSS_FUNDING), unit
    raise ValueError(f"markets must be 'usdt' or 'cross', not {markets!r}")


def market_config(symbols: int | None = None, markets: str = "usdt"):
    """(assets, instruments).  "usdt": ``symbols`` (default 1) USDT-quoted
    markets, BTC-USDT first, maker 2 bps / taker 5 bps.  "cross": BTC-USDT,
    ETH-USDT and the cross pair ETH-BTC (the first ``symbols``), fees per market."""
    assets, ms, _, _ = _markets(markets, symbols)
    return assets, [m.instrument for m in ms]


CROSS_ASSETS, CROSS_INSTRUMENTS = market_config(markets="cross")


def new_engine(markets: str = "cross", symbols: int | None = None, book: str = "python",
               mix: str | None = None) -> Engine:
    """A fresh engine on a market set, with the engine's default limits (and
    the options a mix wants: ``engine_options``)."""
    assets, instruments = market_config(symbols, markets)
    return Engine(assets, instruments, book=book, **engine_options(mix, markets, symbols))


def engine_options(mix: str | None, markets: str | None = None,
                   symbols: int | None = None) -> dict:
    """Engine keyword arguments a mix's stream expects (``{}`` but for
    ``money``: tiers "default", "vip" and "pro" with fees and daily withdrawal
    limits, and an adjustment approval threshold), for its market set."""
    if mix != "money":
        return {}
    _, d_symbols, _, d_markets = _DEFAULTS[mix]
    assets, ms, funding, _ = _markets(markets or d_markets, d_symbols if symbols is None else symbols)
    limit = {a.name: funding[a.name] // 100 for a in assets}         # 1% of an account a day
    auto = {a.name: funding[a.name] // 2000 for a in assets}
    rebated = {m.instrument.symbol: (0, 3) for m in ms if m.instrument.quote != "USDT"}
    return dict(
        tiers=[AccountTier("default", withdrawal_daily_limit=limit, withdrawal_auto_approve=auto),
               AccountTier("vip", maker_fee_bps=0, taker_fee_bps=5, symbol_fees=rebated,
                           withdrawal_daily_limit={k: v * 10 for k, v in limit.items()},
                           withdrawal_auto_approve={k: v * 10 for k, v in auto.items()}),
               AccountTier("pro", maker_fee_bps=20, taker_fee_bps=40)],
        adjustment_approval_threshold={a.name: funding[a.name] // 1000 for a in assets})


class _OpenOrders:
    """Open order ids with O(1) add, remove and random pick."""

    def __init__(self):
        self.ids: list[int] = []
        self.pos: dict[int, int] = {}
        self.info: dict[int, list] = {}      # order_id -> [account, symbol, side, price, qty]

    def add(self, order_id, account, symbol, side, price, qty):
        if order_id in self.pos:
            return
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

    def pick(self, u: float) -> int:
        return self.ids[int(u * len(self.ids))]


class Flow:
    """One seeded stream of commands, closed over ``engine`` (its own oracle,
    on ``oracle_book``, when None).  Options left None take the mix's defaults.

    ``stream(n)`` submits each command to the engine and yields (command,
    events).  A caller that submits itself takes ``commands(n)`` and passes
    each command's events to ``observe`` before taking the next.  ``n`` counts
    every command, the setup (``setup_count``: deposits, prefill) included.
    """

    def __init__(self, mix: str = "full", seed: int = 1, *, accounts: int | None = None,
                 symbols: int | None = None, prefill: int | None = None,
                 markets: str | None = None, engine=None, oracle_book: str = "auto",
                 sides_apart: bool | None = None):
        if mix not in MIXES:
            raise ValueError(f"unknown mix {mix!r}: one of {', '.join(sorted(MIXES))}")
        d_accounts, d_symbols, d_prefill, d_markets = _DEFAULTS.get(mix, _DEFAULT)
        self.mix = mix
        self.accounts = d_accounts if accounts is None else accounts
        self.markets = d_markets if markets is None else markets
        prefill = d_prefill if prefill is None else prefill
        self.sides_apart = mix in _SIDES_APART if sides_apart is None else sides_apart
        if self.accounts < 1 or prefill < 0 or (self.sides_apart and self.accounts < 2):
            raise ValueError("accounts must be >= 1 (2 with sides_apart) and prefill >= 0")
        self.assets, self._ms, self._funding, self._unit = _markets(
            self.markets, d_symbols if symbols is None else symbols)
        self.instruments = [m.instrument for m in self._ms]
        if engine is None:
            engine = Engine(self.assets, self.instruments, book=oracle_book,
                            max_open_orders=MAX_OPEN_ORDERS,
                            **engine_options(mix, self.markets, symbols))
        for ins in self.instruments:
            engine.market(ins.symbol)     # KeyError: the engine does not list the flow's markets
        self.engine = engine
        self.prefill_count = prefill * len(self._ms)
        self.setup_count = self.accounts * len(self.assets) + self.prefill_count

        shares = MIXES[mix]
        self._kinds = list(shares)
        self._cum = list(accumulate(float(shares[k]) for k in self._kinds))
        self._rng = random.Random(seed)
        self._symbols = [ins.symbol for ins in self.instruments]
        self._index = {s: i for i, s in enumerate(self._symbols)}
        self._notional_unit = [engine.market(s).notional_unit for s in self._symbols]
        self._mids = [m.mid_ticks for m in self._ms]
        self._halted = [False] * len(self._ms)
        self._open = _OpenOrders()
        self._book_floor = self.prefill_count // 2
        self._cid = 0
        self._step = 0
        self._started = False
        # the money mix's view of the engine, from the events (observe)
        self._money = mix == "money"
        self._withdrawals: list[int] = []       # pending withdrawal ids
        self._adjustments: list[int] = []       # pending adjustment ids
        self._frozen: list[int] = []            # frozen accounts
        self._last_deposit = None               # (account, asset, amount, ref)
        self._now = MONEY_EPOCH_NS

    # ------------------------------------------------------------ the stream
    def commands(self, n: int | None = None):
        """The first ``n`` commands (endless for None).  Once per Flow."""
        if self._started:
            raise RuntimeError("a Flow streams once: make a new one")
        self._started = True
        it = self._commands()
        return it if n is None else islice(it, n)

    def stream(self, n: int | None = None):
        """(command, events) for the first ``n`` commands, run on ``self.engine``."""
        submit, observe = self.engine.submit, self.observe
        for cmd in self.commands(n):
            events = submit(cmd)
            observe(events)
            yield cmd, events

    def observe(self, events) -> None:
        """Follow the open orders through a command's events."""
        open_orders = self._open
        for e in events:
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
            elif self._money:
                self._observe_money(e, t)

    def _observe_money(self, e, t) -> None:
        if t is WithdrawalRequested:
            self._withdrawals.append(e.withdrawal_id)
        elif t is WithdrawalCompleted or t is WithdrawalRejected:
            self._withdrawals.remove(e.withdrawal_id)
        elif t is AdjustmentPending:
            self._adjustments.append(e.adjustment_id)
        elif t is Adjusted and e.adjustment_id:
            self._adjustments.remove(e.adjustment_id)
        elif t is AdminAction and e.action == "freeze":
            self._frozen.append(e.account)
        elif t is AdminAction and e.action == "unfreeze":
            self._frozen.remove(e.account)

    def _commands(self):
        for account in range(FIRST_USER_ACCOUNT, FIRST_USER_ACCOUNT + self.accounts):
            for asset in self.assets:
                yield Deposit(account, asset.name, self._funding[asset.name])
        for _ in range(self.prefill_count):
            yield self._next(prefill=True)
        while True:
            yield self._next(prefill=False)

    def _next_cid(self) -> str:
        self._cid += 1
        return f"c{self._cid}"

    def _next(self, prefill: bool):
        """One command.  Every step makes the same draws, whatever it becomes."""
        rng = self._rng.random
        i = self._step
        self._step += 1
        kind_u = rng()
        a = FIRST_USER_ACCOUNT + int(rng() * self.accounts)
        s = int(rng() * len(self._ms))
        sd = "buy" if rng() < 0.5 else "sell"
        market = self._ms[s]
        # distance from the mid: half-normal, mostly near the top of book, sometimes far
        u1, u2 = rng(), rng()
        off = int(market.offset_ticks * math.sqrt(-2.0 * math.log(1.0 - u1))
                  * abs(math.cos(2.0 * math.pi * u2))) + 1
        cross_u = rng()
        q = int(math.log(1.0 - rng()) / math.log(1.0 - 1.0 / market.lots_mean)) + 1   # geometric
        walk_u = rng()
        pick = rng()
        extra = self._rng.getrandbits(30)

        if self.sides_apart:      # buys from even account offsets, sells from odd ones
            k = a - FIRST_USER_ACCOUNT
            k -= k % 2
            if sd == "sell":
                k = k + 1 if k + 1 < self.accounts else k - 1
            a = FIRST_USER_ACCOUNT + k
        mid = self._mids[s]
        if walk_u < WALK_SHARE:
            mid = max(market.mid_ticks // 2, mid - 1)
        elif walk_u < 2 * WALK_SHARE:
            mid += 1
        self._mids[s] = mid
        kind = "prefill" if prefill else self._kinds[
            min(bisect_right(self._cum, kind_u * self._cum[-1]), len(self._kinds) - 1)]
        cross = cross_u < (MOVE_CROSS_SHARE if kind == "move" else GTC_CROSS_SHARE)
        symbol = self._symbols[s]
        ins = market.instrument
        engine = self.engine
        open_orders = self._open
        bid, ask = engine.top(symbol)
        price = _price(sd, mid, off, cross and kind != "prefill", bid, ask)
        stp = STP_MODES[extra & 3]
        variant = (extra >> 2) & 1
        if kind in ("cancel", "move", "reduce") and not open_orders.ids:
            kind = "gtc"
        elif kind == "cancel" and len(open_orders.ids) < self._book_floor:
            kind = "gtc"          # keep the book from draining: a thin book is not the workload
        if kind == "resume" and not self._halted[s]:
            kind = "gtc"
        if ((kind in ("approve", "reject") and not self._withdrawals)
                or (kind == "approve_adjustment" and not self._adjustments)
                or (kind == "unfreeze" and not self._frozen)
                or (kind == "dup_deposit" and self._last_deposit is None)):
            kind = "request"
        elif kind == "admin_cancel" and not open_orders.ids:
            kind = "gtc"

        if kind == "gtc" or kind == "prefill":
            return PlaceOrder(a, self._next_cid(), symbol, sd, price=price, qty=q)
        if kind in ("ioc", "fok"):
            aggressive = mid + off if sd == "buy" else max(1, mid - off)
            if kind == "ioc":
                return PlaceOrder(a, self._next_cid(), symbol, sd, tif="ioc", price=aggressive, qty=q)
            return PlaceOrder(a, self._next_cid(), symbol, sd, tif="fok", price=aggressive, qty=q,
                              stp=stp)
        if kind == "post_only":
            return PlaceOrder(a, self._next_cid(), symbol, sd, price=price, qty=q, post_only=True)
        if kind == "market":
            nu = self._notional_unit[s]
            if sd == "buy" and variant:
                return PlaceOrder(a, self._next_cid(), symbol, sd, type="market",
                                  quote_qty=q * mid * 3 * nu, stp=stp)
            if sd == "buy":
                return PlaceOrder(a, self._next_cid(), symbol, sd, type="market", price=mid + off,
                                  qty=q, stp=stp)
            return PlaceOrder(a, self._next_cid(), symbol, sd, type="market", qty=q, stp=stp)
        if kind in ("market_lots", "sweep"):
            return PlaceOrder(a, self._next_cid(), symbol, sd, type="market",
                              qty=q * SWEEP_LOTS if kind == "sweep" else q,
                              price=2 * mid if sd == "buy" else None)
        if kind == "stop":
            # buy stops above the mid, sell stops below: they trigger as the price walks
            stop_price = mid + off if sd == "buy" else max(1, mid - off)
            if variant:
                band = max(1, market.offset_ticks // 8)
                limit = stop_price + band if sd == "buy" else max(1, stop_price - band)
                return PlaceOrder(a, self._next_cid(), symbol, sd, type="stop_limit", price=limit,
                                  qty=q, stop_price=stop_price, tif=("gtc", "ioc")[(extra >> 3) & 1])
            if sd == "buy":
                return PlaceOrder(a, self._next_cid(), symbol, sd, type="stop_market",
                                  stop_price=stop_price,
                                  quote_qty=q * mid * 2 * self._notional_unit[s])
            return PlaceOrder(a, self._next_cid(), symbol, sd, type="stop_market",
                              stop_price=stop_price, qty=q)
        if kind == "cancel":
            oid = open_orders.pick(pick)
            return CancelOrder(open_orders.info[oid][0], order_id=oid)
        if kind == "move":
            oid = open_orders.pick(pick)
            owner, osym, oside, _, _ = open_orders.info[oid]
            if osym != symbol:
                bid, ask = engine.top(osym)
            m = self._mids[self._index[osym]]
            return ReplaceOrder(owner, oid, price=_price(oside, m, off, cross, bid, ask))
        if kind == "reduce":
            oid = open_orders.pick(pick)
            owner, _, _, _, oqty = open_orders.info[oid]
            return ReplaceOrder(owner, oid, qty=max(1, oqty // 2))
        asset = ins.quote if (extra >> 4) & 1 else ins.base
        if kind == "deposit":
            if self._money:
                self._last_deposit = (a, asset, q * self._unit[asset], f"d{i}")
            return Deposit(a, asset, q * self._unit[asset], ref=f"d{i}")
        if kind == "withdraw":
            return Withdraw(a, asset, q * self._unit[asset], ref=f"w{i}")
        if kind == "adjust":
            amount = max(1, q * self._unit[asset] // 1000) * (1 if (extra >> 5) & 1 else -1)
            target = SYSTEM_FEES if (extra >> 7) & 31 == 0 else a     # now and then
            return Adjust(target, asset, amount, ("ops-ann", "ops-bo")[(extra >> 6) & 1],
                          f"ticket-{i}")
        if kind == "halt":
            self._halted[s] = True
            return Halt(symbol)
        if kind == "resume":
            self._halted[s] = False
            return Resume(symbol)
        if kind == "invalid":
            return self._invalid(extra >> 12, i, a, symbol, sd, price, q, pick)
        return self._money_command(kind, i, a, symbol, asset, q, pick, extra)

    def _money_command(self, kind: str, i: int, a: int, symbol: str, asset: str, q: int,
                       pick: float, extra: int):
        """A money-control command of the ``money`` mix, from the step's draws."""
        admin = ("ops-ann", "ops-bo")[(extra >> 6) & 1]
        amount = q * self._unit[asset]
        if kind == "request":
            return RequestWithdrawal(a, asset, amount, ref=f"r{i}" if (extra >> 5) & 1 else "")
        if kind == "approve":
            return ApproveWithdrawal(self._withdrawals[int(pick * len(self._withdrawals))], admin)
        if kind == "reject":
            return RejectWithdrawal(self._withdrawals[int(pick * len(self._withdrawals))], admin,
                                    f"ticket-{i}")
        if kind == "dup_deposit":       # a deposit sent twice: the second is a duplicate_ref
            return Deposit(*self._last_deposit)
        if kind == "clock":             # 1 to 8 hours on: days roll over now and then
            self._now += (1 + (extra >> 8) % 8) * HOUR_NS
            return Clock(self._now)
        if kind == "set_tier":
            return SetAccountTier(a, MONEY_TIERS[(extra >> 8) % 3], admin)
        if kind == "freeze":
            return FreezeAccount(a, admin, f"ticket-{i}", cancel_orders=bool((extra >> 2) & 1))
        if kind == "unfreeze":
            return UnfreezeAccount(self._frozen[int(pick * len(self._frozen))], admin,
                                   f"ticket-{i}")
        if kind == "cancel_all":
            return CancelAll(a, symbol=symbol if (extra >> 2) & 1 else None,
                             admin=admin if (extra >> 5) & 1 else "")
        if kind == "admin_cancel":
            oid = self._open.pick(pick)
            return CancelOrder(self._open.info[oid][0], order_id=oid, admin=admin)
        if kind == "big_adjust":
            return Adjust(a, asset, amount * (1 if (extra >> 5) & 1 else -1), admin, f"ticket-{i}")
        if kind == "approve_adjustment":
            return ApproveAdjustment(self._adjustments[int(pick * len(self._adjustments))], admin)
        raise AssertionError(kind)  # pragma: no cover

    def _invalid(self, v: int, i: int, a: int, symbol: str, sd: str, price: int, q: int, pick: float):
        """A command the engine rejects (mostly: a cancel may name the caller's own order)."""
        v %= 8
        if v == 7:                                             # already halted / not halted
            return Halt(symbol) if self._halted[self._index[symbol]] else Resume(symbol)
        if v == 0:
            return Withdraw(a, "USDT", 10**18, ref=f"xw{i}")   # more than anyone has
        if v == 1:
            return Deposit(a, "DOGE", 5, ref=f"xd{i}")         # unknown asset
        if v == 2:
            return PlaceOrder(SYSTEM_FEES, self._next_cid(), symbol, sd, price=price, qty=q)
        if v == 3:
            return PlaceOrder(a, self._next_cid(), symbol, sd, price=0, qty=q)
        if v == 4:
            return PlaceOrder(a, self._next_cid(), "NOPE-USDT", sd, price=price, qty=q)
        oid = self._open.pick(pick) if self._open.ids else 10**9    # mostly someone else's
        if v == 5:
            return CancelOrder(a, order_id=oid)
        return ReplaceOrder(a, oid, qty=1)


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


def generate(mix: str = "exchange_core", n: int = 100_000, seed: int = 1,
             accounts: int | None = None, symbols: int | None = None, prefill: int | None = None,
             oracle_book: str = "auto", markets: str | None = None,
             sides_apart: bool | None = None) -> list:
    """The setup (deposits, then ``prefill`` resting GTC orders per symbol),
    then ``n`` commands of the mix, run on an oracle engine of its own."""
    flow = Flow(mix, seed, accounts=accounts, symbols=symbols, prefill=prefill, markets=markets,
                oracle_book=oracle_book, sides_apart=sides_apart)
    return [cmd for cmd, _ in flow.stream(flow.setup_count + n)]


def run(seed: int, n: int, engine=None, mix: str = "ledger", **options):
    """(engine, per-command event lists) for the first ``n`` commands (setup
    included) of ``Flow(mix, seed, **options)`` on ``engine``, by default
    ``new_engine()`` on the flow's markets."""
    if engine is None:
        _, d_symbols, _, d_markets = _DEFAULTS.get(mix, _DEFAULT)
        engine = new_engine(options.get("markets") or d_markets, options.get("symbols") or d_symbols,
                            mix=mix)
    flow = Flow(mix, seed, engine=engine, **options)
    return engine, [events for _, events in flow.stream(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.flow", description=__doc__.splitlines()[0])
    ap.add_argument("--mix", default="exchange_core", choices=sorted(MIXES))
    ap.add_argument("-n", type=int, default=100_000, help="commands after the setup")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--accounts", type=int, help="default: the mix's")
    ap.add_argument("--symbols", type=int, help="default: the mix's")
    ap.add_argument("--prefill", type=int, help="per symbol; default: the mix's")
    ap.add_argument("--markets", choices=("usdt", "cross"), help="default: the mix's")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    cmds = generate(args.mix, args.n, args.seed, args.accounts, args.symbols, args.prefill,
                    markets=args.markets)
    dt = time.perf_counter() - t
    counts: dict[str, int] = {}
    for c in cmds:
        counts[type(c).__name__] = counts.get(type(c).__name__, 0) + 1
    print(f"{len(cmds):,} commands in {dt:.2f}s: "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
