"""Job admission: the one transaction every job enters by (issue 12, part 4).

Named *intake* because ``reconciler/admission.py`` is the providers' rate-limit gate.

The order is the issue's: service known (404 ``service_not_found``) -> input valid (400
``invalid_input``, naming each field) -> idempotency key -> course gate (402
``course_not_purchased``, hint: the course id) -> rate limit (429 ``rate_limit_exceeded`` with an
exact ``Retry-After``) -> balance (402 ``insufficient_credits``, hint: how many more) -> charge ->
job row -> ``NOTIFY``.

The first two steps need the typed definitions and run here; everything from the key on is the
plpgsql function ``paid_admit`` (migration 0006), one statement and so one transaction, which a
trusted backend may also call over plain SQL (``docs/sql-contract.md``). It prices the job from
``paid_services``, the registry's terms as :func:`sync_services` last wrote them.

Idempotency keys are scoped to (caller, service, key) and carry a fingerprint of the validated
input: the same input replays the stored answer (no new job, no charge, no quota), another input
is 422, and a proxy call still in flight is 409. 402 and 429 store nothing, so the key stays usable.
The rate limit is a sliding log over the caller's own admissions of the service (refunded ones
count: the work was still asked for), and ``Retry-After`` is the exact number of seconds, rounded
up, until the oldest admission that blocks leaves its window.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from desired_state.services import queries
from desired_state.services.callers import PresentedKey
from desired_state.services.definitions import InputError, ServiceDefinition, ServiceRegistry
from desired_state.services.vocabulary import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    AdmitOutcome,
    Clock,
    ErrorCode,
    JobStatus,
    Runtime,
    system_clock,
)
from desired_state.webhooks import WebhookUrlError, attach_webhook_url, parse_webhook_url


class AdmissionRefused(Exception):
    """A refusal with its wire code; nothing was written and nothing charged."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        hint: str | None = None,
        *,
        retry_after: int | None = None,
        problems: list[str] | None = None,
        job_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.retry_after = retry_after
        self.problems = problems or []
        self.job_id = job_id


@dataclass(frozen=True)
class Admission:
    """An admitted job, or the replay of one admitted earlier under the same key."""

    job_id: uuid.UUID
    status: JobStatus
    cost_credits: int
    definition: ServiceDefinition
    document: dict[str, Any]
    """The validated input, as stored on the job row."""
    replayed: bool
    response_status: int | None = None
    """Replay of a proxy call: the status answered the first time."""
    response_body: Any = None
    """Replay of a proxy call: the body answered the first time."""


async def sync_services(conn: psycopg.AsyncConnection[Any], registry: ServiceRegistry) -> None:
    """Write the registry's terms to ``paid_services`` (idempotent; rows of other services stay)."""
    async with conn.transaction(), conn.cursor() as cur:
        for definition in registry:
            await cur.execute(queries.UPSERT_SERVICE, service_terms(definition))


def service_terms(definition: ServiceDefinition) -> dict[str, Any]:
    limit = definition.rate_limit
    return {
        "service_id": definition.id,
        "runtime": definition.runtime.value,
        "cost_credits": definition.cost_credits,
        "timeout_seconds": definition.timeout_seconds,
        "max_attempts": definition.max_attempts,
        "per_minute": limit.per_minute if limit else None,
        "per_hour": limit.per_hour if limit else None,
        "per_day": limit.per_day if limit else None,
        "course_id": definition.course_id,
    }


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise AdmissionRefused(
            ErrorCode.INVALID_INPUT,
            f"Idempotency-Key: must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters",
            problems=[f"Idempotency-Key: must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters"],
        )
    return key


def validate(registry: ServiceRegistry, service_id: str, data: Any) -> tuple[ServiceDefinition, dict[str, Any]]:
    """Steps 1 and 2: the service is known and the input valid (refusals raise)."""
    if service_id not in registry:
        raise AdmissionRefused(
            ErrorCode.SERVICE_NOT_FOUND, f"no service {service_id}", "GET /api/services/catalog lists the services"
        )
    definition = registry.get(service_id)
    try:
        return definition, definition.validate_input(data)
    except InputError as exc:
        raise AdmissionRefused(
            ErrorCode.INVALID_INPUT,
            "; ".join(exc.problems),
            f"the body must match the inputSchema of {definition.id} (GET /api/services/catalog)",
            problems=exc.problems,
        ) from None


@dataclass(frozen=True)
class Invocation:
    """A request past every check that needs no database (steps 1 and 2, the key's and the webhook's
    form): what the admission statement is given."""

    definition: ServiceDefinition
    document: dict[str, Any]
    """The validated input."""
    idempotency_key: str | None
    webhook_url: str | None


def prepare(
    registry: ServiceRegistry,
    service_id: str,
    data: Any,
    *,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
) -> Invocation:
    """Validate an invocation before any database work; refusals raise :class:`AdmissionRefused`.

    ``webhook_url`` is ignored for a proxy, which answers in its own request (nothing to call back)."""
    definition, document = validate(registry, service_id, data)
    key = check_idempotency_key(idempotency_key)
    if definition.runtime is Runtime.PROXY:
        webhook_url = None
    try:
        hook = None if webhook_url is None else parse_webhook_url(webhook_url)
    except WebhookUrlError as exc:
        raise AdmissionRefused(ErrorCode.INVALID_INPUT, str(exc), problems=[str(exc)]) from None
    return Invocation(definition, document, key, hook)


async def admit(
    conn: psycopg.AsyncConnection[Any],
    registry: ServiceRegistry,
    caller: uuid.UUID | PresentedKey,
    service_id: str,
    data: Any,
    *,
    idempotency_key: str | None = None,
    clock: Clock = system_clock,
    lease_owner: str | None = None,
    webhook_url: str | None = None,
) -> Admission:
    """Admit one invocation; raises :class:`AdmissionRefused` with the wire code otherwise.

    ``caller`` is the caller's id, or the key a request presented: then the admission statement
    looks the caller up itself (an unknown or revoked key is ``authentication_required``).
    ``lease_owner`` names the process that will call a proxy's upstream (the job row is leased
    to it for the service's timeout; if it dies, the loop refunds the call). ``webhook_url`` (a
    job's ``X-Webhook-Url``) is stored on the new job in the admission's transaction, so the job
    cannot end before its delivery is owed (``desired_state/webhooks.py``).
    """
    invocation = prepare(registry, service_id, data, idempotency_key=idempotency_key, webhook_url=webhook_url)
    return await admit_prepared(conn, invocation, caller, clock=clock, lease_owner=lease_owner)


async def admit_prepared(
    conn: psycopg.AsyncConnection[Any],
    invocation: Invocation,
    caller: uuid.UUID | PresentedKey,
    *,
    clock: Clock = system_clock,
    lease_owner: str | None = None,
) -> Admission:
    """:func:`admit` for an invocation :func:`prepare` already checked."""
    definition, document, hook = invocation.definition, invocation.document, invocation.webhook_url
    params = {
        "caller_id": caller if isinstance(caller, uuid.UUID) else None,
        "key_hash": caller.digest if isinstance(caller, PresentedKey) else None,
        "service_id": definition.id,
        "input": Jsonb(document),
        "idempotency_key": invocation.idempotency_key,
        "now": clock(),
        "lease_owner": lease_owner,
    }
    if hook is None and conn.autocommit:
        # paid_admit is one statement, so on an autocommit connection it is its own transaction:
        # one round trip instead of BEGIN, the call and COMMIT (HTTP admission's latency).
        row = await _admit_published(conn, definition, params)
        return _answer(definition, document, row)
    async with conn.transaction():
        row = await _admit_published(conn, definition, params)
        if hook is not None and row["outcome"] == AdmitOutcome.ADMITTED:
            await attach_webhook_url(conn, row["job_id"], hook)
    return _answer(definition, document, row)


async def _admit_published(
    conn: psycopg.AsyncConnection[Any], definition: ServiceDefinition, params: dict[str, Any]
) -> dict[str, Any]:
    """``paid_admit``; a service defined here but not yet published is published, then admitted."""
    row = await _admit(conn, params)
    if row["outcome"] == AdmitOutcome.SERVICE_NOT_FOUND:
        await conn.execute(queries.PUBLISH_MISSING_SERVICE, service_terms(definition))
        row = await _admit(conn, params)
    return row


async def _admit(conn: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.ADMIT, params)
        row = await cur.fetchone()
    assert row is not None
    return row


def _answer(definition: ServiceDefinition, document: dict[str, Any], row: dict[str, Any]) -> Admission:
    outcome = AdmitOutcome(row["outcome"])
    if outcome in (AdmitOutcome.ADMITTED, AdmitOutcome.REPLAYED):
        return Admission(
            job_id=row["job_id"],
            status=JobStatus(row["job_status"]),
            cost_credits=int(row["cost_credits"] or 0),
            definition=definition,
            document=document,
            replayed=outcome is AdmitOutcome.REPLAYED,
            response_status=row["response_status"],
            response_body=row["response_body"],
        )
    if outcome is AdmitOutcome.IDEMPOTENCY_IN_FLIGHT:
        raise AdmissionRefused(
            ErrorCode.IDEMPOTENCY_KEY_IN_FLIGHT,
            "a request with this Idempotency-Key is still in progress",
            "retry shortly with the same key and body",
            retry_after=int(row["retry_after_seconds"] or 1),
            job_id=row["job_id"],
        )
    if outcome is AdmitOutcome.IDEMPOTENCY_MISMATCH:
        raise AdmissionRefused(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was used with a different body",
            "use a new key for a different request",
        )
    if outcome is AdmitOutcome.COURSE_NOT_PURCHASED:
        course = row["hint"]
        raise AdmissionRefused(
            ErrorCode.COURSE_NOT_PURCHASED, f"{definition.id} requires the course {course}", course
        )
    if outcome is AdmitOutcome.RATE_LIMIT_EXCEEDED:
        seconds = int(row["retry_after_seconds"])
        raise AdmissionRefused(
            ErrorCode.RATE_LIMIT_EXCEEDED,
            f"rate limit of {definition.id} reached",
            f"Reset in {seconds}s",
            retry_after=seconds,
        )
    if outcome is AdmitOutcome.INSUFFICIENT_CREDITS:
        needed = int(row["hint"])
        raise AdmissionRefused(
            ErrorCode.INSUFFICIENT_CREDITS,
            f"{definition.id} costs {row['cost_credits']} credits",
            f"{needed} more credit{'s' if needed != 1 else ''} needed",
        )
    if outcome is AdmitOutcome.CALLER_NOT_FOUND:
        raise AdmissionRefused(ErrorCode.AUTHENTICATION_REQUIRED, "unknown caller")
    raise AdmissionRefused(ErrorCode.SERVICE_NOT_FOUND, f"no service {definition.id}")
