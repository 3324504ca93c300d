"""The job loop: claim pending jobs, run their handlers, end each one exactly once.

Jobs are the second user of the one claim primitive (:mod:`reconciler.claims`): a batch of pending
jobs is claimed in one statement (``SKIP LOCKED``, a fencing token bumped, an attempt counted,
the deadline clock started by the first claim), and the worker renews the lease of every job it
holds in the background while the handlers run, whether or not they report progress. The lease
is only about liveness; the job's deadline and the fencing token are separate.

Every job ends in the ledger's one termination transaction (guarded status change + settlement,
``paid_terminate``); a guard that matches nothing (the job was cancelled, timed out or re-claimed
meanwhile) changes nothing, so a late worker is a no-op. The worker's own ends are written in
batches (:mod:`reconciler.jobs.completer`): one statement and one commit for every job that
finished in the same turn of the event loop.

How each way of ending is decided:

=====================  ==========================================================================
handler returns        ``completed`` (result checked against the output model), captured
handler raises         ``failed`` (``JobFailed``'s code, else ``handler_failed``), refunded
deadline passes        ``timed_out``, refunded; the handler's task is cancelled. The worker
                       enforces its own jobs' deadlines; the sweep catches the rest (any replica)
job ends elsewhere     (cancelled, timed out by a sweep, re-claimed) the next renewal or the
                       ``paid_jobs_done`` NOTIFY stops the handler; nothing is written
worker dies            its leases lapse; the sweep re-queues a job whose handler is ``idempotent``
                       and has attempts left, and fails (refunds) every other, proxies included:
                       a proxy call is never re-sent
SIGTERM                claims not started are handed back at once; started handlers get
                       ``shutdown_grace`` seconds, then are stopped and treated as a dead
                       worker's (re-queued if idempotent, else failed and refunded)
=====================  ==========================================================================

"Refunding until convergence" is literal: each tick also settles any terminal job whose
settlement is missing (:func:`~desired_state.services.termination.settle_unsettled`), and runs
the handlers' own sweeps (a refunded ``agents.provision`` tears its instance down).

NOTIFY wakes the loop (``paid_jobs`` on admission) and stops handlers early (``paid_jobs_done``
on any termination, a cancellation included); the periodic tick is the correctness path, since a
notification is lost while the listener reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed

from desired_state.services import ledger, termination, work
from desired_state.services import queries as job_queries
from desired_state.services.definitions import InputError, ServiceRegistry, UnknownService
from desired_state.services.ledger import AuditReport
from desired_state.services.termination import JobError
from desired_state.services.vocabulary import (
    DONE_CHANNEL,
    WAKE_CHANNEL,
    Clock,
    JobErrorCode,
    JobStatus,
    TransferKind,
    system_clock,
)
from reconciler.claims import ClaimStatements, Leases, LeaseSettings
from reconciler.jobs import queries
from reconciler.jobs.completer import Completer
from reconciler.jobs.handlers import HandlerRegistry, JobCancelled, JobContext, JobFailed
from reconciler.listen import listen_forever
from reconciler.logs import first_line
from reconciler.metrics import LIVE_JOB_STATUSES, Metrics

log = logging.getLogger(__name__)

JOB_CLAIMS = ClaimStatements(
    table="jobs",
    key="job_id",
    claim=job_queries.CLAIM_JOBS,
    renew=queries.RENEW_JOB_LEASES,
    release=queries.RELEASE_JOB_CLAIMS,
    fence=queries.CHECK_JOB_FENCE,
)


@dataclass(frozen=True)
class JobSettings:
    """Size and timing of the job loop (seconds unless it says otherwise)."""

    concurrency: int = 512
    """Handlers running at once in one process (coroutines: mostly waiting). Twice the claim batch, so
    the next batch is claimed while one runs and its ends are written."""
    batch_size: int = 256
    """Most jobs claimed by one statement."""
    tick_seconds: float = 1.0
    """Sweeps (deadlines, lapsed leases, unsettled jobs, handler sweeps) run at least this often."""
    sweep_limit: int = 500
    """Rows one sweep handles per tick."""
    requeue_delay: float = 1.0
    """A lapsed idempotent job runs again after this pause."""
    shutdown_grace: float = 10.0
    """On SIGTERM, started handlers get this long to finish before they are stopped."""
    gauge_seconds: float = 5.0
    """The job gauges (live jobs, oldest running, transfers by kind) are read this often."""
    audit_seconds: float = 30.0
    """The ledger audit (escrow balance, violations gauge) runs this often."""


@dataclass(frozen=True)
class JobOutcome:
    """What one run of one job came to (for tests, the demo and the metrics)."""

    job_id: UUID
    service_id: str
    status: str  # the terminal status written, or: lost | requeued
    changed: bool


class JobRunner:
    """Runs the job loop in one process; safe to run in many processes at once."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        registry: ServiceRegistry,
        handlers: HandlerRegistry,
        metrics: Metrics,
        *,
        owner: str,
        leases: LeaseSettings,
        settings: JobSettings | None = None,
        clock: Clock = system_clock,
        database_url: str | None = None,
    ) -> None:
        self._pool = pool
        self.registry = registry
        self.handlers = handlers
        self._metrics = metrics
        self.settings = settings or JobSettings()
        self.clock = clock
        self._database_url = database_url
        # Only services this process can run are claimed: another replica (a newer version) may.
        self.services = [definition.id for definition in registry if handlers.job(definition.id) is not None]
        self.leases = Leases(
            pool,
            JOB_CLAIMS,
            owner=owner,
            settings=leases,
            on_lost=self._lost,
            params=lambda: {"now": self.clock(), "services": self.services},
        )
        # Each running claim's context and its stop signal: a bare future, which asyncio.wait takes
        # as it is (an Event would need a waiter task per job).
        self._running: dict[tuple[Hashable, int], tuple[JobContext | None, asyncio.Future[None]]] = {}
        self._running_tokens: dict[Hashable, set[int]] = {}  # job -> its running claims (a NOTIFY names the job)
        self._tasks: set[asyncio.Task[JobOutcome | None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self.outcomes: list[JobOutcome] = []
        self.completer = Completer(pool, lambda: self.clock())
        metrics.preinitialise_jobs(definition.id for definition in registry)

    # -- the loop ---------------------------------------------------------------------------------

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Sweep and claim every tick and on NOTIFY until ``stop``; then hand back and wind down."""
        listener = asyncio.create_task(self._listen(stop)) if self._database_url else None
        try:
            async with self.leases.renewing():
                next_sweep = next_gauges = next_audit = 0.0
                while not stop.is_set():
                    try:
                        if time.monotonic() >= next_sweep:
                            await self.sweep()
                            next_sweep = time.monotonic() + self.settings.tick_seconds
                        await self.fill()
                        if time.monotonic() >= next_gauges:
                            next_gauges = time.monotonic() + self.settings.gauge_seconds
                            await self.refresh_gauges()
                        if time.monotonic() >= next_audit:
                            next_audit = time.monotonic() + self.settings.audit_seconds
                            await self.refresh_audit()
                    except (psycopg.OperationalError, psycopg.InterfaceError, PoolClosed) as exc:
                        log.error("database unavailable, the job loop retries next tick: %s", first_line(exc))
                        next_sweep = time.monotonic() + self.settings.tick_seconds
                    except Exception:
                        log.exception("job loop tick failed")
                        next_sweep = time.monotonic() + self.settings.tick_seconds
                    await self._wait_for_work(stop, max(0.0, next_sweep - time.monotonic()))
                await self.shut_down()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def drain(self, within: float = 60.0) -> list[JobOutcome]:
        """Run until no job is pending or running (or ``within`` seconds); for tests, the demo, the CLI."""
        deadline = time.monotonic() + within
        first = len(self.outcomes)
        next_sweep = 0.0
        async with self.leases.renewing():
            while time.monotonic() < deadline:
                if time.monotonic() >= next_sweep:
                    await self.sweep()
                    next_sweep = time.monotonic() + self.settings.tick_seconds
                await self.fill()
                if not self._tasks and not await self._live_jobs():
                    break
                await self._wait_for_work(None, min(self.settings.tick_seconds, 0.05))
        return self.outcomes[first:]

    async def fill(self) -> list[work.ClaimedJob]:
        """Claim as many due jobs as there are free slots, and start them."""
        if self._stopping:
            return []
        free = min(self.settings.batch_size, self.settings.concurrency - len(self._tasks))
        claims = await self.claim(free)
        for claim in claims:
            task = asyncio.create_task(self.run_one(claim), name=f"job-{claim.job_id}")
            self._tasks.add(task)
            task.add_done_callback(self._finished)
        return claims

    async def claim(self, limit: int) -> list[work.ClaimedJob]:
        """Claim up to ``limit`` due jobs (held, not started)."""
        if not self.services:
            return []
        rows = await self.leases.claim(limit)
        return [work.ClaimedJob(**row) for row in rows]

    async def shut_down(self) -> None:
        """Hand back unstarted claims at once; give started handlers the grace, then stop them."""
        self._stopping = True
        try:
            await self.leases.release_unstarted()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.warning("could not hand back unstarted job claims (they lapse instead): %s", first_line(exc))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_grace)
        for context, stopped in self._running.values():
            if context is not None:
                context.stopped = True
            _signal(stopped)
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        self._stopping = False

    def _finished(self, task: asyncio.Task[JobOutcome | None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a slot is free
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("a job run failed: %s", first_line(error))
            return
        outcome = task.result()
        if outcome is not None:
            self.outcomes.append(outcome)
            del self.outcomes[: max(0, len(self.outcomes) - 10_000)]

    async def _wait_for_work(self, stop: asyncio.Event | None, seconds: float) -> None:
        waiters = [asyncio.create_task(self._wake.wait())]
        if stop is not None:
            waiters.append(asyncio.create_task(stop.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            self._wake.clear()

    async def _live_jobs(self) -> bool:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(queries.LIVE_JOBS)).fetchone()
        return row is not None

    # -- one job ----------------------------------------------------------------------------------

    async def run_one(self, claim: work.ClaimedJob) -> JobOutcome | None:
        """Run one claimed job to its end; None if the claim was handed back before it started."""
        key = (claim.job_id, claim.fencing_token)
        if not self.leases.start(*key):
            return None
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[key] = (None, stopped)
        self._running_tokens.setdefault(claim.job_id, set()).add(claim.fencing_token)
        started = time.monotonic()
        try:
            outcome = await self._run(claim, stopped)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # The database went away: the lease lapses and the sweep decides (re-run or refund).
            log.error("job %s could not be ended: %s", claim.job_id, first_line(exc))
            return None
        finally:
            self._running.pop(key, None)
            tokens = self._running_tokens.get(claim.job_id, set())
            tokens.discard(claim.fencing_token)
            if not tokens:
                self._running_tokens.pop(claim.job_id, None)
            self.leases.done(*key)
        if outcome.changed:
            self._metrics.job_seconds.labels(claim.service_id).observe(time.monotonic() - started)
        return outcome

    async def _run(self, claim: work.ClaimedJob, stopped: asyncio.Future[None]) -> JobOutcome:
        try:
            definition = self.registry.get(claim.service_id)
        except UnknownService:
            return await self._fail(claim, JobErrorCode.SERVICE_UNAVAILABLE, f"{claim.service_id} is not offered here")
        handler = self.handlers.job(claim.service_id)
        if handler is None:
            return await self._fail(claim, JobErrorCode.SERVICE_UNAVAILABLE, f"no handler for {claim.service_id}")
        try:
            data = definition.validate_input(claim.input)
        except InputError as exc:
            return await self._fail(claim, JobErrorCode.INVALID_INPUT, str(exc))
        context = JobContext(
            job_id=claim.job_id,
            token=claim.fencing_token,
            service=definition,
            caller_id=claim.caller_id,
            input=data,
            attempt=claim.attempts,
            deadline=claim.deadline,
            pool=self._pool,
            _write_progress=lambda job, pct, note: self._write_progress(job, claim, pct, note),
            _fence=lambda conn: self._fence(conn, claim),
        )
        self._running[(claim.job_id, claim.fencing_token)] = (context, stopped)
        remaining = (claim.deadline - self.clock()).total_seconds()
        running = asyncio.create_task(handler(context), name=f"handler-{claim.service_id}")
        waiting: set[asyncio.Future[Any]] = {running, stopped}
        await asyncio.wait(waiting, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            context.stopped = True
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # it is being stopped: any end will do
                await running
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError  # this run itself is being cancelled: write nothing
            if stopped.done():
                if self._stopping:
                    return await self._interrupted(claim)
                return JobOutcome(claim.job_id, claim.service_id, "lost", changed=False)
            return await self._end(
                claim,
                JobStatus.TIMED_OUT,
                error=JobError(JobErrorCode.TIMED_OUT, "the job did not finish before its deadline"),
            )
        error = running.exception() if not running.cancelled() else JobCancelled(str(claim.job_id))
        if isinstance(error, JobCancelled):
            return JobOutcome(claim.job_id, claim.service_id, "lost", changed=False)
        if isinstance(error, JobFailed):
            return await self._fail(claim, error.code, error.message)
        if error is not None:
            log.warning("the handler of %s raised %s", claim.service_id, type(error).__name__, exc_info=error)
            return await self._fail(claim, JobErrorCode.HANDLER_FAILED, f"the handler raised {type(error).__name__}")
        try:
            result = definition.validate_output(running.result())
        except InputError as exc:
            return await self._fail(claim, JobErrorCode.HANDLER_FAILED, f"the handler's result is invalid: {exc}")
        return await self._end(claim, JobStatus.COMPLETED, result=result)

    async def _write_progress(self, context: JobContext, claim: work.ClaimedJob, pct: float, note: str | None) -> None:
        async with self._pool.connection() as conn:
            ours = await work.report_progress(
                conn, claim, now=self.clock(), pct=pct, note=note, lease_seconds=self.leases.settings.lease_seconds
            )
        if not ours:
            context.stopped = True
            raise JobCancelled(str(claim.job_id))

    async def _fence(self, conn: AsyncConnection[Any], claim: work.ClaimedJob) -> None:
        await self.leases.check_fence(conn, claim.job_id, claim.fencing_token)

    async def _fail(self, claim: work.ClaimedJob, code: JobErrorCode, message: str) -> JobOutcome:
        return await self._end(claim, JobStatus.FAILED, error=JobError(code, message))

    async def _end(
        self,
        claim: work.ClaimedJob,
        status: JobStatus,
        *,
        result: Mapping[str, Any] | None = None,
        error: JobError | None = None,
    ) -> JobOutcome:
        """The termination transaction, guarded by our claim (still running, still our token)."""
        ended = await self.completer.end(claim.job_id, claim.fencing_token, status, result=result, error=error)
        if ended.changed:
            self._count(claim.service_id, status)
        return JobOutcome(claim.job_id, claim.service_id, status.value if ended.changed else "lost", ended.changed)

    async def _interrupted(self, claim: work.ClaimedJob) -> JobOutcome:
        """Our own handler stopped by a shutdown: what the sweep would do for a dead worker, now."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                queries.REQUEUE_INTERRUPTED,
                {"job_id": claim.job_id, "token": claim.fencing_token, "now": self.clock()},
            )
            requeued = await cur.fetchone() is not None
        if requeued:
            return JobOutcome(claim.job_id, claim.service_id, "requeued", True)
        return await self._fail(claim, JobErrorCode.WORKER_LOST, "its worker shut down before it finished")

    def _lost(self, key: Hashable, token: int) -> None:
        """The job is no longer ours (ended elsewhere, or re-claimed): stop its handler, write nothing."""
        running = self._running.get((key, token))
        if running is not None:
            context, stopped = running
            if context is not None:
                context.stopped = True
            _signal(stopped)

    def _count(self, service_id: str, status: JobStatus) -> None:
        self._metrics.jobs_finished.labels(service_id, status.value).inc()

    # -- sweeps -----------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """The level-triggered corrections; each is idempotent and safe on every replica at once."""
        now = self.clock()
        limit = self.settings.sweep_limit
        async with self._pool.connection() as conn:
            for job_id in await termination.time_out_overdue(conn, now=now, limit=limit):
                self._lost_everywhere(job_id)
            await termination.recover_lapsed(
                conn, now=now, retry_delay=timedelta(seconds=self.settings.requeue_delay), limit=limit
            )
            await termination.settle_unsettled(conn, now=now, limit=limit)
        for service_id, handler_sweep in self.handlers.sweeps().items():
            try:
                await handler_sweep(self._pool)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except Exception:
                log.exception("the sweep of %s failed", service_id)

    def _lost_everywhere(self, job_id: UUID) -> None:
        for token in list(self._running_tokens.get(job_id, ())):
            self._lost(job_id, token)

    # -- gauges -----------------------------------------------------------------------------------

    async def refresh_gauges(self) -> None:
        """Live jobs by service and status, the oldest running job, transfers by kind (all replicas agree)."""
        async with self._pool.connection() as conn:
            live = await (await conn.execute(queries.LIVE_JOBS)).fetchall()
            oldest = await (await conn.execute(queries.OLDEST_RUNNING, {"now": self.clock()})).fetchone()
            transfers = dict(await (await conn.execute(queries.TRANSFERS_BY_KIND)).fetchall())
        counts = {(service, status): int(n) for service, status, n in live}
        for definition in self.registry:
            for status in LIVE_JOB_STATUSES:
                self._metrics.jobs.labels(definition.id, status).set(counts.get((definition.id, status), 0))
        self._metrics.oldest_running_job_seconds.set(float(oldest[0]) if oldest else 0.0)
        for kind in TransferKind:
            self._metrics.ledger_transfers.labels(kind.value).set(transfers.get(kind.value, 0))

    async def refresh_audit(self) -> AuditReport:
        """Run the ledger audit: the escrow balance and the violations gauge (which must stay 0)."""
        async with self._pool.connection() as conn:
            report = await ledger.audit(conn)
        self._metrics.escrow_credits.set(report.escrow)
        for invariant, count in report.by_invariant().items():
            self._metrics.ledger_violations.labels(invariant).set(count)
        if not report.clean:
            log.error("the ledger audit found %d violations: %s", len(report.violations), report.violations[0])
        return report

    # -- notifications ----------------------------------------------------------------------------

    async def _listen(self, stop: asyncio.Event) -> None:
        assert self._database_url is not None
        await listen_forever(
            self._database_url,
            [WAKE_CHANNEL, DONE_CHANNEL],
            stop,
            on_connect=self._wake.set,
            on_notice=self._on_notice,
            name="job",
        )

    def _on_notice(self, notice: psycopg.Notify) -> None:
        if notice.channel == WAKE_CHANNEL:
            # New or due work: claim now.
            self._wake.set()
        else:
            # A job ended elsewhere (cancelled, terminated): stop its handler here if it runs.
            with contextlib.suppress(ValueError):
                self._lost_everywhere(UUID(notice.payload))


def _signal(stopped: asyncio.Future[None]) -> None:
    if not stopped.done():
        stopped.set_result(None)
