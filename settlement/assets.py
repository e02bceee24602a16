"""Registering the engine's assets in the ``assets`` table.

Events name assets (``"BTC"``); the ledger stores ``asset_id``.  The mapping
comes from this table.  ``register_assets`` inserts the assets that are
missing and refuses an asset whose scale differs from the one recorded: a
changed scale would silently rescale every amount already booked.
"""
from __future__ import annotations

from typing import Iterable

import asyncpg

__all__ = ["register_assets", "load_assets", "AssetMismatch"]


class AssetMismatch(ValueError):
    """An asset's scale differs from the one the ledger recorded."""


async def register_assets(target, assets: Iterable) -> dict[str, int]:
    """Make sure each asset (anything with ``.name`` and ``.scale``, e.g.
    ``engine.Asset``) is in the ``assets`` table; return name -> asset_id for
    all assets of the ledger.  ``target`` is a URL or an open connection."""
    if isinstance(target, str):
        conn = await asyncpg.connect(target)
        try:
            return await register_assets(conn, assets)
        finally:
            await conn.close()
    conn: asyncpg.Connection = target
    wanted = [(a.name, a.scale) for a in assets]
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO assets (name, scale) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", wanted)
        known = await conn.fetch("SELECT asset_id, name, scale FROM assets")
    scales = {r["name"]: r["scale"] for r in known}
    for name, scale in wanted:
        if scales[name] != scale:
            raise AssetMismatch(f"asset {name}: the ledger has scale {scales[name]}, "
                                f"the engine says {scale}")
    return {r["name"]: r["asset_id"] for r in known}


async def load_assets(conn: asyncpg.Connection) -> dict[str, int]:
    """name -> asset_id for every asset of the ledger."""
    return {r["name"]: r["asset_id"] for r in await conn.fetch("SELECT asset_id, name FROM assets")}
