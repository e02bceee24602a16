"""Engine fixtures: engines on every available book implementation.

``book`` is parameterised over "python" and, when the kernel is built,
"cython" (support.BOOKS), so every engine test runs on both; each book runs
with its engine core (support.engine_class: pure Python with the Python book,
the compiled core when built with the Cython book).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))     # support.py

from support import ASSETS, BOOKS, engine_class, instrument  # noqa: E402

from engine.messages import Deposit  # noqa: E402


@pytest.fixture(params=BOOKS)
def book(request):
    return request.param


@pytest.fixture
def make_engine(book):
    """make_engine(**instrument_overrides, max_open_orders=..., funded=True)."""
    def make(funded: bool = True, max_open_orders: int = 1000, **kw):
        eng = engine_class(book)(ASSETS, [instrument(**kw)], book=book, max_open_orders=max_open_orders)
        if funded:
            for account in (2, 3, 4, 5):
                eng.submit(Deposit(account, "USD", 10_000_000))
                eng.submit(Deposit(account, "ABC", 100_000))
        return eng
    return make
