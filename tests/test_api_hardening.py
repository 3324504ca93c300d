"""Hostile input and a lost database (issue 11): the HTTP API stays bounded, strict and honest.

* Bodies: the 8 MiB cap holds while reading (a declared or streamed larger body is a 413 and is
  never read past the cap); a body with a BOM, in UTF-16 or with a duplicate key is a clear 400;
  a body that is not JSON is a 415; a body holding far more values than the route needs is a 400
  without the models ever seeing it; an error body lists the first problems, counts the rest and
  cuts each one short; expensive bodies are decoded by the worker process.
* Probes: ``HEAD /healthz`` answers; ``/readyz`` reports the database and the loop.
* A lost database: database routes answer 503 with ``Retry-After`` within 2 s (also with
  ``Prefer: respond-async``), ``/healthz`` stays 200, ``/readyz`` and the availability gauge say
  so, and the API answers again within 5 s of the database's return.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import REGISTRY

from desired_state import queries, store
from desired_state.http import create_app
from desired_state.http.app import ConnectionFactory
from desired_state.http.body import MAX_BODY_BYTES, StrictJsonRoute
from desired_state.http.errors import MAX_PROBLEM_CHARS, MAX_PROBLEMS, ApiError
from desired_state.models import InstanceSpec
from desired_state.vocabulary import Tool
from providers.simulated.faults import FaultPlan, FaultRule
from providers.simulated.server import serve_in_background
from reconciler.db import EmbeddedPostgres
from reconciler.runtime import Runtime
from tests.conftest import Sim
from tests.support import API_KEY, config_for, desired_count, looping, served

JSON = {"Content-Type": "application/json"}
CHUNK = 64 * 1024


async def call_asgi(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[int, int]:
    """POST ``chunks`` chunks of 64 KiB to ``app`` directly; (status, bytes the app pulled)."""
    pulled = 0
    sent = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled, sent
        sent += 1
        if sent > chunks:
            return {"type": "http.disconnect"}
        pulled += CHUNK
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": sent < chunks}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "headers": [(b"authorization", f"Bearer {API_KEY}".encode()), (b"content-type", b"application/json"), *headers],
        "app": app,
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    return status, pulled


async def test_the_body_cap_holds_while_reading(db_url: str, sim: Sim) -> None:
    app = create_app(config_for(db_url, sim))
    # A streamed body (no Content-Length) of 64 MiB: refused once past the cap, never read further.
    status, pulled = await call_asgi(app, "/status/batch", [], chunks=1024)
    assert status == 413
    assert MAX_BODY_BYTES < pulled <= MAX_BODY_BYTES + CHUNK
    # A declared length over the cap: refused before a byte is read.
    status, pulled = await call_asgi(app, "/create-instance", [(b"content-length", b"400000000")], chunks=1024)
    assert (status, pulled) == (413, 0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'\xef\xbb\xbf{"instanceId": "bom1"}', "body: starts with a byte-order mark; send UTF-8 without one"),
        ('{"instanceId": "utf16"}'.encode("utf-16"), "body: is UTF-16 or UTF-32; send UTF-8"),
        ('{"instanceId": "utf16"}'.encode("utf-16-le"), "body: is UTF-16 or UTF-32; send UTF-8"),
        ('{"instanceId": "utf32"}'.encode("utf-32"), "body: is UTF-16 or UTF-32; send UTF-8"),
        (b'{"instanceId": "dup1", "tools": [], "tools": ["agentmail"]}', "body: the key 'tools' appears twice"),
        (b'{"instanceId": "dup2", "env": {"A": "1", "A": "2"}}', "body: the key 'A' appears twice"),
        (b'{"instanceId": "nan", "openrouterLimit": NaN}', "body: is not valid JSON"),
        (b'{"instanceId": "\xff"}', "body: is not valid UTF-8"),
    ],
)
async def test_bodies_json_would_accept_are_refused_clearly(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any], raw: bytes, message: str
) -> None:
    async with served(config_for(db_url, sim)) as api:
        response = await api.client.post("/create-instance", content=raw, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(message)
    assert await desired_count(conn) == 0


async def test_large_or_wrong_bodies_are_refused_and_errors_stay_bounded(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    async with served(config_for(db_url, sim)) as api:
        not_json = await api.client.post("/configure/x", content=b"variables=1", headers={"Content-Type": "text/plain"})
        assert not_json.status_code == 415 and not_json.json()["error"].startswith("body:")
        blank = await api.client.post("/status/batch", content=b" \n", headers=JSON)
        assert blank.status_code == 200  # whitespace only is no body, as an empty one is
        for path in ("/status/batch", "/redeploy/x", "/create-instance"):  # null is not "no body"
            null = await api.client.post(path, content=b"null", headers=JSON)
            assert null.status_code == 400 and null.json()["error"].startswith("body:"), (path, null.text)

        # 500,000 tools in 7 MB: decoded by the worker, refused by their count.
        tools = {"instanceId": "many", "tools": ["openrouter"] * 500_000}
        started = time.monotonic()
        many = await api.client.post("/create-instance", content=json.dumps(tools).encode(), headers=JSON)
        assert many.status_code == 400, many.text[:300]
        assert many.json() == {"error": "tools: has 500000 items; a body may hold at most 2000 JSON values"}
        assert time.monotonic() - started < 10
        # Deep structure that json.loads is slowest on, just under the cap.
        nested = b'{"instanceId": "nest", "env": {"A": [' + b",".join([b"[]"] * 2_000_000) + b"]}}"
        assert len(nested) < MAX_BODY_BYTES
        refused = await api.client.post("/create-instance", content=nested, headers=JSON)
        assert refused.status_code == 400 and refused.json()["error"].startswith("env.A: has 2000000 items")

        # Many problems: the first ones, then a count; each cut short, the input never echoed whole.
        wrong = {"x" * 5000: 1, "instanceIds": list(range(39))}
        problems = await api.client.post("/status/batch", json=wrong)
        assert problems.status_code == 400
        details = problems.json()["details"]
        assert len(details) == MAX_PROBLEMS + 1 and details[-1] == "... and 30 more problems"
        assert details[0] == "instanceIds.0: Input should be a valid string"
        long_name = await api.client.post("/status/batch", json={"x" * 5000: 1})
        assert long_name.status_code == 400 and len(long_name.json()["error"]) == MAX_PROBLEM_CHARS
        assert long_name.json()["error"].endswith("...")
        assert all(len(line) <= MAX_PROBLEM_CHARS for line in details)
        assert len(problems.content) < (MAX_PROBLEMS + 1) * MAX_PROBLEM_CHARS * 2 + 200

        # A legitimately large body is decoded by the worker and served.
        ids = [f"id{n}" for n in range(60_000)]
        batch = await api.client.post("/status/batch", json={"instanceIds": ids})
        assert batch.status_code == 200 and batch.json()["services"] == []
        assert await desired_count(conn) == 0


async def test_head_healthz_and_readyz(db_url: str, sim: Sim) -> None:
    ticks = {"age": 0.5}
    config = dataclasses.replace(config_for(db_url, sim), loop_probe=lambda: ticks["age"], loop_stale_after=10.0)
    async with served(config) as api, httpx.AsyncClient(base_url=api.root) as anonymous:
        head = await anonymous.head("/healthz")
        assert head.status_code == 200 and head.content == b""
        assert (await anonymous.head("/readyz")).status_code == 200
        ready = await anonymous.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["ready"] is True and body["database"]["ok"] is True and body["loop"]["running"] is True
        ticks["age"] = 60.0  # the loop stopped ticking
        stalled = await anonymous.get("/readyz")
        assert stalled.status_code == 503 and stalled.headers["retry-after"]
        assert stalled.json()["loop"] == {"ok": False, "running": True, "lastProgressAgeSeconds": 60.0}
        assert stalled.json()["database"]["ok"] is True
        document = (await api.client.get("/openapi.json")).json()
        assert document["paths"]["/readyz"]["get"]["security"] == []
        assert "422" not in json.dumps(document["paths"])


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


@pytest.mark.timeout(120)
async def test_a_lost_database_fails_fast_and_is_found_again_fast(
    private_postgres: tuple[EmbeddedPostgres, str], sim: Sim
) -> None:
    server, url = private_postgres
    async with served(config_for(url, sim)) as api, httpx.AsyncClient(base_url=api.root) as anonymous:
        assert (await api.client.get("/instances")).status_code == 200
        server.stop()

        for method, path, headers in [
            ("GET", "/instances", {}),
            ("GET", "/instances/someone", {}),
            ("POST", "/create-instance", {"Prefer": "respond-async"}),
            ("POST", "/status/batch", {}),
        ]:
            started = time.monotonic()
            body = {"instanceId": "during"} if path == "/create-instance" else None
            response = await api.client.request(method, path, json=body, headers=headers)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, (path, response.text)
            assert elapsed <= 2.0, (path, elapsed)
            assert response.headers["retry-after"] == "5"
            assert response.json() == {"error": "database unavailable; retry shortly"}
        assert (await anonymous.get("/healthz")).status_code == 200
        readiness = await anonymous.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["database"]["ok"] is False
        assert gauge("reconciler_api_database_up") == 0

        await asyncio.sleep(8)  # longer than a reconnection attempt's window: its backoff is spent
        server.start()
        back = time.monotonic()
        while (await api.client.get("/instances")).status_code != 200:
            assert time.monotonic() - back < 5.0, "the API did not recover within 5 s of the database"
            await asyncio.sleep(0.1)
        assert (await anonymous.get("/readyz")).status_code == 200
        assert gauge("reconciler_api_database_up") == 1


@dataclasses.dataclass(frozen=True)
class OwnAuthRoutes:
    """A third family of routes, as the paid-jobs routes mount: its own authentication, our pool."""

    prefix: str = "/v1/"

    def router(self, connection: ConnectionFactory) -> APIRouter:
        routes = APIRouter(route_class=StrictJsonRoute)

        @routes.post("/v1/echo")
        async def echo(request: Request, body: dict[str, int]) -> dict[str, Any]:
            if request.headers.get("x-caller-key") != "sk-test":
                raise ApiError(401, "caller key required")
            async with connection() as conn:
                row = await (await conn.execute("SELECT 41 + 1")).fetchone()
            return {"body": body, "answer": row[0] if row else None}

        return routes


async def test_a_third_router_mounts_in_one_line_with_its_own_auth_and_strict_bodies(db_url: str, sim: Sim) -> None:
    app = create_app(config_for(db_url, sim), paid=OwnAuthRoutes())
    async with (
        app.router.lifespan_context(app),
        serve_in_background(app) as root,
        httpx.AsyncClient(base_url=root) as anonymous,
    ):
        echoed = await anonymous.post("/v1/echo", json={"a": 1}, headers={"X-Caller-Key": "sk-test"})
        assert echoed.status_code == 200 and echoed.json() == {"body": {"a": 1}, "answer": 42}
        assert (await anonymous.post("/v1/echo", json={"a": 1})).status_code == 401
        duplicate = await anonymous.post(
            "/v1/echo", content=b'{"a": 1, "a": 2}', headers={"X-Caller-Key": "sk-test", **JSON}
        )
        assert duplicate.status_code == 400 and "appears twice" in duplicate.json()["error"]
        # Everything else still needs SERVICES_API_KEY.
        assert (await anonymous.get("/instances")).status_code == 401
        assert (await anonymous.get("/v1")).status_code == 401


async def test_destroy_reports_only_what_the_teardown_deleted(
    db_url: str, sim: Sim, runtime: Runtime, conn: psycopg.AsyncConnection[Any]
) -> None:
    # Every AgentMail create times out before AgentMail acts: the row records an intent, and no
    # inbox exists. A destroy must not claim one was destroyed (issue 11).
    never = FaultRule(provider="agentmail", operation="create_inbox", timeout_rate=1.0, timeout_seconds=0.05)
    sim.simulator.set_faults(FaultPlan(rules=[never]))
    await store.put(conn, InstanceSpec(instance_id="never", tools=(Tool.AGENTMAIL,)))
    await runtime.worker.drain()
    sim.simulator.set_faults(FaultPlan())
    in_doubt = await (await conn.execute(queries.SELECT_RESOURCE_KINDS, {"instance_id": "never"})).fetchall()
    assert ("agentmail_inbox",) in in_doubt  # what may exist, which the answer once reported

    async with served(config_for(db_url, sim)) as api:
        destroying = asyncio.create_task(api.client.delete("/destroy/never"))
        while (row := await store.get(conn, "never")) is not None and row.present:
            await asyncio.sleep(0.02)  # marked absent before the loop runs again: no retried create
        async with looping(runtime):
            destroyed = await destroying
    assert destroyed.status_code == 200, destroyed.text
    assert destroyed.json()["destroyed"]["agentmail"] is False


async def test_connections_the_server_ended_are_dropped_at_checkout_not_failed_on(db_url: str, sim: Sim) -> None:
    """A restart or ``pg_terminate_backend`` ends the pool's idle connections; requests still answer.

    The checkout check costs a round trip only when an idle connection's socket has something to
    read (issue 14): this is the case it exists for."""
    async with served(config_for(db_url, sim, pool_size=4)) as api:
        assert {r.status_code for r in await asyncio.gather(*(api.client.get("/instances") for _ in range(8)))} == {
            200
        }
        with psycopg.connect(db_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert row is not None and row[0] >= 2
        await asyncio.sleep(0.2)  # the server's goodbye reaches the sockets
        sequential = [(await api.client.get("/instances")).status_code for _ in range(6)]
        concurrent = [r.status_code for r in await asyncio.gather(*(api.client.get("/instances") for _ in range(6)))]
        assert sequential + concurrent == [200] * 12
