"""``reconciler run`` sends webhooks: the job loop ends jobs, the outbox gets their deliveries, the
sender in the same process posts them. Without a secret it says so once and records them disabled."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import psycopg
from standardwebhooks.webhooks import Webhook

from desired_state.services import intake, termination
from desired_state.services.builtin import DELAY_ECHO, builtin_registry
from desired_state.services.vocabulary import system_clock
from desired_state.webhooks import webhook_id
from reconciler.webhooks.signing import new_secret
from tests.conftest import Sim
from tests.jobs_support import new_caller
from tests.support import ROOT, cli_env, replica_args, until
from tests.webhook_receiver import running_receiver

SECRET = new_secret()


def _env(db_url: str, sim: Sim, **extra: str) -> dict[str, str]:
    # The tests' database and key, the simulated providers; no webhook settings of the caller's own.
    env = {k: v for k, v in cli_env(db_url, sim).items() if not k.startswith(("SERVICE_WEBHOOK", "WEBHOOK_"))}
    env.update(WEBHOOK_ALLOW_PRIVATE="1", **extra)
    return env


async def _states(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    cur = await conn.execute("SELECT webhook_id, state FROM webhook_deliveries")
    return {str(key): str(state) for key, state in await cur.fetchall()}


async def _stop(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    return err.decode()


async def test_run_delivers_the_end_of_every_job_invoked_with_a_url(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    registry = builtin_registry()
    caller = await new_caller(conn, credits=50)
    async with running_receiver() as receiver:

        async def invoke(data: dict[str, Any]) -> Any:
            return (await intake.admit(conn, registry, caller, DELAY_ECHO, data, webhook_url=receiver.url)).job_id

        # Without a secret: the job still runs, its delivery is recorded disabled, start-up says so once.
        unsigned = await invoke({"seconds": 0, "payload": {"n": 0}})
        process = await asyncio.create_subprocess_exec(
            *replica_args(),
            env=_env(db_url, sim),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

        async def disabled() -> bool:
            return (await _states(conn)).get(webhook_id(unsigned, "completed")) == "disabled"

        await until(disabled, 60, interval=0.1)
        err = await _stop(process)
        assert err.count("SERVICE_WEBHOOK_SECRET is not set") == 1
        assert receiver.deliveries() == []

        # With a secret: completed, failed and cancelled jobs are each delivered once.
        done = await invoke({"seconds": 0.3, "payload": {"n": 1}})
        failed = await invoke({"seconds": 0, "payload": {"n": 2}, "fail": True})
        long = await invoke({"seconds": 300, "payload": {"n": 3}})
        process = await asyncio.create_subprocess_exec(
            *replica_args(),
            env=_env(db_url, sim, SERVICE_WEBHOOK_SECRET=SECRET),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

        async def running() -> bool:
            cur = await conn.execute("SELECT status FROM service_jobs WHERE job_id = %s", (long,))
            return (await cur.fetchone()) == ("running",)

        await until(running, 60, interval=0.1)
        await termination.cancel(conn, long, now=system_clock())
        owed = {webhook_id(done, "completed"), webhook_id(failed, "failed"), webhook_id(long, "cancelled")}

        async def delivered() -> bool:
            states = await _states(conn)
            return all(states.get(key) == "delivered" for key in owed)

        await until(delivered, 60, interval=0.1)
        await _stop(process)

    assert set(receiver.ids()) == owed
    events = {got.headers["webhook-id"]: Webhook(SECRET).verify(got.body, got.headers) for got in receiver.deliveries()}
    assert events[webhook_id(done, "completed")]["payload"] == {"payload": {"n": 1}, "seconds": 0.3}
    assert events[webhook_id(failed, "failed")]["payload"]["code"] == "handler_failed"
    assert events[webhook_id(long, "cancelled")]["payload"]["code"] == "cancelled"
