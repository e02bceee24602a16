"""LightMatchingEngine, the ``lightmatchingengine`` package on PyPI.

Its newest release on PyPI (2019.1.4) is pure Python: the Cython rewrite
lives only in its source repository, with no release, so a user who runs
``pip install lightmatchingengine`` gets this one.  Calls:
``add_order(instmt, price, qty, side)`` (price 0: a market order) and
``cancel_order(order_id, instmt)``, where order ids count the
``add_order`` calls of one engine from 1 (so place index + 1).  It has no
IOC: a market order's remainder would rest at price 0, so the caller
cancels it, as a user of the library must.
"""
from __future__ import annotations

from benchmarks.peers import CANCEL, LIMIT, Unavailable

NAME = "LightMatchingEngine"
PACKAGE = "lightmatchingengine"
KIND = "pure Python (the PyPI release)"
INSTRUMENT = "BTC-USDT"

_lme = None


def load():
    global _lme
    try:
        from lightmatchingengine import lightmatchingengine
    except ImportError as e:
        raise Unavailable(f"not installed ({e}); pip install -e '.[bench]'") from None
    _lme = lightmatchingengine


def version() -> str:
    from importlib.metadata import version as dist_version
    return dist_version(PACKAGE)


def program(setup_ops, ops):
    """(kind, price, qty, side or order id): its own side codes and ids."""
    buy, sell = _lme.Side.BUY, _lme.Side.SELL

    def convert(op):
        if op[0] == CANCEL:
            return (CANCEL, 0, 0, op[1] + 1)
        return (op[0], op[2], op[3], buy if op[1] else sell)
    return [convert(op) for op in setup_ops], [convert(op) for op in ops]


def _apply(engine, prog):
    add, cancel = engine.add_order, engine.cancel_order
    for kind, price, qty, x in prog:
        if kind == LIMIT:
            add(INSTRUMENT, price, qty, x)
        elif kind == CANCEL:
            cancel(x, INSTRUMENT)
        else:
            order, _ = add(INSTRUMENT, 0, qty, x)
            if order.leaves_qty:
                cancel(order.order_id, INSTRUMENT)


def fresh(setup_prog):
    engine = _lme.LightMatchingEngine()
    _apply(engine, setup_prog)
    return engine


def run(state, prog) -> None:
    _apply(state, prog)


def trades(setup_prog, prog) -> list:
    """(maker place, price, qty) of every fill of ``prog``: the passive
    side's trade records (the aggressor's come first, one per price level)."""
    engine = fresh(setup_prog)
    add, cancel = engine.add_order, engine.cancel_order
    out = []
    for kind, price, qty, x in prog:
        if kind == CANCEL:
            cancel(x, INSTRUMENT)
            continue
        order, fills = add(INSTRUMENT, 0 if kind != LIMIT else price, qty, x)
        out += [(t.order_id - 1, t.trade_price, t.trade_qty) for t in fills
                if t.order_id != order.order_id]
        if kind != LIMIT and order.leaves_qty:
            cancel(order.order_id, INSTRUMENT)
    return out
