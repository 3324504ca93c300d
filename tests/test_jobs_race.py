"""Cancel vs complete vs time out, on one job at once, over real concurrent connections.

Each round admits a job, claims it through the loop's claim primitive, then fires the three
terminations together, each on its own connection: the worker's completion (guarded by its
fencing token), the caller's cancellation, and the deadline sweep with the clock past the
deadline. Exactly one may win; the job ends in exactly one terminal state with exactly one
settlement, matching it, and the ledger audit stays clean.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from desired_state.services import termination, work
from desired_state.services.vocabulary import JobStatus
from reconciler.claims import LeaseSettings
from reconciler.jobs.runner import JobRunner
from reconciler.metrics import Metrics
from tests.jobs_support import QUICK_TIMEOUT, Sleeper, admit, assert_audit_clean, handlers, new_caller, registry
from tests.paid_support import FakeClock

ROUNDS = 100

Conn = psycopg.AsyncConnection[Any]


async def test_cancel_complete_and_timeout_race_one_winner_one_settlement(db_url: str, conn: Conn) -> None:
    clock = FakeClock(datetime.now(UTC))  # moved to each admission (which uses the real one)
    caller = await new_caller(conn, credits=ROUNDS * 2)
    rng = random.Random(12)
    connections = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(3)]
    async with AsyncConnectionPool(db_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        runner = JobRunner(
            pool,
            registry(),
            handlers(None, Sleeper()),
            Metrics(CollectorRegistry()),
            owner="racer",
            leases=LeaseSettings(lease_seconds=60),
            clock=clock,
        )
        winners: dict[str, int] = {}
        try:
            for _ in range(ROUNDS):
                job_id = await admit(conn, caller, QUICK_TIMEOUT, {"n": 0})
                clock.now = datetime.now(UTC)
                [claim] = await runner.claim(1)
                assert claim.job_id == job_id
                late = clock() + (claim.deadline - clock()) * 2

                async def complete(c: Conn, claim: work.ClaimedJob = claim) -> bool:
                    await asyncio.sleep(rng.uniform(0, 0.003))
                    ended = await work.finish(c, claim, now=clock(), result={"ok": True})
                    return ended.changed

                async def cancel(c: Conn, job_id: Any = job_id) -> bool:
                    await asyncio.sleep(rng.uniform(0, 0.003))
                    return (await termination.cancel(c, job_id, now=clock())).refunded

                async def time_out(c: Conn, job_id: Any = job_id, late: Any = late) -> bool:
                    await asyncio.sleep(rng.uniform(0, 0.003))
                    return job_id in await termination.time_out_overdue(c, now=late)

                results = await asyncio.gather(
                    complete(connections[0]), cancel(connections[1]), time_out(connections[2])
                )
                assert sum(results) == 1, results
                winner = ("completed", "cancelled", "timed_out")[results.index(True)]
                winners[winner] = winners.get(winner, 0) + 1
                runner.leases.done(claim.job_id, claim.fencing_token)

                cur = await conn.execute("SELECT status, settlement FROM service_jobs WHERE job_id = %s", (job_id,))
                status, settlement = await cur.fetchone() or (None, None)
                assert status == winner
                cur = await conn.execute(
                    "SELECT kind FROM credit_transfers WHERE job_id = %s AND kind <> 'charge'", (job_id,)
                )
                settled = [row[0] for row in await cur.fetchall()]
                assert settled == ["capture" if status == JobStatus.COMPLETED else "refund"] == [settlement]
        finally:
            for connection in connections:
                await connection.close()
    assert sum(winners.values()) == ROUNDS
    assert len(winners) >= 2, f"the race was never close: {winners}"
    report = await assert_audit_clean(conn)
    assert report.escrow == 0
