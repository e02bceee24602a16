"""``SettlementWriter``: engine events -> PostgreSQL, in batches, exactly once.

The engine side calls ``await writer.put(events)`` with the list one
``Engine.submit`` returned.  ``put`` maps the events to rows at once (the pure
``settlement.rows`` mapping) into the open batch and returns; it awaits only
while the writer holds ``queue_rows_max`` uncommitted events (backpressure:
nothing is dropped, the producer slows down).  A batch is sealed when it
holds ``batch_rows_max`` events or its first command has waited
``flush_interval_ms``, whichever comes first; batches always hold whole
commands, so ``last_seq`` means "every seq <= last_seq is committed".

One transaction per batch, on one connection:

1. ``SELECT last_seq ... FOR UPDATE`` on this engine's ``settlement_state`` row.
   A batch at or below it is skipped (a retry whose COMMIT did get through,
   or a replay), a batch that would leave a gap is refused;
2. COPY transfers, trades, audit_log and the new orders;
3. COPY the order updates and the aggregated balance deltas into temp tables,
   then one ``UPDATE orders ... FROM`` and one ``UPDATE balances ... FROM``
   (after inserting zero rows for new (account, asset) pairs; one statement per
   batch, not per transfer), which also returns every touched bucket whose new value differs from the balance the
   engine reported after its last transfer -- any difference is a gap, a
   double booking or an engine bug, and stops the writer;
4. advance ``last_seq``; COMMIT.

A lost connection or a restarting server (any error of SQLSTATE class 08, 53,
57P, a serialization failure, a socket error) is retried: reconnect with
bounded exponential backoff, then the whole batch again; step 1 makes the
retry exactly-once.  Any other error is permanent (a CHECK violation is an
engine bug): the writer stops, the batch is rolled back, ``put``/``flush``/
``close`` raise a ``SettlementError`` carrying the offending events and rows,
and ``pending_events()`` still returns every uncommitted event.

This module owns the queue, the transaction and the retry policy.  It never
decides what a row contains (that is ``settlement.rows``) and never blocks the
event loop on PostgreSQL.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import asyncpg

from .assets import load_assets, register_assets
from .rows import (AUDIT_COLUMNS, BALANCE_COLUMNS, ORDER_COLUMNS, ORDER_UPDATE_COLUMNS,
                   TRADE_COLUMNS, TRANSFER_COLUMNS, BatchBuilder, MappingError)

__all__ = ["SettlementWriter", "SettlementError", "LedgerRejected", "DatabaseUnavailable",
           "WriterStats", "is_transient"]

log = logging.getLogger("settlement.writer")

BATCH_ROWS_MAX_DEFAULT = 10_000
FLUSH_INTERVAL_MS_DEFAULT = 20
RECONNECT_ATTEMPTS_MAX_DEFAULT = 30
RECONNECT_DELAY_MIN_MS = 25
RECONNECT_DELAY_MAX_MS_DEFAULT = 2_000
ERROR_ROWS_MAX = 50             # offending rows quoted in an error message


# ====================================================================== errors
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


class LedgerRejected(SettlementError):
    """PostgreSQL or the writer's own checks refused a batch: an engine bug, a
    gap in the stream, or a schema problem.  Retrying cannot help."""


class DatabaseUnavailable(SettlementError):
    """PostgreSQL stayed unreachable through every reconnect attempt."""


_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P")
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})


def is_transient(exc: BaseException, conn: asyncpg.Connection | None = None) -> bool:
    """True for errors a reconnect and retry can cure: lost connections, a
    server shutting down or starting up, resource exhaustion, serialization
    failures.  Everything else is permanent."""
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


# ====================================================================== SQL
_STAGE_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS settle_stage_balances (
    account_id bigint, asset_id integer, available_delta bigint, locked_delta bigint,
    available_after bigint, locked_after bigint, updated_seq bigint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS settle_stage_orders (
    order_id bigint, price_ticks bigint, open_qty_lots bigint, filled_qty_lots bigint,
    status text, cancel_reason text, updated_seq bigint) ON COMMIT DELETE ROWS;
"""
assert BALANCE_COLUMNS == ("account_id", "asset_id", "available_delta", "locked_delta",
                           "available_after", "locked_after", "updated_seq")
assert ORDER_UPDATE_COLUMNS == ("order_id", "price_ticks", "open_qty_lots", "filled_qty_lots",
                                "status", "cancel_reason", "updated_seq")

_SQL_LOCK_STATE = "SELECT last_seq FROM settlement_state WHERE engine_id = $1 FOR UPDATE"
_SQL_ADVANCE = ("UPDATE settlement_state SET last_seq = $2, updated_at = now() "
                "WHERE engine_id = $1")
# Only open orders change: an update to a filled or cancelled order is an engine bug
# (the count check below catches it).
_SQL_UPDATE_ORDERS = """
UPDATE orders o SET
    price_ticks     = COALESCE(s.price_ticks, o.price_ticks),
    open_qty_lots   = COALESCE(s.open_qty_lots, o.open_qty_lots),
    filled_qty_lots = o.filled_qty_lots + s.filled_qty_lots,
    status          = COALESCE(s.status, o.status),
    cancel_reason   = COALESCE(s.cancel_reason, o.cancel_reason),
    updated_seq     = s.updated_seq,
    updated_at      = now()
FROM settle_stage_orders s
WHERE o.order_id = s.order_id AND o.status = 'open'
"""
_SQL_ORDERS_NOT_UPDATED = """
SELECT s.*, o.status AS current_status
FROM settle_stage_orders s LEFT JOIN orders o USING (order_id)
WHERE o.order_id IS NULL OR o.updated_seq <> s.updated_seq
"""
# Accounts and zero balance rows for whatever the batch touches first.  (The
# deltas cannot go in through INSERT ... ON CONFLICT DO UPDATE: PostgreSQL
# checks the proposed row -- a negative delta -- against the CHECKs before it
# finds the conflict.)
_SQL_PREPARE_BALANCES = """
INSERT INTO accounts (id, kind)
SELECT DISTINCT account_id, CASE WHEN account_id < 2 THEN 'system' ELSE 'user' END
FROM settle_stage_balances
ON CONFLICT (id) DO NOTHING;
INSERT INTO balances (account_id, asset_id, available, locked, updated_seq)
SELECT account_id, asset_id, 0, 0, updated_seq FROM settle_stage_balances
ON CONFLICT (account_id, asset_id) DO NOTHING;
"""
# One aggregated update for every touched (account, asset); returns the buckets
# whose result differs from what the engine reported after its last transfer.
_SQL_APPLY_BALANCES = """
WITH applied AS (
    UPDATE balances b
    SET available   = b.available + s.available_delta,
        locked      = b.locked + s.locked_delta,
        updated_seq = s.updated_seq
    FROM settle_stage_balances s
    WHERE b.account_id = s.account_id AND b.asset_id = s.asset_id
    RETURNING b.account_id, b.asset_id, b.available, b.locked
)
SELECT a.account_id, a.asset_id, a.available, a.locked,
       s.available_delta, s.locked_delta, s.available_after, s.locked_after
FROM applied a JOIN settle_stage_balances s USING (account_id, asset_id)
WHERE a.available <> COALESCE(s.available_after, a.available)
   OR a.locked    <> COALESCE(s.locked_after, a.locked)
"""
_SQL_BALANCES_OF = """
SELECT s.account_id, s.asset_id, b.available, b.locked, s.available_delta, s.locked_delta,
       s.available_after, s.locked_after
FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
     AS s(account_id, asset_id, available_delta, locked_delta, available_after, locked_after)
LEFT JOIN balances b USING (account_id, asset_id)
"""


# ====================================================================== writer
@dataclass
class WriterStats:
    batches: int = 0             # committed transactions
    commands: int = 0            # commands committed
    events: int = 0              # events committed
    rows: int = 0                # ledger rows copied (transfers + trades + audit_log + new orders)
    skipped_commands: int = 0    # put() at or below what was already committed or queued
    skipped_batches: int = 0     # batches found already committed (a retry after an unacknowledged COMMIT)
    trimmed_batches: int = 0     # batches whose first commands another writer had committed
    retries: int = 0             # batch attempts that failed transiently
    reconnects: int = 0          # connections opened after the first


class _Batch:
    __slots__ = ("builder", "commands", "opened_at")

    def __init__(self, builder: BatchBuilder, opened_at: float):
        self.builder = builder
        self.commands: list[Sequence] = []
        self.opened_at = opened_at

    def events(self) -> list:
        return [ev for events in self.commands for ev in events]


class SettlementWriter:
    """Settles engine events into PostgreSQL; see the module docstring.

    ``assets``: the engine's assets (``engine.Asset``: name, scale), registered
    in the ``assets`` table on ``start()``; without it the table must already
    hold every asset the events name (``register_assets``).  ``on_commit`` is
    called with the new ``last_seq`` after every commit (it must not raise).
    """

    def __init__(self, url: str, *, engine_id: str = "main",
                 batch_rows_max: int = BATCH_ROWS_MAX_DEFAULT,
                 flush_interval_ms: float = FLUSH_INTERVAL_MS_DEFAULT,
                 queue_rows_max: int | None = None,
                 assets: Iterable | None = None,
                 reconnect_attempts_max: int = RECONNECT_ATTEMPTS_MAX_DEFAULT,
                 reconnect_delay_max_ms: float = RECONNECT_DELAY_MAX_MS_DEFAULT,
                 connect_timeout_s: float = 10.0,
                 on_commit: Callable[[int], None] | None = None):
        if not isinstance(engine_id, str) or not engine_id:
            raise ValueError("engine_id must be a non-empty str")
        if type(batch_rows_max) is not int or batch_rows_max < 1:
            raise ValueError("batch_rows_max must be an int >= 1")
        if not flush_interval_ms > 0:
            raise ValueError("flush_interval_ms must be > 0")
        if queue_rows_max is None:
            queue_rows_max = 10 * batch_rows_max
        if type(queue_rows_max) is not int or queue_rows_max < batch_rows_max:
            raise ValueError("queue_rows_max must be an int >= batch_rows_max")
        if type(reconnect_attempts_max) is not int or reconnect_attempts_max < 0:
            raise ValueError("reconnect_attempts_max must be an int >= 0")
        self.url = url
        self.engine_id = engine_id
        self.batch_rows_max = batch_rows_max
        self.flush_interval_ms = flush_interval_ms
        self.queue_rows_max = queue_rows_max
        self.reconnect_attempts_max = reconnect_attempts_max
        self.reconnect_delay_max_ms = reconnect_delay_max_ms
        self.connect_timeout_s = connect_timeout_s
        self.on_commit = on_commit
        self.stats = WriterStats()
        self._assets = list(assets) if assets is not None else None
        self._asset_ids: dict[str, int] = {}
        self._known_balances: set[tuple[int, int]] = set()   # (account, asset_id) rows that exist
        self._conn: asyncpg.Connection | None = None
        self._connected_once = False
        self._task: asyncio.Task | None = None
        self._closing = False
        self._failure: SettlementError | None = None
        self._open: _Batch | None = None
        self._sealed: deque[_Batch] = deque()
        self._in_flight: _Batch | None = None
        self._events_buffered = 0     # uncommitted events: open + sealed + in flight
        self._put_seq = 0             # last seq accepted by put()
        self._committed_seq = 0       # settlement_state.last_seq as this writer knows it
        self._wake = asyncio.Event()      # the batcher has something to look at
        self._space = asyncio.Event()     # the queue went below queue_rows_max (or failed)
        self._progress = asyncio.Event()  # a batch committed (or the writer failed)

    # ------------------------------------------------------------------ public
    async def start(self) -> None:
        """Connect, register assets, read ``last_seq`` and start batching."""
        if self._task is not None:
            raise RuntimeError("writer already started")
        attempt = 0
        while True:
            try:
                self._conn = await self._connect()
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                if attempt > self.reconnect_attempts_max:
                    raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc!r}") from exc
                await asyncio.sleep(self._backoff_s(attempt))
        self._task = asyncio.create_task(self._run(), name=f"settlement-writer:{self.engine_id}")

    async def put(self, events: Sequence) -> None:
        """Queue the events of one command (one ``Engine.submit`` result).

        Returns at once unless ``queue_rows_max`` events are uncommitted, then
        waits for room.  A command at or below what was already committed or
        queued is skipped (replays start from seq 1).  Raises the writer's
        ``SettlementError`` once it has failed.
        """
        if self._failure is not None:
            raise self._failure
        if self._task is None or self._closing:
            raise RuntimeError("writer is not running (start() it; put() after close() is an error)")
        if not events:
            raise ValueError("put() takes the non-empty event list of one command")
        seq = events[0].seq
        if seq <= self._put_seq:
            self.stats.skipped_commands += 1
            return
        while self._events_buffered >= self.queue_rows_max:
            self._space.clear()
            await self._space.wait()
            if self._failure is not None:
                raise self._failure
            if seq <= self._put_seq:    # another producer queued it meanwhile
                self.stats.skipped_commands += 1
                return
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(BatchBuilder(self._asset_ids),
                                        asyncio.get_running_loop().time())
            self._wake.set()
        batch.commands.append(events)
        self._events_buffered += len(events)
        if seq != self._put_seq + 1:
            self._fail(LedgerRejected(
                f"seq {seq} does not follow {self._put_seq}: the stream has a gap "
                "(every engine command must be settled, in order)", events=events))
            raise self._failure
        try:
            batch.builder.add(events)
        except MappingError as exc:
            self._fail(LedgerRejected(f"cannot map events: {exc}", events=events))
            raise self._failure from exc
        self._put_seq = seq
        if batch.builder.n_events >= self.batch_rows_max:
            self._seal()

    async def flush(self) -> None:
        """Return when everything ``put`` so far is committed."""
        target = self._put_seq
        while self._committed_seq < target:
            if self._failure is not None:
                raise self._failure
            if self._task is None or self._task.done():
                raise RuntimeError("writer is not running")
            if self._open is not None:
                self._seal()
            self._progress.clear()
            await self._progress.wait()
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        """Flush, stop the batcher and close the connection.  Raises the
        writer's ``SettlementError`` if it failed (the events stay in
        ``pending_events()``)."""
        try:
            if self._failure is None and self._task is not None and not self._task.done():
                await self.flush()
        finally:
            # the batcher commits whatever another producer queued meanwhile, then exits
            self._closing = True
            self._wake.set()
            if self._task is not None:
                try:
                    await self._task
                except Exception:
                    pass        # recorded in self._failure, raised below
            await self._drop_connection(graceful=True)
        if self._failure is not None:
            raise self._failure

    async def abort(self) -> None:
        """Stop now without flushing: the batch in flight is rolled back (or,
        if its COMMIT already went out, committed); everything uncommitted stays
        in ``pending_events()``.  What a crash does, on purpose: a new writer
        fed the stream again from seq 1 settles the rest exactly once."""
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
        await self._drop_connection()

    async def __aenter__(self) -> "SettlementWriter":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def committed_seq(self) -> int:
        """Every seq <= this is committed (as far as this writer knows)."""
        return self._committed_seq

    @property
    def failure(self) -> SettlementError | None:
        return self._failure

    @property
    def backend_pid(self) -> int | None:
        """PostgreSQL backend pid of the writer's connection (for operators and tests)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    def pending_commands(self) -> list[Sequence]:
        """Uncommitted commands (event lists) in seq order: the batch in flight
        or failed, the sealed batches, the open batch."""
        batches = ([self._in_flight] if self._in_flight is not None else []) + list(self._sealed)
        if self._open is not None:
            batches.append(self._open)
        return [events for b in batches for events in b.commands]

    def pending_events(self) -> list:
        """Every uncommitted event, flat, in seq order."""
        return [ev for events in self.pending_commands() for ev in events]

    # ------------------------------------------------------------------ batching
    def _seal(self) -> None:
        batch, self._open = self._open, None
        if batch is not None:
            self._sealed.append(batch)
            self._wake.set()

    async def _next_batch(self) -> _Batch | None:
        loop = asyncio.get_running_loop()
        interval_s = self.flush_interval_ms / 1000.0
        while True:
            if self._failure is not None:
                return None     # a failed writer commits nothing more: pending stays whole
            if self._sealed:
                return self._sealed.popleft()
            batch = self._open
            if batch is not None:
                wait_s = batch.opened_at + interval_s - loop.time()
                if wait_s <= 0 or self._closing:
                    self._seal()
                    continue
                self._wake.clear()
                try:
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            if self._closing:
                return None
            self._wake.clear()
            await self._wake.wait()

    async def _run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    return
                self._in_flight = batch
                await self._settle(batch)
                self._in_flight = None
                b = batch.builder
                self._committed_seq = b.last_seq
                self._events_buffered -= b.n_events
                self._space.set()
                self._progress.set()
                if self.on_commit is not None:
                    self.on_commit(b.last_seq)
        except SettlementError:
            return          # recorded by _fail
        except asyncio.CancelledError:
            raise
        except BaseException as exc:    # a bug in the writer itself: stop loudly
            self._fail(SettlementError(f"settlement writer crashed: {exc!r}",
                                       events=self._in_flight.events() if self._in_flight else ()))
            log.exception("settlement writer crashed")
            raise

    def _fail(self, error: SettlementError) -> None:
        if self._failure is None:
            self._failure = error
            log.error("settlement writer stopped: %s", error)
        self._space.set()
        self._progress.set()
        self._wake.set()

    # ------------------------------------------------------------------ connection
    def _backoff_s(self, attempt: int) -> float:
        return min(self.reconnect_delay_max_ms, RECONNECT_DELAY_MIN_MS * 2 ** (attempt - 1)) / 1000

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.url, timeout=self.connect_timeout_s, server_settings={
            "application_name": f"settlement-writer:{self.engine_id}"[:63]})
        try:
            await conn.execute(_STAGE_DDL)
            if not self._connected_once:
                await self._load_state(conn)
            else:
                self.stats.reconnects += 1
        except BaseException:
            conn.terminate()
            raise
        self._connected_once = True
        return conn

    async def _load_state(self, conn: asyncpg.Connection) -> None:
        if self._assets is not None:
            self._asset_ids.update(await register_assets(conn, self._assets))
        else:
            self._asset_ids.update(await load_assets(conn))
        others = await conn.fetch("SELECT engine_id, last_seq FROM settlement_state "
                                  "WHERE engine_id <> $1", self.engine_id)
        if others:
            raise LedgerRejected(
                f"this database holds the ledger of engine {others[0]['engine_id']!r} "
                f"(last_seq {others[0]['last_seq']}), not {self.engine_id!r}: one engine stream "
                "per database")
        await conn.execute("INSERT INTO settlement_state (engine_id) VALUES ($1) "
                           "ON CONFLICT (engine_id) DO NOTHING", self.engine_id)
        last = await conn.fetchval("SELECT last_seq FROM settlement_state WHERE engine_id = $1",
                                   self.engine_id)
        self._committed_seq = self._put_seq = last

    async def _drop_connection(self, graceful: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        if graceful:
            try:
                await asyncio.wait_for(conn.close(), 5)
                return
            except Exception:
                pass
        conn.terminate()

    # ------------------------------------------------------------------ one batch
    async def _settle(self, batch: _Batch) -> None:
        """Commit ``batch``, retrying transient failures; exactly once."""
        attempt = 0
        while True:
            conn = self._conn
            try:
                if conn is None or conn.is_closed():
                    conn = self._conn = await self._connect()
                await self._commit(conn, batch)
                return
            except SettlementError as exc:
                await self._drop_connection(graceful=True)
                self._fail(exc)
                raise
            except Exception as exc:
                if not is_transient(exc, conn):
                    error = await self._permanent_error(exc, batch, conn)
                    await self._drop_connection(graceful=True)
                    self._fail(error)
                    raise error from exc
                attempt += 1
                self.stats.retries += 1
                await self._drop_connection()
                if attempt > self.reconnect_attempts_max:
                    error = DatabaseUnavailable(
                        f"PostgreSQL unreachable after {attempt} attempts: {exc!r}",
                        events=batch.events())
                    self._fail(error)
                    raise error from exc
                delay_s = self._backoff_s(attempt)
                log.warning("settlement batch seq %d..%d failed (%r); retry %d in %.3fs",
                            batch.builder.first_seq, batch.builder.last_seq, exc, attempt, delay_s)
                await asyncio.sleep(delay_s)

    async def _commit(self, conn: asyncpg.Connection, batch: _Batch) -> None:
        b = batch.builder
        async with conn.transaction():
            last = await conn.fetchval(_SQL_LOCK_STATE, self.engine_id)
            if last is None:
                raise LedgerRejected(f"no settlement_state row for engine {self.engine_id!r}",
                                     events=batch.events())
            if last >= b.last_seq:
                # committed already: our COMMIT got through but its answer did not
                self.stats.skipped_batches += 1
                return
            if last >= b.first_seq:
                # another writer of this engine committed a prefix of this batch
                self.stats.trimmed_batches += 1
                b = BatchBuilder(self._asset_ids)
                for events in batch.commands:
                    if events[0].seq > last:
                        b.add(events)
            if b.first_seq != last + 1:
                raise LedgerRejected(
                    f"batch starts at seq {b.first_seq} but the ledger is at {last}: a gap",
                    events=batch.events())
            copied = len(b.transfers)
            await conn.copy_records_to_table("transfers", records=b.transfers,
                                             columns=TRANSFER_COLUMNS)
            if b.trades:
                copied += len(b.trades)
                await conn.copy_records_to_table("trades", records=b.trades, columns=TRADE_COLUMNS)
            if b.audit:
                copied += len(b.audit)
                await conn.copy_records_to_table("audit_log", records=b.audit,
                                                 columns=AUDIT_COLUMNS)
            new_orders, order_updates = b.order_rows()
            if new_orders:
                copied += len(new_orders)
                await conn.copy_records_to_table("orders", records=new_orders,
                                                 columns=ORDER_COLUMNS)
            if order_updates:
                await conn.copy_records_to_table("settle_stage_orders", records=order_updates,
                                                 columns=ORDER_UPDATE_COLUMNS)
                status = await conn.execute(_SQL_UPDATE_ORDERS)
                if int(status.split()[-1]) != len(order_updates):
                    bad = await conn.fetch(_SQL_ORDERS_NOT_UPDATED)
                    raise LedgerRejected(
                        "order events for orders that are unknown, or no longer open",
                        events=batch.events(), rows=[dict(r) for r in bad])
            balance_rows = b.balance_rows()
            await conn.copy_records_to_table("settle_stage_balances", records=balance_rows,
                                             columns=BALANCE_COLUMNS)
            known = self._known_balances
            new_pairs = [(r[0], r[1]) for r in balance_rows if (r[0], r[1]) not in known]
            if new_pairs:
                await conn.execute(_SQL_PREPARE_BALANCES)
            mismatched = await conn.fetch(_SQL_APPLY_BALANCES)
            if mismatched:
                raise LedgerRejected(
                    "balances after the batch differ from the engine's post-transfer balances "
                    "(a gap, a double booking or an engine bug)",
                    events=batch.events(), rows=[dict(r) for r in mismatched])
            await conn.execute(_SQL_ADVANCE, self.engine_id, b.last_seq)
        known.update(new_pairs)     # committed: balances rows are never deleted
        self.stats.batches += 1
        self.stats.commands += b.n_commands
        self.stats.events += b.n_events
        self.stats.rows += copied

    async def _permanent_error(self, exc: Exception, batch: _Batch,
                               conn: asyncpg.Connection | None) -> SettlementError:
        """A LedgerRejected for ``exc`` with what is known about the offending rows."""
        sqlstate = getattr(exc, "sqlstate", None)
        constraint = getattr(exc, "constraint_name", None)
        table = getattr(exc, "table_name", None)
        detail = getattr(exc, "detail", None)
        rows: list = []
        if table == "balances" and conn is not None and not conn.is_closed():
            try:
                rows = await self._offending_balances(conn, batch.builder)
            except Exception:     # diagnosis is best effort; the error itself is what matters
                log.exception("could not diagnose the balance violation")
        elif table == "transfers":
            rows = [dict(zip(TRANSFER_COLUMNS, r)) for r in batch.builder.transfers
                    if r[3] <= 0 or r[5] not in ("available", "locked")
                    or r[7] not in ("available", "locked") or (r[4] == r[6] and r[5] == r[7])]
        what = f"{type(exc).__name__}: {exc}"
        if table:
            what += f" (table {table}" + (f", constraint {constraint})" if constraint else ")")
        return LedgerRejected(f"PostgreSQL refused the batch: {what}", events=batch.events(),
                              rows=rows, sqlstate=sqlstate, constraint=constraint, detail=detail)

    async def _offending_balances(self, conn: asyncpg.Connection, b: BatchBuilder) -> list[dict]:
        """The touched buckets that would break a balances CHECK, with the
        transfers of the batch that moved them."""
        rows = b.balance_rows()
        cols = list(zip(*rows)) if rows else [()] * 7
        current = await conn.fetch(_SQL_BALANCES_OF, *[list(c) for c in cols[:6]])
        bad = []
        for r in current:
            account, asset_id = r["account_id"], r["asset_id"]
            available = (r["available"] or 0) + r["available_delta"]
            locked = (r["locked"] or 0) + r["locked_delta"]
            if account == 0 or (available >= 0 and locked >= 0 and (account >= 2 or locked == 0)):
                continue
            moved = [dict(zip(TRANSFER_COLUMNS, t)) for t in b.transfers
                     if t[2] == asset_id and account in (t[4], t[6])]
            bad.append({"account_id": account, "asset_id": asset_id,
                        "available_before": r["available"], "locked_before": r["locked"],
                        "available_after": available, "locked_after": locked,
                        "transfers": moved})
        return bad
