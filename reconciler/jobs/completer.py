"""Batched terminations: the workers' ends of many jobs in one statement and one commit.

Each finished handler's end (completed with its result, or failed with its error) is the ledger's
one termination transaction, ``paid_terminate`` (migration 0006): the guarded status change, the
settlement and the notification. Run one job at a time, each end costs a round trip and a commit
(a WAL flush); with many short jobs that is most of the loop's time. So the worker's ends are
queued, and whatever has queued by the next turn of the event loop is ended together: one
statement that calls ``paid_terminate`` once per job (the same function, the same guards, so a
late worker still changes nothing), in job-id order so two batches never wait on each other.
Each caller gets its own job's :class:`~desired_state.services.termination.Termination`.

Two batches are in flight at once (``WRITERS``): while one is in Postgres (its updates, its
commit), the ends finishing meanwhile queue and go out as the next, on another connection, so
the loop's Python and its Postgres work overlap on two cores instead of taking turns. The batches
hold disjoint jobs; two refunds of one caller in two batches may still lock its account in
opposite orders, which is the rolled-back case below.

The batch is one transaction. Postgres may roll it back for a deadlock or a serialization failure
(SQLSTATE class 40, ``transaction_rollback``: another transaction locked some of the same rows in
another order); then nothing was written, so the same batch is written again, a few times with a
short jittered pause. That is safe because every end is guarded by its claim: a retry of an end that another worker
overtook meanwhile changes nothing. If the database fails the batch otherwise (or every attempt
is rolled back), every job in it is left running under its lease, and the lapsed-lease sweep
decides for each (as for a worker that died).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from desired_state.services.termination import MAX_ERROR_MESSAGE_CHARS, JobError, Termination, proxy_answer
from desired_state.services.vocabulary import Clock, JobStatus, Settlement

log = logging.getLogger(__name__)

MAX_BATCH = 256
WRITERS = 2
"""Batches written at once: while one is in Postgres, the loop's Python gathers and sends the next."""
WRITE_ATTEMPTS = 3
"""A batch rolled back by a deadlock or a serialization failure is written again, this many times in all."""
ROLLED_BACK_SQLSTATE_CLASS = "40"
RETRY_PAUSE_SECONDS = 0.05
"""The longest pause before writing a rolled-back batch again (jittered, so two rivals part)."""

# One paid_terminate per job, guarded by the worker's claim (still running, still its token). The
# JSON values travel as one JSON array each (a jsonb[] parameter is escaped element by element).
TERMINATE_MANY = """
SELECT t.job_id, r.changed, r.status, r.settlement
  FROM ROWS FROM (unnest(%(job_ids)s::uuid[]), unnest(%(statuses)s::text[]), unnest(%(tokens)s::bigint[]),
                  jsonb_array_elements(%(results)s::jsonb), unnest(%(codes)s::text[]), unnest(%(messages)s::text[]),
                  unnest(%(response_statuses)s::int[]), jsonb_array_elements(%(response_bodies)s::jsonb))
       WITH ORDINALITY AS t(job_id, status, token, result, code, message, response_status, response_body, n)
 CROSS JOIN LATERAL paid_terminate(t.job_id, t.status, ARRAY['running'], t.token, %(now)s,
                                   NULLIF(t.result, 'null'::jsonb), t.code, t.message, t.response_status,
                                   t.response_body, NULL, NULL, NULL) AS r
 ORDER BY t.n
"""


@dataclass
class _End:
    job_id: uuid.UUID
    token: int
    status: JobStatus
    result: Any
    error: JobError | None
    done: asyncio.Future[Termination] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Completer:
    """Queues the ends of finished jobs and writes them in batches."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], clock: Clock) -> None:
        self._pool = pool
        self._clock = clock
        self._queue: list[_End] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def end(
        self, job_id: uuid.UUID, token: int, status: JobStatus, *, result: Any = None, error: JobError | None = None
    ) -> Termination:
        """End one job under its claim; returns when its batch has committed."""
        if status is JobStatus.COMPLETED and error is not None:
            raise ValueError("a completed job carries no error")
        item = _End(job_id, token, status, result, error)
        self._queue.append(item)
        if len(self._flushing) < WRITERS:
            flushing = asyncio.create_task(self._flush())
            self._flushing.add(flushing)
            flushing.add_done_callback(self._flushing.discard)
        return await item.done

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other handlers finishing this turn join the batch
        while self._queue:
            batch = sorted(self._queue[:MAX_BATCH], key=lambda item: item.job_id)
            del self._queue[:MAX_BATCH]
            try:
                ended = await self._write_retrying(batch)
            except BaseException as exc:
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for item in batch:
                item.done.set_result(ended.get(item.job_id, Termination(False, None, None)))

    async def _write_retrying(self, batch: list[_End]) -> dict[uuid.UUID, Termination]:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return await self._write(batch)
            except psycopg.OperationalError as exc:
                if not _rolled_back(exc) or attempt == WRITE_ATTEMPTS:
                    raise
                log.info("a batch of %d job ends was rolled back (%s); writing it again", len(batch), exc.sqlstate)
                await asyncio.sleep(random.uniform(0, RETRY_PAUSE_SECONDS))
        raise AssertionError("unreachable")

    async def _write(self, batch: list[_End]) -> dict[uuid.UUID, Termination]:
        answers = [proxy_answer(item.status, item.result, item.error) for item in batch]
        params = {
            "job_ids": [item.job_id for item in batch],
            "statuses": [item.status.value for item in batch],
            "tokens": [item.token for item in batch],
            "results": Jsonb([item.result for item in batch]),
            "codes": [item.error.code.value if item.error else None for item in batch],
            "messages": [item.error.message[:MAX_ERROR_MESSAGE_CHARS] if item.error else None for item in batch],
            "response_statuses": [status for status, _ in answers],
            "response_bodies": Jsonb([body for _, body in answers]),
            "now": self._clock(),
        }
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(TERMINATE_MANY, params)
            rows = await cur.fetchall()
        return {
            job_id: Termination(
                bool(changed), JobStatus(status) if status else None, Settlement(settlement) if settlement else None
            )
            for job_id, changed, status, settlement in rows
        }


def _rolled_back(exc: psycopg.Error) -> bool:
    """Postgres rolled the transaction back (deadlock, serialization failure): nothing was written.

    psycopg raises these as their own classes (``DeadlockDetected``, ``SerializationFailure``), not
    subclasses of ``TransactionRollback``, so the SQLSTATE class is what names them all.
    """
    return (exc.sqlstate or "").startswith(ROLLED_BACK_SQLSTATE_CLASS)
