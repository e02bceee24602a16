"""Benchmark of ``Engine.submit`` and of the raw book operations under it.

    python -m benchmarks.bench_engine [--mix exchange_core insert_heavy] [-n 300000]
                                      [--books python cython] [--cores python cython]
                                      [--seed 1] [--repeat 3] [--memory-orders 1000000]
                                      [--memory-refs 100000]

Four tables per run.  Engine: commands/s and per-command latency percentiles
of the whole ``Engine.submit``, for each engine core (the pure-Python
``engine.core.Engine``, or the same source compiled, ``engine._ccore``) on
each book.  Book: the exact sequence of book calls
(get, rest, move, add, remove, match, crosses, reduce, set_fee, can_fill) the engine made
on the same flow, recorded once and replayed on a fresh book of each
implementation; calls/s is the best of ``--repeat`` (at least 5) replays, the
books taking turns.  Floor: a lower
bound on the part of a command's time no engine logic can remove with this
API -- building the events it returns, and its book calls' own work -- beside
the fastest engine.  Memory: the default engine's RSS per resting order with
``--memory-orders`` resting orders, with and without client order ids (0 skips),
and what each idempotency ref the engine keeps for good costs (``--memory-refs``).

For each mix the seeded flow (engine/flow.py) is generated once, and its
commands decoded from their msgpack encoding, untimed, as a decoder produces
them (the generator's own objects lie scattered among its oracle engine's
garbage, which cost the accelerated engine 5-9% in cache misses); each book
then replays the setup commands (deposits, prefill) untimed and the flow
commands timed.  Throughput is the best of ``--repeat`` untimed-per-command
runs (wall time of a loop that does nothing but call ``submit``); latency
percentiles, and the event count behind events/s, come from a separate run
that reads the clock around every command (perf_counter_ns; that run is
slower by the clock reads).  All books run in the same process, one after the
other, so compare the ratios rather than absolute numbers on a shared machine.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
from msgspec.structs import astuple

import engine
from benchmarks.bench_book import _rss_bytes
from engine import available_books, core
from engine.flow import generate, market_config
from engine.messages import Command, Deposit, PlaceOrder


def as_received(commands):
    """The commands as a decoder hands them to the engine: decoded from their
    msgpack encoding, fresh objects one after the other in memory (not the
    generator's, which sit among its oracle engine's garbage)."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(commands), type=list[Command])


def split_setup(cmds, prefill):
    """(setup, flow): the deposits and prefill orders, then the measured flow."""
    n_dep = sum(1 for c in cmds if type(c) is Deposit and c.ref == "")
    cut = n_dep + prefill
    return cmds[:cut], cmds[cut:]


CORES = {"python": core.Engine, "cython": engine.Engine}


def available_cores():
    return ["python", "cython"] if engine.CORE_IMPLEMENTATION == "cython" else ["python"]


def fresh_engine(config, setup):
    core_name, book = config
    assets, instruments = market_config()
    eng = CORES[core_name](assets, instruments, book=book, max_open_orders=100_000)
    assert eng.core_implementation == core_name, "engine._ccore is not in use"
    for c in setup:
        eng.submit(c)
    return eng


def throughput(config, setup, flow, repeat):
    """Commands/s: the best of ``repeat`` runs of the flow on a fresh engine.
    The timed loop only calls ``submit``; the events are counted in
    ``latencies`` (counting them here cost the accelerated engine 5-9%)."""
    best = None
    for _ in range(repeat):
        eng = fresh_engine(config, setup)
        submit = eng.submit
        gc.collect()
        gc.disable()
        t0 = time.perf_counter()
        for c in flow:
            submit(c)
        dt = time.perf_counter() - t0
        gc.enable()
        if best is None or dt < best:
            best = dt
    return len(flow) / best


def latencies(config, setup, flow, percentiles=(50, 99, 99.9)):
    """(*latency at each of ``percentiles`` in microseconds, events): one run
    reading the clock around every command; the events are counted outside
    the clock reads."""
    eng = fresh_engine(config, setup)
    submit = eng.submit
    clock = time.perf_counter_ns
    out = np.empty(len(flow), dtype=np.int64)
    events = 0
    gc.collect()
    gc.disable()
    for i, c in enumerate(flow):
        t0 = clock()
        ev = submit(c)
        out[i] = clock() - t0
        events += len(ev)
    gc.enable()
    return (*(np.percentile(out, list(percentiles)) / 1000.0), events)     # microseconds


class _Recorder:
    """Wraps a book and records every call the engine makes on it."""

    def __init__(self, book):
        self._book = book
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name):
        attr = getattr(self._book, name)
        if not callable(attr):
            return attr
        calls = self.calls

        def call(*args):
            calls.append((name, args))
            return attr(*args)
        setattr(self, name, call)       # found here from now on
        return call


def record_book_calls(setup, flow):
    """(calls, start): every book call of the setup and the flow; flow calls from ``start``."""
    assets, instruments = market_config()
    eng = core.Engine(assets, instruments, book="python", max_open_orders=100_000)
    rec = eng._book = _Recorder(eng._book)
    for c in setup:
        eng.submit(c)
    start = len(rec.calls)
    for c in flow:
        eng.submit(c)
    return rec.calls, start


def _noop(*args):
    return None


class _NullBook:
    """Same calls, no work: measures the replay loop itself (the harness)."""

    def __init__(self, n_instruments):
        pass

    def __getattr__(self, name):
        return _noop


def replay_books(books, calls, start, repeat):
    """{book: calls/s}: the recorded flow calls replayed on a fresh book of
    each kind (state rebuilt untimed), the books taking turns ``repeat``
    times, best of each: a slower spell of a shared machine then touches
    every book, not just the one that ran in it.  ``"null"`` is a book that
    does nothing: the harness cost."""
    from engine.core import _book_class
    names = {name for name, _ in calls}
    best: dict[str, float] = {}
    for _ in range(repeat):
        for book in books:
            b = (_NullBook if book == "null" else _book_class(book))(1)
            for name, args in calls[:start]:
                getattr(b, name)(*args)
            bound = {name: getattr(b, name) for name in names}
            ops = [(bound[name], args) for name, args in calls[start:]]
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            for f, args in ops:
                f(*args)
            dt = time.perf_counter() - t0
            gc.enable()
            best[book] = min(best.get(book, dt), dt)
    return {book: (len(calls) - start) / dt for book, dt in best.items()}


def event_floor(config, setup, flow, repeat):
    """Seconds to build, from Python, the events the engine returned for ``flow``
    (same classes, same field values, one new list per command): a cost any
    engine with this API pays, whatever its own logic costs."""
    eng = fresh_engine(config, setup)
    recorded = [[(type(e), astuple(e)) for e in eng.submit(c)] for c in flow]
    best = None
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        t0 = time.perf_counter()
        for events in recorded:
            out = []
            for cls, fields in events:
                out.append(cls(*fields))
        dt = time.perf_counter() - t0
        gc.enable()
        best = dt if best is None or dt < best else best
    return best


def engine_memory(n: int, client_ids: bool) -> float:
    """RSS bytes per resting order of the default engine (``engine.Engine``,
    book="auto") holding ``n`` resting GTC orders from 1,000 accounts over
    ~10,000 price levels, each with a client order id ("c<k>") or none.  The
    commands are built and submitted 10,000 at a time, so what remains is the
    engine's: its book, its per-order bookkeeping and, with client ids, the
    id strings it keeps."""
    assets, instruments = market_config()
    eng = engine.Engine(assets, instruments, max_open_orders=n)
    accounts = range(2, 1002)
    for a in accounts:
        for asset in assets:
            eng.submit(Deposit(a, asset.name, 10**15))
    symbol, mid = instruments[0].symbol, 3_000_000
    gc.collect()
    before = _rss_bytes()
    for start in range(0, n, 10_000):
        cmds = [PlaceOrder(2 + k % 1000, f"c{k}" if client_ids else "", symbol,
                           "buy" if k % 2 == 0 else "sell",
                           price=mid - 1 - k % 5000 if k % 2 == 0 else mid + 1 + k % 5000,
                           qty=1 + k % 7)
                for k in range(start, min(n, start + 10_000))]
        for c in cmds:
            eng.submit(c)
        del cmds
    gc.collect()
    assert sum(eng.open_order_count(a) for a in accounts) == n, "not all orders rest"
    return (_rss_bytes() - before) / n


def ref_memory(n: int) -> tuple[float, float]:
    """tracemalloc bytes per deposit ref the engine keeps (16-character refs,
    decoded as a server receives them): ``n`` refs of one account and asset,
    and ``n`` refs of ``n`` accounts, one each (the accounts made beforehand)."""
    import tracemalloc
    assets, instruments = market_config()
    per_ref = []
    for spread in (False, True):
        eng = engine.Engine(assets, instruments)
        accounts = list(range(2, 2 + n)) if spread else [2]
        for a in accounts:
            eng.submit(Deposit(a, "USDT", 1))
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        cmds = as_received([Deposit(accounts[k % len(accounts)], "USDT", 1, ref=f"wire-{k:011d}")
                            for k in range(n)])
        for c in cmds:
            eng.submit(c)
        del cmds
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        per_ref.append((after - before) / n)
    return per_ref[0], per_ref[1]


def engine_memory_child(n: int, client_ids: bool) -> float:
    """``engine_memory`` in a fresh interpreter (nothing freed before skews it)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_engine", "--memory-child",
                          "cid" if client_ids else "plain", "--memory-orders", str(n)],
                         cwd=Path(__file__).resolve().parents[1],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Engine.submit throughput and latency")
    ap.add_argument("--mix", nargs="+", default=["exchange_core", "insert_heavy"])
    ap.add_argument("-n", type=int, default=300_000, help="flow commands per mix")
    ap.add_argument("--books", nargs="+", default=available_books())
    ap.add_argument("--cores", nargs="+", default=available_cores(),
                    help="engine cores: python (engine/core.py as source), cython (compiled)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=2000)
    ap.add_argument("--memory-orders", type=int, default=1_000_000,
                    help="whole-engine memory at this many resting orders (0: skip)")
    ap.add_argument("--memory-refs", type=int, default=100_000,
                    help="memory per kept idempotency ref, over this many refs (0: skip)")
    ap.add_argument("--memory-child", choices=("cid", "plain"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        print(json.dumps(engine_memory(args.memory_orders, args.memory_child == "cid")))
        return

    print(f"# Engine.submit, {args.n:,} flow commands per mix, seed {args.seed}, "
          f"best of {args.repeat}; python {sys.version.split()[0]}")
    print(f"{'mix':14s} {'core':7s} {'book':7s} {'commands/s':>12s} {'events/s':>12s} "
          f"{'p50 us':>8s} {'p99 us':>8s} {'p99.9 us':>9s}")
    book_rows, floor_rows = [], []
    for mix in args.mix:
        cmds = generate(mix, args.n, seed=args.seed, prefill=args.prefill)
        setup, flow = split_setup(cmds, args.prefill)
        flow = as_received(flow)
        rates = {}
        for core_name in args.cores:
            for book in args.books:
                cps = throughput((core_name, book), setup, flow, args.repeat)
                p50, p99, p999, events = latencies((core_name, book), setup, flow)
                eps = cps * events / len(flow)      # the engine is deterministic: same events
                rates[core_name, book] = cps
                print(f"{mix:14s} {core_name:7s} {book:7s} {cps:12,.0f} {eps:12,.0f} "
                      f"{p50:8.2f} {p99:8.2f} {p999:9.2f}")
        pure = rates.get(("python", "python"))
        for key, label in ((("python", "cython"), "cython book"),
                           (("cython", "cython"), "cython core + cython book")):
            if pure and key in rates:
                print(f"{mix:14s} {label} / all python = {rates[key] / pure:.2f}x")
        calls, start = record_book_calls(setup, flow)
        counts: dict[str, int] = {}
        for name, _ in calls[start:]:
            counts[name] = counts.get(name, 0) + 1
        book_rows.append((mix, len(calls) - start, counts,
                          replay_books(["null", *args.books], calls, start,
                                       max(args.repeat, 5))))
        fastest = max(rates, key=rates.get)
        floor_rows.append((mix, len(flow), event_floor(fastest, setup, flow, args.repeat),
                           fastest, rates[fastest]))
    print()
    print("# raw book operations: the engine's own book calls on the same flow, replayed")
    print("# net ns/call = replay time minus the same replay on a do-nothing book (the loop, the")
    print("# call and the argument tuples), per call; 'x' columns are python/cython ratios")
    both = {"python", "cython"} <= set(args.books)
    print(f"{'mix':14s} {'calls':>9s} " + " ".join(f"{b + ' calls/s':>16s}" for b in args.books)
          + f" {'harness ns':>10s} " + " ".join(f"{b + ' net ns':>12s}" for b in args.books)
          + ("   gross x    net x" if both else ""))
    for mix, n_calls, counts, per_book in book_rows:
        harness = 1e9 / per_book["null"]
        net = {b: 1e9 / per_book[b] - harness for b in args.books}
        ratio = (f"   {per_book['cython'] / per_book['python']:6.2f}x {net['python'] / net['cython']:7.2f}x"
                 if both else "")
        print(f"{mix:14s} {n_calls:9,d} " + " ".join(f"{per_book[b]:16,.0f}" for b in args.books)
              + f" {harness:10.0f} " + " ".join(f"{net[b]:12.0f}" for b in args.books) + ratio)
        print(f"{'':14s} " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    print()
    print("# floor: a lower bound on what any engine with this API pays per command on the same")
    print("# flow -- building the events it returns (same classes and fields) plus the net time of")
    print("# the same book calls on the fastest book (replay loop subtracted) -- and the fastest")
    print("# engine measured above; engine ns - floor ns is what all validation and risk may cost")
    fast_book = "cython" if "cython" in args.books else args.books[0]
    print(f"{'mix':14s} {'events ns':>10s} {fast_book + ' net ns':>13s} {'floor ns':>9s} "
          f"{'floor cmds/s':>13s} {'engine':>15s} {'engine ns':>10s} {'cmds/s':>10s}")
    for (mix, n_calls, _, per_book), (_, n_flow, events_s, fastest, rate) in zip(book_rows, floor_rows):
        events_ns = events_s / n_flow * 1e9
        book_ns = n_calls * (1 / per_book[fast_book] - 1 / per_book["null"]) / n_flow * 1e9
        floor_ns = events_ns + book_ns
        print(f"{mix:14s} {events_ns:10.0f} {book_ns:13.0f} {floor_ns:9.0f} {1e9 / floor_ns:13,.0f} "
              f"{'/'.join(fastest):>15s} {1e9 / rate:10.0f} {rate:10,.0f}")
    if args.memory_orders:
        n = args.memory_orders
        print()
        print(f"# memory: the default engine (core {engine.CORE_IMPLEMENTATION}, book "
              f"{engine.BOOK_IMPLEMENTATION}) with {n:,} resting orders, RSS delta per order")
        print(f"without client order ids {engine_memory_child(n, False):.0f} B/order; "
              f"with them (\"c<k>\") {engine_memory_child(n, True):.0f} B/order")
    if args.memory_refs:
        n = args.memory_refs
        one, spread = ref_memory(n)
        print()
        print(f"# memory: deposit/withdrawal refs kept for idempotency (16 characters), "
              f"tracemalloc over {n:,}")
        print(f"{one:.0f} B/ref when one account and asset has them all; {spread:.0f} B/ref "
              f"when each account has one")


if __name__ == "__main__":
    main()
