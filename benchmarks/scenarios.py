"""The harness's scenarios for each layer, from the book up to the wire.

Each one calls the measuring functions of the benchmark scripts
(``bench_engine``, ``bench_book``, ``bench_settlement``, ``bench_service``)
at the sizes of the set being run and reports figures to its context; what a
figure means is in docs/benchmarks.md.  Nothing here times anything itself.
"""
from __future__ import annotations

import gc

from benchmarks.harness import PERCENTILES, percentile_map, scenario

FLOW_MIXES = ("exchange_core", "insert_heavy", "cancel_heavy", "sweep")
PREFILL = 2000                      # resting orders per symbol before a flow (engine.flow's default)
LAG_LOADS = (0.25, 0.50, 0.75)      # settlement lag: offered loads as shares of the COPY ceiling
LAG_GOAL_P99_MS = 100.0             # at 50% of the ceiling
_CORE_NAMES = {"python": "pure-Python core", "cython": "compiled core"}
_BOOK_NAMES = {"python": "Python book", "cython": "Cython book"}


def default_config() -> tuple[str, str]:
    """(core, book) of ``engine.Engine`` with ``book="auto"``: what a user gets."""
    import engine
    return engine.CORE_IMPLEMENTATION, engine.BOOK_IMPLEMENTATION


def engine_label(config) -> str:
    core, book = config
    return f"{_CORE_NAMES[core]} + {_BOOK_NAMES[book]}"


def timed_flow(mix: str, n: int, seed: int):
    """(setup, flow): ``n`` commands of ``mix`` after the setup, the flow
    decoded from msgpack as a server's decoder hands it over."""
    from benchmarks.bench_engine import as_received, split_setup
    from engine.flow import generate
    setup, flow = split_setup(generate(mix, n, seed=seed, prefill=PREFILL), PREFILL)
    return setup, as_received(flow)


def submit_figures(ctx, key: str, label: str, config, setup, flow, repeat: int, **extra) -> None:
    """Engine.submit commands/s (best of ``repeat``) and its latency curve."""
    from benchmarks.bench_engine import latencies, throughput
    rate = throughput(config, setup, flow, repeat)
    *curve, events = latencies(config, setup, flow, PERCENTILES)
    ctx.figure(key, label, rate, "commands/s", latency=percentile_map(curve), latency_unit="us",
               events_per_command=events / len(flow), commands=len(flow), **extra)


def rows_per_command(config, setup, flow) -> dict[str, float]:
    """Rows the settlement writer would write per command of ``flow``, in
    batches of its default size: ledger (transfers), trades, orders (new
    rows and updates of the orders table)."""
    from benchmarks.bench_engine import fresh_engine
    from engine.flow import market_config
    from settlement.rows import BatchBuilder
    from settlement.writer import BATCH_EVENTS_MAX_DEFAULT
    eng = fresh_engine(config, setup)
    asset_ids = {a.name: i for i, a in enumerate(market_config()[0], 1)}
    ledger = trades = orders = 0
    batch = BatchBuilder(asset_ids)
    for i, c in enumerate(flow):
        batch.add(eng.submit(c))
        if batch.n_events >= BATCH_EVENTS_MAX_DEFAULT or i == len(flow) - 1:
            new, updates = batch.order_rows()
            ledger, trades, orders = (ledger + len(batch.transfers), trades + len(batch.trades),
                                      orders + len(new) + len(updates))
            batch = BatchBuilder(asset_ids)
    n = len(flow)
    return {"ledger": ledger / n, "trades": trades / n, "orders": orders / n}


# ================================================================ the engine
@scenario("flows", help="Engine.submit on the flow generator's mixes (the default engine), "
          "with the settlement rows each command makes",
          quick={"n": 30_000, "repeat": 3, "seed": 1},
          full={"n": 300_000, "repeat": 3, "seed": 1})
def flows(ctx, n: int, repeat: int, seed: int) -> None:
    from engine.flow import MIXES
    config = default_config()
    ctx.detail("engine", engine_label(config))
    ctx.detail("mixes", {mix: MIXES[mix] for mix in FLOW_MIXES})
    for mix in FLOW_MIXES:
        ctx.step(f"{mix}: generating {n:,} commands")
        setup, flow = timed_flow(mix, n, seed)
        ctx.step(f"{mix}: timing")
        rows = rows_per_command(config, setup, flow)
        submit_figures(ctx, mix, f"Engine.submit, {mix} mix", config, setup, flow, repeat,
                       rows_per_command=rows)


@scenario("engine", help="Engine.submit on the exchange_core mix, every engine core on every book "
          "(pure Python and accelerated)",
          quick={"n": 30_000, "repeat": 3, "seed": 1},
          full={"n": 300_000, "repeat": 3, "seed": 1})
def engine_cores(ctx, n: int, repeat: int, seed: int) -> None:
    from benchmarks.bench_engine import available_cores
    from engine import available_books
    ctx.step(f"generating {n:,} commands")
    setup, flow = timed_flow("exchange_core", n, seed)
    for core in available_cores():
        for book in available_books():
            ctx.step(f"{core} core, {book} book")
            submit_figures(ctx, f"{core}-{book}", f"Engine.submit, {engine_label((core, book))}",
                           (core, book), setup, flow, repeat)


@scenario("book", help="raw order-book operations (add, cancel, match, move, mixed) on both books",
          quick={"n": 20_000, "resting": 20_000, "repeat": 3, "seed": 7},
          full={"n": 200_000, "resting": 100_000, "repeat": 3, "seed": 7})
def book_ops(ctx, n: int, resting: int, repeat: int, seed: int) -> None:
    from benchmarks import bench_book
    from engine.book import Book as PyBook
    books = {"python": PyBook}
    if bench_book.CBook is not None:
        books["cython"] = bench_book.CBook
    ctx.step("building the workload")
    prefill, work = bench_book.build_workload(seed, resting, n)
    rates, sums = {}, {}
    for name, cls in books.items():
        ctx.step(f"{name} book: throughput")
        rates[name], sums[name], _ = bench_book.throughput(cls, prefill, work, repeat)
    assert len({str(s) for s in sums.values()}) == 1, f"the books diverged: {sums}"
    quantiles = [p / 100 for p in PERCENTILES]
    for name, cls in books.items():
        ctx.step(f"{name} book: latency")
        lat = bench_book.latencies(cls, prefill, work, quantiles)
        for phase in bench_book.PHASES:
            ctx.figure(f"{phase}.{name}", f"book {phase}, {_BOOK_NAMES[name]}", rates[name][phase],
                       "ops/s", latency=percentile_map(lat[phase]), latency_unit="ns",
                       ops=len(work[phase]))
    ctx.detail("timer_overhead_ns", bench_book.timer_overhead_ns())


@scenario("memory", help="bytes per resting order at 1,000,000 resting orders: the default engine "
          "(with and without client order ids) and each book alone",
          quick={"orders": 1_000_000, "python_book": False},
          full={"orders": 1_000_000, "python_book": True})
def memory(ctx, orders: int, python_book: bool) -> None:
    import engine
    from benchmarks.bench_book import memory_child
    from benchmarks.bench_engine import engine_memory_child
    label = engine_label(default_config())
    for cid in (False, True):
        ctx.step(f"engine, {'with' if cid else 'without'} client order ids")
        ctx.figure("engine_cid" if cid else "engine",
                   f"{label}, {'with' if cid else 'no'} client order ids",
                   engine_memory_child(orders, cid), "B/order", orders=orders)
    for name in (["cython"] if engine.BOOK_IMPLEMENTATION == "cython" else []) + (
            ["python"] if python_book else []):
        ctx.step(f"{name} book alone")
        rss, kernel = memory_child(name, orders, 7)
        extra = {"kernel_bytes_per_order": kernel["total_bytes"] / orders} if kernel else {}
        ctx.figure(f"book.{name}", f"{_BOOK_NAMES[name]} alone", rss, "B/order", orders=orders,
                   **extra)


# ================================================================ settlement
@scenario("settlement", help="settlement rows/s and trades/s beside the raw COPY ceiling of the "
          "same rows, and the lag at 25/50/75% of that ceiling",
          quick={"trades": 15_000, "lag_seconds": 3.0, "seed": 1},
          full={"trades": 200_000, "lag_seconds": 10.0, "seed": 1},
          database="required")
def settlement(ctx, trades: int, lag_seconds: float, seed: int) -> None:
    from benchmarks import bench_settlement as bs
    from benchmarks.bench_service import arun
    ctx.step(f"engine: a {trades:,}-trade flow")
    commands, n_trades = bs.trade_heavy_flow(seed, trades)
    knobs = (bs.BATCH_EVENTS, bs.FLUSH_MS, bs.PIPELINE_DEPTH)
    ctx.detail("writer", dict(zip(("batch_events_max", "flush_interval_ms", "pipeline_depth"),
                                  knobs)))
    gc.collect()
    gc.freeze()         # as bench_settlement: old objects must not make the lag's collections slow
    made: list[str] = []
    try:
        ctx.step("throughput and the raw COPY ceiling (two rounds)")
        m = arun(bs.throughput_and_ceiling(ctx.database_url, made, commands, bs.ASSETS, *knobs))
        stats = m["stats"]
        rows_per_trade = stats.rows / n_trades
        ceiling_trades = n_trades / m["ceiling_s"]
        ctx.figure("writer", "settlement writer", stats.rows / m["settle_s"], "rows/s",
                   trades_per_s=n_trades / m["settle_s"], events_per_s=stats.events / m["settle_s"],
                   ratio_to_ceiling=m["ceiling_s"] / m["settle_s"], rows_per_trade=rows_per_trade)
        ctx.figure("ceiling", "raw COPY ceiling, same rows and batches", m["rows"] / m["ceiling_s"],
                   "rows/s", trades_per_s=ceiling_trades)
        for share in LAG_LOADS:
            rate = share * ceiling_trades
            ctx.step(f"lag at {share:.0%} of the ceiling ({rate:,.0f} trades/s)")
            lag = arun(bs.lag_at(ctx.database_url, made, commands, n_trades, rate, lag_seconds,
                                 *knobs, bs.ASSETS, PERCENTILES))
            ctx.figure(f"lag_{share * 100:.0f}", f"settlement lag at {share:.0%} of the ceiling",
                       lag["achieved_trades_per_s"], "trades/s achieved",
                       latency=percentile_map(lag["percentiles_ms"].values()), latency_unit="ms",
                       offered_trades_per_s=rate, seconds=lag["seconds"], max_ms=lag["max_ms"])
            if share == 0.50:
                p99 = lag["percentiles_ms"][99]
                ctx.detail("goal", {"lag_p99_ms_at_50pct": p99, "target_ms": LAG_GOAL_P99_MS,
                                    "met": p99 <= LAG_GOAL_P99_MS})
    finally:
        gc.unfreeze()
        arun(bs.drop_all(ctx.database_url, made))


# ================================================================ the service
@scenario("replay", help="exchange replay: journal commands/s applied to a fresh engine",
          quick={"n": 100_000}, full={"n": 1_000_000})
def replay(ctx, n: int) -> None:
    from benchmarks.bench_service import replay_rate
    ctx.step(f"a {n:,}-command journal, then exchange replay")
    rate, line = replay_rate(n)
    ctx.figure("journal", "exchange replay (journal to engine state)", rate, "commands/s",
               commands=n)
    ctx.detail("output", line)


@scenario("recovery", help="restart to serving after N journaled commands: the whole journal "
          "replayed (after SIGKILL), and from the shutdown snapshot",
          quick={"n": 100_000}, full={"n": 1_000_000})
def recovery(ctx, n: int) -> None:
    from benchmarks.bench_service import recovery as restart_times
    ctx.step(f"{n:,} commands served, killed, restarted twice")
    replayed, from_snapshot = restart_times(n)
    ctx.figure("journal", f"restart to serving after {n:,} commands, the journal replayed",
               replayed, "s", commands=n)
    ctx.figure("snapshot", f"restart to serving after {n:,} commands, from the snapshot",
               from_snapshot, "s", commands=n)


@scenario("wire", help="wire to wire over loopback: a real exchange serve and client, throughput "
          "with 1 and 4 connections, open-loop latency at fixed offered loads",
          quick={"n": 40_000, "window": 1000, "fsyncs": ["batch"], "rates": [5_000, 20_000],
                 "latency_seconds": 2.0, "latency_settled": False},
          full={"n": 200_000, "window": 1000, "fsyncs": ["batch", "always"],
                "rates": [5_000, 20_000], "latency_seconds": 5.0, "latency_settled": True},
          database="optional")
def wire(ctx, n: int, window: int, fsyncs: list, rates: list, latency_seconds: float,
         latency_settled: bool) -> None:
    from benchmarks import bench_service
    url = ctx.database_url
    if url is None:
        ctx.detail("settlement", "off only: no PostgreSQL")
    try:
        ctx.step(f"throughput, {n:,} commands per case")
        for case, conns, acked, settled in bench_service.throughput(n, window, url, fsyncs):
            key = case.replace("fsync=", "").replace(" settlement=", "-settle_")
            ctx.figure(f"{key}.{conns}", f"{case}, {conns} connection{'s' * (conns > 1)}", acked,
                       "commands/s", connections=conns, **({"settled_per_s": settled}
                                                            if settled else {}))
        if url:
            ctx.step("the settlement writer alone on the same flow")
            ctx.figure("writer_alone", "settlement writer alone, same flow",
                       bench_service.writer_rate(n, url), "commands/s")
        need = max(rates) * latency_seconds
        ctx.step(f"open-loop latency at {', '.join(f'{r:,}' for r in rates)} commands/s")
        for rate, settle, *curve in bench_service.latency(
                int(need), rates, url if latency_settled else None, PERCENTILES, latency_seconds):
            ctx.figure(f"latency_{rate}.settle_{settle}",
                       f"send to ack at {rate:,}/s offered, settlement {settle}", rate,
                       "commands/s offered", latency=percentile_map(curve), latency_unit="ms")
    finally:
        bench_service.drop_made()
