"""The batch completer: jobs that finish together end together, in one transaction.

Each handler's end (completed, failed, timed out) is the ledger's termination transaction
(:func:`desired_state.services.termination.terminate_many`: guarded status change, settlement,
NOTIFY, per job). Run one at a time, every job pays a commit, and a commit is a WAL flush: on a
small machine that flush, not the work, bounds the loop (measured in ``docs/benchmarks.md``:
about 5 ms a commit here). So the runner hands its ends to a :class:`Completer`: an end that
finds no write in flight is written at once, by its own task; ends that arrive while a write is
in flight wait for it and go together in the next one (up to ``max_batch``). An idle loop adds
no delay; a busy one pays one commit per batch instead of one per job. River's batch completer is the same idea.

Each end is still guarded by its own claim: a stale end in a batch changes nothing for its job
and is told so, like a single termination. The batch is sorted by job id, so two batches (two
replicas, or a stale worker and the new owner) lock shared rows in one order. If a batch fails
with a deadlock or a serialization failure it is retried whole (it was rolled back); with anything
else but a lost database its ends are retried one by one, so one bad end cannot fail the others;
a lost database fails every waiting end with the error (the leases then lapse and the
sweep decides, as for a single termination).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from desired_state.services.termination import Termination, WorkerEnd, terminate_many

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 500
ROLLBACK_RETRIES = 3


class Completer:
    """Writes the ends handed to :meth:`end` in batches, one batch in flight at a time."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._pool = pool
        self.max_batch = max_batch
        self._waiting: list[tuple[WorkerEnd, asyncio.Future[Termination]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._busy = False  # a write (inline or the writer task's) is in flight

    async def end(self, end: WorkerEnd) -> Termination:
        """Terminate one claimed job (with whatever else is ending now); its :class:`Termination`.

        Idle, the caller writes its own end at once, in its own task (no hop through another,
        so an end is never later than a single termination would be); while a write is in
        flight, ends queue for the next batch.
        """
        if not self._busy:
            self._busy = True
            try:
                [result] = await self._terminate([end])
            finally:
                self._busy = False
                self._start_writer()
            return result
        future: asyncio.Future[Termination] = asyncio.get_running_loop().create_future()
        self._waiting.append((end, future))
        self._start_writer()
        return await future

    def _start_writer(self) -> None:
        if self._waiting and not self._busy:
            self._busy = True
            self._writer = asyncio.create_task(self._write_all(), name="job-completer")

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                await self._write(batch)
        except asyncio.CancelledError:
            for _, future in self._waiting:  # nothing waits forever on a writer that is gone
                future.cancel()
            self._waiting = []
            raise
        finally:
            self._busy = False

    async def _write(self, batch: list[tuple[WorkerEnd, asyncio.Future[Termination]]]) -> None:
        batch.sort(key=lambda item: item[0].job_id)
        try:
            results = await self._terminate([end for end, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _, future = batch[0]
                if not future.done():
                    future.set_exception(exc)
                return
            log.exception("a batch of %d job terminations failed; ending them one by one", len(batch))
            for item in batch:
                await self._write([item])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _terminate(self, ends: list[WorkerEnd]) -> list[Termination]:
        """One batch; a deadlock or serialization failure (another batch of shared rows, say
        refunds to the same callers from another replica) rolled it all back, so it is retried."""
        for attempt in range(1, ROLLBACK_RETRIES + 1):
            try:
                async with self._pool.connection() as conn:
                    return await terminate_many(conn, ends)
            except psycopg.errors.TransactionRollback:
                if attempt == ROLLBACK_RETRIES:
                    raise
                log.warning("a batch of %d job terminations was rolled back; retrying", len(ends))
        raise AssertionError("unreachable")
