"""Raw order-book operations: the Cython kernel against the Python reference.

    python benchmarks/bench_book.py [--n 200000] [--resting 100000] [--seed 7]

One run, one table.  A seeded flow around a moving mid is generated once (on a
model book) and replayed on a fresh book of each implementation, so both do
exactly the same work (checked: equal results and equal final books).

* throughput: each phase timed as one loop over pre-built arguments, best of
  --repeat runs (add; cancel = remove of a uniformly random resting order;
  match = an aggressive order taking the top, 1-2 makers on average; move =
  ``move`` of a resting order to a new price, as the engine replaces; mixed =
  30% add / 30% cancel / 25% move / 15% match);
* latency: a second replay timing every call with perf_counter_ns (the
  timer's own cost is shown and not subtracted);
* memory: bytes per resting order with 1,000,000 resting orders (about
  10,000 levels), each book in a fresh subprocess: the RSS delta, and for the
  kernel also its own accounting (engine._cbook.memory_stats).

Timings are not tests: tests/test_cbook.py holds the behaviour.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time

from engine.book import BUY, NO_BUDGET, SELL
from engine.book import Book as PyBook

try:
    from engine._cbook import Book as CBook
    from engine._cbook import memory_stats
except ImportError:  # pragma: no cover
    CBook = memory_stats = None

INSTRUMENT = 0
TAKER_ACCOUNT = 1           # never rests, so matches never meet self-trade prevention
PHASES = ("add", "cancel", "match", "move", "mixed")


class Flow:
    """Generates operations against a model book so every argument is valid:
    ids unique, cancels name resting orders, adds never cross."""

    def __init__(self, seed: int, model):
        self.r = random.Random(seed)
        self.model = model
        self.mid = 1_000_000
        self.next_id = 1
        self.live: list[int] = []
        self.pos: dict[int, int] = {}
        self.k = 0

    def _keep(self, oid):
        self.pos[oid] = len(self.live)
        self.live.append(oid)

    def _drop(self, oid):
        i = self.pos.pop(oid)
        last = self.live.pop()
        if last != oid:
            self.live[i] = last
            self.pos[last] = i

    def _tick(self):
        self.k += 1
        if self.k % 64 == 0:
            self.mid += self.r.choice((-1, 0, 0, 1))

    def _price(self, side):
        off = min(int(self.r.expovariate(1 / 25)), 5000)
        m = self.model
        if side == BUY:
            price = self.mid - 1 - off
            ask = m.best_ask(INSTRUMENT)
            if ask and price >= ask:
                price = ask - 1
        else:
            price = self.mid + 1 + off
            bid = m.best_bid(INSTRUMENT)
            if bid and price <= bid:
                price = bid + 1
        return max(1, price)

    def add(self):
        self._tick()
        r = self.r
        side = BUY if r.random() < 0.5 else SELL
        oid = self.next_id
        self.next_id += 1
        args = (INSTRUMENT, oid, r.randrange(2, 5000), side, self._price(side),
                r.randrange(1, 100), 0, 0)
        self.model.add(*args)
        self._keep(oid)
        return args

    def cancel(self):
        self._tick()
        oid = self.live[self.r.randrange(len(self.live))]
        self.model.remove(oid)
        self._drop(oid)
        return (oid,)

    def match(self):
        self._tick()
        r, m = self.r, self.model
        side = BUY if r.random() < 0.5 else SELL
        if side == BUY:
            best = m.best_ask(INSTRUMENT) or self.mid
            limit = best + r.randrange(0, 3)
        else:
            best = m.best_bid(INSTRUMENT) or self.mid
            limit = max(1, best - r.randrange(0, 3))
        args = (INSTRUMENT, side, limit, r.randrange(1, 150), NO_BUDGET, 1, TAKER_ACCOUNT, 0)
        for rec in m.match(*args):
            if rec[5] == 0:
                self._drop(rec[1])
        return args

    def move(self):
        """Replace at a new price (loses priority; never crosses here)."""
        self._tick()
        m = self.model
        oid = self.live[self.r.randrange(len(self.live))]
        _, _, side, _, qty, _, _ = m.get(oid)
        args = (oid, self._price(side), qty)
        if not m.move(*args):
            raise RuntimeError(f"move {args} crossed")
        return args

    def mixed(self, n):
        out = []
        r = self.r
        for _ in range(n):
            x = r.random()
            if x < 0.30:
                out.append((0, self.add()))
            elif x < 0.60:
                out.append((1, self.cancel()))
            elif x < 0.85:
                out.append((3, self.move()))
            else:
                out.append((2, self.match()))
        return out


def build_workload(seed: int, resting: int, n: int):
    model = CBook(1) if CBook is not None else PyBook(1)
    f = Flow(seed, model)
    prefill = [f.add() for _ in range(resting)]
    work = {"add": [f.add() for _ in range(n)],
            "cancel": [f.cancel() for _ in range(n)]}
    n_match = min(n, max(1, resting // 4))   # each takes ~1-2 makers: do not drain the book
    work["match"] = [f.match() for _ in range(n_match)]
    work["move"] = [f.move() for _ in range(n)]
    work["mixed"] = f.mixed(n)
    return prefill, work


# ------------------------------------------------------------------ replays
def _run_phase(book, phase, ops):
    """One phase as a tight loop; returns a checksum of what it returned."""
    if phase == "add":
        add = book.add
        for a in ops:
            add(*a)
        return len(book)
    if phase == "cancel":
        remove = book.remove
        for (oid,) in ops:
            remove(oid)
        return len(book)
    if phase == "match":
        match = book.match
        n = 0
        for a in ops:
            n += len(match(*a))
        return n
    if phase == "move":
        move = book.move
        for a in ops:
            move(*a)
        return len(book)
    remove, add, match, move = book.remove, book.add, book.match, book.move
    n = 0
    for kind, a in ops:
        if kind == 0:
            add(*a)
        elif kind == 1:
            remove(*a)
        elif kind == 2:
            n += len(match(*a))
        else:
            move(*a)
    return n + len(book)


def throughput(cls, prefill, work, repeat):
    """ops/s per phase, the best of ``repeat`` replays on fresh books."""
    best = {p: 0.0 for p in PHASES}
    for _ in range(repeat):
        book = cls(1)
        for a in prefill:
            book.add(*a)
        sums = {}
        for phase in PHASES:
            ops = work[phase]
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            sums[phase] = _run_phase(book, phase, ops)
            dt = time.perf_counter() - t0
            gc.enable()
            best[phase] = max(best[phase], len(ops) / dt)
    return best, sums, book


def latencies(cls, prefill, work, quantiles=(0.50, 0.99, 0.999)):
    book = cls(1)
    for a in prefill:
        book.add(*a)
    clock = time.perf_counter_ns
    lat = {p: [] for p in PHASES}
    gc.collect()
    gc.disable()
    try:
        for phase in PHASES:
            record = lat[phase].append
            for op in work[phase]:
                if phase == "add":
                    t0 = clock(); book.add(*op); t1 = clock()
                elif phase == "cancel":
                    t0 = clock(); book.remove(op[0]); t1 = clock()
                elif phase == "match":
                    t0 = clock(); book.match(*op); t1 = clock()
                elif phase == "move":
                    t0 = clock(); book.move(*op); t1 = clock()
                else:
                    kind, a = op
                    t0 = clock()
                    if kind == 0:
                        book.add(*a)
                    elif kind == 1:
                        book.remove(*a)
                    elif kind == 2:
                        book.match(*a)
                    else:
                        book.move(*a)
                    t1 = clock()
                record(t1 - t0)
    finally:
        gc.enable()
    return {p: _percentiles(v, quantiles) for p, v in lat.items()}


def _percentiles(values, quantiles):
    values.sort()
    n = len(values)
    return tuple(values[min(n - 1, int(q * n))] for q in quantiles)


def timer_overhead_ns():
    clock = time.perf_counter_ns
    v = []
    for _ in range(100_000):
        t0 = clock(); t1 = clock()
        v.append(t1 - t0)
    v.sort()
    return v[len(v) // 2]


# ------------------------------------------------------------------ memory
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bytes_per_order(cls, n: int, seed: int):
    """Rest n orders (about 10,000 levels around the mid) and measure; run it
    in a fresh process (memory_child) so freed memory is not reused."""
    gc.collect()
    r = random.Random(seed)
    rand = r.random
    before = _rss_bytes()
    book = cls(1)
    add = book.add
    mid = 1_000_000
    for oid in range(1, n + 1):
        off = int(rand() * 5000)
        if oid & 1:
            add(0, oid, 2 + oid % 5000, BUY, mid - 1 - off, 1 + oid % 97, 0, 0)
        else:
            add(0, oid, 2 + oid % 5000, SELL, mid + 1 + off, 1 + oid % 97, 0, 0)
    gc.collect()
    rss = (_rss_bytes() - before) / n
    kernel = None
    if memory_stats is not None and cls is CBook:
        kernel = memory_stats(book)
    assert len(book) == n
    return rss, kernel


def memory_child(name: str, n: int, seed: int):
    """bytes_per_order in a subprocess: (RSS bytes/order, kernel stats or None)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", name,
                          "--memory-orders", str(n), "--seed", str(seed)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# ------------------------------------------------------------------ report
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="operations per phase")
    ap.add_argument("--resting", type=int, default=100_000, help="resting orders before the phases")
    ap.add_argument("--memory-orders", type=int, default=1_000_000)
    ap.add_argument("--no-python-memory", action="store_true",
                    help="skip the Python book's memory measurement")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="throughput: best of this many runs")
    ap.add_argument("--memory-child", choices=("python", "cython"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        cls = CBook if args.memory_child == "cython" else PyBook
        print(json.dumps(bytes_per_order(cls, args.memory_orders, args.seed)))
        return
    if CBook is None:
        sys.exit("engine._cbook is not built: pip install -e . (needs Cython and a C compiler)")

    prefill, work = build_workload(args.seed, args.resting, args.n)
    results, sums, books = {}, {}, {}
    for name, cls in (("python", PyBook), ("cython", CBook)):
        results[name], sums[name], books[name] = throughput(cls, prefill, work, args.repeat)
    assert sums["python"] == sums["cython"], (sums["python"], sums["cython"])
    assert books["python"].dump(0) == books["cython"].dump(0), "the two books diverged"
    resting_end = len(books["cython"])
    books.clear()
    lat = {name: latencies(cls, prefill, work) for name, cls in (("python", PyBook),
                                                                 ("cython", CBook))}
    overhead = timer_overhead_ns()

    print(f"book benchmark: seed {args.seed}, {args.resting:,} resting before, "
          f"{resting_end:,} after; ops per phase: "
          + ", ".join(f"{p} {len(work[p]):,}" for p in PHASES))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; throughput best of "
          f"{args.repeat}; latency in ns per call (timer overhead ~{overhead} ns included)")
    head = (f"{'op':<7} {'python ops/s':>13} {'cython ops/s':>13} {'ratio':>6}  "
            f"{'py p50':>7} {'p99':>7} {'p99.9':>7}  {'cy p50':>7} {'p99':>6} {'p99.9':>6}")
    print(head)
    print("-" * len(head))
    for p in PHASES:
        py, cy = results["python"][p], results["cython"][p]
        lp, lc = lat["python"][p], lat["cython"][p]
        print(f"{p:<7} {py:>13,.0f} {cy:>13,.0f} {cy / py:>5.1f}x  "
              f"{lp[0]:>7,} {lp[1]:>7,} {lp[2]:>7,}  {lc[0]:>7,} {lc[1]:>6,} {lc[2]:>6,}")
    t_py = sum(len(work[p]) / results["python"][p] for p in PHASES)
    t_cy = sum(len(work[p]) / results["cython"][p] for p in PHASES)
    n_all = sum(len(work[p]) for p in PHASES)
    print(f"{'all':<7} {n_all / t_py:>13,.0f} {n_all / t_cy:>13,.0f} {t_py / t_cy:>5.1f}x")

    n = args.memory_orders
    rss_c, kernel = memory_child("cython", n, args.seed)
    line = (f"memory at {n:,} resting orders: cython {rss_c:.0f} B/order RSS delta, "
            f"{kernel['total_bytes'] / n:.0f} B/order kernel accounting "
            f"(orders {kernel['order_pool_bytes'] / n:.0f}, index {kernel['index_bytes'] / n:.0f}, "
            f"levels+sides {(kernel['level_pool_bytes'] + kernel['side_array_bytes']) / n:.1f}; "
            f"{kernel['levels']:,} levels)")
    if not args.no_python_memory:
        rss_p, _ = memory_child("python", n, args.seed)
        line += f"; python {rss_p:.0f} B/order RSS delta"
    print(line)


if __name__ == "__main__":
    main()
