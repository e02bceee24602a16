"""The settlement writer's batches in flight: at most ``depth`` transactions at once.

Owns the batcher task: it takes sealed batches from the queue in order,
starts a flight for each on a free connection slot, and lands the flights in
seq order, so ``committed_seq`` and ``on_commit`` only move forward.  It
never opens a transaction or a connection itself (``settle`` does), never
reorders commits and never drops a batch: a flight that fails stays listed
until the writer is discarded.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

from .batching import Batch, BatchQueue
from .errors import SettlementError

log = logging.getLogger("settlement.writer")


class Flight:
    """A batch being committed: its task, its connection slot, and ``locked``,
    set once its transaction holds the settlement_state row (or it ended)."""
    __slots__ = ("batch", "slot", "task", "locked", "committed")

    def __init__(self, batch: Batch, slot: int):
        self.batch = batch
        self.slot = slot
        self.task: asyncio.Task | None = None
        self.locked = asyncio.Event()
        self.committed = False


class PredecessorFailed(Exception):
    """The batch before this one failed for good: roll back and stop."""


class Pipeline:
    """Flights in seq order.

    ``settle(flight, previous)`` commits ``flight.batch`` right after
    ``previous`` and returns the new last_seq; ``land(last_seq)`` is called
    after each commit, in order; ``fail(error)`` stops the writer and
    ``failed()`` says whether it stopped.
    """

    def __init__(self, depth: int, *,
                 settle: Callable[[Flight, Flight | None], Awaitable[int]],
                 land: Callable[[int], None], fail: Callable[[SettlementError], None],
                 failed: Callable[[], bool]):
        self.depth = depth
        self.flights: deque[Flight] = deque()
        self._settle = settle
        self._land = land
        self._fail = fail
        self._failed = failed
        self._landed = asyncio.Event()    # a flight ended (its slot is free again)

    async def run(self, queue: BatchQueue) -> None:
        """Take batches in order and start a flight for each, at most
        ``depth`` at once; each flight commits after the one before."""
        try:
            previous: Flight | None = None
            while True:
                while len(self.flights) >= self.depth and not self._failed():
                    self._landed.clear()
                    await self._landed.wait()
                if self._failed():
                    break
                batch = await queue.next_batch()
                if batch is None:
                    break
                used = {f.slot for f in self.flights}
                flight = Flight(batch, next(i for i in range(self.depth) if i not in used))
                queue.release(batch)
                flight.task = asyncio.create_task(self._fly(flight, previous))
                self.flights.append(flight)
                previous = flight
            while self.flights and not self._failed():
                self._landed.clear()
                await self._landed.wait()
        except asyncio.CancelledError:
            for f in self.flights:
                if f.task is not None:
                    f.task.cancel()
            raise
        except BaseException as exc:    # a bug in the writer itself: stop loudly
            self._fail(SettlementError(f"settlement writer crashed: {exc!r}"))
            log.exception("settlement writer crashed")
            raise

    async def _fly(self, flight: Flight, previous: Flight | None) -> None:
        """Settle one batch, then land it: after the batch ahead has landed, so
        ``committed_seq`` and ``on_commit`` move in seq order."""
        try:
            committed = await self._settle(flight, previous)
            flight.committed = True
        except SettlementError:
            return          # recorded by fail(); the flight stays listed (pending)
        except PredecessorFailed:
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
        if self.flights[0] is not flight:
            # the batch ahead ended in failure: the writer is stopped; this batch
            # stays listed in pending_events() (a new writer skips it by last_seq)
            assert self._failed()
            return
        self.flights.popleft()
        self._landed.set()
        self._land(committed)

    async def ground(self, timeout_s: float) -> None:
        """Let flights still running (after a failure, the ones behind it
        roll back) end within ``timeout_s``, then cancel what is left."""
        tasks = [f.task for f in self.flights if f.task is not None and not f.task.done()]
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

    def batches(self) -> list[Batch]:
        """The batches in flight (or failed), in seq order."""
        return [f.batch for f in self.flights]

    def wake(self) -> None:
        """Wake the batcher's waits to look at the state again."""
        self._landed.set()
