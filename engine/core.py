"""The engine: one deterministic state machine over balances and books.

``Engine.submit(command) -> list[event]`` applies one command.  It is a pure
function of the engine state and the command: no clock, no randomness, no
I/O.  Every command (accepted or rejected) takes the next sequence number and
every event it causes carries that ``seq``; order and trade ids are assigned in
sequence.  Prices are ticks, quantities lots, amounts minor units (see
``engine.domain``).

Risk lives here: accepting an order locks what it may spend, every fill moves
exactly what was locked, and every balance change is a ``Transfer`` event.
Matching lives in the book (``engine.book`` or the Cython kernel); stop orders
wait here until the last trade price triggers them.

Bad input is answered with ``Rejected`` (reason strings in ``engine.reasons``)
before any state changes.  A broken invariant is a bug and raises.

This file is also compiled, unchanged, by Cython into ``engine._ccore`` (see
setup.py); ``engine.Engine`` is that compiled class when it is built.  Keep it
plain Python: the same source must run, and behave the same, both ways.
"""
from __future__ import annotations

import hashlib
import heapq
import os
from decimal import Decimal

import msgspec
from sortedcontainers import SortedList

from . import reasons as R
from .book import (BUY, FILL, MAKER_CANCELLED, MAKER_DECREMENTED, NO_BUDGET, SELL,
                   STP_CANCEL_BOTH, STP_CANCEL_NEWEST, STP_CANCEL_OLDEST, STP_DECREMENT,
                   TAKER_CANCELLED)
from .book import Book as PyBook
from .domain import BPS, DEFAULT_MAX_PRICE_TICKS, INT64_MAX, Asset, Instrument, _whole
from .ledger import (AVAILABLE, FIRST_USER_ACCOUNT, KIND_ADJUST, KIND_DEPOSIT, KIND_FEE, KIND_LOCK,
                     KIND_TRADE, KIND_UNLOCK, KIND_WITHDRAW, LOCKED, SYSTEM_FEES, SYSTEM_OUTSIDE)
from .messages import (Accepted, Adjust, Adjusted, CancelOrder, Cancelled, Deposit, Halt, Halted,
                       PlaceOrder, Rejected, ReplaceOrder, Replaced, Resume, Resumed, Trade,
                       Transfer, Triggered, Withdraw)

try:  # the optional Cython kernel, built from ext/ by setup.py
    from ._cbook import Book as CBook
except ImportError:  # pragma: no cover - depends on the build
    CBook = None

# "cython" when this module runs as engine._ccore, compiled from this source
CORE_IMPLEMENTATION = "cython" if __name__.rpartition(".")[2] == "_ccore" else "python"

ACCOUNT_MAX = INT64_MAX     # account ids are BIGINTs downstream (wire, ledger)
CLIENT_ORDER_ID_MAX = 64    # characters
REF_MAX = 256               # characters of ref, admin, reason
DEFAULT_MAX_OPEN_ORDERS = 1000
SNAPSHOT_VERSION = 2         # 2: a stop's type and time in force are their codes

# the valid words of a PlaceOrder's enumerated fields, each at the position of its code
_SIDE_NAMES = ("buy", "sell")                                   # BUY, SELL
_STP_NAMES = ("cancel_newest", "cancel_oldest", "cancel_both", "decrement")     # STP_*
_TYPE_NAMES = ("limit", "market", "stop_limit", "stop_market")  # TYPE_MARKET | TYPE_STOP bits
_TIF_NAMES = ("gtc", "ioc", "fok")                              # TIF_*
TYPE_MARKET, TYPE_STOP = 1, 2   # an order type's code is the sum of the bits it has
TIF_GTC, TIF_IOC, TIF_FOK = 0, 1, 2
assert (BUY, SELL) == (0, 1)
assert (STP_CANCEL_NEWEST, STP_CANCEL_OLDEST, STP_CANCEL_BOTH, STP_DECREMENT) == (0, 1, 2, 3)

# per resting order, opaque to the book: bit 0 post-only, bits 1-2 the STP mode
FLAG_POST_ONLY = 1


def _flags(post_only: bool, stp: int) -> int:
    return (FLAG_POST_ONLY if post_only else 0) | (stp << 1)


def _is_id(value) -> bool:
    return type(value) is int and 0 <= value <= INT64_MAX


def _word_code(word, words: tuple) -> int:
    """The position of ``word`` among ``words``, or -1 when it is none of them
    (or not a str).  Compared, not looked up: a decoded string is a new object
    whose hash nobody has computed yet, and hashing costs more than the
    comparisons."""
    if type(word) is str:
        text = word
        for i in range(len(words)):
            valid = words[i]
            if text == valid:
                return i
    return -1


def _is_text(value) -> bool:
    """A str that the wire, the journal and the ledger can all carry: no NUL
    (PostgreSQL text refuses it) and no lone surrogate (UTF-8 cannot encode
    it; only a command built in Python can hold one)."""
    if type(value) is not str:
        return False
    text = value
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _fields_as_read(c) -> dict:
    """The fields of a PlaceOrder, CancelOrder or ReplaceOrder, by name, read as
    the command handlers read them: the compiled core reads them from the
    struct's slots (engine/_commands.pxd), and engine/__init__.py checks that
    against getattr() before it uses the compiled core."""
    if type(c) is PlaceOrder:
        p = c
        return dict(account=p.account, client_order_id=p.client_order_id, symbol=p.symbol,
                    side=p.side, type=p.type, tif=p.tif, price=p.price, qty=p.qty,
                    quote_qty=p.quote_qty, stop_price=p.stop_price, post_only=p.post_only,
                    stp=p.stp)
    if type(c) is CancelOrder:
        x = c
        return dict(account=x.account, order_id=x.order_id, client_order_id=x.client_order_id,
                    admin=x.admin)
    if type(c) is ReplaceOrder:
        r = c
        return dict(account=r.account, order_id=r.order_id, price=r.price, qty=r.qty)
    raise TypeError(f"not a PlaceOrder, CancelOrder or ReplaceOrder: {type(c).__name__}")


def available_books() -> list[str]:
    """Book implementations importable here ("python" always)."""
    return ["python", "cython"] if CBook is not None else ["python"]


def default_book() -> str:
    """What ``book="auto"`` picks: the Cython kernel when built, unless
    EXCHANGE_PURE_PYTHON=1 forces the reference."""
    if os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0") or CBook is None:
        return "python"
    return "cython"


def _book_class(book: str):
    if book == "auto":
        book = default_book()
    if book == "python":
        return PyBook
    if book == "cython":
        if CBook is None:
            raise RuntimeError("book='cython' requested but engine._cbook is not built "
                               "(pip install -e . with Cython and a C compiler)")
        return CBook
    raise ValueError(f"book must be 'auto', 'python' or 'cython', not {book!r}")


# ================================================================ markets and fees
class Market:
    """An instrument resolved against its assets: every limit an exact int.

    Built once at engine load; refuses configurations that cannot be exact or
    could overflow int64.  Mutable state: ``halted`` and ``last_price``.
    """
    __slots__ = ("index", "instrument", "symbol", "base", "quote", "base_name", "quote_name",
                 "notional_unit", "base_unit", "min_qty", "max_qty", "max_price", "min_notional",
                 "maker_bps", "taker_bps", "reserve_bps", "halted", "last_price")

    def __init__(self, index: int, instrument: Instrument, asset_index: dict[str, int],
                 assets: list[Asset]):
        ins = instrument
        if ins.base not in asset_index or ins.quote not in asset_index:
            raise ValueError(f"{ins.symbol}: unknown asset {ins.base if ins.base not in asset_index else ins.quote}")
        base, quote = assets[asset_index[ins.base]], assets[asset_index[ins.quote]]
        self.index = index
        self.instrument = ins
        self.symbol = ins.symbol
        self.base = asset_index[ins.base]
        self.quote = asset_index[ins.quote]
        self.base_name = ins.base
        self.quote_name = ins.quote
        tick, lot = Decimal(ins.price_tick), Decimal(ins.qty_lot)
        self.notional_unit = _whole((tick * lot).scaleb(quote.scale),
                                    f"{ins.symbol}: price_tick*qty_lot in {quote.name} minor units")
        self.base_unit = _whole(lot.scaleb(base.scale), f"{ins.symbol}: qty_lot in {base.name} minor units")
        if self.notional_unit < 1 or self.base_unit < 1:
            raise ValueError(f"{ins.symbol}: tick and lot must be at least one minor unit")
        self.maker_bps = ins.maker_fee_bps
        self.taker_bps = ins.taker_fee_bps
        self.reserve_bps = max(ins.maker_fee_bps, ins.taker_fee_bps)
        # The largest notional an order may have: its buy reservation (notional
        # plus the worst-case fee) must fit in int64.
        notional_cap = INT64_MAX * BPS // (BPS + self.reserve_bps)
        qty_cap = INT64_MAX // self.base_unit
        max_price, max_qty = ins.max_price, ins.max_qty
        if max_price is None:
            per_lot = self.notional_unit * (max_qty if max_qty is not None else ins.min_qty)
            max_price = min(DEFAULT_MAX_PRICE_TICKS, notional_cap // per_lot)
        if max_qty is None:     # (max_price 0: no price fits, refused below)
            max_qty = min(qty_cap, notional_cap // max(1, max_price * self.notional_unit))
        if max_price < 1 or max_qty < ins.min_qty:
            raise ValueError(f"{ins.symbol}: no quantity in min_qty..max_qty fits int64 at max_price")
        if max_qty > qty_cap or max_price * max_qty * self.notional_unit > notional_cap:
            raise ValueError(f"{ins.symbol}: max_price * max_qty notional (plus fees) exceeds int64")
        self.max_price = max_price
        self.max_qty = max_qty
        self.min_qty = ins.min_qty
        self.min_notional = ins.min_notional
        self.halted = False
        self.last_price = 0          # 0: no trade yet


# ------------------------------------------------------------------ fees
# An order's fee state is the exact numerator sum(notional_i * bps_i) over its
# fills; the fee charged so far is ceil(numerator / BPS).  A fill is charged the
# difference, so rounding happens once on the cumulative amount and mixed maker
# and taker fills never cost more than the reservation at the larger rate.

def fee_charged(fee_numer: int) -> int:
    return -(-fee_numer // BPS)


def buy_reserve(price: int, qty: int, fee_numer: int, unit: int, reserve_bps: int) -> int:
    """Quote minor units a buy order must hold for ``qty`` more lots at ``price``:
    the notional plus the worst-case rise of its cumulative fee."""
    # notional + fee_charged(fee_numer + notional * reserve_bps) - fee_charged(fee_numer),
    # written out: this runs on every buy placed or moved
    bps = BPS
    notional = price * qty * unit
    if fee_numer == 0:
        # No fills yet (the usual case): notional + ceil(notional * reserve_bps / BPS),
        # with notional = q * BPS + r taken as q * reserve_bps + ceil(r * reserve_bps / BPS)
        # so that every term stays within int64 (q * reserve_bps <= notional, the sum is
        # the reservation, which the market's limits keep in int64, and the last
        # numerator is below BPS * BPS): the compiled core does this in C int64
        q = notional // bps
        return notional + q * reserve_bps + ((notional - q * bps) * reserve_bps + bps - 1) // bps
    wide = notional     # a Python int in the compiled core too: fee numerators are unbounded
    return wide - (-(fee_numer + wide * reserve_bps) // bps) + (-fee_numer // bps)


def budget_notional(budget: int, taker_bps: int) -> int:
    """The largest notional N with N + ceil(N * bps / BPS) <= budget."""
    return budget * BPS // (BPS + taker_bps)


class _Stop:
    """A stop order waiting for its trigger (kept here, not in the book);
    ``type`` and ``tif`` are their codes (positions in _TYPE_NAMES, _TIF_NAMES)."""
    __slots__ = ("order_id", "account", "market", "side", "type", "tif", "price", "qty",
                 "quote_qty", "stop_price", "stp", "client_order_id", "reserve")

    def as_row(self):
        return [self.order_id, self.account, self.market, self.side, self.type, self.tif,
                self.price, self.qty, self.quote_qty, self.stop_price, self.stp,
                self.client_order_id, self.reserve]


class _Account:
    """One account: its balances ([available, locked] per asset, flattened),
    how many orders it has open (resting or waiting stops), and the client
    order ids of those that have one."""
    __slots__ = ("bal", "open", "cids")

    def __init__(self, bal: list):
        self.bal = bal
        self.open = 0
        self.cids: dict[str, int] = {}


class _Taker:
    """An order while it matches: a new order, a triggered stop, or a resting
    order that lost priority on replace (``acct``: its account's state)."""
    __slots__ = ("order_id", "account", "acct", "side", "limit", "qty", "quote_only", "budget",
                 "locked", "fee_numer", "can_rest", "stp", "flags", "market_order")


class _Snapshot(msgspec.Struct, array_like=True):
    version: int
    assets: list[Asset]
    instruments: list[Instrument]
    max_open_orders: int
    seq: int
    next_order_id: int
    next_trade_id: int
    balances: list[tuple[int, list[int]]]
    markets: list[tuple[bool, int]]                   # (halted, last_price)
    orders: list[list[tuple[int, int, int, int, int, int, int, int]]]  # per market, priority order
    stops: list[list]                                 # _Stop rows, by order id
    client_order_ids: list[tuple[int, str]]           # (order_id, client_order_id)


class Engine:
    """In-memory matching engine.  See the module docstring and README."""

    def __init__(self, assets, instruments, *, book: str = "auto",
                 max_open_orders: int = DEFAULT_MAX_OPEN_ORDERS):
        assets = list(assets)
        instruments = list(instruments)
        if type(max_open_orders) is not int or not 1 <= max_open_orders <= INT64_MAX:
            raise ValueError("max_open_orders must be an int in 1..2**63-1")
        self.assets = assets
        self.instruments = instruments
        self.max_open_orders = max_open_orders
        self._asset_index: dict[str, int] = {}
        for i, a in enumerate(assets):
            if not isinstance(a, Asset):
                raise TypeError(f"assets must be Asset, got {a!r}")
            if a.name in self._asset_index:
                raise ValueError(f"duplicate asset {a.name}")
            self._asset_index[a.name] = i
        self._asset_names = [a.name for a in assets]
        self._markets: list[Market] = []
        self._market_by_symbol: dict[str, Market] = {}
        for i, ins in enumerate(instruments):
            if not isinstance(ins, Instrument):
                raise TypeError(f"instruments must be Instrument, got {ins!r}")
            if ins.symbol in self._market_by_symbol:
                raise ValueError(f"duplicate instrument {ins.symbol}")
            m = Market(i, ins, self._asset_index, assets)
            self._markets.append(m)
            self._market_by_symbol[ins.symbol] = m
        book_cls = _book_class(book)
        self.book_implementation = book_cls.implementation
        self.core_implementation = CORE_IMPLEMENTATION
        self._book = book_cls(len(self._markets))
        # account -> its balances, open order count and client order ids
        self._accounts: dict[int, _Account] = {}
        self._account(SYSTEM_OUTSIDE)
        self._account(SYSTEM_FEES)
        self._seq = 0
        self._next_order_id = 1
        self._next_trade_id = 1
        self._stops: dict[int, _Stop] = {}
        # per market: buy stops (stop_price, order_id) trigger when last >= stop,
        # sell stops when last <= stop
        self._buy_stops = [SortedList() for _ in self._markets]
        self._sell_stops = [SortedList() for _ in self._markets]
        # open orders' client ids, back from order id (forward: _Account.cids)
        self._order_cid: dict[int, str] = {}
        self._ev: list = []

    # ================================================================ public
    @property
    def seq(self) -> int:
        """Sequence number of the last command applied (0 before any)."""
        return self._seq

    def submit(self, command) -> list:
        """Apply one command; return the events it caused (all with its seq)."""
        self._seq += 1
        self._ev = ev = []
        kind = type(command)        # exact types: a subclass is not a command we know
        if kind is PlaceOrder:
            self._place(command)
        elif kind is CancelOrder:
            self._cancel(command)
        elif kind is ReplaceOrder:
            self._replace(command)
        elif kind is Deposit:
            self._deposit(command)
        elif kind is Withdraw:
            self._withdraw(command)
        elif kind is Adjust:
            self._adjust(command)
        elif kind is Halt:
            self._halt(command)
        elif kind is Resume:
            self._resume(command)
        else:
            ev.append(Rejected(self._seq, 0, "", R.INVALID_COMMAND))
        return ev

    def balance(self, account: int, asset: str) -> tuple[int, int]:
        """(available, locked) in minor units."""
        i = self._asset_index[asset]
        a = self._accounts.get(account)
        return (0, 0) if a is None else (a.bal[2 * i], a.bal[2 * i + 1])

    def depth(self, symbol: str, levels: int = 10):
        """(bids, asks): lists of (price_ticks, qty_lots), best first."""
        return self._book.depth(self._market_by_symbol[symbol].index, levels)

    def top(self, symbol: str) -> tuple[int, int]:
        """(best bid, best ask) in ticks; 0 for an empty side."""
        i = self._market_by_symbol[symbol].index
        return self._book.best_bid(i), self._book.best_ask(i)

    def last_price(self, symbol: str) -> int:
        """Price (ticks) of the last trade, 0 before the first."""
        return self._market_by_symbol[symbol].last_price

    def market(self, symbol: str) -> Market:
        """The resolved instrument (limits as exact ints, halted, last price)."""
        return self._market_by_symbol[symbol]

    def order(self, order_id: int):
        """An open order as a dict (resting or a waiting stop), else None."""
        stop = self._stops.get(order_id)
        if stop is not None:
            return {"order_id": order_id, "status": "stop", "account": stop.account,
                    "symbol": self._markets[stop.market].symbol, "side": _SIDE_NAMES[stop.side],
                    "type": _TYPE_NAMES[stop.type], "tif": _TIF_NAMES[stop.tif],
                    "price": stop.price, "qty": stop.qty, "stop_price": stop.stop_price,
                    "reserved": stop.reserve, "client_order_id": stop.client_order_id}
        rec = self._book.get(order_id)
        if rec is None:
            return None
        instrument, account, side, price, qty, fee_numer, flags = rec
        m = self._markets[instrument]
        return {"order_id": order_id, "status": "resting", "account": account,
                "symbol": m.symbol, "side": _SIDE_NAMES[side], "type": "limit", "tif": "gtc",
                "price": price, "qty": qty, "post_only": bool(flags & FLAG_POST_ONLY),
                "stp": _STP_NAMES[flags >> 1], "fee_numer": fee_numer,
                "reserved": self._resting_reserve(m, side, price, qty, fee_numer),
                "client_order_id": self._order_cid.get(order_id, "")}

    def open_orders(self, account: int) -> list:
        """The account's open orders (resting and waiting stops) as ``order()``
        dicts, by order id.  A walk over every book: for queries, not the hot path."""
        ids = [stop.order_id for stop in self._stops.values() if stop.account == account]
        for m in self._markets:
            for row in self._book.dump(m.index):
                if row[1] == account:
                    ids.append(row[0])
        ids.sort()
        return [self.order(order_id) for order_id in ids]

    def open_order_count(self, account: int) -> int:
        a = self._accounts.get(account)
        return 0 if a is None else a.open

    def accounts(self) -> list[int]:
        return sorted(self._accounts)

    # ============================================================ snapshot
    def snapshot(self) -> bytes:
        """The whole state as bytes (configuration included).  Deterministic:
        equal states give equal bytes, whichever book implementation runs."""
        orders = []
        for m in self._markets:
            rows = []
            for order_id, account, side, price, qty, fee_numer, flags in self._book.dump(m.index):
                fee_whole, fee_frac = divmod(fee_numer, BPS)
                rows.append((order_id, account, side, price, qty, fee_whole, fee_frac, flags))
            orders.append(rows)
        snap = _Snapshot(
            SNAPSHOT_VERSION, self.assets, self.instruments, self.max_open_orders, self._seq,
            self._next_order_id, self._next_trade_id,
            [(acct, list(a.bal)) for acct, a in sorted(self._accounts.items())],
            [(m.halted, m.last_price) for m in self._markets],
            orders,
            [self._stops[k].as_row() for k in sorted(self._stops)],
            sorted(self._order_cid.items()),
        )
        return msgspec.msgpack.encode(snap)

    @classmethod
    def restore(cls, data: bytes, *, book: str = "auto") -> "Engine":
        """A new Engine in exactly the state ``snapshot()`` captured (a
        classmethod: the snapshot carries the configuration)."""
        snap = msgspec.msgpack.decode(data, type=_Snapshot)
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snap.version} is not {SNAPSHOT_VERSION}")
        eng = cls(snap.assets, snap.instruments, book=book, max_open_orders=snap.max_open_orders)
        eng._seq = snap.seq
        eng._next_order_id = snap.next_order_id
        eng._next_trade_id = snap.next_trade_id
        eng._accounts = {acct: _Account(list(b)) for acct, b in snap.balances}
        for m, (halted, last_price) in zip(eng._markets, snap.markets):
            m.halted, m.last_price = halted, last_price
        cids = dict(snap.client_order_ids)
        for m, rows in zip(eng._markets, snap.orders):
            for order_id, account, side, price, qty, fee_whole, fee_frac, flags in rows:
                eng._book.add(m.index, order_id, account, side, price, qty,
                              fee_whole * BPS + fee_frac, flags)
                eng._register(order_id, eng._account(account), cids.get(order_id, ""))
        for row in snap.stops:
            stop = _Stop()
            (stop.order_id, stop.account, stop.market, stop.side, stop.type, stop.tif, stop.price,
             stop.qty, stop.quote_qty, stop.stop_price, stop.stp, stop.client_order_id,
             stop.reserve) = row
            eng._add_stop(stop)
            eng._register(stop.order_id, eng._account(stop.account), stop.client_order_id)
        return eng

    def state_hash(self) -> str:
        """Digest of the whole state: replay == live and restore == uninterrupted
        become one comparison."""
        return hashlib.blake2b(self.snapshot(), digest_size=16).hexdigest()

    # ============================================================ self-check
    def validate(self) -> None:
        """Slow walk over every invariant (tests call it after each command):
        per asset all buckets of all accounts sum to zero; nothing but account 0
        is negative; each account's locked equals what its open orders reserve;
        the book's own structure holds and no book is crossed."""
        self._book.validate()
        n_assets = len(self.assets)
        bals = {acct: x.bal for acct, x in self._accounts.items()}
        for acct, b in bals.items():
            assert len(b) == 2 * n_assets, (acct, b)
        for a in range(n_assets):
            total = sum(b[2 * a] + b[2 * a + 1] for b in bals.values())
            assert total == 0, f"{self._asset_names[a]} sums to {total}"
        for acct, b in bals.items():
            assert b[1::2] == [0] * n_assets or acct >= FIRST_USER_ACCOUNT, (acct, b)
            if acct == SYSTEM_OUTSIDE:
                continue
            assert min(b) >= 0, f"account {acct} negative: {b}"
        reserved: dict[tuple[int, int], int] = {}
        count: dict[int, int] = {}
        for m in self._markets:
            for order_id, account, side, price, qty, fee_numer, flags in self._book.dump(m.index):
                asset = m.quote if side == BUY else m.base
                key = (account, asset)
                reserved[key] = reserved.get(key, 0) + self._resting_reserve(
                    m, side, price, qty, fee_numer)
                count[account] = count.get(account, 0) + 1
            bid, ask = self._book.best_bid(m.index), self._book.best_ask(m.index)
            assert not (bid and ask and bid >= ask), f"{m.symbol} crossed {bid} >= {ask}"
        for stop in self._stops.values():
            m = self._markets[stop.market]
            key = (stop.account, m.quote if stop.side == BUY else m.base)
            reserved[key] = reserved.get(key, 0) + stop.reserve
            count[stop.account] = count.get(stop.account, 0) + 1
        for acct, b in bals.items():
            for a in range(n_assets):
                assert b[2 * a + 1] == reserved.get((acct, a), 0), \
                    f"account {acct} {self._asset_names[a]} locked {b[2 * a + 1]} != reserved {reserved.get((acct, a), 0)}"
        open_count = {acct: x.open for acct, x in self._accounts.items() if x.open}
        assert open_count == count, (open_count, count)
        assert sum(len(x.cids) for x in self._accounts.values()) == len(self._order_cid)
        for acct, x in self._accounts.items():
            for cid, oid in x.cids.items():
                assert self._order_cid.get(oid) == cid
                stop = self._stops.get(oid)
                rec = self._book.get(oid) if stop is None else None
                assert stop is not None or rec is not None, oid
                owner = stop.account if stop is not None else rec[1]
                assert owner == acct, (oid, owner, acct)

    # ============================================================ internals
    def _reject(self, account, client_order_id, reason, order_id=0):
        # echo the caller's ids only when they are ids we could have issued
        self._ev.append(Rejected(self._seq, account if _is_id(account) else 0,
                                 client_order_id if _is_text(client_order_id) else "",
                                 reason, order_id if _is_id(order_id) else 0))

    def _reject_amend(self, account: int, order_id: int, reason: str) -> None:
        """Reject a replace of one of the account's own open orders, naming its client id."""
        self._reject(account, self._order_cid.get(order_id, ""), reason, order_id)

    def _account(self, account: int) -> _Account:
        a = self._accounts.get(account)
        if a is None:
            a = self._accounts[account] = _Account([0] * (2 * len(self.assets)))
        return a

    def _transfer(self, asset: int, amount: int, source: int, sb: list, source_bucket: str,
                  target: int, tb: list, target_bucket: str, kind: str, order_id: int = 0,
                  trade_id: int = 0, ref: str = "") -> None:
        """Move ``amount`` from the source's bucket to the target's and record it
        (``sb``/``tb``: the source's and the target's balances, which the callers
        hold already; a bucket is ``AVAILABLE`` or ``LOCKED`` itself)."""
        assert amount > 0, amount
        si, ti = 2 * asset + (source_bucket is LOCKED), 2 * asset + (target_bucket is LOCKED)
        sb[si] -= amount
        tb[ti] += amount
        assert sb[si] >= 0 or source == SYSTEM_OUTSIDE, (source, asset, source_bucket, sb[si])
        self._ev.append(Transfer(self._seq, self._asset_names[asset], amount, source,
                                 source_bucket, target, target_bucket, kind, ref, order_id,
                                 trade_id, sb[si], tb[ti]))

    def _resting_reserve(self, m: Market, side: int, price: int, qty: int, fee_numer: int) -> int:
        if side == BUY:
            return buy_reserve(price, qty, fee_numer, m.notional_unit, m.reserve_bps)
        return qty * m.base_unit

    def _register(self, order_id: int, a: _Account, cid: str) -> None:
        a.open += 1
        if cid:
            a.cids[cid] = order_id
            self._order_cid[order_id] = cid

    def _close(self, order_id: int, a: _Account) -> None:
        """The order of account ``a`` is no longer open: forget its client id and count."""
        a.open -= 1
        if self._order_cid:
            cid = self._order_cid.pop(order_id, None)
            if cid is not None:
                del a.cids[cid]

    def _add_stop(self, stop: _Stop) -> None:
        self._stops[stop.order_id] = stop
        lst = self._buy_stops if stop.side == BUY else self._sell_stops
        lst[stop.market].add((stop.stop_price, stop.order_id))

    def _discard_stop(self, stop: _Stop) -> None:
        del self._stops[stop.order_id]
        lst = self._buy_stops if stop.side == BUY else self._sell_stops
        lst[stop.market].remove((stop.stop_price, stop.order_id))

    # ------------------------------------------------------------ orders
    def _place(self, c: PlaceOrder) -> None:
        account, cid = c.account, c.client_order_id
        if type(account) is not int or not FIRST_USER_ACCOUNT <= account <= ACCOUNT_MAX:
            return self._reject(account, cid, R.INVALID_ACCOUNT)
        if not _is_text(cid) or len(cid) > CLIENT_ORDER_ID_MAX:
            return self._reject(account, cid, R.INVALID_CLIENT_ORDER_ID)
        m = self._market_by_symbol.get(c.symbol) if type(c.symbol) is str else None
        if m is None:
            return self._reject(account, cid, R.UNKNOWN_SYMBOL)
        side = _word_code(c.side, _SIDE_NAMES)
        if side < 0:
            return self._reject(account, cid, R.INVALID_SIDE)
        otype, tif = c.type, c.tif
        type_code = _word_code(otype, _TYPE_NAMES)
        if type_code < 0:
            return self._reject(account, cid, R.INVALID_TYPE)
        is_market, is_stop = (type_code & TYPE_MARKET) != 0, (type_code & TYPE_STOP) != 0
        tif_code = _word_code(tif, _TIF_NAMES)
        if tif_code < 0:
            return self._reject(account, cid, R.INVALID_TIF)
        gtc, fok = tif_code == TIF_GTC, tif_code == TIF_FOK
        stp = _word_code(c.stp, _STP_NAMES)
        if stp < 0:
            return self._reject(account, cid, R.INVALID_STP)
        if m.halted:
            return self._reject(account, cid, R.HALTED)
        price, qty, quote_qty, stop_price, post_only = c.price, c.qty, c.quote_qty, c.stop_price, c.post_only
        if (type(post_only) is not bool
                or (post_only and (is_market or is_stop or not gtc))
                or (quote_qty is not None and (not is_market or side != BUY or fok))
                or (stop_price is not None and not is_stop)):
            return self._reject(account, cid, R.INVALID_COMBINATION)
        if is_market and side == BUY and quote_qty is None and price is None:
            return self._reject(account, cid, R.MARKET_BUY_WITHOUT_LIMIT)
        if (price is not None or not is_market) and (
                type(price) is not int or not 1 <= price <= m.max_price):
            return self._reject(account, cid, R.PRICE_OUT_OF_RANGE)
        if is_stop and (type(stop_price) is not int or not 1 <= stop_price <= m.max_price):
            return self._reject(account, cid, R.STOP_PRICE_OUT_OF_RANGE)
        if quote_qty is not None and (type(quote_qty) is not int or not 1 <= quote_qty <= INT64_MAX):
            return self._reject(account, cid, R.QUOTE_QTY_OUT_OF_RANGE)
        quote_only = quote_qty is not None and type(qty) is int and qty == 0
        if not quote_only and (type(qty) is not int or not m.min_qty <= qty <= m.max_qty):
            return self._reject(account, cid, R.QTY_OUT_OF_RANGE)
        if m.min_notional:
            if quote_qty is not None:
                notional = quote_qty
            elif price is not None:
                notional = price * qty * m.notional_unit
            else:
                notional = m.min_notional   # a market sell without a floor: its price is not known
            if notional < m.min_notional:
                return self._reject(account, cid, R.BELOW_MIN_NOTIONAL)
        acct = self._accounts.get(account)
        if cid and acct is not None and cid in acct.cids:
            return self._reject(account, cid, R.DUPLICATE_CLIENT_ORDER_ID)
        may_rest = is_stop or (not is_market and gtc)
        if may_rest and acct is not None and acct.open >= self.max_open_orders:
            return self._reject(account, cid, R.TOO_MANY_OPEN_ORDERS)
        if post_only and self._book.crosses(m.index, side, price):
            return self._reject(account, cid, R.POST_ONLY_WOULD_TRADE)
        # risk: what the order may spend
        if side == SELL:
            asset, reserve = m.base, qty * m.base_unit
        elif quote_qty is not None:
            asset, reserve = m.quote, quote_qty
        else:
            asset, reserve = m.quote, buy_reserve(price, qty, 0, m.notional_unit, m.reserve_bps)
        if acct is None or acct.bal[2 * asset] < reserve:
            return self._reject(account, cid, R.INSUFFICIENT_FUNDS)
        if fok and not is_stop and not self._book.can_fill(
                m.index, side, (price if price is not None else (INT64_MAX if side == BUY else 1)),
                qty, account, stp):
            return self._reject(account, cid, R.FOK_UNFILLABLE)

        # accepted
        order_id = self._next_order_id
        self._next_order_id = order_id + 1
        self._ev.append(Accepted(self._seq, order_id, account, cid, m.symbol, c.side, price,
                                 0 if quote_only else qty))
        b = acct.bal
        self._transfer(asset, reserve, account, b, AVAILABLE, account, b, LOCKED, KIND_LOCK,
                       order_id)
        self._register(order_id, acct, cid)
        if is_stop:
            stop = _Stop()
            stop.order_id, stop.account, stop.market, stop.side = order_id, account, m.index, side
            stop.type, stop.tif, stop.price, stop.qty = type_code, tif_code, price, qty
            stop.quote_qty, stop.stop_price, stop.stp = quote_qty, stop_price, stp
            stop.client_order_id, stop.reserve = cid, reserve
            self._add_stop(stop)
        elif not is_market and gtc and self._book.rest(
                m.index, order_id, account, side, price, qty, 0, _flags(post_only, stp)):
            return      # rested whole: nothing to match, no price can move
        else:
            t = _Taker()
            t.order_id, t.account, t.acct, t.side, t.qty = order_id, account, acct, side, qty
            t.locked, t.fee_numer, t.stp, t.flags = reserve, 0, stp, _flags(post_only, stp)
            self._set_limits(t, m, is_market, gtc, price, quote_qty)
            self._take(m, t)
        if self._stops:
            self._run_stops(m)

    def _set_limits(self, t: _Taker, m: Market, is_market: bool, gtc: bool, price, quote_qty):
        t.market_order = is_market
        t.can_rest = not is_market and gtc
        if price is not None:
            t.limit = price
        else:
            t.limit = INT64_MAX if t.side == BUY else 1
        t.quote_only = quote_qty is not None and t.qty == 0
        if t.quote_only:
            t.qty = INT64_MAX
        t.budget = NO_BUDGET if quote_qty is None else budget_notional(quote_qty, m.taker_bps)

    def _take(self, m: Market, t: _Taker) -> None:
        """Match ``t`` against the book, settle every fill, then rest or end it.
        The caller runs ``_run_stops`` afterwards: fills may have moved the price."""
        book = self._book
        records = book.match(m.index, t.side, t.limit, t.qty, t.budget, m.notional_unit,
                             t.account, t.stp)
        if not records and t.can_rest:
            # nothing crossed: it rests whole, holding exactly the reserve it was given
            book.add(m.index, t.order_id, t.account, t.side, t.limit, t.qty, t.fee_numer, t.flags)
            return
        stp_ended = self._settle(m, t, records) if records else False
        seq, account, order_id, taker_buys = self._seq, t.account, t.order_id, t.side == BUY
        # the rest of the order: rest it, or end it and release everything
        if t.qty and t.can_rest and not stp_ended:
            book.add(m.index, order_id, account, t.side, t.limit, t.qty, t.fee_numer, t.flags)
            keep = self._resting_reserve(m, t.side, t.limit, t.qty, t.fee_numer)
        else:
            if t.qty and (stp_ended or not t.quote_only or t.locked):
                self._ev.append(Cancelled(seq, order_id, account, 0 if t.quote_only else t.qty,
                                          R.CANCEL_STP if stp_ended else R.CANCEL_IOC))
            self._close(order_id, t.acct)
            keep = 0
        release = t.locked - keep
        assert release >= 0, (release, t.locked, keep)
        if release:
            b = t.acct.bal
            self._transfer(m.quote if taker_buys else m.base, release, account, b, LOCKED, account,
                           b, AVAILABLE, KIND_UNLOCK, order_id)

    def _settle(self, m: Market, t: _Taker, records) -> bool:
        """Apply the book's records for taker ``t``: trades with their transfers
        and fees, and self-trade prevention.  Returns True when STP ended ``t``."""
        seq, ev, book = self._seq, self._ev, self._book
        unit, base_unit = m.notional_unit, m.base_unit
        maker_bps, taker_bps, reserve_bps = m.maker_bps, m.taker_bps, m.reserve_bps
        taker_buys = t.side == BUY
        side_name = _SIDE_NAMES[t.side]
        account, order_id = t.account, t.order_id
        accounts, taker_bal = self._accounts, t.acct.bal
        fees = accounts[SYSTEM_FEES].bal
        stp_ended = False
        for kind, maker_id, maker_account, price, qty, maker_left, maker_numer, maker_flags in records:
            if kind != TAKER_CANCELLED:
                maker = accounts[maker_account]
            if kind == FILL:
                trade_id = self._next_trade_id
                self._next_trade_id = trade_id + 1
                notional = price * qty * unit
                base_amount = qty * base_unit
                taker_numer = t.fee_numer + notional * taker_bps
                taker_fee = fee_charged(taker_numer) - fee_charged(t.fee_numer)
                t.fee_numer = taker_numer
                new_maker_numer = maker_numer + notional * maker_bps
                maker_fee = fee_charged(new_maker_numer) - fee_charged(maker_numer)
                t.qty -= qty
                # each leg names the order whose lock it draws on: an order's
                # transfers (order_id) are its whole history
                if taker_buys:
                    buyer, seller, buyer_fee, seller_fee = account, maker_account, taker_fee, maker_fee
                    buyer_bal, seller_bal = taker_bal, maker.bal
                    buy_order, sell_order = order_id, maker_id
                    t.locked -= notional + taker_fee
                else:
                    buyer, seller, buyer_fee, seller_fee = maker_account, account, maker_fee, taker_fee
                    buyer_bal, seller_bal = maker.bal, taker_bal
                    buy_order, sell_order = maker_id, order_id
                    t.locked -= base_amount
                ev.append(Trade(seq, trade_id, m.symbol, price, qty, maker_id, order_id,
                                maker_account, account, side_name, maker_fee, taker_fee,
                                maker_left, 0 if t.quote_only else t.qty))
                self._transfer(m.base, base_amount, seller, seller_bal, LOCKED, buyer, buyer_bal,
                               AVAILABLE, KIND_TRADE, sell_order, trade_id)
                self._transfer(m.quote, notional, buyer, buyer_bal, LOCKED, seller, seller_bal,
                               AVAILABLE, KIND_TRADE, buy_order, trade_id)
                if buyer_fee:
                    self._transfer(m.quote, buyer_fee, buyer, buyer_bal, LOCKED, SYSTEM_FEES, fees,
                                   AVAILABLE, KIND_FEE, buy_order, trade_id)
                if seller_fee:
                    self._transfer(m.quote, seller_fee, seller, seller_bal, AVAILABLE, SYSTEM_FEES,
                                   fees, AVAILABLE, KIND_FEE, sell_order, trade_id)
                if not taker_buys:
                    # the maker buyer held the worst-case fee; release what it did not cost
                    release = (buy_reserve(price, qty + maker_left, maker_numer, unit, reserve_bps)
                               - notional - maker_fee
                               - buy_reserve(price, maker_left, new_maker_numer, unit, reserve_bps))
                    assert release >= 0, release
                    if release:
                        self._transfer(m.quote, release, maker_account, maker.bal, LOCKED,
                                       maker_account, maker.bal, AVAILABLE, KIND_UNLOCK, maker_id,
                                       trade_id)
                if maker_left:
                    if new_maker_numer != maker_numer:
                        book.set_fee(maker_id, new_maker_numer)
                else:
                    self._close(maker_id, maker)
                m.last_price = price
            elif kind == MAKER_CANCELLED:
                self._release_resting(m, maker_id, maker_account, maker.bal, not taker_buys, price,
                                      qty, maker_numer, 0)
                ev.append(Cancelled(seq, maker_id, maker_account, qty, R.CANCEL_STP))
                self._close(maker_id, maker)
            elif kind == MAKER_DECREMENTED:
                self._release_resting(m, maker_id, maker_account, maker.bal, not taker_buys, price,
                                      qty + maker_left, maker_numer, maker_left)
                if maker_left:
                    ev.append(Replaced(seq, maker_id, maker_account, price, maker_left, True))
                else:
                    ev.append(Cancelled(seq, maker_id, maker_account, qty, R.CANCEL_STP))
                    self._close(maker_id, maker)
                t.qty -= qty
                if t.qty:
                    ev.append(Replaced(seq, order_id, account, 0 if t.market_order else t.limit,
                                       0 if t.quote_only else t.qty, True))
                else:
                    ev.append(Cancelled(seq, order_id, account, qty, R.CANCEL_STP))
            else:
                assert kind == TAKER_CANCELLED, kind
                stp_ended = True
        return stp_ended

    def _release_resting(self, m: Market, order_id: int, account: int, bal: list, buys: bool,
                         price: int, qty_before: int, fee_numer: int, qty_after: int) -> None:
        """Unlock what a resting order reserved for the lots it no longer has."""
        if buys:
            amount = (buy_reserve(price, qty_before, fee_numer, m.notional_unit, m.reserve_bps)
                      - buy_reserve(price, qty_after, fee_numer, m.notional_unit, m.reserve_bps))
            asset = m.quote
        else:
            amount = (qty_before - qty_after) * m.base_unit
            asset = m.base
        if amount:
            self._transfer(asset, amount, account, bal, LOCKED, account, bal, AVAILABLE,
                           KIND_UNLOCK, order_id)

    def _run_stops(self, m: Market) -> None:
        """Trigger every stop the last trade price has reached, earliest
        accepted first, until none is left (a triggered stop may trade and move
        the price again)."""
        buy_stops, sell_stops = self._buy_stops[m.index], self._sell_stops[m.index]
        if not (buy_stops or sell_stops) or m.last_price == 0 or m.halted:
            return
        ready: list[int] = []
        while True:
            last = m.last_price
            while buy_stops and buy_stops[0][0] <= last:
                heapq.heappush(ready, buy_stops.pop(0)[1])
            while sell_stops and sell_stops[-1][0] >= last:
                heapq.heappush(ready, sell_stops.pop()[1])
            if not ready:
                return
            stop = self._stops.pop(heapq.heappop(ready))
            self._ev.append(Triggered(self._seq, stop.order_id, stop.account))
            t = _Taker()
            t.order_id, t.account, t.side, t.qty = stop.order_id, stop.account, stop.side, stop.qty
            t.acct = acct = self._accounts[stop.account]
            t.locked, t.fee_numer, t.stp, t.flags = stop.reserve, 0, stop.stp, _flags(False, stop.stp)
            is_market = (stop.type & TYPE_MARKET) != 0
            self._set_limits(t, m, is_market, stop.tif == TIF_GTC, stop.price, stop.quote_qty)
            if stop.tif == TIF_FOK and not self._book.can_fill(m.index, t.side, t.limit, t.qty,
                                                             t.account, t.stp):
                self._ev.append(Cancelled(self._seq, t.order_id, t.account, t.qty, R.CANCEL_FOK))
                self._close(t.order_id, acct)
                self._transfer(m.quote if t.side == BUY else m.base, t.locked, t.account, acct.bal,
                               LOCKED, t.account, acct.bal, AVAILABLE, KIND_UNLOCK, t.order_id)
                continue
            self._take(m, t)

    def _cancel(self, c: CancelOrder) -> None:
        account, order_id, cid = c.account, c.order_id, c.client_order_id
        if not _is_id(account):
            return self._reject(account, cid, R.INVALID_ACCOUNT)
        if order_id is None:
            if cid is None:
                return self._reject(account, "", R.INVALID_COMBINATION)
            if type(cid) is not str:
                return self._reject(account, "", R.INVALID_CLIENT_ORDER_ID)
            acct = self._accounts.get(account)
            order_id = acct.cids.get(cid) if acct is not None else None
            if order_id is None:
                return self._reject(account, cid, R.UNKNOWN_ORDER)
        elif type(order_id) is not int:
            return self._reject(account, cid, R.UNKNOWN_ORDER)
        stop = self._stops.get(order_id)
        if stop is not None and stop.account == account:
            m = self._markets[stop.market]
            acct = self._accounts[account]
            self._discard_stop(stop)
            self._ev.append(Cancelled(self._seq, order_id, account, stop.qty, R.CANCEL_USER))
            self._close(order_id, acct)
            self._transfer(m.quote if stop.side == BUY else m.base, stop.reserve, account,
                           acct.bal, LOCKED, account, acct.bal, AVAILABLE, KIND_UNLOCK, order_id)
            return
        rec = self._book.get(order_id)
        if rec is None or rec[1] != account:
            return self._reject(account, cid, R.UNKNOWN_ORDER, order_id)
        instrument, _, side, price, qty, fee_numer, _ = self._book.remove(order_id)
        m = self._markets[instrument]
        acct = self._accounts[account]
        self._ev.append(Cancelled(self._seq, order_id, account, qty, R.CANCEL_USER))
        self._close(order_id, acct)
        self._release_resting(m, order_id, account, acct.bal, side == BUY, price, qty, fee_numer, 0)

    def _replace(self, c: ReplaceOrder) -> None:
        account, order_id, new_price, new_qty = c.account, c.order_id, c.price, c.qty
        if not _is_id(account):
            return self._reject(account, "", R.INVALID_ACCOUNT)
        if type(order_id) is not int:
            return self._reject(account, "", R.UNKNOWN_ORDER)
        if self._stops:
            stop = self._stops.get(order_id)
            if stop is not None and stop.account == account:
                return self._reject_amend(account, order_id, R.ORDER_NOT_REPLACEABLE)
        rec = self._book.get(order_id)
        if rec is None or rec[1] != account:
            return self._reject(account, "", R.UNKNOWN_ORDER, order_id)
        instrument, _, side, price, qty, fee_numer, flags = rec
        m = self._markets[instrument]
        if m.halted:
            return self._reject_amend(account, order_id, R.HALTED)
        if new_price is None:
            if new_qty is None:
                return self._reject_amend(account, order_id, R.INVALID_COMBINATION)
            new_price = price
        elif type(new_price) is not int or not 1 <= new_price <= m.max_price:
            return self._reject_amend(account, order_id, R.PRICE_OUT_OF_RANGE)
        if new_qty is None:
            new_qty = qty
        elif type(new_qty) is not int or not m.min_qty <= new_qty <= m.max_qty:
            return self._reject_amend(account, order_id, R.QTY_OUT_OF_RANGE)
        if m.min_notional and new_price * new_qty * m.notional_unit < m.min_notional:
            return self._reject_amend(account, order_id, R.BELOW_MIN_NOTIONAL)
        seq, buys = self._seq, side == BUY
        acct = self._accounts[account]
        b = acct.bal
        if new_price == price and new_qty <= qty:
            # smaller (or equal) at the same price: keeps its place in the queue
            if new_qty < qty:
                self._book.reduce(order_id, new_qty)
            self._ev.append(Replaced(seq, order_id, account, price, new_qty, True))
            self._release_resting(m, order_id, account, b, buys, price, qty, fee_numer, new_qty)
            return
        if flags & FLAG_POST_ONLY and self._book.crosses(instrument, side, new_price):
            return self._reject_amend(account, order_id, R.POST_ONLY_WOULD_TRADE)
        if buys:
            unit, bps = m.notional_unit, m.reserve_bps
            new_reserve = buy_reserve(new_price, new_qty, fee_numer, unit, bps)
            extra = new_reserve - buy_reserve(price, qty, fee_numer, unit, bps)
            asset = m.quote
        else:
            new_reserve = new_qty * m.base_unit
            extra = new_reserve - qty * m.base_unit
            asset = m.base
        if extra > b[2 * asset]:
            return self._reject_amend(account, order_id, R.INSUFFICIENT_FUNDS)
        self._ev.append(Replaced(seq, order_id, account, new_price, new_qty, False))
        if extra > 0:
            self._transfer(asset, extra, account, b, AVAILABLE, account, b, LOCKED, KIND_LOCK,
                           order_id)
        elif extra < 0:
            self._transfer(asset, -extra, account, b, LOCKED, account, b, AVAILABLE, KIND_UNLOCK,
                           order_id)
        if self._book.move(order_id, new_price, new_qty):
            return          # rests at the back of its new level
        # it crosses at the new price: off the book, it matches like a new order
        t = _Taker()
        t.order_id, t.account, t.side, t.qty, t.limit = order_id, account, side, new_qty, new_price
        t.acct = acct
        t.locked, t.fee_numer, t.stp, t.flags = new_reserve, fee_numer, flags >> 1, flags
        t.quote_only, t.budget, t.can_rest, t.market_order = False, NO_BUDGET, True, False
        self._take(m, t)
        if self._stops:
            self._run_stops(m)

    # ------------------------------------------------------------ money in and out
    def _money_args(self, c, min_account: int):
        """Validate account/asset/amount/ref; returns (asset index, balances) or None."""
        account, amount = c.account, c.amount
        if type(account) is not int or not min_account <= account <= ACCOUNT_MAX:
            self._reject(account, "", R.INVALID_ACCOUNT)
            return None
        asset = self._asset_index.get(c.asset) if type(c.asset) is str else None
        if asset is None:
            self._reject(account, "", R.UNKNOWN_ASSET)
            return None
        if type(amount) is not int or amount == 0 or (amount < 0 and not isinstance(c, Adjust)):
            self._reject(account, "", R.INVALID_AMOUNT)
            return None
        return asset, self._account(account).bal

    def _supply_room(self, asset: int) -> int:
        """How much more of an asset may enter: total supply stays <= int64 max,
        so no balance anywhere can overflow."""
        return INT64_MAX + self._accounts[SYSTEM_OUTSIDE].bal[2 * asset]

    def _deposit(self, c: Deposit) -> None:
        if not _is_text(c.ref) or len(c.ref) > REF_MAX:
            return self._reject(c.account, "", R.INVALID_REF)
        args = self._money_args(c, FIRST_USER_ACCOUNT)
        if args is None:
            return
        asset, b = args
        if c.amount > self._supply_room(asset):
            return self._reject(c.account, "", R.AMOUNT_OVERFLOW)
        self._transfer(asset, c.amount, SYSTEM_OUTSIDE, self._accounts[SYSTEM_OUTSIDE].bal,
                       AVAILABLE, c.account, b, AVAILABLE, KIND_DEPOSIT, 0, 0, c.ref)

    def _withdraw(self, c: Withdraw) -> None:
        if not _is_text(c.ref) or len(c.ref) > REF_MAX:
            return self._reject(c.account, "", R.INVALID_REF)
        args = self._money_args(c, SYSTEM_FEES)    # fees may be swept out of account 1
        if args is None:
            return
        asset, b = args
        if b[2 * asset] < c.amount:
            return self._reject(c.account, "", R.INSUFFICIENT_FUNDS)
        self._transfer(asset, c.amount, c.account, b, AVAILABLE, SYSTEM_OUTSIDE,
                       self._accounts[SYSTEM_OUTSIDE].bal, AVAILABLE, KIND_WITHDRAW, 0, 0, c.ref)

    def _adjust(self, c: Adjust) -> None:
        for text in (c.admin, c.reason):
            if not _is_text(text) or not text or len(text) > REF_MAX:
                return self._reject(c.account, "", R.INVALID_REF)
        args = self._money_args(c, SYSTEM_FEES)
        if args is None:
            return
        asset, b = args
        amount = c.amount
        if amount > 0 and amount > self._supply_room(asset):
            return self._reject(c.account, "", R.AMOUNT_OVERFLOW)
        if amount < 0 and b[2 * asset] < -amount:
            return self._reject(c.account, "", R.INSUFFICIENT_FUNDS)
        before = b[2 * asset]
        self._ev.append(Adjusted(self._seq, c.account, c.asset, amount, c.admin, c.reason,
                                 before, before + amount))
        outside = self._accounts[SYSTEM_OUTSIDE].bal
        if amount > 0:
            self._transfer(asset, amount, SYSTEM_OUTSIDE, outside, AVAILABLE, c.account, b,
                           AVAILABLE, KIND_ADJUST, 0, 0, c.reason)
        else:
            self._transfer(asset, -amount, c.account, b, AVAILABLE, SYSTEM_OUTSIDE, outside,
                           AVAILABLE, KIND_ADJUST, 0, 0, c.reason)

    # ------------------------------------------------------------ instrument control
    def _halt(self, c: Halt) -> None:
        m = self._market_by_symbol.get(c.symbol) if type(c.symbol) is str else None
        if m is None:
            return self._reject(0, "", R.UNKNOWN_SYMBOL)
        if m.halted:
            return self._reject(0, "", R.ALREADY_HALTED)
        m.halted = True
        self._ev.append(Halted(self._seq, m.symbol))

    def _resume(self, c: Resume) -> None:
        m = self._market_by_symbol.get(c.symbol) if type(c.symbol) is str else None
        if m is None:
            return self._reject(0, "", R.UNKNOWN_SYMBOL)
        if not m.halted:
            return self._reject(0, "", R.NOT_HALTED)
        m.halted = False
        self._ev.append(Resumed(self._seq, m.symbol))
