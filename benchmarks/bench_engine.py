"""Benchmark of ``Engine.submit``: commands/s and per-command latency percentiles.

    python benchmarks/bench_engine.py [--mix exchange_core insert_heavy] [-n 300000]
                                      [--books python cython] [--seed 1] [--repeat 3]

For each mix the seeded flow (benchmarks/flow.py) is generated once; each
book then replays the setup commands (deposits, prefill) untimed and the flow
commands timed.  Throughput is the best of ``--repeat`` untimed-per-command
runs (wall time of the whole loop); latency percentiles come from a separate
run that reads the clock around every command (perf_counter_ns; that run is
slower by the clock reads).  All books run in the same process, one after the
other, so compare the ratios rather than absolute numbers on a shared machine.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.flow import generate, market_config  # noqa: E402
from engine import Engine, available_books  # noqa: E402
from engine.messages import Deposit  # noqa: E402


def split_setup(cmds, prefill):
    """(setup, flow): the deposits and prefill orders, then the measured flow."""
    n_dep = sum(1 for c in cmds if type(c) is Deposit and c.ref == "")
    cut = n_dep + prefill
    return cmds[:cut], cmds[cut:]


def fresh_engine(book, setup):
    assets, instruments = market_config()
    eng = Engine(assets, instruments, book=book, max_open_orders=100_000)
    for c in setup:
        eng.submit(c)
    return eng


def throughput(book, setup, flow, repeat):
    best = None
    events = 0
    for _ in range(repeat):
        eng = fresh_engine(book, setup)
        submit = eng.submit
        gc.collect()
        gc.disable()
        t0 = time.perf_counter()
        n_events = 0
        for c in flow:
            n_events += len(submit(c))
        dt = time.perf_counter() - t0
        gc.enable()
        if best is None or dt < best:
            best, events = dt, n_events
    return len(flow) / best, events / best


def latencies(book, setup, flow):
    eng = fresh_engine(book, setup)
    submit = eng.submit
    clock = time.perf_counter_ns
    out = np.empty(len(flow), dtype=np.int64)
    gc.collect()
    gc.disable()
    for i, c in enumerate(flow):
        t0 = clock()
        submit(c)
        out[i] = clock() - t0
    gc.enable()
    return np.percentile(out, [50, 99, 99.9]) / 1000.0     # microseconds


def main(argv=None):
    ap = argparse.ArgumentParser(description="Engine.submit throughput and latency")
    ap.add_argument("--mix", nargs="+", default=["exchange_core", "insert_heavy"])
    ap.add_argument("-n", type=int, default=300_000, help="flow commands per mix")
    ap.add_argument("--books", nargs="+", default=available_books())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=2000)
    args = ap.parse_args(argv)

    print(f"# Engine.submit, {args.n:,} flow commands per mix, seed {args.seed}, "
          f"best of {args.repeat}; python {sys.version.split()[0]}")
    print(f"{'mix':14s} {'book':7s} {'commands/s':>12s} {'events/s':>12s} "
          f"{'p50 us':>8s} {'p99 us':>8s} {'p99.9 us':>9s}")
    for mix in args.mix:
        cmds = generate(mix, args.n, seed=args.seed, prefill=args.prefill)
        setup, flow = split_setup(cmds, args.prefill)
        rates = {}
        for book in args.books:
            cps, eps = throughput(book, setup, flow, args.repeat)
            p50, p99, p999 = latencies(book, setup, flow)
            rates[book] = cps
            print(f"{mix:14s} {book:7s} {cps:12,.0f} {eps:12,.0f} {p50:8.2f} {p99:8.2f} {p999:9.2f}")
        if "python" in rates and "cython" in rates:
            print(f"{mix:14s} cython/python = {rates['cython'] / rates['python']:.2f}x")


if __name__ == "__main__":
    main()
