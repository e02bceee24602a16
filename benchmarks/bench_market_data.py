"""Market data fan-out: updates/s to N subscribers beside the engine's commands/s.

    python -m benchmarks.bench_market_data [-n 200000] [--subscribers 0,1,10,50] [--repeat 2]

Each case starts a fresh ``exchange serve`` process (journal only,
``fsync=batch``), funds the accounts, starts N subscribers at ``--depth`` in
a separate process (raw sockets that count frames, so the readers cost the
shared CPU as little as they can), then sends ``engine.flow``'s
exchange_core mix closed-loop (``--window`` requests in flight; its deposits and resting
prefill go first, untimed) and measures
the commands/s acknowledged and the BookUpdate messages/s the subscribers
received, in the same run.  The fairness case adds ``--silent`` subscribers
(5) that never read a byte: the server resyncs and then drops them, and the
matching loop must not wait for them; its commands/s over the no-subscriber
case's is the ratio.  So that they do fall behind within a run (a
loopback socket's kernel buffers hold megabytes), each first asks for
``--silent-fill`` depth queries it never reads, and
``server.market_data_buffer_bytes_max`` is 64 KiB here.  Beside commands/s the table
shows the server process's CPU per command, which the other processes on a
shared machine disturb far less.  Cases take turns ``--repeat`` times; the best run of
each is shown.  ``run_fanout(n_commands, subscribers)`` is the function
other harnesses call.  Timings are for this machine only; compare within one
run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_service import TOKEN, ServerProcess, _closed_loop, _fund, arun, write_config
from benchmarks.harness import scenario
from engine.flow import Flow
from engine.service import protocol as P

SYMBOL = "BTC-USDT"         # the exchange_core flow's market
_UPDATE_TAG = b"BookUpdate"


def run_fanout(n_commands: int, subscribers: int, *, silent: int = 0, depth: int = 20,
               silent_depth: int = 1000, window: int = 1000, connections: int = 1,
               md_buffer_bytes: int = 1 << 20, md_flush_ms: int | None = None,
               silent_fill: int = 0) -> dict:
    """One case on a fresh server: ``subscribers`` reading subscribers at
    ``depth`` and ``silent`` ones at ``silent_depth`` that never read, the
    flow's ``n_commands`` sent closed-loop.  Returns commands/s acknowledged
    and the server's CPU per command, BookUpdate messages received (all
    subscribers) and per second of the run, and how the subscribers ended
    (resync notices seen, connections the server closed)."""
    setup, flow = _flow(n_commands)
    with tempfile.TemporaryDirectory() as d:
        config = write_config(Path(d), fsync="batch", database_url=None)
        server_keys = f"market_data_buffer_bytes_max = {md_buffer_bytes}\n"
        if md_flush_ms is not None:
            server_keys += f"market_data_flush_interval_ms = {md_flush_ms}\n"
        config.write_text(config.read_text().replace("[server]\n", "[server]\n" + server_keys, 1))
        server = ServerProcess(config)
        worker = quiet = None
        try:
            arun(_fund(server.port, setup))
            if subscribers:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.bench_market_data", "--worker",
                     str(server.port), str(subscribers), str(depth)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                line = worker.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"subscriber worker: {line!r}")
            quiet = [_silent_subscriber(server.port, i, silent_depth, silent_fill)
                     for i in range(silent)]
            if quiet:
                arun(_barrier(server.port))     # their queries are answered before timing
            cpu_s = _cpu_s(server.proc.pid)
            elapsed = arun(_closed_loop(server.port, flow, connections, window))
            cpu_s = _cpu_s(server.proc.pid) - cpu_s
            counts = {"updates": 0, "bytes": 0, "resyncs": 0, "closed": 0}
            if worker is not None:
                out, _ = worker.communicate("stop\n", timeout=120)
                counts = json.loads(out.strip().splitlines()[-1])
            silent_resyncs = sum(_read_resyncs(s) for s in quiet)
        finally:
            for s in quiet or ():
                s.close()
            if worker is not None and worker.poll() is None:
                worker.kill()
            server.stop()
    return {"subscribers": subscribers, "silent": silent, "depth": depth,
            "commands": len(flow), "seconds": elapsed, "commands_per_s": len(flow) / elapsed,
            "server_cpu_us_per_command": cpu_s / len(flow) * 1e6,
            "updates": counts["updates"], "updates_per_s": counts["updates"] / elapsed,
            "update_bytes_per_s": counts["bytes"] / elapsed, "resyncs": counts["resyncs"],
            "closed": counts["closed"], "silent_resyncs": silent_resyncs}


@scenario("market_data", help="L2 market data fanned out to N subscribers over loopback, the "
          "engine's commands/s beside it, and the fairness ratio with subscribers that never read",
          quick={"n": 10_000, "subscribers": (0, 1, 10), "silent": 2, "silent_fill": 500},
          full={"n": 200_000, "subscribers": (0, 1, 10, 50), "silent": 5, "silent_fill": 2000})
def market_data(ctx, n: int, subscribers: tuple, silent: int, silent_fill: int) -> None:
    results = {}
    cases = [(k, 0) for k in subscribers] + [(max(subscribers), silent)]
    for k, quiet in cases:
        ctx.step(f"{k} subscribers" + (f" + {quiet} that never read" if quiet else ""))
        results[(k, quiet)] = r = run_fanout(n, k, silent=quiet, silent_fill=silent_fill,
                                             md_buffer_bytes=64 * 1024)
        name = f"{k}" + (f"+{quiet}silent" if quiet else "")
        ctx.figure(f"commands.{name}", f"commands/s with {k} subscribers"
                   + (f" + {quiet} that never read" if quiet else ""), r["commands_per_s"],
                   "commands/s", server_cpu_us_per_command=r["server_cpu_us_per_command"])
        if k:
            ctx.figure(f"updates.{name}", f"BookUpdates delivered to {k} subscribers"
                       + (f" (+{quiet} silent)" if quiet else ""), r["updates_per_s"],
                       "updates/s", resyncs=r["resyncs"], closed=r["closed"])
    base, loaded = results[(0, 0)], results[(max(subscribers), silent)]
    ctx.figure("fairness", f"commands/s with {max(subscribers)}+{silent} silent subscribers "
               "/ with none", loaded["commands_per_s"] / base["commands_per_s"], "ratio",
               cpu_ratio=base["server_cpu_us_per_command"] / loaded["server_cpu_us_per_command"],
               silent_resyncs=loaded["silent_resyncs"])
    ctx.detail("cases", {f"{k}+{q}": r for (k, q), r in results.items()})


def _read_resyncs(sock: socket.socket, quiet_s: float = 0.3) -> int:
    """Read what a silent subscriber was sent (at last); its resync notices."""
    sock.settimeout(quiet_s)
    data, resyncs = bytearray(), 0
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
        pos = 0
        while len(data) - pos >= 4:
            size = int.from_bytes(data[pos:pos + 4], "little")
            if len(data) - pos - 4 < size:
                break
            resyncs += data[pos + 6:pos + 22] == b"MarketDataResync"
            pos += 4 + size
        del data[:pos]
    return resyncs


async def _barrier(port: int) -> None:
    """Return once the server has answered what reached it before."""
    from engine.client import Client
    client = await Client.connect("127.0.0.1", port, token=TOKEN, gateway_id="bench-barrier")
    await client.markets()
    await client.close()


def _flow(n: int):
    """(setup, mix): the exchange_core flow's deposits and resting prefill
    orders (sent before timing: subscribers then see a full book), and its
    ``n`` commands."""
    flow = Flow("exchange_core", 1, accounts=1000)
    commands = [c for c, _ in flow.stream(flow.setup_count + n)]
    return commands[:flow.setup_count], commands[flow.setup_count:]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: what the server
    spent, whatever else the shared machine was doing."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _silent_subscriber(port: int, i: int, depth: int, fill: int) -> socket.socket:
    """A subscriber that never reads (a small receive buffer), after asking
    for ``fill`` deep depth queries whose answers fill its socket buffers."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(P.encode_frame(P.Hello(f"silent-{i}", TOKEN, P.PROTOCOL_VERSION, 0))
                 + P.encode_frame(P.Subscribe(1, SYMBOL, depth))
                 + b"".join(P.encode_frame(P.QueryDepth(2 + k, SYMBOL, 1000))
                            for k in range(fill)))
    return sock


# ---------------------------------------------------------------------- the worker process
class _Counter(asyncio.Protocol):
    """Counts frames by their tag without decoding them."""

    def __init__(self, ready: asyncio.Future, totals: dict):
        self.buffer = bytearray()
        self.ready = ready
        self.totals = totals
        self.snapshot_seen = False

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos, end = 0, len(buf)
        totals = self.totals
        while end - pos >= 4:
            size = int.from_bytes(buf[pos:pos + 4], "little")
            if end - pos - 4 < size:
                break
            body = pos + 4
            # a tagged array: [0x9N, 0xa0|len, tag...]
            if buf[body + 2:body + 12] == _UPDATE_TAG:
                totals["updates"] += 1
                totals["bytes"] += size + 4
            elif buf[body + 2:body + 14] == b"BookSnapshot":
                if not self.snapshot_seen:
                    self.snapshot_seen = True
                    self.ready.set_result(None)
            elif buf[body + 2:body + 18] == b"MarketDataResync":
                totals["resyncs"] += 1
            pos = body + size
        if pos:
            del buf[:pos]

    def connection_lost(self, exc) -> None:
        self.totals["closed"] += 1


async def _worker(port: int, n: int, depth: int) -> None:
    loop = asyncio.get_running_loop()
    totals = {"updates": 0, "bytes": 0, "resyncs": 0, "closed": 0}
    readies = []
    for i in range(n):
        ready = loop.create_future()
        transport, _ = await loop.create_connection(lambda: _Counter(ready, totals),
                                                    "127.0.0.1", port)
        transport.write(P.encode_frame(P.Hello(f"md-{i}", TOKEN, P.PROTOCOL_VERSION, 0))
                        + P.encode_frame(P.Subscribe(1, SYMBOL, depth)))
        readies.append(ready)
    await asyncio.wait_for(asyncio.gather(*readies), 60)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)        # "stop"
    last = -1
    while totals["updates"] != last:        # what is still on its way
        last = totals["updates"]
        await asyncio.sleep(0.2)
    print(json.dumps(totals), flush=True)


# ---------------------------------------------------------------------- the command line
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, type=int, metavar=("PORT", "N", "DEPTH"),
                    help=argparse.SUPPRESS)
    ap.add_argument("-n", type=int, default=200_000, help="flow commands per case")
    ap.add_argument("--subscribers", default="0,1,10,50", help="reading subscribers per case")
    ap.add_argument("--silent", type=int, default=5,
                    help="never-reading subscribers added to the largest case (fairness)")
    ap.add_argument("--depth", type=int, default=20, help="the reading subscribers' depth")
    ap.add_argument("--silent-depth", type=int, default=1000, help="the silent ones' depth")
    ap.add_argument("--silent-fill", type=int, default=2000,
                    help="depth queries each silent subscriber sends and never reads")
    ap.add_argument("--md-buffer-bytes", type=int, default=64 * 1024,
                    help="server.market_data_buffer_bytes_max (default 64 KiB, below the "
                         "server's 1 MiB, so the silent subscribers are resynced within a run)")
    ap.add_argument("--md-flush-ms", type=int, default=None,
                    help="server.market_data_flush_interval_ms (default: the server's)")
    ap.add_argument("--window", type=int, default=1000, help="requests in flight")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of every case (best shown)")
    args = ap.parse_args(argv)
    if args.worker:
        arun(_worker(*args.worker))
        return 0
    counts = [int(x) for x in args.subscribers.split(",")]
    cases = [(n, 0) for n in counts]
    if args.silent:
        cases.append((max(counts), args.silent))
    best: dict[tuple[int, int], dict] = {}
    for _ in range(args.repeat):            # cases take turns: drift hits them alike
        for subscribers, silent in cases:
            r = run_fanout(args.n, subscribers, silent=silent, depth=args.depth,
                           silent_depth=args.silent_depth, window=args.window,
                           md_buffer_bytes=args.md_buffer_bytes, md_flush_ms=args.md_flush_ms,
                           silent_fill=args.silent_fill)
            key = (subscribers, silent)
            if key not in best or r["commands_per_s"] > best[key]["commands_per_s"]:
                best[key] = r
    print(f"{'subscribers':>11} {'silent':>6} {'commands/s':>11} {'cpu us/cmd':>10} "
          f"{'updates/s':>10} {'per sub/s':>9} {'MB/s':>6} {'resyncs':>7} {'closed':>6}")
    for subscribers, silent in cases:
        r = best[(subscribers, silent)]
        per = r["updates_per_s"] / subscribers if subscribers else 0
        print(f"{subscribers:>11} {silent:>6} {r['commands_per_s']:>11,.0f} "
              f"{r['server_cpu_us_per_command']:>10.1f} {r['updates_per_s']:>10,.0f} {per:>9,.0f} {r['update_bytes_per_s'] / 1e6:>6.1f} "
              f"{r['resyncs']:>7} {r['closed']:>6}", flush=True)
    base = best.get((0, 0))
    if base is not None and args.silent:
        loaded = best[(max(counts), args.silent)]
        print(f"fairness: commands/s with {max(counts)} subscribers + {args.silent} that never "
              f"read / with none = {loaded['commands_per_s'] / base['commands_per_s']:.2f} "
              f"(server CPU per command {loaded['server_cpu_us_per_command']:.1f} / "
              f"{base['server_cpu_us_per_command']:.1f} us); the silent ones were sent "
              f"{loaded['silent_resyncs']} resync notices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
