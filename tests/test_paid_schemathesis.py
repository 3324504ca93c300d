"""Property-based testing of the paid routes against ``/openapi.json`` with schemathesis.

The instance app with the paid router runs on a loopback port with a real Postgres; a caller
with credits authenticates with its ``sk-`` key. Schemathesis generates valid and invalid
requests for every paid operation and checks every answer: no 5xx (a proxy's upstream is a local
echo), status codes, content types and bodies as documented, invalid input refused, and
authentication enforced. Two checks are left out: ``positive_data_acceptance`` (a schema-valid
request may rightly be refused for want of credits, by the rate limit or by a course gate) and
``use_after_free`` (``DELETE`` on a job cancels it, the seed's meaning: the job stays readable).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from desired_state.http import ApiConfig, create_app
from desired_state.http.routes_paid import PaidApiConfig, PaidRoutes
from desired_state.services import callers, ledger
from desired_state.services.definitions import ServiceDefinition
from providers.simulated.server import serve_in_background
from tests.paid_support import registry

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


async def echo(definition: ServiceDefinition, document: dict[str, Any], job_id: uuid.UUID) -> Any:
    return document


@pytest.mark.timeout(180)
async def test_schemathesis_on_the_paid_routes(db_url: str, tmp_path: Path) -> None:
    if not SCHEMATHESIS.exists():
        pytest.skip("schemathesis is not installed in this environment (pip install schemathesis)")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        issued = await callers.create_caller(conn, "fuzz@example.com")
        await ledger.grant(conn, "fuzz@example.com", 1_000_000, "fuzzing")
    app = create_app(
        ApiConfig(api_key="services-key", database_url=db_url),
        paid=PaidRoutes(PaidApiConfig(registry=registry(), proxy_call=echo)),
    )
    async with app.router.lifespan_context(app), serve_in_background(app) as root:
        async with httpx.AsyncClient() as client:  # the document, fetched with the instance key
            spec = (await client.get(f"{root}/openapi.json", headers={"Authorization": "Bearer services-key"})).json()
        spec["paths"] = {path: item for path, item in spec["paths"].items() if path.startswith("/api/")}
        spec["servers"] = [{"url": root}]
        schema_file = tmp_path / "paid-openapi.json"
        schema_file.write_text(json.dumps(spec))
        process = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "run",
            str(schema_file),
            "--url",
            root,
            "--header",
            f"Authorization: Bearer {issued.secret}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20261201",
            "--request-timeout",
            "30",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=170)
    text = output.decode(errors="replace")
    print(text[-2500:])
    assert process.returncode == 0, text[-30000:]
