"""App wiring: the FastAPI app of the callers' HTTP API, from an :class:`ApiConfig`.

One router per family of routes, each made by a factory over the shared :class:`ApiState`:
the probes (``routes_health``), the seed Services API's routes (``routes_seed``) and
``/instances`` (``routes_instances``). Mounting another family is one more entry in
:data:`ROUTERS`, or, for one that authenticates its own callers, the ``paid`` argument
(:class:`DelegatedRoutes`); a router built with
``route_class=StrictJsonRoute`` (``desired_state.http.body``) gets the same strict, bounded body
decoding. Authentication is a middleware around everything (``auth``), errors are the seed's
``{"error": ...}`` (``errors``), and the lifespan opens the Postgres pool (``database``).

The OpenAPI document is derived from the routes and their pydantic models; nothing patches it.
This package imports nothing from ``reconciler/`` or ``providers/`` (ARCHITECTURE.md section 2):
the API and the loop meet only in Postgres, plus the loop probe the config may carry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import psycopg
from fastapi import APIRouter, FastAPI

from desired_state.http import routes_health, routes_instances, routes_seed
from desired_state.http.auth import BearerAuth
from desired_state.http.config import API_VERSION, ApiConfig
from desired_state.http.database import Database
from desired_state.http.errors import install_error_handlers
from desired_state.http.state import ApiState
from desired_state.http.waiting import Convergence

ConnectionFactory = Callable[[], contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


class DelegatedRoutes(Protocol):
    """A family of routes that authenticates its own callers under ``prefix`` (the paid-jobs
    routes, ``desired_state.http.routes_paid.PaidRoutes``): the bearer middleware lets that prefix through
    and the router draws its connections from this app's pool."""

    @property
    def prefix(self) -> str: ...

    def router(self, connection: ConnectionFactory) -> APIRouter: ...


ROUTERS: tuple[Callable[[ApiState], APIRouter], ...] = (
    routes_health.router,
    routes_seed.router,
    routes_instances.router,
)


def create_app(config: ApiConfig, paid: DelegatedRoutes | None = None) -> FastAPI:
    """The FastAPI app; its lifespan opens and closes the Postgres pool and the body decoder.

    ``paid``: also mount those routes (they authenticate callers themselves; ``SERVICES_API_KEY``
    does not open them)."""
    config.check()
    database = Database(config)
    state = ApiState(config, database, Convergence(config, database))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with database.opened():
            try:
                yield
            finally:
                decoding = getattr(app.state, "body_decoding", None)
                if decoding is not None:
                    await decoding.close()

    app = FastAPI(
        title="Provisioning reconciler: Services API",
        version=API_VERSION,
        description=(
            "The seed Services API as desired-state writes. Writes wait (bounded) for convergence; "
            "send `Prefer: respond-async` for an immediate 202 and poll `GET /instances/{instanceId}`."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = state
    app.state.stopping = state.convergence.stopping
    app.add_middleware(BearerAuth, api_key=config.api_key, delegated=(paid.prefix,) if paid else ())
    install_error_handlers(app, on_database_error=database.mark_unavailable)
    for make_router in ROUTERS:
        app.include_router(make_router(state))
    if paid is not None:
        app.include_router(paid.router(database.connection))
    return app


__all__ = ["ApiConfig", "create_app"]
