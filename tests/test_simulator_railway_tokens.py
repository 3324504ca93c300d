"""The simulated Railway as a user's own tooling meets it: a chosen project id, and the root
fields an account or a project token may call (``me``, ``projects``, ``projectToken``).

Issue 10 found that setting ``RAILWAY_PROJECT_ID`` got "Not Authorized" (only the generated id
worked) and that ``projects`` answered ``NOT_SUPPORTED``. On Railway a token's header says its
kind: ``Authorization: Bearer`` carries an account (or workspace) token, which may ask ``me``
and ``projects``; ``Project-Access-Token`` carries a project token, which reaches one project and
has no user behind it, so ``me`` and ``projects`` are "Not Authorized" and ``projectToken`` tells
its scope.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.testing

import cli
from providers.http import ProviderHTTP
from providers.railway import RailwayClient, RailwayConfig, railway_auth_headers
from providers.simulated.app import Simulator, SimulatorSettings

ROOT = Path(__file__).resolve().parent.parent
RAILWAY = "/railway/graphql/v2"
CHOSEN = "8f7c2b9e-1d3a-4c5b-9e6f-0a1b2c3d4e5f"
ACCOUNT = {"Authorization": "Bearer account-token"}
PROJECT = {"Project-Access-Token": "project-token"}
PROJECT_QUERY = "query($id: String!) { project(id: $id) { id name } }"


@pytest.fixture
async def client() -> AsyncIterator[tuple[Simulator, httpx.AsyncClient]]:
    sim = Simulator(SimulatorSettings(seed=3, railway_project_id=CHOSEN))
    transport = httpx.ASGITransport(app=sim.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test") as http:
        yield sim, http


async def ask(http: httpx.AsyncClient, headers: dict[str, str], query: str, **variables: Any) -> dict[str, Any]:
    answer = await http.post(RAILWAY, json={"query": query, "variables": variables}, headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def error_of(body: dict[str, Any]) -> tuple[str, str]:
    [error] = body["errors"]
    return error["message"], error["extensions"]["code"]


async def test_the_chosen_project_id_is_the_project(client: tuple[Simulator, httpx.AsyncClient]) -> None:
    sim, http = client
    assert sim.railway.project_id == CHOSEN
    for headers in (ACCOUNT, PROJECT):
        body = await ask(http, headers, PROJECT_QUERY, id=CHOSEN)
        assert body["data"]["project"] == {"id": CHOSEN, "name": "convos-agents"}
    other = Simulator(SimulatorSettings(seed=3)).railway.project_id
    assert other != CHOSEN  # the id the seed alone would give is not this project's
    assert error_of(await ask(http, ACCOUNT, PROJECT_QUERY, id=other)) == ("Not Authorized", "FORBIDDEN")


async def test_the_reconcilers_client_works_with_the_chosen_id(client: tuple[Simulator, httpx.AsyncClient]) -> None:
    sim, http = client
    provider = ProviderHTTP("railway", http, "http://sim.test" + RAILWAY, railway_auth_headers("any"))
    railway = RailwayClient(provider, RailwayConfig(project_id=CHOSEN, environment_name="production"))
    assert await railway.environment_id() == sim.railway.environment_ids["production"]


async def test_the_seeded_id_stays_the_default() -> None:
    assert (
        Simulator(SimulatorSettings(seed=3)).railway.project_id
        == Simulator(SimulatorSettings(seed=3)).railway.project_id
    )
    assert SimulatorSettings().railway_project_id is None
    # The id comes from the seed: another seed, another id, and neither is the chosen one.
    by_seed = {seed: Simulator(SimulatorSettings(seed=seed)).railway.project_id for seed in (3, 4)}
    assert by_seed[3] != by_seed[4] and CHOSEN not in by_seed.values()


async def test_an_account_token_lists_its_projects_and_asks_who_it_is(
    client: tuple[Simulator, httpx.AsyncClient],
) -> None:
    _, http = client
    query = "{ projects { edges { node { id name environments { edges { node { name } } } } } } }"
    projects = (await ask(http, ACCOUNT, query))["data"]["projects"]["edges"]
    assert [edge["node"]["id"] for edge in projects] == [CHOSEN]
    assert {e["node"]["name"] for e in projects[0]["node"]["environments"]["edges"]} == {"production", "staging"}
    filtered = await ask(http, ACCOUNT, "{ projects(first: 1, includeDeleted: false) { edges { node { id } } } }")
    assert len(filtered["data"]["projects"]["edges"]) == 1
    me = (await ask(http, ACCOUNT, "{ me { id email name registrationStatus workspaces { id } } }"))["data"]["me"]
    assert me["email"] and me["registrationStatus"] == "ONBOARDED" and me["workspaces"] == []
    assert error_of(await ask(http, ACCOUNT, "{ projectToken { projectId } }")) == ("Not Authorized", "FORBIDDEN")


async def test_a_project_token_reaches_its_project_but_not_the_account(
    client: tuple[Simulator, httpx.AsyncClient],
) -> None:
    sim, http = client
    for query in ("{ me { id } }", "{ projects { edges { node { id } } } }"):
        body = await ask(http, PROJECT, query)
        assert body["data"] is None
        assert error_of(body) == ("Not Authorized", "FORBIDDEN")
    scope = (await ask(http, PROJECT, "{ projectToken { projectId environmentId project { name } } }"))["data"]
    assert scope["projectToken"] == {
        "projectId": CHOSEN,
        "environmentId": sim.railway.environment_ids["production"],
        "project": {"name": "convos-agents"},
    }


async def test_root_fields_without_a_resolver_still_say_so(client: tuple[Simulator, httpx.AsyncClient]) -> None:
    _, http = client
    body = await ask(http, ACCOUNT, "{ templatesCount }")
    message, code = error_of(body)
    assert code == "NOT_SUPPORTED" and "not supported by the simulator" in message
    assert {"me", "projects", "projectToken", "project"} <= sim_resolved()


def sim_resolved() -> frozenset[str]:
    return Simulator(SimulatorSettings(seed=1)).railway.resolved


@pytest.mark.parametrize("bad", ["", "has space", "tab\there", "x" * 129, "new\nline"])
def test_a_project_id_that_is_not_one_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^railway_project_id \(RAILWAY_PROJECT_ID\): "):
        SimulatorSettings(railway_project_id=bad)


def test_simulate_refuses_a_bad_project_id_with_exit_code_2() -> None:
    runner = typer.testing.CliRunner()
    by_flag = runner.invoke(cli.app, ["simulate", "--project-id", "not one"])
    by_variable = runner.invoke(cli.app, ["simulate"], env={"RAILWAY_PROJECT_ID": "not one"})
    for result in (by_flag, by_variable):
        assert isinstance(result.exception, cli.CommandError), result.output
        assert result.exception.code == cli.EXIT_BAD_INPUT
        assert str(result.exception).startswith("railway_project_id (RAILWAY_PROJECT_ID): 'not one'")


def test_client_env_is_every_setting_a_client_needs() -> None:
    sim = Simulator(SimulatorSettings(seed=1, railway_project_id=CHOSEN))
    assert sim.client_env("http://127.0.0.1:8090/") == {
        "RAILWAY_API_URL": "http://127.0.0.1:8090/railway/graphql/v2",
        "OPENROUTER_API_URL": "http://127.0.0.1:8090/openrouter/api/v1",
        "AGENTMAIL_API_URL": "http://127.0.0.1:8090/agentmail/v0",
        "TELNYX_API_URL": "http://127.0.0.1:8090/telnyx/v2",
        "UTIL_ECHO_BASE_URL": "http://127.0.0.1:8090/upstream",
        "RAILWAY_PROJECT_ID": CHOSEN,
        "RAILWAY_ENVIRONMENT_NAME": "production",
    }


def test_simulate_serves_the_project_id_from_the_variable_and_prints_the_echo_upstream() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAILWAY_PROJECT_ID": CHOSEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "simulate", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        printed = [process.stdout.readline() for _ in range(8)]
        assert f"  RAILWAY_PROJECT_ID={CHOSEN}\n" in printed
        assert f"  UTIL_ECHO_BASE_URL=http://127.0.0.1:{port}/upstream\n" in printed
        for _ in range(100):
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}{RAILWAY}",
                    json={"query": PROJECT_QUERY, "variables": {"id": CHOSEN}},
                    headers=ACCOUNT,
                )
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert answer.json()["data"]["project"]["id"] == CHOSEN
        echoed = httpx.post(f"http://127.0.0.1:{port}/upstream/echo", json={"hi": 1})
        assert echoed.json() == {"echo": {"hi": 1}}
    finally:
        process.terminate()
        process.wait(timeout=10)
