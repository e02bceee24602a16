"""liquibook (C++, header-only) through its SWIG wrapper, the ``liquibook`` wheel on PyPI.

The book is ``liquibook_book_OrderBook``, the matching core without the
depth aggregation of ``DepthOrderBook``: the fastest the wrapper offers.
Orders are ``SimpleOrder(is_buy, price, qty)`` (``uint64`` price and
quantity: our ticks and lots as they are); a market order is price 0 with
the immediate-or-cancel condition (without it liquibook would rest it);
a cancel passes the order object, which the caller keeps, as a user of the
wrapper must.  The timed run has no listener: liquibook then calls no
Python at all.  ``trades`` attaches an order listener to learn the fills.
"""
from __future__ import annotations

from benchmarks.peers import CANCEL, LIMIT, Unavailable

NAME = "liquibook"
PACKAGE = "liquibook"
KIND = "C++ behind SWIG"

_lb = None


def load():
    global _lb
    try:
        import liquibook
    except ImportError as e:
        raise Unavailable(f"not installed ({e}); pip install -e '.[bench]'") from None
    _lb = liquibook


def version() -> str:
    from importlib.metadata import version as dist_version
    return dist_version(PACKAGE)


def program(setup_ops, ops):
    """The operations as liquibook calls: nothing to translate but the IOC flag."""
    return setup_ops, ops


def _apply(book, orders, ops):
    SimpleOrder, ioc = _lb.SimpleOrder, _lb.oc_immediate_or_cancel
    add, cancel = book.add, book.cancel
    for op in ops:
        kind = op[0]
        if kind == LIMIT:
            o = SimpleOrder(op[1], op[2], op[3])
            add(o)
            orders[op[4]] = o
        elif kind == CANCEL:
            cancel(orders[op[1]])
        else:
            add(SimpleOrder(op[1], 0, op[3], 0, ioc), ioc)


def fresh(setup_prog):
    """(book, orders by place index) with the setup applied."""
    book = _lb.liquibook_book_OrderBook()
    orders: dict = {}
    _apply(book, orders, setup_prog)
    return book, orders


def run(state, prog) -> None:
    _apply(*state, prog)


def trades(setup_prog, prog) -> list:
    """(maker place, price, qty) of every fill of ``prog``, from an order listener."""
    book, orders = fresh(setup_prog)
    place_of = {o.order_id_: place for place, o in orders.items()}
    fills: list = []

    class Listener(_lb.OrderListener):
        def on_fill(self, order, matched_order, qty, price):
            fills.append((matched_order.order_id_, price, qty))

        def on_accept(self, order): pass
        def on_reject(self, order, reason): pass
        def on_cancel(self, order): pass
        def on_cancel_reject(self, order, reason): pass
        def on_replace(self, order, size_delta, new_price): pass
        def on_replace_reject(self, order, reason): pass
        def on_trigger_stop(self, order): pass

    listener = Listener()
    book.set_order_listener(listener)
    _apply(book, orders, prog)
    place_of.update((o.order_id_, place) for place, o in orders.items())
    return [(place_of[maker], price, qty) for maker, price, qty in fills]
