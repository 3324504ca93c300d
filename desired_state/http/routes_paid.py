"""The paid half's HTTP routes, as one FastAPI router (issue 12, part 6).

``GET /api/services/catalog`` (public), ``POST /api/services/invoke/{group}/{method}``, ``GET`` and
``DELETE /api/services/jobs/{jobId}``, ``GET /api/services/usage/{group}/{method}?history=1`` and
``GET /api/credits``. Every route but the catalog takes ``Authorization: Bearer sk-...``, a
caller's key (:mod:`desired_state.services.callers`: looked up by its SHA-256), through the
:data:`CALLER_KEY` security dependency, so the OpenAPI document declares the ``callerKey`` scheme
on exactly those operations. ``invoke`` does not look the key up on its own:
its hash goes into the admission statement, which finds the caller in the same round trip (issue
14); a refusal found before that statement still checks the key first, so a wrong key is 401
before anything else on every route. ``SERVICES_API_KEY`` opens the instance routes
only: the app's bearer middleware lets :data:`PREFIX` through to this router (``create_app(...,
paid=PaidRoutes(...))``), which never sees that key as anything but an unknown one (401); the
middleware refuses an ``sk-`` key on the instance routes in turn.

Errors are ``{error: <code>, message, hint}`` with the seed's codes
(:class:`~desired_state.services.vocabulary.ErrorCode`, wire models in ``schemas_paid``); a 429
carries an exact ``Retry-After``, a replay ``Idempotency-Replayed: true``. A router cannot install
exception handlers, so its routes use a route class (:class:`PaidRoute`) that turns every refusal
(and a malformed path or query, an undecodable body, a database outage) into that shape.

Bodies are decoded by the package's one strict decoder: :class:`PaidRoute` is a
:class:`~desired_state.http.body.StrictJsonRoute` (UTF-8 without a byte-order mark, no duplicate
keys, no NaN or Infinity, no text Postgres cannot store, a bounded number of values, a byte cap
enforced while reading), here capped at ``max_body_bytes``; then the service's pydantic model
validates it in strict mode.

A job answers 202 ``{jobId, status, pollUrl}`` at once: the loop runs it. A proxy is admitted as
a running row leased to this process, its upstream call is made by the injected ``proxy_call``
(the handlers are the reconciler's, and ``desired_state`` must not import it), and it ends in the
termination transaction: completed and captured, or failed and refunded. Without a
``proxy_call`` every proxy answers 500 ``upstream_not_configured`` and is refunded. If this
process dies during the call, the loop fails and refunds it when the lease lapses.
"""

# No ``from __future__ import annotations`` here: the routes' parameter types are built from the
# registry inside create_paid_router, and FastAPI must see them as objects, not names.
import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import PoolTimeout
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from desired_state.http.body import StrictJsonRoute
from desired_state.http.errors import ApiError
from desired_state.http.schemas_paid import (
    AUTH_ERRORS,
    Cancelled,
    Catalog,
    Credits,
    Invoked,
    PaidError,
    TransferView,
    documented_errors,
)
from desired_state.services import callers, intake, jobs, ledger, termination
from desired_state.services.callers import Caller
from desired_state.services.definitions import InputError, ServiceDefinition, ServiceRegistry, UpstreamError
from desired_state.services.intake import Admission, AdmissionRefused
from desired_state.services.jobs import JobView, Usage
from desired_state.services.termination import JobError
from desired_state.services.vocabulary import (
    Clock,
    ErrorCode,
    JobErrorCode,
    JobStatus,
    Runtime,
    caller_account,
    system_clock,
)
from desired_state.webhooks import WEBHOOK_URL_HEADER, WEBHOOK_URL_PARAMETER, webhook_view

log = logging.getLogger(__name__)

PREFIX = "/api"
SERVICES_PATH = "/api/services"
JOBS_PATH = f"{SERVICES_PATH}/jobs"
CALLER_KEY = HTTPBearer(scheme_name="callerKey", description="A caller's API key (sk-...).", auto_error=False)
"""The paid routes' security scheme: reads the bearer token (checking is :func:`authenticated`'s)."""
DECODE_ERRORS = {413: ErrorCode.BODY_TOO_LARGE}
"""The paid code of a body the strict decoder refuses, by its status; any other is ``invalid_input``
(a body that is not JSON, 415 on the instance routes, is a 400 here: the seed has no such code)."""

ProxyCall = Callable[[ServiceDefinition, dict[str, Any], uuid.UUID], Awaitable[Any]]
"""Runs a proxy's upstream call: (definition, validated input, job id as the upstream idempotency
key) -> the output; raises :class:`UpstreamError` naming what failed."""

ConnectionFactory = Callable[[], contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


def _default_owner() -> str:
    return f"api:{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class PaidApiConfig:
    registry: ServiceRegistry
    proxy_call: ProxyCall | None = field(default=None, repr=False)
    on_admission: Callable[[str], None] | None = field(default=None, repr=False)
    """Told each admission's outcome: ``admitted``, ``replayed`` or the refusal's code (metrics)."""
    clock: Clock = system_clock
    lease_owner: str = field(default_factory=_default_owner)
    max_body_bytes: int = 1024 * 1024
    history_limit: int = 50
    transfers_limit: int = 20


class Refusal(Exception):
    """An answer other than success, in the paid routes' shape."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        hint: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.headers = headers or {}


Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(CALLER_KEY)]


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    return credentials.credentials.strip() if credentials is not None else ""


def unauthenticated() -> Refusal:
    return Refusal(
        ErrorCode.AUTHENTICATION_REQUIRED,
        "a valid caller API key is required",
        "send Authorization: Bearer sk-...",
        {"WWW-Authenticate": "Bearer"},
    )


def error_response(
    code: ErrorCode, message: str, hint: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = PaidError(error=code, message=message, hint=hint).model_dump(mode="json")
    return JSONResponse(body, status_code=code.http_status, headers=headers)


def _from_admission(exc: AdmissionRefused) -> Refusal:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return Refusal(exc.code, exc.message, exc.hint, headers)


class PaidRoute(StrictJsonRoute):
    """Turns refusals, malformed paths, queries and bodies, and database outages into
    ``{error, message, hint}``.

    A :class:`StrictJsonRoute`, so ``await request.json()`` in a handler is the strict decoder's
    (:func:`create_paid_router` sets ``max_bytes`` from the config). It also answers a method a
    path does not take with 405 and an ``Allow`` header naming every method of that path
    (Starlette's router names only those of the first route it matched).
    """

    allowed_methods: frozenset[str] = frozenset()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            allow = ", ".join(sorted(self.allowed_methods or self.methods))
            response = error_response(
                ErrorCode.METHOD_NOT_ALLOWED,
                f"{scope['method']} is not allowed here",
                f"allowed: {allow}",
                {"Allow": allow},
            )
            await response(scope, receive, send)
            return
        await super().handle(scope, receive, send)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Refusal as exc:
                return error_response(exc.code, exc.message, exc.hint, exc.headers)
            except AdmissionRefused as exc:
                refusal = _from_admission(exc)
                return error_response(refusal.code, refusal.message, refusal.hint, refusal.headers)
            except ApiError as exc:  # the strict decoder refused the body (or its size)
                code = DECODE_ERRORS.get(exc.status, ErrorCode.INVALID_INPUT)
                return error_response(code, exc.message, headers=dict(exc.headers or {}))
            except RequestValidationError as exc:
                problems = []
                for item in exc.errors():
                    loc = [str(part) for part in item.get("loc", ()) if part not in ("path", "query", "header")]
                    problems.append(f"{'.'.join(loc) or 'request'}: {item.get('msg', 'is not valid')}")
                return error_response(ErrorCode.INVALID_INPUT, "; ".join(problems), problems[0] if problems else None)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.error("database unavailable: %s", type(exc).__name__)
                return error_response(ErrorCode.DATABASE_UNAVAILABLE, "database unavailable; retry shortly")
            except Exception as exc:
                log.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
                return error_response(ErrorCode.INTERNAL_ERROR, "internal error")

        return guarded


# -- request parsing -----------------------------------------------------------------------------------


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, decoded by the strict decoder; no body (or only whitespace) is ``{}``."""
    data = await request.json()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Refusal(ErrorCode.INVALID_INPUT, "body: must be a JSON object")
    return data


JobIdPath = Annotated[uuid.UUID, Path(alias="jobId", description="The job id (jobId of the invoke answer).")]


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status, headers=headers)


# -- the router ----------------------------------------------------------------------------------------


def create_paid_router(config: PaidApiConfig, connection: ConnectionFactory) -> APIRouter:
    """The paid routes; ``connection`` lends a pooled autocommit connection (the app's pool)."""
    body_cap = config.max_body_bytes

    class ConfiguredRoute(PaidRoute):
        max_bytes = body_cap

    router = APIRouter(route_class=ConfiguredRoute, tags=["paid services"])
    registry = config.registry

    async def authenticated(credentials: Credentials) -> Caller:
        """The caller whose live key the request bears; 401 otherwise (run before anything else)."""
        token = bearer_token(credentials)
        caller = None
        if token:
            async with connection() as conn:
                caller = await callers.verify_key(conn, token)
        if caller is None:
            raise unauthenticated()
        return caller

    CallerOf = Annotated[Caller, Depends(authenticated)]

    groups = sorted({d.group for d in registry})
    methods = sorted({d.path_method for d in registry})
    GroupPath = Annotated[str, Path(description="The service's group.", json_schema_extra={"enum": groups})]
    MethodPath = Annotated[
        str, Path(description="The service's method (kebab-case).", json_schema_extra={"enum": methods})
    ]

    def service_of(group: str, method: str) -> ServiceDefinition:
        definition = registry.find(group, method)
        if definition is None:
            raise Refusal(
                ErrorCode.SERVICE_NOT_FOUND, f"no service {group}.{method}", "GET /api/services/catalog lists them"
            )
        return definition

    @router.get(f"{SERVICES_PATH}/catalog", response_model=Catalog, openapi_extra={"security": []})
    async def catalog() -> Response:
        """Every service: cost, runtime, rate limit, access rules, input and output JSON Schemas (public)."""
        return _json(Catalog(services=registry.catalog()))

    @router.post(
        f"{SERVICES_PATH}/invoke/{{group}}/{{method}}",
        response_model=Invoked,
        status_code=202,
        responses={
            200: {"description": "A proxy's output (the service's outputSchema)."},
            **AUTH_ERRORS,
            **documented_errors(
                ErrorCode.INVALID_INPUT,
                ErrorCode.INSUFFICIENT_CREDITS,
                ErrorCode.COURSE_NOT_PURCHASED,
                ErrorCode.SERVICE_NOT_FOUND,
                ErrorCode.IDEMPOTENCY_KEY_IN_FLIGHT,
                ErrorCode.BODY_TOO_LARGE,
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                ErrorCode.RATE_LIMIT_EXCEEDED,
                ErrorCode.UPSTREAM_NOT_CONFIGURED,
                ErrorCode.UPSTREAM_UNREACHABLE,
            ),
        },
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {"schema": {"type": "object", "description": "The service's inputSchema."}}
                },
            },
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "Retry safely: the same key and body answer the first response again.",
                },
                WEBHOOK_URL_PARAMETER,
            ],
        },
    )
    async def invoke(request: Request, credentials: Credentials, group: GroupPath, method: MethodPath) -> Response:
        """Invoke a service: a job answers 202 with its id at once; a proxy answers 200 with its output.

        The cost is charged before anything runs and refunded if it fails, is cancelled or times out.
        """
        # The key is looked up by the admission statement itself (one round trip, not two), so
        # what needs no database is checked first; a refusal there still answers a wrong key 401
        # first, as every paid route does.
        presented = callers.presented_key(bearer_token(credentials))
        if presented is None:
            raise unauthenticated()
        try:
            definition = service_of(group, method)
            invocation = intake.prepare(
                registry,
                definition.id,
                await json_object(request),
                idempotency_key=request.headers.get("idempotency-key"),
                webhook_url=request.headers.get(WEBHOOK_URL_HEADER),
            )
        except (Refusal, AdmissionRefused, ApiError) as exc:
            await authenticated(credentials)
            if isinstance(exc, AdmissionRefused) and config.on_admission is not None:
                config.on_admission(exc.code.value)
            raise
        try:
            async with connection() as conn:
                admission = await intake.admit_prepared(
                    conn, invocation, presented, clock=config.clock, lease_owner=config.lease_owner
                )
        except AdmissionRefused as exc:
            if exc.code is ErrorCode.AUTHENTICATION_REQUIRED:
                raise unauthenticated() from None
            if config.on_admission is not None:
                config.on_admission(exc.code.value)
            raise
        if config.on_admission is not None:
            config.on_admission("replayed" if admission.replayed else "admitted")
        replay_headers = {"Idempotency-Replayed": "true"} if admission.replayed else {}
        if definition.runtime is Runtime.JOB:
            poll = f"{JOBS_PATH}/{admission.job_id}"
            status = JobStatus.PENDING if admission.replayed else admission.status
            return _json(
                Invoked(jobId=admission.job_id, status=status, pollUrl=poll),
                202,
                {"Location": poll, **replay_headers},
            )
        if admission.replayed:
            return JSONResponse(
                admission.response_body, status_code=admission.response_status or 200, headers=replay_headers
            )
        status_code, body = await _call_proxy(admission)
        return JSONResponse(body, status_code=status_code, headers={"X-Job-Id": str(admission.job_id)})

    async def _call_proxy(admission: Admission) -> tuple[int, Any]:
        definition = admission.definition
        result: Any = None
        error: JobError | None = None
        if config.proxy_call is None:
            error = JobError(JobErrorCode.UPSTREAM_NOT_CONFIGURED, f"{definition.id} has no upstream configured here")
        else:
            try:
                output = await asyncio.wait_for(
                    config.proxy_call(definition, admission.document, admission.job_id), definition.timeout_seconds
                )
                result = definition.validate_output(output)
            except UpstreamError as exc:
                error = JobError(exc.code, exc.message)
            except TimeoutError:
                error = JobError(
                    JobErrorCode.UPSTREAM_UNREACHABLE,
                    f"the upstream did not answer within {definition.timeout_seconds:g} s",
                )
            except InputError as exc:
                error = JobError(JobErrorCode.UPSTREAM_FAILED, f"the upstream's answer is not valid: {exc}")
            except Exception as exc:  # a bug in the handler: the call still ends, refunded
                log.error("proxy %s raised %s", definition.id, type(exc).__name__)
                error = JobError(JobErrorCode.UPSTREAM_FAILED, "the upstream call failed unexpectedly")
        status = JobStatus.FAILED if error is not None else JobStatus.COMPLETED
        async with connection() as conn:
            ended = await termination.terminate(
                conn,
                admission.job_id,
                status,
                now=config.clock(),
                token=1,
                result=result,
                error=error,
                expected=(JobStatus.RUNNING,),
            )
            if not ended.changed:
                # The loop ended it first (this request outlived its lease): answer what it recorded.
                record = await jobs.get_job(conn, admission.job_id)
                assert record is not None
                recorded = (
                    JobError(JobErrorCode(record.error_code), record.error_message or "") if record.error_code else None
                )
                return termination.proxy_answer(record.status, record.result, recorded)
        return termination.proxy_answer(status, result, error)

    @router.get(
        f"{JOBS_PATH}/{{jobId}}",
        response_model=JobView,
        responses={**AUTH_ERRORS, **documented_errors(ErrorCode.INVALID_INPUT, ErrorCode.JOB_NOT_FOUND)},
    )
    async def get_job(caller: CallerOf, job_id: JobIdPath) -> Response:
        """A job's status, progress, result or error, cost and refund (your jobs only)."""
        ident = job_id
        async with connection() as conn:
            record = await jobs.get_job(conn, ident, caller.caller_id)
            # Most jobs have no webhook: only those with a URL read their delivery.
            hook = None if record is None or record.webhook_url is None else await webhook_view(conn, ident)
        if record is None:
            raise Refusal(ErrorCode.JOB_NOT_FOUND, f"no job {ident}")
        return _json(record.view().model_copy(update={"webhook": hook}))

    @router.delete(
        f"{JOBS_PATH}/{{jobId}}",
        response_model=Cancelled,
        responses={**AUTH_ERRORS, **documented_errors(ErrorCode.INVALID_INPUT, ErrorCode.JOB_NOT_FOUND)},
    )
    async def cancel_job(caller: CallerOf, job_id: JobIdPath) -> Response:
        """Cancel a pending or running job and refund it; a finished job keeps its state (refunded: false)."""
        ident = job_id
        async with connection() as conn:
            outcome = await termination.cancel(conn, ident, now=config.clock(), caller_id=caller.caller_id)
        if not outcome.found or outcome.status is None:
            raise Refusal(ErrorCode.JOB_NOT_FOUND, f"no job {ident}")
        return _json(Cancelled(jobId=ident, status=outcome.status, refunded=outcome.refunded))

    @router.get(
        f"{SERVICES_PATH}/usage/{{group}}/{{method}}",
        response_model=Usage,
        responses={**AUTH_ERRORS, **documented_errors(ErrorCode.INVALID_INPUT, ErrorCode.SERVICE_NOT_FOUND)},
    )
    async def usage(
        caller: CallerOf,
        group: GroupPath,
        method: MethodPath,
        history: Annotated[bool, Query(description="1: include your recent jobs of this service.")] = False,
    ) -> Response:
        """Your use of one service: counts by outcome, credits spent, refunded and held, rate windows."""
        definition = service_of(group, method)
        async with connection() as conn:
            report = await jobs.usage(
                conn,
                caller.caller_id,
                definition.id,
                history=history,
                history_limit=config.history_limit,
                clock=config.clock,
            )
        return _json(report)

    @router.get(
        f"{PREFIX}/credits",
        response_model=Credits,
        responses={**AUTH_ERRORS, **documented_errors(ErrorCode.INVALID_INPUT)},
    )
    async def credits(
        caller: CallerOf,
        limit: Annotated[int | None, Query(ge=1, le=500, description="How many recent transfers.")] = None,
    ) -> Response:
        """Your balance and recent transfers (grants, charges, refunds)."""
        account = caller_account(caller.caller_id)
        async with connection() as conn:
            balance = await ledger.balance(conn, caller.caller_id)
            transfers = await ledger.recent_transfers(conn, caller.caller_id, limit or config.transfers_limit)
        return _json(
            Credits(
                balance=balance,
                transfers=[
                    TransferView(
                        transferId=t.transfer_id,
                        kind=t.kind,
                        amount=t.signed_for(account),
                        jobId=t.job_id,
                        reason=t.reason,
                        createdAt=t.created_at,
                    )
                    for t in transfers
                ],
            )
        )

    by_path: dict[str, set[str]] = {}
    for route in router.routes:
        if isinstance(route, PaidRoute):
            by_path.setdefault(route.path, set()).update(route.methods or ())
    for route in router.routes:
        if isinstance(route, PaidRoute):
            route.allowed_methods = frozenset(by_path[route.path])
    return router


@dataclass(frozen=True)
class PaidRoutes:
    """What the instance app needs to mount the paid routes: the router factory and the path
    prefix whose authentication the router does itself."""

    config: PaidApiConfig
    prefix: str = PREFIX + "/"

    def router(self, connection: ConnectionFactory) -> APIRouter:
        return create_paid_router(self.config, connection)
