"""The paid half's wire vocabulary, defined once (issue 12, "The wire vocabulary").

Job statuses, runtimes, transfer kinds, the error codes callers see (with their HTTP status), the
codes a job's ``error.code`` may carry, the API key prefix and the notification channels. The
SQL migration (``0006_paid_jobs.sql``) spells the same strings in its CHECK constraints; the
tests compare the two so they cannot drift.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final


class JobStatus(enum.StrEnum):
    """A job's status: the seed's names plus ``timed_out``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


LIVE_STATUSES: Final = frozenset({JobStatus.PENDING, JobStatus.RUNNING})
TERMINAL_STATUSES: Final = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)
REFUNDED_STATUSES: Final = frozenset({JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT})


class Runtime(enum.StrEnum):
    """``proxy``: one upstream call inside the request; ``job``: the loop runs it."""

    PROXY = "proxy"
    JOB = "job"


class TransferKind(enum.StrEnum):
    """Ledger transfers: grant (grants -> caller), charge (caller -> escrow), capture (escrow ->
    revenue, on completed) and refund (escrow -> caller, on failed, cancelled, timed_out)."""

    GRANT = "grant"
    CHARGE = "charge"
    CAPTURE = "capture"
    REFUND = "refund"


class Settlement(enum.StrEnum):
    """How a terminal job's escrow was resolved; ``none`` for a free service."""

    CAPTURE = "capture"
    REFUND = "refund"
    NONE = "none"


class AccountKind(enum.StrEnum):
    CALLER = "caller"
    ESCROW = "escrow"
    REVENUE = "revenue"
    GRANTS = "grants"


ESCROW_ACCOUNT: Final = "escrow"
REVENUE_ACCOUNT: Final = "revenue"
GRANTS_ACCOUNT: Final = "grants"


def caller_account(caller_id: object) -> str:
    """The ledger account id of a caller (``caller:<uuid>``, as the SQL functions build it)."""
    return f"caller:{caller_id}"


class ErrorCode(enum.StrEnum):
    """``error`` of a paid route's ``{error, message, hint}`` answer (the seed's codes)."""

    INVALID_INPUT = "invalid_input"
    AUTHENTICATION_REQUIRED = "authentication_required"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    COURSE_NOT_PURCHASED = "course_not_purchased"
    SERVICE_NOT_FOUND = "service_not_found"
    JOB_NOT_FOUND = "job_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    IDEMPOTENCY_KEY_IN_FLIGHT = "idempotency_key_in_flight"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    BODY_TOO_LARGE = "body_too_large"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    UPSTREAM_NOT_CONFIGURED = "upstream_not_configured"
    UPSTREAM_AUTH_MISSING = "upstream_auth_missing"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_FAILED = "upstream_failed"
    INTERNAL_ERROR = "internal_error"
    DATABASE_UNAVAILABLE = "database_unavailable"

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self]


HTTP_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.AUTHENTICATION_REQUIRED: 401,
    ErrorCode.INSUFFICIENT_CREDITS: 402,
    ErrorCode.COURSE_NOT_PURCHASED: 402,
    ErrorCode.SERVICE_NOT_FOUND: 404,
    ErrorCode.JOB_NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.IDEMPOTENCY_KEY_IN_FLIGHT: 409,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.UPSTREAM_NOT_CONFIGURED: 500,
    ErrorCode.UPSTREAM_AUTH_MISSING: 500,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.UPSTREAM_UNREACHABLE: 502,
    ErrorCode.UPSTREAM_FAILED: 502,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
}


class JobErrorCode(enum.StrEnum):
    """``error.code`` of a job that did not complete."""

    HANDLER_FAILED = "handler_failed"  # the handler raised
    INVALID_INPUT = "invalid_input"  # a row written over SQL whose input the definition refuses
    SERVICE_UNAVAILABLE = "service_unavailable"  # no definition or handler for the service here
    TIMED_OUT = "timed_out"  # its deadline passed
    CANCELLED = "cancelled"  # the caller (or an operator) cancelled it
    WORKER_LOST = "worker_lost"  # its worker died and it may not be re-run
    UPSTREAM_NOT_CONFIGURED = "upstream_not_configured"
    UPSTREAM_AUTH_MISSING = "upstream_auth_missing"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_FAILED = "upstream_failed"
    CONFIGURATION_ERROR = "configuration_error"  # agents.provision: the instance cannot be provisioned


# The outcome strings paid_admit() returns (migration 0006).
class AdmitOutcome(enum.StrEnum):
    ADMITTED = "admitted"
    REPLAYED = "replayed"
    SERVICE_NOT_FOUND = "service_not_found"
    CALLER_NOT_FOUND = "caller_not_found"
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight"
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"
    COURSE_NOT_PURCHASED = "course_not_purchased"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    INSUFFICIENT_CREDITS = "insufficient_credits"


API_KEY_PREFIX: Final = "sk-"
WAKE_CHANNEL: Final = "paid_jobs"
"""NOTIFY channel of a newly admitted job (payload: the job id); the loop LISTENs on it."""
DONE_CHANNEL: Final = "paid_jobs_done"
"""NOTIFY channel of a job that reached a terminal status (payload: the job id)."""
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255

Clock = Callable[[], datetime]
"""Where code that needs "now" gets it; tests pass their own to control time."""


def system_clock() -> datetime:
    return datetime.now(UTC)
