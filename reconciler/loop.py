"""The loop around the reconciler: when passes run.

Two triggers, one pass:

* **APScheduler** runs :meth:`Worker.tick` every ``tick_seconds``. A tick claims due rows and
  reconciles them, batch after batch, until nothing is due; rows come due through their durable
  ``next_attempt_at`` (retries, deferrals, periodic polls), so the scheduler itself holds no state
  and a restarted process simply carries on.
* **LISTEN/NOTIFY**: a trigger on ``desired_instances`` sends ``reconciler_wake`` whenever a
  caller changes a row; the listener pulls the next tick forward to now, so new work starts within
  milliseconds instead of waiting for the interval.

The tick never overlaps itself (``max_instances=1``). A database outage is logged and retried
on the next tick; the listener reconnects with a capped backoff.

While passes run, the worker renews the leases of every claim it holds in the background
(:mod:`reconciler.claims`), so the lease can be short: a killed replica's rows come back within
``lease_seconds``, and a slow pass is never overtaken. On SIGTERM the worker claims nothing more,
hands back at once the claims whose pass has not started, and lets the started ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from psycopg_pool import AsyncConnectionPool

from desired_state.vocabulary import PHASES
from providers.base import ResourceKind
from reconciler import queries
from reconciler.engine import Claim, Outcome, Reconciler
from reconciler.listen import listen_forever
from reconciler.logs import first_line
from reconciler.metrics import NOT_CONVERGED_REASONS, PROVIDERS, Metrics
from reconciler.observe import Observer
from reconciler.status import phase_counts

log = logging.getLogger(__name__)

WAKE_CHANNEL = "reconciler_wake"


class Worker:
    """Runs reconcile passes: on a schedule, on NOTIFY, or on demand (``drain``)."""

    def __init__(
        self,
        reconciler: Reconciler,
        pool: AsyncConnectionPool[Any],
        metrics: Metrics,
        *,
        database_url: str,
        tick_seconds: float = 1.0,
        on_outcome: Callable[[Outcome], None] | None = None,
        observer: Observer | None = None,
        observe_seconds: float = 30.0,
        gc_every: int = 10,
    ) -> None:
        self.reconciler = reconciler
        self._pool = pool
        self._metrics = metrics
        self._database_url = database_url
        self._tick_seconds = tick_seconds
        self._on_outcome = on_outcome
        self._observer = observer
        self._observe_seconds = observe_seconds
        self._gc_every = gc_every
        self._cycles = 0
        self._scheduler: AsyncIOScheduler | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._last_progress: float | None = None

    def seconds_since_progress(self) -> float | None:
        """Since the loop last ended a tick or a pass, whatever their outcome (None: not yet): its
        liveness, for the API's ``/readyz`` (a long drain still finishes passes)."""
        return None if self._last_progress is None else time.monotonic() - self._last_progress

    async def drain(self) -> list[Outcome]:
        """Reconcile until nothing is due right now (or the worker is stopping).

        A pipeline, not batches: up to ``batch_size`` instances are reconciled at once and more
        are claimed as soon as a quarter of the slots free up, so one slow instance never holds
        back the claim that would start a new one.
        """
        limit = max(1, self.reconciler.settings.batch_size)
        refill = max(1, limit // 4)
        in_flight: set[asyncio.Task[Outcome | None]] = set()
        outcomes: list[Outcome] = []
        failures: list[BaseException] = []
        nothing_due = False
        async with self.reconciler.leases.renewing():
            try:
                while True:
                    free = limit - len(in_flight)
                    if not nothing_due and not self._stopping and free >= (refill if in_flight else 1):
                        claims = await self.reconciler.claim(free)
                        nothing_due = not claims
                        in_flight.update(asyncio.create_task(self._pass(c)) for c in claims)
                    if not in_flight:
                        break
                    finished, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    nothing_due = False  # a finished pass may have made room, or work may have arrived
                    for task in finished:
                        error = task.exception()
                        if error is not None:
                            failures.append(error)
                            continue
                        outcome = task.result()
                        if outcome is None:
                            continue  # handed back before it started (shutting down)
                        outcomes.append(outcome)
                        self._last_progress = time.monotonic()
                        if self._on_outcome is not None:
                            self._on_outcome(outcome)
            finally:
                if in_flight:  # a claim failed (the database went away): let the passes in flight end
                    await asyncio.wait(in_flight)
        if failures:
            # Usually the database went away mid-pass. The claims simply expire; every write was
            # fenced and every create had its intent committed first, so the next claim resumes.
            raise failures[0]
        return outcomes

    async def _pass(self, claim: Claim) -> Outcome | None:
        leases = self.reconciler.leases
        if not leases.start(claim.instance_id, claim.token):
            return None
        try:
            return await self.reconciler.reconcile(claim)
        finally:
            leases.done(claim.instance_id, claim.token)

    async def release_unstarted(self) -> None:
        """Stop claiming and hand back the claims not started yet (SIGTERM)."""
        self._stopping = True
        try:
            await self.reconciler.leases.release_unstarted()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.warning("could not hand back unstarted claims (they expire instead): %s", first_line(exc))

    async def tick(self) -> None:
        if self._stopping:
            return
        self._idle.clear()
        try:
            await self.drain()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.error(
                "database unavailable, will retry next tick: %s",
                str(exc).splitlines()[0] if str(exc) else exc,
            )
        except Exception:
            log.exception("reconcile tick failed")
        finally:
            self._last_progress = time.monotonic()
            self._idle.set()

    async def observe(self) -> None:
        """One batched observation cycle (every ``gc_every``-th also collects garbage)."""
        if self._observer is None:
            return
        self._cycles += 1
        try:
            report = await self._observer.cycle(collect_garbage=self._cycles % self._gc_every == 0)
        except asyncio.CancelledError:
            # Shutting down: a cycle only reads and flags, so the next one (any replica's) redoes it.
            log.info("observation cycle interrupted by shutdown")
            return
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.error("database unavailable, observation skipped: %s", first_line(exc))
            return
        except Exception:
            log.exception("observation cycle failed")
            return
        if report is not None and (report.drift or report.collected or report.failed):
            log.info(
                "observation cycle",
                extra={
                    "drift": len(report.drift),
                    "collected": len(report.collected),
                    "failed": report.failed,
                },
            )
        if report is not None and report.drift:
            self.wake()

    async def refresh_gauges(self) -> None:
        """Database-wide gauges, read from the tables every replica shares (any replica may serve them)."""
        try:
            async with self._pool.connection() as conn:
                due, oldest = await (await conn.execute(queries.QUEUE_STATS)).fetchone() or (0, 0)
                phases = await phase_counts(conn)
                reasons = dict(await (await conn.execute(queries.NOT_CONVERGED)).fetchall())
                circuits = dict(await (await conn.execute(queries.OPEN_CIRCUITS)).fetchall())
                orphans = dict(await (await conn.execute(queries.ORPHAN_CANDIDATES)).fetchall())
        except (psycopg.OperationalError, psycopg.InterfaceError):
            return  # the tick reports the outage
        self._metrics.queue_due.set(due)
        self._metrics.queue_oldest_due_seconds.set(float(oldest))
        for phase in PHASES:
            self._metrics.instances.labels(phase.value).set(phases.get(phase, 0))
        for reason in NOT_CONVERGED_REASONS:
            self._metrics.not_converged.labels(reason).set(reasons.get(reason, 0))
        for provider in PROVIDERS:
            self._metrics.circuit_open.labels(provider).set(1 if circuits.get(provider) else 0)
        for kind in ResourceKind:
            self._metrics.orphans_seen.labels(kind.value).set(orphans.get(kind.value, 0))

    def wake(self) -> None:
        """Run the next tick now (safe to call from the event loop at any time)."""
        if self._scheduler is not None and self._scheduler.running:
            job = self._scheduler.get_job("tick")
            if job is not None:
                job.modify(next_run_time=datetime.now(UTC))

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick on schedule and on NOTIFY until ``stop`` is set; then finish the running pass."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self._tick_seconds,
            id="tick",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
            misfire_grace_time=None,
        )
        scheduler.add_job(
            self.refresh_gauges,
            "interval",
            seconds=5,
            id="gauges",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        if self._observer is not None:
            scheduler.add_job(
                self.observe,
                "interval",
                seconds=self._observe_seconds,
                id="observe",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self._scheduler = scheduler
        scheduler.start()
        listener = asyncio.create_task(self._listen(stop))
        try:
            await stop.wait()
        finally:
            # Claim nothing more and let the passes in flight finish their writes (they are
            # fenced either way), then stop the scheduler, which cancels what still runs.
            await self.release_unstarted()
            scheduler.pause()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self._idle.wait()
            scheduler.shutdown(wait=False)
            self._stopping = False  # drain() on demand works again

    async def _listen(self, stop: asyncio.Event) -> None:
        await listen_forever(
            self._database_url,
            [WAKE_CHANNEL],
            stop,
            on_connect=self.wake,
            on_notice=lambda _: self.wake(),
            name="reconcile",
        )
