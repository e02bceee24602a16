"""Where the settlement database is: ``DATABASE_URL``, else an embedded server.

``database_url()`` returns ``DATABASE_URL`` when it is set.  Otherwise it
starts (or reuses) an embedded PostgreSQL from the ``pgserver`` package in a
data folder, so a new user needs no server installed:

- ``EXCHANGE_PGDATA`` names the folder when set;
- else, in a source checkout, ``<checkout>/var/pgdata`` (``var/`` is git-ignored);
- else the user's data folder (``platformdirs.user_data_dir("exchange-core")/pgdata``).

The embedded server listens on a unix socket only (no TCP port), so its URL
looks like ``postgresql://postgres:@/postgres?host=/path/to/socket-dir``;
asyncpg and psql both take it.  It is stopped when the last process that
asked for it exits, unless ``keep_running=True`` was asked once (``python -m
settlement url`` does; it stays up until ``python -m settlement stop``).

On first start it raises ``max_wal_size`` (4GB) and ``checkpoint_timeout``
(15min) in that server (``ALTER SYSTEM``): fewer forced checkpoints under a
sustained settlement load.  A server given by ``DATABASE_URL`` is never
reconfigured.

This module owns finding and starting the server; it never creates schemas.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = ["database_url", "default_pgdata", "embedded_server", "embedded_url", "stop_embedded",
           "with_database", "create_database", "drop_database", "ENV_URL", "ENV_PGDATA"]

ENV_URL = "DATABASE_URL"
ENV_PGDATA = "EXCHANGE_PGDATA"
_PACKAGE_DIR = Path(__file__).resolve().parent


def default_pgdata() -> Path:
    """The embedded server's data folder (see the module docstring)."""
    env = os.environ.get(ENV_PGDATA, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "engine").is_dir():
        return checkout / "var" / "pgdata"
    import platformdirs
    return Path(platformdirs.user_data_dir("exchange-core")) / "pgdata"


def database_url() -> str:
    """``DATABASE_URL`` if set, else the URL of the embedded server (started
    now if it is not running; this can take a few seconds the first time)."""
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        return url
    return embedded_url()


def _pgserver():
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


_KEEP_RUNNING_FLAG = ".exchange-keep-running"


def embedded_server(pgdata: str | os.PathLike | None = None, *, keep_running: bool = False):
    """Start (or attach to) the embedded server in ``pgdata`` and return the
    ``pgserver.PostgresServer`` handle.

    pgserver stops the server when the last process using it exits.  With
    ``keep_running`` (or once any caller asked for it, until ``stop_embedded``)
    it stays up: a flag file in the data folder remembers that."""
    pgserver = _pgserver()
    path = Path(pgdata).expanduser().resolve() if pgdata is not None else default_pgdata()
    path.parent.mkdir(parents=True, exist_ok=True)
    flag = path / _KEEP_RUNNING_FLAG
    keep = keep_running or flag.exists()
    server = pgserver.get_server(path, cleanup_mode=None if keep else "stop")
    if keep_running:
        flag.touch()
    _tune_once(server, path)
    return server


# The embedded server is ours to configure.  A ledger writes WAL fast: with the
# stock max_wal_size (1GB) a sustained load forces a checkpoint every few
# seconds, and every page touched first after one is written to WAL whole.
_TUNING_SQL = ("ALTER SYSTEM SET max_wal_size = '4GB'; "
               "ALTER SYSTEM SET checkpoint_timeout = '15min'; "
               "SELECT pg_reload_conf();")
_TUNED_FLAG = ".exchange-tuned"


def _tune_once(server, path: Path) -> None:
    flag = path / _TUNED_FLAG
    if not flag.exists():
        server.psql(_TUNING_SQL)
        flag.touch()


def embedded_url(pgdata: str | os.PathLike | None = None, *, keep_running: bool = False) -> str:
    """URL of the embedded server in ``pgdata`` (default ``default_pgdata()``),
    database ``postgres``."""
    return embedded_server(pgdata, keep_running=keep_running).get_uri()


def stop_embedded(pgdata: str | os.PathLike | None = None) -> bool:
    """Stop the embedded server in ``pgdata`` if one runs; True if it did."""
    pgserver = _pgserver()
    from pgserver.utils import PostmasterInfo
    path = Path(pgdata).expanduser().resolve() if pgdata is not None else default_pgdata()
    (path / _KEEP_RUNNING_FLAG).unlink(missing_ok=True)
    info = PostmasterInfo.read_from_pgdata(path) if path.is_dir() else None
    if info is None or not info.is_running():
        return False
    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=user)
    return True


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (works for
    TCP URLs and for the embedded server's unix-socket URL)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def _database_name(name: str) -> str:
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"database name must be letters, digits and _: {name!r}")
    return name


async def create_database(server_url: str, name: str, *, replace: bool = False) -> str:
    """Create database ``name`` on the server of ``server_url`` (dropping it
    first when ``replace``); its URL."""
    import asyncpg
    name = _database_name(name)
    conn = await asyncpg.connect(server_url)
    try:
        if replace:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` (if it exists) on the server of ``server_url``."""
    import asyncpg
    name = _database_name(name)
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()

