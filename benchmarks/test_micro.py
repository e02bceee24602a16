"""Micro-benchmarks of the hot functions (pytest-benchmark): ``pytest benchmarks/``.

Timings, not tests: each function runs on a small fixed state, so a change
to one hot path shows in its own line (``--benchmark-compare`` against a
saved run).  ``tests/test_bench_harness.py`` runs them once each with
``--benchmark-disable`` to see that they work.
"""
from __future__ import annotations

import pytest

import engine
from engine import core
from engine.book import BUY, NO_BUDGET, SELL
from engine.flow import market_config
from engine.messages import CancelOrder, Deposit, PlaceOrder, ReplaceOrder, decode_command, encode

SYMBOL = "BTC-USDT"
MID = 3_000_000
ENGINES = {"pure": core.Engine, "default": engine.Engine}
BOOKS = ["python"] + (["cython"] if engine.BOOK_IMPLEMENTATION == "cython" else [])


def _engine(kind: str):
    """An engine with 2 funded accounts and 200 resting orders a side."""
    assets, instruments = market_config()
    book = "python" if kind == "pure" else "auto"
    eng = ENGINES[kind](assets, instruments, book=book, max_open_orders=10_000)
    for account in (2, 3):
        for asset in assets:
            eng.submit(Deposit(account, asset.name, 10**15))
    for k in range(200):
        eng.submit(PlaceOrder(2, "", SYMBOL, "buy", price=MID - 1 - k, qty=5))
        eng.submit(PlaceOrder(3, "", SYMBOL, "sell", price=MID + 1 + k, qty=5))
    return eng


def _book(name: str):
    from engine.core import _book_class
    book = _book_class(name)(1)
    for oid in range(1, 401):
        side = BUY if oid % 2 else SELL
        book.add(0, oid, 2 + oid % 2, side, MID - oid if side == BUY else MID + oid, 5, 0, 0)
    return book


@pytest.mark.parametrize("kind", ENGINES)
def test_submit_place_then_cancel(benchmark, kind):
    """A resting GTC order accepted (lock, Accepted, Transfer) and cancelled."""
    eng = _engine(kind)
    submit = eng.submit

    def place_cancel():
        accepted = submit(PlaceOrder(2, "", SYMBOL, "buy", price=MID - 50, qty=3))[0]
        submit(CancelOrder(2, order_id=accepted.order_id))
    benchmark(place_cancel)


@pytest.mark.parametrize("kind", ENGINES)
def test_submit_move(benchmark, kind):
    """A replace to a new price and back (two commands): exchange_core's 82%."""
    eng = _engine(kind)
    submit = eng.submit
    order_id = submit(PlaceOrder(2, "", SYMBOL, "buy", price=MID - 300, qty=3))[0].order_id

    def move_twice():
        submit(ReplaceOrder(2, order_id, price=MID - 301))
        submit(ReplaceOrder(2, order_id, price=MID - 300))
    benchmark(move_twice)


@pytest.mark.parametrize("kind", ENGINES)
def test_submit_trade(benchmark, kind):
    """A taker filling one maker (the Trade, its transfers and fees), then the
    maker put back, so every round trades the same way."""
    eng = _engine(kind)
    submit = eng.submit

    def trade():
        submit(PlaceOrder(3, "", SYMBOL, "sell", price=MID - 1, qty=5))      # takes account 2's bid
        submit(PlaceOrder(2, "", SYMBOL, "buy", price=MID - 1, qty=5))       # the bid again
    benchmark(trade)


@pytest.mark.parametrize("name", BOOKS)
def test_book_add_remove(benchmark, name):
    book = _book(name)
    ids = iter(range(1000, 10**9))

    def add_remove():
        oid = next(ids)
        book.add(0, oid, 2, BUY, MID - 37, 4, 0, 0)
        book.remove(oid)
    benchmark(add_remove)


@pytest.mark.parametrize("name", BOOKS)
def test_book_match_one_level(benchmark, name):
    book = _book(name)
    ids = iter(range(1000, 10**9))

    def match_refill():
        book.match(0, BUY, MID + 1, 5, NO_BUDGET, 1, 9, 0)                  # the best ask, whole
        book.add(0, next(ids), 3, SELL, MID + 1, 5, 0, 0)                  # and put back
    benchmark(match_refill)


def test_codec_place_order(benchmark):
    """A PlaceOrder through the wire/journal codec and back."""
    cmd = PlaceOrder(2, "c1", SYMBOL, "buy", price=MID, qty=3)
    benchmark(lambda: decode_command(encode(cmd)))


def test_settlement_rows_of_a_trade(benchmark):
    """One trading command's events mapped to ledger rows (settlement.rows)."""
    from settlement.rows import BatchBuilder
    eng = _engine("default")
    events = eng.submit(PlaceOrder(3, "", SYMBOL, "sell", price=MID - 1, qty=12))   # 3 fills
    asset_ids = {a.name: i for i, a in enumerate(market_config()[0], 1)}

    def rows():
        BatchBuilder(asset_ids).add(events)
    benchmark(rows)
