"""The embedded-server path (pgserver), run even when DATABASE_URL is set.

A private PostgreSQL in a temporary folder: ``database_url()`` without
``DATABASE_URL`` finds it, the CLI works on it, and -- since it is ours to
stop -- PostgreSQL is stopped and started again under a running writer
(a clean shutdown and a crash), which must lose nothing and book nothing twice.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from settle_db import create_database, drop_database
from settle_checks import assert_settled
from engine.flow import CROSS_ASSETS as ASSETS, run
from settlement import SettlementWriter, database_url, default_pgdata, migrate
from settlement.database import _pgserver, embedded_server, stop_embedded

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    server = embedded_server(tmp_path_factory.mktemp("embedded") / "pgdata")
    yield server
    server.cleanup()
    # after a stop/start by pg_ctl the handle no longer knows the postmaster it
    # would stop: make sure no server outlives the tests
    stop_embedded(server.pgdata)


@pytest.fixture
def embedded_db(embedded):
    server_url = embedded.get_uri()
    url = asyncio.run(create_database(server_url))
    asyncio.run(migrate(url))
    yield url
    asyncio.run(drop_database(server_url, url))


def _stop(server, mode: str) -> None:
    _pgserver().pg_ctl(["-w", "-m", mode, "stop"], pgdata=server.pgdata, user=server.system_user,
                       timeout=60)


def _start(server) -> None:
    socket_dir = server.get_postmaster_info().socket_dir
    _pgserver().pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log),
                        "start"], pgdata=server.pgdata, user=server.system_user, timeout=60)


def test_database_url_falls_back_to_the_embedded_server(embedded, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("EXCHANGE_PGDATA", str(embedded.pgdata))
    url = database_url()
    assert url == embedded.get_uri()
    assert url.startswith("postgresql://postgres:@/postgres?host=/")     # a unix socket
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db.example/x")
    assert database_url() == "postgresql://someone@db.example/x"
    monkeypatch.delenv("EXCHANGE_PGDATA")
    assert default_pgdata() == ROOT / "var" / "pgdata"


def test_settle_on_the_embedded_server(embedded_db):
    engine, commands = run(seed=31, n=5_000)

    async def main():
        writer = SettlementWriter(embedded_db, assets=ASSETS)
        await writer.start()
        for events in commands:
            await writer.put(events)
        await writer.close()

    asyncio.run(main())
    assert_settled(embedded_db, engine, commands)


def test_cli_on_the_embedded_server(embedded):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["EXCHANGE_PGDATA"] = str(embedded.pgdata)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "settlement", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    url = cli("url")
    assert url.returncode == 0 and url.stdout.strip() == embedded.get_uri(), url.stderr
    migrated = cli("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert cli("migrate").stdout.strip() == "schema up to date"
    from settlement.migrate import migrations
    assert f"schema version {len(migrations())} " in cli("status").stdout
    assert embedded.get_postmaster_info().is_running()      # the CLI left our server running


def test_postgres_restart_mid_stream_loses_nothing_and_books_nothing_twice(embedded, embedded_db):
    engine, commands = run(seed=47, n=40_000)
    outages = []

    async def main():
        writer = SettlementWriter(embedded_db, assets=ASSETS, batch_events_max=2_000,
                                  flush_interval_ms=10, reconnect_delay_max_ms=200)
        await writer.start()
        third = len(commands) // 3

        async def restarts():
            for mode, outage_s, at in (("fast", 1.0, third), ("immediate", 0.5, 2 * third)):
                while writer.committed_seq < at:
                    await asyncio.sleep(0.005)
                t0 = time.monotonic()
                await asyncio.to_thread(_stop, embedded, mode)
                await asyncio.sleep(outage_s)
                await asyncio.to_thread(_start, embedded)
                outages.append((mode, writer.committed_seq, time.monotonic() - t0))

        restarting = asyncio.create_task(restarts())
        for i, events in enumerate(commands):
            await writer.put(events)
            if i % 100 == 0:
                await asyncio.sleep(0.001)       # a paced producer, so the restarts land mid-stream
        await writer.flush()
        await asyncio.wait_for(restarting, 60)
        await writer.close()
        return writer.stats

    stats = asyncio.run(main())
    assert [m for m, _, _ in outages] == ["fast", "immediate"]
    assert all(seq < len(commands) for _, seq, _ in outages), outages     # mid-stream
    assert stats.retries >= 2 and stats.reconnects >= 2, stats
    assert_settled(embedded_db, engine, commands)
