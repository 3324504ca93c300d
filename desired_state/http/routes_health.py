"""Liveness and readiness, both public (probes carry no token) and both answering ``HEAD`` too.

* ``/healthz`` is liveness: the process serves requests. It touches nothing else, so a lost
  database never makes an orchestrator restart a healthy process.
* ``/readyz`` is readiness: 200 when the database answers a ``SELECT 1`` within
  ``database_timeout`` and the reconcile loop (when this process runs one) finished a tick or a
  pass within ``loop_stale_after`` seconds; otherwise 503 with ``Retry-After``, saying which
  part is not ready.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from desired_state.http.errors import DATABASE_RETRY_AFTER_SECONDS
from desired_state.http.schemas import DatabaseReadiness, HealthResponse, LoopReadiness, ReadinessResponse
from desired_state.http.state import ApiState
from desired_state.http.waiting import json_answer

PUBLIC: dict[str, Any] = {"security": []}


def router(state: ApiState) -> APIRouter:
    routes = APIRouter(tags=["meta"])
    config = state.config

    @routes.get("/healthz", response_model=HealthResponse, openapi_extra=PUBLIC)
    async def healthz() -> HealthResponse:
        """Liveness (no authentication, no database access)."""
        return HealthResponse(ok=True)

    @routes.get(
        "/readyz",
        response_model=ReadinessResponse,
        responses={503: {"model": ReadinessResponse, "description": "Not ready: the body says which part."}},
        openapi_extra=PUBLIC,
    )
    async def readyz() -> Response:
        """Readiness: the database answers and the reconcile loop ticks (no authentication)."""
        latency, error = await state.database.probe()
        database = DatabaseReadiness(ok=latency is not None, latencyMs=latency, error=error)
        if config.loop_probe is None:
            loop = LoopReadiness(ok=True, running=False, lastProgressAgeSeconds=None)
        else:
            age = config.loop_probe()
            loop = LoopReadiness(
                ok=age is not None and age <= config.loop_stale_after,
                running=True,
                lastProgressAgeSeconds=None if age is None else round(age, 3),
            )
        ready = database.ok and loop.ok
        answer = ReadinessResponse(ready=ready, database=database, loop=loop)
        if ready:
            return json_answer(answer)
        return json_answer(answer, status=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})

    # HEAD answers as GET does, without the body (uvicorn drops it); not a separate operation.
    routes.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    routes.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)
    return routes
