"""``X-Webhook-Url`` over the paid routes: stored at admission, delivered when the job ends, shown in the poll."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool
from standardwebhooks.webhooks import Webhook

from desired_state.http import ApiConfig, create_app
from desired_state.http.routes_paid import PaidApiConfig, PaidRoutes
from desired_state.services import callers, ledger
from desired_state.services.builtin import builtin_definitions
from desired_state.services.definitions import ServiceRegistry
from desired_state.webhooks import webhook_id
from reconciler.metrics import Metrics
from reconciler.webhooks.delivery import WebhookSender
from reconciler.webhooks.settings import WebhookSettings
from reconciler.webhooks.signing import new_secret, parse_secrets
from tests.webhook_receiver import Receiver, running_receiver

SECRET = new_secret()
INVOKE = "/api/services/invoke/util/delay-echo"


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        issued = await callers.create_caller(conn, "ada@example.com")
        await ledger.grant(conn, "ada@example.com", 10, "welcome")
    routes = PaidRoutes(PaidApiConfig(registry=ServiceRegistry(builtin_definitions())))
    app = create_app(ApiConfig(api_key="instance-key", database_url=db_url), paid=routes)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://paid") as c:
        yield c, {"Authorization": f"Bearer {issued.secret}"}


async def _count(db_url: str, query: str) -> int:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(query.encode())
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _drain(db_url: str) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    settings = WebhookSettings(keys=parse_secrets(SECRET), allow_private=True, timeout_seconds=2)
    sender = WebhookSender(pool, settings, Metrics(CollectorRegistry()), owner="t", rng=random.Random(1))
    try:
        await sender.drain()
    finally:
        await sender.aclose()
        await pool.close()


async def test_a_cancelled_job_is_delivered_and_the_poll_shows_it(
    db_url: str, client: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    http, auth = client
    receiver: Receiver
    async with running_receiver() as receiver:
        body = {"seconds": 300, "payload": {"hi": 1}}
        headers = {**auth, "X-Webhook-Url": receiver.url, "Idempotency-Key": "k1"}
        invoked = await http.post(INVOKE, json=body, headers=headers)
        assert invoked.status_code == 202
        job = invoked.json()["jobId"]
        poll = await http.get(f"/api/services/jobs/{job}", headers=auth)
        assert poll.json()["webhook"] == {"url": receiver.url, "state": "pending", "attempts": 0, "lastStatus": None}

        # a replay under the same key changes nothing, whatever URL it names
        replay = await http.post(INVOKE, json=body, headers={**headers, "X-Webhook-Url": "https://example.com/x"})
        assert replay.status_code == 202 and replay.json()["jobId"] == job

        assert (await http.delete(f"/api/services/jobs/{job}", headers=auth)).status_code == 200
        await _drain(db_url)
        poll = await http.get(f"/api/services/jobs/{job}", headers=auth)
        assert poll.json()["status"] == "cancelled"
        assert poll.json()["webhook"] == {"url": receiver.url, "state": "delivered", "attempts": 1, "lastStatus": 200}

        no_hook = await http.post(INVOKE, json=body, headers=auth)
        assert (await http.get(no_hook.json()["pollUrl"], headers=auth)).json()["webhook"] is None

    [got] = receiver.deliveries()
    assert got.headers["webhook-id"] == webhook_id(job, "cancelled")
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    event = Webhook(SECRET).verify(got.body, got.headers)
    assert event["jobId"] == job and event["status"] == "cancelled" and event["userEmail"] == "ada@example.com"
    assert event["payload"]["code"] == "cancelled"


async def test_a_bad_webhook_url_is_refused_naming_the_header_and_nothing_is_written(
    db_url: str, client: tuple[httpx.AsyncClient, dict[str, str]]
) -> None:
    http, auth = client
    for bad in ("ftp://example.com/x", "not a url", "https://user:pw@example.com/", "https://" + "a" * 2100):
        response = await http.post(INVOKE, json={"seconds": 1}, headers={**auth, "X-Webhook-Url": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"] == "invalid_input" and "X-Webhook-Url" in response.json()["message"]
    assert await _count(db_url, "SELECT count(*) FROM service_jobs") == 0
    assert await _count(db_url, "SELECT count(*) FROM credit_transfers WHERE kind <> 'grant'") == 0


async def test_the_header_is_in_the_openapi_document(client: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    http, _ = client
    document = (await http.get("/openapi.json", headers={"Authorization": "Bearer instance-key"})).json()
    invoke = document["paths"]["/api/services/invoke/{group}/{method}"]["post"]
    assert "X-Webhook-Url" in {parameter["name"] for parameter in invoke["parameters"]}
    job = document["components"]["schemas"]["JobView"]
    assert "webhook" in job["properties"]
