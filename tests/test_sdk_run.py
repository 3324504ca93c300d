"""The generated SDK against a real ``reconciler run`` (API and loops in one process, simulated
providers, a loopback ``util.echo`` upstream), with a webhook receiver on the side.

Every built-in service is called through its typed method; a job is waited to completion with
progress callbacks and its signed webhook checked; one is cancelled; a dropped connection is
retried with the same idempotency key and charged once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from desired_state.services import callers, ledger
from desired_state.webhooks import webhook_id
from providers.simulated.server import serve_in_background
from reconciler.webhooks.signing import new_secret
from tests.conftest import Sim
from tests.sdk_support import DropFirstPost, sdk
from tests.support import ROOT, cli_env, free_port, until
from tests.webhook_receiver import Receiver, running_receiver

SECRET = new_secret()
BALANCE = "SELECT balance FROM credit_accounts a JOIN callers c USING (caller_id) WHERE c.email = 'ada@example.com'"



async def _echo(request: Request) -> JSONResponse:
    return JSONResponse(await request.json())


@asynccontextmanager
async def reconciler_run(db_url: str, sim: Sim, upstream: str) -> AsyncIterator[str]:
    port = free_port()
    # The tests' database and key, the simulated providers; no webhook settings of the caller's own.
    env = {k: v for k, v in cli_env(db_url, sim).items() if not k.startswith(("SERVICE_WEBHOOK", "WEBHOOK_"))}
    env.update(
        SERVICES_API_KEY="instance-key",
        PORT=str(port),
        UTIL_ECHO_BASE_URL=upstream,
        SERVICE_WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOW_PRIVATE="1",
    )
    args = ["run", "--metrics-port", "0", "--tick", "0.2", "--observe-seconds", "3600", "--host", "127.0.0.1"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import cli; cli.main()", *args,
        env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    root = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 60
            while True:
                assert process.returncode is None, "reconciler run exited"
                try:
                    if (await http.get(f"{root}/api/services/catalog")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "reconciler run did not start"
                await asyncio.sleep(0.2)
        yield root
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()[-3000:]


async def _scalar(db_url: str, query: str, *args: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(query.encode(), args)
        row = await cur.fetchone()
    assert row is not None
    return row[0]


async def _until_delivered(receiver: Receiver, key: str) -> None:
    await until(lambda: key in receiver.ids(), 30, interval=0.1, message=f"no webhook {key}")


@pytest.mark.timeout(240)
async def test_the_sdk_against_reconciler_run(db_url: str, sim: Sim) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        key = (await callers.create_caller(conn, "ada@example.com")).secret
        await ledger.grant(conn, "ada@example.com", 500, "welcome")
    upstream_app = Starlette(routes=[Route("/echo", _echo, methods=["POST"])])
    async with (
        serve_in_background(upstream_app) as upstream,
        running_receiver() as receiver,
        reconciler_run(db_url, sim, upstream) as root,
    ):
        async with sdk.AsyncClient(api_key=key, base_url=root) as client:
            # a job to completion, with progress callbacks and a signed webhook
            seen: list[tuple[float, str | None]] = []
            job = await client.util.delay_echo(seconds=2.5, payload={"n": 1}, webhook_url=receiver.url)
            job.on_progress(lambda pct, note: seen.append((pct, note)))
            result = await job.wait(timeout=60, poll_interval=0.2)
            assert result.payload == {"n": 1} and result.seconds == 2.5
            assert len(seen) >= 2 and [p for p, _ in seen] == sorted(p for p, _ in seen)
            await _until_delivered(receiver, webhook_id(job.id, "completed"))
            [got] = [r for r in receiver.deliveries() if r.headers["webhook-id"] == webhook_id(job.id, "completed")]
            event = Webhook(SECRET).verify(got.body, got.headers)
            assert event["payload"] == {"payload": {"n": 1}, "seconds": 2.5}
            state = await job.status()
            assert state.webhook is not None and state.webhook.state == "delivered"

            # the proxy, and both agents services
            echoed = await client.util.echo({"hello": "run"})
            assert echoed.model_dump() == {"hello": "run"}
            provisioned = await (await client.agents.provision(name="sdk-run", tools=["openrouter"])).wait(timeout=90)
            destroyed = await (await client.agents.destroy(instance_id=provisioned.instance_id)).wait(timeout=90)
            assert destroyed.destroyed and destroyed.instance_id == provisioned.instance_id

            # a cancellation
            long = await client.util.delay_echo(seconds=120, webhook_url=receiver.url)
            await asyncio.sleep(0.5)
            assert (await long.cancel()).refunded
            with pytest.raises(sdk.JobCancelled):
                await long.wait(timeout=10)
            await _until_delivered(receiver, webhook_id(long.id, "cancelled"))

            # the untyped escape hatch, and a typed error
            untyped = await client.run("util.delay-echo", {"seconds": 0})
            assert isinstance(untyped, sdk.AsyncJob) and (await untyped.wait(timeout=30))["seconds"] == 0
            with pytest.raises(sdk.InvalidInput):
                await client.run("util.delay-echo", {"seconds": -1})

        # a dropped connection: retried with the same key, charged once
        transport = DropFirstPost()
        before = await _scalar(db_url, BALANCE)
        async with sdk.AsyncClient(api_key=key, base_url=root, http_client=httpx.AsyncClient(transport=transport)) as c:
            once = await c.util.delay_echo(seconds=0, payload="once")
            assert (await once.wait(timeout=30)).payload == "once"
        assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
        assert (
            await _scalar(db_url, "SELECT count(*) FROM service_jobs WHERE idempotency_key = %s", transport.keys[0])
            == 1
        )
        assert before - await _scalar(db_url, BALANCE) == 1
