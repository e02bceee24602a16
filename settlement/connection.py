"""The settlement writer's connections: one per pipeline slot, bounded, reaped.

Owns opening a connection with the session settings the writer relies on
(timeouts, keepalives, durable commits, key-only plans), the backoff between
attempts, dropping a connection, and terminating the server sessions of
connections dropped after a failure.  It never reads or writes the ledger,
never decides whether to retry (the writer does) and never waits on the
network without a bound.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

import asyncpg

from .sql import KEYED_PLANS

if TYPE_CHECKING:
    from .writer import WriterStats

log = logging.getLogger("settlement.writer")

RECONNECT_DELAY_MIN_MS = 25


def backoff_s(attempt: int, delay_max_ms: float) -> float:
    """The wait before attempt ``attempt`` + 1: from 25 ms, doubling, at most ``delay_max_ms``."""
    return min(delay_max_ms, RECONNECT_DELAY_MIN_MS * 2 ** (attempt - 1)) / 1000


class Connections:
    """``slots`` connections to ``url``, each opened on demand."""

    def __init__(self, url: str, *, engine_id: str, slots: int, connect_timeout_s: float,
                 command_timeout_s: float, stats: "WriterStats"):
        self.url = url
        self.engine_id = engine_id
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.stats = stats
        self.conns: list[asyncpg.Connection | None] = [None] * slots
        self._slots_used: set[int] = set()      # slots that had a connection (for stats.reconnects)
        self._identities: dict[int, tuple] = {}  # id(conn) -> (backend pid, backend_start)
        self._abandoned: list[tuple] = []       # backends of connections dropped after a failure

    def pids(self) -> list[int]:
        """PostgreSQL backend pids of the open connections."""
        return [c.get_server_pid() for c in self.conns if c is not None and not c.is_closed()]

    async def get(self, slot: int) -> asyncpg.Connection:
        """The slot's connection, opened again if it is missing or closed."""
        conn = self.conns[slot]
        if conn is None or conn.is_closed():
            conn = await self.open(slot)
        return conn

    async def open(self, slot: int, setup: Callable[[asyncpg.Connection], Awaitable[None]]
                   | None = None) -> asyncpg.Connection:
        """A new connection in ``slot``; ``setup`` runs on it first (if it
        raises, the connection is closed and the slot left as it was)."""
        server_ms = int(2 * max(self.command_timeout_s, 1.0) * 1000)
        conn = await asyncpg.connect(
            self.url, timeout=self.connect_timeout_s, command_timeout=self.command_timeout_s,
            server_settings={
                "application_name": f"settlement-writer:{self.engine_id}"[:63],
                # A session whose client went away silently must not hold the
                # settlement_state row or uncommitted rows for long: the server
                # ends it when it sits idle in a transaction or in a statement
                # (a lock wait) this long, and TCP keepalives notice a dead peer.
                # A session stuck in COPY waiting for data is ended by neither
                # (PostgreSQL does not act on timeouts while it reads from the
                # client): the writer terminates its abandoned backends itself
                # when it reconnects (_reap).  A batch waiting, client side, for
                # the batch ahead is idle in transaction too; if that ever
                # outlasts this, it is rolled back and retried.
                "idle_in_transaction_session_timeout": str(server_ms),
                "statement_timeout": str(server_ms),
                "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                "tcp_keepalives_count": "3",
                **KEYED_PLANS})
        try:
            durability, started = await conn.fetchrow(
                "SELECT current_setting('synchronous_commit'), "
                "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())")
            if durability == "off":
                # a COMMIT must be durable before the writer counts it, whatever
                # the database's or role's default says ('local' and stronger stay)
                await conn.execute("SET synchronous_commit = on")
            self._identities[id(conn)] = (conn.get_server_pid(), started)
            if self._abandoned:
                await self._reap(conn)
            if setup is not None:
                await setup(conn)
        except BaseException:
            self._identities.pop(id(conn), None)
            conn.terminate()
            raise
        if slot in self._slots_used:
            self.stats.reconnects += 1
        self._slots_used.add(slot)
        self.conns[slot] = conn
        return conn

    async def _reap(self, conn: asyncpg.Connection) -> None:
        """Terminate the server sessions of connections this writer dropped
        after a failure, if they still exist: one cut off mid-COPY would
        otherwise hold its locks and uncommitted keys until TCP gives up (or
        for ever behind a proxy).  Matched on pid and backend_start, so a
        reused pid is never hit; best effort (needs the same role)."""
        abandoned, self._abandoned = self._abandoned, []
        try:
            reaped = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(a.pid)) "
                "FROM pg_stat_activity a JOIN unnest($1::int[], $2::timestamptz[]) "
                "AS s(pid, started) ON a.pid = s.pid AND a.backend_start = s.started",
                [p for p, _ in abandoned], [t for _, t in abandoned])
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not terminate abandoned writer sessions %s: %r", abandoned, exc)
            return
        if reaped:
            self.stats.reaped_sessions += reaped
            log.warning("terminated %d abandoned writer session(s) of %s", reaped, abandoned)

    async def drop(self, slot: int, *, graceful: bool = False, abandon: bool = False) -> None:
        """Close the slot's connection: ``graceful`` politely (else at once);
        ``abandon``: it was dropped after a failure, so its server session
        may live on, stuck -- the next connection opened terminates it."""
        conn, self.conns[slot] = self.conns[slot], None
        if conn is None:
            return
        identity = self._identities.pop(id(conn), None)
        if abandon and not graceful and identity is not None:
            self._abandoned.append(identity)
        if conn.is_closed():
            return
        if graceful:
            try:
                await asyncio.wait_for(conn.close(), 5)
                return
            except Exception:
                pass
        conn.terminate()
