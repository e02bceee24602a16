"""The reference order book: readable, pure Python, the behaviour to match.

One ``Book`` holds the books of every instrument of an engine plus the index
of all resting orders by id.  It knows prices (ticks), quantities (lots),
accounts and time priority; it knows nothing of balances, fees or events.
Its interface, with the shapes of every argument and result (the records of
``match`` included), is ``engine.book_protocol.OrderBook``.

This module is the one definition of the book's constants (sides, self-trade
prevention modes, match record kinds, NO_BUDGET); the Cython kernel
(``ext/_cbook.pyx`` -> ``engine._cbook``) imports them from here and gives
the same results (``tests/test_cbook.py``).
"""
from __future__ import annotations

from collections import OrderedDict
from itertools import islice

from sortedcontainers import SortedDict

from .domain import INT64_MAX

BUY, SELL = 0, 1            # the kernel's layout needs exactly these two values
STP_CANCEL_NEWEST, STP_CANCEL_OLDEST, STP_CANCEL_BOTH, STP_DECREMENT = 0, 1, 2, 3
FILL, MAKER_CANCELLED, MAKER_DECREMENTED, TAKER_CANCELLED = 0, 1, 2, 3   # match record kinds
NO_BUDGET = INT64_MAX       # match(): the order is limited by qty alone


class _Order:
    __slots__ = ("order_id", "instrument", "account", "side", "price", "qty", "fee_numer",
                 "flags", "level")

    def record(self):
        return (self.instrument, self.account, self.side, self.price, self.qty,
                self.fee_numer, self.flags)


class _Level:
    __slots__ = ("price", "orders", "qty")

    def __init__(self, price: int):
        self.price = price
        self.orders: OrderedDict[int, _Order] = OrderedDict()   # time priority
        self.qty = 0


class Book:
    """All instruments' price-level books; an ``engine.book_protocol.OrderBook``."""

    implementation = "python"

    def __init__(self, n_instruments: int):
        self._orders: dict[int, _Order] = {}
        # sides[instrument][side]: SortedDict price -> _Level (ascending price)
        self._sides = [(SortedDict(), SortedDict()) for _ in range(n_instruments)]

    def __len__(self) -> int:
        return len(self._orders)

    # ------------------------------------------------------------ queries
    def get(self, order_id: int):
        """(instrument, account, side, price, qty, fee_numer, flags) or None."""
        o = self._orders.get(order_id)
        return None if o is None else o.record()

    def best_bid(self, instrument: int) -> int:
        bids = self._sides[instrument][BUY]
        return bids.peekitem(-1)[0] if bids else 0

    def best_ask(self, instrument: int) -> int:
        asks = self._sides[instrument][SELL]
        return asks.peekitem(0)[0] if asks else 0

    def crosses(self, instrument: int, side: int, price: int) -> bool:
        """Would an order at ``price`` trade on arrival?"""
        if side == BUY:
            best = self.best_ask(instrument)
            return best != 0 and best <= price
        best = self.best_bid(instrument)
        return best != 0 and best >= price

    def depth(self, instrument: int, levels: int):
        """([(price, qty)...] bids best first, [(price, qty)...] asks best first)."""
        if not isinstance(levels, int):
            raise TypeError(f"levels must be an int, not {type(levels).__name__}")
        bids, asks = self._sides[instrument]
        n = max(0, levels)
        # O(n): walk the sorted prices lazily from each best end, never a whole side
        bid_list = [(price, bids[price].qty) for price in islice(reversed(bids), min(n, len(bids)))]
        ask_list = [(price, asks[price].qty) for price in islice(asks, min(n, len(asks)))]
        return bid_list, ask_list

    def dump(self, instrument: int):
        """Every resting order of an instrument in priority order (bids best
        first, then asks best first; FIFO inside a level) as
        (order_id, account, side, price, qty, fee_numer, flags).  ``add`` in
        this order rebuilds the same book."""
        bids, asks = self._sides[instrument]
        out = []
        for level in reversed(bids.values()):
            out.extend((o.order_id, o.account, o.side, o.price, o.qty, o.fee_numer, o.flags)
                       for o in level.orders.values())
        for level in asks.values():
            out.extend((o.order_id, o.account, o.side, o.price, o.qty, o.fee_numer, o.flags)
                       for o in level.orders.values())
        return out

    # ------------------------------------------------------------ updates
    def add(self, instrument: int, order_id: int, account: int, side: int, price: int,
            qty: int, fee_numer: int, flags: int) -> None:
        """Rest an order at the back of its price level."""
        assert order_id not in self._orders, order_id
        assert qty > 0, qty
        assert price > 0, price
        levels = self._sides[instrument][side]
        level = levels.get(price)
        if level is None:
            level = levels[price] = _Level(price)
        o = _Order()
        o.order_id, o.instrument, o.account, o.side = order_id, instrument, account, side
        o.price, o.qty, o.fee_numer, o.flags, o.level = price, qty, fee_numer, flags, level
        level.orders[order_id] = o
        level.qty += qty
        self._orders[order_id] = o

    def remove(self, order_id: int):
        """Take an order off the book; returns its record (see ``get``) or None."""
        o = self._orders.pop(order_id, None)
        if o is None:
            return None
        self._unlink(o)
        return o.record()

    def rest(self, instrument: int, order_id: int, account: int, side: int, price: int,
             qty: int, fee_numer: int, flags: int) -> bool:
        """``add`` unless an order at ``price`` would trade on arrival: True when
        it rests, False (the book unchanged) when it crosses."""
        if self.crosses(instrument, side, price):
            return False
        self.add(instrument, order_id, account, side, price, qty, fee_numer, flags)
        return True

    def move(self, order_id: int, price: int, qty: int) -> bool:
        """Re-queue a resting order at ``price`` with ``qty`` open lots, behind
        the orders already there (it loses its time priority), unless an order
        at ``price`` would trade on arrival: then it is only taken off the book.
        True when it rests at its new place, False when it was taken off (the
        caller matches it).  KeyError for an id that is not resting."""
        o = self._orders[order_id]
        assert qty > 0, qty
        assert price > 0, price
        del self._orders[order_id]
        self._unlink(o)
        if self.crosses(o.instrument, o.side, price):
            return False
        self.add(o.instrument, order_id, o.account, o.side, price, qty, o.fee_numer, o.flags)
        return True

    def reduce(self, order_id: int, qty: int) -> None:
        """Lower an order's open quantity in place, keeping its time priority."""
        o = self._orders[order_id]
        assert 0 < qty <= o.qty, (qty, o.qty)
        o.level.qty -= o.qty - qty
        o.qty = qty

    def set_fee(self, order_id: int, fee_numer: int) -> None:
        self._orders[order_id].fee_numer = fee_numer

    def _unlink(self, o: _Order) -> None:
        level = o.level
        del level.orders[o.order_id]
        level.qty -= o.qty
        if not level.orders:
            del self._sides[o.instrument][o.side][level.price]

    # ------------------------------------------------------------ matching
    def match(self, instrument: int, side: int, limit: int, qty: int, budget: int, unit: int,
              account: int, stp: int):
        """Match an incoming order against the opposite side; the arguments and
        the records: ``engine.book_protocol.OrderBook.match``."""
        out = []
        levels = self._sides[instrument][SELL if side == BUY else BUY]
        while qty > 0 and levels:
            price, level = levels.peekitem(0) if side == BUY else levels.peekitem(-1)
            if (price > limit) if side == BUY else (price < limit):
                break
            lot_cost = price * unit
            resting = level.orders
            while qty > 0 and resting:
                o = resting[next(iter(resting))]
                if o.account == account:
                    if stp == STP_CANCEL_NEWEST:
                        out.append((TAKER_CANCELLED, o.order_id, o.account, o.price, 0, o.qty,
                                    o.fee_numer, o.flags))
                        return out
                    if stp == STP_DECREMENT:
                        d = qty if qty < o.qty else o.qty
                        qty -= d
                        left = self._take_lots(o, d)
                        out.append((MAKER_DECREMENTED, o.order_id, o.account, o.price, d, left,
                                    o.fee_numer, o.flags))
                        continue
                    # cancel_oldest / cancel_both: the resting order goes
                    del self._orders[o.order_id]
                    self._unlink(o)
                    out.append((MAKER_CANCELLED, o.order_id, o.account, o.price, o.qty, 0,
                                o.fee_numer, o.flags))
                    if stp == STP_CANCEL_BOTH:
                        out.append((TAKER_CANCELLED, o.order_id, o.account, o.price, 0, 0,
                                    o.fee_numer, o.flags))
                        return out
                    continue
                fill = qty if qty < o.qty else o.qty
                if budget != NO_BUDGET:
                    affordable = budget // lot_cost
                    if affordable == 0:
                        return out
                    if affordable < fill:
                        fill = affordable
                    budget -= fill * lot_cost
                qty -= fill
                left = self._take_lots(o, fill)
                out.append((FILL, o.order_id, o.account, price, fill, left, o.fee_numer, o.flags))
        return out

    def _take_lots(self, o: _Order, lots: int) -> int:
        """Take ``lots`` off a resting order, removing it when none are left;
        returns what is left."""
        left = o.qty - lots
        if left:
            o.qty = left
            o.level.qty -= lots
        else:
            del self._orders[o.order_id]
            self._unlink(o)
        return left

    def can_fill(self, instrument: int, side: int, limit: int, qty: int, account: int,
                 stp: int) -> bool:
        """Would ``match`` with these arguments (and no budget) trade all ``qty``?
        Changes nothing.  Own orders met first end the walk, except under
        ``cancel_oldest``, which would remove them and go on."""
        levels = self._sides[instrument][SELL if side == BUY else BUY]
        walk = levels.values() if side == BUY else reversed(levels.values())
        for level in walk:
            price = level.price
            if (price > limit) if side == BUY else (price < limit):
                return False
            for o in level.orders.values():
                if o.account == account:
                    if stp == STP_CANCEL_OLDEST:
                        continue
                    return False
                qty -= o.qty
                if qty <= 0:
                    return True
        return False

    # ------------------------------------------------------------ self-check
    def validate(self) -> None:
        """Slow walk over every invariant of the structure (tests only)."""
        seen = 0
        for instrument, (bids, asks) in enumerate(self._sides):
            for side, levels in ((BUY, bids), (SELL, asks)):
                for price, level in levels.items():
                    assert level.price == price
                    assert level.orders, f"empty level {price}"
                    total = 0
                    for oid, o in level.orders.items():
                        assert o.order_id == oid
                        assert self._orders.get(oid) is o, oid
                        assert o.instrument == instrument and o.side == side and o.price == price
                        assert o.level is level
                        assert o.qty > 0
                        total += o.qty
                        seen += 1
                    assert total == level.qty, (price, total, level.qty)
            if bids and asks:
                assert bids.peekitem(-1)[0] < asks.peekitem(0)[0], "crossed book"
        assert seen == len(self._orders), (seen, len(self._orders))
