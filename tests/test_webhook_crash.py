"""A sender killed with SIGKILL at any point loses no delivery and invents none.

Real processes: ``reconciler webhooks deliver`` is started and killed again and again while it
posts to a slow loopback receiver; one kill lands while a request is held open by the receiver
(posted, not yet recorded). Afterwards every delivery is ``delivered``, and a receiver that
deduplicates on ``webhook-id`` (as the specification asks) has seen exactly the events owed: one
per job invoked with a URL, none for the others, each verifying.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
from standardwebhooks.webhooks import Webhook

from desired_state.services import callers, intake, termination
from desired_state.services.builtin import builtin_definitions
from desired_state.services.definitions import ServiceRegistry
from desired_state.services.termination import JobError
from desired_state.services.vocabulary import JobErrorCode, JobStatus
from desired_state.webhooks import webhook_id
from reconciler.webhooks.signing import new_secret
from tests.support import until
from tests.webhook_receiver import Receiver, running_receiver

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import cli; cli.main()"]
SECRET = new_secret()
JOBS = 180
ENDINGS = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT)


async def _owed_events(db_url: str, receiver: Receiver) -> set[str]:
    """Admit and end JOBS jobs (every third without a URL); the ids of the deliveries owed."""
    registry = ServiceRegistry(builtin_definitions())
    owed = set()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        caller = (await callers.create_caller(conn, "ada@example.com")).caller
        for n in range(JOBS):
            url = None if n % 3 == 0 else f"{receiver.url}?n={n}"
            admitted = await intake.admit(
                conn, registry, caller.caller_id, "agents.destroy", {"instanceId": f"i{n}"}, webhook_url=url
            )
            status = ENDINGS[n % len(ENDINGS)]
            error = None if status is JobStatus.COMPLETED else JobError(JobErrorCode.HANDLER_FAILED, "x")
            ended = await termination.terminate(
                conn,
                admitted.job_id,
                status,
                now=termination_now(),
                token=None,
                result={"n": n} if error is None else None,
                error=error,
            )
            assert ended.changed
            if url is not None:
                owed.add(webhook_id(admitted.job_id, status.value))
    return owed


def termination_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def _start(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI,
        "webhooks",
        "deliver",
        "--lease-seconds",
        "1",
        "--tick",
        "0.05",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def _kill(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()


async def _new_request(receiver: Receiver, seen: int, timeout: float = 30) -> None:
    await until(lambda: len(receiver.received) > seen, timeout, interval=0.01, message="the sender posted nothing")


async def _undelivered(db_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_sigkill_at_any_point_delivers_exactly_the_events_owed(db_url: str) -> None:
    env = {
        **os.environ,
        "SERVICE_DATABASE_URL": db_url,
        "PYTHONPATH": str(ROOT),
        "SERVICE_WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_PRIVATE": "1",
    }
    rng = random.Random(11)
    async with running_receiver() as receiver:
        owed = await _owed_events(db_url, receiver)  # committed before any sender runs
        assert len(owed) == JOBS - JOBS // 3

        # 1. A kill while a request is held open: posted, never recorded.
        receiver.hold = asyncio.Event()
        process = await _start(env)
        await _new_request(receiver, 0)
        held = receiver.received[0].headers["webhook-id"]
        await _kill(process)
        receiver.hold.set()
        receiver.hold = None

        # 2. Kills at random moments while a slow receiver answers.
        receiver.delay = (0.3, 1.2)
        for _ in range(6):
            if not await _undelivered(db_url):
                break
            seen = len(receiver.received)
            process = await _start(env)
            await _new_request(receiver, seen)
            await asyncio.sleep(rng.uniform(0, 0.8))
            await _kill(process)

        # 3. One sender left to finish, stopped cleanly.
        process = await _start(env)
        receiver.delay = (0.0, 0.0)

        async def all_delivered() -> bool:
            return await _undelivered(db_url) == 0

        await until(all_delivered, 90, interval=0.2, message="deliveries still pending after 90 s")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0

    counts = receiver.ids()
    assert set(counts) == owed  # deduplicated on webhook-id: each owed event, nothing else
    assert counts[held] >= 2  # the held one was sent again by a later sender
    verifier = Webhook(SECRET)
    for got in receiver.deliveries():
        event = verifier.verify(got.body, got.headers)
        assert webhook_id(uuid.UUID(event["jobId"]), event["status"]) == got.headers["webhook-id"]
    bodies: dict[str, set[bytes]] = {}
    for got in receiver.deliveries():
        bodies.setdefault(got.headers["webhook-id"], set()).add(got.body)
    assert all(len(sent) == 1 for sent in bodies.values())  # every attempt sent the same bytes
