"""A model-based test of jobs and the ledger (Hypothesis ``RuleBasedStateMachine``).

Rules drive the real code against one real Postgres (reset between examples): admissions with
repeated and conflicting idempotency keys and rate limits, claims, progress, successes, failures,
cancellations (by the owner and by another caller), clock advances past leases and deadlines
followed by the loop's sweeps, worker crashes (a claim simply never written to again) and stale
writes from claims that were since re-claimed, cancelled or timed out, plus a terminal write made
over plain SQL without its settlement, which the loop's catch-up must settle. A plain-Python model
predicts every answer; after every step the balances and statuses must equal the model's, and the
ledger audit (I1-I7) must be clean.

``PAID_MODEL_EXAMPLES`` raises the number of examples for a longer run.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from desired_state.services import callers, intake, ledger, termination, work
from desired_state.services.builtin import ECHO
from desired_state.services.definitions import ServiceRegistry
from desired_state.services.intake import AdmissionRefused
from desired_state.services.termination import JobError
from desired_state.services.vocabulary import ErrorCode, JobErrorCode, JobStatus, Runtime
from tests.paid_support import FREE, LIMITED, PRICY, RERUN, SHORT, FakeClock, registry

T = TypeVar("T")
LEASE = 15.0
RETRY_DELAY = timedelta(0)  # a re-queued job is due at once, so re-claims (and stale claims) are common
CALLERS = ("ada@example.com", "bob@example.com")
GRANTS = (30, 6)
SERVICES = (LIMITED, LIMITED, SHORT, RERUN, RERUN, RERUN, FREE, PRICY, ECHO)  # weighted to the subtle parts
WINDOWS = {LIMITED: ((2, 60.0), (3, 3600.0))}
RESET = """
TRUNCATE idempotency_keys, credit_transfers, service_jobs, course_enrollments, caller_keys, callers, credit_accounts
    CASCADE;
INSERT INTO credit_accounts (account_id, kind)
VALUES ('escrow', 'escrow'), ('revenue', 'revenue'), ('grants', 'grants');
"""
LIVE = (JobStatus.PENDING, JobStatus.RUNNING)


@dataclass
class ModelJob:
    job_id: uuid.UUID
    caller: int
    service: str
    runtime: Runtime
    cost: int
    timeout: float
    max_attempts: int
    created_at: datetime
    status: JobStatus = JobStatus.PENDING
    attempts: int = 0
    token: int = 0
    next_attempt_at: datetime | None = None
    lease_expires_at: datetime | None = None
    deadline: datetime | None = None


class PaidJobsMachine(RuleBasedStateMachine):
    loop: asyncio.AbstractEventLoop
    conn: psycopg.AsyncConnection[Any]
    services: ServiceRegistry

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.run(self.conn.execute(RESET.encode()))
        self.caller_ids: list[uuid.UUID] = []
        for email, credits in zip(CALLERS, GRANTS, strict=True):
            issued = self.run(callers.create_caller(self.conn, email, self.clock))
            self.run(ledger.grant(self.conn, email, credits, "model", clock=self.clock))
            self.caller_ids.append(issued.caller.caller_id)
        self.balances = list(GRANTS)
        self.jobs: dict[uuid.UUID, ModelJob] = {}
        self.order: list[uuid.UUID] = []
        self.keys: dict[tuple[int, str, str], tuple[int, uuid.UUID]] = {}
        self.admitted_at: dict[tuple[int, str], list[datetime]] = {}
        self.claims: list[work.ClaimedJob] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # -- the model's helpers ---------------------------------------------------------------------------

    def _retry_after(self, caller: int, service: str) -> int | None:
        now = self.clock()
        waits = []
        for limit, period in WINDOWS.get(service, ()):
            inside = sorted(
                (t for t in self.admitted_at.get((caller, service), []) if now - timedelta(seconds=period) < t <= now),
                reverse=True,
            )
            if len(inside) >= limit:
                waits.append((inside[limit - 1] + timedelta(seconds=period) - now).total_seconds())
        return max(1, math.ceil(max(waits))) if waits else None

    def _end(self, job: ModelJob, status: JobStatus) -> None:
        job.status = status
        job.lease_expires_at = None
        if status is not JobStatus.COMPLETED:
            self.balances[job.caller] += job.cost

    def _tick(self) -> None:
        """Every step happens a microsecond after the last, so no two jobs share a creation time and the
        claim order (due time, then creation time) is the same each time Hypothesis replays a case."""
        self.clock.advance(0.000001)

    def _claim_of(self, index: int) -> work.ClaimedJob:
        return self.claims[index % len(self.claims)]

    def _job_at(self, index: int) -> ModelJob:
        return self.jobs[self.order[index % len(self.order)]]

    # -- rules -----------------------------------------------------------------------------------------

    @initialize()
    def some_jobs(self) -> None:
        """Every example starts with work in flight: jobs of each kind, two of them claimed."""
        for service in (RERUN, SHORT, LIMITED, FREE):
            self.admit(caller=0, service=service, n=0, key="k1")
        self.admit(caller=0, service=LIMITED, n=1, key=None)  # at its per-minute limit from here
        self.claim(2)
        self.admit(caller=1, service=ECHO, n=0, key="k1")

    @rule(
        caller=st.integers(0, 1),
        service=st.sampled_from(SERVICES),
        n=st.integers(0, 1),
        key=st.sampled_from([None, "k1", "k2"]),
    )
    def admit(self, caller: int, service: str, n: int, key: str | None) -> None:
        self._tick()
        definition = self.services.get(service)
        now = self.clock()
        expected_code: ErrorCode | None = None
        expected_job: uuid.UUID | None = None
        retry_after = None
        known = self.keys.get((caller, service, key)) if key else None
        if known is not None:
            expected_job = known[1]
            if known[0] != n:
                expected_code = ErrorCode.IDEMPOTENCY_KEY_REUSED
            elif self.jobs[known[1]].runtime is Runtime.PROXY and self.jobs[known[1]].status in LIVE:
                expected_code = ErrorCode.IDEMPOTENCY_KEY_IN_FLIGHT
        else:
            retry_after = self._retry_after(caller, service)
            if retry_after is not None:
                expected_code = ErrorCode.RATE_LIMIT_EXCEEDED
            elif self.balances[caller] < definition.cost_credits:
                expected_code = ErrorCode.INSUFFICIENT_CREDITS
        try:
            admission = self.run(
                intake.admit(
                    self.conn,
                    self.services,
                    self.caller_ids[caller],
                    service,
                    {"n": n},
                    idempotency_key=key,
                    clock=self.clock,
                    lease_owner="model-api",
                )
            )
        except AdmissionRefused as refused:
            assert refused.code is expected_code, (refused.code, expected_code)
            if expected_code is ErrorCode.RATE_LIMIT_EXCEEDED:
                assert refused.retry_after == retry_after
            if expected_code is ErrorCode.INSUFFICIENT_CREDITS:
                assert refused.hint is not None
                assert refused.hint.startswith(f"{definition.cost_credits - self.balances[caller]} more credit")
            return
        assert expected_code is None, f"admitted, expected {expected_code}"
        if known is not None:
            assert admission.replayed and admission.job_id == expected_job
            return
        assert not admission.replayed
        proxy = definition.runtime is Runtime.PROXY
        job = ModelJob(
            job_id=admission.job_id,
            caller=caller,
            service=service,
            runtime=definition.runtime,
            cost=definition.cost_credits,
            timeout=definition.timeout_seconds,
            max_attempts=definition.max_attempts,
            created_at=now,
            next_attempt_at=now,
        )
        if proxy:  # admitted running, leased to the request for the service's timeout
            job.status, job.attempts, job.token = JobStatus.RUNNING, 1, 1
            job.deadline = job.lease_expires_at = now + timedelta(seconds=definition.timeout_seconds)
            self.claims.append(self._claimed(job))
        self.jobs[job.job_id] = job
        self.order.append(job.job_id)
        self.balances[caller] -= job.cost
        self.admitted_at.setdefault((caller, service), []).append(now)
        if key:
            self.keys[(caller, service, key)] = (n, job.job_id)

    def _claimed(self, job: ModelJob) -> work.ClaimedJob:
        assert job.deadline is not None and job.lease_expires_at is not None
        return work.ClaimedJob(
            job_id=job.job_id,
            service_id=job.service,
            caller_id=self.caller_ids[job.caller],
            input={},
            cost_credits=job.cost,
            fencing_token=job.token,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            deadline=job.deadline,
            lease_expires_at=job.lease_expires_at,
        )

    @rule(limit=st.integers(1, 3))
    def claim(self, limit: int) -> None:
        self._tick()
        now = self.clock()
        due = sorted(
            (
                j
                for j in self.jobs.values()
                if j.status is JobStatus.PENDING and j.next_attempt_at is not None and j.next_attempt_at <= now
            ),
            key=lambda j: (j.next_attempt_at, j.created_at),
        )[:limit]
        claimed = self.run(work.claim_jobs(self.conn, owner="model-worker", now=now, limit=limit, lease_seconds=LEASE))
        assert [c.job_id for c in claimed] == [j.job_id for j in due]
        for job, claim in zip(due, claimed, strict=True):
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.token += 1
            job.lease_expires_at = now + timedelta(seconds=LEASE)
            job.deadline = job.deadline or now + timedelta(seconds=job.timeout)
            assert (claim.fencing_token, claim.attempts, claim.deadline) == (job.token, job.attempts, job.deadline)
            self.claims.append(claim)

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 10_000), pct=st.floats(0, 1))
    def progress(self, index: int, pct: float) -> None:
        self._tick()
        claim = self._claim_of(index)
        job = self.jobs[claim.job_id]
        ours = job.status is JobStatus.RUNNING and job.token == claim.fencing_token
        now = self.clock()
        reported = self.run(work.report_progress(self.conn, claim, now=now, pct=pct, note="step", lease_seconds=LEASE))
        assert reported is ours
        if ours:
            job.lease_expires_at = now + timedelta(seconds=LEASE)

    @precondition(lambda self: self.claims)
    @rule(index=st.integers(0, 10_000), succeed=st.booleans())
    def finish(self, index: int, succeed: bool) -> None:
        self._tick()
        claim = self._claim_of(index)
        job = self.jobs[claim.job_id]
        ours = job.status is JobStatus.RUNNING and job.token == claim.fencing_token
        error = None if succeed else JobError(JobErrorCode.HANDLER_FAILED, "boom")
        ended = self.run(work.finish(self.conn, claim, now=self.clock(), result={"ok": True}, error=error))
        assert ended.changed is ours
        if ours:
            self._end(job, JobStatus.COMPLETED if succeed else JobStatus.FAILED)
        assert ended.status is job.status

    @precondition(lambda self: self.order)
    @rule(index=st.integers(0, 10_000), as_owner=st.booleans())
    def cancel(self, index: int, as_owner: bool) -> None:
        self._tick()
        job = self._job_at(index)
        who = job.caller if as_owner else 1 - job.caller
        outcome = self.run(termination.cancel(self.conn, job.job_id, now=self.clock(), caller_id=self.caller_ids[who]))
        if not as_owner:
            assert not outcome.found
            return
        refunds = job.status in LIVE and job.runtime is Runtime.JOB
        assert outcome.found and outcome.refunded is (refunds and job.cost > 0)
        if refunds:
            self._end(job, JobStatus.CANCELLED)
        assert outcome.status is job.status

    @rule(seconds=st.sampled_from([1, 5, 16, 61, 120, 3600]))
    def advance_and_sweep(self, seconds: int) -> None:
        """Time passes; the loop then times out overdue jobs and recovers lapsed leases."""
        self._tick()
        now = self.clock.advance(seconds)
        overdue = {j.job_id for j in self.jobs.values() if j.status in LIVE and j.deadline and j.deadline <= now}
        timed_out = self.run(termination.time_out_overdue(self.conn, now=now))
        assert set(timed_out) == overdue
        for job_id in overdue:
            self._end(self.jobs[job_id], JobStatus.TIMED_OUT)
        lapsed = [
            j
            for j in self.jobs.values()
            if j.status is JobStatus.RUNNING and j.lease_expires_at is not None and j.lease_expires_at < now
        ]
        recovered = self.run(termination.recover_lapsed(self.conn, now=now, retry_delay=RETRY_DELAY))
        requeue = {j.job_id for j in lapsed if j.runtime is Runtime.JOB and j.attempts < j.max_attempts}
        assert set(recovered.requeued) == requeue
        assert set(recovered.failed) == {j.job_id for j in lapsed} - requeue
        for job in lapsed:
            if job.job_id in requeue:
                job.status, job.token = JobStatus.PENDING, job.token + 1
                job.lease_expires_at, job.next_attempt_at = None, now + RETRY_DELAY
            else:
                self._end(job, JobStatus.FAILED)

    @precondition(lambda self: any(j.status is JobStatus.RUNNING for j in self.jobs.values()))
    @rule(index=st.integers(0, 10_000))
    def worker_crashes(self, index: int) -> None:
        """A worker dies holding a job: nothing renews its lease, time passes it, the loop sweeps, and
        another worker claims what was re-queued (the dead one's claim is now stale)."""
        self._tick()
        running = [j for j in self.jobs.values() if j.status is JobStatus.RUNNING]
        job = running[index % len(running)]
        assert job.lease_expires_at is not None
        dead = [c for c in self.claims if c.job_id == job.job_id and c.fencing_token == job.token]
        self.advance_and_sweep(math.ceil((job.lease_expires_at - self.clock()).total_seconds()) + 1)
        self.claim(3)
        if job.status is JobStatus.RUNNING and dead:  # re-claimed: the dead worker's late write is fenced out
            self.stale_write_after_reclaim(self._stale().index(dead[0]), succeed=True)

    def _stale(self) -> list[work.ClaimedJob]:
        """Claims of jobs that are running again under a newer claim."""
        return [
            c
            for c in self.claims
            if self.jobs[c.job_id].status is JobStatus.RUNNING and self.jobs[c.job_id].token != c.fencing_token
        ]

    @precondition(lambda self: self._stale())
    @rule(index=st.integers(0, 10_000), succeed=st.booleans())
    def stale_write_after_reclaim(self, index: int, succeed: bool) -> None:
        self._tick()
        stale = self._stale()
        claim = stale[index % len(stale)]
        assert not self.run(work.report_progress(self.conn, claim, now=self.clock(), pct=0.5))
        error = None if succeed else JobError(JobErrorCode.HANDLER_FAILED, "late")
        ended = self.run(work.finish(self.conn, claim, now=self.clock(), result={"late": True}, error=error))
        assert not ended.changed and ended.status is JobStatus.RUNNING

    @precondition(lambda self: any(j.status in LIVE and j.runtime is Runtime.JOB for j in self.jobs.values()))
    @rule(index=st.integers(0, 10_000))
    def terminal_write_over_sql_then_catch_up(self, index: int) -> None:
        """A backend marks a job failed over plain SQL, without settling; the loop's catch-up settles it."""
        self._tick()
        live = [j for j in self.jobs.values() if j.status in LIVE and j.runtime is Runtime.JOB]
        job = live[index % len(live)]
        self.run(
            self.conn.execute(
                "UPDATE service_jobs SET status = 'failed', finished_at = %s, lease_owner = NULL WHERE job_id = %s",
                (self.clock(), job.job_id),
            )
        )
        settled = self.run(termination.settle_unsettled(self.conn, now=self.clock()))
        assert settled == 1
        self._end(job, JobStatus.FAILED)

    # -- invariants ------------------------------------------------------------------------------------

    @invariant()
    def ledger_and_model_agree(self) -> None:
        report = self.run(ledger.audit(self.conn))
        assert report.violations == [], [str(v) for v in report.violations]
        assert report.held == sum(j.cost for j in self.jobs.values() if j.status in LIVE)
        assert report.escrow == report.held
        assert report.granted == sum(GRANTS)
        assert report.revenue == sum(j.cost for j in self.jobs.values() if j.status is JobStatus.COMPLETED)
        balances = [self.run(ledger.balance(self.conn, caller_id)) for caller_id in self.caller_ids]
        assert balances == self.balances
        cursor = self.run(self.conn.execute("SELECT job_id, status, attempts, fencing_token FROM service_jobs"))
        rows = self.run(cursor.fetchall())
        assert {r[0]: (JobStatus(r[1]), r[2], r[3]) for r in rows} == {
            j.job_id: (j.status, j.attempts, j.token) for j in self.jobs.values()
        }


def test_jobs_and_ledger_against_a_model(db_url: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(psycopg.AsyncConnection.connect(db_url, autocommit=True))
        PaidJobsMachine.loop = loop
        PaidJobsMachine.conn = conn
        PaidJobsMachine.services = registry()
        run_state_machine_as_test(
            PaidJobsMachine,
            settings=settings(
                max_examples=int(os.environ.get("PAID_MODEL_EXAMPLES", "30")),
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
        loop.run_until_complete(conn.close())
    finally:
        loop.close()
