"""The settlement writer's queue: commands waiting for a transaction, cut into batches.

Owns the open batch (mapped to rows as commands arrive), the sealed batches
waiting for a pipeline slot, the bounds that cut a batch (``batch_events_max``
events or ``flush_interval_ms`` since its first command) and the count that
makes ``put()`` wait (``queue_events_max``).  Batches always hold whole
commands, in seq order with no gap.  It does no I/O, never decides what a row
contains (``settlement.rows`` does) and never drops a command.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Mapping, Sequence

from .errors import LedgerRejected
from .rows import BatchBuilder, MappingError


class Batch:
    """Whole commands, their rows, and when the first one arrived."""
    __slots__ = ("builder", "commands", "opened_at")

    def __init__(self, builder: BatchBuilder, opened_at: float):
        self.builder = builder
        self.commands: list[Sequence] = []
        self.opened_at = opened_at

    def events(self) -> list:
        return [ev for events in self.commands for ev in events]


class BatchQueue:
    """The open batch and the sealed ones, oldest first.

    ``stopped``: the writer has failed (commit nothing more: what is queued
    stays pending); ``closing``: seal what is open at once and end when empty.
    """

    def __init__(self, asset_ids: Mapping[str, int], *, batch_events_max: int,
                 queue_events_max: int, flush_interval_ms: float,
                 stopped: Callable[[], bool], closing: Callable[[], bool]):
        self.asset_ids = asset_ids
        self.batch_events_max = batch_events_max
        self.queue_events_max = queue_events_max
        self.flush_interval_ms = flush_interval_ms
        self._stopped = stopped
        self._closing = closing
        self.open: Batch | None = None
        self.sealed: deque[Batch] = deque()
        self.events_waiting = 0     # events in the open and sealed batches (not in flight)
        self.put_seq = 0            # last seq queued
        self._wake = asyncio.Event()    # next_batch() has something to look at
        self._space = asyncio.Event()   # events_waiting went below queue_events_max (or a stop)

    def full(self) -> bool:
        return self.events_waiting >= self.queue_events_max

    async def wait_for_room(self) -> None:
        """Return once a batch has left for the pipeline, or on ``wake_all()``."""
        self._space.clear()
        await self._space.wait()

    def add(self, events: Sequence) -> None:
        """Queue the events of one command, the one after ``put_seq``.

        The command is queued even when it is refused (``LedgerRejected``: a
        gap in seq, events the mapping cannot express), so that the pending
        events include it; the queue is then unusable.
        """
        batch = self.open
        if batch is None:
            batch = self.open = Batch(BatchBuilder(self.asset_ids),
                                      asyncio.get_running_loop().time())
            self._wake.set()
        batch.commands.append(events)
        self.events_waiting += len(events)
        seq = events[0].seq
        if seq != self.put_seq + 1:
            raise LedgerRejected(
                f"seq {seq} does not follow {self.put_seq}: the stream has a gap "
                "(every engine command must be settled, in order)", events=events)
        try:
            batch.builder.add(events)
        except MappingError as exc:
            raise LedgerRejected(f"cannot map events: {exc}", events=events) from exc
        self.put_seq = seq
        if batch.builder.n_events >= self.batch_events_max:
            self.seal()

    def seal(self) -> None:
        """Close the open batch (if any) to new commands."""
        batch, self.open = self.open, None
        if batch is not None:
            self.sealed.append(batch)
            self._wake.set()

    async def next_batch(self) -> Batch | None:
        """The oldest batch, once sealed by its size or its time bound; None
        once the writer stopped, or is closing and nothing is left."""
        loop = asyncio.get_running_loop()
        interval_s = self.flush_interval_ms / 1000.0
        while True:
            if self._stopped():
                return None     # a failed writer commits nothing more: pending stays whole
            if self.sealed:
                return self.sealed.popleft()
            batch = self.open
            if batch is not None:
                wait_s = batch.opened_at + interval_s - loop.time()
                if wait_s <= 0 or self._closing():
                    self.seal()
                    continue
                self._wake.clear()
                try:
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            if self._closing():
                return None
            self._wake.clear()
            await self._wake.wait()

    def release(self, batch: Batch) -> None:
        """``batch`` went in flight: it no longer counts against
        ``queue_events_max``, so the producer maps the next batch while
        PostgreSQL works on this one (waking it only at COMMIT would
        serialise client and server)."""
        self.events_waiting -= batch.builder.n_events
        self._space.set()

    def batches(self) -> list[Batch]:
        """The sealed batches and the open one, in seq order."""
        return list(self.sealed) + ([self.open] if self.open is not None else [])

    def wake_all(self) -> None:
        """Wake every wait (``wait_for_room``, ``next_batch``) to look at the state again."""
        self._space.set()
        self._wake.set()
