"""The order book's interface: every operation the engine calls on a book.

Two classes implement it with identical results: ``engine.book.Book`` (the
pure-Python reference) and ``engine._cbook.Book`` (the Cython kernel).
``engine.core`` calls nothing else on a book (``tests/test_book_protocol.py``
checks both directions).  It never imports either implementation.

Units: ``instrument`` is the engine's market index (0..n_instruments-1),
``side`` is ``engine.book.BUY`` or ``SELL``, prices are tick counts (> 0),
quantities lot counts (> 0), ``unit`` converts price*lots to quote minor
units.  ``fee_numer`` (the order's cumulative fee numerator) and ``flags``
(fits int32) are opaque to the book: stored and handed back, never read.
Every argument is positional: the implementations name them differently.
"""
from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

# (instrument, account, side, price, qty, fee_numer, flags): one resting order
OrderRecord = tuple[int, int, int, int, int, int, int]
# (order_id, account, side, price, qty, fee_numer, flags): one row of ``dump``
DumpRow = tuple[int, int, int, int, int, int, int]
# (kind, maker_order_id, maker_account, price, qty, maker_remaining,
#  maker_fee_numer, maker_flags): one thing that happened to a resting order
MatchRecord = tuple[int, int, int, int, int, int, int, int]
# (price, qty) of one level
LevelRow = tuple[int, int]


@runtime_checkable
class OrderBook(Protocol):
    """The books of every instrument of one engine plus the index of all
    resting orders by id.  Built as ``cls(n_instruments)``; the class names
    itself in ``implementation``.

    Matching walks the opposite side best level first and each level in time
    order; a trade prints at the resting order's price.
    """

    implementation: ClassVar[str]       # "python" or "cython"

    # ------------------------------------------------------------ queries
    def get(self, order_id: int, /) -> OrderRecord | None:
        """The resting order's record, or None when it does not rest."""

    def best_bid(self, instrument: int, /) -> int:
        """Highest bid price, 0 when there are no bids."""

    def best_ask(self, instrument: int, /) -> int:
        """Lowest ask price, 0 when there are no asks."""

    def crosses(self, instrument: int, side: int, price: int, /) -> bool:
        """Would an order at ``price`` trade on arrival?"""

    def depth(self, instrument: int, levels: int, /) -> tuple[list[LevelRow], list[LevelRow]]:
        """(bids best first, asks best first), at most ``levels`` of each."""

    def dump(self, instrument: int, /) -> list[DumpRow]:
        """Every resting order of an instrument in priority order (bids best
        first, then asks best first; FIFO inside a level).  ``add`` in this
        order rebuilds the same book (the engine snapshot)."""

    def can_fill(self, instrument: int, side: int, limit: int, qty: int, account: int,
                 stp: int, /) -> bool:
        """Would ``match`` with these arguments (and no budget) trade all
        ``qty``?  Changes nothing.  Own orders met first end the walk, except
        under ``STP_CANCEL_OLDEST``, which would remove them and go on."""

    # ------------------------------------------------------------ updates
    def add(self, instrument: int, order_id: int, account: int, side: int, price: int,
            qty: int, fee_numer: int, flags: int, /) -> None:
        """Rest an order at the back of its price level (AssertionError for an
        id already resting, qty <= 0 or price <= 0)."""

    def rest(self, instrument: int, order_id: int, account: int, side: int, price: int,
             qty: int, fee_numer: int, flags: int, /) -> bool:
        """``add`` unless the order would trade on arrival: True when it
        rests, False (the book unchanged) when it crosses."""

    def remove(self, order_id: int, /) -> OrderRecord | None:
        """Take an order off the book: its record, or None when it did not rest."""

    def move(self, order_id: int, price: int, qty: int, /) -> bool:
        """Re-queue a resting order at ``price`` with ``qty`` open lots behind
        the orders there (it loses time priority), unless it would then trade
        on arrival: then it is only taken off.  True when it rests at its new
        place, False when taken off (the caller matches it).  KeyError for an
        id that does not rest."""

    def reduce(self, order_id: int, qty: int, /) -> None:
        """Lower an order's open lots in place (0 < qty <= open), keeping its
        time priority.  KeyError for an id that does not rest."""

    def set_fee(self, order_id: int, fee_numer: int, /) -> None:
        """Replace a resting order's opaque ``fee_numer``."""

    # ------------------------------------------------------------ matching
    def match(self, instrument: int, side: int, limit: int, qty: int, budget: int, unit: int,
              account: int, stp: int, /) -> list[MatchRecord]:
        """Match an incoming order against the opposite side; the book loses
        what traded.

        ``limit``: worst price accepted (an uncapped market order passes
        INT64_MAX to buy, 1 to sell).  ``qty``: lots wanted.  ``budget``: the
        most notional (quote minor units) the order may spend, or NO_BUDGET
        when qty alone limits it.  ``account``/``stp`` (an STP_* mode; any
        other value acts as STP_CANCEL_OLDEST) drive self-trade prevention.

        Returns one record per thing that happened to a resting order, in
        order; ``kind`` is one of

        * ``FILL``: ``qty`` lots traded at ``price``;
        * ``MAKER_CANCELLED``: STP removed the resting order (``qty`` = its
          open lots);
        * ``MAKER_DECREMENTED``: ``STP_DECREMENT`` took ``qty`` lots off both
          orders (``maker_remaining`` 0: the maker is gone);
        * ``TAKER_CANCELLED``: STP ends the incoming order here (the maker
          fields describe the order it met; ``qty`` 0).

        ``maker_remaining`` is the maker's open lots after the record.
        """

    # ------------------------------------------------------------ self-check
    def validate(self) -> None:
        """Slow walk over every invariant of the structure (tests only);
        AssertionError when one is broken."""
