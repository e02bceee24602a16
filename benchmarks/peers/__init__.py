"""The engines a Python user would install instead, on one shared flow.

The flow is ``engine.flow``'s ``peers`` mix: GTC limit orders (10% priced
through the mid, so they trade), market orders by quantity and cancels of
live orders, the commands every peer supports, with buys and sells from
disjoint accounts so that self-trade prevention (which the peers lack) never
fires, and without client order ids (the peers have none; cancels name the
order id).  Prices are integer ticks and quantities integer lots, below 2**31:
exact in every peer's number type (a C++ ``uint64``, a Python ``int``, and a
``float`` too, should a peer convert).

``shared_flow`` turns it into neutral operations, one tuple per command:

    (LIMIT, is_buy, price_ticks, qty_lots, place)   # place: index among the placing ops
    (MARKET, is_buy, 0, qty_lots, place)            # never rests: what is left is cancelled
    (CANCEL, target_place)

and takes the reference trades from our engine: ``(maker_place, price_ticks,
qty_lots)`` in the order they happen.  Each peer adapter (a module here:
``NAME``, ``PACKAGE``, ``KIND``, ``load()``, ``program``, ``fresh``, ``run``,
``trades``) maps the operations to its own calls before any timing.  A peer
is timed only after its trades equal the reference, trade for trade;
otherwise ``compare`` names the first one that differs.

This package never times our engine itself: benchmarks.bench_engine does.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

LIMIT, MARKET, CANCEL = 0, 1, 2
ADAPTERS = ("benchmarks.peers.liquibook_book", "benchmarks.peers.light_matching_engine")


class SharedFlow(NamedTuple):
    setup: list            # our engine's setup commands (deposits, prefill)
    commands: list         # our engine's flow commands (timed)
    setup_ops: list        # the prefill as operations (the peers have no balances)
    ops: list              # the flow commands as operations
    trades: list           # reference trades of the flow: (maker_place, price, qty)
    places: int            # placing operations in setup_ops + ops
    resting_end: int       # orders resting after the flow (the book it ends with)


class Unavailable(Exception):
    """A peer that cannot run here (not installed, no wheel for this platform)."""


def shared_flow(n: int, seed: int, prefill: int) -> SharedFlow:
    """``n`` commands of the ``peers`` mix after ``prefill`` resting orders,
    with our engine's trades on them (any reject or self-trade cancel fails
    loudly: the flow is funded so that neither can happen)."""
    import msgspec

    from benchmarks.bench_engine import split_setup
    from engine import Engine
    from engine.flow import generate, market_config
    from engine.messages import (Accepted, CancelOrder, Cancelled, Deposit, PlaceOrder, Rejected,
                                 Trade)
    from engine.reasons import CANCEL_STP

    # without client order ids: the peers have none, and the cancels name order ids
    cmds = [msgspec.structs.replace(c, client_order_id="") if type(c) is PlaceOrder else c
            for c in generate("peers", n, seed=seed, prefill=prefill)]
    setup, flow = split_setup(cmds, prefill)
    assets, instruments = market_config()
    eng = Engine(assets, instruments, max_open_orders=100_000)
    place_of: dict[int, int] = {}          # our order id -> place index
    setup_ops, ops, trades = [], [], []
    places = 0
    for timed, part in ((False, setup), (True, flow)):
        out = ops if timed else setup_ops
        for c in part:
            events = eng.submit(c)
            t = type(c)
            if t is Deposit:
                assert not timed, "a deposit inside the peers flow"
                continue
            rejected = [e for e in events if type(e) is Rejected]
            assert not rejected, f"the peers flow must be accepted whole: {rejected[0]}"
            if t is PlaceOrder:
                accepted = events[0]
                assert type(accepted) is Accepted, events
                place_of[accepted.order_id] = places
                is_buy = c.side == "buy"
                if c.type == "market":
                    out.append((MARKET, is_buy, 0, c.qty, places))
                else:
                    assert c.type == "limit" and c.tif == "gtc", c
                    out.append((LIMIT, is_buy, c.price, c.qty, places))
                places += 1
                for e in events:
                    if type(e) is Cancelled and e.reason == CANCEL_STP:
                        raise AssertionError(f"self-trade prevention fired in the peers flow: {e}")
            elif t is CancelOrder:
                out.append((CANCEL, place_of[c.order_id]))
            else:
                raise AssertionError(f"not in the peers flow: {c}")
            for e in events:
                if type(e) is Trade:
                    assert timed, "the prefill traded"
                    trades.append((place_of[e.maker_order_id], e.price, e.qty))
    resting = sum(eng.open_order_count(a) for a in {c.account for c in setup if type(c) is Deposit})
    return SharedFlow(setup, flow, setup_ops, ops, trades, places, resting)


def compare(reference: list, trades: list) -> str | None:
    """None when ``trades`` equal ``reference`` in order; else where they
    first differ, in words."""
    for i, (ours, theirs) in enumerate(zip(reference, trades)):
        if ours != theirs:
            return (f"trade {i:,}: ours (maker place {ours[0]:,}, price {ours[1]:,}, qty "
                    f"{ours[2]:,}), theirs (maker place {theirs[0]:,}, price {theirs[1]:,}, qty "
                    f"{theirs[2]:,})")
    if len(reference) != len(trades):
        return (f"trade {min(len(reference), len(trades)):,}: ours made {len(reference):,} "
                f"trades, theirs {len(trades):,}")
    return None


def load(module_name: str):
    """(adapter module, None) or (the module, why it cannot run here)."""
    module = importlib.import_module(module_name)
    try:
        module.load()
    except Unavailable as e:
        return module, str(e)
    return module, None


def best_rate(adapter, setup_prog, prog, repeat: int) -> float:
    """Operations/s: the best of ``repeat`` runs, each on a fresh instance
    with the setup applied untimed; the timed loop records nothing."""
    import gc
    import time
    best = float("inf")
    for _ in range(repeat):
        state = adapter.fresh(setup_prog)
        gc.collect()
        gc.disable()
        t0 = time.perf_counter()
        adapter.run(state, prog)
        dt = time.perf_counter() - t0
        gc.enable()
        best = min(best, dt)
        del state
    return len(prog) / best
