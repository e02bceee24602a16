"""End to end over loopback: the real `exchange serve` process, the real client.

    python -m benchmarks.bench_service [-n 200000] [--scenario NAME ...]

Scenarios (each starts a fresh server process with its own journal):
- ``throughput``: commands/s acknowledged with 1 and 4 gateway connections,
  pipelined (``--window`` requests in flight per connection), settlement off
  (journal only) under ``fsync=batch`` and ``always``, and settlement on
  (``fsync=batch``) beside the settlement writer's own rate on the same flow
  (its events put into a ``SettlementWriter`` alone, same run);
- ``latency``: open loop at fixed offered loads (commands sent on a schedule,
  never waiting for replies), send-to-ack latency recorded in an
  HdrHistogram (a stall shows as the commands queued behind it);
- ``recovery``: restart-to-serving time after ``--recovery-n`` journaled
  commands, from the whole journal and from the shutdown snapshot;
- ``replay``: ``exchange replay`` commands/s on a ``--replay-n``-command journal.
The flow is ``engine.flow``'s exchange_core mix after its deposits.  Timings
are for this machine only; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hdrh.histogram import HdrHistogram

from engine.client import Client
from engine.flow import generate
from engine.service.server import new_event_loop


def arun(coro):
    """asyncio.run on the loop the server uses (uvloop where installed)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)

EXCHANGE = str(Path(sys.executable).with_name("exchange"))
TOKEN = "bench-admin"


def write_config(folder: Path, *, fsync: str, database_url: str | None,
                 snapshot_every: int = 10**9) -> Path:
    from engine.flow import market_config
    assets, instruments = market_config(1)
    lines = ["[server]", "port = 0", "outbound_bytes_max = 268435456",
             "[[server.sessions]]", f'token = "{TOKEN}"', 'role = "admin"',
             "[journal]", f'dir = "{folder / "journal"}"', f'fsync = "{fsync}"',
             f"snapshot_every = {snapshot_every}",
             "[database]", f"enabled = {'true' if database_url else 'false'}"]
    if database_url:
        lines.append(f'url = "{database_url}"')
    lines += ["[engine]", "max_open_orders = 100000"]
    for a in assets:
        lines += ["[[assets]]", f'name = "{a.name}"', f"scale = {a.scale}"]
    for i in instruments:
        lines += ["[[instruments]]", f'symbol = "{i.symbol}"', f'base = "{i.base}"',
                  f'quote = "{i.quote}"', f'price_tick = "{i.price_tick}"',
                  f'qty_lot = "{i.qty_lot}"', f"maker_fee_bps = {i.maker_fee_bps}",
                  f"taker_fee_bps = {i.taker_fee_bps}"]
    path = folder / "exchange.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class ServerProcess:
    def __init__(self, config: Path):
        t0 = time.perf_counter()
        self.log = open(config.with_name("server.log"), "w")
        self.proc = subprocess.Popen([EXCHANGE, "serve", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("exchange: serving on "):
            self.proc.wait()
            raise RuntimeError(f"server did not start: "
                               f"{config.with_name('server.log').read_text()[-2000:]}")
        self.ready_s = time.perf_counter() - t0
        self.port = int(line.split()[3].rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=600)


async def _connect(port: int, i: int) -> Client:
    return await Client.connect("127.0.0.1", port, token=TOKEN, gateway_id=f"bench-{i}")


async def _fund(port: int, deposits) -> None:
    c = await _connect(port, 99)
    futs = [c.request_nowait(d) for d in deposits]
    await asyncio.gather(*futs)
    await c.close()


async def _closed_loop(port: int, commands, connections: int, window: int) -> float:
    """Send every command with up to ``window`` in flight per connection; seconds taken."""
    clients = [await _connect(port, i) for i in range(connections)]
    parts = [commands[i::connections] for i in range(connections)]

    async def pump(client, part):
        # two batches of ``window`` in flight: the pipe never waits for a reply
        half = max(1, window // 2)
        inflight = []
        for k in range(0, len(part), half):
            inflight.append(asyncio.ensure_future(client.request_many(part[k:k + half])))
            if len(inflight) >= 2:
                await inflight.pop(0)
        await asyncio.gather(*inflight)

    t0 = time.perf_counter()
    await asyncio.gather(*(pump(c, p) for c, p in zip(clients, parts)))
    elapsed = time.perf_counter() - t0
    for c in clients:
        await c.close()
    return elapsed


async def _open_loop(port: int, commands, rate: float) -> HdrHistogram:
    """Send at ``rate`` commands/s on a fixed schedule; latency from the
    scheduled send time to the ack, in microseconds (perf_counter: the
    loop's own clock has millisecond steps under uvloop).  No reference to a
    finished request is kept: the client's own garbage collections would
    otherwise be measured as the server's latency."""
    hist = HdrHistogram(1, 60_000_000, 3)
    client = await _connect(port, 0)
    clock = time.perf_counter
    left = [len(commands)]
    all_done = asyncio.get_running_loop().create_future()

    def record(fut, sent):
        hist.record_value(max(1, int((clock() - sent) * 1e6)))
        left[0] -= 1
        if not left[0]:
            all_done.set_result(None)
    start = clock()
    burst = max(1, int(rate / 1000))        # one timer per millisecond
    for k in range(0, len(commands), burst):
        due = start + k / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        for cmd in commands[k:k + burst]:      # a burst is due at once, at ``due``
            client.request_nowait(cmd).add_done_callback(lambda f, sent=due: record(f, sent))
    await all_done
    await client.close()
    return hist


def _flow(n: int):
    cmds = generate("exchange_core", n, seed=1, accounts=1000)
    split = next(i for i, c in enumerate(cmds) if type(c).__name__ != "Deposit")
    return cmds[:split], cmds[split:]


def throughput(n: int, window: int, database_url: str | None, fsyncs=("batch", "always"),
               connection_counts=(1, 4)) -> list[tuple]:
    """(case, connections, commands/s acknowledged, commands/s settled or None):
    settlement off under each of ``fsyncs``, then on (``fsync=batch``) when
    there is a ``database_url``, each with each of ``connection_counts``."""
    deposits, flow = _flow(n)
    rows = []
    cases = [(fsync, None) for fsync in fsyncs]
    if database_url:
        cases.append(("batch", database_url))
    for fsync, db in cases:
        for connections in connection_counts:
            url = _fresh_db(db) if db else None
            settled = None
            with tempfile.TemporaryDirectory() as d:
                server = ServerProcess(write_config(Path(d), fsync=fsync, database_url=url))
                try:
                    arun(_fund(server.port, deposits))
                    t0 = time.perf_counter()
                    elapsed = arun(_closed_loop(server.port, flow, connections, window))
                    if url:
                        arun(_settled(url, len(deposits) + len(flow)))
                        settled = len(flow) / (time.perf_counter() - t0)
                finally:
                    server.stop()
            rows.append((f"fsync={fsync} settlement={'on' if db else 'off'}", connections,
                         len(flow) / elapsed, settled))
    return rows


async def _settled(url: str, seq: int) -> None:
    """Wait until PostgreSQL's last_seq reaches ``seq``."""
    import asyncpg
    conn = await asyncpg.connect(url)
    try:
        while (await conn.fetchval("SELECT last_seq FROM settlement_state") or 0) < seq:
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


def writer_rate(n: int, database_url: str) -> float:
    """The settlement writer's own commands/s on the same flow: the events of
    the flow's commands (from an engine run beforehand) put and flushed, no
    server, no sockets, no journal."""
    from engine.flow import market_config
    from engine import Engine
    from settlement import SettlementWriter, migrate
    deposits, flow = _flow(n)
    assets, instruments = market_config(1)
    engine = Engine(assets, instruments, max_open_orders=100_000)
    streams = [engine.submit(c) for c in deposits + flow]
    url = _fresh_db(database_url)

    async def go():
        await migrate(url)
        writer = SettlementWriter(url, assets=assets)
        await writer.start()
        for events in streams[:len(deposits)]:
            await writer.put(events)
        await writer.flush()
        t0 = time.perf_counter()
        for events in streams[len(deposits):]:
            await writer.put(events)
        await writer.flush()
        elapsed = time.perf_counter() - t0
        await writer.close()
        return len(flow) / elapsed
    return arun(go())


def latency(n: int, rates, database_url: str | None, percentiles=(50, 99, 99.9),
            seconds: float = 5.0) -> list[tuple]:
    """(rate, settlement on/off, *latency in ms at each of ``percentiles``):
    ``seconds`` of the flow at each rate, settlement off, then on when there
    is a ``database_url``."""
    deposits, flow = _flow(n)
    rows = []
    cases = [(rate, None) for rate in rates]
    if database_url:
        cases += [(rate, database_url) for rate in rates]
    for rate, db in cases:
        url = _fresh_db(db) if db else None
        with tempfile.TemporaryDirectory() as d:
            server = ServerProcess(write_config(Path(d), fsync="batch", database_url=url))
            try:
                arun(_fund(server.port, deposits))
                hist = arun(_open_loop(server.port, flow[:int(rate * seconds)], rate))
            finally:
                server.stop()
        rows.append((rate, "on" if url else "off",
                     *(hist.get_value_at_percentile(p) / 1000 for p in percentiles)))
    return rows


def recovery(n: int) -> tuple[float, float]:
    """Restart-to-serving seconds after ``n`` journaled commands: (after a
    SIGKILL with no snapshot, so the whole journal replays; after a graceful
    stop, which writes a snapshot)."""
    deposits, flow = _flow(n)
    with tempfile.TemporaryDirectory() as d:
        config = write_config(Path(d), fsync="off", database_url=None)
        server = ServerProcess(config)
        arun(_fund(server.port, deposits))
        arun(_closed_loop(server.port, flow, 1, 2000))
        server.proc.send_signal(signal.SIGKILL)       # no shutdown snapshot: replay it all
        server.proc.wait()
        again = ServerProcess(config)
        replayed = again.ready_s
        again.stop()                                  # graceful: writes a snapshot
        third = ServerProcess(config)
        from_snapshot = third.ready_s
        third.stop()
    return replayed, from_snapshot


_MADE: list[tuple[str, str]] = []       # (server url, database name) to drop at the end


def drop_made() -> None:
    """Drop every database this module made (``_fresh_db``)."""
    from settlement.database import drop_database

    async def drop():
        while _MADE:
            await drop_database(*_MADE.pop())
    asyncio.run(drop())


def replay_rate(n: int) -> tuple[float, str]:
    """``exchange replay`` on an ``n``-command journal with no snapshot:
    (commands/s it reports, its summary line).  The journal is written
    directly (the flow's commands as one gateway's requests), not served."""
    from engine.service.config import load_config
    from engine.service.journal import Journal, JournalRecord
    deposits, flow = _flow(n)
    with tempfile.TemporaryDirectory() as d:
        config_path = write_config(Path(d), fsync="off", database_url=None)
        journal = Journal(load_config(config_path).journal.dir, fsync="off")
        journal.open()
        batch = []
        for seq, command in enumerate(deposits + flow, 1):
            batch.append(JournalRecord(seq, "bench-0", seq, 0, command))
            if len(batch) == 4096:
                journal.append(batch)
                batch = []
        if batch:
            journal.append(batch)
        journal.close()
        done = subprocess.run([EXCHANGE, "replay", "--journal", str(Path(d) / "journal"),
                               "--config", str(config_path)],
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
    line = next(x for x in done.stdout.splitlines() if x.startswith("replayed "))
    return float(line.rsplit("(", 1)[1].split()[0].replace(",", "")), line


def _fresh_db(server_url: str) -> str:
    """A new database on the server (the writer keeps one engine per database);
    dropped when the benchmark ends."""
    import secrets

    from settlement.database import create_database
    name = f"exchange_bench_{secrets.token_hex(4)}"
    url = asyncio.run(create_database(server_url, name))
    _MADE.append((server_url, name))
    return url


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200_000, help="flow commands per throughput case")
    ap.add_argument("--window", type=int, default=1000, help="requests in flight per connection")
    ap.add_argument("--rates", default="5000,20000", help="open-loop offered loads, commands/s")
    ap.add_argument("--recovery-n", type=int, default=1_000_000)
    ap.add_argument("--replay-n", type=int, default=1_000_000)
    ap.add_argument("--scenario", action="append",
                    choices=("throughput", "latency", "recovery", "replay"))
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                    help="server for the settlement-on cases (default DATABASE_URL; none: skipped)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    finally:
        drop_made()


def _run(args) -> int:
    scenarios = args.scenario or ["throughput", "latency", "recovery", "replay"]
    if "throughput" in scenarios:
        print(f"{'case':32} {'conns':>5} {'acked/s':>10} {'settled/s':>10}")
        for case, conns, rate, settled in throughput(args.n, args.window, args.database_url):
            print(f"{case:32} {conns:>5} {rate:>10,.0f} "
                  f"{format(settled, ',.0f') if settled else '-':>10}", flush=True)
        if args.database_url:
            print(f"{'settlement writer alone':32} {'':>5} {'':>10} "
                  f"{writer_rate(args.n, args.database_url):>10,.0f}", flush=True)
    if "latency" in scenarios:
        print(f"{'offered/s':>10} {'settle':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}")
        rates = [int(r) for r in args.rates.split(",")]
        for rate, settle, p50, p99, p999 in latency(args.n, rates, args.database_url):
            print(f"{rate:>10,} {settle:>6} {p50:>8.3f} {p99:>8.3f} {p999:>9.3f}", flush=True)
    if "recovery" in scenarios:
        replayed, from_snapshot = recovery(args.recovery_n)
        print(f"restart to serving after {args.recovery_n:,} commands: {replayed:.2f} s "
              f"(journal replayed whole), {from_snapshot:.2f} s (from the shutdown snapshot)",
              flush=True)
    if "replay" in scenarios:
        rate, line = replay_rate(args.replay_n)
        print(f"exchange replay of {args.replay_n:,} commands: {rate:,.0f} commands/s ({line})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
