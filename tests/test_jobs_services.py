"""The built-in services end to end through the loops: agents.provision, agents.destroy, util.echo.

Both loops run (instances and jobs, as `reconciler run` does) against the simulated providers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from desired_state.services import intake
from desired_state.services.builtin import DESTROY, ECHO, PROVISION, BuiltinSettings, provision_instance_id
from desired_state.services.definitions import UpstreamError
from desired_state.services.termination import cancel
from desired_state.services.vocabulary import JobErrorCode
from providers.base import ResourceKind
from providers.simulated.server import serve_in_background
from reconciler.runtime import Runtime, UnconfiguredDriver
from tests.conftest import Sim
from tests.jobs_support import (
    Sleeper,
    admit,
    assert_audit_clean,
    job_row,
    job_runtime,
    new_caller,
    registry,
    transfers,
    wait_for,
)

Conn = psycopg.AsyncConnection[Any]
AGENT = {"name": "helper", "tools": ["openrouter", "agentmail"], "env": {}}


@asynccontextmanager
async def both_loops(runtime: Runtime) -> AsyncIterator[Runtime]:
    async with runtime:
        stop = asyncio.Event()
        tasks = [runtime.worker.run_forever(stop), runtime.jobs.run_forever(stop)]
        running = [asyncio.create_task(task) for task in tasks]
        try:
            yield runtime
        finally:
            stop.set()
            await asyncio.gather(*running)


async def instance(conn: Conn, instance_id: str) -> tuple[Any, ...] | None:
    cur = await conn.execute(
        "SELECT present, phase, owner_caller_id FROM desired_instances WHERE instance_id = %s", (instance_id,)
    )
    return await cur.fetchone()


async def gone(conn: Conn, instance_id: str, sim: Sim, within: float = 30.0) -> None:
    for _ in range(int(within / 0.1)):
        if await instance(conn, instance_id) is None:
            break
        await asyncio.sleep(0.1)
    assert await instance(conn, instance_id) is None, "the instance was not torn down"
    names = [k["name"] for k in sim.simulator.snapshot()["openrouter"]["keys"]]
    assert f"convos-agent-{instance_id}" not in names


async def test_provision_completes_when_ready_then_destroy_removes_everything(
    db_url: str, sim: Sim, conn: Conn
) -> None:
    caller = await new_caller(conn, credits=150)
    job_id = await admit(conn, caller, PROVISION, AGENT)
    async with both_loops(job_runtime(db_url, sim, Sleeper())):
        row = await wait_for(conn, job_id, {"completed", "failed", "timed_out"}, within=30)
        assert row["status"] == "completed", row["error_message"]
        instance_id = provision_instance_id(job_id)
        assert row["result"]["instanceId"] == instance_id
        assert row["result"]["url"].startswith("https://")
        assert set(row["result"]["services"]) == {"openrouter", "agentmail"}
        assert await instance(conn, instance_id) == (True, "Ready", caller)
        assert await transfers(conn, job_id) == ["capture", "charge"]

        other = await new_caller(conn, "eve@example.com")
        refused = await admit(conn, other, DESTROY, {"instanceId": instance_id})
        destroy = await admit(conn, caller, DESTROY, {"instanceId": instance_id})
        refused_row = await wait_for(conn, refused, {"completed", "failed"})
        assert (refused_row["status"], refused_row["error_code"]) == ("failed", JobErrorCode.INVALID_INPUT)
        destroyed = await wait_for(conn, destroy, {"completed", "failed"}, within=30)
        assert destroyed["status"] == "completed" and destroyed["result"] == {
            "instanceId": instance_id,
            "destroyed": True,
        }
        await gone(conn, instance_id, sim)
        assert await transfers(conn, destroy) == []  # free
    await assert_audit_clean(conn)


async def test_provision_with_a_configuration_error_fails_refunds_and_tears_down(
    db_url: str, sim: Sim, conn: Conn
) -> None:
    caller = await new_caller(conn, credits=150)
    job_id = await admit(conn, caller, PROVISION, {"name": "phone", "tools": ["telnyx"], "env": {}})
    runtime = job_runtime(db_url, sim, Sleeper())
    # As if TELNYX_API_KEY were not set (the reconciler shares this mapping).
    runtime.drivers[ResourceKind.TELNYX_NUMBER] = UnconfiguredDriver(ResourceKind.TELNYX_NUMBER, "TELNYX_API_KEY")
    async with both_loops(runtime):
        row = await wait_for(conn, job_id, {"completed", "failed", "timed_out"}, within=30)
        assert (row["status"], row["error_code"]) == ("failed", JobErrorCode.CONFIGURATION_ERROR)
        assert "TELNYX_API_KEY" in row["error_message"]
        # Torn down: marked absent (the finalizer cannot reach a provider it has no key for, so
        # the row stays visible with that error until the key is set).
        instance_id = provision_instance_id(job_id)
        for _ in range(50):
            if (await instance(conn, instance_id) or (True,))[0] is False:
                break
            await asyncio.sleep(0.1)
        assert await instance(conn, instance_id) == (False, "Failed", caller)
    assert await transfers(conn, job_id) == ["charge", "refund"]
    await assert_audit_clean(conn)


async def test_cancelling_a_provision_refunds_and_tears_the_instance_down(db_url: str, sim: Sim, conn: Conn) -> None:
    sim.simulator.railway.deploy_seconds = 30.0  # never Ready within the test
    caller = await new_caller(conn, credits=150)
    job_id = await admit(conn, caller, PROVISION, AGENT)
    async with both_loops(job_runtime(db_url, sim, Sleeper())) as runtime:
        await wait_for(conn, job_id, {"running"})
        instance_id = provision_instance_id(job_id)
        for _ in range(100):
            if await instance(conn, instance_id) is not None:
                break
            await asyncio.sleep(0.1)
        assert (await cancel(conn, job_id, now=runtime.jobs.clock())).refunded
        await gone(conn, instance_id, sim)
    assert (await job_row(conn, job_id))["status"] == "cancelled"
    await assert_audit_clean(conn)


async def test_a_provision_not_ready_by_its_timeout_times_out_and_tears_down(db_url: str, sim: Sim, conn: Conn) -> None:
    sim.simulator.railway.deploy_seconds = 30.0
    terms = BuiltinSettings(provision_timeout_seconds=2)
    await intake.sync_services(conn, registry(terms))
    caller = await new_caller(conn, credits=150)
    job_id = await admit(conn, caller, PROVISION, AGENT, builtin=terms)
    async with both_loops(job_runtime(db_url, sim, Sleeper(), builtin=terms)):
        row = await wait_for(conn, job_id, {"completed", "failed", "timed_out"}, within=20)
        assert row["status"] == "timed_out"
        await gone(conn, provision_instance_id(job_id), sim)
    assert await transfers(conn, job_id) == ["charge", "refund"]
    await assert_audit_clean(conn)


async def test_a_provision_re_run_finds_the_same_instance(db_url: str, sim: Sim, conn: Conn) -> None:
    sim.simulator.railway.deploy_seconds = 1.0
    caller = await new_caller(conn, credits=150)
    job_id = await admit(conn, caller, PROVISION, AGENT)
    instance_id = provision_instance_id(job_id)
    async with job_runtime(db_url, sim, Sleeper()) as dead:
        [claim] = await dead.jobs.claim(1)
        # Its worker writes the instance, then dies before it is Ready (no renewal, no end).
        run = asyncio.create_task(dead.jobs.run_one(claim))
        for _ in range(100):
            if await instance(conn, instance_id) is not None:
                break
            await asyncio.sleep(0.05)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    async with both_loops(job_runtime(db_url, sim, Sleeper())):
        row = await wait_for(conn, job_id, {"completed", "failed", "timed_out"}, within=30)
    assert (row["status"], row["attempts"], row["result"]["instanceId"]) == ("completed", 2, instance_id)
    assert [k["name"] for k in sim.simulator.snapshot()["openrouter"]["keys"]] == [f"convos-agent-{instance_id}"]
    assert await transfers(conn, job_id) == ["capture", "charge"]
    await assert_audit_clean(conn)


async def test_echo_proxy_forwards_and_answers_or_says_it_has_no_upstream(db_url: str, sim: Sim) -> None:
    seen: list[tuple[dict[str, Any], str | None]] = []

    async def echo(request: Request) -> Response:
        body = await request.json()
        seen.append((body, request.headers.get("idempotency-key")))
        return JSONResponse({"echo": body})

    upstream = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    async with serve_in_background(upstream) as root, job_runtime(db_url, sim, Sleeper(), echo_base_url=root) as rt:
        call = rt.handlers.proxy(ECHO)
        assert call is not None
        job_id = uuid.uuid4()
        assert await call({"a": [1, 2]}, job_id) == {"echo": {"a": [1, 2]}}
        assert seen == [({"a": [1, 2]}, str(job_id))]
    async with job_runtime(db_url, sim, Sleeper()) as rt:
        call = rt.handlers.proxy(ECHO)
        assert call is not None
        with pytest.raises(UpstreamError) as refused:
            await call({"a": 1}, uuid.uuid4())
        assert refused.value.code is JobErrorCode.UPSTREAM_NOT_CONFIGURED
