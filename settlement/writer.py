"""``SettlementWriter``: engine events -> PostgreSQL, in batches, exactly once.

Owns the writer's configuration, its lifecycle (``start``, ``put``,
``flush``, ``close``, ``abort``), its one failure state and the retry policy
of a batch; the parts it drives live beside it: ``batching`` (the queue),
``pipeline`` (batches in flight), ``connection``, ``transaction`` (one
batch), ``diagnostics``, ``errors``, ``sql``.  docs/settlement.md explains
the design.  It never decides what a row contains (``settlement.rows``),
never blocks the event loop on PostgreSQL and never drops a command.
"""
from __future__ import annotations

import asyncio
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import asyncpg

from .assets import load_assets, register_assets
from .batching import BatchQueue
from .connection import Connections, backoff_s
from .diagnostics import permanent_error
from .errors import (DatabaseUnavailable, LedgerRejected, SettlementError, WriterClosed,
                     is_transient)
from .pipeline import Flight, Pipeline, PredecessorFailed
from .rows import BatchBuilder
from .sql import SQL_CLAIM_ENGINE, SQL_LAST_SEQ, SQL_LOCK_STATE_TABLE, SQL_OTHER_ENGINES
from .transaction import AlreadyCommitted, Committer, NotYet, Trim

__all__ = ["SettlementWriter", "SettlementError", "LedgerRejected", "DatabaseUnavailable",
           "WriterClosed", "WriterStats", "is_transient"]

log = logging.getLogger("settlement.writer")

BATCH_EVENTS_MAX_DEFAULT = 10_000
QUEUE_BATCHES_DEFAULT = 10      # queue_events_max, by default, in batches
FLUSH_INTERVAL_MS_DEFAULT = 20
PIPELINE_DEPTH_DEFAULT = 2
FLIGHT_GROUNDING_S = 10.0       # close(): how long batches still in flight may take to end
RECONNECT_ATTEMPTS_MAX_DEFAULT = 30
RECONNECT_DELAY_MAX_MS_DEFAULT = 2_000
CONNECT_TIMEOUT_S_DEFAULT = 10.0
COMMAND_TIMEOUT_S_DEFAULT = 30.0
TIMEOUT_S_MAX = 86_400.0        # twice this, in ms, still fits PostgreSQL's int timeouts

# keyword arguments renamed: they always counted events, not rows
_RENAMED_KEYWORDS = {"batch_rows_max": "batch_events_max", "queue_rows_max": "queue_events_max"}


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


class SettlementWriter:
    """Settles engine events into PostgreSQL; see docs/settlement.md.

    ``batch_events_max``: a batch is sealed once it holds this many events
    (whole commands: it may hold a few more); ``flush_interval_ms``: or once
    its first command has waited this long.  ``queue_events_max``: ``put()``
    waits while this many events wait for a transaction (default ten
    batches).  ``assets``: the engine's assets (``engine.Asset``: name,
    scale), registered in the ``assets`` table on ``start()``; without it the
    table must already hold every asset the events name (``register_assets``).
    ``on_commit`` is called with the new ``last_seq`` after every commit, in
    order (it must not raise).  ``pipeline_depth``: batch transactions in
    flight at once, each on its own connection (1 or 2).
    ``reconnect_attempts_max``, ``reconnect_delay_max_ms``,
    ``connect_timeout_s``, ``command_timeout_s``: the bounds of the retry
    policy.  The old names ``batch_rows_max`` and ``queue_rows_max`` still
    work, with a ``DeprecationWarning``.
    """

    def __init__(self, url: str, *, engine_id: str = "main",
                 batch_events_max: int = BATCH_EVENTS_MAX_DEFAULT,
                 flush_interval_ms: float = FLUSH_INTERVAL_MS_DEFAULT,
                 queue_events_max: int | None = None,
                 assets: Iterable | None = None,
                 pipeline_depth: int = PIPELINE_DEPTH_DEFAULT,
                 reconnect_attempts_max: int = RECONNECT_ATTEMPTS_MAX_DEFAULT,
                 reconnect_delay_max_ms: float = RECONNECT_DELAY_MAX_MS_DEFAULT,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
                 command_timeout_s: float = COMMAND_TIMEOUT_S_DEFAULT,
                 on_commit: Callable[[int], None] | None = None,
                 **renamed):
        if renamed:
            given = _renamed_keywords(renamed, batch_events_max=batch_events_max,
                                      queue_events_max=queue_events_max)
            batch_events_max = given.get("batch_events_max", batch_events_max)
            queue_events_max = given.get("queue_events_max", queue_events_max)
        if not isinstance(engine_id, str) or not engine_id:
            raise ValueError("engine_id must be a non-empty str")
        if type(batch_events_max) is not int or batch_events_max < 1:
            raise ValueError("batch_events_max must be an int >= 1")
        if not flush_interval_ms > 0:
            raise ValueError("flush_interval_ms must be > 0")
        if queue_events_max is None:
            queue_events_max = QUEUE_BATCHES_DEFAULT * batch_events_max
        if type(queue_events_max) is not int or queue_events_max < batch_events_max:
            raise ValueError("queue_events_max must be an int >= batch_events_max")
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
        self.pipeline_depth = pipeline_depth
        self.reconnect_attempts_max = reconnect_attempts_max
        self.reconnect_delay_max_ms = reconnect_delay_max_ms
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.on_commit = on_commit
        self.stats = WriterStats()
        self._assets = list(assets) if assets is not None else None
        self._asset_ids: dict[str, int] = {}
        self._task: asyncio.Task | None = None
        self._closing = False
        self._aborted = False
        self._failure: SettlementError | None = None
        self._committed_seq = 0       # settlement_state.last_seq as this writer knows it
        self._progress = asyncio.Event()  # a batch committed (or the writer failed)
        self._queue = BatchQueue(self._asset_ids, batch_events_max=batch_events_max,
                                 queue_events_max=queue_events_max,
                                 flush_interval_ms=flush_interval_ms,
                                 stopped=self._failed, closing=lambda: self._closing)
        self._pipeline = Pipeline(pipeline_depth, settle=self._settle, land=self._land,
                                  fail=self._fail, failed=self._failed)
        self._connections = Connections(url, engine_id=engine_id, slots=pipeline_depth,
                                        connect_timeout_s=connect_timeout_s,
                                        command_timeout_s=command_timeout_s, stats=self.stats)
        self._committer = Committer(engine_id, command_timeout_s=command_timeout_s,
                                    failed=self._failed)

    # ------------------------------------------------------------------ public
    async def start(self) -> None:
        """Connect, register assets, read ``last_seq`` and start batching."""
        if self._task is not None:
            raise RuntimeError("writer already started")
        attempt = 0
        while True:
            try:
                await self._connections.open(0, setup=self._load_state)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                if attempt > self.reconnect_attempts_max:
                    raise DatabaseUnavailable(f"cannot reach PostgreSQL: {exc!r}") from exc
                await asyncio.sleep(backoff_s(attempt, self.reconnect_delay_max_ms))
        self._task = asyncio.create_task(self._pipeline.run(self._queue),
                                         name=f"settlement-writer:{self.engine_id}")

    async def put(self, events: Sequence) -> None:
        """Queue the events of one command (one ``Engine.submit`` result).

        Returns at once unless ``queue_events_max`` events already wait for a
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
        queue = self._queue
        seq = events[0].seq
        if seq <= queue.put_seq:
            self.stats.skipped_commands += 1
            return
        while queue.full():
            await queue.wait_for_room()
            if self._failure is not None:
                self._raise_failure()
            if self._closing:
                # close()/abort() began while this put waited for room: the
                # batcher may be gone, so the command is refused, not queued
                raise WriterClosed(f"writer closed while put() waited for room: seq {seq} "
                                   "was not queued")
            if seq <= queue.put_seq:    # another producer queued it meanwhile
                self.stats.skipped_commands += 1
                return
        try:
            queue.add(events)
        except LedgerRejected as error:     # a gap, or events the mapping cannot express
            self._fail(error)
            self._raise_failure()

    async def flush(self) -> None:
        """Return when everything ``put`` so far is committed."""
        target = self._queue.put_seq
        while self._committed_seq < target:
            if self._failure is not None:
                self._raise_failure()
            if self._task is None or self._task.done() or self._aborted:
                raise WriterClosed(
                    f"writer is not running: committed up to seq {self._committed_seq} of "
                    f"{target} (the rest is in pending_events())")
            self._queue.seal()
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
            await self._pipeline.ground(FLIGHT_GROUNDING_S)
            for slot in range(self.pipeline_depth):
                await self._connections.drop(slot, graceful=True)
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
        await self._pipeline.ground(0)
        for slot in range(self.pipeline_depth):
            await self._connections.drop(slot)
        await _let_cancellations_unwind()

    async def __aenter__(self) -> "SettlementWriter":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def batch_events_max(self) -> int:
        return self._queue.batch_events_max

    @property
    def queue_events_max(self) -> int:
        return self._queue.queue_events_max

    @property
    def flush_interval_ms(self) -> float:
        return self._queue.flush_interval_ms

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
        return self._connections.pids()

    def pending_commands(self) -> list[Sequence]:
        """Uncommitted commands (event lists) in seq order: the batches in
        flight (or failed), the sealed batches, the open batch."""
        batches = self._pipeline.batches() + self._queue.batches()
        return [events for b in batches for events in b.commands]

    def pending_events(self) -> list:
        """Every uncommitted event, flat, in seq order."""
        return [ev for events in self.pending_commands() for ev in events]

    # ------------------------------------------------------------------ state
    async def _load_state(self, conn: asyncpg.Connection) -> None:
        """On the first connection: the asset ids, and this engine's claim on
        the database (one engine stream per database) and its last_seq."""
        if self._assets is not None:
            self._asset_ids.update(await register_assets(conn, self._assets))
        else:
            self._asset_ids.update(await load_assets(conn))
        async with conn.transaction():
            await conn.execute(SQL_LOCK_STATE_TABLE)
            others = await conn.fetch(SQL_OTHER_ENGINES, self.engine_id)
            if others:
                raise LedgerRejected(
                    f"this database holds the ledger of engine {others[0]['engine_id']!r} "
                    f"(last_seq {others[0]['last_seq']}), not {self.engine_id!r}: one engine "
                    "stream per database")
            await conn.execute(SQL_CLAIM_ENGINE, self.engine_id)
            last = await conn.fetchval(SQL_LAST_SEQ, self.engine_id)
        self._committed_seq = self._queue.put_seq = last

    def _land(self, committed_seq: int) -> None:
        """A batch committed, in order."""
        self._committed_seq = committed_seq
        self._progress.set()
        if self.on_commit is not None:
            self.on_commit(committed_seq)

    def _failed(self) -> bool:
        return self._failure is not None

    def _fail(self, error: SettlementError) -> None:
        if self._failure is None:
            self._failure = error
            log.error("settlement writer stopped: %s", error)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Wake every put(), flush() and batcher wait to look at the state again."""
        self._queue.wake_all()
        self._progress.set()
        self._pipeline.wake()

    def _raise_failure(self) -> None:
        raise self._failure.again() from self._failure

    # ------------------------------------------------------------------ one batch
    async def _settle(self, flight: Flight, previous: Flight | None) -> int:
        """Commit ``flight.batch`` right after ``previous``, retrying transient
        failures; exactly once.  Returns the new last_seq."""
        batch, slot = flight.batch, flight.slot
        builder = batch.builder
        attempt = 0
        lock_first = False
        while True:
            conn = self._connections.conns[slot]
            try:
                conn = await self._connections.get(slot)
                await self._commit(conn, flight, builder, previous, lock_first=lock_first)
                return builder.last_seq
            except NotYet:
                await asyncio.wait([previous.task])
                continue
            except AlreadyCommitted:
                # our COMMIT got through but its answer did not, or a replay
                self.stats.skipped_batches += 1
                return batch.builder.last_seq
            except Trim as trim:
                # another writer of this engine committed a prefix of this batch
                self.stats.trimmed_batches += 1
                builder = BatchBuilder(self._asset_ids)
                for events in batch.commands:
                    if events[0].seq > trim.last_seq:
                        builder.add(events)
            except (PredecessorFailed, asyncio.CancelledError):
                raise
            except SettlementError as exc:
                await self._connections.drop(slot, graceful=True)
                self._fail(exc)
                raise
            except Exception as exc:
                if isinstance(exc, asyncpg.UniqueViolationError) and not lock_first:
                    # A trade or order id, or a transfer's ref, is already in the
                    # ledger.  Committed by another writer of this engine, or by our
                    # own COMMIT whose answer was lost -- or a real duplicate.  Retry
                    # holding the state row before any keyed row goes in: its last_seq
                    # then tells which.  Under the lock it is a real duplicate:
                    # permanent, below (a duplicate ref names its transfer).
                    lock_first = True
                    self.stats.retries += 1
                    log.info("settlement batch seq %d..%d: %s; retrying under the state "
                             "row lock", builder.first_seq, builder.last_seq, exc)
                    continue
                if not is_transient(exc):
                    error = await permanent_error(exc, builder, batch.events(), conn)
                    await self._connections.drop(slot, graceful=True)
                    self._fail(error)
                    raise error from exc
                # dropped after a failure: its server session may live on, stuck
                abandon = not self._closing
                if self._failure is not None:
                    await self._connections.drop(slot, abandon=abandon)
                    raise PredecessorFailed() from exc     # the writer stopped meanwhile
                attempt += 1
                self.stats.retries += 1
                # the batch may have committed (an unanswered COMMIT): ask last_seq first
                lock_first = True
                await self._connections.drop(slot, abandon=abandon)
                if attempt > self.reconnect_attempts_max:
                    error = DatabaseUnavailable(
                        f"PostgreSQL unreachable after {attempt} attempts: {exc!r}",
                        events=batch.events())
                    self._fail(error)
                    raise error from exc
                delay_s = backoff_s(attempt, self.reconnect_delay_max_ms)
                log.warning("settlement batch seq %d..%d failed (%r); retry %d in %.3fs",
                            builder.first_seq, builder.last_seq, exc, attempt, delay_s)
                await asyncio.sleep(delay_s)

    async def _commit(self, conn: asyncpg.Connection, flight: Flight, b: BatchBuilder,
                      previous: Flight | None, *, lock_first: bool = False) -> None:
        """One transaction (``Committer.commit``), then the stats.  Tests wrap
        this method to lose a COMMIT's answer or inject a failure."""
        copied = await self._committer.commit(conn, flight, b, previous, lock_first=lock_first)
        self.stats.batches += 1
        self.stats.commands += b.n_commands
        self.stats.events += b.n_events
        self.stats.rows += copied


def _renamed_keywords(given: dict, **current) -> dict:
    """The values of renamed keyword arguments under their new names, with a
    ``DeprecationWarning`` each; a TypeError for an unknown keyword, or for
    an old name given beside its new one."""
    out = {}
    for old, value in given.items():
        new = _RENAMED_KEYWORDS.get(old)
        if new is None:
            raise TypeError(f"SettlementWriter() got an unexpected keyword argument {old!r}")
        defaults = SettlementWriter.__init__.__kwdefaults__
        if current[new] != defaults[new]:
            raise TypeError(f"SettlementWriter() got both {old!r} and {new!r}")
        warnings.warn(f"SettlementWriter({old}=...) is deprecated: it counts events, not rows; "
                      f"use {new}", DeprecationWarning, stacklevel=3)
        out[new] = value
    return out
