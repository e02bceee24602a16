"""Helpers for the service tests: a configuration file, an in-process server."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from engine.client import Client
from engine.service.config import load_config
from engine.service.server import Server

TOKENS = {"trading": "tok-trading", "treasury": "tok-treasury", "admin": "tok-admin",
          "limited": "tok-limited"}

CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
clock_interval_ms = {clock_interval_ms}
[[server.sessions]]
token = "tok-trading"
role = "trading"
[[server.sessions]]
token = "tok-limited"
role = "trading"
accounts = [2, 3]
[[server.sessions]]
token = "tok-treasury"
role = "treasury"
[[server.sessions]]
token = "tok-admin"
role = "admin"
[journal]
dir = "{journal}"
fsync = "{fsync}"
snapshot_every = {snapshot_every}
segment_bytes_max = {segment_bytes_max}
[database]
enabled = {database}
{url}
{database_extra}
[[assets]]
name = "BTC"
scale = 8
[[assets]]
name = "USDT"
scale = 6
[[instruments]]
symbol = "BTC-USDT"
base = "BTC"
quote = "USDT"
price_tick = "0.01"
qty_lot = "0.0001"
maker_fee_bps = 2
taker_fee_bps = 5
[[instruments]]
symbol = "ETH-BTC"
base = "ETH"
quote = "BTC"
price_tick = "0.00001"
qty_lot = "0.001"
taker_fee_bps = 10
[[assets]]
name = "ETH"
scale = 8
"""


# the smallest valid configuration: one session, two assets, one instrument
MINIMAL_CONFIG = """
[[server.sessions]]
token = "tok-1"
role = "trading"
[[assets]]
name = "BTC"
scale = 8
[[assets]]
name = "USDT"
scale = 6
[[instruments]]
symbol = "BTC-USDT"
base = "BTC"
quote = "USDT"
price_tick = "0.01"
qty_lot = "0.0001"
"""


def write_config(folder: Path, *, port: int = 0, fsync: str = "batch",
                 snapshot_every: int = 1_000_000, database_url: str | None = None,
                 database_extra: str = "", segment_bytes_max: int = 64 << 20,
                 clock_interval_ms: int = 0) -> Path:
    """The test configuration.  ``clock_interval_ms`` 0: the server sends no
    Clock, so a test's commands are the journal's seqs one for one."""
    path = Path(folder) / "exchange.toml"
    path.write_text(CONFIG.format(
        port=port, journal=Path(folder) / "journal", fsync=fsync, snapshot_every=snapshot_every,
        segment_bytes_max=segment_bytes_max, clock_interval_ms=clock_interval_ms,
        database="true" if database_url else "false",
        url=f'url = "{database_url}"' if database_url else "", database_extra=database_extra))
    return path


@contextlib.asynccontextmanager
async def serving(folder: Path, **kw):
    """An in-process server on a free loopback port; stopped gracefully after."""
    server = Server(load_config(write_config(folder, **kw)))
    await server.start()
    try:
        yield server
    finally:
        server.request_stop()
        await server.serve()


async def connect(server, role="trading", gateway_id=None, **kw):
    """A client of the in-process server with the test token of ``role``."""
    return await Client.connect("127.0.0.1", server.port, token=TOKENS[role],
                                gateway_id=gateway_id or f"gw-{role}", **kw)


def run(coro):
    return asyncio.run(coro)
