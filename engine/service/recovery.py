"""Recovery: the newest usable snapshot plus the journal's tail.

``recover(config)`` opens the journal (a torn last record is truncated and
reported; a corrupt one elsewhere stops start-up naming file and offset),
starts the settlement writer when the configuration has a database and reads
PostgreSQL's ``last_seq``, restores the newest valid snapshot at or below
what settlement still needs, and replays the journal from there through the
same ``ServiceState.apply`` that live serving runs (no replies are sent).
Events of commands PostgreSQL has not committed go to the writer again, so
nothing acknowledged is lost and nothing is settled twice.  This module owns
that sequence; it never listens on a socket.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import engine as _engine

from .journal import Journal
from .snapshots import SnapshotStore
from .state import ServiceState, SnapshotMismatch

log = logging.getLogger("engine.service.recovery")

ENGINE_ID = "main"      # settlement_state row of this engine


class RecoveryError(Exception):
    """The journal, the snapshots and the database cannot be put together."""


@dataclass
class Recovered:
    state: ServiceState
    journal: Journal
    snapshots: SnapshotStore
    writer: object          # settlement.SettlementWriter, or None (journal only)
    snapshot_seq: int       # the snapshot recovery started from (0: none)
    replayed: int           # journal records applied
    resettled: int          # commands given to the writer again
    truncated_bytes: int    # torn journal tail removed


def snapshot_dir(journal_dir) -> Path:
    """Where the snapshots of the journal in ``journal_dir`` are kept."""
    return Path(journal_dir) / "snapshots"


def newest_at_or_below(store: SnapshotStore, seq: int):
    """(seq, data) of the newest valid snapshot at or below ``seq``, else None."""
    for snap in reversed(store.list()):
        if snap.seq <= seq:
            data = store.load(snap)
            if data is not None:
                return snap.seq, data
    return None


def open_journal(config) -> Journal:
    j = config.journal
    journal = Journal(j.dir, fsync=j.fsync, fsync_interval_ms=j.fsync_interval_ms,
                      segment_bytes_max=j.segment_bytes_max)
    journal.open()
    if journal.truncated_bytes:
        log.warning("journal: a torn last record (%d bytes) was truncated",
                    journal.truncated_bytes)
    return journal


def rebuild(config, journal: Journal, store: SnapshotStore, *, upto_seq: int,
            book=None) -> tuple[ServiceState, int]:
    """The service state from the newest valid snapshot at or below ``upto_seq``
    (a fresh engine when there is none), not yet replayed.  Returns (state,
    snapshot seq).  ``config`` may be None for tools that only read: then a
    snapshot must cover the start (a fresh engine needs the configuration),
    and it is not checked against a configuration's hash."""
    found = newest_at_or_below(store, upto_seq)
    if config is None:
        book, config_hash, bounds = book or "auto", "", {}
    else:
        book = config.engine.book if book is None else book
        config_hash = config.config_hash()
        bounds = dict(request_window=config.server.request_window,
                      report_retention_max=config.server.report_retention_max)
    if found is None:
        if config is None:
            raise RecoveryError(f"no snapshot at or below seq {upto_seq} in {store.directory}: "
                                "pass --config FILE to replay from a fresh engine")
        state = ServiceState(config.new_engine(book=book), config_hash=config_hash, **bounds)
        base = 0
    else:
        base, data = found
        try:
            state = ServiceState.restore(data, _engine.Engine, config_hash=config_hash,
                                         book=book, **bounds)
        except SnapshotMismatch as exc:
            raise RecoveryError(f"snapshot at seq {base} in {store.directory}: {exc}") from None
    if journal.last_seq > base and journal.first_seq > base + 1:
        raise RecoveryError(
            f"journal in {journal.directory} starts at seq {journal.first_seq}, but the newest "
            f"usable snapshot is at seq {base}: seqs {base + 1}..{journal.first_seq - 1} "
            "are missing")
    if journal.last_seq < base:
        raise RecoveryError(f"snapshot at seq {base} is ahead of the journal "
                            f"(last seq {journal.last_seq}): another journal's snapshot?")
    return state, base


def replay(state: ServiceState, journal: Journal, *, to_seq: int | None = None, on_events=None,
           progress=None) -> int:
    """Apply the journal's records after ``state.seq`` (up to ``to_seq``);
    ``on_events(seq, events)`` sees each command's events.  Returns the count."""
    n = 0
    for rec in journal.read(from_seq=state.seq + 1, to_seq=to_seq):
        events, _, _ = state.apply(rec.gateway_id, rec.request_id, rec.command, replaying=True)
        if state.seq != rec.seq:
            raise RecoveryError(f"journal record seq {rec.seq} replayed as seq {state.seq}")
        if on_events is not None:
            on_events(rec.seq, events)
        n += 1
        if progress is not None and n % 65536 == 0:
            progress(rec.seq)
    return n


def replay_engine(engine, journal: Journal, *, to_seq: int | None = None, progress=None) -> int:
    """Apply the journal's commands after ``engine.seq`` (up to ``to_seq``) to
    the engine alone: no gateway bookkeeping, for tools that need only the
    engine's state.  Returns the count."""
    submit = engine.submit
    first = engine.seq + 1
    n = 0
    for rec in journal.read(from_seq=first, to_seq=to_seq):
        submit(rec.command)
        n += 1
        if progress is not None and not n & 0xFFFF:
            progress(rec.seq)
    if engine.seq != first - 1 + n:
        raise RecoveryError(f"journal replay reached seq {engine.seq}, expected {first - 1 + n}")
    return n


async def recover(config, *, book=None, database_url: str | None = None) -> Recovered:
    """See the module docstring.  The cyclic garbage collector is off while
    the journal replays: nothing replay builds is cyclic garbage, and its
    collections over a growing engine state cost a third of the time."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return await _recover(config, book, database_url)
    finally:
        if collecting:
            gc.enable()


async def _recover(config, book, database_url) -> Recovered:
    journal = open_journal(config)
    store = SnapshotStore(snapshot_dir(config.journal.dir))
    writer = None
    settled = journal.last_seq
    try:
        if config.database.enabled:
            writer = await _start_writer(config, database_url)
            settled = writer.committed_seq
            if settled > journal.last_seq:
                raise RecoveryError(
                    f"PostgreSQL has settled up to seq {settled} but the journal in "
                    f"{journal.directory} ends at seq {journal.last_seq}: wrong journal or database")
        state, base = rebuild(config, journal, store, upto_seq=settled, book=book)
        replayed = replay(state, journal, to_seq=settled)
        if writer is not None:
            # the commands PostgreSQL has not committed: their events go to the
            # writer as they are replayed (put() waits while its queue is full)
            for record in journal.read(from_seq=state.seq + 1):
                events, _, _ = state.apply(record.gateway_id, record.request_id, record.command,
                                           replaying=True)
                await writer.put(events)
                replayed += 1
        if state.seq != journal.last_seq:
            raise RecoveryError(f"replay reached seq {state.seq}, journal ends at {journal.last_seq}")
    except BaseException:
        if writer is not None:
            await writer.abort()
        journal.close()
        raise
    resettled = max(0, journal.last_seq - settled) if writer is not None else 0
    log.info("recovered seq %d from snapshot %d: %d replayed, %d to settle again",
             state.seq, base, replayed, resettled)
    return Recovered(state, journal, store, writer, base, replayed, resettled,
                     journal.truncated_bytes)


async def _start_writer(config, database_url):
    import asyncpg

    from settlement import SettlementWriter, database_url as default_url, migrate
    url = database_url or config.database.url or default_url()
    try:
        await migrate(url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RecoveryError(f"database: {type(exc).__name__}: {exc}") from exc
    db = config.database
    writer = SettlementWriter(url, engine_id=ENGINE_ID, assets=config.engine_assets(),
                              batch_events_max=db.batch_events_max,
                              queue_events_max=db.queue_events_max,
                              flush_interval_ms=db.flush_interval_ms)
    try:
        await writer.start()
    except (OSError, asyncpg.PostgresError) as exc:
        raise RecoveryError(f"database: {type(exc).__name__}: {exc}") from exc
    return writer
