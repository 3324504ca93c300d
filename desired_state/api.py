"""The HTTP API for callers: the seed Services API's routes, as desired-state writes.

The pool manager used to call a Services API that did the provider work inside each request.
This app keeps every route, path and body shape of that API (``seeds/services-api.md``, study
section 2) so an existing caller keeps working, but no route talks to a provider:

* A **write** (create, destroy, configure, redeploy, provision, destroy-tool) changes the desired
  row through :mod:`desired_state.store` and then *waits*, bounded by ``wait_timeout``, for the
  reconcile loop to converge that generation, polling the row the loop writes its progress to.
  It then answers in the seed's shape. With ``Prefer: respond-async`` (RFC 7240) it answers
  ``202`` at once with a status URL, ``/instances/{id}``; ``Prefer: wait=N`` bounds the wait
  further; a wait that runs out also answers ``202`` (the write stands: the loop carries on).
* A **read** (``status/batch``, ``/instances``) reads what the loop recorded, with zero provider
  calls; ``status/batch``, the pool's hot path, is one ordered scan of ``instance_infra`` turned
  into JSON by a string template (about 40 ms end to end for 10,000 instances).

Why waiting is polling: the trigger on ``desired_instances`` notifies on caller changes only, not
on the loop's progress, and a primary-key read every few hundred milliseconds per waiting request
is cheaper than a second notification channel.

Every write is one statement (or a row-locked read-modify-write for merges), validated before
it is made, so bad input is a 400 naming the field and never a half-written row. Errors are the seed's
``{"error": message}``, optionally with ``"details"``. Every route but ``/healthz`` needs
``Authorization: Bearer <SERVICES_API_KEY>``, compared in constant time; an empty key refuses to
build the app rather than serving an open API.

This module imports nothing from ``reconciler/`` or ``providers/`` (ARCHITECTURE.md section 2):
the API and the loop meet only in Postgres.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import psycopg
import uvicorn
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from desired_state import queries, store
from desired_state.models import (
    ENV_NAME_PATTERN,
    IMAGE_PATTERN,
    INSTANCE_ID_PATTERN,
    MAX_ENV_VALUE_BYTES,
    MAX_ENV_VARS,
    InstanceSpec,
    SpecError,
    Tool,
    describe_validation_error,
    parse_instance,
)

if TYPE_CHECKING:
    from desired_state.http_paid import PaidRoutes

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
AUTH_ERROR = "Invalid or missing API key"
PUBLIC_PATHS = frozenset({"/healthz"})
MAX_BODY_BYTES = 8 * 1024 * 1024
INSTANCE_ID_REGEX = INSTANCE_ID_PATTERN.pattern
PHASES = ("Pending", "Provisioning", "Ready", "Deleting", "Failed")

# The resource kind the reconciler records for each tool (names of providers.base.ResourceKind,
# repeated here because this package may not import the reconciler's side).
TOOL_KINDS: Mapping[Tool, str] = {
    Tool.OPENROUTER: "openrouter_key",
    Tool.AGENTMAIL: "agentmail_inbox",
    Tool.TELNYX: "telnyx_number",
}


@dataclass(frozen=True)
class RegistryEntry:
    id: Tool
    name: str
    mode: str
    env_keys: tuple[str, ...]


# The seed's /registry, verbatim.
REGISTRY = (
    RegistryEntry(Tool.OPENROUTER, "OpenRouter", "per-instance-key", ("OPENROUTER_API_KEY",)),
    RegistryEntry(Tool.AGENTMAIL, "AgentMail", "per-instance-inbox", ("AGENTMAIL_INBOX_ID",)),
    RegistryEntry(Tool.TELNYX, "Telnyx", "per-instance-phone", ("TELNYX_PHONE_NUMBER", "TELNYX_MESSAGING_PROFILE_ID")),
)


class ApiConfigError(ValueError):
    """The API cannot be built with this configuration (for example an empty API key)."""


class ApiStartError(RuntimeError):
    """The API could not start serving (database unreachable, port taken)."""


@dataclass(frozen=True)
class ApiConfig:
    """What the API needs; ``cli.py`` builds it from the settings."""

    api_key: str = field(repr=False)
    """``SERVICES_API_KEY``: the bearer token every route but ``/healthz`` requires."""
    database_url: str = field(repr=False)
    project_id: str | None = None
    """``RAILWAY_PROJECT_ID``, echoed as ``projectId`` by ``status/batch``."""
    environment_id: str | None = None
    """``RAILWAY_ENVIRONMENT_ID``, used when a seed row's environment is ``unknown``."""
    name_prefix: str = "convos-agent"
    """Derived names are ``<prefix>-<instanceId>`` (the ``name`` of ``status/batch``)."""
    wait_timeout: float = 120.0
    """Longest a write waits for convergence before answering 202."""
    tools_enabled: frozenset[str] = frozenset(tool.value for tool in Tool)
    """Tools whose provider key is configured; asking for another one is a 400."""
    poll_interval: float = 0.25
    """Longest pause between two reads of a row a request is waiting on."""
    pool_size: int = 10
    """Postgres connections the API may hold (a waiting request holds none between reads)."""
    events_limit: int = 20
    """Recent events shown by ``GET /instances/{id}``."""


# -- wire models -------------------------------------------------------------------------------------
# Requests are validated strictly from the JSON text ("20" is not a number, 1.0 is not an integer);
# responses are built through these models so they always match the published schema.


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StatusBatchRequest(_Request):
    instanceIds: list[str] | None = Field(
        default=None, max_length=100_000, description="Only these instances (default: all)."
    )


class ConfigureRequest(_Request):
    variables: dict[str, str] = Field(
        min_length=1, description="Variables merged into the instance's env (others are kept)."
    )
    redeploy: bool = Field(default=False, description="Also bump the redeploy generation.")


class RedeployRequest(_Request):
    pass


class ProvisionConfig(_Request):
    limit: float | None = Field(
        default=None, gt=0, lt=1_000_000, description="OpenRouter only: the key's USD spend limit."
    )


class ProvisionRequest(_Request):
    config: ProvisionConfig | None = None


class ErrorResponse(BaseModel):
    error: str
    details: list[str] | None = None


class HealthResponse(BaseModel):
    ok: bool


class RegistryTool(BaseModel):
    id: str
    name: str
    mode: str
    envKeys: list[str]
    available: bool = Field(description="Whether the tool's provider key is configured.")


class RegistryResponse(BaseModel):
    tools: list[RegistryTool]


class ResourceRef(BaseModel):
    resourceId: str


class CreateInstanceResponse(BaseModel):
    instanceId: str
    serviceId: str | None
    url: str | None
    services: dict[str, ResourceRef]


class AcceptedResponse(BaseModel):
    instanceId: str
    phase: str
    generation: int | None = Field(description="The generation being converged (None: being deleted).")
    statusUrl: str = Field(description="Poll this for progress: GET /instances/{instanceId}.")


class DestroyedFlags(BaseModel):
    openrouter: bool
    agentmail: bool
    telnyx: bool
    volumes: bool
    service: bool


class DestroyResponse(BaseModel):
    instanceId: str
    destroyed: DestroyedFlags


class BatchService(BaseModel):
    instanceId: str
    serviceId: str
    name: str
    deployStatus: str | None
    domain: str | None
    image: str | None
    environmentIds: list[str]


class StatusBatchResponse(BaseModel):
    projectId: str | None
    services: list[BatchService]


class OkResponse(BaseModel):
    instanceId: str
    ok: bool


class ProvisionResponse(BaseModel):
    toolId: str
    resourceId: str
    envKey: str
    status: str


class DestroyToolResponse(BaseModel):
    toolId: str
    resourceId: str
    deleted: bool


class SpecView(BaseModel):
    """The desired spec; env values are never returned (they may be secrets), only their names."""

    tools: list[str]
    envKeys: list[str]
    image: str | None
    openrouterLimit: float | None
    redeploy: int


class ResourceView(BaseModel):
    kind: str
    derivedName: str
    externalId: str | None
    status: str
    attributes: dict[str, Any]
    conditions: dict[str, Any]
    attempts: int
    lastError: str | None
    updatedAt: datetime


class EventView(BaseModel):
    id: int
    at: datetime
    kind: str | None
    action: str
    outcome: str
    detail: dict[str, Any]


class InstanceView(BaseModel):
    instanceId: str
    name: str
    present: bool
    spec: SpecView
    generation: int
    observedGeneration: int | None
    phase: str
    conditions: dict[str, Any]
    attempts: int
    nextAttemptAt: datetime
    lastError: str | None
    createdAt: datetime
    updatedAt: datetime
    readyAt: datetime | None
    url: str | None
    deployStatus: str | None
    resources: list[ResourceView]
    events: list[EventView]


class InstanceSummary(BaseModel):
    instanceId: str
    name: str
    present: bool
    tools: list[str]
    generation: int
    observedGeneration: int | None
    phase: str
    lastError: str | None
    updatedAt: datetime


class InstanceList(BaseModel):
    items: list[InstanceSummary]
    nextCursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last.")


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DELETING = "Deleting"
    FAILED = "Failed"


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    InstanceSpec,
    StatusBatchRequest,
    ConfigureRequest,
    RedeployRequest,
    ProvisionRequest,
)


# -- errors --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success: status code, one-line message, optional details."""

    def __init__(
        self, status: int, message: str, details: list[str] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers


def _error(
    status: int, message: str, details: list[str] | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def _bad_input(problems: list[str]) -> ApiError:
    return ApiError(400, "; ".join(problems), details=problems if len(problems) > 1 else None)


# -- authentication ----------------------------------------------------------------------------------


class BearerAuth:
    """ASGI middleware: every path but the public ones needs ``Authorization: Bearer <key>``.

    A middleware rather than a route dependency, so nothing can be mounted around it: unknown
    paths, ``/openapi.json`` and any route added later are covered the same way (the seed once
    leaked keys through routers mounted before its auth middleware).
    """

    def __init__(self, app: ASGIApp, api_key: str, delegated: tuple[str, ...] = ()) -> None:
        self.app = app
        self._key = api_key.encode()
        self._delegated = delegated  # path prefixes whose router authenticates callers itself

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
        scheme, _, token = header.strip().partition(b" ")
        # compare_digest takes the same time wherever the first difference is.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and path not in PUBLIC_PATHS
            and not path.startswith(self._delegated)
            and not self._authorized(scope)
        ):
            response = _error(401, AUTH_ERROR, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- request parsing -----------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


async def _body(request: Request) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes")
    return raw


def _load_json(raw: bytes, *, optional: bool = False) -> Any:
    """The body as JSON; strings that Postgres cannot store are refused here, naming the field."""
    if not raw.strip():
        if not optional:
            raise _bad_input(["body: a JSON object is required"])
        return {}
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise _bad_input(["body: is not valid JSON"]) from None
    try:
        _check_strings(data, "")
    except RecursionError:
        raise _bad_input(["body: is nested too deeply"]) from None
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_strings(value: Any, where: str) -> None:
    """Postgres text holds neither NUL characters nor lone surrogates (from ``\\ud800`` escapes)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _bad_input([f"{where or 'body'}: must not contain NUL characters"])
        try:
            value.encode()
        except UnicodeEncodeError:
            raise _bad_input([f"{where or 'body'}: is not valid Unicode text"]) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where or "body")
            _check_strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{where}.{index}" if where else str(index))


def _problems(exc: ValidationError) -> list[str]:
    return [
        "body" + line.removeprefix("(item)") if line.startswith("(item)") else line
        for line in describe_validation_error(exc)
    ]


def _parse(model: type[M], raw: bytes, *, optional: bool = False) -> M:
    """Validate a JSON body against ``model`` (strict types); a 400 naming every bad field otherwise."""
    data = _load_json(raw, optional=optional)
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise _bad_input(_problems(exc)) from None


def _parse_spec(raw: bytes) -> InstanceSpec:
    """A create body, through :func:`parse_instance` (the CLI's and the store's rules).

    ``parse_instance`` converts loosely (``"20"`` to 20.0, ``true`` to 1), as a YAML file needs;
    over JSON a wrong type is a mistake, so the two numeric fields are checked strictly first.
    """
    data = _load_json(raw)
    problems: list[str] = []
    if isinstance(data, dict):
        limit = data.get("openrouterLimit", data.get("openrouter_limit"))
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float)):
            problems.append("openrouterLimit: must be a number")
        redeploy = data.get("redeploy", 0)
        if isinstance(redeploy, bool) or not isinstance(redeploy, int):
            problems.append("redeploy: must be an integer")
    try:
        spec = parse_instance(data)
    except SpecError as exc:
        named = {p.split(":", 1)[0] for p in problems}
        problems.extend(p for p in exc.problems if p.split(":", 1)[0] not in named)
    if problems:
        raise _bad_input(["body: must be a JSON object" if p.startswith("item:") else p for p in problems])
    return spec


@dataclass(frozen=True)
class Preferences:
    """RFC 7240 ``Prefer``: ``respond-async`` (answer 202 now) and ``wait=N`` (wait at most N s)."""

    respond_async: bool = False
    wait: float | None = None

    @classmethod
    def of(cls, request: Request) -> Preferences:
        respond_async = False
        wait: float | None = None
        for header in request.headers.getlist("prefer"):
            for token in header.split(","):
                name, _, argument = token.strip().partition("=")
                name = name.strip().lower()
                if name == "respond-async":
                    respond_async = True
                elif name == "wait":
                    with contextlib.suppress(ValueError):
                        seconds = float(argument.strip().strip('"'))
                        if seconds >= 0:
                            wait = seconds
        return cls(respond_async, wait)

    def wait_seconds(self, limit: float) -> float:
        if self.respond_async and self.wait is None:
            return 0.0
        return limit if self.wait is None else min(self.wait, limit)


# -- the app -----------------------------------------------------------------------------------------


class _Progress(BaseModel):
    generation: int
    observed_generation: int | None
    present: bool
    last_error: str | None
    phase: str
    """As shown to callers: Deleting for every row marked absent."""
    stored_phase: str
    """As the reconciler wrote it (a teardown that cannot proceed is Failed)."""


@dataclass
class _Waited:
    """How a wait ended: ``done``, ``failed``, ``gone`` (row deleted) or ``timeout``."""

    outcome: Literal["done", "failed", "gone", "timeout"]
    progress: _Progress | None


class _Api:
    """The routes' shared state: the config and the connection pool (opened by the lifespan)."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self.stopping = asyncio.Event()
        """Set when the server is shutting down: waiting requests answer 202 at once."""

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self.config.database_url,
            min_size=1,
            max_size=self.config.pool_size,
            kwargs={"autocommit": True},
            open=False,
            name="api",
        )
        try:
            await pool.open(wait=True, timeout=30)
        except PoolTimeout:
            await pool.close()
            raise ApiStartError("the HTTP API cannot connect to Postgres (gave up after 30 s)") from None
        self._pool = pool
        try:
            yield
        finally:
            self._pool = None
            await pool.close()

    def connection(self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise ApiError(503, "the API is not ready (database pool closed)")
        return self._pool.connection()

    # -- waiting -------------------------------------------------------------------------------------

    async def progress(self, instance_id: str) -> _Progress | None:
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_PROGRESS, {"instance_id": instance_id})
            row = await cur.fetchone()
        return None if row is None else _Progress.model_validate(row)

    async def wait(
        self,
        instance_id: str,
        within: float,
        *,
        generation: int | None,
        extra: Callable[[], Awaitable[bool]] | None = None,
    ) -> _Waited:
        """Poll until converged at ``generation`` (or, with None, until the row is gone)."""
        deadline = time.monotonic() + within
        pause = 0.02
        while True:
            progress = await self.progress(instance_id)
            if progress is None:
                return _Waited("done" if generation is None else "gone", None)
            # The trigger clears last_error on every new generation, so a Failed row with an
            # error failed at (or after) the generation we wrote.
            if (
                progress.stored_phase == Phase.FAILED
                and progress.last_error
                and progress.generation >= (generation or 0)
            ):
                return _Waited("failed", progress)
            if (
                generation is not None
                and progress.present
                and progress.phase == Phase.READY
                and (progress.observed_generation or 0) >= generation
                and (extra is None or await extra())
            ):
                return _Waited("done", progress)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopping.is_set():
                return _Waited("timeout", progress)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=min(pause, remaining))
            pause = min(pause * 1.5, self.config.poll_interval)

    async def answer_write(
        self,
        request: Request,
        instance_id: str,
        generation: int | None,
        render: Callable[[], Awaitable[BaseModel]],
        extra: Callable[[], Awaitable[bool]] | None = None,
    ) -> Response:
        """Wait as the caller prefers, then answer 200 (converged), 202 (still going) or an error."""
        preferences = Preferences.of(request)
        waited = await self.wait(
            instance_id,
            preferences.wait_seconds(self.config.wait_timeout),
            generation=generation,
            extra=extra,
        )
        if waited.outcome == "done":
            return _json(await render())
        if waited.outcome == "gone":
            raise ApiError(409, f"instance {instance_id} was destroyed before it converged")
        progress = waited.progress
        assert progress is not None
        if waited.outcome == "failed":
            raise ApiError(
                502,
                f"instance {instance_id} failed: {progress.last_error}",
                headers={"Location": _status_url(instance_id)},
            )
        accepted = AcceptedResponse(
            instanceId=instance_id,
            phase=progress.phase,
            generation=generation,
            statusUrl=_status_url(instance_id),
        )
        headers = {"Location": _status_url(instance_id)}
        if preferences.respond_async:
            headers["Preference-Applied"] = "respond-async"
        return _json(accepted, status=202, headers=headers)

    # -- reads used by several routes ------------------------------------------------------------------

    async def create_answer(self, instance_id: str) -> CreateInstanceResponse:
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_CREATE_ANSWER, {"instance_id": instance_id})
            row = await cur.fetchone()
        if row is None:  # Ready, yet the seed row is missing: answer what is known
            return CreateInstanceResponse(instanceId=instance_id, serviceId=None, url=None, services={})
        return CreateInstanceResponse(
            instanceId=instance_id,
            serviceId=row["provider_service_id"],
            url=row["url"],
            services={tool: ResourceRef(resourceId=ref["resourceId"]) for tool, ref in row["services"].items()},
        )

    async def tool_service(self, instance_id: str, tool: Tool) -> dict[str, Any] | None:
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_TOOL_SERVICE, {"instance_id": instance_id, "tool_id": tool.value})
            return await cur.fetchone()

    async def modify(self, instance_id: str, change: Callable[[InstanceSpec], InstanceSpec]) -> store.ModifyResult:
        """A compare-and-set change of one spec, with the store's outcomes mapped to answers."""
        try:
            async with self.connection() as conn:
                return await store.modify(conn, instance_id, change)
        except store.InstanceNotFound:
            raise ApiError(404, f"instance {instance_id} not found") from None
        except store.InstanceDeleting:
            raise ApiError(409, f"instance {instance_id} is being destroyed") from None
        except store.StoredSpecInvalid as exc:
            raise ApiError(409, f"instance {instance_id} has an invalid stored spec: {exc}") from None
        except store.ConcurrentUpdate:
            raise ApiError(409, f"instance {instance_id} is being changed concurrently; retry") from None
        except SpecError as exc:
            # The change itself is fine but the spec it would make is not (a redeploy counter
            # at its maximum): a conflict with the instance's state, not bad input.
            raise ApiError(409, f"instance {instance_id} cannot take this change: {exc}") from None

    def require_available(self, tools: tuple[Tool, ...] | list[Tool], where: str) -> None:
        missing = [tool.value for tool in tools if tool.value not in self.config.tools_enabled]
        if missing:
            raise _bad_input(
                [f"{where}: {tool} is not available (its provider key is not configured)" for tool in missing]
            )


def _status_url(instance_id: str) -> str:
    return f"/instances/{instance_id}"


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status, headers=headers)


def _spec_view(raw: Any) -> SpecView:
    """The stored spec for display; tolerant, since a spec written over SQL may be invalid."""
    spec = raw if isinstance(raw, dict) else {}
    tools = spec.get("tools")
    env = spec.get("env")
    limit = spec.get("openrouterLimit")
    redeploy = spec.get("redeploy")
    image = spec.get("image")
    return SpecView(
        tools=[str(t) for t in tools] if isinstance(tools, list) else [],
        envKeys=sorted(str(k) for k in env) if isinstance(env, dict) else [],
        image=image if isinstance(image, str) else None,
        openrouterLimit=float(limit) if isinstance(limit, int | float) and not isinstance(limit, bool) else None,
        redeploy=redeploy if isinstance(redeploy, int) and not isinstance(redeploy, bool) else 0,
    )


def _json_string(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def _domain(url: str | None) -> str | None:
    """The seed's ``domain``: the URL's host, without scheme or path."""
    if url is None:
        return None
    scheme_end = url.find("://")
    return (url[scheme_end + 3 :] if scheme_end >= 0 else url).split("/", 1)[0]


def status_batch_json(
    rows: list[tuple[Any, ...]], project_id: str | None, prefix: str, environment_id: str | None
) -> bytes:
    """The ``status/batch`` document, assembled from string pieces.

    This is the pool manager's hot path (every tick, the whole fleet): for 10,000 rows a
    template with the C string escaper takes ~13 ms, a third of building dicts for ``json.dumps``
    or of Postgres's own JSON functions. The shape is :class:`StatusBatchResponse`.
    """
    services = []
    for instance_id, service_id, deploy_status, url, image, env_id in rows:
        if env_id == "unknown" and environment_id is not None:
            env_id = environment_id
        services.append(
            f'{{"instanceId":{encode_basestring(instance_id)},"serviceId":{encode_basestring(service_id)},'
            f'"name":{encode_basestring(f"{prefix}-{instance_id}")},"deployStatus":{_json_string(deploy_status)},'
            f'"domain":{_json_string(_domain(url))},"image":{_json_string(image)},'
            f'"environmentIds":[{encode_basestring(env_id)}]}}'
        )
    return f'{{"projectId":{_json_string(project_id)},"services":[{",".join(services)}]}}'.encode()


def _encode_cursor(instance_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": instance_id}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded.encode()))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        raise _bad_input(["cursor: is not a cursor this API issued"]) from None
    if not isinstance(after, str) or not INSTANCE_ID_PATTERN.fullmatch(after):
        raise _bad_input(["cursor: is not a cursor this API issued"])
    return after


def _env_to_variables(problems: list[str]) -> list[str]:
    """Messages about the merged spec's ``env`` name the field the caller sent: ``variables``."""
    return ["variables" + p.removeprefix("env") if p.startswith("env") else p for p in problems]


InstanceIdPath = Annotated[
    str,
    Path(alias="instanceId", pattern=INSTANCE_ID_REGEX, description="Instance id (1-32 of A-Za-z0-9_-)."),
]
ToolPath = Annotated[Tool, Path(alias="toolId", description="openrouter, agentmail or telnyx.")]
ResourcePath = Annotated[
    str, Path(alias="resourceId", min_length=1, max_length=500, description="The tool's resource id.")
]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Bad input: the message names the field.",
        404: "Unknown instance (or resource).",
        409: "Conflicts with the instance's current state.",
        413: "Body too large.",
        502: "The instance failed to converge (the message says why).",
    }
    return {status: {"model": ErrorResponse, "description": descriptions[status]} for status in statuses}


ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": AcceptedResponse,
        "description": "Accepted: still converging (Prefer: respond-async, or the wait ran out).",
    }
}


def _request_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def create_app(config: ApiConfig, paid: PaidRoutes | None = None) -> FastAPI:
    """The FastAPI app; its lifespan opens and closes the Postgres pool. ``paid``: mount the paid
    routes (they authenticate callers' sk- keys themselves; SERVICES_API_KEY does not open them)."""
    if not config.api_key or not config.api_key.strip():
        raise ApiConfigError("SERVICES_API_KEY is empty: refusing to serve an unauthenticated API")
    if config.wait_timeout < 0:
        raise ApiConfigError("wait_timeout must not be negative")
    if config.poll_interval <= 0 or config.pool_size < 1 or config.events_limit < 0:
        raise ApiConfigError("poll_interval must be positive and pool_size at least 1")
    unknown = set(config.tools_enabled) - {tool.value for tool in Tool}
    if unknown:
        raise ApiConfigError(f"tools_enabled names unknown tools: {', '.join(sorted(unknown))}")

    api = _Api(config)
    app = FastAPI(
        title="Provisioning reconciler: Services API",
        version=API_VERSION,
        description=(
            "The seed Services API as desired-state writes. Writes wait (bounded) for convergence; "
            "send `Prefer: respond-async` for an immediate 202 and poll `GET /instances/{instanceId}`."
        ),
        lifespan=api.lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = api
    app.state.delegated = (paid.prefix,) if paid else ()
    app.add_middleware(BearerAuth, api_key=config.api_key, delegated=app.state.delegated)
    if paid is not None:
        app.include_router(paid.router(api.connection))
    _install_error_handlers(app)

    @app.get("/healthz", response_model=HealthResponse, tags=["meta"])
    async def healthz() -> HealthResponse:
        """Liveness (no authentication, no database access)."""
        return HealthResponse(ok=True)

    @app.get("/registry", response_model=RegistryResponse, tags=["meta"])
    async def registry() -> RegistryResponse:
        """The tools an instance can have, their variables, and whether each is configured here."""
        return RegistryResponse(
            tools=[
                RegistryTool(
                    id=entry.id.value,
                    name=entry.name,
                    mode=entry.mode,
                    envKeys=list(entry.env_keys),
                    available=entry.id.value in config.tools_enabled,
                )
                for entry in REGISTRY
            ]
        )

    @app.post(
        "/create-instance",
        response_model=CreateInstanceResponse,
        responses={**ACCEPTED, **_errors(400, 409, 413, 502)},
        openapi_extra=_request_body(InstanceSpec),
        tags=["instances"],
    )
    async def create_instance(request: Request) -> Response:
        """Write the desired instance, wait until it is Ready, answer with its ids.

        Repeating a create with the same id and spec is idempotent (same answer); the same id with
        a different spec is a 409.
        """
        spec = _parse_spec(await _body(request))
        api.require_available(spec.tools, "tools")
        async with api.connection() as conn:
            result = await store.create(conn, spec)
        if result.outcome is store.CreateOutcome.CONFLICT:
            raise ApiError(409, f"instance {spec.instance_id} already exists with a different spec")
        if result.outcome is store.CreateOutcome.DELETING:
            raise ApiError(409, f"instance {spec.instance_id} is being destroyed; create it again once it is gone")
        log.info("create-instance %s: %s (generation %d)", spec.instance_id, result.outcome, result.generation)
        return await api.answer_write(
            request, spec.instance_id, result.generation, lambda: api.create_answer(spec.instance_id)
        )

    @app.delete(
        "/destroy/{instanceId}",
        response_model=DestroyResponse,
        responses={**ACCEPTED, **_errors(400, 404, 502)},
        tags=["instances"],
    )
    async def destroy(request: Request, instance_id: InstanceIdPath) -> Response:
        """Mark the instance absent and wait until every resource is gone and the row with them."""
        async with api.connection() as conn, conn.transaction():
            # One the replaced system made (only instance_infra knows it) is imported for teardown.
            await store.adopt_for_teardown(conn, [instance_id], config.name_prefix)
            async with conn.cursor() as cur:
                await cur.execute(queries.SELECT_RESOURCE_KINDS, {"instance_id": instance_id})
                kinds = {row[0] for row in await cur.fetchall()}
            found = await store.mark_absent(conn, [instance_id])
        if not found:
            raise ApiError(404, f"instance {instance_id} not found")
        log.info("destroy %s: marked absent", instance_id)

        async def render() -> DestroyResponse:
            return DestroyResponse(
                instanceId=instance_id,
                destroyed=DestroyedFlags(
                    openrouter="openrouter_key" in kinds,
                    agentmail="agentmail_inbox" in kinds,
                    telnyx="telnyx_number" in kinds,
                    volumes="railway_volume" in kinds,
                    service="railway_service" in kinds,
                ),
            )

        return await api.answer_write(request, instance_id, None, render)

    @app.post(
        "/status/batch",
        response_model=StatusBatchResponse,
        responses=_errors(400, 413),
        openapi_extra=_request_body(StatusBatchRequest, required=False),
        tags=["status"],
    )
    async def status_batch(request: Request) -> Response:
        """Deploy status of every (or the listed) instance, from our tables: zero provider calls."""
        body = _parse(StatusBatchRequest, await _body(request), optional=True)
        ids = [] if body.instanceIds is None else [i for i in body.instanceIds if INSTANCE_ID_PATTERN.fullmatch(i)]
        async with api.connection() as conn, conn.cursor() as cur:
            await cur.execute(queries.STATUS_BATCH, {"all": body.instanceIds is None, "ids": ids})
            rows = await cur.fetchall()
        document = status_batch_json(rows, config.project_id, config.name_prefix, config.environment_id)
        return Response(document, media_type="application/json")

    @app.post(
        "/configure/{instanceId}",
        response_model=OkResponse,
        responses={**ACCEPTED, **_errors(400, 404, 409, 413, 502)},
        openapi_extra=_request_body(ConfigureRequest),
        tags=["instances"],
    )
    async def configure(request: Request, instance_id: InstanceIdPath) -> Response:
        """Merge variables into the instance's env (``redeploy: true`` also forces a fresh deploy)."""
        body = _parse(ConfigureRequest, await _body(request))

        def change(spec: InstanceSpec) -> InstanceSpec:
            document = spec.model_dump(by_alias=True)
            document["env"] = {**spec.env, **body.variables}
            if body.redeploy:
                document["redeploy"] = spec.redeploy + 1
            try:
                return parse_instance(document)
            except SpecError as exc:
                raise _bad_input(_env_to_variables(exc.problems)) from None

        result = await api.modify(instance_id, change)
        log.info("configure %s: generation %d", instance_id, result.generation)

        async def render() -> OkResponse:
            return OkResponse(instanceId=instance_id, ok=True)

        return await api.answer_write(request, instance_id, result.generation, render)

    @app.post(
        "/redeploy/{instanceId}",
        response_model=OkResponse,
        responses={**ACCEPTED, **_errors(400, 404, 409, 413, 502)},
        openapi_extra=_request_body(RedeployRequest, required=False),
        tags=["instances"],
    )
    async def redeploy(request: Request, instance_id: InstanceIdPath) -> Response:
        """Bump the redeploy generation: the loop deploys the same spec again."""
        _parse(RedeployRequest, await _body(request), optional=True)

        def change(spec: InstanceSpec) -> InstanceSpec:
            return parse_instance({**spec.model_dump(by_alias=True), "redeploy": spec.redeploy + 1})

        result = await api.modify(instance_id, change)
        log.info("redeploy %s: generation %d", instance_id, result.generation)

        async def render() -> OkResponse:
            return OkResponse(instanceId=instance_id, ok=True)

        return await api.answer_write(request, instance_id, result.generation, render)

    @app.post(
        "/provision/{instanceId}/{toolId}",
        response_model=ProvisionResponse,
        responses={**ACCEPTED, **_errors(400, 404, 409, 413, 502)},
        openapi_extra=_request_body(ProvisionRequest, required=False),
        tags=["tools"],
    )
    async def provision(request: Request, instance_id: InstanceIdPath, tool: ToolPath) -> Response:
        """Add one tool to the instance and wait until its resource exists and the instance is Ready."""
        body = _parse(ProvisionRequest, await _body(request), optional=True)
        limit = body.config.limit if body.config is not None else None
        if limit is not None and tool is not Tool.OPENROUTER:
            raise _bad_input(["config.limit: only applies to openrouter"])
        api.require_available([tool], "toolId")

        def change(spec: InstanceSpec) -> InstanceSpec:
            if tool in spec.tools:
                raise ApiError(409, f"{tool.value} is already provisioned on instance {instance_id}")
            document = spec.model_dump(by_alias=True)
            document["tools"] = [*spec.tools, tool]
            if limit is not None:
                document["openrouterLimit"] = limit
            return parse_instance(document)

        result = await api.modify(instance_id, change)
        log.info("provision %s/%s: generation %d", instance_id, tool.value, result.generation)

        async def provisioned() -> bool:
            return await api.tool_service(instance_id, tool) is not None

        async def render() -> ProvisionResponse:
            row = await api.tool_service(instance_id, tool)
            if row is None:  # removed again between the wait and this read
                raise ApiError(409, f"{tool.value} of instance {instance_id} was removed meanwhile")
            return ProvisionResponse(
                toolId=tool.value, resourceId=row["resource_id"], envKey=row["env_key"], status=row["status"]
            )

        return await api.answer_write(request, instance_id, result.generation, render, extra=provisioned)

    @app.delete(
        "/destroy/{instanceId}/{toolId}/{resourceId}",
        response_model=DestroyToolResponse,
        responses={**ACCEPTED, **_errors(400, 404, 409, 502)},
        tags=["tools"],
    )
    async def destroy_tool(
        request: Request, instance_id: InstanceIdPath, tool: ToolPath, resource_id: ResourcePath
    ) -> Response:
        """Remove one tool from the instance; its resource is deleted at the provider by the loop."""
        async with api.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                queries.SELECT_TOOL_RESOURCE_IDS,
                {"instance_id": instance_id, "tool_id": tool.value, "kind": TOOL_KINDS[tool]},
            )
            known = {row[0] for row in await cur.fetchall()}
        if resource_id not in known:
            raise ApiError(404, f"instance {instance_id} has no {tool.value} resource {resource_id}")

        def change(spec: InstanceSpec) -> InstanceSpec:
            if tool not in spec.tools:
                raise ApiError(404, f"instance {instance_id} has no {tool.value}")
            return parse_instance({**spec.model_dump(by_alias=True), "tools": [t for t in spec.tools if t != tool]})

        result = await api.modify(instance_id, change)
        log.info("destroy %s/%s: generation %d", instance_id, tool.value, result.generation)

        async def removed() -> bool:
            return await api.tool_service(instance_id, tool) is None

        async def render() -> DestroyToolResponse:
            return DestroyToolResponse(toolId=tool.value, resourceId=resource_id, deleted=True)

        return await api.answer_write(request, instance_id, result.generation, render, extra=removed)

    @app.get(
        "/instances/{instanceId}",
        response_model=InstanceView,
        responses=_errors(400, 404),
        tags=["status"],
    )
    async def get_instance(instance_id: InstanceIdPath) -> Response:
        """Spec, generations, phase, conditions, resources and recent events of one instance."""
        async with api.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.SELECT_INSTANCE, {"instance_id": instance_id})
            row = await cur.fetchone()
            if row is None:
                raise ApiError(404, f"instance {instance_id} not found")
            await cur.execute(queries.SELECT_INSTANCE_RESOURCES, {"instance_id": instance_id})
            resources = await cur.fetchall()
            await cur.execute(
                queries.SELECT_INSTANCE_EVENTS, {"instance_id": instance_id, "limit": config.events_limit}
            )
            events = await cur.fetchall()
        view = InstanceView(
            instanceId=row["instance_id"],
            name=row["name"],
            present=row["present"],
            spec=_spec_view(row["spec"]),
            generation=row["generation"],
            observedGeneration=row["observed_generation"],
            phase=row["phase"],
            conditions=row["conditions"] or {},
            attempts=row["attempts"],
            nextAttemptAt=row["next_attempt_at"],
            lastError=row["last_error"],
            createdAt=row["created_at"],
            updatedAt=row["updated_at"],
            readyAt=row["ready_at"],
            url=row["url"],
            deployStatus=row["deploy_status"],
            resources=[
                ResourceView(
                    kind=r["kind"],
                    derivedName=r["derived_name"],
                    externalId=r["external_id"],
                    status=r["status"],
                    attributes=r["attributes"] or {},
                    conditions=r["conditions"] or {},
                    attempts=r["attempts"],
                    lastError=r["last_error"],
                    updatedAt=r["updated_at"],
                )
                for r in resources
            ],
            events=[
                EventView(
                    id=e["id"],
                    at=e["at"],
                    kind=e["kind"],
                    action=e["action"],
                    outcome=e["outcome"],
                    detail=e["detail"] or {},
                )
                for e in events
            ],
        )
        return _json(view)

    @app.get("/instances", response_model=InstanceList, responses=_errors(400), tags=["status"])
    async def list_instances(
        phase: Annotated[Phase | None, Query(description="Only instances in this phase.")] = None,
        tool: Annotated[Tool | None, Query(description="Only instances with this tool.")] = None,
        present: Annotated[bool | None, Query(description="false: only those being destroyed.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
        cursor: Annotated[str | None, Query(max_length=200, description="From the previous page.")] = None,
    ) -> Response:
        """Instances in id order, filtered, one page at a time."""
        params = {
            "after": _decode_cursor(cursor),
            "phase": phase.value if phase else None,
            "tool": tool.value if tool else None,
            "present": present,
            "limit": limit + 1,
        }
        async with api.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(queries.LIST_INSTANCES, params)
            rows = await cur.fetchall()
        page = rows[:limit]
        items = [
            InstanceSummary(
                instanceId=r["instance_id"],
                name=r["name"],
                present=r["present"],
                tools=_spec_view(r["spec"]).tools,
                generation=r["generation"],
                observedGeneration=r["observed_generation"],
                phase=r["phase"],
                lastError=r["last_error"],
                updatedAt=r["updated_at"],
            )
            for r in page
        ]
        next_cursor = _encode_cursor(page[-1]["instance_id"]) if len(rows) > limit else None
        return _json(InstanceList(items=items, nextCursor=next_cursor))

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is the seed's ``{"error": message}``; nothing internal leaks."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.message, exc.details, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for item in exc.errors():
            loc = [str(part) for part in item.get("loc", ())]
            if loc and loc[0] in ("path", "query", "body", "header"):
                loc = loc[1:]
            message = str(item.get("msg", "is not valid")).removeprefix("Value error, ")
            problems.append(f"{'.'.join(loc) or 'request'}: {message}")
        return _error(400, "; ".join(problems), problems if len(problems) > 1 else None)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    async def database_error(request: Request, exc: Exception) -> Response:
        log.error("database unavailable: %s", type(exc).__name__)
        return _error(503, "database unavailable; retry shortly")

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return _error(500, "internal error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(psycopg.OperationalError, database_error)
    app.add_exception_handler(PoolTimeout, database_error)
    app.add_exception_handler(Exception, unexpected)


NO_NUL_REGEX = "^[^\\u0000]*$"


def _strings_without_nul(schema: Any) -> None:
    """Every request string refuses NUL (Postgres text cannot hold it): say so in the schema."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
            schema["pattern"] = NO_NUL_REGEX
        for value in schema.values():
            _strings_without_nul(value)
    elif isinstance(schema, list):
        for item in schema:
            _strings_without_nul(item)


def _publish_validator_rules(schemas: dict[str, Any]) -> None:
    """Rules the models check in validators, published as JSON Schema keywords too.

    Not every rule can be said in a schema (a cursor must be one this API issued; ``config.limit``
    applies to OpenRouter only): those answer 400 with the field named.
    """
    spec = schemas["InstanceSpec"]["properties"]
    spec["instanceId"]["pattern"] = INSTANCE_ID_REGEX
    spec["tools"]["uniqueItems"] = True
    for branch in spec["image"].get("anyOf", []):
        if branch.get("type") == "string":
            branch["pattern"] = IMAGE_PATTERN.pattern
    env_rules = {
        "propertyNames": {"pattern": ENV_NAME_PATTERN.pattern},
        "maxProperties": MAX_ENV_VARS,
        "additionalProperties": {
            "type": "string",
            # The rule counts UTF-8 bytes; a schema counts characters, so this bound is looser
            # for non-ASCII text (the API then answers 400 naming the variable).
            "maxLength": MAX_ENV_VALUE_BYTES,
            "description": f"At most {MAX_ENV_VALUE_BYTES} bytes in UTF-8.",
        },
    }
    spec["env"].update(env_rules)
    schemas["ConfigureRequest"]["properties"]["variables"].update(env_rules)
    for model in REQUEST_MODELS:
        _strings_without_nul(schemas[model.__name__])


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, adjusted to what the app really does.

    Request bodies are parsed by the routes themselves (strict types, one 400 naming each
    field), so their schemas are added here, with the rules the models check in validators;
    validation errors are 400, not FastAPI's 422; and every route but ``/healthz`` is marked as
    needing the bearer token and as answering 401.
    """
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    _publish_validator_rules(schemas)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    document["components"]["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "description": "SERVICES_API_KEY"}
    }
    if app.state.delegated:
        from desired_state.http_paid import SECURITY_SCHEMES

        document["components"]["securitySchemes"].update(SECURITY_SCHEMES)
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {"description": "Bad input", "content": {"application/json": {"schema": error_ref}}},
                )
            if path.startswith(app.state.delegated):
                continue  # the paid routes declare their own security and errors
            if path in PUBLIC_PATHS:
                operation["security"] = []
            else:
                operation["security"] = [{"bearerAuth": []}]
                responses["401"] = {
                    "description": "Missing or wrong bearer token",
                    "content": {"application/json": {"schema": error_ref}},
                }
    app.openapi_schema = document
    return document


# -- serving -----------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the caller owns signals and sets ``stop``."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket says TCP; without it every response written in two parts (headers, body)
    # waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ApiStartError(f"the HTTP API cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def begin_shutdown(app: FastAPI) -> None:
    """Make requests that are waiting for convergence answer 202 now (the write stands)."""
    api = getattr(app.state, "api", None)
    if isinstance(api, _Api):
        api.stopping.set()


async def serve(app: FastAPI, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set, then finish requests in flight.

    The app's lifespan (the Postgres pool) runs around the server, so a database that cannot be
    reached raises :class:`ApiStartError` here instead of ending the process from inside uvicorn.
    """
    sock = _listen(host, port)
    try:
        async with app.router.lifespan_context(app):
            server = _Server(
                uvicorn.Config(
                    app,
                    lifespan="off",
                    log_level="warning",
                    access_log=False,
                    timeout_graceful_shutdown=10,
                )
            )
            task = asyncio.create_task(server.serve(sockets=[sock]))
            stopped = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                begin_shutdown(app)
                server.should_exit = True
                stopped.cancel()
                try:
                    await task
                except SystemExit:
                    raise ApiStartError("the HTTP API stopped unexpectedly (see the log above)") from None
    finally:
        sock.close()


__all__ = ["ApiConfig", "ApiConfigError", "ApiStartError", "begin_shutdown", "create_app", "serve"]
