"""Helpers of the job-loop tests: callers with credits, admissions, services and handlers made for the test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import psycopg
from pydantic import BaseModel, ConfigDict

from desired_state.services import callers, intake, ledger
from desired_state.services.builtin import BuiltinSettings, builtin_definitions
from desired_state.services.definitions import AnyObject, ServiceDefinition, ServiceRegistry
from desired_state.services.vocabulary import Runtime as ServiceRuntime
from reconciler.engine import EngineSettings
from reconciler.jobs.builtin import builtin_handlers
from reconciler.jobs.handlers import HandlerRegistry, JobContext
from reconciler.jobs.runner import JobSettings
from reconciler.runtime import Runtime
from tests.conftest import FAST_ENGINE, Sim, simulated_runtime

Conn = psycopg.AsyncConnection[Any]

SLOW = "test.slow"  # sleeps `n` seconds without reporting progress; 30 s timeout
QUICK_TIMEOUT = "test.quick-timeout"  # sleeps `n` seconds; times out after 1 s
RERUN = "test.rerun"  # idempotent, 3 attempts; sleeps `n` seconds
ONCE = "test.once"  # not idempotent; sleeps `n` seconds

JOB_ENGINE = replace(FAST_ENGINE, lease_seconds=1.5)
"""Short leases so dead-worker tests take seconds; renewals every 0.5 s."""
FAST_JOBS = JobSettings(tick_seconds=0.1, requeue_delay=0.1, gauge_seconds=0.5, audit_seconds=0.5, shutdown_grace=1.0)


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: float = 0


def test_definitions() -> list[ServiceDefinition]:
    def job(service_id: str, **terms: Any) -> ServiceDefinition:
        return ServiceDefinition(
            id=service_id,
            summary=service_id,
            runtime=ServiceRuntime.JOB,
            cost_credits=terms.pop("cost", 2),
            input_model=SleepInput,
            output_model=AnyObject,
            **terms,
        )

    return [
        job(SLOW, timeout_seconds=30),
        job(QUICK_TIMEOUT, timeout_seconds=1),
        job(RERUN, timeout_seconds=60, idempotent=True, max_attempts=3),
        job(ONCE, timeout_seconds=60),
    ]


class Sleeper:
    """A handler that sleeps ``n`` seconds, without a word of progress, and counts its runs."""

    def __init__(self) -> None:
        self.runs: dict[uuid.UUID, int] = {}
        self.cancelled: set[uuid.UUID] = set()

    async def __call__(self, job: JobContext) -> Mapping[str, Any]:
        self.runs[job.job_id] = self.runs.get(job.job_id, 0) + 1
        try:
            await asyncio.sleep(float(job.input["n"]))
        except asyncio.CancelledError:
            self.cancelled.add(job.job_id)
            raise
        return {"slept": job.input["n"], "attempt": job.attempt}


def registry(builtin: BuiltinSettings | None = None) -> ServiceRegistry:
    return ServiceRegistry([*builtin_definitions(builtin), *test_definitions()])


def handlers(runtime_http: Any, sleeper: Sleeper, echo_base_url: str | None = None) -> HandlerRegistry:
    registered = builtin_handlers(runtime_http, echo_base_url)
    for service_id in (SLOW, QUICK_TIMEOUT, RERUN, ONCE):
        registered.register(service_id, sleeper)
    return registered


def job_runtime(
    db_url: str,
    sim: Sim,
    sleeper: Sleeper,
    *,
    engine: EngineSettings = JOB_ENGINE,
    jobs: JobSettings = FAST_JOBS,
    echo_base_url: str | None = None,
    builtin: BuiltinSettings | None = None,
) -> Runtime:
    """A Runtime whose job loop knows the built-in services and the ones above."""
    return simulated_runtime(
        db_url,
        sim,
        engine,
        jobs=jobs,
        services=registry(builtin),
        handlers=lambda http: handlers(http, sleeper, echo_base_url),
    )


async def new_caller(conn: Conn, email: str = "ada@example.com", credits: int = 100) -> uuid.UUID:
    issued = await callers.create_caller(conn, email)
    if credits:
        await ledger.grant(conn, email, credits, "welcome")
    return issued.caller.caller_id


async def admit(
    conn: Conn, caller_id: uuid.UUID, service_id: str, data: dict[str, Any], builtin: BuiltinSettings | None = None
) -> uuid.UUID:
    admission = await intake.admit(conn, registry(builtin), caller_id, service_id, data)
    return admission.job_id


async def job_row(conn: Conn, job_id: uuid.UUID) -> dict[str, Any]:
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute("SELECT * FROM service_jobs WHERE job_id = %s", (job_id,))
        row = await cur.fetchone()
    assert row is not None
    return row


async def transfers(conn: Conn, job_id: uuid.UUID) -> list[str]:
    cur = await conn.execute("SELECT kind FROM credit_transfers WHERE job_id = %s ORDER BY kind", (job_id,))
    return [row[0] for row in await cur.fetchall()]


async def assert_audit_clean(conn: Conn) -> ledger.AuditReport:
    report = await ledger.audit(conn)
    assert report.violations == [], [str(v) for v in report.violations]
    return report


async def wait_for(conn: Conn, job_id: uuid.UUID, statuses: set[str], within: float = 20.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        row = await job_row(conn, job_id)
        if row["status"] in statuses:
            return row
        assert loop.time() < deadline, f"job still {row['status']}"
        await asyncio.sleep(0.05)
