"""What the settlement writer raises, and which failures a retry can cure.

Owns the exception classes of ``SettlementWriter`` and ``is_transient``, the
line between an error worth a reconnect and a permanent one.  It never
touches a connection, never retries anything itself and never decides what
to do about an error (that is ``settlement.writer``).
"""
from __future__ import annotations

from typing import Sequence

import asyncpg

__all__ = ["SettlementError", "LedgerRejected", "DatabaseUnavailable", "WriterClosed",
           "is_transient"]

ERROR_ROWS_MAX = 50             # offending rows quoted in an error message


class SettlementError(RuntimeError):
    """The writer has stopped and will not write again.

    ``events``: the events of the batch that failed (never committed);
    ``rows``: the offending rows when they could be identified (dicts);
    ``sqlstate``/``constraint``/``detail``: from PostgreSQL when it refused.
    Every uncommitted event, this batch's and those queued after it, is
    still available from ``SettlementWriter.pending_events()``.
    """

    def __init__(self, message: str, *, events: Sequence = (), rows: Sequence = (),
                 sqlstate: str | None = None, constraint: str | None = None,
                 detail: str | None = None):
        self.events = list(events)
        self.rows = list(rows)
        self.sqlstate = sqlstate
        self.constraint = constraint
        self.detail = detail
        parts = [message]
        if detail:
            parts.append(f"detail: {detail}")
        if self.rows:
            shown = "\n  ".join(repr(r) for r in self.rows[:ERROR_ROWS_MAX])
            more = f"\n  ... and {len(self.rows) - ERROR_ROWS_MAX} more" \
                if len(self.rows) > ERROR_ROWS_MAX else ""
            parts.append(f"offending rows:\n  {shown}{more}")
        if self.events:
            parts.append(f"batch: {len(self.events)} events, seq {self.events[0].seq}"
                         f"..{self.events[-1].seq}")
        super().__init__("\n".join(parts))

    def again(self) -> "SettlementError":
        """A copy to raise once more: the writer raises a fresh copy (chained
        ``from`` the original) on every later call instead of re-raising one
        object, whose traceback would grow with every raise."""
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        new.args = self.args
        return new


class LedgerRejected(SettlementError):
    """PostgreSQL or the writer's own checks refused a batch: an engine bug, a
    gap in the stream, or a schema problem.  Retrying cannot help."""


class DatabaseUnavailable(SettlementError):
    """A batch kept failing transiently (connection lost, server restarting,
    timeouts) through ``reconnect_attempts_max`` attempts -- about 49 s of
    backoff with the defaults -- or ``start()`` could not connect.  Nothing
    was lost: ``pending_events()`` holds every uncommitted event, and a new
    writer fed the stream again settles the rest exactly once."""


class WriterClosed(RuntimeError):
    """``put()``/``flush()`` on a writer that was closed or aborted: the
    command was not queued, or what was put is not (all) committed."""


_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P")
# serialization failure, deadlock, query cancelled (statement timeout,
# pg_cancel_backend), lock not available (lock_timeout)
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57014", "55P03"})


def is_transient(exc: BaseException) -> bool:
    """True for errors a reconnect and retry can cure: lost connections, a
    server shutting down or starting up, resource exhaustion, serialization
    failures and deadlocks, cancelled statements, timeouts.  Everything else
    is permanent."""
    if isinstance(exc, (OSError, ConnectionError)):    # TimeoutError is an OSError
        return True
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return code.startswith(_TRANSIENT_SQLSTATE_PREFIXES) or code in _TRANSIENT_SQLSTATES
    if isinstance(exc, (asyncpg.exceptions._base.DataError, asyncpg.ClientConfigurationError,
                        asyncpg.exceptions._base.UnsupportedClientFeatureError,
                        asyncpg.exceptions._base.UnsupportedServerFeatureError)):
        return False        # a value or a setting this client refuses: the same every time
    # "connection is closed", "another operation is in progress", "cannot switch
    # to state ...": asyncpg's side of a connection the server killed under it
    # (seen with pg_terminate_backend mid-COPY).  The connection is thrown
    # away and the batch retried; a real bug still ends, after the bounded
    # retries, as DatabaseUnavailable carrying this error.
    return isinstance(exc, (asyncpg.InterfaceError, asyncpg.exceptions._base.InternalClientError))
