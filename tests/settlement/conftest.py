"""Database fixtures for the settlement tests: always a real PostgreSQL.

The server is ``DATABASE_URL`` when set, else an embedded one (pgserver)
started for this session in a temporary folder.  Every test gets a database
of its own, ``exchange_test_<random>``, migrated, and dropped afterwards:
the server may be shared with other developers and CI.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).parent))      # settle_flow, settle_checks

from settlement import migrate, with_database  # noqa: E402
from settlement.database import ENV_URL, embedded_server  # noqa: E402

SOAK = os.environ.get("EXCHANGE_SOAK", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if SOAK:
        return
    skip = pytest.mark.skip(reason="soak test: set EXCHANGE_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory):
    """URL of the server the tests create their databases on."""
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        yield url
        return
    server = embedded_server(tmp_path_factory.mktemp("pgserver") / "data")
    yield server.get_uri()
    server.cleanup()


async def create_database(server_url: str, prefix: str = "exchange_test") -> str:
    name = f"{prefix}_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    name = url.split("?")[0].rsplit("/", 1)[1]
    assert name.startswith("exchange_"), name      # never anything we did not create
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def make_db(pg_server_url):
    """Factory: a new migrated database (or unmigrated with migrated=False); all dropped after."""
    made: list[str] = []

    def make(migrated: bool = True) -> str:
        url = asyncio.run(create_database(pg_server_url))
        made.append(url)
        if migrated:
            asyncio.run(migrate(url))
        return url

    yield make
    for url in made:
        asyncio.run(drop_database(pg_server_url, url))


@pytest.fixture
def db_url(make_db):
    return make_db()
