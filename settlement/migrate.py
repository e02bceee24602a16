"""Schema migrations: versioned SQL files applied in order, recorded once.

Owns ``settlement/migrations/NNNN_name.sql`` and the ``schema_migrations``
table.  ``migrate(url)`` applies every file not yet recorded, each in its own
transaction together with its record, under a PostgreSQL advisory lock so
concurrent callers (two services starting at once) apply each file once.  It
is safe to run any number of times.  A recorded migration whose file has since
changed (checksum) is refused: migrations are append-only, like the ledger.

It never drops or rewrites data on its own.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

__all__ = ["Migration", "migrations", "migrate", "MigrationError"]

# pg_advisory_lock key: any constant unique to this project ("exchange-core migrate")
MIGRATE_LOCK_KEY = 0x65786D69
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with the files here."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """Every migration file shipped in settlement/migrations, by version."""
    found: list[Migration] = []
    folder = resources.files("settlement") / "migrations"
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m is None:
            continue
        found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mg: mg.version)
    versions = [mg.version for mg in found]
    assert len(set(versions)) == len(versions), f"duplicate migration versions: {versions}"
    assert versions == list(range(1, len(versions) + 1)), f"migration versions not 1..n: {versions}"
    return found


async def migrate(url: str) -> list[int]:
    """Apply the missing migrations to the database at ``url``; return the
    versions applied by this call (empty when already up to date)."""
    conn = await asyncpg.connect(url)
    try:
        return await migrate_connection(conn)
    finally:
        await conn.close()


async def migrate_connection(conn: asyncpg.Connection) -> list[int]:
    """``migrate`` on an open connection (not inside a transaction)."""
    assert not conn.is_in_transaction(), "migrate needs its own transactions"
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK_KEY)
    try:
        await conn.execute("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )""")
        recorded = {r["version"]: r for r in await conn.fetch(
            "SELECT version, name, checksum FROM schema_migrations")}
        files = migrations()
        known = {mg.version for mg in files}
        unknown = sorted(set(recorded) - known)
        if unknown:
            raise MigrationError(f"database has migrations {unknown} that this code does not know "
                                 "(is the code older than the database?)")
        applied: list[int] = []
        for mg in files:
            rec = recorded.get(mg.version)
            if rec is not None:
                if rec["checksum"] != mg.checksum:
                    raise MigrationError(
                        f"migration {mg.version:04d}_{mg.name} was applied with checksum "
                        f"{rec['checksum'][:12]} but the file now has {mg.checksum[:12]}: "
                        "never edit an applied migration, add a new one")
                continue
            async with conn.transaction():
                await conn.execute(mg.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mg.version, mg.name, mg.checksum)
            applied.append(mg.version)
        return applied
    finally:
        if not conn.is_closed():   # a lost session releases its advisory locks anyway
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK_KEY)
