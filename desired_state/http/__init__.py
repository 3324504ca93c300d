"""The callers' HTTP API: the seed Services API's routes and ``/instances``, as desired-state writes.

Modules: ``app`` (wiring), ``routes_health``, ``routes_seed`` and ``routes_instances`` (one router
per family of routes), ``schemas`` (the wire models), ``routes_paid`` and ``schemas_paid`` (the
paid services' ``/api/*`` routes, mounted with ``create_app(config, paid=PaidRoutes(...))``),
``body`` and ``json_decode`` (strict, bounded request bodies), ``auth``, ``errors``, ``database``
(the pool, readiness, availability), ``waiting`` (the convergence wait) and ``server`` (uvicorn). See ``docs/api.md``.
"""

from __future__ import annotations

from desired_state.http.app import create_app
from desired_state.http.config import ApiConfig, ApiConfigError, ApiStartError
from desired_state.http.server import begin_shutdown, serve

__all__ = ["ApiConfig", "ApiConfigError", "ApiStartError", "begin_shutdown", "create_app", "serve"]
