"""Fixtures every suite shares: engines on every book, and databases.

``book`` is parameterised over "python" and, when the kernel is built,
"cython" (support.BOOKS), so every engine test runs on both; each book runs
with its engine core (support.engine_class: pure Python with the Python book,
the compiled core when built with the Cython book).

Databases are always a real PostgreSQL: ``DATABASE_URL`` when set, else an
embedded one (pgserver) started for this session in a temporary folder.
Every test gets a database of its own, ``exchange_test_<random>``, migrated,
and dropped afterwards: the server may be shared with other developers and CI.
The helper modules (support, settle_db, servers, ...) are on the path through
``pythonpath`` in pyproject.toml.
"""
from __future__ import annotations

import asyncio
import os

import pytest
from settle_db import create_database, drop_database
from support import ASSETS, BOOKS, engine_class, instrument

from engine.messages import Deposit
from settlement import migrate
from settlement.database import ENV_URL, embedded_server, stop_embedded


@pytest.fixture(params=BOOKS)
def book(request):
    return request.param


@pytest.fixture
def make_engine(book):
    """make_engine(**instrument_overrides, max_open_orders=..., funded=True)."""
    def make(funded: bool = True, max_open_orders: int = 1000, **kw):
        eng = engine_class(book)(ASSETS, [instrument(**kw)], book=book, max_open_orders=max_open_orders)
        if funded:
            for account in (2, 3, 4, 5):
                eng.submit(Deposit(account, "USD", 10_000_000))
                eng.submit(Deposit(account, "ABC", 100_000))
        return eng
    return make


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
