"""A simulated OpenRouter key-management API (``/keys``, ``/keys/{hash}``), held in memory.

It serves the paths, status codes and payload shapes of ``specs/openrouter-keys.openapi.yaml``
(mounted under a base URL ending in ``/api/v1``, like ``https://openrouter.ai/api/v1``):

* ``POST /keys`` answers **201** ``{data, key}``; the plaintext ``sk-or-v1-`` key is in that
  answer only, as with the real API, and never in :meth:`FakeOpenRouter.snapshot`.
* ``GET /keys`` lists most recent first, ``page_size`` keys a page from ``offset`` (100 in the
  real API; the knob lets tests page without creating hundreds of keys). Disabled keys are left
  out unless ``include_disabled=true``.
* ``GET``/``PATCH``/``DELETE /keys/{hash}``; an unknown hash is a 404.

Every key object carries every field the spec marks required, plus ``external_user`` and
``last_used_at`` as ``null``: the newer official SDK rejects key objects without them (specs
README section 2). Requests need a bearer token (any non-empty one) and a valid body; every
error answers in OpenRouter's envelope ``{"error": {"code": <status>, "message": ...}}``.

:attr:`FakeOpenRouter.faults` is the shared fault layer (:mod:`providers.simulated.fault_layer`); its
operation names are :data:`OPERATIONS`: ``list_keys``, ``create_key``, ``get_key``,
``update_key``, ``delete_key``. With list lag, a new key is left out of ``GET /keys`` for a while.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from providers.simulated._common import (
    BodyError,
    FakeRandom,
    envelope_handlers,
    error_response,
    iso_timestamp,
    missing_bearer,
    parse_body,
)
from providers.simulated.fault_layer import Faults, route_operations

OPERATIONS = ("list_keys", "create_key", "get_key", "update_key", "delete_key")
"""The fault layer's names for this fake's routes, in route order."""

LimitReset = Literal["daily", "weekly", "monthly"]
_NOT_NULLABLE = ("name", "disabled", "include_byok_in_limit")


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenRouter's error envelope."""
    return {"error": {"code": status, "message": message}}


class _CreateKey(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str = Field(min_length=1)
    limit: float | None = None
    limit_reset: LimitReset | None = None
    include_byok_in_limit: bool = False
    expires_at: str | None = None
    creator_user_id: str | None = Field(default=None, min_length=1)
    workspace_id: str | None = None


class _UpdateKey(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str | None = Field(default=None, min_length=1)
    disabled: bool | None = None
    limit: float | None = None
    limit_reset: LimitReset | None = None
    include_byok_in_limit: bool | None = None


class FakeOpenRouter:
    """In-memory OpenRouter keys; ``seed`` makes ids reproducible, ``page_size`` shapes listing."""

    def __init__(self, seed: int | None = None, page_size: int = 100) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.page_size = page_size
        self.faults = Faults("openrouter", error_body, seed=seed)
        self._random = FakeRandom(seed)
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, Any]] = {}  # by hash, in creation order
        self._user_id = "user_" + self._random.token(27)
        self._workspace_id = self._random.uuid()

    def asgi(self) -> ASGIApp:
        routes = [
            Route("/keys", self._list_keys, methods=["GET"], name="list_keys"),
            Route("/keys", self._create_key, methods=["POST"], name="create_key"),
            Route("/keys/{hash}", self._get_key, methods=["GET"], name="get_key"),
            Route("/keys/{hash}", self._update_key, methods=["PATCH"], name="update_key"),
            Route("/keys/{hash}", self._delete_key, methods=["DELETE"], name="delete_key"),
        ]
        app = Starlette(routes=routes, exception_handlers=envelope_handlers(error_body))
        return self.faults.wrap(app, route_operations(routes))

    def snapshot(self, *, reveal_secrets: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Every key held, with the fields an operator checks (never a secret, so ``reveal_secrets``
        changes nothing: the plaintext key is in the create answer only)."""
        fields = ("name", "limit", "limit_reset", "disabled")
        with self._lock:
            keys = [{"id": h, **{f: key[f] for f in fields}} for h, key in self._keys.items()]
        return {"keys": keys}

    def reset(self) -> None:
        """Forget every key, queued failure and logged request (the fault plan stays)."""
        with self._lock:
            self._keys.clear()
        self.faults.reset()

    async def _list_keys(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        try:
            offset = int(request.query_params.get("offset") or 0)
        except ValueError:
            offset = -1
        if offset < 0:
            return error_response(400, error_body(400, "offset must be a non-negative integer"))
        include_disabled = request.query_params.get("include_disabled", "false").lower() == "true"
        workspace = request.query_params.get("workspace_id", self._workspace_id)
        with self._lock:
            newest_first = [
                dict(key)
                for key in reversed(self._keys.values())
                if key["workspace_id"] == workspace
                and (include_disabled or not key["disabled"])
                and self.faults.is_listed(key["hash"])
            ]
        return JSONResponse({"data": newest_first[offset : offset + self.page_size]})

    async def _create_key(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        try:
            body = await parse_body(request, _CreateKey)
        except BodyError as exc:
            return error_response(400, error_body(400, f"Invalid request parameters: {exc}"))
        secret = "sk-or-v1-" + self._random.hex(64)
        key_hash = self._random.hex(64)
        key = {
            "hash": key_hash,
            "name": body.name,
            "label": f"{secret[:12]}...{secret[-4:]}",
            "disabled": False,
            "limit": body.limit,
            "limit_remaining": body.limit,
            "limit_reset": body.limit_reset,
            "include_byok_in_limit": body.include_byok_in_limit,
            "usage": 0.0,
            "usage_daily": 0.0,
            "usage_weekly": 0.0,
            "usage_monthly": 0.0,
            "byok_usage": 0.0,
            "byok_usage_daily": 0.0,
            "byok_usage_weekly": 0.0,
            "byok_usage_monthly": 0.0,
            "created_at": iso_timestamp(),
            "updated_at": None,
            "expires_at": body.expires_at,
            "creator_user_id": body.creator_user_id or self._user_id,
            "workspace_id": body.workspace_id or self._workspace_id,
            "external_user": None,
            "last_used_at": None,
        }
        with self._lock:
            self._keys[key_hash] = key
            data = dict(key)
        self.faults.created("create_key", key_hash)
        return JSONResponse({"data": data, "key": secret}, status_code=201)

    async def _get_key(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        with self._lock:
            key = self._keys.get(request.path_params["hash"])
            data = None if key is None else dict(key)
        return _not_found() if data is None else JSONResponse({"data": data})

    async def _update_key(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        try:
            body = await parse_body(request, _UpdateKey)
        except BodyError as exc:
            return error_response(400, error_body(400, f"Invalid request parameters: {exc}"))
        # Only the fields present in the body change; an explicit null clears limit/limit_reset.
        changes = body.model_dump(include=body.model_fields_set)
        if nulls := sorted(f for f in _NOT_NULLABLE if f in changes and changes[f] is None):
            message = f"Invalid request parameters: {', '.join(nulls)} cannot be null"
            return error_response(400, error_body(400, message))
        with self._lock:
            key = self._keys.get(request.path_params["hash"])
            if key is None:
                return _not_found()
            key.update(changes)
            if "limit" in changes:
                key["limit_remaining"] = None if key["limit"] is None else key["limit"] - key["usage"]
            key["updated_at"] = iso_timestamp()
            data = dict(key)
        return JSONResponse({"data": data})

    async def _delete_key(self, request: Request) -> Response:
        if denied := missing_bearer(request, error_body):
            return denied
        with self._lock:
            removed = self._keys.pop(request.path_params["hash"], None)
        return _not_found() if removed is None else JSONResponse({"deleted": True})


def _not_found() -> Response:
    return error_response(404, error_body(404, "API key not found"))
