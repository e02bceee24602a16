"""``exchange demo``: the whole exchange in one command, with no configuration.

A database of its own (``--database``, default ``exchange_demo``, dropped and
created afresh) on the server ``settlement.database_url()`` names
(``DATABASE_URL``, else the embedded PostgreSQL); a real ``Server``
in-process on a free loopback port with a generated configuration and a
temporary journal (the server migrates the database and settles into it);
K gateways, each a real ``engine.client.Client`` over TCP with an account
range of its own, sending a seeded flow (``engine.flow``, the cross markets)
pipelined for about ``--seconds``; a live progress line; a clean stop; a
reconciliation at the engine's final seq; a summary.  The last line is
``reconciliation: balanced`` or ``reconciliation: N discrepancies``.

Each gateway's flow is generated in small chunks against an oracle engine of
its own (so the loop is never held up for long), then translated to the real
engine: accounts moved into the gateway's range, cancels sent by client order
id, replaces by the engine's order id learned from earlier replies.  An order
the gateway has not heard of yet keeps the oracle's id: the engine rejects it,
as it would a real gateway's stale cancel.  This module never changes the
engine, the server or the ledger; it only drives them.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import msgspec

from engine.service.cli import arg, command

DATABASE_DEFAULT = "exchange_demo"
MIX = "insert_heavy"                    # 60% GTC, 10% IOC, 15% cancel, 15% replace
MARKETS = "cross"                       # BTC-USDT, ETH-USDT, ETH-BTC
ACCOUNTS_PER_GATEWAY = 25
PREFILL_PER_SYMBOL = 150                # resting orders each gateway places per symbol first
CHUNK_COMMANDS = 200                    # commands generated and sent at once by one gateway
WINDOW_CHUNKS = 3                       # chunks in flight per gateway
LIVE_ORDERS_MAX = 50_000                # client order id -> engine order id, per gateway
REFRESH_TERMINAL_S = 0.25
REFRESH_PLAIN_S = 1.0
SECONDS_MAX = 3600
GATEWAYS_MAX = 64


@command("demo", help="run a demo exchange: server, gateways, settlement, reconciliation",
         args=[arg("--seconds", type=float, default=15.0, metavar="N",
                   help="how long the gateways trade (default 15)"),
               arg("--gateways", type=int, default=4, metavar="K",
                   help="simulated gateways, each a TCP client (default 4)"),
               arg("--database", default=DATABASE_DEFAULT, metavar="NAME",
                   help=f"database to recreate on the server: its name starts with "
                        f"{DATABASE_DEFAULT} (the default)"),
               arg("--seed", type=int, default=1, help="seed of the order flow (default 1)")])
def demo(args) -> int:
    if not 0 < args.seconds <= SECONDS_MAX:
        raise _usage(f"--seconds must be in (0, {SECONDS_MAX}]")
    if not 1 <= args.gateways <= GATEWAYS_MAX:
        raise _usage(f"--gateways must be 1..{GATEWAYS_MAX}")
    if not args.database or not args.database.replace("_", "").isalnum():
        raise _usage(f"--database must be letters, digits and _: {args.database!r}")
    import logging
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    from engine.service.server import new_event_loop
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_demo(args))


def _usage(message: str):
    from engine.service.config import ConfigError
    return ConfigError("exchange demo", "", message)


# ================================================================ one gateway
class _Gateway:
    """One simulated gateway: its flow, its translation to the real engine,
    its counters."""

    def __init__(self, index: int, seed: int):
        from engine.flow import Flow
        self.gateway_id = f"gw-{index + 1}"
        self.token = f"demo-trading-{index + 1}-{os.urandom(8).hex()}"
        self.account_offset = index * ACCOUNTS_PER_GATEWAY
        self.flow = Flow(MIX, seed * 1000 + index, accounts=ACCOUNTS_PER_GATEWAY,
                         prefill=PREFILL_PER_SYMBOL, markets=MARKETS)
        self._stream = self.flow.stream()       # endless; each command run on the oracle
        self._oracle_cid: dict[int, str] = {}   # oracle order id -> client order id (open)
        self._live: dict[str, int] = {}         # client order id -> engine order id
        self.client = None
        self.commands = self.trades = self.events = self.rejects = 0

    @property
    def accounts(self) -> range:
        from engine.ledger import FIRST_USER_ACCOUNT
        first = FIRST_USER_ACCOUNT + self.account_offset
        return range(first, first + ACCOUNTS_PER_GATEWAY)

    def deposits(self) -> list:
        """The flow's setup deposits, for the funding session."""
        n = self.flow.accounts * len(self.flow.assets)
        return [self._translate(cmd) for cmd, _ in (next(self._stream) for _ in range(n))]

    def chunk(self, n: int) -> list:
        """The next ``n`` commands, translated to the real engine."""
        out = []
        cids = self._oracle_cid
        for cmd, events in (next(self._stream) for _ in range(n)):
            out.append(self._translate(cmd))
            for e in events:            # keep the oracle's open orders' client ids
                t = type(e).__name__
                if t == "Accepted":
                    cids[e.order_id] = e.client_order_id
                elif t == "Cancelled":
                    cids.pop(e.order_id, None)
                elif t == "Trade":
                    if not e.maker_remaining:
                        cids.pop(e.maker_order_id, None)
                    if not e.taker_remaining:
                        cids.pop(e.taker_order_id, None)
        return out

    def _translate(self, cmd):
        from engine.messages import CancelOrder, ReplaceOrder
        account = cmd.account + self.account_offset
        t = type(cmd)
        if t is CancelOrder:
            cid = self._oracle_cid.get(cmd.order_id)
            if cid is not None:
                return CancelOrder(account, client_order_id=cid)
        elif t is ReplaceOrder:
            real = self._live.get(self._oracle_cid.get(cmd.order_id))
            if real is not None:
                return msgspec.structs.replace(cmd, account=account, order_id=real)
        return msgspec.structs.replace(cmd, account=account)

    def absorb(self, replies) -> None:
        """Count a chunk's replies; learn the engine's order ids."""
        live = self._live
        for reply in replies:
            self.commands += 1
            self.events += len(reply.events)
            for e in reply.events:
                t = type(e).__name__
                if t == "Trade":
                    self.trades += 1
                elif t == "Accepted":
                    live[e.client_order_id] = e.order_id
                elif t == "Rejected":
                    self.rejects += 1
        while len(live) > LIVE_ORDERS_MAX:
            del live[next(iter(live))]

    async def run(self, deadline: float) -> None:
        """Send chunks, ``WINDOW_CHUNKS`` in flight, until ``deadline``
        (monotonic); then wait for the last replies."""
        inflight: deque = deque()
        client = self.client
        while True:
            while len(inflight) < WINDOW_CHUNKS and time.monotonic() < deadline:
                inflight.append(asyncio.ensure_future(client.request_many(self.chunk(CHUNK_COMMANDS))))
                await asyncio.sleep(0)          # let the others generate and the server run
            if not inflight:
                return
            self.absorb(await inflight.popleft())


# ================================================================ the run
async def _demo(args) -> int:
    from rich.console import Console

    from settlement import database_url
    from settlement.database import ENV_URL

    console = Console(highlight=False, soft_wrap=True)
    server_url = database_url()
    where = "DATABASE_URL" if os.environ.get(ENV_URL, "").strip() else "embedded PostgreSQL"
    url = await _fresh_database(server_url, args.database)
    console.print(f"database {args.database!r} ({where}), recreated")
    gateways = [_Gateway(i, args.seed) for i in range(args.gateways)]
    with tempfile.TemporaryDirectory(prefix="exchange-demo-") as folder:
        admin_token = f"demo-admin-{os.urandom(8).hex()}"
        config_path = Path(folder) / "exchange.toml"
        config_path.write_text(_config_toml(gateways, admin_token, Path(folder) / "journal"))
        from engine.service.config import load_config
        from engine.service.server import Server
        config = load_config(config_path)
        server = Server(config, database_url=url)
        await server.start()            # migrates the database, starts the settlement writer
        serving = asyncio.create_task(server.serve(), name="demo-server")
        try:
            result = await _trade(console, server, gateways, admin_token, args)
        finally:
            server.request_stop()
            await serving                   # flushes journal and settlement, writes a snapshot
        if server.failure is not None:
            print(f"exchange: error: {server.failure}", file=sys.stderr, flush=True)
    return await _finish(console, server, url, gateways, result)


async def _fresh_database(server_url: str, name: str) -> str:
    import asyncpg

    from settlement import SettlementError
    from settlement.database import create_database
    if not name.startswith(DATABASE_DEFAULT):
        # the demo replaces its database: a typo must not drop a real ledger
        raise SettlementError(f"--database {name!r}: the demo only replaces databases named "
                              f"{DATABASE_DEFAULT}*")
    try:
        return await create_database(server_url, name, replace=True)
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise SettlementError(f"database: {type(exc).__name__}: {exc}") from None


def _config_toml(gateways, admin_token: str, journal: Path) -> str:
    from engine.flow import MAX_OPEN_ORDERS, market_config
    assets, instruments = market_config(markets=MARKETS)
    lines = ["[server]", 'host = "127.0.0.1"', "port = 0", "",
             "[journal]", f"dir = {_toml(str(journal))}", 'fsync = "batch"', "",
             "[engine]", f"max_open_orders = {MAX_OPEN_ORDERS}", "",
             "[[server.sessions]]", 'role = "admin"', f"token = {_toml(admin_token)}",
             'gateway_id = "funding"', ""]
    for g in gateways:
        lines += ["[[server.sessions]]", 'role = "trading"', f"token = {_toml(g.token)}",
                  f"gateway_id = {_toml(g.gateway_id)}",
                  f"accounts = [{', '.join(str(a) for a in g.accounts)}]", ""]
    for table, items in (("assets", assets), ("instruments", instruments)):
        for item in items:
            lines.append(f"[[{table}]]")
            lines += [f"{k} = {_toml(v)}" for k, v in msgspec.structs.asdict(item).items()
                      if v is not None]
            lines.append("")
    return "\n".join(lines)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return msgspec.json.encode(str(value)).decode()     # a TOML basic string


async def _trade(console, server, gateways, admin_token: str, args) -> dict:
    """Fund, then trade for ``args.seconds`` with live progress; the timings."""
    from engine.client import Client
    host, port = "127.0.0.1", server.port
    funding = await Client.connect(host, port, token=admin_token, gateway_id="funding",
                                   reports=False)
    for g in gateways:
        replies = await funding.request_many(g.deposits())
        assert all(not any(type(e).__name__ == "Rejected" for e in r.events) for r in replies), \
            "a demo deposit was rejected"
    await funding.close()
    for g in gateways:
        g.client = await Client.connect(host, port, token=g.token, gateway_id=g.gateway_id,
                                        reports=False)
    symbols = [i.symbol for i in gateways[0].flow.instruments]
    console.print(f"serving on {host}:{port}; {len(gateways)} gateways, "
                  f"{len(gateways) * ACCOUNTS_PER_GATEWAY} accounts, {', '.join(symbols)}; "
                  f"trading for {args.seconds:g} s")
    start_seq = server.state.seq
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    progress = _Progress(console, server, gateways)
    reporter = asyncio.create_task(progress.run())
    try:
        await asyncio.gather(*(g.run(deadline) for g in gateways))
        t_trading = time.monotonic() - t0
        await asyncio.gather(*(g.client.close() for g in gateways))
        await server.settle_backlog()
    finally:
        reporter.cancel()
        try:
            await reporter
        except asyncio.CancelledError:
            pass
        progress.close()
    return {"t0": t0, "trading_s": t_trading, "start_seq": start_seq}


class _Progress:
    """The live line: rich's Live on a terminal, a plain line a second otherwise."""

    def __init__(self, console, server, gateways):
        self.console = console
        self.server = server
        self.gateways = gateways
        self.instruments = gateways[0].flow.instruments
        self.live = None
        if console.is_terminal:
            from rich.live import Live
            self.live = Live(console=console, auto_refresh=False, transient=False)
            self.live.start()
        self.interval_s = REFRESH_TERMINAL_S if self.live else REFRESH_PLAIN_S

    def line(self, dt: float, d_seq: int, d_trades: int) -> str:
        state = self.server.state
        engine = state.engine
        writer = self.server.writer
        lag = engine.seq - writer.committed_seq if writer is not None else 0
        tops = []
        for ins in self.instruments:
            bid, ask = engine.top(ins.symbol)
            tops.append(f"{ins.symbol} {_px(ins, bid)}/{_px(ins, ask)}")
        return (f"seq {engine.seq:,}  {d_seq / dt:,.0f} commands/s  {d_trades / dt:,.0f} trades/s  "
                f"settlement lag {lag:,}  " + "  ".join(tops))

    async def run(self) -> None:
        seq = self.server.state.seq
        trades = 0
        t = time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            new_seq = self.server.state.seq
            new_trades = sum(g.trades for g in self.gateways)
            text = self.line(max(now - t, 1e-9), new_seq - seq, new_trades - trades)
            seq, trades, t = new_seq, new_trades, now
            if self.live is not None:
                from rich.text import Text
                self.live.update(Text(text), refresh=True)
            else:
                print(text, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _px(ins, ticks: int) -> str:
    if not ticks:
        return "-"
    return str(ins.ticks_to_price(ticks))


async def _finish(console, server, url: str, gateways, timing: dict) -> int:
    """Reconcile at the engine's final seq, print the summary; the exit code."""
    import asyncpg
    from rich import box
    from rich.table import Table

    from engine.ledger import SYSTEM_FEES
    from engine.service.recovery import ENGINE_ID
    from settlement.reconcile import reconcile

    engine = server.state.engine
    result = await reconcile(url, engine, engine_id=ENGINE_ID)
    conn = await asyncpg.connect(url)
    try:
        rows = {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                for t in ("transfers", "trades", "orders")}
    finally:
        await conn.close()
    elapsed_s = time.monotonic() - timing["t0"]
    trading_s = timing["trading_s"]
    commands = sum(g.commands for g in gateways)
    trades = sum(g.trades for g in gateways)
    table = Table(title="exchange demo", box=box.SIMPLE if console.is_terminal else box.ASCII,
                  show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("commands (engine seq)", f"{engine.seq:,}")
    table.add_row("  from the gateways", f"{commands:,} ({commands / trading_s:,.0f}/s)")
    table.add_row("  rejected", f"{sum(g.rejects for g in gateways):,}")
    table.add_row("trades", f"{trades:,} ({trades / trading_s:,.0f}/s)")
    table.add_row("events", f"{sum(g.events for g in gateways):,}")
    for t, n in rows.items():
        table.add_row(f"ledger rows: {t}", f"{n:,}")
    for asset in engine.assets:
        available, locked = engine.balance(SYSTEM_FEES, asset.name)
        table.add_row(f"fees {asset.name}", f"{asset.from_minor(available + locked):f}")
    table.add_row("trading", f"{trading_s:.1f} s")
    table.add_row("elapsed (with stop and reconcile)", f"{elapsed_s:.1f} s")
    table.add_row("book", str(getattr(engine, "book_implementation", "")))
    console.print(table)
    found = len(result.discrepancies)
    if result.status == "error":
        console.print(f"reconciliation #{result.run_id} could not compare: {result.note}")
        found = max(found, 1)
    for d in result.discrepancies[:20]:
        console.print(f"  {d}")
    embedded = not os.environ.get("DATABASE_URL", "").strip()
    console.print(f"psql {url}  (kept until the next demo"
                  + ("; the embedded server stops with this command: "
                     "`exchange db url` keeps it up)" if embedded else ")"))
    sys.stdout.flush()
    if result.ok and found == 0:
        print("reconciliation: balanced", flush=True)
        return 0
    print(f"reconciliation: {found} discrepancies", flush=True)
    return 1
