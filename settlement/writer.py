"""``SettlementWriter``: engine events -> PostgreSQL, in batches, exactly once.

The engine side calls ``await writer.put(events)`` with the list one
``Engine.submit`` returned.  ``put`` maps the events to rows at once (the pure
``settlement.rows`` mapping) into the open batch and returns; it awaits only
while ``queue_rows_max`` events wait for a transaction (backpressure: nothing
is dropped, the producer slows down; the batches being committed come on top,
so at most ``queue_rows_max`` + ``pipeline_depth`` batches are uncommitted).  A batch is sealed when it
holds ``batch_rows_max`` events or its first command has waited
``flush_interval_ms``, whichever comes first; batches always hold whole
commands, so ``last_seq`` means "every seq <= last_seq is committed".

One transaction per batch:

1. COPY transfers and audit_log (identity keys: nothing can collide);
2. wait until the batch before has committed, then ``SELECT last_seq ... FOR
   UPDATE`` on this engine's ``settlement_state`` row.  A batch at or below it
   is rolled back as already committed (a retry whose COMMIT did get through,
   or a replay), a batch that would leave a gap is refused;
3. COPY trades and the new orders (their ids are the engine's: only under the
   state row lock can they not block on another writer's rows); one ``UPDATE
   orders ... FROM unnest(...)`` for orders accepted in earlier batches; one
   ``UPDATE balances ... FROM unnest(...)`` with the summed deltas per touched
   (account, asset) -- one statement per batch, not per transfer (zero rows are
   inserted first for pairs never seen).  It also returns every touched bucket
   whose new value differs from the balance the engine reported after its last
   transfer: any difference is a gap, a double booking or an engine bug, and
   stops the writer;
4. advance ``last_seq``; COMMIT.

With ``pipeline_depth=2`` (the default) two batch transactions are in flight
on two connections: batch k+1 COPYs its transfers while batch k updates
balances and commits, so PostgreSQL's second core is used; step 2 keeps the commits in
seq order.  ``pipeline_depth=1`` is one connection, one batch at a time.

A lost connection or a restarting server (any error of SQLSTATE class 08, 53,
57P, a serialization failure or deadlock, a cancelled statement, a lock
timeout, a socket error, a timeout) is retried: reconnect with bounded
exponential backoff, then the whole batch again; step 2 makes the retry
exactly-once.  A duplicate trade or order id is retried once with the state
row locked before any COPY, so that last_seq says whether the batch was
already committed (by our own COMMIT whose answer was lost, or by another
writer of the engine); under the lock it is a real duplicate.  Any other
error is permanent (a CHECK violation is an engine bug): the writer stops,
the batch is rolled back, ``put``/``flush``/``close`` raise a
``LedgerRejected`` carrying the offending events and rows, and
``pending_events()`` still returns every uncommitted event.  Retries that
never succeed end in ``DatabaseUnavailable`` after ``reconnect_attempts_max``
attempts (30: about 49 s of backoff, delays doubling from 25 ms to
``reconnect_delay_max_ms``).

Nothing waits on the network without a bound: ``connect_timeout_s`` for a
connection, ``command_timeout_s`` for every statement, COPY and COMMIT (a
timeout is retried like a lost connection; an unanswered COMMIT is resolved by
step 2; a batch that legitimately needs longer than this never commits, so
keep it well above a batch's time).  So that a session cut off silently
cannot hold the state row: server-side ``statement_timeout`` and
``idle_in_transaction_session_timeout`` (twice the command timeout), TCP
keepalives, and on every reconnect the writer terminates the server sessions
of the connections it dropped after a failure (matched by pid and start time;
a session stuck in COPY is ended by nothing else).  A session whose
``synchronous_commit`` is ``off`` sets it ``on``.

Lifecycle: ``start()``; ``put()`` from one or more producers; ``flush()``;
``close()`` flushes, commits what producers queued meanwhile and closes the
connections -- a ``put()`` still waiting for room when ``close()`` or
``abort()`` begins raises ``WriterClosed`` and queues nothing, so every
``put()`` that returned is committed by a clean ``close()``.  ``abort()``
stops at once (what a crash does) and wakes every waiting ``put()``/``flush()``
with ``WriterClosed``.  Once the writer has failed, every call raises a fresh
copy of its error, chained ``from`` the original.

This module owns the queue, the transaction and the retry policy.  It never
decides what a row contains (that is ``settlement.rows``) and never blocks the
event loop on PostgreSQL.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import asyncpg

from .assets import load_assets, register_assets
from .rows import (AUDIT_COLUMNS, BALANCE_COLUMNS, ORDER_COLUMNS, ORDER_UPDATE_COLUMNS,
                   TRADE_COLUMNS, TRANSFER_COLUMNS, BatchBuilder, MappingError)

__all__ = ["SettlementWriter", "SettlementError", "LedgerRejected", "DatabaseUnavailable",
           "WriterClosed", "WriterStats", "is_transient"]

log = logging.getLogger("settlement.writer")

BATCH_ROWS_MAX_DEFAULT = 10_000
FLUSH_INTERVAL_MS_DEFAULT = 20
PIPELINE_DEPTH_DEFAULT = 2
FLIGHT_GROUNDING_S = 10.0       # close(): how long batches still in flight may take to end
RECONNECT_ATTEMPTS_MAX_DEFAULT = 30
RECONNECT_DELAY_MIN_MS = 25
RECONNECT_DELAY_MAX_MS_DEFAULT = 2_000
CONNECT_TIMEOUT_S_DEFAULT = 10.0
COMMAND_TIMEOUT_S_DEFAULT = 30.0
TIMEOUT_S_MAX = 86_400.0        # twice this, in ms, still fits PostgreSQL's int timeouts
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


# ====================================================================== SQL
# Per-batch inputs that are not ledger rows (order updates, balance deltas)
# travel as arrays through unnest(): one round trip, no temp table, and a plan
# that looks each row up by primary key (unnest is estimated small), so a batch
# costs the same however large orders and balances grow.
_ORDER_UPDATES = """
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                         $6::text[], $7::bigint[])
        AS s(order_id, price_ticks, open_qty_lots, filled_qty_lots, status, cancel_reason,
             updated_seq)"""
_BALANCE_DELTAS = """
    SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::bigint[])
        AS s(account_id, asset_id, available_delta, locked_delta, available_after,
             locked_after, updated_seq)"""
_SQL_LOCK_STATE = "SELECT last_seq FROM settlement_state WHERE engine_id = $1 FOR UPDATE"
_SQL_ADVANCE = ("UPDATE settlement_state SET last_seq = $2, updated_at = now() "
                "WHERE engine_id = $1")
_KEYED_PLANS = {"enable_seqscan": "off", "enable_hashjoin": "off", "enable_mergejoin": "off"}

# the unnest() column lists above follow settlement.rows
assert ORDER_UPDATE_COLUMNS == ("order_id", "price_ticks", "open_qty_lots", "filled_qty_lots",
                                "status", "cancel_reason", "updated_seq")
assert BALANCE_COLUMNS == ("account_id", "asset_id", "available_delta", "locked_delta",
                           "available_after", "locked_after", "updated_seq")

# Only open orders change: an update to a filled or cancelled order is an engine
# bug (the count check catches it).
_SQL_UPDATE_ORDERS = f"""
WITH s AS ({_ORDER_UPDATES}),
updated AS (
    UPDATE orders o SET
        price_ticks     = COALESCE(s.price_ticks, o.price_ticks),
        open_qty_lots   = COALESCE(s.open_qty_lots, o.open_qty_lots),
        filled_qty_lots = o.filled_qty_lots + s.filled_qty_lots,
        status          = COALESCE(s.status, o.status),
        cancel_reason   = COALESCE(s.cancel_reason, o.cancel_reason),
        updated_seq     = s.updated_seq,
        updated_at      = now()
    FROM s
    WHERE o.order_id = s.order_id AND o.status = 'open'
    RETURNING o.order_id)
SELECT count(*) FROM updated
"""
_SQL_ORDERS_NOT_UPDATED = f"""
WITH s AS ({_ORDER_UPDATES})
SELECT s.*, o.status AS current_status
FROM s LEFT JOIN orders o USING (order_id)
WHERE o.order_id IS NULL OR o.updated_seq <> s.updated_seq
"""
# Accounts and zero balance rows for the (account, asset) pairs a batch touches
# first.  (The deltas cannot go in through INSERT ... ON CONFLICT DO UPDATE:
# PostgreSQL checks the proposed row -- a negative delta -- against the CHECKs
# before it finds the conflict.)
_SQL_NEW_ACCOUNTS = """
INSERT INTO accounts (id, kind)
SELECT DISTINCT a, CASE WHEN a < 2 THEN 'system' ELSE 'user' END FROM unnest($1::bigint[]) AS a
ON CONFLICT (id) DO NOTHING
"""
_SQL_NEW_BALANCES = """
INSERT INTO balances (account_id, asset_id, available, locked, updated_seq)
SELECT account_id, asset_id, 0, 0, 0 FROM unnest($1::bigint[], $2::integer[]) AS s(account_id, asset_id)
ON CONFLICT (account_id, asset_id) DO NOTHING
"""
# One aggregated update for every touched (account, asset).  Returns how many
# rows it updated and the buckets whose result differs from the balance the
# engine reported after its last transfer.
_SQL_APPLY_BALANCES = f"""
WITH s AS ({_BALANCE_DELTAS}),
applied AS (
    UPDATE balances b
    SET available   = b.available + s.available_delta,
        locked      = b.locked + s.locked_delta,
        updated_seq = s.updated_seq
    FROM s
    WHERE b.account_id = s.account_id AND b.asset_id = s.asset_id
    RETURNING b.account_id, b.asset_id, b.available, b.locked, s.available_delta, s.locked_delta,
              s.available_after, s.locked_after)
SELECT count(*) AS updated,
       coalesce(jsonb_agg(applied) FILTER (
           WHERE available <> coalesce(available_after, available)
              OR locked <> coalesce(locked_after, locked)), '[]')::text AS mismatched
FROM applied
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
    reconnects: int = 0          # connections opened again after one was lost (any slot)
    reaped_sessions: int = 0     # abandoned server sessions of dropped connections terminated


async def _let_cancellations_unwind() -> None:
    """A connection closed under a running query leaves asyncpg a cancelled
    CancelRequest task; give it loop turns to finish before the caller's loop
    may close (else: "Task was destroyed but it is pending")."""
    for _ in range(3):
        await asyncio.sleep(0)


class _Batch:
    __slots__ = ("builder", "commands", "opened_at")

    def __init__(self, builder: BatchBuilder, opened_at: float):
        self.builder = builder
        self.commands: list[Sequence] = []
        self.opened_at = opened_at

    def events(self) -> list:
        return [ev for events in self.commands for ev in events]


class _Flight:
    """A batch being committed: its task, its connection slot, and ``locked``,
    set once its transaction holds the settlement_state row (or it ended)."""
    __slots__ = ("batch", "slot", "task", "locked", "committed")

    def __init__(self, batch: _Batch, slot: int):
        self.batch = batch
        self.slot = slot
        self.task: asyncio.Task | None = None
        self.locked = asyncio.Event()
        self.committed = False


class _NotYet(Exception):
    """The batch ahead rolled back to retry: roll back too and wait for it."""


class _AlreadyCommitted(Exception):
    """last_seq is at or past the batch: roll back, nothing to do."""


class _Trim(Exception):
    """Another writer committed the batch's first commands: roll back, redo the rest."""

    def __init__(self, last_seq: int):
        self.last_seq = last_seq


class _PredecessorFailed(Exception):
    """The batch before this one failed for good: roll back and stop."""


class SettlementWriter:
    """Settles engine events into PostgreSQL; see the module docstring.

    ``assets``: the engine's assets (``engine.Asset``: name, scale), registered
    in the ``assets`` table on ``start()``; without it the table must already
    hold every asset the events name (``register_assets``).  ``on_commit`` is
    called with the new ``last_seq`` after every commit, in order (it must not
    raise).  ``pipeline_depth``: batch transactions in flight at once, each on
    its own connection (1 or 2); see the module docstring.
    """

    def __init__(self, url: str, *, engine_id: str = "main",
                 batch_rows_max: int = BATCH_ROWS_MAX_DEFAULT,
                 flush_interval_ms: float = FLUSH_INTERVAL_MS_DEFAULT,
                 queue_rows_max: int | None = None,
                 assets: Iterable | None = None,
                 pipeline_depth: int = PIPELINE_DEPTH_DEFAULT,
                 reconnect_attempts_max: int = RECONNECT_ATTEMPTS_MAX_DEFAULT,
                 reconnect_delay_max_ms: float = RECONNECT_DELAY_MAX_MS_DEFAULT,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
                 command_timeout_s: float = COMMAND_TIMEOUT_S_DEFAULT,
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
        if pipeline_depth not in (1, 2):
            raise ValueError("pipeline_depth must be 1 or 2")
        if type(reconnect_attempts_max) is not int or reconnect_attempts_max < 0:
            raise ValueError("reconnect_attempts_max must be an int >= 0")
        for name, value in (("connect_timeout_s", connect_timeout_s),
                            ("command_timeout_s", command_timeout_s)):
            if not 0 < value <= TIMEOUT_S_MAX:
                raise ValueError(f"{name} must be > 0 and <= {TIMEOUT_S_MAX}")
        self.url = url
        self.engine_id = engine_id
        self.batch_rows_max = batch_rows_max
        self.flush_interval_ms = flush_interval_ms
        self.queue_rows_max = queue_rows_max
        self.pipeline_depth = pipeline_depth
        self.reconnect_attempts_max = reconnect_attempts_max
        self.reconnect_delay_max_ms = reconnect_delay_max_ms
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.on_commit = on_commit
        self.stats = WriterStats()
        self._assets = list(assets) if assets is not None else None
        self._asset_ids: dict[str, int] = {}
        self._known_balances: set[tuple[int, int]] = set()   # (account, asset_id) rows that exist
        self._conns: list[asyncpg.Connection | None] = [None] * pipeline_depth
        self._connected_once = False
        self._slots_used: set[int] = set()      # slots that had a connection (for stats.reconnects)
        self._identities: dict[int, tuple] = {}  # id(conn) -> (backend pid, backend_start)
        self._abandoned: list[tuple] = []       # backends of connections dropped after a failure
        self._task: asyncio.Task | None = None
        self._closing = False
        self._aborted = False
        self._failure: SettlementError | None = None
        self._open: _Batch | None = None
        self._sealed: deque[_Batch] = deque()
        self._flights: deque[_Flight] = deque()   # batches being committed, in seq order
        self._events_waiting = 0      # events in the open and sealed batches (not in flight)
        self._put_seq = 0             # last seq accepted by put()
        self._committed_seq = 0       # settlement_state.last_seq as this writer knows it
        self._wake = asyncio.Event()      # the batcher has something to look at
        self._space = asyncio.Event()     # the queue went below queue_rows_max (or failed)
        self._progress = asyncio.Event()  # a batch committed (or the writer failed)
        self._landed = asyncio.Event()    # a flight ended (its slot is free again)

    # ------------------------------------------------------------------ public
    async def start(self) -> None:
        """Connect, register assets, read ``last_seq`` and start batching."""
        if self._task is not None:
            raise RuntimeError("writer already started")
        attempt = 0
        while True:
            try:
                self._conns[0] = await self._connect(0)
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

        Returns at once unless ``queue_rows_max`` events already wait for a
        transaction, then waits for room.  A command at or below what was
        already committed or queued is skipped (replays start from seq 1).
        Raises the writer's ``SettlementError`` once it has failed.
        """
        if self._failure is not None:
            self._raise_failure()
        if self._task is None:
            raise WriterClosed("writer is not running: start() it first")
        if self._closing:
            raise WriterClosed("writer is closed: put() after close()/abort() queues nothing")
        if not events:
            raise ValueError("put() takes the non-empty event list of one command")
        seq = events[0].seq
        if seq <= self._put_seq:
            self.stats.skipped_commands += 1
            return
        while self._events_waiting >= self.queue_rows_max:
            self._space.clear()
            await self._space.wait()
            if self._failure is not None:
                self._raise_failure()
            if self._closing:
                # close()/abort() began while this put waited for room: the
                # batcher may be gone, so the command is refused, not queued
                raise WriterClosed(f"writer closed while put() waited for room: seq {seq} "
                                   "was not queued")
            if seq <= self._put_seq:    # another producer queued it meanwhile
                self.stats.skipped_commands += 1
                return
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(BatchBuilder(self._asset_ids),
                                        asyncio.get_running_loop().time())
            self._wake.set()
        batch.commands.append(events)
        self._events_waiting += len(events)
        if seq != self._put_seq + 1:
            self._fail(LedgerRejected(
                f"seq {seq} does not follow {self._put_seq}: the stream has a gap "
                "(every engine command must be settled, in order)", events=events))
            self._raise_failure()
        try:
            batch.builder.add(events)
        except MappingError as exc:
            self._fail(LedgerRejected(f"cannot map events: {exc}", events=events))
            raise self._failure.again() from exc
        self._put_seq = seq
        if batch.builder.n_events >= self.batch_rows_max:
            self._seal()

    async def flush(self) -> None:
        """Return when everything ``put`` so far is committed."""
        target = self._put_seq
        while self._committed_seq < target:
            if self._failure is not None:
                self._raise_failure()
            if self._task is None or self._task.done() or self._aborted:
                raise WriterClosed(
                    f"writer is not running: committed up to seq {self._committed_seq} of "
                    f"{target} (the rest is in pending_events())")
            if self._open is not None:
                self._seal()
            self._progress.clear()
            await self._progress.wait()
        if self._failure is not None:
            self._raise_failure()

    async def close(self) -> None:
        """Flush, stop the batcher and close the connections.  Raises the
        writer's ``SettlementError`` if it failed (the events stay in
        ``pending_events()``)."""
        try:
            if self._failure is None and self._task is not None and not self._task.done():
                await self.flush()
        finally:
            # the batcher commits whatever another producer queued meanwhile, then
            # exits; a put() still waiting for room is refused (WriterClosed)
            self._closing = True
            self._wake_waiters()
            if self._task is not None:
                # a failure is recorded in self._failure (raised below); abort()
                # may cancel the task meanwhile: wait() neither raises that nor
                # passes a cancellation of close() on to the batcher
                await asyncio.wait([self._task])
            await self._ground_flights(FLIGHT_GROUNDING_S)
            for slot in range(self.pipeline_depth):
                await self._drop_connection(slot, graceful=True)
            await _let_cancellations_unwind()
        if self._failure is not None:
            self._raise_failure()
        if self._aborted and self.pending_commands():
            raise WriterClosed(f"abort() during close(): {len(self.pending_commands())} "
                               "commands not committed (see pending_events())")

    async def abort(self) -> None:
        """Stop now without flushing: batches in flight are rolled back (or,
        if a COMMIT already went out, committed); everything uncommitted stays
        in ``pending_events()``.  What a crash does, on purpose: a new writer
        fed the stream again from seq 1 settles the rest exactly once.
        A ``put()`` or ``flush()`` waiting meanwhile raises ``WriterClosed``."""
        self._closing = self._aborted = True
        self._wake_waiters()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
        await self._ground_flights(0)
        for slot in range(self.pipeline_depth):
            await self._drop_connection(slot)
        await _let_cancellations_unwind()

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
    def backend_pids(self) -> list[int]:
        """PostgreSQL backend pids of the writer's open connections."""
        return [c.get_server_pid() for c in self._conns if c is not None and not c.is_closed()]

    def pending_commands(self) -> list[Sequence]:
        """Uncommitted commands (event lists) in seq order: the batches in
        flight (or failed), the sealed batches, the open batch."""
        batches = [f.batch for f in self._flights] + list(self._sealed)
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
        """Take batches in order and start a flight for each, at most
        ``pipeline_depth`` at once; each flight commits after the one before."""
        try:
            previous: _Flight | None = None
            while True:
                while len(self._flights) >= self.pipeline_depth and self._failure is None:
                    self._landed.clear()
                    await self._landed.wait()
                if self._failure is not None:
                    break
                batch = await self._next_batch()
                if batch is None:
                    break
                used = {f.slot for f in self._flights}
                flight = _Flight(batch, next(i for i in range(self.pipeline_depth) if i not in used))
                # The batch in flight no longer counts against queue_rows_max: the
                # producer maps the next batch while PostgreSQL works on this one
                # (waking it only at COMMIT would serialise client and server).
                self._events_waiting -= batch.builder.n_events
                self._space.set()
                flight.task = asyncio.create_task(self._fly(flight, previous))
                self._flights.append(flight)
                previous = flight
            while self._flights and self._failure is None:
                self._landed.clear()
                await self._landed.wait()
        except asyncio.CancelledError:
            for f in self._flights:
                if f.task is not None:
                    f.task.cancel()
            raise
        except BaseException as exc:    # a bug in the writer itself: stop loudly
            self._fail(SettlementError(f"settlement writer crashed: {exc!r}"))
            log.exception("settlement writer crashed")
            raise

    async def _fly(self, flight: _Flight, previous: _Flight | None) -> None:
        """Settle one batch, then land it: after the batch ahead has landed, so
        ``committed_seq`` and ``on_commit`` move in seq order."""
        try:
            committed = await self._settle(flight, previous)
            flight.committed = True
        except SettlementError:
            return          # recorded by _fail; the flight stays listed (pending)
        except _PredecessorFailed:
            return          # the writer failed on the batch before; this one stays pending
        except asyncio.CancelledError:
            raise
        except BaseException as exc:    # a bug in the writer itself: stop loudly
            self._fail(SettlementError(f"settlement writer crashed: {exc!r}",
                                       events=flight.batch.events()))
            log.exception("settlement writer crashed")
            return
        finally:
            flight.locked.set()     # never leave a successor waiting
            self._landed.set()
        # Committed.  The batch ahead is committed too (last_seq said so), but its
        # task may still be retrying a COMMIT whose answer was lost: land after it.
        if previous is not None and not previous.task.done():
            await asyncio.wait([previous.task])
        if self._flights[0] is not flight:
            # the batch ahead ended in failure: the writer is stopped; this batch
            # stays listed in pending_events() (a new writer skips it by last_seq)
            assert self._failure is not None
            return
        self._flights.popleft()
        self._committed_seq = committed
        self._progress.set()
        self._landed.set()
        if self.on_commit is not None:
            self.on_commit(committed)

    async def _ground_flights(self, timeout_s: float) -> None:
        """Let flights still running (after a failure, the ones behind it
        roll back) end within ``timeout_s``, then cancel what is left."""
        tasks = [f.task for f in self._flights if f.task is not None and not f.task.done()]
        if tasks and timeout_s > 0:
            await asyncio.wait(tasks, timeout=timeout_s)
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            try:
                await t
            except BaseException:
                pass

    def _fail(self, error: SettlementError) -> None:
        if self._failure is None:
            self._failure = error
            log.error("settlement writer stopped: %s", error)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Wake every put(), flush() and batcher wait to look at the state again."""
        self._space.set()
        self._progress.set()
        self._wake.set()
        self._landed.set()

    def _raise_failure(self) -> None:
        raise self._failure.again() from self._failure

    # ------------------------------------------------------------------ connections
    def _backoff_s(self, attempt: int) -> float:
        return min(self.reconnect_delay_max_ms, RECONNECT_DELAY_MIN_MS * 2 ** (attempt - 1)) / 1000

    async def _connect(self, slot: int) -> asyncpg.Connection:
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
                # Every statement of the writer looks rows up by key.  Without this the
                # planner may hash-join a batch's order updates against a full scan of
                # `orders` (few open orders look cheap to filter), so a batch would cost
                # more the longer the exchange runs.
                **_KEYED_PLANS})
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
            if not self._connected_once:
                await self._load_state(conn)
        except BaseException:
            self._identities.pop(id(conn), None)
            conn.terminate()
            raise
        self._connected_once = True
        if slot in self._slots_used:
            self.stats.reconnects += 1
        self._slots_used.add(slot)
        return conn

    async def _load_state(self, conn: asyncpg.Connection) -> None:
        if self._assets is not None:
            self._asset_ids.update(await register_assets(conn, self._assets))
        else:
            self._asset_ids.update(await load_assets(conn))
        async with conn.transaction():
            # check-then-insert under a table lock that conflicts with itself:
            # two writers of different engines starting at once cannot both pass
            await conn.execute("LOCK TABLE settlement_state IN EXCLUSIVE MODE")
            others = await conn.fetch("SELECT engine_id, last_seq FROM settlement_state "
                                      "WHERE engine_id <> $1", self.engine_id)
            if others:
                raise LedgerRejected(
                    f"this database holds the ledger of engine {others[0]['engine_id']!r} "
                    f"(last_seq {others[0]['last_seq']}), not {self.engine_id!r}: one engine "
                    "stream per database")
            await conn.execute("INSERT INTO settlement_state (engine_id) VALUES ($1) "
                               "ON CONFLICT (engine_id) DO NOTHING", self.engine_id)
            last = await conn.fetchval("SELECT last_seq FROM settlement_state "
                                       "WHERE engine_id = $1", self.engine_id)
        self._committed_seq = self._put_seq = last

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

    async def _drop_connection(self, slot: int, graceful: bool = False) -> None:
        conn, self._conns[slot] = self._conns[slot], None
        if conn is None:
            return
        identity = self._identities.pop(id(conn), None)
        if not graceful and identity is not None and not self._closing:
            # dropped after a failure: its server session may live on, stuck
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

    # ------------------------------------------------------------------ one batch
    async def _settle(self, flight: _Flight, previous: _Flight | None) -> int:
        """Commit ``flight.batch`` right after ``previous``, retrying transient
        failures; exactly once.  Returns the new last_seq."""
        batch, slot = flight.batch, flight.slot
        builder = batch.builder
        attempt = 0
        lock_first = False
        while True:
            conn = self._conns[slot]
            try:
                if conn is None or conn.is_closed():
                    conn = self._conns[slot] = await self._connect(slot)
                await self._commit(conn, flight, builder, previous, lock_first=lock_first)
                return builder.last_seq
            except _NotYet:
                await asyncio.wait([previous.task])
                continue
            except _AlreadyCommitted:
                # our COMMIT got through but its answer did not, or a replay
                self.stats.skipped_batches += 1
                return batch.builder.last_seq
            except _Trim as trim:
                # another writer of this engine committed a prefix of this batch
                self.stats.trimmed_batches += 1
                builder = BatchBuilder(self._asset_ids)
                for events in batch.commands:
                    if events[0].seq > trim.last_seq:
                        builder.add(events)
            except (_PredecessorFailed, asyncio.CancelledError):
                raise
            except SettlementError as exc:
                await self._drop_connection(slot, graceful=True)
                self._fail(exc)
                raise
            except Exception as exc:
                if isinstance(exc, asyncpg.UniqueViolationError) and not lock_first:
                    # A trade or order id is already in the ledger.  Committed by
                    # another writer of this engine, or by our own COMMIT whose answer
                    # was lost -- or a real duplicate.  Retry holding the state row
                    # before any keyed row goes in: its last_seq then tells which.
                    # Under the lock it is a real duplicate: permanent, below.
                    lock_first = True
                    self.stats.retries += 1
                    log.info("settlement batch seq %d..%d: %s; retrying under the state "
                             "row lock", builder.first_seq, builder.last_seq, exc)
                    continue
                if not is_transient(exc):
                    error = await self._permanent_error(exc, builder, batch, conn)
                    await self._drop_connection(slot, graceful=True)
                    self._fail(error)
                    raise error from exc
                if self._failure is not None:
                    await self._drop_connection(slot)
                    raise _PredecessorFailed() from exc     # the writer stopped meanwhile
                attempt += 1
                self.stats.retries += 1
                # the batch may have committed (an unanswered COMMIT): ask last_seq first
                lock_first = True
                await self._drop_connection(slot)
                if attempt > self.reconnect_attempts_max:
                    error = DatabaseUnavailable(
                        f"PostgreSQL unreachable after {attempt} attempts: {exc!r}",
                        events=batch.events())
                    self._fail(error)
                    raise error from exc
                delay_s = self._backoff_s(attempt)
                log.warning("settlement batch seq %d..%d failed (%r); retry %d in %.3fs",
                            builder.first_seq, builder.last_seq, exc, attempt, delay_s)
                await asyncio.sleep(delay_s)

    async def _commit(self, conn: asyncpg.Connection, flight: _Flight, b: BatchBuilder,
                      previous: _Flight | None, *, lock_first: bool = False) -> None:
        """One transaction; see the module docstring for the steps.
        ``lock_first``: take the state row before COPYing anything (every retry:
        after a duplicate key or a transient failure last_seq decides whether
        the batch, or a prefix of it, is already committed)."""
        batch = flight.batch
        new_orders, order_updates = b.order_rows()
        copied = 0
        async with conn.transaction():
            if not lock_first:
                # Before the batch ahead holds the state row: only rows nothing else
                # can collide with (identity keys), so that a transaction waiting
                # client-side holds nothing another writer's COPY could block on.
                copied += await self._copy_unkeyed(conn, b)
            if previous is not None and not previous.locked.is_set():
                await previous.locked.wait()
            if self._failure is not None:
                raise _PredecessorFailed()
            if not lock_first:
                # The batch ahead holds the state row (or has committed): every
                # other transaction that could insert these trade or order ids now
                # waits for a lock PostgreSQL can see, so a conflict between two
                # writers of one engine is a detected deadlock (retried), not a hang.
                copied += await self._copy_keyed(conn, b, new_orders)
            last = await conn.fetchval(_SQL_LOCK_STATE, self.engine_id)   # waits for its COMMIT
            flight.locked.set()
            if last is None:
                raise LedgerRejected(f"no settlement_state row for engine {self.engine_id!r}",
                                     events=batch.events())
            if last >= b.last_seq:
                raise _AlreadyCommitted()
            if last >= b.first_seq:
                raise _Trim(last)
            if b.first_seq != last + 1:
                if previous is not None and not previous.committed:
                    raise _NotYet()     # it rolled back (to retry) instead of committing
                raise LedgerRejected(
                    f"batch starts at seq {b.first_seq} but the ledger is at {last}: a gap",
                    events=batch.events())
            if lock_first:
                copied += await self._copy_unkeyed(conn, b)
                copied += await self._copy_keyed(conn, b, new_orders)
            if order_updates:
                columns = [list(c) for c in zip(*order_updates)]
                updated = await conn.fetchval(_SQL_UPDATE_ORDERS, *columns)
                if updated != len(order_updates):
                    bad = await conn.fetch(_SQL_ORDERS_NOT_UPDATED, *columns)
                    raise LedgerRejected(
                        "order events for orders that are unknown, or no longer open",
                        events=batch.events(), rows=[dict(r) for r in bad])
            balance_rows = b.balance_rows()
            known = self._known_balances
            new_pairs = [(r[0], r[1]) for r in balance_rows if (r[0], r[1]) not in known]
            if new_pairs:
                accounts, assets = [list(c) for c in zip(*new_pairs)]
                await conn.execute(_SQL_NEW_ACCOUNTS, accounts)
                await conn.execute(_SQL_NEW_BALANCES, accounts, assets)
            if balance_rows:
                updated, mismatched = await conn.fetchrow(
                    _SQL_APPLY_BALANCES, *[list(c) for c in zip(*balance_rows)])
                mismatched = json.loads(mismatched)
                if mismatched:
                    raise LedgerRejected(
                        "balances after the batch differ from the engine's post-transfer balances "
                        "(a gap, a double booking or an engine bug)",
                        events=batch.events(), rows=mismatched)
                if updated != len(balance_rows):
                    raise LedgerRejected(f"updated {updated} balance rows of {len(balance_rows)}",
                                         events=batch.events())
            await conn.execute(_SQL_ADVANCE, self.engine_id, b.last_seq)
        known.update(new_pairs)     # committed: balances rows are never deleted
        self.stats.batches += 1
        self.stats.commands += b.n_commands
        self.stats.events += b.n_events
        self.stats.rows += copied

    async def _copy(self, conn: asyncpg.Connection, table: str, records: list,
                    columns: Sequence[str]) -> int:
        if records:
            # asyncpg's command_timeout does not bound a COPY whose socket stopped
            # draining (it waits for the transport to resume writing, untimed):
            # a hard bound, then the connection is dropped and the batch retried
            async with asyncio.timeout(self.command_timeout_s):
                await conn.copy_records_to_table(table, records=records, columns=columns)
        return len(records)

    async def _copy_unkeyed(self, conn: asyncpg.Connection, b: BatchBuilder) -> int:
        """COPY the rows whose keys PostgreSQL assigns (nothing can collide)."""
        return (await self._copy(conn, "transfers", b.transfers, TRANSFER_COLUMNS)
                + await self._copy(conn, "audit_log", b.audit, AUDIT_COLUMNS))

    async def _copy_keyed(self, conn: asyncpg.Connection, b: BatchBuilder,
                          new_orders: list) -> int:
        """COPY the rows keyed by the engine's ids (trades, new orders)."""
        return (await self._copy(conn, "trades", b.trades, TRADE_COLUMNS)
                + await self._copy(conn, "orders", new_orders, ORDER_COLUMNS))

    async def _permanent_error(self, exc: Exception, b: BatchBuilder, batch: _Batch,
                               conn: asyncpg.Connection | None) -> SettlementError:
        """A LedgerRejected for ``exc`` with what is known about the offending rows."""
        sqlstate = getattr(exc, "sqlstate", None)
        constraint = getattr(exc, "constraint_name", None)
        table = getattr(exc, "table_name", None)
        detail = getattr(exc, "detail", None)
        rows: list = []
        if table == "balances" and conn is not None and not conn.is_closed():
            try:
                rows = await self._offending_balances(conn, b)
            except Exception:     # diagnosis is best effort; the error itself is what matters
                log.exception("could not diagnose the balance violation")
        elif table == "transfers":
            rows = [dict(zip(TRANSFER_COLUMNS, r)) for r in b.transfers
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
