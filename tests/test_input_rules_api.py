"""The input rules of desired_state/models.py reach every HTTP route that writes env (issue 11)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from reconciler.runtime import Runtime
from tests.conftest import Sim
from tests.support import Api, config_for, desired_count, looping, served

REFERENCE = "${{convos-agent-OTHER.OPENROUTER_API_KEY}}"


@pytest.fixture
async def api(db_url: str, sim: Sim, runtime: Runtime) -> AsyncIterator[Api]:
    async with looping(runtime), served(config_for(db_url, sim)) as served_api:
        yield served_api


async def test_create_and_configure_refuse_references_reserved_names_and_nul(
    api: Api, conn: psycopg.AsyncConnection[Any]
) -> None:
    refused = await api.client.post("/create-instance", json={"instanceId": "ref1", "env": {"STEAL": REFERENCE}})
    assert refused.status_code == 400
    assert "env: value of STEAL holds a Railway variable reference" in refused.text and REFERENCE not in refused.text

    for name in ("PORT", "RAILWAY_ENVIRONMENT", "INSTANCE_ID", "OPENROUTER_API_KEY"):
        reserved = await api.client.post("/create-instance", json={"instanceId": "res1", "env": {name: "x"}})
        assert reserved.status_code == 400 and f"env: {name} is set by" in reserved.text

    nul = await api.client.post("/create-instance", json={"instanceId": "nul1", "name": "a\u0000b"})
    assert nul.status_code == 400 and "name: must not contain NUL characters" in nul.text
    assert await desired_count(conn) == 0

    body = {"instanceId": "cfg1", "env": {"OPENCLAW_PRIMARY_MODEL": "a/b"}}
    created = await api.client.post("/create-instance", json=body, headers={"Prefer": "respond-async"})
    assert created.status_code in (200, 202)
    configured = await api.client.post("/configure/cfg1", json={"variables": {"LEAK": f"x{REFERENCE}"}})
    assert configured.status_code == 400 and "variables: value of LEAK holds a Railway variable" in configured.text
    configured = await api.client.post("/configure/cfg1", json={"variables": {"RAILWAY_TOKEN": "x"}})
    assert configured.status_code == 400 and "variables: RAILWAY_TOKEN is set by Railway" in configured.text


async def test_a_huge_tools_list_is_refused_fast_with_a_small_error(api: Api) -> None:
    body = json.dumps({"instanceId": "big1", "tools": ["x"] * 1_600_000})
    started = time.monotonic()
    answer = await api.client.post("/create-instance", content=body, headers={"Content-Type": "application/json"})
    elapsed = time.monotonic() - started
    assert answer.status_code == 400 and len(answer.content) < 1000
    # Refused by the body's value bound (desired_state/http/json_decode.py) before the models see it.
    assert "tools: has 1600000 items" in answer.text
    assert elapsed < 5.0  # was 15 s and a 223 MB answer
