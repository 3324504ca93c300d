"""The job read model, in the wire shape of ``GET /api/services/jobs/{id}`` (issue 12).

``{jobId, serviceId, status, progress: {pct, note}, result, error: {code, message}, costCredits,
refunded, createdAt, startedAt, finishedAt}``. ``refunded`` is true once the job's credits went
back to the caller; ``error`` is null unless the job ended otherwise than ``completed``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel, Field, JsonValue

from desired_state.services import queries
from desired_state.services.vocabulary import Clock, JobStatus, Runtime, Settlement, system_clock
from desired_state.webhooks import WebhookView

MAX_LIST = 1000


class Progress(BaseModel):
    pct: float | None = Field(description="0..1, as last reported by the handler.")
    note: str | None


class JobErrorView(BaseModel):
    code: str
    message: str


class JobView(BaseModel):
    jobId: uuid.UUID
    serviceId: str
    status: JobStatus
    progress: Progress
    result: JsonValue = None
    error: JobErrorView | None
    costCredits: int
    refunded: bool
    createdAt: datetime
    startedAt: datetime | None
    finishedAt: datetime | None
    webhook: WebhookView | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job row as the operator's commands and the loop see it (the wire view plus the claim)."""

    job_id: uuid.UUID
    service_id: str
    runtime: Runtime
    caller_id: uuid.UUID
    input: dict[str, Any]
    status: JobStatus
    progress_pct: float | None
    progress_note: str | None
    result: Any
    error_code: str | None
    error_message: str | None
    cost_credits: int
    settlement: Settlement | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    deadline: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    fencing_token: int
    idempotency_key: str | None
    webhook_url: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobRecord:
        return cls(
            job_id=row["job_id"],
            service_id=row["service_id"],
            runtime=Runtime(row["runtime"]),
            caller_id=row["caller_id"],
            input=row["input"],
            status=JobStatus(row["status"]),
            progress_pct=row["progress_pct"],
            progress_note=row["progress_note"],
            result=row["result"],
            error_code=row["error_code"],
            error_message=row["error_message"],
            cost_credits=int(row["cost_credits"]),
            settlement=Settlement(row["settlement"]) if row["settlement"] else None,
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            attempts=int(row["attempts"]),
            max_attempts=int(row["max_attempts"]),
            deadline=row["deadline"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            fencing_token=int(row["fencing_token"]),
            idempotency_key=row["idempotency_key"],
            webhook_url=row.get("webhook_url"),
        )

    def view(self) -> JobView:
        return JobView(
            jobId=self.job_id,
            serviceId=self.service_id,
            status=self.status,
            progress=Progress(pct=self.progress_pct, note=self.progress_note),
            result=self.result,
            error=JobErrorView(code=self.error_code, message=self.error_message or "")
            if self.error_code is not None
            else None,
            costCredits=self.cost_credits,
            refunded=self.settlement is Settlement.REFUND,
            createdAt=self.created_at,
            startedAt=self.started_at,
            finishedAt=self.finished_at,
        )


async def get_job(
    conn: psycopg.AsyncConnection[Any], job_id: uuid.UUID, caller_id: uuid.UUID | None = None
) -> JobRecord | None:
    """One job; with ``caller_id``, only if it is that caller's (another's is "not found")."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.SELECT_JOB, {"job_id": job_id, "caller_id": caller_id})
        row = await cur.fetchone()
    return None if row is None else JobRecord.from_row(row)


async def list_jobs(
    conn: psycopg.AsyncConnection[Any],
    *,
    caller_id: uuid.UUID | None = None,
    service_id: str | None = None,
    status: JobStatus | None = None,
    limit: int = 100,
) -> list[JobRecord]:
    """Newest first, filtered."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            queries.LIST_JOBS,
            {
                "caller_id": caller_id,
                "service_id": service_id,
                "status": status.value if status else None,
                "limit": max(1, min(limit, MAX_LIST)),
            },
        )
        rows = await cur.fetchall()
    return [JobRecord.from_row(row) for row in rows]


class UsageWindows(BaseModel):
    lastMinute: int
    lastHour: int
    lastDay: int


class Usage(BaseModel):
    """``GET /api/services/usage/{group}/{method}``: a caller's use of one service."""

    serviceId: str
    invocations: int
    completed: int
    failed: int
    cancelled: int
    timedOut: int
    inProgress: int
    creditsSpent: int
    creditsRefunded: int
    creditsHeld: int
    windows: UsageWindows
    lastInvokedAt: datetime | None
    history: list[JobView] | None = None


async def usage(
    conn: psycopg.AsyncConnection[Any],
    caller_id: uuid.UUID,
    service_id: str,
    *,
    history: bool = False,
    history_limit: int = 50,
    clock: Clock = system_clock,
) -> Usage:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.USAGE, {"caller_id": caller_id, "service_id": service_id, "now": clock()})
        row = await cur.fetchone()
    assert row is not None
    jobs = (
        await list_jobs(conn, caller_id=caller_id, service_id=service_id, limit=history_limit) if history else None
    )
    return Usage(
        serviceId=service_id,
        invocations=row["invocations"],
        completed=row["completed"],
        failed=row["failed"],
        cancelled=row["cancelled"],
        timedOut=row["timed_out"],
        inProgress=row["in_progress"],
        creditsSpent=int(row["credits_spent"]),
        creditsRefunded=int(row["credits_refunded"]),
        creditsHeld=int(row["credits_held"]),
        windows=UsageWindows(lastMinute=row["last_minute"], lastHour=row["last_hour"], lastDay=row["last_day"]),
        lastInvokedAt=row["last_invoked_at"],
        history=[job.view() for job in jobs] if jobs is not None else None,
    )
