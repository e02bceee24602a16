"""exchange-core settlement: engine events -> an immutable double-entry ledger in PostgreSQL."""
from .assets import AssetMismatch, register_assets
from .database import database_url, default_pgdata, embedded_url, stop_embedded, with_database
from .migrate import MigrationError, migrate
