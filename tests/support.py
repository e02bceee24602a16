"""Helpers shared by the engine tests (imported as ``support``; fixtures live in conftest.py).

``BOOKS`` lists the book implementations importable here: every engine test
runs on each.  ``engine_class(book)`` pairs each book with its engine core:
"python" is all pure Python (``engine.core.Engine``, the reference), "cython"
is all accelerated (``engine.Engine``: the compiled core when it is built,
with the Cython book), so the two variants compared are the two ends.  CI sets EXCHANGE_REQUIRE_CYTHON=1: then a missing kernel fails
the run (tests/test_build.py) instead of silently testing one book.
"""
from __future__ import annotations

import os

import engine
from engine import Asset, Instrument, available_books
from engine import core as pure_core

BOOKS = available_books()


def engine_class(book: str):
    """The engine class a test variant runs: the pure-Python source for the
    "python" book, ``engine.Engine`` (compiled when built) for the others."""
    return pure_core.Engine if book == "python" else engine.Engine

# A market in whole units, so hand-checked numbers stay small:
# price 100 ticks * qty 10 lots = notional 1000 USD minor units.
ASSETS = [Asset("ABC", 0), Asset("USD", 0)]
SYMBOL = "ABC-USD"
MAKER_BPS, TAKER_BPS = 10, 20


def instrument(**kw) -> Instrument:
    args = dict(maker_fee_bps=MAKER_BPS, taker_fee_bps=TAKER_BPS, max_price=1_000_000,
                max_qty=1_000_000)
    args.update(kw)
    return Instrument(SYMBOL, "ABC", "USD", "1", "1", **args)


def require_cython() -> bool:
    return os.environ.get("EXCHANGE_REQUIRE_CYTHON", "") not in ("", "0")


def of(events, cls):
    """The events of one type, in order."""
    return [e for e in events if type(e) is cls]
