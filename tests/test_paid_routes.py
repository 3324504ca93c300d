"""The paid routes over HTTP (the instance app with the paid router mounted), a real Postgres and
a test clock: every error code, idempotency, exact Retry-After, and bad input writing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest

from desired_state.http import ApiConfig, create_app
from desired_state.http.routes_paid import PaidApiConfig, PaidRoutes, ProxyCall
from desired_state.services import callers, ledger
from desired_state.services.definitions import ServiceDefinition, UpstreamError
from desired_state.services.vocabulary import JobErrorCode
from tests.paid_support import FakeClock, registry

SERVICES_KEY = "test-services-api-key"


@dataclass
class Upstream:
    """The proxy call the routes are given: echoes, fails or waits, as the test says."""

    fail: UpstreamError | None = None
    gate: asyncio.Event | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, definition: ServiceDefinition, document: dict[str, Any], job_id: uuid.UUID) -> Any:
        self.calls.append(document)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {"echo": document}


@dataclass
class Paid:
    client: httpx.AsyncClient
    clock: FakeClock
    upstream: Upstream
    db_url: str
    keys: dict[str, str]

    def auth(self, who: str = "ada") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    async def scalar(self, query: str) -> Any:
        async with await psycopg.AsyncConnection.connect(self.db_url) as conn:
            cur = await conn.execute(query.encode())
            row = await cur.fetchone()
            assert row is not None
            return row[0]

    async def written(self) -> tuple[int, int, int]:
        """(jobs, transfers, key rows)."""
        return (
            await self.scalar("SELECT count(*) FROM service_jobs"),
            await self.scalar("SELECT count(*) FROM credit_transfers WHERE kind <> 'grant'"),
            await self.scalar("SELECT count(*) FROM idempotency_keys"),
        )

    async def balance(self, who: str = "ada") -> int:
        return int(await self.scalar(f"SELECT balance FROM credit_accounts a JOIN callers c USING (caller_id) WHERE c.email = '{who}@example.com'"))  # noqa: E501


@contextlib.asynccontextmanager
async def paid_app(db_url: str, proxy: ProxyCall | None) -> AsyncIterator[tuple[httpx.AsyncClient, FakeClock]]:
    clock = FakeClock()
    routes = PaidRoutes(PaidApiConfig(registry=registry(), proxy_call=proxy, clock=clock, max_body_bytes=4096))
    app = create_app(ApiConfig(api_key=SERVICES_KEY, database_url=db_url), paid=routes)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://paid") as c:
        yield c, clock


@pytest.fixture
async def paid(db_url: str) -> AsyncIterator[Paid]:
    upstream = Upstream()
    keys = {}
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        for who, credits in (("ada", 10), ("bob", 0)):
            issued = await callers.create_caller(conn, f"{who}@example.com")
            keys[who] = issued.secret
            if credits:
                await ledger.grant(conn, f"{who}@example.com", credits, "welcome")
    async with paid_app(db_url, upstream) as (client, clock):
        yield Paid(client, clock, upstream, db_url, keys)


async def audit_clean(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        report = await ledger.audit(conn)
    assert report.violations == []


async def test_catalog_is_public_and_typed(paid: Paid) -> None:
    response = await paid.client.get("/api/services/catalog")
    assert response.status_code == 200
    items = {item["id"]: item for item in response.json()["services"]}
    delay = items["util.delay-echo"]
    assert (delay["group"], delay["method"], delay["runtime"], delay["costCredits"]) == ("util", "delayEcho", "job", 1)
    assert delay["inputSchema"]["properties"]["seconds"]["maximum"] == 300
    assert items["util.echo"]["runtime"] == "proxy"
    assert items["agents.provision"]["costCredits"] == 100
    assert items["agents.destroy"]["costCredits"] == 0
    assert items["test.limited"]["rateLimit"] == {"perMinute": 2, "perHour": 3, "perDay": None}
    assert items["test.gated"]["access"] == {"requiresCoursePurchase": "media-101"}
    assert set(delay) == {
        "id", "group", "method", "summary", "runtime", "costCredits", "rateLimit", "access", "inputSchema",
        "outputSchema",
    }  # fmt: skip


async def test_keys_are_not_interchangeable(paid: Paid) -> None:
    services_auth = {"Authorization": f"Bearer {SERVICES_KEY}"}
    for path in ("/api/credits", f"/api/services/jobs/{uuid.uuid4()}", "/api/services/usage/util/delay-echo"):
        for headers in ({}, services_auth, {"Authorization": "Bearer sk-not-a-real-key"}, {"Authorization": "Basic x"}):
            response = await paid.client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"] == "authentication_required"
    invoke = await paid.client.post("/api/services/invoke/util/delay-echo", json={}, headers=services_auth)
    assert invoke.status_code == 401
    # and the instance routes refuse a caller's key
    for path in ("/instances", "/registry"):
        response = await paid.client.get(path, headers=paid.auth())
        assert response.status_code == 401 and response.json() == {"error": "Invalid or missing API key"}
        assert (await paid.client.get(path, headers=services_auth)).status_code == 200
    assert await paid.written() == (0, 0, 0)


async def test_revoked_key_is_refused(paid: Paid) -> None:
    assert (await paid.client.get("/api/credits", headers=paid.auth())).status_code == 200
    async with await psycopg.AsyncConnection.connect(paid.db_url, autocommit=True) as conn:
        assert len(await callers.revoke_keys(conn, "ada@example.com")) == 1
    assert (await paid.client.get("/api/credits", headers=paid.auth())).status_code == 401


async def test_invoke_answers_a_wrong_key_401_before_anything_else(paid: Paid) -> None:
    """The admission looks the key up inside its own statement (issue 14), yet a wrong, revoked or
    malformed key is still answered 401 first: before an unknown service, a bad body or a bad
    Idempotency-Key, and nothing is written or charged."""
    unknown = {"Authorization": "Bearer sk-" + "A" * 43}  # well formed, never issued
    malformed = {"Authorization": "Bearer sk-short"}
    delay = "/api/services/invoke/util/delay-echo"
    attempts = [
        (delay, {"seconds": 0}, {}),
        ("/api/services/invoke/util/no-such-service", {}, {}),
        (delay, {"seconds": "soon"}, {}),
        (delay, {"seconds": 0}, {"Idempotency-Key": "x" * 1000}),
        (delay, {"seconds": 0}, {"X-Webhook-Url": "not a url"}),
    ]
    for who in (unknown, malformed, {}):
        for path, body, extra in attempts:
            response = await paid.client.post(path, json=body, headers={**who, **extra})
            assert response.status_code == 401, (who, path, body, extra, response.text)
            assert response.json()["error"] == "authentication_required"
            assert response.headers["www-authenticate"] == "Bearer"
    # the right key gets the real refusals, and then an admission
    assert (await paid.client.post("/api/services/invoke/util/no-such-service", headers=paid.auth())).status_code == 404
    assert (await paid.client.post(delay, json={"seconds": "soon"}, headers=paid.auth())).status_code == 400
    assert await paid.written() == (0, 0, 0)
    assert (await paid.client.post(delay, json={"seconds": 0}, headers=paid.auth())).status_code == 202
    async with await psycopg.AsyncConnection.connect(paid.db_url, autocommit=True) as conn:
        assert len(await callers.revoke_keys(conn, "ada@example.com")) == 1
    revoked = await paid.client.post(delay, json={"seconds": 0}, headers=paid.auth())
    assert revoked.status_code == 401 and revoked.json()["error"] == "authentication_required"
    assert (await paid.written())[0] == 1 and await paid.balance() == 9


async def test_job_lifecycle_poll_cancel_refund_and_credits(paid: Paid) -> None:
    response = await paid.client.post(
        "/api/services/invoke/util/delay-echo", json={"seconds": 5, "payload": {"hi": 1}}, headers=paid.auth()
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending" and body["pollUrl"] == f"/api/services/jobs/{body['jobId']}"
    assert response.headers["location"] == body["pollUrl"]
    polled = (await paid.client.get(body["pollUrl"], headers=paid.auth())).json()
    assert polled["status"] == "pending" and polled["costCredits"] == 1 and polled["refunded"] is False
    assert polled["progress"] == {"pct": None, "note": None} and polled["error"] is None
    assert await paid.balance() == 9

    # another caller's job is not found, for reading and for cancelling
    assert (await paid.client.get(body["pollUrl"], headers=paid.auth("bob"))).status_code == 404
    assert (await paid.client.delete(body["pollUrl"], headers=paid.auth("bob"))).json()["error"] == "job_not_found"

    cancelled = await paid.client.delete(body["pollUrl"], headers=paid.auth())
    assert cancelled.json() == {"jobId": body["jobId"], "status": "cancelled", "refunded": True}
    again = await paid.client.delete(body["pollUrl"], headers=paid.auth())
    assert again.json()["refunded"] is False
    polled = (await paid.client.get(body["pollUrl"], headers=paid.auth())).json()
    assert polled["status"] == "cancelled" and polled["refunded"] is True and polled["error"]["code"] == "cancelled"
    assert polled["finishedAt"] is not None

    credits = (await paid.client.get("/api/credits", headers=paid.auth())).json()
    assert credits["balance"] == 10
    assert sorted((t["kind"], t["amount"]) for t in credits["transfers"]) == [
        ("charge", -1),
        ("grant", 10),
        ("refund", 1),
    ]
    usage = (await paid.client.get("/api/services/usage/util/delay-echo?history=1", headers=paid.auth())).json()
    assert (usage["invocations"], usage["cancelled"], usage["creditsRefunded"]) == (1, 1, 1)
    assert [job["jobId"] for job in usage["history"]] == [body["jobId"]]
    assert (await paid.client.get("/api/services/usage/util/delay-echo", headers=paid.auth())).json()["history"] is None
    await audit_clean(paid.db_url)


@pytest.mark.parametrize(
    ("path", "content", "code", "names"),
    [
        ("/api/services/invoke/util/nope", b"{}", 404, "service_not_found"),
        ("/api/services/invoke/util/delay-echo", b'{"seconds": 301}', 400, "seconds"),
        ("/api/services/invoke/util/delay-echo", b'{"seconds": "5"}', 400, "seconds"),
        ("/api/services/invoke/util/delay-echo", b'{"sekonds": 5}', 400, "sekonds"),
        ("/api/services/invoke/util/delay-echo", b'{"seconds": 1, "seconds": 2}', 400, "appears twice"),
        ("/api/services/invoke/util/delay-echo", b'\xef\xbb\xbf{"seconds": 1}', 400, "byte-order mark"),
        ("/api/services/invoke/util/delay-echo", b"[1]", 400, "JSON object"),
        ("/api/services/invoke/util/delay-echo", b"{", 400, "not valid JSON"),
        ("/api/services/invoke/util/delay-echo", b'{"seconds": NaN}', 400, "not valid JSON"),
        ("/api/services/invoke/util/delay-echo", b'{"payload": "a\\u0000"}', 400, "payload"),
        ("/api/services/invoke/util/delay-echo", b"\xff\xfe", 400, "UTF-8"),
        ("/api/services/invoke/util/delay-echo", b'{"payload": "' + b"x" * 5000 + b'"}', 413, "body_too_large"),
        ("/api/services/invoke/util/delay-echo", b'{"payload": [' + b"0," * 2000 + b"0" + b"]}", 400, "2001 items"),
        ("/api/services/invoke/agents/provision", b'{"name": "a", "tools": ["slack"]}', 400, "tools"),
        ("/api/services/invoke/agents/provision", b'{"name": "a", "env": {"1BAD": "x"}}', 400, "env"),
        ("/api/services/invoke/agents/destroy", b'{"instanceId": "bad id"}', 400, "instanceId"),
    ],
)
async def test_bad_input_is_refused_naming_the_field_and_writes_nothing(
    paid: Paid, path: str, content: bytes, code: int, names: str
) -> None:
    response = await paid.client.post(
        path, content=content, headers={**paid.auth(), "Idempotency-Key": "k", "Content-Type": "application/json"}
    )
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"error", "message", "hint"}
    assert names in body["message"] or names == body["error"]
    assert await paid.written() == (0, 0, 0)
    assert await paid.balance() == 10


async def test_a_body_that_is_not_json_is_invalid_input(paid: Paid) -> None:
    response = await paid.client.post(
        "/api/services/invoke/util/delay-echo",
        content=b"seconds=1",
        headers={**paid.auth(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_input"
    assert "Content-Type: application/json" in response.json()["message"]
    assert await paid.written() == (0, 0, 0)


async def test_bad_paths_and_queries_are_400(paid: Paid) -> None:
    for response in (
        await paid.client.get("/api/services/jobs/not-a-uuid", headers=paid.auth()),
        await paid.client.delete("/api/services/jobs/not-a-uuid", headers=paid.auth()),
        await paid.client.get("/api/services/usage/util/delay-echo?history=maybe", headers=paid.auth()),
        await paid.client.get("/api/credits?limit=0", headers=paid.auth()),
    ):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_input"
    bad_key = await paid.client.post(
        "/api/services/invoke/util/delay-echo", json={}, headers={**paid.auth(), "Idempotency-Key": "x" * 256}
    )
    assert bad_key.status_code == 400 and "Idempotency-Key" in bad_key.json()["message"]
    unknown = await paid.client.get("/api/services/usage/util/nope", headers=paid.auth())
    assert unknown.status_code == 404 and unknown.json()["error"] == "service_not_found"
    assert await paid.written() == (0, 0, 0)


async def test_payment_and_course_refusals_keep_the_key_usable(paid: Paid) -> None:
    headers = {**paid.auth("bob"), "Idempotency-Key": "k1"}
    poor = await paid.client.post("/api/services/invoke/util/delay-echo", json={}, headers=headers)
    assert poor.status_code == 402
    assert poor.json()["error"] == "insufficient_credits" and poor.json()["hint"] == "1 more credit needed"
    gated = await paid.client.post("/api/services/invoke/test/gated", json={}, headers=headers)
    assert gated.status_code == 402
    assert gated.json()["error"] == "course_not_purchased" and gated.json()["hint"] == "media-101"
    assert await paid.written() == (0, 0, 0)
    async with await psycopg.AsyncConnection.connect(paid.db_url, autocommit=True) as conn:
        await ledger.grant(conn, "bob@example.com", 5, "test")
        await callers.enroll(conn, "bob@example.com", "media-101")
    assert (await paid.client.post("/api/services/invoke/util/delay-echo", json={}, headers=headers)).status_code == 202
    assert (await paid.client.post("/api/services/invoke/test/gated", json={}, headers=headers)).status_code == 202


async def test_idempotent_replay_mismatch_and_rate_limit(paid: Paid) -> None:
    headers = {**paid.auth(), "Idempotency-Key": "same"}
    first = await paid.client.post("/api/services/invoke/test/limited", json={"n": 1}, headers=headers)
    replay = await paid.client.post("/api/services/invoke/test/limited", json={"n": 1}, headers=headers)
    assert first.status_code == replay.status_code == 202
    assert replay.json() == first.json() and replay.headers["idempotency-replayed"] == "true"
    assert "idempotency-replayed" not in first.headers
    mismatch = await paid.client.post("/api/services/invoke/test/limited", json={"n": 2}, headers=headers)
    assert mismatch.status_code == 422 and mismatch.json()["error"] == "idempotency_key_reused"
    assert await paid.balance() == 9

    async def unkeyed() -> httpx.Response:
        return await paid.client.post("/api/services/invoke/test/limited", json={}, headers=paid.auth())

    paid.clock.advance(12.25)
    assert (await unkeyed()).status_code == 202
    limited = await unkeyed()
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limit_exceeded"
    assert limited.headers["retry-after"] == "48"  # 60 - 12.25, rounded up
    replay_later = await paid.client.post("/api/services/invoke/test/limited", json={"n": 1}, headers=headers)
    assert replay_later.status_code == 202  # a replay is not rate limited
    paid.clock.advance(47)
    assert (await unkeyed()).status_code == 429
    paid.clock.advance(1)
    assert (await unkeyed()).status_code == 202
    assert await paid.written() == (3, 3, 1)
    await audit_clean(paid.db_url)


async def test_proxy_success_failure_and_replay(paid: Paid) -> None:
    ok = await paid.client.post(
        "/api/services/invoke/util/echo", json={"a": [1, 2]}, headers={**paid.auth(), "Idempotency-Key": "p1"}
    )
    assert ok.status_code == 200 and ok.json() == {"echo": {"a": [1, 2]}}
    replay = await paid.client.post(
        "/api/services/invoke/util/echo", json={"a": [1, 2]}, headers={**paid.auth(), "Idempotency-Key": "p1"}
    )
    assert replay.json() == ok.json() and replay.headers["idempotency-replayed"] == "true"
    assert len(paid.upstream.calls) == 1  # never re-sent
    assert await paid.balance() == 9

    paid.upstream.fail = UpstreamError(JobErrorCode.UPSTREAM_UNREACHABLE, "connection refused")
    failed = await paid.client.post(
        "/api/services/invoke/util/echo", json={}, headers={**paid.auth(), "Idempotency-Key": "p2"}
    )
    assert failed.status_code == 502 and failed.json()["error"] == "upstream_unreachable"
    assert await paid.balance() == 9  # refunded
    job = (await paid.client.get(f"/api/services/jobs/{failed.headers['x-job-id']}", headers=paid.auth())).json()
    assert (job["status"], job["refunded"], job["error"]["code"]) == ("failed", True, "upstream_unreachable")
    stored = await paid.client.post(
        "/api/services/invoke/util/echo", json={}, headers={**paid.auth(), "Idempotency-Key": "p2"}
    )
    assert stored.status_code == 502 and stored.headers["idempotency-replayed"] == "true"
    # A proxy answers in its own request: X-Webhook-Url is ignored there (docs/webhooks.md), not refused.
    paid.upstream.fail = None
    hooked = await paid.client.post(
        "/api/services/invoke/util/echo", json={"h": 1}, headers={**paid.auth(), "X-Webhook-Url": "not a url"}
    )
    assert hooked.status_code == 200 and hooked.json() == {"echo": {"h": 1}}
    assert await paid.scalar("SELECT count(*) FROM service_jobs WHERE webhook_url IS NOT NULL") == 0
    await audit_clean(paid.db_url)


async def test_proxy_in_flight_is_409(paid: Paid) -> None:
    paid.upstream.gate = asyncio.Event()
    headers = {**paid.auth(), "Idempotency-Key": "slow"}
    first = asyncio.create_task(paid.client.post("/api/services/invoke/util/echo", json={"x": 1}, headers=headers))
    while not paid.upstream.calls:
        await asyncio.sleep(0.01)
    busy = await paid.client.post("/api/services/invoke/util/echo", json={"x": 1}, headers=headers)
    assert busy.status_code == 409 and busy.json()["error"] == "idempotency_key_in_flight"
    assert busy.headers["retry-after"] == "1"
    paid.upstream.gate.set()
    assert (await first).status_code == 200
    await audit_clean(paid.db_url)


async def test_proxy_without_upstream_is_500_and_refunded(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        issued = await callers.create_caller(conn, "ada@example.com")
        await ledger.grant(conn, "ada@example.com", 3, "welcome")
    async with paid_app(db_url, None) as (client, _):
        response = await client.post(
            "/api/services/invoke/util/echo", json={"a": 1}, headers={"Authorization": f"Bearer {issued.secret}"}
        )
        assert response.status_code == 500 and response.json()["error"] == "upstream_not_configured"
        credits = (await client.get("/api/credits", headers={"Authorization": f"Bearer {issued.secret}"})).json()
        assert credits["balance"] == 3
    await audit_clean(db_url)


async def test_openapi_lists_the_paid_routes_with_the_caller_key(paid: Paid) -> None:
    document = (await paid.client.get("/openapi.json", headers={"Authorization": f"Bearer {SERVICES_KEY}"})).json()
    paths = document["paths"]
    for path in (
        "/api/services/catalog",
        "/api/services/invoke/{group}/{method}",
        "/api/services/jobs/{jobId}",
        "/api/services/usage/{group}/{method}",
        "/api/credits",
    ):
        assert path in paths, path
    assert paths["/api/services/catalog"]["get"]["security"] == []
    assert paths["/api/credits"]["get"]["security"] == [{"callerKey": []}]
    assert "429" in paths["/api/services/invoke/{group}/{method}"]["post"]["responses"]
    assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "callerKey"}
    assert paths["/instances"]["get"]["security"] == [{"bearerAuth": []}]


async def test_database_outage_is_503(db_url: str) -> None:
    @contextlib.asynccontextmanager
    async def unreachable() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        raise psycopg.OperationalError("connection refused")
        yield  # pragma: no cover

    from fastapi import FastAPI

    from desired_state.http.routes_paid import create_paid_router

    app = FastAPI()
    app.include_router(create_paid_router(PaidApiConfig(registry=registry()), unreachable))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://paid") as client:
        response = await client.get("/api/credits", headers={"Authorization": "Bearer sk-" + "a" * 43})
        assert response.status_code == 503 and response.json()["error"] == "database_unavailable"
        assert (await client.get("/api/services/catalog")).status_code == 200  # needs no database


async def test_a_method_a_path_does_not_take_is_405_naming_every_allowed_one(paid: Paid) -> None:
    response = await paid.client.request("PUT", f"/api/services/jobs/{uuid.uuid4()}", headers=paid.auth())
    assert response.status_code == 405 and response.headers["allow"] == "DELETE, GET"
    assert response.json()["error"] == "method_not_allowed"


async def test_an_oversized_streamed_body_is_413_and_writes_nothing(paid: Paid) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"payload": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = await paid.client.post("/api/services/invoke/util/delay-echo", content=chunks(), headers=paid.auth())
    assert response.status_code == 413 and response.json()["error"] == "body_too_large"
    assert await paid.written() == (0, 0, 0)
