"""Private databases on a shared server: created with a unique name, dropped after; and a
lock that stalls the settlement writer."""
from __future__ import annotations

import secrets

import asyncpg

from settlement import database


async def create_database(server_url: str, prefix: str = "exchange_test") -> str:
    """A new database with a unique name; its URL."""
    return await database.create_database(server_url, f"{prefix}_{secrets.token_hex(6)}")


async def drop_database(server_url: str, url: str) -> None:
    name = url.split("?")[0].rsplit("/", 1)[1]
    assert name.startswith("exchange_"), name      # never anything we did not create
    await database.drop_database(server_url, name)


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
