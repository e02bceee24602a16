"""Private databases on a shared server: created with a unique name, dropped after."""
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
