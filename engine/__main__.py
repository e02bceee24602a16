"""Command line: ``python -m engine demo [--n N] [--seed S] [--mix M]``.

The demo runs a seeded order flow (engine/flow.py) through the engine and
prints a summary: what happened, the book, fees, a few balances, the state
hash and the throughput.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from engine.flow import MIXES, Flow


def demo(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine demo",
                                 description="Run a seeded order flow through the engine.")
    ap.add_argument("--n", type=int, default=50_000, help="flow commands (default 50,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="full", choices=sorted(MIXES))
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--book", default="auto", help="auto | python | cython")
    args = ap.parse_args(argv)

    from engine import Engine
    from engine.messages import Rejected, Trade
    flow = Flow(args.mix, args.seed, accounts=args.accounts)
    assets, instruments = flow.assets, flow.instruments
    cmds = [cmd for cmd, _ in flow.stream(flow.setup_count + args.n)]
    eng = Engine(assets, instruments, book=args.book, max_open_orders=100_000)
    kinds: Counter = Counter()
    rejects: Counter = Counter()
    volume = notional = 0
    t0 = time.perf_counter()
    for c in cmds:
        for e in eng.submit(c):
            kinds[type(e).__name__] += 1
            if type(e) is Trade:
                volume += e.qty
                notional += e.price * e.qty
            elif type(e) is Rejected:
                rejects[e.reason] += 1
    dt = time.perf_counter() - t0
    ins = instruments[0]
    m = eng.market(ins.symbol)
    quote = next(a for a in assets if a.name == ins.quote)
    base = next(a for a in assets if a.name == ins.base)
    print(f"exchange-core demo: {len(cmds):,} commands ({args.mix} mix, seed {args.seed}) "
          f"on the {eng.book_implementation} book ({eng.core_implementation} engine core) in {dt:.2f}s "
          f"= {len(cmds) / dt:,.0f} commands/s")
    print("events:   " + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common()))
    if rejects:
        print("rejects:  " + ", ".join(f"{k} {v:,}" for k, v in rejects.most_common()))
    print(f"{ins.symbol}: {kinds['Trade']:,} trades, volume {ins.lots_to_qty(volume)} {ins.base}, "
          f"notional {quote.from_minor(notional * m.notional_unit)} {ins.quote}, "
          f"last {ins.ticks_to_price(m.last_price)}")
    bids, asks = eng.depth(ins.symbol, 5)
    print(f"{'bid qty':>14s} {'bid':>12s} | {'ask':<12s} {'ask qty':<14s}")
    for i in range(max(len(bids), len(asks))):
        b = bids[i] if i < len(bids) else None
        a = asks[i] if i < len(asks) else None
        print(f"{str(ins.lots_to_qty(b[1])) if b else '':>14s} {str(ins.ticks_to_price(b[0])) if b else '':>12s} | "
              f"{str(ins.ticks_to_price(a[0])) if a else '':<12s} {str(ins.lots_to_qty(a[1])) if a else '':<14s}")
    fees, _ = eng.balance(1, ins.quote)
    print(f"fees collected (account 1): {quote.from_minor(fees)} {ins.quote}")
    for acct in eng.accounts()[2:5]:
        qa, ql = eng.balance(acct, ins.quote)
        ba, bl = eng.balance(acct, ins.base)
        print(f"account {acct}: {quote.from_minor(qa)} {ins.quote} available, {quote.from_minor(ql)} locked; "
              f"{base.from_minor(ba)} {ins.base} available, {base.from_minor(bl)} locked")
    eng.validate()
    print(f"invariants hold; state hash {eng.state_hash()}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "demo":
        return demo(argv[1:])
    print(f"unknown command {argv[0]!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
