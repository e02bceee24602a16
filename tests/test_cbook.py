"""The Cython order-book kernel (engine._cbook) against the reference (engine.book).

Book level: the same operations on both books, every return value compared,
``validate()`` on both along the way (hypothesis for shrinking, plus seeded
long runs).  Engine level: the pure-Python engine (``engine.core.Engine`` on
the Python book) and the accelerated one (``engine.Engine``: the compiled core
when built, on the Cython book), fed the same command stream, must emit
byte-identical encoded events and snapshots; the compiled core on the Python
book is held to the same stream too.

Everything but ``test_kernel_is_built_when_required`` skips when the kernel is
not built.  CI sets EXCHANGE_REQUIRE_CYTHON=1 so a missing kernel fails there.
EXCHANGE_SOAK=1 runs the long versions.
"""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
import engine.book as ref
from engine import Asset, Instrument
from engine.core import Engine as PureEngine
from engine.messages import (CancelOrder, Deposit, Halt, PlaceOrder, ReplaceOrder, Resume,
                             Withdraw, encode)

try:
    from engine import _cbook
except ImportError:  # pragma: no cover - depends on the build
    _cbook = None

SOAK = os.environ.get("EXCHANGE_SOAK", "") not in ("", "0")
INT64_MAX = 2**63 - 1
NO_BUDGET = ref.NO_BUDGET
needs_kernel = pytest.mark.skipif(_cbook is None, reason="engine._cbook is not built")


def test_kernel_is_built_when_required():
    """CI sets EXCHANGE_REQUIRE_CYTHON=1: there a missing kernel is a failure, not a skip."""
    required = os.environ.get("EXCHANGE_REQUIRE_CYTHON", "") not in ("", "0")
    if _cbook is None:
        if required:
            pytest.fail("EXCHANGE_REQUIRE_CYTHON=1 but engine._cbook is not importable "
                        "(build it with `pip install -e .`; needs Cython and a C compiler)")
        pytest.skip("engine._cbook is not built")
    assert _cbook.Book.implementation == "cython"
    from engine import core
    assert core.CBook is _cbook.Book
    assert "cython" in core.available_books()


# ====================================================================== helpers
class Twin:
    """The reference and the kernel side by side: every call goes to both and
    the results (or the exception types) must be equal."""

    def __init__(self, n_instruments: int):
        self.py = ref.Book(n_instruments)
        self.cy = _cbook.Book(n_instruments)

    def __getattr__(self, name):
        fp, fc = getattr(self.py, name), getattr(self.cy, name)

        def call(*args):
            try:
                a = fp(*args)
            except Exception as exc:   # noqa: BLE001 - compared below
                a = ("raised", type(exc))
            try:
                b = fc(*args)
            except Exception as exc:   # noqa: BLE001
                b = ("raised", type(exc))
            assert a == b, f"{name}{args}: python {a!r} != cython {b!r}"
            return a
        return call

    def __len__(self):
        a, b = len(self.py), len(self.cy)
        assert a == b, (a, b)
        return a

    def check(self, n_instruments: int):
        self.py.validate()
        self.cy.validate()
        assert len(self) >= 0
        for i in range(n_instruments):
            assert self.py.dump(i) == self.cy.dump(i)
            assert self.py.depth(i, 1 << 30) == self.cy.depth(i, 1 << 30)


class RandomBookOps:
    """A seeded stream of valid book operations (the engine's preconditions
    hold: no id twice, positive prices and quantities, adds never cross)."""

    ACCOUNTS = (2, 3, 4, 5)

    def __init__(self, twin: Twin, rnd: random.Random, n_instruments: int):
        self.t, self.r, self.n = twin, rnd, n_instruments
        # per instrument a mid and a unit; instrument 1 lives near price 1,
        # instrument 2 near 2**62 (odd configs: max_price is not 2**31-1 there)
        self.mid = [rnd.choice((1000, 50_000, 2**31 - 200)) for _ in range(n_instruments)]
        self.unit = [rnd.choice((1, 3, 10_000)) for _ in range(n_instruments)]
        if n_instruments > 1:
            self.mid[1] = 5
        if n_instruments > 2:
            self.mid[2], self.unit[2] = 2**62, 1
        self.live: list[int] = []
        self.live_set: set[int] = set()
        self.next_id = rnd.choice((1, 2**40, 2**62 - 10**7))

    # ---------------------------------------------------------------- pieces
    def _price(self, i: int) -> int:
        r = self.r
        off = int(r.expovariate(1 / 6))
        p = self.mid[i] + r.choice((-1, 1)) * off
        return max(1, p)

    def _qty(self) -> int:
        x = self.r.random()
        if x < 0.002:
            return 2**62 + self.r.randrange(1000)       # level totals past int64
        if x < 0.05:
            return self.r.randrange(1, 10**9)
        return self.r.randrange(1, 60)

    def _fee(self) -> int:
        x = self.r.random()
        if x < 0.6:
            return 0
        if x < 0.9:
            return self.r.randrange(10**12)
        if x < 0.97:
            return self.r.randrange(2**60, 2**72)          # whole part well past the fast path
        return -self.r.randrange(10**9)                    # opaque: the book keeps any int

    def _flags(self) -> int:
        return self.r.choice((0, 1, 2, 3, 4, 5, 6, 7, 2**31 - 1))

    def _forget(self, oid: int) -> None:
        self.live_set.discard(oid)

    def _some_live(self):
        while self.live:
            k = self.r.randrange(len(self.live))
            oid = self.live[k]
            if oid in self.live_set:
                return oid
            self.live[k] = self.live[-1]
            self.live.pop()
        return None

    def add(self, i: int | None = None, side: int | None = None, price: int | None = None):
        r, t = self.r, self.t
        i = r.randrange(self.n) if i is None else i
        side = r.randrange(2) if side is None else side
        price = self._price(i) if price is None else price
        if r.random() < 0.3:        # rest(): the book itself refuses a crossing price
            oid = self.next_id
            self.next_id += 1
            if t.rest(i, oid, r.choice(self.ACCOUNTS), side, price, self._qty(), self._fee(),
                      self._flags()):
                self.live.append(oid)
                self.live_set.add(oid)
            return
        if side == ref.BUY:
            ask = t.py.best_ask(i)
            if ask and price >= ask:
                price = ask - 1
        else:
            bid = t.py.best_bid(i)
            if bid and price <= bid:
                price = bid + 1
        if price < 1:
            return
        oid = self.next_id
        self.next_id += r.choice((1, 1, 1, 2, 1000))
        t.add(i, oid, r.choice(self.ACCOUNTS), side, price, self._qty(), self._fee(), self._flags())
        self.live.append(oid)
        self.live_set.add(oid)

    def match(self):
        r, t = self.r, self.t
        i, side = r.randrange(self.n), r.randrange(2)
        x = r.random()
        if x < 0.15:
            limit = INT64_MAX if side == ref.BUY else 1
        else:
            limit = self._price(i) + (r.randrange(0, 8) if side == ref.BUY else -r.randrange(0, 8))
            limit = max(1, limit)
        qty = INT64_MAX if r.random() < 0.05 else r.randrange(1, 120)
        x = r.random()
        if x < 0.6:
            budget = NO_BUDGET
        elif x < 0.8:
            budget = r.randrange(0, 10**7)
        elif x < 0.95:
            budget = r.randrange(0, 2**63 - 1)
        else:
            budget = NO_BUDGET - 1
        unit = self.unit[i] if r.random() < 0.9 else r.choice((1, 10**9, 2**40))
        account, stp = r.choice(self.ACCOUNTS), r.randrange(4)
        t.can_fill(i, side, limit, qty, account, stp)
        recs = t.match(i, side, limit, qty, budget, unit, account, stp)
        left = qty
        for kind, oid, _, _, q, remaining, _, _ in recs:
            if kind == ref.MAKER_CANCELLED or (kind in (ref.FILL, ref.MAKER_DECREMENTED)
                                               and remaining == 0):
                self._forget(oid)
            if kind in (ref.FILL, ref.MAKER_DECREMENTED):
                left -= q
        # a limit order's remainder rests, like the engine does, when it does not cross
        if (left > 0 and left < 2**62 and limit not in (1, INT64_MAX) and r.random() < 0.5
                and not t.py.crosses(i, side, limit)):
            oid = self.next_id
            self.next_id += 1
            t.add(i, oid, account, side, limit, left, 0, stp << 1)
            self.live.append(oid)
            self.live_set.add(oid)

    def step(self):
        r, t = self.r, self.t
        x = r.random()
        if x < 0.40:
            self.add()
        elif x < 0.55:
            oid = self._some_live() if r.random() < 0.9 else r.choice((0, -1, 2**62 + 7, 2**70))
            rec = t.remove(oid)
            if rec is not None:
                self._forget(oid)
        elif x < 0.58:
            oid = self._some_live() if r.random() < 0.95 else r.choice((0, 2**62 + 7, "x"))
            if oid is None:
                return
            i = t.py.get(oid)[0] if oid in self.live_set else 0
            price = self._price(i) if r.random() < 0.9 else r.choice((0, 1, self.mid[i] + 1000))
            if t.move(oid, price, self._qty()) is False:       # crossed: off the book
                self._forget(oid)
        elif x < 0.62:
            oid = self._some_live()
            if oid is not None:
                qty = t.get(oid)[4]
                t.reduce(oid, r.randrange(1, qty + 1) if qty < 2**62 else qty - 1)
        elif x < 0.66:
            oid = self._some_live()
            if oid is not None:
                t.set_fee(oid, self._fee())
        elif x < 0.82:
            self.match()
        elif x < 0.86:
            i = r.randrange(self.n)
            t.crosses(i, r.randrange(2), self._price(i))
        elif x < 0.90:
            t.depth(r.randrange(self.n), r.choice((-1, 0, 1, 2, 5, 1000)))
        elif x < 0.93:
            t.get(self._some_live() if r.random() < 0.8 else r.choice((3, 2**63 - 1, 2**64, "x")))
        elif x < 0.97:
            i = r.randrange(self.n)
            t.best_bid(i)
            t.best_ask(i)
        elif x < 0.975:
            t.dump(r.randrange(self.n))
        else:
            len(t)
        if r.random() < 0.01:       # the mid walks
            i = r.randrange(self.n)
            self.mid[i] = max(1, self.mid[i] + r.choice((-3, -1, 1, 3)))
        if len(self.live_set) > 3000:   # keep the book a realistic size
            for _ in range(500):
                oid = self._some_live()
                t.remove(oid)
                self._forget(oid)


def _random_run(seed: int, n_ops: int, n_instruments: int = 3, check_every: int = 2000):
    twin = Twin(n_instruments)
    ops = RandomBookOps(twin, random.Random(seed), n_instruments)
    for k in range(n_ops):
        ops.step()
        if k % check_every == 0:
            twin.check(n_instruments)
    twin.check(n_instruments)
    return twin


# ================================================================ book level
@needs_kernel
def test_constants_agree():
    for name in ("BUY", "SELL", "STP_CANCEL_NEWEST", "STP_CANCEL_OLDEST", "STP_CANCEL_BOTH",
                 "STP_DECREMENT", "FILL", "MAKER_CANCELLED", "MAKER_DECREMENTED",
                 "TAKER_CANCELLED", "NO_BUDGET"):
        assert getattr(_cbook, name) == getattr(ref, name), name
    assert _cbook.NO_BUDGET == 2**63 - 1
    assert _cbook.Book.implementation == "cython" and ref.Book.implementation == "python"


SEEDS = [11, 22, 33, 44, 55]


@needs_kernel
@pytest.mark.parametrize("seed", SEEDS)
def test_differential_seeded(seed):
    """5 seeds x 200,000 operations = 1,000,000 compared operations."""
    _random_run(seed, 200_000)


@needs_kernel
@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="EXCHANGE_SOAK=1 runs the long version")
@pytest.mark.parametrize("seed", range(100, 108))
def test_differential_soak(seed):
    _random_run(seed, 2_000_000, n_instruments=4, check_every=20_000)


# hypothesis: a small op language whose arguments pick from the live state, so
# a failure shrinks to a short readable sequence
_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 1), st.integers(0, 1), st.integers(1, 12),
              st.integers(1, 9), st.integers(2, 4)),
    st.tuples(st.just("remove"), st.integers(0, 50)),
    st.tuples(st.just("rest"), st.integers(0, 1), st.integers(0, 1), st.integers(1, 12),
              st.integers(1, 9), st.integers(2, 4)),
    st.tuples(st.just("reduce"), st.integers(0, 50), st.integers(1, 9)),
    st.tuples(st.just("move"), st.integers(0, 50), st.integers(0, 14), st.integers(0, 9)),
    st.tuples(st.just("set_fee"), st.integers(0, 50), st.integers(-2**63 * 10_000, (2**63 - 1) * 10_000 + 9_999)),
    st.tuples(st.just("match"), st.integers(0, 1), st.integers(0, 1), st.integers(0, 14),
              st.integers(1, 40), st.one_of(st.just(NO_BUDGET), st.integers(0, 400)),
              st.integers(1, 5), st.integers(2, 4), st.integers(0, 3)),
    st.tuples(st.just("can_fill"), st.integers(0, 1), st.integers(0, 1), st.integers(0, 14),
              st.integers(1, 40), st.integers(2, 4), st.integers(0, 3)),
    st.tuples(st.just("query"), st.integers(0, 1), st.integers(0, 1), st.integers(0, 14)),
)


@needs_kernel
@settings(max_examples=300 if not SOAK else 3000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, max_size=60))
def test_differential_hypothesis(ops):
    t = Twin(2)
    live: list[int] = []
    next_id = 1
    for op in ops:
        kind = op[0]
        if kind == "add":
            _, i, side, price, qty, account = op
            if side == ref.BUY and t.py.best_ask(i) and price >= t.py.best_ask(i):
                continue
            if side == ref.SELL and t.py.best_bid(i) and price <= t.py.best_bid(i):
                continue
            t.add(i, next_id, account, side, price, qty, next_id * 7, next_id % 8)
            live.append(next_id)
            next_id += 1
        elif kind == "rest":
            _, i, side, price, qty, account = op
            if t.rest(i, next_id, account, side, price, qty, next_id * 7, next_id % 8):
                live.append(next_id)
            next_id += 1
        elif kind in ("remove", "reduce", "set_fee", "move"):
            if not live:
                continue
            oid = live[op[1] % len(live)]
            if t.py.get(oid) is None:
                live.remove(oid)
                t.get(oid)
                continue
            if kind == "remove":
                t.remove(oid)
                live.remove(oid)
            elif kind == "reduce":
                t.reduce(oid, min(op[2], t.py.get(oid)[4]))
            elif kind == "move":
                if t.move(oid, op[2], op[3]) is False:
                    live.remove(oid)
            else:
                t.set_fee(oid, op[2])
        elif kind == "match":
            _, i, side, limit, qty, budget, unit, account, stp = op
            t.match(i, side, limit, qty, budget, unit, account, stp)
        elif kind == "can_fill":
            _, i, side, limit, qty, account, stp = op
            t.can_fill(i, side, limit, qty, account, stp)
        else:
            _, i, side, price = op
            t.crosses(i, side, price)
            t.depth(i, 3)
            t.best_bid(i)
            t.best_ask(i)
        t.py.validate()
        t.cy.validate()
    t.check(2)


# ================================================================ edge cases
@needs_kernel
def test_empty_book():
    t = Twin(2)
    assert len(t) == 0
    assert t.get(1) is None and t.remove(1) is None
    assert t.best_bid(0) == 0 and t.best_ask(1) == 0
    assert t.depth(0, 10) == ([], [])
    assert t.dump(1) == []
    assert t.crosses(0, ref.BUY, 100) is False and t.crosses(0, ref.SELL, 1) is False
    assert t.match(0, ref.BUY, INT64_MAX, 10, NO_BUDGET, 1, 2, 0) == []
    assert t.can_fill(0, ref.SELL, 1, 1, 2, 1) is False
    t.reduce(5, 1)          # KeyError on both
    t.set_fee(5, 1)         # KeyError on both
    t.check(2)
    assert len(_cbook.Book(0)) == 0


@needs_kernel
def test_level_emptied_in_the_middle():
    t = Twin(1)
    for oid, price in enumerate((100, 99, 98, 97, 96), start=1):
        t.add(0, oid, 2, ref.BUY, price, 5, 0, 0)
    t.add(0, 6, 3, ref.BUY, 98, 1, 0, 0)
    for oid, price in enumerate((101, 102, 103, 104), start=10):
        t.add(0, oid, 2, ref.SELL, price, 5, 0, 0)
    assert t.remove(3) == (0, 2, ref.BUY, 98, 5, 0, 0)
    assert t.depth(0, 10)[0] == [(100, 5), (99, 5), (98, 1), (97, 5), (96, 5)]
    t.remove(6)
    assert t.depth(0, 10)[0] == [(100, 5), (99, 5), (97, 5), (96, 5)]
    t.remove(11)
    t.remove(5)             # the worst bid level
    t.remove(1)             # the best
    assert t.best_bid(0) == 99 and t.best_ask(0) == 101
    t.add(0, 20, 4, ref.BUY, 98, 2, 0, 0)       # a level comes back in the middle
    assert t.depth(0, 2) == ([(99, 5), (98, 2)], [(101, 5), (103, 5)])
    t.check(1)


@needs_kernel
def test_many_instruments():
    n = 500
    t = Twin(n)
    rnd = random.Random(5)
    oid = 1
    for i in range(n):
        for _ in range(rnd.randrange(0, 6)):
            side = rnd.randrange(2)
            t.add(i, oid, rnd.randrange(2, 6), side, 1000 - 10 + rnd.randrange(10) if side == 0
                  else 1001 + rnd.randrange(10), rnd.randrange(1, 9), 0, 0)
            oid += 1
    for i in range(0, n, 7):
        t.match(i, ref.BUY, 1005, 7, NO_BUDGET, 1, 9, 0)
        t.match(i, ref.SELL, 995, 7, NO_BUDGET, 1, 9, 0)
    t.check(n)
    t.best_bid(n)           # IndexError on both
    t.dump(n)


@needs_kernel
def test_large_ids_and_extreme_prices():
    t = Twin(2)
    ids = [2**62, 2**62 - 1, 2**63 - 1, 0, -5, 2**40 + 3]
    t.add(0, ids[0], 2, ref.BUY, 1, 3, 0, 0)              # price at 1
    t.add(0, ids[1], 3, ref.SELL, 2**31 - 1, 4, 0, 0)     # price at the default max
    t.add(1, ids[2], 2, ref.SELL, 2**63 - 1, 5, 0, 0)     # any int64 price works
    t.add(1, ids[3], 3, ref.BUY, 2**62, 6, 0, 0)
    t.add(1, ids[4], 4, ref.BUY, 2**62 - 1, 7, 0, 0)
    t.add(1, ids[5], 4, ref.SELL, 2**63 - 2, 8, 0, 0)
    for oid in ids:
        assert t.get(oid) is not None
    assert t.get(2**64) is None and t.remove(-2**70) is None
    assert t.best_ask(1) == 2**63 - 2
    t.can_fill(1, ref.BUY, INT64_MAX, 13, 9, 0)
    t.match(1, ref.BUY, INT64_MAX, 10, NO_BUDGET, 1, 9, 0)
    t.match(1, ref.BUY, INT64_MAX, 10, NO_BUDGET - 1, 1, 9, 0)   # price*unit overflows: none affordable
    t.match(1, ref.SELL, 1, 20, 2**62 + 2**61, 1, 9, 3)
    t.match(0, ref.SELL, 1, 2, NO_BUDGET, 1, 9, 0)
    t.check(2)


@needs_kernel
def test_pools_and_index_grow_past_initial_capacity_and_shrink_back():
    t = Twin(3)
    rnd = random.Random(9)
    n = 40_000                      # initial capacities: 1024 orders, 2048 index buckets, 64 levels
    for oid in range(1, n + 1):
        side = rnd.randrange(2)
        price = rnd.randrange(1, 3000) if side == 0 else rnd.randrange(3001, 6000)
        t.add(oid % 3, oid * 7919, rnd.randrange(2, 9), side, price, rnd.randrange(1, 9), oid, 0)
    t.check(3)
    stats = _cbook.memory_stats(t.cy)
    assert stats["orders"] == n and stats["order_pool_bytes"] >= n * stats["sizeof_order"]
    order = list(range(1, n + 1))
    rnd.shuffle(order)
    for k, oid in enumerate(order):
        assert t.remove(oid * 7919) is not None
        if k % 10_000 == 0:
            t.check(3)
    assert len(t) == 0
    t.check(3)
    for oid in range(1, 2000):       # freed slots and levels are reused
        t.add(0, oid, 2, oid % 2, 100 + (oid % 2) * 10 + oid % 5, 1, 0, 0)
    t.check(3)
    assert _cbook.memory_stats(t.cy)["order_pool_bytes"] == stats["order_pool_bytes"]


@needs_kernel
def test_remove_unknown_reduce_set_fee():
    t = Twin(1)
    t.add(0, 1, 2, ref.SELL, 50, 10, 12345, 7)
    t.add(0, 2, 3, ref.SELL, 50, 4, 0, 0)
    assert t.remove(99) is None
    t.reduce(1, 10)
    t.reduce(1, 3)                  # keeps its place
    t.reduce(1, 4)                  # AssertionError on both: only lower
    t.reduce(1, 0)                  # AssertionError on both
    t.reduce(99, 1)                 # KeyError on both
    t.set_fee(1, 10**22 + 1)
    t.set_fee(2, -1)
    assert t.get(1) == (0, 2, ref.SELL, 50, 3, 10**22 + 1, 7)
    assert t.depth(0, 1) == ([], [(50, 7)])
    recs = t.match(0, ref.BUY, 50, 5, NO_BUDGET, 1, 9, 0)
    assert [r[1] for r in recs] == [1, 2]       # time priority kept after reduce
    t.set_fee(1, 5)                 # gone now: KeyError on both
    t.add(0, 2, 3, ref.SELL, 50, 4, 0, 0)       # AssertionError on both: id 2 rests
    t.add(0, 3, 3, ref.SELL, 50, 0, 0, 0)       # AssertionError on both: qty 0
    t.add(0, 3, 3, ref.SELL, 0, 1, 0, 0)        # AssertionError on both: price 0
    t.check(1)


@needs_kernel
def test_budget_sentinel_and_budgets():
    t = Twin(1)
    for oid, price in enumerate((10, 11, 12), start=1):
        t.add(0, oid, 2, ref.SELL, price, 10, 0, 0)
    # NO_BUDGET: qty alone limits; one less than it is a (huge) real budget
    t.match(0, ref.BUY, INT64_MAX, 3, NO_BUDGET, 7, 3, 0)
    t.match(0, ref.BUY, INT64_MAX, 3, NO_BUDGET - 1, 7, 3, 0)
    t.match(0, ref.BUY, INT64_MAX, INT64_MAX, 0, 7, 3, 0)          # nothing affordable
    t.match(0, ref.BUY, INT64_MAX, INT64_MAX, 69, 7, 3, 0)         # < one lot at 10*7
    t.match(0, ref.BUY, INT64_MAX, INT64_MAX, 10 * 7 * 5 + 1, 7, 3, 0)
    t.match(0, ref.BUY, INT64_MAX, INT64_MAX, 10**6, 7, 3, 0)      # walks every level
    assert len(t) == 0
    t.check(1)


@needs_kernel
@pytest.mark.parametrize("stp", [0, 1, 2, 3])
def test_stp_modes(stp):
    t = Twin(1)
    t.add(0, 1, 5, ref.BUY, 100, 4, 11, 2)
    t.add(0, 2, 2, ref.BUY, 100, 6, 12, 0)      # own order, behind another's
    t.add(0, 3, 5, ref.BUY, 100, 3, 13, 0)
    t.add(0, 4, 2, ref.BUY, 99, 10, 14, 0)
    t.can_fill(0, ref.SELL, 99, 20, 2, stp)
    recs = t.match(0, ref.SELL, 99, 9, NO_BUDGET, 1, 2, stp)
    assert recs
    t.check(1)
    t.match(0, ref.SELL, 1, 100, NO_BUDGET, 1, 2, stp)
    t.check(1)


@needs_kernel
def test_stp_decrement_leaves_makers_partially_reduced():
    t = Twin(1)
    t.add(0, 1, 2, ref.SELL, 10, 8, 0, 6)
    t.add(0, 2, 3, ref.SELL, 10, 5, 0, 0)
    recs = t.match(0, ref.BUY, 10, 3, NO_BUDGET, 1, 2, ref.STP_DECREMENT)
    assert recs == [(ref.MAKER_DECREMENTED, 1, 2, 10, 3, 5, 0, 6)]
    assert t.get(1)[4] == 5 and t.depth(0, 1) == ([], [(10, 10)])
    recs = t.match(0, ref.BUY, 10, 7, NO_BUDGET, 1, 2, ref.STP_DECREMENT)
    assert recs == [(ref.MAKER_DECREMENTED, 1, 2, 10, 5, 0, 0, 6),
                    (ref.FILL, 2, 3, 10, 2, 3, 0, 0)]
    t.check(1)


@needs_kernel
def test_level_total_past_int64_and_huge_fee():
    t = Twin(1)
    big = 2**62 + 5
    for oid in range(1, 5):
        t.add(0, oid, 2, ref.BUY, 7, big, (2**63 - 1) * 10_000 + 9_999, 0)
    assert t.depth(0, 1) == ([(7, 4 * big)], [])
    t.can_fill(0, ref.SELL, 7, INT64_MAX, 3, 0)
    t.match(0, ref.SELL, 7, INT64_MAX, NO_BUDGET, 1, 3, 0)
    t.check(1)
    with pytest.raises(OverflowError):       # a whole part past int64 is refused, nothing changes
        t.cy.add(0, 9, 2, ref.BUY, 7, 1, 2**63 * 10_000, 0)
    t.cy.validate()


@needs_kernel
def test_bad_input_raises_instead_of_corrupting():
    b = _cbook.Book(2)
    b.add(0, 1, 2, ref.BUY, 10, 1, 0, 0)
    for args in [(2, 2, 2, 0, 10, 1, 0, 0), (-1, 2, 2, 0, 10, 1, 0, 0), (0, 2, 2, 2, 10, 1, 0, 0),
                 (0, 2, 2, 0, 10, 1, 0, 2**31), (0, 2**63, 2, 0, 10, 1, 0, 0),
                 (0, 2, 2, 0, 10, 1, "fee", 0), (0, 2, 2, 0, 10.5, 1, 0, 0)]:
        with pytest.raises((IndexError, OverflowError, TypeError)):
            b.add(*args)
    with pytest.raises(ValueError):
        b.match(0, ref.SELL, 1, 1, -1, 1, 3, 0)
    with pytest.raises(ValueError):
        b.match(0, ref.SELL, 1, 1, 5, 0, 3, 0)
    with pytest.raises(IndexError):
        b.match(5, ref.SELL, 1, 1, NO_BUDGET, 1, 3, 0)
    assert b.get("1") is None and b.get(1.5) is None
    b.validate()
    assert b.dump(0) == [(1, 2, 0, 10, 1, 0, 0)]


# ============================================================== engine level
ASSETS = [Asset("BTC", 8), Asset("ETH", 8), Asset("USDT", 6)]
INSTRUMENTS = [
    Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001", maker_fee_bps=10, taker_fee_bps=20),
    Instrument("ETH-USDT", "ETH", "USDT", "0.01", "0.001", min_qty=1, maker_fee_bps=0,
               taker_fee_bps=7, max_price=10**7),
    Instrument("ETH-BTC", "ETH", "BTC", "0.00001", "0.001", maker_fee_bps=5, taker_fee_bps=5),
]
MIDS = {"BTC-USDT": 5_000_000, "ETH-USDT": 300_000, "ETH-BTC": 6_000}
STPS = ("cancel_newest", "cancel_oldest", "cancel_both", "decrement")


class RandomCommands:
    """A seeded stream of engine commands: every order type, tif, STP mode,
    post-only, stops, cancels, replaces, deposits, withdrawals, halts."""

    def __init__(self, seed: int, engine: PureEngine):
        self.r = random.Random(seed)
        self.eng = engine           # read only: which orders are open, which markets halted
        self.accounts = list(range(2, 8))
        self.mid = dict(MIDS)
        self.order_ids: list[int] = []
        self.n = 0

    def _price(self, symbol, side="buy"):
        """Mostly passive (buys below the mid, sells above), a quarter aggressive."""
        r = self.r
        off = int(r.expovariate(1 / 15))
        if r.random() < 0.25:
            off = -r.randrange(0, 6)
        return max(1, self.mid[symbol] - off if side == "buy" else self.mid[symbol] + off)

    def next(self):
        r = self.r
        self.n += 1
        if self.n <= 3 * len(self.accounts):       # fund everyone first
            account = self.accounts[(self.n - 1) % len(self.accounts)]
            asset = ASSETS[(self.n - 1) // len(self.accounts)].name
            return Deposit(account, asset, 10**16, "seed")
        symbol = r.choice(list(MIDS))
        if r.random() < 0.01:
            self.mid[symbol] = max(10, self.mid[symbol] + r.choice((-5, 5)))
        x = r.random()
        account = r.choice(self.accounts)
        if x < 0.55:
            return self._place(account, symbol)
        if x < 0.70:
            oid = self._open_order() if r.random() < 0.95 else r.choice((0, 10**9, 2**62))
            if r.random() < 0.7:        # most cancels name an order of the right account
                account = None
            return CancelOrder(account if account is not None else self._owner(oid), order_id=oid)
        if x < 0.88:
            if not self.order_ids:
                return Halt("nope")
            oid = self._open_order()
            price = self._price(symbol) if r.random() < 0.6 else None
            qty = r.randrange(1, 40) if (price is None or r.random() < 0.5) else None
            return ReplaceOrder(self._owner(oid) if r.random() < 0.9 else account, oid, price, qty)
        if x < 0.95:
            return Deposit(account, r.choice(ASSETS).name, r.randrange(1, 10**12))
        if x < 0.995:
            return Withdraw(account, r.choice(ASSETS).name, r.randrange(1, 10**13))
        halted = [s for s in MIDS if self.eng.market(s).halted]
        if halted and r.random() < 0.9:
            return Resume(r.choice(halted))
        return (Halt if r.random() < 0.3 else Resume)(symbol)

    def _open_order(self):
        """Mostly an order that is still open (resting or a waiting stop)."""
        for _ in range(4):
            oid = self.r.choice(self.order_ids[-400:]) if self.order_ids else 1
            if self.eng.order(oid) is not None:
                return oid
        return oid

    def _owner(self, oid):
        return self.owners.get(oid, 2)

    owners: dict[int, int] = {}

    def _place(self, account, symbol):
        r = self.r
        side = r.choice(("buy", "sell"))
        otype = r.choices(("limit", "market", "stop_limit", "stop_market"), (70, 15, 8, 7))[0]
        tif = r.choices(("gtc", "ioc", "fok"), (75, 15, 10))[0]
        stp = r.choice(STPS)
        price = self._price(symbol, side)
        qty = r.randrange(1, 60)
        quote_qty = stop_price = None
        post_only = False
        if otype == "limit" and tif == "gtc" and r.random() < 0.15:
            post_only = True
        if otype in ("market", "stop_market"):
            if side == "buy" and tif != "fok" and r.random() < 0.5:
                quote_qty = r.randrange(1, 10**10)
                qty = 0 if r.random() < 0.7 else qty
                price = None
            elif r.random() < 0.5:
                price = None if side == "sell" else price
        if otype in ("stop_limit", "stop_market"):
            stop_price = self._price(symbol, "sell" if side == "buy" else "buy")
        if r.random() < 0.01:
            price = 0               # rejected at the edge, same on both
        return PlaceOrder(account, f"c{self.n}" if r.random() < 0.5 else "", symbol, side, otype,
                          tif, price, qty, quote_qty, stop_price, post_only, stp)

    def observe(self, events):
        for ev in events:
            name = type(ev).__name__
            if name == "Accepted":
                self.order_ids.append(ev.order_id)
                self.owners[ev.order_id] = ev.account


def _engine_run(seed: int, n_commands: int, check_every: int = 500):
    py = PureEngine(ASSETS, INSTRUMENTS, book="python")
    cy = engine.Engine(ASSETS, INSTRUMENTS, book="cython")
    assert (py.book_implementation, cy.book_implementation) == ("python", "cython")
    assert (py.core_implementation, cy.core_implementation) == ("python", engine.CORE_IMPLEMENTATION)
    others = [cy]
    if engine.CORE_IMPLEMENTATION == "cython":      # the compiled core on the Python book
        others.append(engine.Engine(ASSETS, INSTRUMENTS, book="python"))
    gen = RandomCommands(seed, py)
    gen.owners = {}
    trades = 0
    for k in range(n_commands):
        cmd = gen.next()
        a = py.submit(cmd)
        ea = encode(a)
        for other in others:
            b = other.submit(cmd)
            assert ea == encode(b), (f"command {k} {cmd!r}:\npython {a!r}\n"
                                     f"{other.core_implementation} core, {other.book_implementation} book {b!r}")
        gen.observe(a)
        trades += sum(type(e).__name__ == "Trade" for e in a)
        if k % check_every == 0:
            for eng in (py, *others):
                eng.validate()
    for eng in others:
        eng.validate()
        assert eng.snapshot() == py.snapshot()
        assert eng.state_hash() == py.state_hash()
    py.validate()
    return py, cy, trades


@needs_kernel
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_engine_python_and_cython_emit_identical_events(seed):
    py, cy, trades = _engine_run(seed, 6_000)
    assert trades > 200                     # the stream really trades
    # restore on the other book continues identically
    snap = cy.snapshot()
    py2 = PureEngine.restore(snap, book="python")
    cy2 = engine.Engine.restore(snap, book="cython")
    assert py2.snapshot() == cy2.snapshot() == snap
    gen = RandomCommands(seed + 100, py2)
    gen.n = 10**6
    gen.order_ids = list(range(1, 200))
    gen.owners = {}
    for _ in range(1500):
        cmd = gen.next()
        a, b = py2.submit(cmd), cy2.submit(cmd)
        assert encode(a) == encode(b), cmd
        gen.observe(a)
    assert py2.state_hash() == cy2.state_hash()
    cy2.validate()


@needs_kernel
@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="EXCHANGE_SOAK=1 runs the long version")
@pytest.mark.parametrize("seed", range(10, 14))
def test_engine_soak(seed):
    _engine_run(seed, 100_000, check_every=5_000)


@needs_kernel
def test_auto_picks_cython_and_pure_python_env_forces_python(monkeypatch):
    from engine import core
    monkeypatch.delenv("EXCHANGE_PURE_PYTHON", raising=False)
    assert core.default_book() == "cython"
    assert engine.Engine(ASSETS, INSTRUMENTS).book_implementation == "cython"
    monkeypatch.setenv("EXCHANGE_PURE_PYTHON", "1")
    assert core.default_book() == "python"
    assert engine.Engine(ASSETS, INSTRUMENTS).book_implementation == "python"


# ============================================================ kernel structure
@needs_kernel
def test_levels_emptied_deep_in_the_book_are_kept_reused_and_compacted():
    t = Twin(1)
    n = 300
    for k in range(n):                          # one order per level, both sides
        t.add(0, 1 + k, 2, ref.BUY, 1000 - k, 1, 0, 0)
        t.add(0, 10_000 + k, 3, ref.SELL, 1001 + k, 1, 0, 0)
    for k in range(10, 60):                     # empty levels below the top
        t.remove(1 + k)
    t.check(1)
    assert _cbook.memory_stats(t.cy)["empty_levels_kept"] == 50
    for k in range(10, 30):                     # the same prices come back
        t.add(0, 50_000 + k, 4, ref.BUY, 1000 - k, 2, 0, 0)
    t.check(1)
    assert _cbook.memory_stats(t.cy)["empty_levels_kept"] == 30
    t.depth(0, 40)
    t.can_fill(0, ref.SELL, 1, 10**6, 9, 0)
    for k in range(60, n):                      # past half empty: compacted
        t.remove(1 + k)
        if k % 37 == 0:
            t.check(1)
    stats = _cbook.memory_stats(t.cy)
    assert stats["empty_levels_kept"] <= max(32, stats["levels"])
    for k in range(10):                         # the top goes: empty entries behind it go too
        t.remove(1 + k)
    t.match(0, ref.SELL, 1, 10**6, NO_BUDGET, 1, 9, 0)
    assert t.best_bid(0) == 0 and _cbook.memory_stats(t.cy)["empty_levels_kept"] == 0
    t.check(1)


@needs_kernel
@pytest.mark.parametrize("pattern", ["sequential", "strided", "random", "top-bits"])
def test_index_displacement_stays_small(pattern):
    rnd = random.Random(4)
    n = 100_000
    ids = {"sequential": [10**12 + k for k in range(n)],
           "strided": [k << 20 for k in range(1, n + 1)],
           "random": rnd.sample(range(1, 2**62), n),
           "top-bits": [k << 40 for k in range(1, n + 1)]}[pattern]
    b = _cbook.Book(1)
    for k, oid in enumerate(ids):
        b.add(0, oid, 2, k & 1, 1000 + (k & 1) * 100 + k % 50, 1, 0, 0)
    assert _cbook.memory_stats(b)["index_max_displacement"] <= 64
    b.validate()
    rnd.shuffle(ids)
    for oid in ids[: n // 2]:
        assert b.remove(oid) is not None
    b.validate()
    assert _cbook.memory_stats(b)["index_max_displacement"] <= 64


@needs_kernel
def test_index_stays_short_in_the_engines_steady_state():
    """The engine's own pattern: ids keep rising far past the table size while
    a bounded set of orders stays live, older ones cancelled more often.  A
    hash that kept consecutive ids in consecutive buckets reached displacement
    ~2,000 here (every insert homing inside the newest run swapped to its end)."""
    rnd = random.Random(9)
    b = _cbook.Book(1)
    live, worst = [], 0
    for oid in range(1, 150_001):
        b.add(0, oid, 2, oid & 1, 1000 + (oid & 1) * 100 + oid % 50, 1, 0, 0)
        live.append(oid)
        if len(live) > 6000:
            i = rnd.randrange(len(live) // 2)
            live[i], live[-1] = live[-1], live[i]
            b.remove(live.pop())
        if oid % 10_000 == 0:
            worst = max(worst, _cbook.memory_stats(b)["index_max_displacement"])
    assert worst <= 32
    b.validate()


@needs_kernel
def test_id_window_and_hash_hold_one_mapping():
    """The kernel's id index is a window over consecutive ids plus a hash for
    the rest.  Drive ids through every path -- the window growing, sliding
    (older ids moving to the hash), emptying and starting again elsewhere;
    ids far past it, below it, negative and at the int64 ends going to the
    hash; moves of ids in either place -- against the reference, with
    validate() (which checks each id is in exactly one place) all along."""
    rnd = random.Random(21)
    t = Twin(1)
    live: list[int] = []
    serial = 10**15

    def add(oid):
        side = rnd.randrange(2)
        price = rnd.randrange(100, 1000) if side == ref.BUY else rnd.randrange(1001, 2000)
        assert t.add(0, oid, 2, side, price, rnd.randrange(1, 9), 0, 0) is None
        live.append(oid)

    def drop(k):
        i = rnd.randrange(len(live)) if k is None else k
        live[i], live[-1] = live[-1], live[i]
        oid = live.pop()
        assert t.get(oid) is not None and t.remove(oid) is not None and t.get(oid) is None

    for round_ in range(6):
        for _ in range(12_000):             # the engine's pattern: ids in sequence, some skipped
            serial += rnd.choice((1, 1, 1, 2, 7))
            add(serial)
            r = rnd.random()
            if (r < 0.35 or len(live) > 3000) and live:     # a bounded book: the window slides
                drop(None)
            elif r < 0.45 and live:         # re-queue an order (its id leaves and comes back)
                oid = live[rnd.randrange(len(live))]
                side = t.get(oid)[2]
                assert t.move(oid, rnd.randrange(100, 1000) if side == ref.BUY
                              else rnd.randrange(1001, 2000), rnd.randrange(1, 9)) is True
        for oid in (serial + 5000, serial + 10**9, 5 + round_, -(10**12) - round_,
                    INT64_MAX - round_, -INT64_MAX - 1 + round_):
            add(oid)                        # far from the window: the hash
        serial += 6000                      # the window grows over serial + 5000, in the hash
        t.check(1)
        if round_ == 2:                     # empty the book: the window starts again
            while live:
                drop(0)
            t.check(1)
            serial += 10**6
    stats = _cbook.memory_stats(t.cy)
    # both places in use, and the window started again after the book emptied
    assert len(live) // 10 < stats["index_window_ids"] < len(live)
    # the window stays proportional to the book, not to the ids ever issued
    assert stats["index_window_bytes"] <= 4 * 2 * max(4096, 4 * (len(live) + 1))
    # it is circular: sliding moved its start; now the book grows, so its array
    # must grow while its ids wrap around the end of the array
    def wraps(st):
        return st["index_window_offset"] + st["index_window_span"] > st["index_window_bytes"] // 4

    wrapped, grew = wraps(stats), False
    for _ in range(40_000):
        serial += 1
        add(serial)
        now = _cbook.memory_stats(t.cy)
        if now["index_window_bytes"] > stats["index_window_bytes"]:
            grew = True
            break
        wrapped = wrapped or wraps(now)
    assert wrapped and grew, (stats, now)
    t.check(1)
    for oid in list(live):
        assert t.remove(oid) is not None
    t.check(1)


@needs_kernel
def test_validate_holds_after_the_best_level_leaves_many_empty_ones_behind():
    """Emptied levels deep in a side stay as entries until they outnumber the
    live ones; the best level leaving must trigger that compaction too."""
    t = Twin(1)
    for price in range(1, 67):
        t.add(0, price, 2, ref.BUY, price, 1, 0, 0)
    for oid in range(1, 34):            # 33 empty entries under 33 live levels
        assert t.remove(oid) is not None
    assert t.remove(66) is not None     # the best leaves: 33 empty, 32 live
    t.check(1)


@needs_kernel
def test_long_fifo_at_one_level_stays_fast():
    """Complexity guard: 200,000 orders at one price, consumed and cancelled
    in FIFO order (consecutive ids fill consecutive buckets: a plain linear
    probe would walk the whole run on every delete)."""
    import time
    b = _cbook.Book(1)
    n = 200_000
    for oid in range(1, n + 1):
        b.add(0, oid, 2, ref.SELL, 100, 1, 0, 0)
    t0 = time.perf_counter()
    for _ in range(n // 2):
        b.match(0, ref.BUY, 100, 1, NO_BUDGET, 1, 3, 0)
    for oid in range(n // 2 + 1, n + 1):
        b.remove(oid)
    assert time.perf_counter() - t0 < 10.0        # ~0.1 s; quadratic would take minutes
    assert len(b) == 0
    b.validate()


@needs_kernel
def test_rest_adds_unless_crossing():
    t = Twin(2)
    assert t.rest(0, 1, 2, ref.BUY, 10, 5, 7, 3) is True
    assert t.rest(0, 2, 3, ref.SELL, 10, 4, 0, 0) is False     # meets the bid: nothing done
    assert t.rest(0, 2, 3, ref.SELL, 11, 4, 0, 0) is True
    assert t.rest(0, 3, 3, ref.BUY, 11, 1, 0, 0) is False
    assert t.rest(1, 3, 3, ref.BUY, 11, 1, 0, 0) is True       # another instrument
    assert t.depth(0, 5) == ([(10, 5)], [(11, 4)])
    for bad in ((0, 1, 2, ref.BUY, 9, 1, 0, 0),                # a resting id
                (0, 9, 2, ref.BUY, 9, 0, 0, 0), (0, 9, 2, ref.BUY, 0, 1, 0, 0),
                (5, 9, 2, ref.BUY, 9, 1, 0, 0), (0, 9, 2, 7, 20, 1, 0, 0)):
        t.rest(*bad)                                           # the same error on both
    # a crossing price answers first, whatever the other arguments hold
    assert t.rest(0, "x", 3, ref.BUY, 11, 1, 0, 0) is False
    assert t.rest(0, 9, 3, ref.BUY, 11, 2**64, None, 0) is False
    assert len(t) == 3
    t.check(2)


@needs_kernel
def test_move_requeues_or_takes_off_and_refuses_bad_input():
    t = Twin(1)
    t.add(0, 1, 2, ref.BUY, 10, 5, 7, 3)
    t.add(0, 2, 3, ref.BUY, 10, 4, 0, 0)
    t.add(0, 3, 4, ref.SELL, 20, 6, 0, 2)
    assert t.move(1, 10, 8) is True                 # same price: behind order 2
    assert [row[0] for row in t.py.dump(0)] == [2, 1, 3]
    assert t.get(1) == (0, 2, ref.BUY, 10, 8, 7, 3)  # account, fee and flags kept
    assert t.move(1, 12, 8) is True                 # a new level
    assert t.depth(0, 5) == ([(12, 8), (10, 4)], [(20, 6)])
    assert t.move(1, 20, 8) is False                # would trade: taken off only
    assert t.get(1) is None and len(t) == 2
    assert t.move(3, 10, 6) is False                # a sell moved onto the bid
    assert t.depth(0, 5) == ([(10, 4)], [])
    for bad in ((1, 10, 1), (99, 10, 1), ("x", 10, 1), (2, 0, 1), (2, 10, 0), (2, -5, 1)):
        t.move(*bad)                                # KeyError / AssertionError on both
    assert t.get(2) == (0, 3, ref.BUY, 10, 4, 0, 0)  # a refused move changes nothing
    t.check(1)


@needs_kernel
def test_depth_levels_must_be_an_int():
    t = Twin(1)
    t.add(0, 1, 2, ref.BUY, 5, 1, 0, 0)
    t.depth(0, 2.5)            # TypeError on both
    t.depth(0, None)           # TypeError on both
    assert t.depth(0, True) == ([(5, 1)], [])


# The benchmark mixes through the pure-Python engine and the accelerated one
# (compiled core when built, Cython book), event for event: 1,000,000 flow
# commands in all (plus each stream's deposits and prefill), compared byte for
# byte command by command, with the books' state compared at the end.
MIX_RUNS = [("exchange_core", 1, 200_000), ("exchange_core", 2, 200_000),
            ("insert_heavy", 3, 200_000), ("insert_heavy", 4, 200_000),
            ("full", 5, 100_000), ("full", 6, 100_000), ("money", 7, 100_000)]


@needs_kernel
@pytest.mark.parametrize("mix,seed,n", MIX_RUNS, ids=[f"{m}-{s}" for m, s, _ in MIX_RUNS])
def test_benchmark_mixes_identical_events_on_both_books(mix, seed, n):
    from engine.flow import engine_options, generate, market_config
    from engine.messages import encode

    symbols = {"full": 2, "money": None}.get(mix, 1)
    markets = "cross" if mix == "money" else "usdt"
    cmds = generate(mix, n, seed=seed, symbols=symbols, oracle_book="cython", markets=markets)
    assets, instruments = market_config(symbols, markets)
    options = engine_options(mix, markets, symbols)
    py = PureEngine(assets, instruments, book="python", max_open_orders=100_000, **options)
    cy = engine.Engine(assets, instruments, book="cython", max_open_orders=100_000, **options)
    trades = 0
    for cmd in cmds:
        a, b = encode(py.submit(cmd)), encode(cy.submit(cmd))
        if a != b:
            pytest.fail(f"{mix} seed {seed}: books diverge at seq {py.seq}: {cmd!r}\n"
                        f"python: {a[:400]!r}\ncython: {b[:400]!r}")
        trades += a.count(b"Trade")
    assert trades > n // 100, trades       # the flow really trades
    assert py.state_hash() == cy.state_hash()
    for sym in (i.symbol for i in instruments):
        assert py.depth(sym, 50) == cy.depth(sym, 50)
