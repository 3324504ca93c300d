"""The job loop end to end, on a real Postgres: each way a job ends, exactly once, settled once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from desired_state.services import intake
from desired_state.services.builtin import DELAY_ECHO, ECHO
from desired_state.services.termination import cancel
from desired_state.services.vocabulary import JobStatus
from providers.simulated.server import serve_in_background
from reconciler.jobs.runner import JobSettings
from tests.conftest import Sim, simulated_runtime
from tests.jobs_support import (
    FAST_JOBS,
    JOB_ENGINE,
    ONCE,
    QUICK_TIMEOUT,
    RERUN,
    SLOW,
    Sleeper,
    admit,
    assert_audit_clean,
    handlers,
    job_row,
    job_runtime,
    new_caller,
    registry,
    transfers,
    wait_for,
)
from tests.paid_support import FakeClock
from tests.support import until

Conn = psycopg.AsyncConnection[Any]


async def test_delay_echo_completes_with_progress_and_captures(db_url: str, sim: Sim, conn: Conn) -> None:
    caller = await new_caller(conn)
    job_id = await admit(conn, caller, DELAY_ECHO, {"seconds": 1.5, "payload": {"hi": 1}})
    async with job_runtime(db_url, sim, Sleeper()) as runtime:
        [outcome] = await runtime.jobs.drain()
    assert outcome.status == "completed"
    row = await job_row(conn, job_id)
    assert row["status"] == "completed" and row["result"] == {"payload": {"hi": 1}, "seconds": 1.5}
    assert row["progress_pct"] == 1.0 and row["progress_note"] == "slept 1 s of 1.5 s"
    assert await transfers(conn, job_id) == ["capture", "charge"]
    await assert_audit_clean(conn)


async def test_a_failing_handler_fails_and_refunds(db_url: str, sim: Sim, conn: Conn) -> None:
    caller = await new_caller(conn, credits=5)
    job_id = await admit(conn, caller, DELAY_ECHO, {"seconds": 0, "fail": True})
    async with job_runtime(db_url, sim, Sleeper()) as runtime:
        await runtime.jobs.drain()
    row = await job_row(conn, job_id)
    assert (row["status"], row["error_code"]) == ("failed", "handler_failed")
    assert await transfers(conn, job_id) == ["charge", "refund"]
    balance = await (
        await conn.execute("SELECT balance FROM credit_accounts WHERE caller_id = %s", (caller,))
    ).fetchone()
    assert balance == (5,)
    await assert_audit_clean(conn)


async def test_a_deadline_times_out_refunds_and_stops_the_handler(db_url: str, sim: Sim, conn: Conn) -> None:
    caller = await new_caller(conn)
    job_id = await admit(conn, caller, QUICK_TIMEOUT, {"n": 30})
    sleeper = Sleeper()
    async with job_runtime(db_url, sim, sleeper) as runtime:
        started = time.monotonic()
        [outcome] = await runtime.jobs.drain()
        assert time.monotonic() - started < 5
    assert outcome.status == "timed_out"
    assert sleeper.cancelled == {job_id}
    row = await job_row(conn, job_id)
    assert (row["status"], row["error_code"]) == ("timed_out", "timed_out")
    assert await transfers(conn, job_id) == ["charge", "refund"]
    await assert_audit_clean(conn)


async def test_renewal_keeps_a_silent_slow_handler_from_being_re_claimed(db_url: str, sim: Sim, conn: Conn) -> None:
    # The handler says nothing for 5 s, over three leases of 1.5 s; a second worker is claiming
    # and sweeping all along. Only the background renewal keeps the job with its first worker.
    caller = await new_caller(conn)
    job_id = await admit(conn, caller, ONCE, {"n": 5})
    sleeper = Sleeper()
    async with job_runtime(db_url, sim, sleeper) as first, job_runtime(db_url, sim, sleeper) as second:
        outcomes = await asyncio.gather(first.jobs.drain(), second.jobs.drain())
    assert sleeper.runs == {job_id: 1}
    assert [o.status for run in outcomes for o in run] == ["completed"]
    row = await job_row(conn, job_id)
    assert (row["status"], row["attempts"], row["fencing_token"]) == ("completed", 1, 1)
    await assert_audit_clean(conn)


async def test_a_cancelled_job_stops_its_handler_and_is_refunded_once(db_url: str, sim: Sim, conn: Conn) -> None:
    caller = await new_caller(conn)
    job_id = await admit(conn, caller, SLOW, {"n": 20})
    sleeper = Sleeper()
    async with job_runtime(db_url, sim, sleeper) as runtime:
        stop = asyncio.Event()
        loop = asyncio.create_task(runtime.jobs.run_forever(stop))
        await wait_for(conn, job_id, {"running"})
        await asyncio.sleep(0.3)
        cancelled = await cancel(conn, job_id, now=runtime.jobs.clock())
        assert cancelled.refunded
        # The NOTIFY stops it well before any renewal.
        await until(lambda: job_id in sleeper.cancelled, 5, message="the handler of a cancelled job kept running")
        stop.set()
        await loop
    row = await job_row(conn, job_id)
    assert row["status"] == "cancelled"
    assert await transfers(conn, job_id) == ["charge", "refund"]
    await assert_audit_clean(conn)


async def test_a_dead_workers_jobs_rerun_if_idempotent_else_fail_and_refund(db_url: str, sim: Sim, conn: Conn) -> None:
    caller = await new_caller(conn)
    rerun = await admit(conn, caller, RERUN, {"n": 0.2})
    once = await admit(conn, caller, ONCE, {"n": 0.2})
    sleeper = Sleeper()
    async with job_runtime(db_url, sim, sleeper) as dead, job_runtime(db_url, sim, sleeper) as alive:
        claims = await dead.jobs.claim(10)  # claimed, then the worker "dies": never renewed, never run
        assert {c.job_id for c in claims} == {rerun, once}
        started = time.monotonic()
        await alive.jobs.drain()
        took = time.monotonic() - started
    assert took < 10
    rerun_row, once_row = await job_row(conn, rerun), await job_row(conn, once)
    assert (rerun_row["status"], rerun_row["attempts"]) == ("completed", 2)
    assert (once_row["status"], once_row["error_code"]) == ("failed", "worker_lost")
    assert await transfers(conn, once) == ["charge", "refund"]
    assert sleeper.runs == {rerun: 1}
    await assert_audit_clean(conn)


async def test_shutdown_hands_back_unstarted_claims_at_once(db_url: str, sim: Sim, conn: Conn) -> None:
    caller = await new_caller(conn)
    ids = [await admit(conn, caller, SLOW, {"n": 0.1}) for _ in range(3)]
    async with job_runtime(db_url, sim, Sleeper()) as runtime:
        claims = await runtime.jobs.claim(10)
        assert len(claims) == 3
        await runtime.jobs.shut_down()  # what SIGTERM does: none of them has started
    for job_id in ids:
        row = await job_row(conn, job_id)
        assert (row["status"], row["lease_owner"], row["attempts"], row["deadline"]) == ("pending", None, 0, None)
    async with job_runtime(db_url, sim, Sleeper()) as other:
        assert len(await other.jobs.drain()) == 3  # another worker starts them right away
    await assert_audit_clean(conn)


async def test_shutdown_requeues_a_started_idempotent_job_and_refunds_another(
    db_url: str, sim: Sim, conn: Conn
) -> None:
    caller = await new_caller(conn)
    rerun = await admit(conn, caller, RERUN, {"n": 30})
    once = await admit(conn, caller, ONCE, {"n": 30})
    sleeper = Sleeper()
    jobs = JobSettings(**{**FAST_JOBS.__dict__, "shutdown_grace": 0.2})
    async with job_runtime(db_url, sim, sleeper, jobs=jobs) as runtime:
        stop = asyncio.Event()
        loop = asyncio.create_task(runtime.jobs.run_forever(stop))
        await wait_for(conn, rerun, {"running"})
        await wait_for(conn, once, {"running"})
        await asyncio.sleep(0.2)
        stop.set()
        await loop
    assert sleeper.cancelled == {rerun, once}
    assert (await job_row(conn, rerun))["status"] == "pending"
    once_row = await job_row(conn, once)
    assert (once_row["status"], once_row["error_code"]) == ("failed", "worker_lost")
    await assert_audit_clean(conn)


async def test_a_job_the_process_cannot_run_is_left_for_one_that_can(db_url: str, sim: Sim, conn: Conn) -> None:
    caller = await new_caller(conn)
    job_id = await admit(conn, caller, SLOW, {"n": 0})
    async with job_runtime(db_url, sim, Sleeper()) as runtime:
        runtime.jobs.services = [DELAY_ECHO]  # an older replica: it has no handler for test.slow
        assert await runtime.jobs.claim(10) == []
    assert (await job_row(conn, job_id))["status"] == "pending"


async def test_a_proxy_call_whose_request_died_is_refunded_and_never_re_sent(db_url: str, sim: Sim, conn: Conn) -> None:
    # A proxy call is admitted running, leased to the request's process for the service's
    # timeout. That process dies before the upstream call ends: the loop (here with its clock past
    # that timeout) ends the call and refunds it; nothing calls the upstream again.
    calls: list[Any] = []

    async def upstream(request: Request) -> Response:
        calls.append(await request.json())
        return JSONResponse({"echo": calls[-1]})

    caller = await new_caller(conn)
    admission = await intake.admit(conn, registry(), caller, ECHO, {"a": 1}, lease_owner="api:a-dead-process")
    assert admission.status == "running"
    clock = FakeClock(datetime.now(UTC) + timedelta(seconds=60))
    app = Starlette(routes=[Route("/echo", upstream, methods=["POST"])])
    async with serve_in_background(app) as root:
        runtime = simulated_runtime(
            db_url,
            sim,
            JOB_ENGINE,
            jobs=FAST_JOBS,
            services=registry(),
            clock=clock,
            handlers=lambda http: handlers(http, Sleeper(), root),
        )
        async with runtime:
            await runtime.jobs.drain()
    row = await job_row(conn, admission.job_id)
    assert row["status"] in ("timed_out", "failed") and row["settlement"] == "refund"
    assert await transfers(conn, admission.job_id) == ["charge", "refund"]
    assert calls == []
    await assert_audit_clean(conn)


async def test_ends_written_together_keep_each_jobs_guard(db_url: str, sim: Sim, conn: Conn) -> None:
    # Five handlers finish in the same turn: their ends are written in one batch, yet each is
    # guarded by its own claim: the one re-claimed meanwhile by another worker changes nothing.
    caller = await new_caller(conn)
    ids = [await admit(conn, caller, ONCE, {"n": 0}) for _ in range(5)]
    async with job_runtime(db_url, sim, Sleeper()) as first, job_runtime(db_url, sim, Sleeper()) as second:
        claims = await first.jobs.claim(10)
        stale = claims[0]
        await conn.execute(
            "UPDATE service_jobs SET status = 'pending', lease_expires_at = NULL WHERE job_id = %s", (stale.job_id,)
        )
        [fresh] = await second.jobs.claim(10)
        assert fresh.job_id == stale.job_id and fresh.fencing_token == stale.fencing_token + 1
        ends = await asyncio.gather(
            *(
                first.jobs.completer.end(c.job_id, c.fencing_token, JobStatus.COMPLETED, result={"ok": 1})
                for c in claims
            )
        )
    assert [end.changed for end in ends] == [False, True, True, True, True]
    assert ends[0].status is JobStatus.RUNNING
    statuses = {job_id: (await job_row(conn, job_id))["status"] for job_id in ids}
    assert statuses[stale.job_id] == "running" and sorted(statuses.values()).count("completed") == 4
