"""The simulator's admin routes need no token, so no answer of theirs may hold a secret.

Issue 11 found ``GET /_admin/resources`` returning the instances' OpenRouter keys (the Railway
services' variables) although docs/simulator.md promised it never returns a secret. Here every
kind of secret the fakes ever see (an OpenRouter key's plaintext, Railway variable values set at
create and by a patch) is put in, and every admin route's answer is searched for it.
"""

from __future__ import annotations

import httpx

from providers.simulated.app import Simulator, SimulatorSettings
from providers.simulated.faults import FaultPlan, FaultRule

AUTH = {"Authorization": "Bearer admin-test"}
RAILWAY = "/railway/graphql/v2"
SERVICE_CREATE = "mutation($input: ServiceCreateInput!) { serviceCreate(input: $input) { id } }"
PATCH = "mutation($e: String!, $p: EnvironmentConfig) { environmentPatchCommit(environmentId: $e, patch: $p) }"
ADMIN_GETS = ("/_admin/resources", "/_admin/faults", "/_admin/requests")
ADMIN_POSTS = ("/_admin/faults/reset", "/_admin/requests/reset", "/_admin/reset")


async def test_no_admin_route_answers_a_secret() -> None:
    sim = Simulator(SimulatorSettings(seed=4, faults=FaultPlan(rules=[FaultRule(provider="openrouter", list_lag=0)])))
    transport = httpx.ASGITransport(app=sim.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test", headers=AUTH) as client:
        created = await client.post("/openrouter/api/v1/keys", json={"name": "convos-agent-a"})
        key = created.json()["key"]
        assert key.startswith("sk-or-v1-")
        created_variable = "created-secret-5f1e9a"
        service = await client.post(
            RAILWAY,
            json={
                "query": SERVICE_CREATE,
                "variables": {
                    "input": {
                        "projectId": sim.railway.project_id,
                        "name": "convos-agent-a",
                        "source": {"image": "ghcr.io/example/runtime:1"},
                        "variables": {"GATEWAY_TOKEN": created_variable},
                    }
                },
            },
        )
        service_id = service.json()["data"]["serviceCreate"]["id"]
        patch = {"services": {service_id: {"variables": {"OPENROUTER_API_KEY": {"value": key}}}}}
        production = sim.railway.environment_ids["production"]
        committed = await client.post(RAILWAY, json={"query": PATCH, "variables": {"e": production, "p": patch}})
        assert "errors" not in committed.json()
        await client.post("/agentmail/v0/inboxes", json={"username": "convos-agent-a", "client_id": "a"})
        await client.post("/upstream/echo", json={"token": "echo-is-not-a-secret-store"})

        secrets = (key, created_variable)
        # The state is there: Python's snapshot (tests' view) still shows it...
        [held] = sim.snapshot()["railway"]["services"]
        assert held["variables"] == {"GATEWAY_TOKEN": created_variable, "OPENROUTER_API_KEY": key}
        # ...and every admin answer shows the names, never the values.
        for path in ADMIN_GETS:
            answer = await client.get(path)
            assert answer.status_code == 200
            assert not [s for s in secrets if s in answer.text], path
        resources = (await client.get("/_admin/resources")).json()
        [service_view] = resources["railway"]["services"]
        assert set(service_view["variables"]) == {"GATEWAY_TOKEN", "OPENROUTER_API_KEY"}
        assert set(service_view["variables"].values()) == {"<hidden>"}
        assert {value for i in service_view["instances"] for value in i["variables"].values()} == {"<hidden>"}
        assert [k["name"] for k in resources["openrouter"]["keys"]] == ["convos-agent-a"]
        for path in ADMIN_POSTS:
            answer = await client.post(path)
            assert answer.status_code == 200
            assert not [s for s in secrets if s in answer.text], path
