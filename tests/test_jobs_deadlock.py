"""The batch completer against a real deadlock: a rolled-back batch is written again, not lost.

A rival transaction locks the higher of two jobs, the completer's batch locks the lower and waits
for the higher, then the rival asks for the lower: Postgres breaks the cycle by rolling back the
completer's batch (its deadlock check fires first: the rival's is set later). Without a retry the
two jobs would be left to the lapsed-lease sweep, and a job that really completed would end failed
and refunded; with it both end completed, captured once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest

from desired_state.services.vocabulary import JobStatus
from tests.conftest import Sim
from tests.jobs_support import ONCE, Sleeper, admit, assert_audit_clean, job_row, job_runtime, new_caller, transfers

Conn = psycopg.AsyncConnection[Any]

LOCK_JOB = "SELECT job_id FROM service_jobs WHERE job_id = %s FOR UPDATE"
WAITING_TERMINATIONS = """
SELECT count(*) FROM pg_stat_activity
 WHERE wait_event_type = 'Lock' AND query LIKE '%%paid_terminate%%' AND pid <> pg_backend_pid()
"""


async def _until_a_termination_waits(conn: Conn, within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        row = await (await conn.execute(WAITING_TERMINATIONS)).fetchone()
        if row is not None and row[0] > 0:
            return
        assert loop.time() < deadline, "the completer's batch never waited for the rival's lock"
        await asyncio.sleep(0.02)


async def test_a_batch_rolled_back_by_a_deadlock_is_written_again(
    db_url: str, sim: Sim, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await new_caller(conn)
    for _ in range(2):
        await admit(conn, caller, ONCE, {"n": 0})
    async with job_runtime(db_url, sim, Sleeper()) as runtime:
        claims = sorted(await runtime.jobs.claim(10), key=lambda claim: claim.job_id)
        low, high = claims
        rival = await psycopg.AsyncConnection.connect(db_url)
        try:
            await rival.execute("SET deadlock_timeout = '30s'")  # the completer detects the cycle, and is its victim
            await rival.execute(LOCK_JOB, (high.job_id,))
            with caplog.at_level(logging.INFO, logger="reconciler.jobs.completer"):
                ending = asyncio.gather(
                    *(
                        runtime.jobs.completer.end(c.job_id, c.fencing_token, JobStatus.COMPLETED, result={"ok": 1})
                        for c in claims
                    )
                )
                await _until_a_termination_waits(conn)
                await rival.execute(LOCK_JOB, (low.job_id,))  # the cycle: Postgres rolls the batch back
                await rival.rollback()
                ends = await ending
        finally:
            await rival.close()
    assert any("rolled back (40P01)" in record.getMessage() for record in caplog.records)
    assert [end.changed for end in ends] == [True, True]
    for claim in claims:
        assert (await job_row(conn, claim.job_id))["status"] == "completed"
        assert await transfers(conn, claim.job_id) == ["capture", "charge"]
    await assert_audit_clean(conn)
