"""The HTTP API end to end: uvicorn on a loopback port, httpx, a real Postgres, the reconcile loop
running against the simulated providers. Every route of the seed Services API, its async and
idempotent variants, and the ways bad input is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from desired_state import store
from desired_state.http import ApiConfig, ApiConfigError, ApiStartError, begin_shutdown, create_app, serve
from desired_state.models import InstanceSpec, Tool
from reconciler.demo import simulated_settings
from reconciler.metrics import Metrics
from reconciler.runtime import Runtime, RuntimeOptions
from tests.conftest import FAST_ENGINE, Sim
from tests.support import API_KEY, AUTH, Api, config_for, desired_count, looping, served, until

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
async def api(db_url: str, sim: Sim, runtime: Runtime) -> AsyncIterator[Api]:
    async with looping(runtime), served(config_for(db_url, sim)) as served_api:
        yield served_api


def held(sim: Sim, provider: str, kind: str) -> list[dict[str, Any]]:
    return list(sim.simulator.snapshot()[provider][kind])


async def openrouter_secrets(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    # The values in clear (observed_resources.secret is sealed: reconciler/secrets_box.py).
    query = "SELECT env_value FROM instance_services WHERE tool_id = 'openrouter' AND env_value IS NOT NULL"
    rows = await (await conn.execute(query)).fetchall()
    return [row[0] for row in rows]


# -- authentication and configuration ------------------------------------------------------------------


async def test_healthz_is_public_and_every_other_route_needs_the_key(db_url: str, sim: Sim) -> None:
    async with served(config_for(db_url, sim)) as api, httpx.AsyncClient(base_url=api.root) as anonymous:
        health = await anonymous.get("/healthz")
        assert health.status_code == 200 and health.json() == {"ok": True}

        for method, path in [
            ("GET", "/registry"),
            ("GET", "/openapi.json"),
            ("POST", "/create-instance"),
            ("POST", "/status/batch"),
            ("DELETE", "/destroy/abc"),
            ("GET", "/instances"),
            ("GET", "/no-such-route"),
        ]:
            response = await anonymous.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.json() == {"error": "Invalid or missing API key"}
            assert response.headers["www-authenticate"] == "Bearer"

        for header in ("Bearer wrong", f"Basic {API_KEY}", f"Bearer {API_KEY}x", "Bearer", ""):
            response = await anonymous.get("/registry", headers={"Authorization": header})
            assert response.status_code == 401, header
        # The scheme is case-insensitive, as in the seed.
        assert (await anonymous.get("/registry", headers={"Authorization": f"bearer {API_KEY}"})).status_code == 200

        unknown = await api.client.get("/no-such-route")
        assert unknown.status_code == 404 and "error" in unknown.json()
        schema = (await api.client.get("/openapi.json")).json()
        assert "/create-instance" in schema["paths"] and schema["paths"]["/healthz"]["get"]["security"] == []


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_key_refuses_to_build_the_app(key: str) -> None:
    with pytest.raises(ApiConfigError, match="SERVICES_API_KEY"):
        create_app(ApiConfig(api_key=key, database_url="postgresql://unused/db", project_id=None, environment_id=None))


def test_the_config_never_shows_the_key_or_the_database_url() -> None:
    config = ApiConfig(api_key="s3cret", database_url="postgresql://u:pw@h/db", project_id="p", environment_id=None)
    assert "s3cret" not in repr(config) and "pw@" not in repr(config)


async def test_registry_lists_the_seed_tools_and_which_are_configured(db_url: str, sim: Sim) -> None:
    config = config_for(db_url, sim, tools_enabled=frozenset({"openrouter", "agentmail"}))
    async with served(config) as api:
        response = await api.client.get("/registry")
    assert response.status_code == 200
    assert response.json() == {
        "tools": [
            {
                "id": "openrouter",
                "name": "OpenRouter",
                "mode": "per-instance-key",
                "envKeys": ["OPENROUTER_API_KEY"],
                "available": True,
            },
            {
                "id": "agentmail",
                "name": "AgentMail",
                "mode": "per-instance-inbox",
                "envKeys": ["AGENTMAIL_INBOX_ID"],
                "available": True,
            },
            {
                "id": "telnyx",
                "name": "Telnyx",
                "mode": "per-instance-phone",
                "envKeys": ["TELNYX_PHONE_NUMBER", "TELNYX_MESSAGING_PROFILE_ID"],
                "available": False,
            },
        ]
    }


async def test_serve_runs_until_stop_and_reports_a_taken_port(db_url: str, sim: Sim) -> None:
    app = create_app(config_for(db_url, sim))
    stop = asyncio.Event()
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
        for _ in range(200):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    break
            await asyncio.sleep(0.02)
        assert (await client.get("/instances")).json() == {"items": [], "nextCursor": None}
        # A second server on the same port fails with a clear error, not a process exit.
        with pytest.raises(ApiStartError, match=f"cannot listen on 127.0.0.1:{port}"):
            await serve(create_app(config_for(db_url, sim)), "127.0.0.1", port, asyncio.Event())
    stop.set()
    await asyncio.wait_for(task, timeout=15)


# -- create, status, destroy -----------------------------------------------------------------------------


async def test_create_waits_for_ready_answers_in_the_seed_shape_and_destroy_removes_everything(
    api: Api, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    body = {"instanceId": "rnM8UBQ_fZCz", "name": "rnM8UBQ_fZCz", "tools": ["openrouter", "agentmail"]}
    created = await api.client.post("/create-instance", json=body)
    assert created.status_code == 200, created.text
    answer = created.json()

    service = next(s for s in held(sim, "railway", "services") if s["name"] == "convos-agent-rnM8UBQ_fZCz")
    key = next(k for k in held(sim, "openrouter", "keys") if k["name"] == "convos-agent-rnM8UBQ_fZCz")
    inbox = next(i for i in held(sim, "agentmail", "inboxes") if i["name"] == "convos-agent-rnM8UBQ_fZCz")
    domain = next(d for d in held(sim, "railway", "domains") if d["service_id"] == service["id"])
    assert answer == {
        "instanceId": "rnM8UBQ_fZCz",
        "serviceId": service["id"],
        "url": f"https://{domain['domain']}",
        "services": {"openrouter": {"resourceId": key["id"]}, "agentmail": {"resourceId": inbox["id"]}},
    }
    assert service["deploy_status"] == "SUCCESS"
    secrets = await openrouter_secrets(conn)
    assert secrets and all(secret not in created.text for secret in secrets)

    # The same create again is idempotent: same answer, nothing new at the providers.
    again = await api.client.post("/create-instance", json=body)
    assert again.status_code == 200 and again.json() == answer
    assert len(held(sim, "railway", "services")) == 1 and len(held(sim, "openrouter", "keys")) == 1
    # The same id with another spec is a conflict, and changes nothing.
    conflict = await api.client.post("/create-instance", json={**body, "tools": ["openrouter"]})
    assert conflict.status_code == 409 and "different spec" in conflict.json()["error"]

    # Batch status reads our tables (zero provider calls) in the seed's shape.
    batch = await api.client.post("/status/batch")
    assert batch.status_code == 200
    assert batch.json() == {
        "projectId": sim.simulator.railway.project_id,
        "services": [
            {
                "instanceId": "rnM8UBQ_fZCz",
                "serviceId": service["id"],
                "name": "convos-agent-rnM8UBQ_fZCz",
                "deployStatus": "SUCCESS",
                "domain": domain["domain"],
                "image": "ghcr.io/xmtplabs/convos-runtime:latest",
                "environmentIds": [service["environment_id"]],
            }
        ],
    }
    filtered = await api.client.post("/status/batch", json={"instanceIds": ["nope", "rnM8UBQ_fZCz", "bad id!"]})
    assert [s["instanceId"] for s in filtered.json()["services"]] == ["rnM8UBQ_fZCz"]
    none = await api.client.post("/status/batch", json={"instanceIds": []})
    assert none.json()["services"] == []

    # The detail view: spec, generations, phase, resources, events; never a secret.
    detail = await api.client.get("/instances/rnM8UBQ_fZCz")
    assert detail.status_code == 200
    view = detail.json()
    assert view["phase"] == "Ready" and view["generation"] == view["observedGeneration"] == 1
    assert view["spec"]["tools"] == ["openrouter", "agentmail"] and view["present"] is True
    assert view["url"] == answer["url"] and view["deployStatus"] == "SUCCESS"
    kinds = {r["kind"]: r for r in view["resources"]}
    assert set(kinds) == {
        "openrouter_key",
        "agentmail_inbox",
        "railway_service",
        "railway_volume",
        "railway_domain",
        "railway_deployment",
    }
    assert kinds["openrouter_key"]["externalId"] == key["id"] and kinds["openrouter_key"]["status"] == "ready"
    assert any(e["action"] == "create" for e in view["events"])
    assert all(secret not in detail.text for secret in secrets)

    destroyed = await api.client.delete("/destroy/rnM8UBQ_fZCz")
    assert destroyed.status_code == 200, destroyed.text
    assert destroyed.json() == {
        "instanceId": "rnM8UBQ_fZCz",
        "destroyed": {"openrouter": True, "agentmail": True, "telnyx": False, "volumes": True, "service": True},
    }
    assert await desired_count(conn) == 0
    for provider, kind in [
        ("railway", "services"),
        ("railway", "volumes"),
        ("openrouter", "keys"),
        ("agentmail", "inboxes"),
    ]:
        assert held(sim, provider, kind) == [], (provider, kind)
    assert (await api.client.post("/status/batch")).json()["services"] == []
    # Gone is gone: the seed's pool treats this 404 as success.
    assert (await api.client.delete("/destroy/rnM8UBQ_fZCz")).status_code == 404
    assert (await api.client.get("/instances/rnM8UBQ_fZCz")).status_code == 404


async def test_destroy_of_an_instance_the_replaced_system_made(
    api: Api, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # instance_infra and instance_services rows and their resources, but no desired row: an
    # upgraded database (made here by converging one and then dropping its desired row).
    await store.put(conn, InstanceSpec(instance_id="old2", tools=(Tool.OPENROUTER,)))
    await until(lambda: _phase_is(conn, "old2", "Ready"))
    await conn.execute("DELETE FROM desired_instances WHERE instance_id = 'old2'")
    assert [s["instanceId"] for s in (await api.client.post("/status/batch")).json()["services"]] == ["old2"]

    destroyed = await api.client.delete("/destroy/old2")
    assert destroyed.status_code == 200, destroyed.text
    assert destroyed.json()["destroyed"] == {
        "openrouter": True, "agentmail": False, "telnyx": False, "volumes": True, "service": True
    }
    for provider, kind in [("railway", "services"), ("railway", "volumes"), ("openrouter", "keys")]:
        assert held(sim, provider, kind) == [], (provider, kind)
    assert (await api.client.post("/status/batch")).json()["services"] == []


async def _phase_is(conn: psycopg.AsyncConnection[Any], instance_id: str, phase: str) -> bool:
    row = await store.get(conn, instance_id)
    return row is not None and row.phase == phase


async def test_respond_async_answers_202_at_once_with_a_status_url(
    api: Api, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    started = time.monotonic()
    accepted = await api.client.post(
        "/create-instance", json={"instanceId": "asyncOne", "tools": ["agentmail"]}, headers=ASYNC
    )
    assert accepted.status_code == 202, accepted.text
    assert time.monotonic() - started < 2
    assert accepted.headers["location"] == "/instances/asyncOne"
    assert accepted.headers["preference-applied"] == "respond-async"
    body = accepted.json()
    assert body["instanceId"] == "asyncOne" and body["statusUrl"] == "/instances/asyncOne"
    assert body["generation"] == 1

    async def ready() -> bool:
        view = (await api.client.get(body["statusUrl"])).json()
        return bool(view["phase"] == "Ready" and view["observedGeneration"] == 1)

    await until(ready)
    # Once converged, the synchronous create answers at once with the seed's shape.
    sync = await api.client.post("/create-instance", json={"instanceId": "asyncOne", "tools": ["agentmail"]})
    assert sync.status_code == 200 and sync.json()["services"]["agentmail"]["resourceId"]

    gone = await api.client.delete("/destroy/asyncOne", headers=ASYNC)
    assert gone.status_code == 202 and gone.json()["generation"] is None

    async def deleted() -> bool:
        return (await api.client.get("/instances/asyncOne")).status_code == 404

    await until(deleted)
    assert held(sim, "agentmail", "inboxes") == [] and held(sim, "railway", "services") == []


async def test_a_wait_that_runs_out_answers_202_and_the_write_stands(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # No reconcile loop: nothing converges, so every write runs out of time.
    async with served(config_for(db_url, sim, wait_timeout=0.3)) as api:
        slow = await api.client.post("/create-instance", json={"instanceId": "waits"})
        assert slow.status_code == 202 and slow.json()["phase"] == "Pending"
        assert "preference-applied" not in slow.headers
        row = await store.get(conn, "waits")
        assert row is not None and row.present

        # Prefer: wait=0 bounds the wait further; respond-async with wait waits that long first.
        started = time.monotonic()
        assert (await api.client.post("/redeploy/waits", headers={"Prefer": "wait=0"})).status_code == 202
        assert time.monotonic() - started < 0.3
        both = await api.client.post("/redeploy/waits", headers={"Prefer": "respond-async, wait=0.1"})
        assert both.status_code == 202 and both.headers["preference-applied"] == "respond-async"
        view = (await api.client.get("/instances/waits")).json()
        assert view["spec"]["redeploy"] == 2 and view["generation"] == 3


async def test_shutting_down_answers_waiting_writes_with_202(db_url: str, sim: Sim) -> None:
    async with served(config_for(db_url, sim, wait_timeout=60.0)) as api:
        waiting = asyncio.create_task(api.client.post("/create-instance", json={"instanceId": "atShutdown"}))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        begin_shutdown(api.app)
        answer = await waiting
        assert answer.status_code == 202 and time.monotonic() - started < 2


async def test_an_instance_that_fails_answers_502_with_the_reason(db_url: str, sim: Sim) -> None:
    # The loop runs without a Telnyx key, while the API believes Telnyx is configured.
    settings = simulated_settings(sim.root, sim.simulator.railway.project_id).model_copy(update={"telnyx_key": None})
    options = RuntimeOptions(engine=FAST_ENGINE, tick_seconds=0.1)
    async with (
        Runtime(settings, db_url, options, Metrics(CollectorRegistry())) as runtime,
        looping(runtime),
        served(config_for(db_url, sim)) as api,
    ):
        failed = await api.client.post("/create-instance", json={"instanceId": "noPhone", "tools": ["telnyx"]})
        assert failed.status_code == 502, failed.text
        assert "TELNYX_API_KEY is not set" in failed.json()["error"]
        assert failed.headers["location"] == "/instances/noPhone"
        view = (await api.client.get("/instances/noPhone")).json()
        assert view["phase"] == "Failed" and "TELNYX_API_KEY" in view["lastError"]
        # A teardown that cannot proceed is just as visible: the intent to buy a number was
        # recorded, and without the key the reconciler cannot look for it.
        stuck = await api.client.delete("/destroy/noPhone")
        assert stuck.status_code == 502 and "TELNYX_API_KEY is not set" in stuck.json()["error"]
        assert (await api.client.get("/instances/noPhone")).json()["present"] is False


# -- configure, redeploy, provision, destroy one tool ----------------------------------------------------------


async def test_configure_merges_variables_and_redeploy_deploys_again(
    api: Api, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    created = await api.client.post("/create-instance", json={"instanceId": "conf1", "env": {"A": "1"}})
    assert created.status_code == 200

    def service() -> dict[str, Any]:
        return next(s for s in held(sim, "railway", "services") if s["name"] == "convos-agent-conf1")

    def deployments() -> int:
        return sum(1 for d in held(sim, "railway", "deployments") if d.get("service_id") == service()["id"])

    first_deployments = deployments()
    configured = await api.client.post("/configure/conf1", json={"variables": {"B": "2", "A": "one"}})
    assert configured.status_code == 200 and configured.json() == {"instanceId": "conf1", "ok": True}
    variables = service()["variables"]
    assert variables["A"] == "one" and variables["B"] == "2"
    view = (await api.client.get("/instances/conf1")).json()
    assert view["spec"]["envKeys"] == ["A", "B"] and view["generation"] == 2
    assert "one" not in json.dumps(view["spec"])  # values are never shown

    redeployed = await api.client.post("/redeploy/conf1")
    assert redeployed.status_code == 200 and redeployed.json() == {"instanceId": "conf1", "ok": True}
    assert deployments() > first_deployments + 1
    view = (await api.client.get("/instances/conf1")).json()
    assert view["spec"]["redeploy"] == 1 and view["observedGeneration"] == view["generation"] == 3

    both = await api.client.post("/configure/conf1", json={"variables": {"C": "3"}, "redeploy": True})
    assert both.status_code == 200
    view = (await api.client.get("/instances/conf1")).json()
    assert view["spec"]["redeploy"] == 2 and view["spec"]["envKeys"] == ["A", "B", "C"]

    # Setting what is already set writes nothing and answers at once.
    same = await api.client.post("/configure/conf1", json={"variables": {"C": "3"}})
    assert same.status_code == 200
    assert (await api.client.get("/instances/conf1")).json()["generation"] == view["generation"]

    assert (await api.client.post("/configure/conf1", json={"variables": {}})).status_code == 400
    assert (await api.client.post("/configure/nobody", json={"variables": {"A": "1"}})).status_code == 404
    assert (await api.client.post("/redeploy/nobody")).status_code == 404
    bad_name = await api.client.post("/configure/conf1", json={"variables": {"1BAD": "x"}})
    assert bad_name.status_code == 400 and bad_name.json()["error"].startswith("variables:")


async def test_concurrent_configures_both_land(api: Api, conn: psycopg.AsyncConnection[Any]) -> None:
    assert (await api.client.post("/create-instance", json={"instanceId": "race"}, headers=ASYNC)).status_code == 202
    answers = await asyncio.gather(
        *(api.client.post("/configure/race", json={"variables": {f"V{n}": str(n)}}, headers=ASYNC) for n in range(8))
    )
    assert [a.status_code for a in answers] == [202] * 8
    row = await store.get(conn, "race")
    assert row is not None and row.spec.env == {f"V{n}": str(n) for n in range(8)}


async def test_provision_and_destroy_one_tool(api: Api, sim: Sim, conn: psycopg.AsyncConnection[Any]) -> None:
    assert (
        await api.client.post("/create-instance", json={"instanceId": "tools1", "tools": ["agentmail"]})
    ).status_code == 200

    key = await api.client.post("/provision/tools1/openrouter", json={"config": {"limit": 5}})
    assert key.status_code == 200, key.text
    held_key = next(k for k in held(sim, "openrouter", "keys") if k["name"] == "convos-agent-tools1")
    assert key.json() == {
        "toolId": "openrouter",
        "resourceId": held_key["id"],
        "envKey": "OPENROUTER_API_KEY",
        "status": "active",
    }
    assert held_key["limit"] == 5
    assert all(secret not in key.text for secret in await openrouter_secrets(conn))
    again = await api.client.post("/provision/tools1/openrouter")
    assert again.status_code == 409 and "already provisioned" in again.json()["error"]

    phone = await api.client.post("/provision/tools1/telnyx")
    assert phone.status_code == 200, phone.text
    number = phone.json()["resourceId"]
    assert phone.json()["envKey"] == "TELNYX_PHONE_NUMBER" and number.startswith("+")
    assert [n["phone_number"] for n in held(sim, "telnyx", "phone_numbers")] == [number]

    wrong = await api.client.delete("/destroy/tools1/telnyx/+10000000000")
    assert wrong.status_code == 404
    removed = await api.client.delete(f"/destroy/tools1/telnyx/{number}")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"toolId": "telnyx", "resourceId": number, "deleted": True}
    assert held(sim, "telnyx", "phone_numbers") == []
    services = await (
        await conn.execute("SELECT tool_id FROM instance_services WHERE instance_id = 'tools1' ORDER BY tool_id")
    ).fetchall()
    assert [s[0] for s in services] == ["agentmail", "openrouter"]
    assert (await api.client.delete(f"/destroy/tools1/telnyx/{number}")).status_code == 404

    # Async provision answers 202, then converges.
    accepted = await api.client.post("/provision/tools1/telnyx", headers=ASYNC)
    assert accepted.status_code == 202

    async def has_phone() -> bool:
        row = await (
            await conn.execute("SELECT 1 FROM instance_services WHERE instance_id = 'tools1' AND tool_id = 'telnyx'")
        ).fetchone()
        return row is not None

    await until(has_phone)

    unknown_tool = await api.client.post("/provision/tools1/slack")
    assert unknown_tool.status_code == 400 and "toolId" in unknown_tool.json()["error"]
    limit_elsewhere = await api.client.post("/provision/tools1/agentmail", json={"config": {"limit": 3}})
    assert limit_elsewhere.status_code == 400 and "config.limit" in limit_elsewhere.json()["error"]
    assert (await api.client.post("/provision/nobody/openrouter")).status_code == 404


# -- bad input ------------------------------------------------------------------------------------------------

BAD_CREATES: list[tuple[bytes, str]] = [
    (b"{not json", "body"),
    (b"", "body"),
    (b"[]", "body"),
    (b'"text"', "body"),
    (b'{"name": "x"}', "instanceId"),
    (b'{"instanceId": "a b"}', "instanceId"),
    (b'{"instanceId": "' + b"x" * 33 + b'"}', "instanceId"),
    (b'{"instanceId": 12}', "instanceId"),
    (b'{"instanceId": "ok", "tools": "openrouter"}', "tools"),
    (b'{"instanceId": "ok", "tools": ["slack"]}', "tools.0"),
    (b'{"instanceId": "ok", "tools": ["agentmail", "agentmail"]}', "tools"),
    (b'{"instanceId": "ok", "surprise": 1}', "surprise"),
    (b'{"instanceId": "ok", "name": 5}', "name"),
    (b'{"instanceId": "ok", "openrouterLimit": "20"}', "openrouterLimit"),
    (b'{"instanceId": "ok", "openrouterLimit": -1}', "openrouterLimit"),
    (b'{"instanceId": "ok", "redeploy": 1.5}', "redeploy"),
    (b'{"instanceId": "ok", "env": {"A": 1}}', "env.A"),
    (b'{"instanceId": "ok", "env": {"bad-name": "1"}}', "env"),
    (b'{"instanceId": "ok", "image": "Not An Image"}', "image"),
    (b'{"instanceId": "ok", "name": "nul\\u0000"}', "name"),
    (b'{"instanceId": "ok", "env": {"A": "nul\\u0000"}}', "env.A"),
    (b'{"instanceId": "ok", "name": "\\ud800"}', "name"),
]


async def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    async with served(config_for(db_url, sim, tools_enabled=frozenset({"openrouter", "agentmail"}))) as api:
        for raw, field in BAD_CREATES:
            response = await api.client.post(
                "/create-instance", content=raw, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (raw, response.text)
            error = response.json()["error"]
            assert error.startswith(field), (raw, error)

        unavailable = await api.client.post("/create-instance", json={"instanceId": "ok", "tools": ["telnyx"]})
        assert unavailable.status_code == 400
        assert unavailable.json()["error"] == "tools: telnyx is not available (its provider key is not configured)"
        assert await desired_count(conn) == 0

        # Several problems at once: each one named, in details too.
        many = await api.client.post("/create-instance", json={"instanceId": "a b", "tools": "x", "extra": 1})
        assert many.status_code == 400 and len(many.json()["details"]) == 3

        for path, raw in [
            ("/status/batch", b'{"instanceIds": "abc"}'),
            ("/status/batch", b'{"instanceIds": [1]}'),
            ("/status/batch", b'{"other": []}'),
            ("/configure/x", b'{"variables": {"A": "1"}, "redeploy": "yes"}'),
            ("/configure/x", b'{"variables": []}'),
            ("/configure/x", b"{}"),
            ("/redeploy/x", b'{"now": true}'),
            ("/provision/x/openrouter", b'{"config": {"limit": "5"}}'),
            ("/provision/x/openrouter", b'{"config": {"limit": 0}}'),
            ("/configure/bad%20id", b'{"variables": {"A": "1"}}'),
            ("/configure/" + "x" * 33, b'{"variables": {"A": "1"}}'),
        ]:
            response = await api.client.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (path, raw, response.text)
            assert set(response.json()) <= {"error", "details"}

        for path in [
            "/instances?phase=Sleeping",
            "/instances?limit=0",
            "/instances?tool=slack",
            "/instances?present=maybe",
            "/instances?cursor=notacursor",
            "/instances/bad%20id",
            "/instances?cursor=" + "A" * 300,
        ]:
            response = await api.client.get(path)
            assert response.status_code == 400, (path, response.text)
        assert (await api.client.delete("/destroy/bad%20id")).status_code == 400
        assert (await api.client.delete("/destroy/nobody")).status_code == 404
        assert (await api.client.delete("/destroy/nobody/telnyx/x")).status_code == 404
        assert (await api.client.delete("/destroy/nobody/slack/x")).status_code == 400
        assert await desired_count(conn) == 0


async def test_a_create_under_an_id_being_destroyed_is_a_conflict(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(conn, InstanceSpec(instance_id="leaving"))
    await store.mark_absent(conn, ["leaving"])
    async with served(config_for(db_url, sim)) as api:
        response = await api.client.post("/create-instance", json={"instanceId": "leaving"})
        assert response.status_code == 409 and "being destroyed" in response.json()["error"]
        assert (await api.client.post("/configure/leaving", json={"variables": {"A": "1"}})).status_code == 409
        # A spec written over plain SQL that is not valid cannot be merged into.
        await conn.execute(
            "INSERT INTO desired_instances (instance_id, spec) VALUES ('broken', '{\"tools\": [\"slack\"]}')"
        )
        maxed = await api.client.post(
            "/create-instance", json={"instanceId": "maxed", "redeploy": 2**31}, headers=ASYNC
        )
        assert maxed.status_code == 202
        at_limit = await api.client.post("/redeploy/maxed")
        assert at_limit.status_code == 409 and "redeploy" in at_limit.json()["error"]
        broken = await api.client.post("/redeploy/broken")
        assert broken.status_code == 409 and "spec.tools" in broken.json()["error"]
        view = await api.client.get("/instances/broken")
        assert view.status_code == 200 and view.json()["spec"]["tools"] == ["slack"]


# -- listing --------------------------------------------------------------------------------------------------


async def test_list_instances_filters_and_pages(db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]) -> None:
    for index in range(7):
        tools = (Tool.OPENROUTER,) if index % 2 else (Tool.AGENTMAIL, Tool.TELNYX)
        await store.put(conn, InstanceSpec(instance_id=f"inst{index}", tools=tools))
    await conn.execute("UPDATE desired_instances SET phase = 'Ready' WHERE instance_id IN ('inst1', 'inst2')")
    await store.mark_absent(conn, ["inst3"])

    async with served(config_for(db_url, sim)) as api:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await api.client.get("/instances", params=params)).json()
            seen.extend(item["instanceId"] for item in page["items"])
            pages += 1
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert seen == [f"inst{i}" for i in range(7)] and pages == 3

        async def ids(**params: Any) -> list[str]:
            response = await api.client.get("/instances", params=params)
            assert response.status_code == 200, response.text
            return [item["instanceId"] for item in response.json()["items"]]

        assert await ids(tool="openrouter") == ["inst1", "inst3", "inst5"]
        assert await ids(tool="telnyx") == ["inst0", "inst2", "inst4", "inst6"]
        assert await ids(present="false") == ["inst3"]
        assert await ids(phase="Deleting") == ["inst3"]
        assert await ids(phase="Ready") == ["inst1", "inst2"]
        assert await ids(phase="Ready", tool="openrouter") == ["inst1"]
        assert await ids(phase="Pending", present="true") == ["inst0", "inst4", "inst5", "inst6"]
        item = (await api.client.get("/instances", params={"limit": 1})).json()["items"][0]
        assert item["tools"] == ["agentmail", "telnyx"] and item["phase"] == "Pending"
