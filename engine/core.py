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
from .domain import (BPS, DEFAULT_MAX_PRICE_TICKS, INT64_MAX, AccountTier, Asset, Instrument,
                     _whole)
from .ledger import (AVAILABLE, FIRST_USER_ACCOUNT, KIND_ADJUST, KIND_DEPOSIT, KIND_FEE, KIND_LOCK,
                     KIND_TRADE, KIND_UNLOCK, KIND_WITHDRAW, KIND_WITHDRAW_HOLD,
                     KIND_WITHDRAW_RELEASE, LOCKED, SYSTEM_FEES, SYSTEM_OUTSIDE)
from .messages import (Accepted, AdminAction, Adjust, Adjusted, AdjustmentPending,
                       ApproveAdjustment, ApproveWithdrawal, CancelAll, CancelOrder, Cancelled,
                       Clock, Clocked, Deposit, FreezeAccount, Halt, Halted, PendingAdjustment,
                       PendingWithdrawal, PlaceOrder, Rejected, RejectWithdrawal, ReplaceOrder,
                       Replaced, RequestWithdrawal, Resume, Resumed, SetAccountTier, Trade,
                       Transfer, Triggered, UnfreezeAccount, Withdraw, WithdrawalCompleted,
                       WithdrawalRejected, WithdrawalRequested)

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
SNAPSHOT_VERSION = 3         # 3: money controls (refs, tiers, holds, freezes, the clock)
DEFAULT_TIER = "default"     # the one implicit tier when Engine(tiers=None)
DAY_NS = 86_400_000_000_000  # a UTC day: withdrawal limits count per now_ns // DAY_NS
# ref namespaces: Deposit; Withdraw and RequestWithdrawal share one (both end in
# ``withdraw`` ledger rows)
REF_DEPOSIT, REF_WITHDRAW = "deposit", "withdraw"
_REF_NAMESPACES = {REF_DEPOSIT: "d", REF_WITHDRAW: "w"}     # their letter in a ref's key


def _ref_key(namespace: str, account: int, asset: int, ref: str) -> str:
    """One used ref as one string (unambiguous: only the ref, last, may hold a
    ':'); one string per ref costs less than a set per (account, asset)."""
    return f"{_REF_NAMESPACES[namespace]}{account}:{asset}:{ref}"

# the valid words of a PlaceOrder's enumerated fields, each at the position of its code
_SIDE_NAMES = ("buy", "sell")                                   # BUY, SELL
_STP_NAMES = ("cancel_newest", "cancel_oldest", "cancel_both", "decrement")     # STP_*
_TYPE_NAMES = ("limit", "market", "stop_limit", "stop_market")  # TYPE_MARKET | TYPE_STOP bits
_TIF_NAMES = ("gtc", "ioc", "fok")                              # TIF_*
TYPE_MARKET, TYPE_STOP = 1, 2   # an order type's code is the sum of the bits it has
TIF_GTC, TIF_IOC, TIF_FOK = 0, 1, 2
assert (BUY, SELL) == (0, 1)
assert (STP_CANCEL_NEWEST, STP_CANCEL_OLDEST, STP_CANCEL_BOTH, STP_DECREMENT) == (0, 1, 2, 3)

# per resting order, opaque to the book: bit 0 post-only, bits 1-2 the STP mode, bits
# 3 and up the placing account's tier code when it was accepted (the order's fee
# rates; 0 the default tier, so default-tier orders keep flags < 8)
FLAG_POST_ONLY = 1
FLAG_TIER_SHIFT = 3
FLAG_TIERED = 1 << FLAG_TIER_SHIFT      # flags >= this: not the default tier
TIERS_MAX = 1 << 20                     # tier codes: flags stay within the book's int32


def _flags(post_only: bool, stp: int, tier: int) -> int:
    flags = (FLAG_POST_ONLY if post_only else 0) | (stp << 1)
    if tier:
        flags |= tier << FLAG_TIER_SHIFT
    return flags


def _flags_stp(flags: int) -> int:
    return (flags >> 1) & 3


def _reserve_bps(m: Market, flags: int) -> int:
    """The reserve rate of an order with these flags (its tier's) on market ``m``."""
    if flags >= FLAG_TIERED:
        return m.fees[flags >> FLAG_TIER_SHIFT][2]
    return m.reserve_bps


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


def _is_ref(value, required: bool) -> bool:
    """A ``ref``, ``admin`` or ``reason``: text the ledger can carry (``_is_text``)
    of at most REF_MAX characters, and not empty when ``required``."""
    if not _is_text(value):
        return False
    text = value
    return len(text) <= REF_MAX and (len(text) > 0 or not required)


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


def _tier_rates(tier: AccountTier, ins: Instrument) -> tuple:
    """(maker_bps, taker_bps) of a tier's orders on an instrument."""
    fees = tier.symbol_fees.get(ins.symbol)
    if fees is not None:
        return fees[0], fees[1]
    maker, taker = tier.maker_fee_bps, tier.taker_fee_bps
    return (ins.maker_fee_bps if maker is None else maker,
            ins.taker_fee_bps if taker is None else taker)


def _decimal_text(amount: int, scale: int) -> str:
    """An amount of minor units as the asset's decimal, for people (audit records)."""
    return format(Decimal(amount).scaleb(-scale), "f")


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

    ``fees[tier]`` is (maker_bps, taker_bps, reserve_bps) of an account tier's
    orders here (``tier_rates``: (maker, taker) per tier code, None: the
    instrument's own for the one default tier); ``maker_bps``, ``taker_bps``
    and ``reserve_bps`` are the default tier's (code 0).  The limits keep a
    buy's reservation within int64 at the largest reserve rate of any tier.
    """
    __slots__ = ("index", "instrument", "symbol", "base", "quote", "base_name", "quote_name",
                 "notional_unit", "base_unit", "min_qty", "max_qty", "max_price", "min_notional",
                 "maker_bps", "taker_bps", "reserve_bps", "fees", "halted", "last_price")

    def __init__(self, index: int, instrument: Instrument, asset_index: dict[str, int],
                 assets: list[Asset], tier_rates=None):
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
        if tier_rates is None:
            tier_rates = [(ins.maker_fee_bps, ins.taker_fee_bps)]
        self.fees = [(maker, taker, max(maker, taker)) for maker, taker in tier_rates]
        self.maker_bps, self.taker_bps, self.reserve_bps = self.fees[0]
        # The largest notional an order may have: its buy reservation (notional
        # plus the worst-case fee, at any tier's rate) must fit in int64.
        notional_cap = INT64_MAX * BPS // (BPS + max(f[2] for f in self.fees))
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
    ``type`` and ``tif`` are their codes (positions in _TYPE_NAMES, _TIF_NAMES),
    ``tier`` the placing account's tier code when it was accepted."""
    __slots__ = ("order_id", "account", "market", "side", "type", "tif", "price", "qty",
                 "quote_qty", "stop_price", "stp", "client_order_id", "reserve", "tier")

    def as_row(self):
        return [self.order_id, self.account, self.market, self.side, self.type, self.tif,
                self.price, self.qty, self.quote_qty, self.stop_price, self.stp,
                self.client_order_id, self.reserve, self.tier]


class _Account:
    """One account: its balances ([available, locked] per asset, flattened),
    how many orders it has open (resting or waiting stops), the client order
    ids of those that have one, its tier code and whether it is frozen."""
    __slots__ = ("bal", "open", "cids", "tier", "frozen")

    def __init__(self, bal: list):
        self.bal = bal
        self.open = 0
        self.cids: dict[str, int] = {}
        self.tier = 0
        self.frozen = False


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
    # money controls: configuration, then state
    tiers: list[AccountTier]
    default_tier: str
    adjustment_approval_threshold: dict[str, int]
    now_ns: int
    next_withdrawal_id: int
    next_adjustment_id: int
    account_tiers: list[tuple[int, str]]              # accounts not in the default tier
    frozen: list[int]
    refs: list[tuple[str, int, str, str]]             # (namespace, account, asset, ref), sorted
    withdrawals: list[PendingWithdrawal]              # by id
    adjustments: list[PendingAdjustment]              # by id
    withdrawn_today: list[tuple[int, str, int]]       # (account, asset, amount) requested today


class Engine:
    """In-memory matching engine.  See the module docstring and README."""

    def __init__(self, assets, instruments, *, book: str = "auto",
                 max_open_orders: int = DEFAULT_MAX_OPEN_ORDERS, tiers=None,
                 default_tier: str = DEFAULT_TIER, adjustment_approval_threshold=None):
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
        self._init_tiers(tiers, default_tier, instruments)
        self._init_threshold(adjustment_approval_threshold)
        self._markets: list[Market] = []
        self._market_by_symbol: dict[str, Market] = {}
        for i, ins in enumerate(instruments):
            if not isinstance(ins, Instrument):
                raise TypeError(f"instruments must be Instrument, got {ins!r}")
            if ins.symbol in self._market_by_symbol:
                raise ValueError(f"duplicate instrument {ins.symbol}")
            m = Market(i, ins, self._asset_index, assets, [_tier_rates(t, ins) for t in self._tiers])
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
        # money controls (docs/engine.md "Money controls")
        self._now = 0               # ns, the last Clock
        self._day = 0               # self._now // DAY_NS
        # every ref used, as _ref_key(namespace, account, asset index, ref), kept for good
        self._refs: set[str] = set()
        self._withdrawals: dict[int, PendingWithdrawal] = {}
        self._adjustments: dict[int, PendingAdjustment] = {}
        self._next_withdrawal_id = 1
        self._next_adjustment_id = 1
        # (account, asset index) -> amount requested for withdrawal on self._day
        self._withdrawn_today: dict[tuple, int] = {}

    def _init_tiers(self, tiers, default_tier, instruments) -> None:
        """The tiers in code order: the default tier is code 0 (an order's
        flags keep its tier code, and default-tier orders take the fast paths)."""
        if tiers is None:
            tiers = [AccountTier(DEFAULT_TIER)]
        tiers = list(tiers)
        names: dict[str, AccountTier] = {}
        symbols = {ins.symbol for ins in instruments if isinstance(ins, Instrument)}
        for t in tiers:
            if not isinstance(t, AccountTier):
                raise TypeError(f"tiers must be AccountTier, got {t!r}")
            if t.name in names:
                raise ValueError(f"duplicate tier {t.name!r}")
            names[t.name] = t
            for symbol in t.symbol_fees:
                if symbol not in symbols:
                    raise ValueError(f"tier {t.name!r}: symbol_fees names unknown symbol {symbol!r}")
            for what in ("withdrawal_daily_limit", "withdrawal_auto_approve"):
                for asset in getattr(t, what):
                    if asset not in self._asset_index:
                        raise ValueError(f"tier {t.name!r}: {what} names unknown asset {asset!r}")
        if default_tier not in names:
            raise ValueError(f"default_tier {default_tier!r} is not one of the tiers "
                             f"({', '.join(repr(n) for n in names) or 'none given'})")
        if len(tiers) > TIERS_MAX:
            raise ValueError(f"at most {TIERS_MAX} tiers")
        self.tiers = tiers
        self.default_tier = default_tier
        self._tiers = [names[default_tier]] + [t for t in tiers if t.name != default_tier]
        self._tier_names = [t.name for t in self._tiers]
        self._tier_code = {name: code for code, name in enumerate(self._tier_names)}
        # per tier code, per asset index: the daily limit and the auto-approval
        # amount (-1: none)
        self._tier_limits = [[t.withdrawal_daily_limit.get(a, -1) for a in self._asset_names]
                             for t in self._tiers]
        self._tier_auto = [[t.withdrawal_auto_approve.get(a, -1) for a in self._asset_names]
                           for t in self._tiers]

    def _init_threshold(self, threshold) -> None:
        if threshold is None:
            threshold = {}
        if type(threshold) is not dict:
            raise ValueError("adjustment_approval_threshold must be a dict {asset: amount_minor}")
        for asset, amount in threshold.items():
            if asset not in self._asset_index:
                raise ValueError(f"adjustment_approval_threshold names unknown asset {asset!r}")
            if type(amount) is not int or not 0 <= amount <= INT64_MAX:
                raise ValueError(f"adjustment_approval_threshold[{asset!r}] must be an int in "
                                 f"0..2**63-1 (minor units): {amount!r}")
        self.adjustment_approval_threshold = dict(threshold)
        # per asset index: an Adjust of a larger magnitude waits for a second admin (-1: never)
        self._adjust_threshold = [threshold.get(a, -1) for a in self._asset_names]

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
        elif kind is RequestWithdrawal:
            self._request_withdrawal(command)
        elif kind is ApproveWithdrawal:
            self._approve_withdrawal(command)
        elif kind is RejectWithdrawal:
            self._reject_withdrawal(command)
        elif kind is CancelAll:
            self._cancel_all(command)
        elif kind is Clock:
            self._clock(command)
        elif kind is FreezeAccount:
            self._freeze(command)
        elif kind is UnfreezeAccount:
            self._unfreeze(command)
        elif kind is SetAccountTier:
            self._set_tier(command)
        elif kind is ApproveAdjustment:
            self._approve_adjustment(command)
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
                    "reserved": stop.reserve, "client_order_id": stop.client_order_id,
                    "tier": self._tier_names[stop.tier]}
        rec = self._book.get(order_id)
        if rec is None:
            return None
        instrument, account, side, price, qty, fee_numer, flags = rec
        m = self._markets[instrument]
        return {"order_id": order_id, "status": "resting", "account": account,
                "symbol": m.symbol, "side": _SIDE_NAMES[side], "type": "limit", "tif": "gtc",
                "price": price, "qty": qty, "post_only": bool(flags & FLAG_POST_ONLY),
                "stp": _STP_NAMES[_flags_stp(flags)], "fee_numer": fee_numer,
                "reserved": self._resting_reserve(m, side, price, qty, fee_numer, flags),
                "client_order_id": self._order_cid.get(order_id, ""),
                "tier": self._tier_names[flags >> FLAG_TIER_SHIFT]}

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

    # ------------------------------------------------------------ money controls
    @property
    def now(self) -> int:
        """The engine's time in ns since the Unix epoch (UTC): the last Clock, 0 before any."""
        return self._now

    def pending_withdrawals(self, account=None) -> list:
        """Requested withdrawals not yet approved or rejected (``PendingWithdrawal``),
        by id; of one account when given."""
        return [w for _, w in sorted(self._withdrawals.items())
                if account is None or w.account == account]

    def pending_adjustments(self) -> list:
        """Adjustments waiting for a second admin (``PendingAdjustment``), by id."""
        return [a for _, a in sorted(self._adjustments.items())]

    def account_tier(self, account: int) -> str:
        """The name of the account's tier (the default tier for an account never seen)."""
        a = self._accounts.get(account)
        return self._tier_names[0 if a is None else a.tier]

    def is_frozen(self, account: int) -> bool:
        a = self._accounts.get(account)
        return a is not None and a.frozen

    def withdrawn_today(self, account: int, asset: str) -> int:
        """Minor units of ``asset`` the account has requested to withdraw on the
        engine's current UTC day (rejected requests given back); its tier's
        daily limit applies to this plus a new request."""
        return self._withdrawn_today.get((account, self._asset_index[asset]), 0)

    def fee_rates(self, account: int, symbol: str) -> tuple[int, int]:
        """(maker_bps, taker_bps) the account's new orders on ``symbol`` pay now
        (its tier's; an order keeps the rates it was accepted at)."""
        a = self._accounts.get(account)
        fees = self._market_by_symbol[symbol].fees[0 if a is None else a.tier]
        return fees[0], fees[1]

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
            self.tiers, self.default_tier, self.adjustment_approval_threshold,
            self._now, self._next_withdrawal_id, self._next_adjustment_id,
            [(acct, self._tier_names[a.tier]) for acct, a in sorted(self._accounts.items())
             if a.tier],
            [acct for acct, a in sorted(self._accounts.items()) if a.frozen],
            self._ref_rows(),
            self.pending_withdrawals(),
            self.pending_adjustments(),
            [(acct, self._asset_names[asset], amount)
             for (acct, asset), amount in sorted(self._withdrawn_today.items())],
        )
        return msgspec.msgpack.encode(snap)

    @classmethod
    def restore(cls, data: bytes, *, book: str = "auto") -> "Engine":
        """A new Engine in exactly the state ``snapshot()`` captured (a
        classmethod: the snapshot carries the configuration)."""
        snap = msgspec.msgpack.decode(data, type=_Snapshot)
        if snap.version != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snap.version} is not {SNAPSHOT_VERSION}")
        eng = cls(snap.assets, snap.instruments, book=book, max_open_orders=snap.max_open_orders,
                  tiers=snap.tiers, default_tier=snap.default_tier,
                  adjustment_approval_threshold=snap.adjustment_approval_threshold)
        eng._seq = snap.seq
        eng._next_order_id = snap.next_order_id
        eng._next_trade_id = snap.next_trade_id
        eng._accounts = {acct: _Account(list(b)) for acct, b in snap.balances}
        eng._now = snap.now_ns
        eng._day = snap.now_ns // DAY_NS
        eng._next_withdrawal_id = snap.next_withdrawal_id
        eng._next_adjustment_id = snap.next_adjustment_id
        for acct, tier in snap.account_tiers:
            eng._account(acct).tier = eng._tier_code[tier]
        for acct in snap.frozen:
            eng._account(acct).frozen = True
        asset_index = eng._asset_index
        eng._refs = {_ref_key(ns, acct, asset_index[asset], ref)
                     for ns, acct, asset, ref in snap.refs}
        eng._withdrawals = {w.withdrawal_id: w for w in snap.withdrawals}
        eng._adjustments = {a.adjustment_id: a for a in snap.adjustments}
        eng._withdrawn_today = {(acct, asset_index[asset]): amount
                                for acct, asset, amount in snap.withdrawn_today}
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
             stop.reserve, stop.tier) = row
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
        is negative; each account's locked equals what its open orders reserve
        plus its pending withdrawals' holds; the book's own structure holds and
        no book is crossed; the money controls' records are consistent."""
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
                    m, side, price, qty, fee_numer, flags)
                count[account] = count.get(account, 0) + 1
                assert flags >> FLAG_TIER_SHIFT < len(self._tiers), (order_id, flags)
            bid, ask = self._book.best_bid(m.index), self._book.best_ask(m.index)
            assert not (bid and ask and bid >= ask), f"{m.symbol} crossed {bid} >= {ask}"
        for stop in self._stops.values():
            m = self._markets[stop.market]
            key = (stop.account, m.quote if stop.side == BUY else m.base)
            reserved[key] = reserved.get(key, 0) + stop.reserve
            count[stop.account] = count.get(stop.account, 0) + 1
            assert 0 <= stop.tier < len(self._tiers), (stop.order_id, stop.tier)
        for wid, w in self._withdrawals.items():
            assert w.withdrawal_id == wid < self._next_withdrawal_id, (wid, w)
            assert w.amount > 0, w
            assert w.account >= FIRST_USER_ACCOUNT and w.account in self._accounts, w
            key = (w.account, self._asset_index[w.asset])
            reserved[key] = reserved.get(key, 0) + w.amount
        for aid, adj in self._adjustments.items():
            assert adj.adjustment_id == aid < self._next_adjustment_id, (aid, adj)
            assert adj.amount != 0 and adj.asset in self._asset_index, adj
        assert self._day == self._now // DAY_NS, (self._day, self._now)
        for (acct, asset), amount in self._withdrawn_today.items():
            assert acct in self._accounts and amount >= 0, (acct, asset, amount)
        for ns, acct, asset, ref in self._ref_rows():
            assert ref and acct in self._accounts, (ns, acct, asset)
        for acct, x in self._accounts.items():
            assert 0 <= x.tier < len(self._tiers), (acct, x.tier)
            assert (x.tier == 0 and not x.frozen) or acct >= FIRST_USER_ACCOUNT, acct
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

    def _resting_reserve(self, m: Market, side: int, price: int, qty: int, fee_numer: int,
                         flags: int) -> int:
        if side == BUY:
            return buy_reserve(price, qty, fee_numer, m.notional_unit, _reserve_bps(m, flags))
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
        tier = 0
        if acct is not None:
            if acct.frozen:
                return self._reject(account, cid, R.ACCOUNT_FROZEN)
            tier = acct.tier
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
            asset, reserve = m.quote, buy_reserve(price, qty, 0, m.notional_unit,
                                                  m.fees[tier][2] if tier else m.reserve_bps)
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
            stop.client_order_id, stop.reserve, stop.tier = cid, reserve, tier
            self._add_stop(stop)
        elif not is_market and gtc and self._book.rest(
                m.index, order_id, account, side, price, qty, 0, _flags(post_only, stp, tier)):
            return      # rested whole: nothing to match, no price can move
        else:
            t = _Taker()
            t.order_id, t.account, t.acct, t.side, t.qty = order_id, account, acct, side, qty
            t.locked, t.fee_numer, t.stp, t.flags = reserve, 0, stp, _flags(post_only, stp, tier)
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
        t.budget = (NO_BUDGET if quote_qty is None
                    else budget_notional(quote_qty, m.fees[t.flags >> FLAG_TIER_SHIFT][1]))

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
            keep = self._resting_reserve(m, t.side, t.limit, t.qty, t.fee_numer, t.flags)
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
        # the taker's rates by its tier, each maker's by its own (in its flags)
        taker_bps = m.fees[t.flags >> FLAG_TIER_SHIFT][1] if t.flags >= FLAG_TIERED else m.taker_bps
        default_maker_bps, default_reserve_bps = m.maker_bps, m.reserve_bps
        taker_buys = t.side == BUY
        side_name = _SIDE_NAMES[t.side]
        account, order_id = t.account, t.order_id
        accounts, taker_bal = self._accounts, t.acct.bal
        fees = accounts[SYSTEM_FEES].bal
        stp_ended = False
        for kind, maker_id, maker_account, price, qty, maker_left, maker_numer, maker_flags in records:
            if kind != TAKER_CANCELLED:
                maker = accounts[maker_account]
            if maker_flags >= FLAG_TIERED:
                maker_bps, _, reserve_bps = m.fees[maker_flags >> FLAG_TIER_SHIFT]
            else:
                maker_bps, reserve_bps = default_maker_bps, default_reserve_bps
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
                                      qty, maker_numer, 0, maker_flags)
                ev.append(Cancelled(seq, maker_id, maker_account, qty, R.CANCEL_STP))
                self._close(maker_id, maker)
            elif kind == MAKER_DECREMENTED:
                self._release_resting(m, maker_id, maker_account, maker.bal, not taker_buys, price,
                                      qty + maker_left, maker_numer, maker_left, maker_flags)
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
                         price: int, qty_before: int, fee_numer: int, qty_after: int,
                         flags: int) -> None:
        """Unlock what a resting order reserved for the lots it no longer has."""
        if buys:
            bps = _reserve_bps(m, flags)
            amount = (buy_reserve(price, qty_before, fee_numer, m.notional_unit, bps)
                      - buy_reserve(price, qty_after, fee_numer, m.notional_unit, bps))
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
            t.locked, t.fee_numer, t.stp = stop.reserve, 0, stop.stp
            t.flags = _flags(False, stop.stp, stop.tier)
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
        account, order_id, cid, admin = c.account, c.order_id, c.client_order_id, c.admin
        if not _is_id(account):
            return self._reject(account, cid, R.INVALID_ACCOUNT)
        if type(admin) is not str or admin:         # an operator's cancel, audited
            if not _is_text(admin) or len(admin) > REF_MAX:
                return self._reject(account, cid, R.INVALID_REF)
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
        if not self._cancel_open(order_id, account, R.CANCEL_ADMIN if admin else R.CANCEL_USER):
            return self._reject(account, cid, R.UNKNOWN_ORDER, order_id)
        if admin:
            self._ev.append(AdminAction(self._seq, admin, R.ACTION_CANCEL_ORDER, account,
                                        str(order_id)))

    def _cancel_open(self, order_id: int, account: int, reason: str) -> bool:
        """Cancel an open order (a waiting stop or a resting order) of
        ``account`` and release its lock; False, nothing changed, when the
        account has no open order with that id."""
        stop = self._stops.get(order_id)
        if stop is not None and stop.account == account:
            m = self._markets[stop.market]
            acct = self._accounts[account]
            self._discard_stop(stop)
            self._ev.append(Cancelled(self._seq, order_id, account, stop.qty, reason))
            self._close(order_id, acct)
            self._transfer(m.quote if stop.side == BUY else m.base, stop.reserve, account,
                           acct.bal, LOCKED, account, acct.bal, AVAILABLE, KIND_UNLOCK, order_id)
            return True
        rec = self._book.get(order_id)
        if rec is None or rec[1] != account:
            return False
        instrument, _, side, price, qty, fee_numer, flags = self._book.remove(order_id)
        m = self._markets[instrument]
        acct = self._accounts[account]
        self._ev.append(Cancelled(self._seq, order_id, account, qty, reason))
        self._close(order_id, acct)
        self._release_resting(m, order_id, account, acct.bal, side == BUY, price, qty, fee_numer, 0,
                              flags)
        return True

    def _open_order_ids(self, account: int, a: _Account, market) -> list:
        """The ids of the account's open orders (waiting stops and resting
        orders; on one market when ``market`` is not None), ascending.  When
        every one has a client order id they are the account's own map's;
        otherwise this walks the books (for CancelAll and FreezeAccount, never
        the hot path: no per-account order index is kept)."""
        ids: list = []
        if not a.open:
            return ids
        if len(a.cids) == a.open:
            for order_id in a.cids.values():
                if market is not None:
                    stop = self._stops.get(order_id)
                    if (stop.market if stop is not None
                            else self._book.get(order_id)[0]) != market.index:
                        continue
                ids.append(order_id)
            ids.sort()
            return ids
        for stop in self._stops.values():
            if stop.account == account and (market is None or stop.market == market.index):
                ids.append(stop.order_id)
        markets = self._markets if market is None else [market]
        for m in markets:
            if len(ids) == a.open:
                break
            for row in self._book.dump(m.index):
                if row[1] == account:
                    ids.append(row[0])
        ids.sort()
        return ids

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
        if acct.frozen:
            return self._reject_amend(account, order_id, R.ACCOUNT_FROZEN)
        b = acct.bal
        if new_price == price and new_qty <= qty:
            # smaller (or equal) at the same price: keeps its place in the queue
            if new_qty < qty:
                self._book.reduce(order_id, new_qty)
            self._ev.append(Replaced(seq, order_id, account, price, new_qty, True))
            self._release_resting(m, order_id, account, b, buys, price, qty, fee_numer, new_qty,
                                  flags)
            return
        if flags & FLAG_POST_ONLY and self._book.crosses(instrument, side, new_price):
            return self._reject_amend(account, order_id, R.POST_ONLY_WOULD_TRADE)
        if buys:
            unit, bps = m.notional_unit, _reserve_bps(m, flags)
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
        t.locked, t.fee_numer, t.stp, t.flags = new_reserve, fee_numer, _flags_stp(flags), flags
        t.quote_only, t.budget, t.can_rest, t.market_order = False, NO_BUDGET, True, False
        self._take(m, t)
        if self._stops:
            self._run_stops(m)

    # ------------------------------------------------------------ money in and out
    def _money_args(self, c, min_account: int):
        """Validate account/asset/amount; returns (asset index, the account) or None."""
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
        return asset, self._account(account)

    def _supply_room(self, asset: int) -> int:
        """How much more of an asset may enter: total supply stays <= int64 max,
        so no balance anywhere can overflow."""
        return INT64_MAX + self._accounts[SYSTEM_OUTSIDE].bal[2 * asset]

    def _ref_used(self, namespace: str, account: int, asset: int, ref: str) -> bool:
        """Whether a non-empty ``ref`` was used before in (namespace, account, asset)."""
        return bool(ref) and _ref_key(namespace, account, asset, ref) in self._refs

    def _use_ref(self, namespace: str, account: int, asset: int, ref: str) -> None:
        if ref:
            self._refs.add(_ref_key(namespace, account, asset, ref))

    def _ref_rows(self) -> list:
        """The used refs as sorted (namespace, account, asset, ref) rows."""
        names = {letter: ns for ns, letter in _REF_NAMESPACES.items()}
        rows = []
        for key in self._refs:
            account, asset, ref = key[1:].split(":", 2)
            rows.append((names[key[0]], int(account), self._asset_names[int(asset)], ref))
        rows.sort()
        return rows

    def _money_ref_args(self, c, min_account: int, namespace: str):
        """``_money_args`` of a command with a ``ref`` in ``namespace``: the ref
        checked first, then the account, asset and amount, then that the ref is
        new; returns (asset index, account) or None (rejected)."""
        if not _is_ref(c.ref, False):
            self._reject(c.account, "", R.INVALID_REF)
            return None
        args = self._money_args(c, min_account)
        if args is not None and self._ref_used(namespace, c.account, args[0], c.ref):
            self._reject(c.account, "", R.DUPLICATE_REF)
            return None
        return args

    def _deposit(self, c: Deposit) -> None:
        ref = c.ref
        args = self._money_ref_args(c, FIRST_USER_ACCOUNT, REF_DEPOSIT)
        if args is None:
            return
        asset, a = args
        if c.amount > self._supply_room(asset):
            return self._reject(c.account, "", R.AMOUNT_OVERFLOW)
        self._use_ref(REF_DEPOSIT, c.account, asset, ref)
        self._transfer(asset, c.amount, SYSTEM_OUTSIDE, self._accounts[SYSTEM_OUTSIDE].bal,
                       AVAILABLE, c.account, a.bal, AVAILABLE, KIND_DEPOSIT, 0, 0, ref)

    def _withdraw(self, c: Withdraw) -> None:
        ref = c.ref
        # fees may be swept out of account 1
        args = self._money_ref_args(c, SYSTEM_FEES, REF_WITHDRAW)
        if args is None:
            return
        asset, a = args
        if a.frozen:
            return self._reject(c.account, "", R.ACCOUNT_FROZEN)
        b = a.bal
        if b[2 * asset] < c.amount:
            return self._reject(c.account, "", R.INSUFFICIENT_FUNDS)
        self._use_ref(REF_WITHDRAW, c.account, asset, ref)
        self._transfer(asset, c.amount, c.account, b, AVAILABLE, SYSTEM_OUTSIDE,
                       self._accounts[SYSTEM_OUTSIDE].bal, AVAILABLE, KIND_WITHDRAW, 0, 0, ref)

    def _request_withdrawal(self, c: RequestWithdrawal) -> None:
        """Hold the amount (available -> locked) until an admin approves or
        rejects it; at or under the tier's auto-approval amount it leaves at once."""
        ref = c.ref
        args = self._money_ref_args(c, FIRST_USER_ACCOUNT, REF_WITHDRAW)
        if args is None:
            return
        asset, a = args
        account, amount = c.account, c.amount
        if a.frozen:
            return self._reject(account, "", R.ACCOUNT_FROZEN)
        b = a.bal
        if b[2 * asset] < amount:
            return self._reject(account, "", R.INSUFFICIENT_FUNDS)
        key = (account, asset)
        used = self._withdrawn_today.get(key, 0)
        limit = self._tier_limits[a.tier][asset]
        if limit >= 0 and used + amount > limit:
            return self._reject(account, "", R.WITHDRAWAL_LIMIT_EXCEEDED)
        self._use_ref(REF_WITHDRAW, account, asset, ref)
        self._withdrawn_today[key] = used + amount
        withdrawal_id = self._next_withdrawal_id
        self._next_withdrawal_id = withdrawal_id + 1
        name = self._asset_names[asset]
        self._ev.append(WithdrawalRequested(self._seq, withdrawal_id, account, name, amount, ref))
        self._transfer(asset, amount, account, b, AVAILABLE, account, b, LOCKED,
                       KIND_WITHDRAW_HOLD, 0, 0, ref)
        if amount <= self._tier_auto[a.tier][asset]:
            self._complete_withdrawal(withdrawal_id, account, b, asset, amount, ref, "")
        else:
            self._withdrawals[withdrawal_id] = PendingWithdrawal(
                withdrawal_id, account, name, amount, ref, self._seq, self._now)

    def _complete_withdrawal(self, withdrawal_id: int, account: int, b: list, asset: int,
                             amount: int, ref: str, admin: str) -> None:
        self._ev.append(WithdrawalCompleted(self._seq, withdrawal_id, account,
                                            self._asset_names[asset], amount, ref, admin))
        self._transfer(asset, amount, account, b, LOCKED, SYSTEM_OUTSIDE,
                       self._accounts[SYSTEM_OUTSIDE].bal, AVAILABLE, KIND_WITHDRAW, 0, 0, ref)

    def _approve_withdrawal(self, c: ApproveWithdrawal) -> None:
        admin, withdrawal_id = c.admin, c.withdrawal_id
        if not _is_ref(admin, True):
            return self._reject(0, "", R.INVALID_REF)
        w = self._withdrawals.get(withdrawal_id) if type(withdrawal_id) is int else None
        if w is None:
            return self._reject(0, "", R.UNKNOWN_WITHDRAWAL)
        a = self._accounts[w.account]
        if a.frozen:
            return self._reject(w.account, "", R.ACCOUNT_FROZEN)
        del self._withdrawals[withdrawal_id]
        self._complete_withdrawal(withdrawal_id, w.account, a.bal, self._asset_index[w.asset],
                                  w.amount, w.ref, admin)
        self._ev.append(AdminAction(self._seq, admin, R.ACTION_WITHDRAWAL_APPROVE, w.account,
                                    str(withdrawal_id)))

    def _reject_withdrawal(self, c: RejectWithdrawal) -> None:
        admin, reason, withdrawal_id = c.admin, c.reason, c.withdrawal_id
        if not _is_ref(admin, True) or not _is_ref(reason, True):
            return self._reject(0, "", R.INVALID_REF)
        w = self._withdrawals.get(withdrawal_id) if type(withdrawal_id) is int else None
        if w is None:
            return self._reject(0, "", R.UNKNOWN_WITHDRAWAL)
        del self._withdrawals[withdrawal_id]
        account, amount, asset = w.account, w.amount, self._asset_index[w.asset]
        b = self._accounts[account].bal
        self._ev.append(WithdrawalRejected(self._seq, withdrawal_id, account, w.asset, amount,
                                           w.ref, admin, reason))
        self._transfer(asset, amount, account, b, LOCKED, account, b, AVAILABLE,
                       KIND_WITHDRAW_RELEASE, 0, 0, w.ref)
        if w.requested_ts_ns // DAY_NS == self._day:
            # requested today: its amount no longer counts against today's limit
            key = (account, asset)
            left = self._withdrawn_today[key] - amount
            assert left >= 0, (key, left)
            if left:
                self._withdrawn_today[key] = left
            else:
                del self._withdrawn_today[key]
        self._ev.append(AdminAction(self._seq, admin, R.ACTION_WITHDRAWAL_REJECT, account,
                                    str(withdrawal_id), reason))

    def _adjust(self, c: Adjust) -> None:
        admin, reason = c.admin, c.reason
        if not _is_ref(admin, True) or not _is_ref(reason, True):
            return self._reject(c.account, "", R.INVALID_REF)
        args = self._money_args(c, SYSTEM_FEES)
        if args is None:
            return
        asset, a = args
        account, amount = c.account, c.amount
        why = self._adjust_refused(asset, a.bal, amount)
        if why:
            return self._reject(account, "", why)
        threshold = self._adjust_threshold[asset]
        if 0 <= threshold < abs(amount):
            # large: it waits for a second admin's ApproveAdjustment
            adjustment_id = self._next_adjustment_id
            self._next_adjustment_id = adjustment_id + 1
            name = self._asset_names[asset]
            self._adjustments[adjustment_id] = PendingAdjustment(
                adjustment_id, account, name, amount, admin, reason, self._seq)
            self._ev.append(AdjustmentPending(self._seq, adjustment_id, account, name, amount,
                                              admin, reason))
            self._ev.append(AdminAction(self._seq, admin, R.ACTION_ADJUST_REQUEST, account,
                                        str(adjustment_id), reason))
            return
        self._apply_adjust(R.ACTION_ADJUST, account, a, asset, amount, admin, reason, 0, "")

    def _adjust_refused(self, asset: int, b: list, amount: int) -> str:
        """The reject reason of an adjustment the balances cannot take now, else ""."""
        if amount > 0 and amount > self._supply_room(asset):
            return R.AMOUNT_OVERFLOW
        if amount < 0 and b[2 * asset] < -amount:
            return R.INSUFFICIENT_FUNDS
        return ""

    def _apply_adjust(self, action: str, account: int, a: _Account, asset: int, amount: int,
                      admin: str, reason: str, adjustment_id: int, approved_by: str) -> None:
        """Adjusted, its Transfer, and the AdminAction (by ``approved_by`` when
        a second admin released it, else by ``admin``)."""
        b = a.bal
        before = b[2 * asset]
        name = self._asset_names[asset]
        self._ev.append(Adjusted(self._seq, account, name, amount, admin, reason, before,
                                 before + amount, adjustment_id, approved_by))
        outside = self._accounts[SYSTEM_OUTSIDE].bal
        if amount > 0:
            self._transfer(asset, amount, SYSTEM_OUTSIDE, outside, AVAILABLE, account, b,
                           AVAILABLE, KIND_ADJUST, 0, 0, reason)
        else:
            self._transfer(asset, -amount, account, b, AVAILABLE, SYSTEM_OUTSIDE, outside,
                           AVAILABLE, KIND_ADJUST, 0, 0, reason)
        scale = self.assets[asset].scale
        self._ev.append(AdminAction(self._seq, approved_by or admin, action, account,
                                    str(adjustment_id) if adjustment_id else name, reason,
                                    _decimal_text(before, scale),
                                    _decimal_text(before + amount, scale)))

    def _approve_adjustment(self, c: ApproveAdjustment) -> None:
        admin, adjustment_id = c.admin, c.adjustment_id
        if not _is_ref(admin, True):
            return self._reject(0, "", R.INVALID_REF)
        p = self._adjustments.get(adjustment_id) if type(adjustment_id) is int else None
        if p is None:
            return self._reject(0, "", R.UNKNOWN_ADJUSTMENT)
        if admin == p.admin:
            return self._reject(p.account, "", R.SAME_ADMIN)
        asset, a = self._asset_index[p.asset], self._account(p.account)
        why = self._adjust_refused(asset, a.bal, p.amount)
        if why:
            return self._reject(p.account, "", why)     # it stays pending
        del self._adjustments[adjustment_id]
        self._apply_adjust(R.ACTION_ADJUST_APPROVE, p.account, a, asset, p.amount, p.admin,
                           p.reason, adjustment_id, admin)

    # ------------------------------------------------------------ time
    def _clock(self, c: Clock) -> None:
        ts_ns = c.ts_ns
        if type(ts_ns) is not int or not 0 <= ts_ns <= INT64_MAX:
            return self._reject(0, "", R.INVALID_TIME)
        if ts_ns < self._now:
            return self._reject(0, "", R.CLOCK_BACKWARDS)
        self._now = ts_ns
        day = ts_ns // DAY_NS
        if day != self._day:
            self._day = day
            self._withdrawn_today.clear()   # only today's counts matter
        self._ev.append(Clocked(self._seq, ts_ns))

    # ------------------------------------------------------------ accounts
    def _admin_checks(self, c, texts: tuple) -> bool:
        """Validate an admin command's texts and its (user) account; False: rejected."""
        account = c.account
        for text in texts:
            if not _is_ref(text, True):
                self._reject(account, "", R.INVALID_REF)
                return False
        if type(account) is not int or not FIRST_USER_ACCOUNT <= account <= ACCOUNT_MAX:
            self._reject(account, "", R.INVALID_ACCOUNT)
            return False
        return True

    def _freeze(self, c: FreezeAccount) -> None:
        if not self._admin_checks(c, (c.admin, c.reason)):
            return
        account = c.account
        if type(c.cancel_orders) is not bool:
            return self._reject(account, "", R.INVALID_COMBINATION)
        a = self._account(account)      # an account may be frozen before it is first used
        if a.frozen:
            return self._reject(account, "", R.ALREADY_FROZEN)
        a.frozen = True
        if c.cancel_orders:
            for order_id in self._open_order_ids(account, a, None):
                self._cancel_open(order_id, account, R.CANCEL_ADMIN)
        self._ev.append(AdminAction(self._seq, c.admin, R.ACTION_FREEZE, account, "", c.reason,
                                    "active", "frozen"))

    def _unfreeze(self, c: UnfreezeAccount) -> None:
        if not self._admin_checks(c, (c.admin, c.reason)):
            return
        a = self._accounts.get(c.account)
        if a is None or not a.frozen:
            return self._reject(c.account, "", R.NOT_FROZEN)
        a.frozen = False
        self._ev.append(AdminAction(self._seq, c.admin, R.ACTION_UNFREEZE, c.account, "",
                                    c.reason, "frozen", "active"))

    def _set_tier(self, c: SetAccountTier) -> None:
        if not self._admin_checks(c, (c.admin,)):
            return
        tier = self._tier_code.get(c.tier) if type(c.tier) is str else None
        if tier is None:
            return self._reject(c.account, "", R.UNKNOWN_TIER)
        a = self._account(c.account)
        before = self._tier_names[a.tier]
        a.tier = tier
        self._ev.append(AdminAction(self._seq, c.admin, R.ACTION_SET_TIER, c.account, "", "",
                                    before, self._tier_names[tier]))

    def _cancel_all(self, c: CancelAll) -> None:
        account, symbol, admin = c.account, c.symbol, c.admin
        if not _is_id(account):
            return self._reject(account, "", R.INVALID_ACCOUNT)
        if not _is_ref(admin, False):
            return self._reject(account, "", R.INVALID_REF)
        market = None
        if symbol is not None:
            market = self._market_by_symbol.get(symbol) if type(symbol) is str else None
            if market is None:
                return self._reject(account, "", R.UNKNOWN_SYMBOL)
        a = self._accounts.get(account)
        if a is not None:
            reason = R.CANCEL_ADMIN if admin else R.CANCEL_USER
            for order_id in self._open_order_ids(account, a, market):
                self._cancel_open(order_id, account, reason)
        if admin:
            self._ev.append(AdminAction(self._seq, admin, R.ACTION_CANCEL_ALL, account,
                                        "" if market is None else market.symbol))

    # ------------------------------------------------------------ instrument control
    def _halt(self, c: Halt) -> None:
        if not _is_ref(c.admin, False):
            return self._reject(0, "", R.INVALID_REF)
        m = self._market_by_symbol.get(c.symbol) if type(c.symbol) is str else None
        if m is None:
            return self._reject(0, "", R.UNKNOWN_SYMBOL)
        if m.halted:
            return self._reject(0, "", R.ALREADY_HALTED)
        m.halted = True
        self._ev.append(Halted(self._seq, m.symbol))
        self._ev.append(AdminAction(self._seq, c.admin, R.ACTION_HALT, 0, m.symbol))

    def _resume(self, c: Resume) -> None:
        if not _is_ref(c.admin, False):
            return self._reject(0, "", R.INVALID_REF)
        m = self._market_by_symbol.get(c.symbol) if type(c.symbol) is str else None
        if m is None:
            return self._reject(0, "", R.UNKNOWN_SYMBOL)
        if not m.halted:
            return self._reject(0, "", R.NOT_HALTED)
        m.halted = False
        self._ev.append(Resumed(self._seq, m.symbol))
        self._ev.append(AdminAction(self._seq, c.admin, R.ACTION_RESUME, 0, m.symbol))
