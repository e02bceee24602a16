"""Private databases on a shared server: created with a unique name, dropped after; and a
lock that stalls the settlement writer."""
from __future__ import annotations

import secrets

import asyncpg

from settlement import with_database


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


class BalancesLocked:
    """``async with BalancesLocked(url) as lock``: another session holds LOCK
    TABLE balances, so every batch stalls at its balance update (PostgreSQL
    "stalls") until ``await lock.release()`` or the end of the block."""

    def __init__(self, url):
        self.url = url

    async def __aenter__(self):
        self.conn = await asyncpg.connect(self.url)
        self.tx = self.conn.transaction()
        await self.tx.start()
        await self.conn.execute("LOCK TABLE balances IN SHARE MODE")
        return self

    async def release(self):
        if self.tx is not None:
            await self.tx.rollback()
            self.tx = None

    async def __aexit__(self, *exc):
        await self.release()
        await self.conn.close()
