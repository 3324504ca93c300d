"""The paid routes as `reconciler run` wires them: the proxy handlers and the admissions metric."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
from prometheus_client import CollectorRegistry

from desired_state.http import ApiConfig, create_app
from desired_state.http.routes_paid import PaidApiConfig, PaidRoutes
from desired_state.services import callers, ledger
from reconciler.jobs.builtin import builtin_handlers
from reconciler.metrics import Metrics
from tests.jobs_support import assert_audit_clean, registry

Conn = psycopg.AsyncConnection[Any]


def admissions(metrics: Metrics) -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for family in metrics.job_admissions.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value
    }


async def test_admissions_are_counted_by_outcome_and_util_echo_without_upstream_refunds(
    db_url: str, conn: Conn
) -> None:
    metrics = Metrics(CollectorRegistry())
    issued = await callers.create_caller(conn, "ada@example.com")
    await ledger.grant(conn, "ada@example.com", 1, "welcome")
    async with httpx.AsyncClient() as http:
        handlers = builtin_handlers(http, None)
        routes = PaidRoutes(
            PaidApiConfig(registry=registry(), proxy_call=handlers.call_proxy, on_admission=metrics.count_admission)
        )
        app = create_app(ApiConfig(api_key="instances-key", database_url=db_url), paid=routes)
        transport = httpx.ASGITransport(app=app)
        auth = {"Authorization": f"Bearer {issued.secret}"}
        keyed = auth | {"Idempotency-Key": "k"}
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            echo = await c.post("/api/services/invoke/util/echo", json={"a": 1}, headers=keyed)
            assert echo.status_code == 500 and echo.json()["error"] == "upstream_not_configured"
            again = await c.post("/api/services/invoke/util/echo", json={"a": 1}, headers=keyed)
            assert again.status_code == 500 and again.headers["Idempotency-Replayed"] == "true"
            delay = await c.post("/api/services/invoke/util/delay-echo", json={"seconds": 0}, headers=auth)
            assert delay.status_code == 202  # the refunded credit paid for it
            broke = await c.post("/api/services/invoke/util/delay-echo", json={"seconds": 0}, headers=auth)
            assert broke.status_code == 402
    assert admissions(metrics) == {"admitted": 2, "replayed": 1, "insufficient_credits": 1}
    await assert_audit_clean(conn)
