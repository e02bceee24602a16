"""exchange-core settlement: engine events -> an immutable double-entry ledger in PostgreSQL.

Public API::

    from settlement import SettlementWriter, migrate, database_url
    url = database_url()          # DATABASE_URL, else the embedded server (pgserver)
    await migrate(url)            # idempotent
    writer = SettlementWriter(url, engine_id="main", assets=engine.assets,
                              batch_events_max=10_000, flush_interval_ms=20)
    await writer.start()
    await writer.put(events)      # one Engine.submit result; awaits only when the queue is full
    await writer.flush()          # everything put so far is committed
    await writer.close()

Modules: ``database`` (where the server is), ``migrate`` (schema versions),
``rows`` (the pure event -> row mapping), ``refs`` (the ledger's idempotency
keys), ``assets`` (asset registration),
``writer`` (lifecycle, retry policy) with the parts it drives (``batching``,
``pipeline``, ``connection``, ``transaction``, ``diagnostics``, ``errors``,
``sql``), ``reconcile`` (ledger vs balances vs engine).  ``python -m
settlement`` is the CLI.  The design: docs/settlement.md.
"""
from .assets import AssetMismatch, register_assets
from .database import database_url, default_pgdata, embedded_url, stop_embedded, with_database
from .migrate import MigrationError, migrate
from .rows import BatchBuilder, MappingError
from .errors import DatabaseUnavailable, LedgerRejected, SettlementError, WriterClosed
from .writer import SettlementWriter, WriterStats

__all__ = [
    "SettlementWriter", "migrate", "database_url",
    "register_assets", "embedded_url", "default_pgdata", "stop_embedded", "with_database",
    "SettlementError", "LedgerRejected", "DatabaseUnavailable", "WriterClosed", "MigrationError", "AssetMismatch",
    "MappingError", "BatchBuilder", "WriterStats",
]
