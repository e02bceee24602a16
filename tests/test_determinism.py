"""Determinism: same commands, same events, byte for byte — run twice, across a
snapshot/restore, and across book implementations."""
from __future__ import annotations

import pytest

from support import BOOKS, engine_class
from engine.flow import generate, market_config
from engine.messages import decode_events, encode

N = 12_000


@pytest.fixture(scope="module")
def stream():
    return generate("full", N, seed=5, accounts=50, symbols=2, prefill=300)


def run(cmds, book, engine=None):
    assets, instruments = market_config(2)
    eng = engine or engine_class(book)(assets, instruments, book=book, max_open_orders=100_000)
    out = [encode(eng.submit(c)) for c in cmds]
    return eng, out


def test_same_stream_twice_gives_identical_bytes(stream, book):
    eng1, a = run(stream, book)
    eng2, b = run(stream, book)
    assert a == b
    assert eng1.snapshot() == eng2.snapshot()
    assert eng1.state_hash() == eng2.state_hash()


def test_snapshot_restore_in_the_middle_changes_nothing(stream, book):
    whole, expected = run(stream, book)
    half = len(stream) // 2
    first, head = run(stream[:half], book)
    restored = engine_class(book).restore(first.snapshot(), book=book)
    assert restored.state_hash() == first.state_hash()
    restored.validate()
    _, tail = run(stream[half:], book, engine=restored)
    assert head + tail == expected
    assert restored.state_hash() == whole.state_hash()


@pytest.mark.skipif(len(BOOKS) < 2, reason="needs both book implementations")
def test_books_give_identical_bytes(stream):
    py, a = run(stream, "python")
    cy, b = run(stream, "cython")
    assert a == b
    assert py.state_hash() == cy.state_hash()
    # a snapshot from one book restores into the other
    assert engine_class("cython").restore(py.snapshot(), book="cython").state_hash() == py.state_hash()


def test_events_round_trip_through_the_codec(stream):
    _, out = run(stream[:3000], "python")
    for blob in out:
        assert encode(decode_events(blob)) == blob
