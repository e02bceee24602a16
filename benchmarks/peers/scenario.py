"""The ``peers`` scenario: our engine beside the peers, on the same flow, in one run.

Every engine first replays the flow once with its trades recorded; one whose
trades differ from ours is reported with the first difference and not timed.
Then each is timed on fresh instances, the engines taking turns ``repeat``
times (a slower spell of a shared machine touches all of them), best of
each, nothing recorded in the timed loops.  Our engine runs with all its
risk and balance work (locks, fees, transfers, events); the peers keep no
balances.  ``breakdown`` splits our engine's time per command into building
its events, its book calls, and the rest (validation, risk, balances).
"""
from __future__ import annotations

from benchmarks import peers
from benchmarks.harness import scenario
from benchmarks.scenarios import default_config, engine_label

GOALS = {"liquibook": 1.0, "lightmatchingengine": 1.5}   # our rate / theirs, at least


@scenario("peers", help="our engine beside liquibook and LightMatchingEngine on one shared "
          "limit/market/cancel flow, trades checked equal before timing",
          quick={"n": 30_000, "prefill": 2000, "repeat": 3, "seed": 1, "breakdown": True},
          full={"n": 300_000, "prefill": 2000, "repeat": 5, "seed": 1, "breakdown": True})
def peers_side_by_side(ctx, n: int, prefill: int, repeat: int, seed: int, breakdown: bool) -> None:
    from benchmarks.bench_engine import as_received, throughput
    from engine.flow import MIXES
    ctx.step(f"the shared flow: {n:,} commands")
    shared = peers.shared_flow(n, seed, prefill)
    flow = as_received(shared.commands)
    ops = shared.ops
    kinds = {"limit": 0, "market": 0, "cancel": 0}
    for op in ops:
        kinds[("limit", "market", "cancel")[op[0]]] += 1
    ctx.detail("flow", {"mix": "peers", "shares": MIXES["peers"], "commands": len(ops),
                        "prefill": prefill, "trades": len(shared.trades), "seed": seed,
                        "resting_at_end": shared.resting_end,
                        "commands_by_kind": kinds,
                        "numbers": "integer ticks and lots below 2**31"})
    ours = default_config()
    contenders = {"exchange-core": ("ours", ours)}
    if ours != ("python", "python"):
        contenders["exchange-core-pure"] = ("ours", ("python", "python"))
    engines: dict[str, dict] = {}
    for name, (_, config) in contenders.items():
        engines[name] = {"status": "ok", "label": f"exchange-core ({engine_label(config)})",
                         "kind": "ours, with risk and balances", "agreed": True,
                         "trades": len(shared.trades)}
    for module_name in peers.ADAPTERS:
        adapter, why = peers.load(module_name)
        key = adapter.PACKAGE
        entry = engines[key] = {"label": adapter.NAME, "kind": adapter.KIND,
                                "package": adapter.PACKAGE}
        if why:
            entry.update(status="unavailable", reason=why, agreed=None)
            continue
        entry["version"] = adapter.version()
        ctx.step(f"{adapter.NAME}: checking its trades")
        setup_prog, prog = adapter.program(shared.setup_ops, ops)
        theirs = adapter.trades(setup_prog, prog)
        differs = peers.compare(shared.trades, theirs)
        entry["trades"] = len(theirs)
        if differs:
            entry.update(status="disagreed", agreed=False, reason=f"trades differ at {differs}")
            continue
        entry.update(status="ok", agreed=True)
        contenders[key] = ("peer", (adapter, setup_prog, prog))

    best = {name: 0.0 for name in contenders}
    for round_ in range(repeat):
        for name, (who, what) in contenders.items():
            ctx.step(f"timing, round {round_ + 1} of {repeat}: {name}")
            if who == "ours":
                rate = throughput(what, shared.setup, flow, 1)
            else:
                rate = peers.best_rate(what[0], what[1], what[2], 1)
            best[name] = max(best[name], rate)
    ours_rate = best["exchange-core"]
    for name, rate in best.items():
        entry = engines[name]
        entry["commands_per_s"] = rate
        if name != "exchange-core":
            entry["ours_to_theirs"] = ours_rate / rate
        goal = GOALS.get(name)
        if goal is not None:
            entry["goal"] = {"ratio_at_least": goal, "met": ours_rate / rate >= goal}
        ctx.figure(name, entry["label"], rate, "commands/s",
                   **({"ours_to_theirs": ours_rate / rate} if name != "exchange-core" else {}))
    ctx.detail("engines", engines)
    ctx.detail("note", "exchange-core runs with its full risk and balance work (locks, fees, "
                       "double-entry transfers, events); the peers keep no balances")
    if breakdown:
        ctx.step("where our time goes")
        ctx.detail("breakdown_ns_per_command", time_per_command(ours, shared.setup, flow,
                                                                ours_rate, repeat))


def time_per_command(config, setup, flow, rate: float, repeat: int) -> dict[str, float]:
    """Our engine's ns per command on the shared flow, split: building the
    events it returns, its book calls' net work (the replay loop
    subtracted), and the rest (validation, risk, balances, bookkeeping)."""
    from benchmarks.bench_engine import event_floor, record_book_calls, replay_books
    n = len(flow)
    engine_ns = 1e9 / rate
    events_ns = event_floor(config, setup, flow, repeat) / n * 1e9
    calls, start = record_book_calls(setup, flow)
    book = config[1]
    per_book = replay_books(["null", book], calls, start, max(repeat, 5))
    book_ns = (len(calls) - start) * (1 / per_book[book] - 1 / per_book["null"]) / n * 1e9
    return {"engine": engine_ns, "events": events_ns, "book_calls": book_ns,
            "rest": engine_ns - events_ns - book_ns, "book_calls_per_command": (len(calls) - start) / n}
