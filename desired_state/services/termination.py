"""The one termination transaction, used by the API (cancel, proxy calls) and the loop alike.

:func:`terminate` calls the plpgsql function ``paid_terminate`` (migration 0006): in one
statement it changes the status under a guard, settles the credits (capture on ``completed``,
refund on ``failed``/``cancelled``/``timed_out``, nothing for a free service), stores a keyed
proxy call's answer, and notifies ``paid_jobs_done``. The guard is the status AND,
for a worker, the fencing token of its claim: a stale worker (its job cancelled, timed out, or
re-claimed after its lease lapsed) matches nothing and changes nothing, and is told so
(``changed`` is False) so it stops. Two terminations racing on one job are serialised by the row
lock; the first to commit wins, the second matches nothing ("first commit wins", as in Oban;
a cancel that loses to a completion is answered with the completed job and no refund).

The loop's sweeps are here too, since they are terminations: :func:`time_out_overdue` (deadline
passed: ``timed_out`` + refund), :func:`recover_lapsed` (lease lapsed, so the worker died: re-queue
an idempotent job with attempts left, else ``failed`` + refund; a proxy call is never re-sent)
and :func:`settle_unsettled` ("refunding until convergence": any terminal job without its
settlement, say one written over plain SQL, is settled).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from desired_state.services import queries
from desired_state.services.vocabulary import (
    LIVE_STATUSES,
    ErrorCode,
    JobErrorCode,
    JobStatus,
    Runtime,
    Settlement,
)

MAX_ERROR_MESSAGE_CHARS = 2000
SWEEP_BATCH = 100


@dataclass(frozen=True)
class JobError:
    code: JobErrorCode
    message: str


@dataclass(frozen=True)
class Termination:
    changed: bool
    """False: the guard matched nothing (already terminal, re-claimed, another caller's job)."""
    status: JobStatus | None
    """The job's status now (None: no such job, or not the caller's)."""
    settlement: Settlement | None


PROXY_ERROR_CODES: dict[JobErrorCode, ErrorCode] = {
    JobErrorCode.UPSTREAM_NOT_CONFIGURED: ErrorCode.UPSTREAM_NOT_CONFIGURED,
    JobErrorCode.UPSTREAM_AUTH_MISSING: ErrorCode.UPSTREAM_AUTH_MISSING,
    JobErrorCode.UPSTREAM_UNREACHABLE: ErrorCode.UPSTREAM_UNREACHABLE,
    JobErrorCode.UPSTREAM_FAILED: ErrorCode.UPSTREAM_FAILED,
    JobErrorCode.TIMED_OUT: ErrorCode.UPSTREAM_UNREACHABLE,
}


def proxy_answer(status: JobStatus, result: Any, error: JobError | None) -> tuple[int, Any]:
    """What a proxy call answers (and a replay of its key answers again): 200 and the output, or
    the error's status and ``{error, message, hint}`` (the credits having been refunded)."""
    if status is JobStatus.COMPLETED:
        return 200, result
    code = PROXY_ERROR_CODES.get(error.code, ErrorCode.INTERNAL_ERROR) if error else ErrorCode.INTERNAL_ERROR
    message = error.message if error else f"the call ended {status.value}"
    return code.http_status, {"error": code.value, "message": message, "hint": "the credits were refunded"}


async def terminate(
    conn: psycopg.AsyncConnection[Any],
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    now: datetime,
    token: int | None,
    result: Any = None,
    error: JobError | None = None,
    expected: Iterable[JobStatus] = LIVE_STATUSES,
    caller_id: uuid.UUID | None = None,
    lease_lapsed_by: datetime | None = None,
    deadline_passed_by: datetime | None = None,
) -> Termination:
    """End a job in ``status`` if it is still in one of ``expected`` (and, with ``token``, still
    under that claim; with ``caller_id``, that caller's), and settle its credits, atomically.

    The sweeps narrow the guard further: ``lease_lapsed_by`` (the lease must have lapsed by then)
    and ``deadline_passed_by`` (the deadline must have passed by then).
    """
    if status in LIVE_STATUSES:
        raise ValueError(f"{status} is not a terminal status")
    if status is JobStatus.COMPLETED and error is not None:
        raise ValueError("a completed job carries no error")
    response_status, response_body = proxy_answer(status, result, error)
    params = {
        "job_id": job_id,
        "status": status.value,
        "expected": [s.value for s in expected],
        "token": token,
        "now": now,
        "result": Jsonb(result) if result is not None else None,
        "error_code": error.code.value if error else None,
        "error_message": error.message[:MAX_ERROR_MESSAGE_CHARS] if error else None,
        "response_status": response_status,
        "response_body": Jsonb(response_body),
        "caller_id": caller_id,
        "lease_lapsed_by": lease_lapsed_by,
        "deadline_passed_by": deadline_passed_by,
    }
    async with conn.cursor() as cur:
        await cur.execute(queries.TERMINATE, params)
        row = await cur.fetchone()
    if row is None or row[1] is None:
        return Termination(False, None, None)
    return Termination(bool(row[0]), JobStatus(row[1]), Settlement(row[2]) if row[2] else None)


@dataclass(frozen=True)
class Cancellation:
    found: bool
    status: JobStatus | None
    refunded: bool
    """True when this cancellation refunded the job's credits (False for a job already finished)."""


async def cancel(
    conn: psycopg.AsyncConnection[Any], job_id: uuid.UUID, *, now: datetime, caller_id: uuid.UUID | None = None
) -> Cancellation:
    """Cancel a pending or running job and refund it, in one transaction.

    ``caller_id`` restricts it to that caller's jobs (another caller's id is "not found"). A job
    already finished keeps its status and is not refunded again. A proxy call is not cancellable
    (it ends with its request).
    """
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.SELECT_JOB, {"job_id": job_id, "caller_id": caller_id})
        job = await cur.fetchone()
    if job is None:
        return Cancellation(False, None, False)
    if job["runtime"] == Runtime.PROXY:
        return Cancellation(True, JobStatus(job["status"]), False)
    outcome = await terminate(
        conn,
        job_id,
        JobStatus.CANCELLED,
        now=now,
        token=None,
        error=JobError(JobErrorCode.CANCELLED, "cancelled before it finished"),
        caller_id=caller_id,
    )
    refunded = outcome.changed and outcome.settlement is Settlement.REFUND
    return Cancellation(True, outcome.status, refunded)


async def settle_unsettled(conn: psycopg.AsyncConnection[Any], *, now: datetime, limit: int = SWEEP_BATCH) -> int:
    """Settle terminal jobs that have no settlement yet; returns how many were settled."""
    async with conn.cursor() as cur:
        await cur.execute(queries.SELECT_UNSETTLED, {"limit": limit})
        ids = [row[0] for row in await cur.fetchall()]
        for job_id in ids:
            await cur.execute(queries.SETTLE, {"job_id": job_id, "now": now})
    return len(ids)


async def time_out_overdue(
    conn: psycopg.AsyncConnection[Any], *, now: datetime, limit: int = SWEEP_BATCH
) -> list[uuid.UUID]:
    """``timed_out`` + refund for every live job past its deadline; returns the jobs timed out."""
    async with conn.cursor() as cur:
        await cur.execute(queries.SELECT_OVERDUE, {"now": now, "limit": limit})
        ids = [row[0] for row in await cur.fetchall()]
    timed_out = []
    for job_id in ids:
        outcome = await terminate(
            conn,
            job_id,
            JobStatus.TIMED_OUT,
            now=now,
            token=None,
            error=JobError(JobErrorCode.TIMED_OUT, "the job did not finish before its deadline"),
            deadline_passed_by=now,
        )
        if outcome.changed:
            timed_out.append(job_id)
    return timed_out


@dataclass(frozen=True)
class Recovered:
    requeued: list[uuid.UUID]
    failed: list[uuid.UUID]


async def recover_lapsed(
    conn: psycopg.AsyncConnection[Any],
    *,
    now: datetime,
    retry_delay: timedelta = timedelta(seconds=1),
    limit: int = SWEEP_BATCH,
) -> Recovered:
    """Running jobs whose lease lapsed (their worker died): re-queue an idempotent job with
    attempts left (the token bump fences the dead worker out), else ``failed`` + refund.

    A proxy call whose request died is failed and refunded, never re-sent.
    """
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.SELECT_LAPSED, {"now": now, "limit": limit})
        rows = await cur.fetchall()
    requeued: list[uuid.UUID] = []
    failed: list[uuid.UUID] = []
    for row in rows:
        if row["runtime"] == Runtime.JOB and row["attempts"] < row["max_attempts"]:
            async with conn.cursor() as cur:
                await cur.execute(
                    queries.REQUEUE_LAPSED,
                    {
                        "job_id": row["job_id"],
                        "token": row["fencing_token"],
                        "now": now,
                        "run_after": now + retry_delay,
                    },
                )
                if await cur.fetchone() is not None:
                    requeued.append(row["job_id"])
            continue
        outcome = await terminate(
            conn,
            row["job_id"],
            JobStatus.FAILED,
            now=now,
            token=row["fencing_token"],
            expected=(JobStatus.RUNNING,),
            lease_lapsed_by=now,
            error=JobError(
                JobErrorCode.WORKER_LOST,
                "the process running it stopped"
                + ("" if row["runtime"] == Runtime.JOB else " during the upstream call"),
            ),
        )
        if outcome.changed:
            failed.append(row["job_id"])
    return Recovered(requeued, failed)
