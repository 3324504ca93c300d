"""The worker's side of the job row: the claimed job, progress reports, the one-job claim and end.

The claim statement (``CLAIM_JOBS``) and progress (:func:`report_progress`) are what the loop uses:
it claims in batches through the shared claim primitive (:mod:`reconciler.claims`), renews every
lease it holds in one statement and ends jobs in batches (:mod:`reconciler.jobs.completer`), all
under the same guards. :func:`claim_jobs` and :func:`finish` are the same contract one job at a
time, for a worker of another kind and for the tests that pin the contract down.

A claim takes due pending jobs with ``SKIP LOCKED`` (replicas claim disjoint rows), marks them
running under a short lease, bumps the fencing token and, on the first claim, fixes the deadline
(start + the service's timeout). Every later worker write names that token: progress answers False
once the job was cancelled, timed out or re-claimed, and :func:`finish` then changes nothing, so
the worker stops.

The lease (seconds, renewed by the worker while the handler runs) is separate from the deadline
(the job's own time limit) and from the fencing token (which claim is current).
"""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from desired_state.services import queries
from desired_state.services.termination import JobError, Termination, terminate
from desired_state.services.vocabulary import JobStatus

DEFAULT_LEASE_SECONDS = 15.0


@dataclass(frozen=True)
class ClaimedJob:
    job_id: uuid.UUID
    service_id: str
    caller_id: uuid.UUID
    input: dict[str, Any]
    cost_credits: int
    fencing_token: int
    attempts: int
    max_attempts: int
    deadline: datetime
    lease_expires_at: datetime


async def claim_jobs(
    conn: psycopg.AsyncConnection[Any],
    *,
    owner: str,
    now: datetime,
    limit: int = 10,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    services: Sequence[str] | None = None,
) -> list[ClaimedJob]:
    """Claim up to ``limit`` due pending jobs (of ``services`` only, when given)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            queries.CLAIM_JOBS,
            {
                "owner": owner,
                "now": now,
                "limit": limit,
                "lease_seconds": lease_seconds,
                "services": list(services) if services is not None else None,
            },
        )
        rows = await cur.fetchall()
    return [
        ClaimedJob(
            job_id=row["job_id"],
            service_id=row["service_id"],
            caller_id=row["caller_id"],
            input=row["input"],
            cost_credits=int(row["cost_credits"]),
            fencing_token=int(row["fencing_token"]),
            attempts=int(row["attempts"]),
            max_attempts=int(row["max_attempts"]),
            deadline=row["deadline"],
            lease_expires_at=row["lease_expires_at"],
        )
        for row in rows
    ]


async def report_progress(
    conn: psycopg.AsyncConnection[Any],
    job: ClaimedJob,
    *,
    now: datetime,
    pct: float | None = None,
    note: str | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> bool:
    """Record progress (``pct`` in 0..1) and renew the lease; False: the job is no longer ours."""
    if pct is not None and not 0 <= pct <= 1:
        raise ValueError("pct must be between 0 and 1")
    async with conn.cursor() as cur:
        await cur.execute(
            queries.REPORT_PROGRESS,
            {
                "job_id": job.job_id,
                "token": job.fencing_token,
                "pct": pct,
                "note": note[:500] if note is not None else None,
                "now": now,
                "lease_seconds": lease_seconds,
            },
        )
        return await cur.fetchone() is not None


async def finish(
    conn: psycopg.AsyncConnection[Any],
    job: ClaimedJob,
    *,
    now: datetime,
    result: Any = None,
    error: JobError | None = None,
    status: JobStatus | None = None,
) -> Termination:
    """End a claimed job: ``completed`` with ``result``, or ``failed`` with ``error`` (or the
    ``status`` given), settled in the same transaction; a stale claim changes nothing."""
    final = status or (JobStatus.FAILED if error is not None else JobStatus.COMPLETED)
    return await terminate(
        conn,
        job.job_id,
        final,
        now=now,
        token=job.fencing_token,
        result=result,
        error=error,
        expected=(JobStatus.RUNNING,),
    )
