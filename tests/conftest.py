"""Shared fixtures: engines on every available book implementation.

``book`` is parameterised over "python" and, when the kernel is built,
"cython", so every engine test runs on both.  CI sets
EXCHANGE_REQUIRE_CYTHON=1: then a missing kernel fails the run instead of
silently testing one book.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:       # benchmarks/ (the flow generator) is not installed
    sys.path.insert(0, str(ROOT))

from engine import Asset, Engine, Instrument, available_books  # noqa: E402
from engine.messages import Deposit  # noqa: E402

BOOKS = available_books()

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


@pytest.fixture(params=BOOKS)
def book(request):
    return request.param


@pytest.fixture
def make_engine(book):
    """make_engine(**instrument_overrides, max_open_orders=..., funded=True)."""
    def make(funded: bool = True, max_open_orders: int = 1000, **kw):
        eng = Engine(ASSETS, [instrument(**kw)], book=book, max_open_orders=max_open_orders)
        if funded:
            for account in (2, 3, 4, 5):
                eng.submit(Deposit(account, "USD", 10_000_000))
                eng.submit(Deposit(account, "ABC", 100_000))
        return eng
    return make



def of(events, cls):
    """The events of one type, in order."""
    return [e for e in events if type(e) is cls]
