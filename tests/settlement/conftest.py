"""Database fixtures for the settlement tests: always a real PostgreSQL.

The server is ``DATABASE_URL`` when set, else an embedded one (pgserver)
started for this session in a temporary folder.  Every test gets a database
of its own, ``exchange_test_<random>``, migrated, and dropped afterwards:
the server may be shared with other developers and CI.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))      # settle_flow, settle_checks, settle_db

from settle_db import create_database, drop_database  # noqa: E402
from settlement import migrate  # noqa: E402
from settlement.database import ENV_URL, embedded_server, stop_embedded  # noqa: E402

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
    stop_embedded(server.pgdata)


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
