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

# --- living beside tests/conftest.py ----------------------------------------
# The engine tests do ``from conftest import ...`` and mean tests/conftest.py.
# pytest imports every conftest.py under the module name "conftest", so once
# this folder is collected (it sorts before tests/test_*.py) that name would be
# this file.  Give the name back after each collection report from here.
_config = None


def pytest_configure(config):
    global _config
    _config = config


def pytest_collectreport(report):
    root = Path(__file__).resolve().parent.parent / "conftest.py"
    current = sys.modules.get("conftest")
    if current is not None and Path(getattr(current, "__file__", "")).resolve() == root:
        return
    for plugin in _config.pluginmanager.get_plugins() if _config is not None else ():
        if Path(getattr(plugin, "__file__", "") or "/").resolve() == root:
            sys.modules["conftest"] = plugin
            return


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
