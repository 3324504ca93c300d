"""The callers' side of webhooks: the ``X-Webhook-Url`` a job is invoked with, and what a poll shows.

A caller names a URL when invoking a job; :func:`parse_webhook_url` checks its shape (the 400
names the header) and :func:`attach_webhook_url` stores it on the job row *in the admission's
transaction*, so no job can end before its URL is known. When the job's status becomes terminal,
migration 0009's trigger writes the delivery (the outbox row) in that same transaction; the
reconciler delivers it (``reconciler/webhooks/``). :func:`webhook_view` is the ``webhook`` field
of the job's poll answer.

Only the URL's shape is checked here; where it resolves (loopback, private and metadata
addresses are refused) is checked at each delivery, since DNS answers change.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any, Final
from urllib.parse import urlsplit

from psycopg import AsyncConnection
from pydantic import BaseModel, Field

WEBHOOK_URL_HEADER: Final = "X-Webhook-Url"
MAX_WEBHOOK_URL_LENGTH: Final = 2048
WEBHOOK_ID_PREFIX: Final = "evt_"

WEBHOOK_URL_PARAMETER: Final[dict[str, Any]] = {
    "name": WEBHOOK_URL_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "format": "uri", "maxLength": MAX_WEBHOOK_URL_LENGTH},
    "description": "Jobs only: POST the job's end to this http(s) URL, signed per Standard Webhooks "
    "(webhook-id, webhook-timestamp, webhook-signature), retried for about a day.",
}
"""The header in the invoke route's OpenAPI description."""


class WebhookState(enum.StrEnum):
    """A delivery's state: ``pending`` until a 2xx (``delivered``) or until retries are exhausted,
    the receiver answered 410 or the address was refused (``failed``); ``disabled`` when no
    ``SERVICE_WEBHOOK_SECRET`` was set to sign it with."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    DISABLED = "disabled"


class WebhookView(BaseModel):
    """The ``webhook`` field of a job's poll answer."""

    url: str
    state: WebhookState = Field(description="pending (owed or retrying), delivered, failed or disabled.")
    attempts: int
    lastStatus: int | None = Field(description="HTTP status of the last attempt; null before one or with no answer.")


class WebhookUrlError(ValueError):
    """A webhook URL of the wrong shape; the message names the header and the rule."""


def parse_webhook_url(value: str) -> str:
    """The URL as stored, or WebhookUrlError: absolute http(s), a host, no credentials, no spaces."""
    url = value.strip()
    problem: str | None = None
    if not url or len(url) > MAX_WEBHOOK_URL_LENGTH:
        problem = f"must be 1 to {MAX_WEBHOOK_URL_LENGTH} characters"
    elif any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        problem = "must not contain spaces or control characters"
    else:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a bad port
        except ValueError:
            parts, port = None, None
        if parts is None:
            problem = "is not a valid URL"
        elif parts.scheme not in ("http", "https"):
            problem = "must be an http:// or https:// URL"
        elif not parts.hostname:
            problem = "must name a host"
        elif parts.username is not None or parts.password is not None:
            problem = "must not carry credentials (user:password@)"
        elif port == 0:
            problem = "must not use port 0"
    if problem is not None:
        raise WebhookUrlError(f"{WEBHOOK_URL_HEADER} {problem}")
    return url


def webhook_id(job_id: uuid.UUID | str, status: str) -> str:
    """The delivery's ``webhook-id``: deterministic in job and terminal status (migration 0009 builds
    the same string)."""
    return f"{WEBHOOK_ID_PREFIX}{job_id}_{status}"


ATTACH_WEBHOOK_URL = """
UPDATE service_jobs SET webhook_url = %(url)s
 WHERE job_id = %(job_id)s AND webhook_url IS NULL AND runtime = 'job'
"""

SELECT_WEBHOOK = """
SELECT j.webhook_url, d.state, d.attempts, d.last_status
  FROM service_jobs j
  LEFT JOIN webhook_deliveries d ON d.job_id = j.job_id
 WHERE j.job_id = %(job_id)s AND j.webhook_url IS NOT NULL
"""


async def attach_webhook_url(conn: AsyncConnection[Any], job_id: uuid.UUID, url: str) -> None:
    """Inside the admission's transaction, right after the job row is written (jobs only: a proxy
    answers in its own request, so it has nothing to call back about)."""
    await conn.execute(ATTACH_WEBHOOK_URL, {"job_id": job_id, "url": url})


async def webhook_view(conn: AsyncConnection[Any], job_id: uuid.UUID) -> WebhookView | None:
    """``{url, state, attempts, lastStatus}`` of a job invoked with a webhook URL, else None.

    A job still running owes a delivery: it shows ``pending`` with no attempts yet.
    """
    cur = await conn.execute(SELECT_WEBHOOK, {"job_id": job_id})
    row = await cur.fetchone()
    if row is None:
        return None
    url, state, attempts, last_status = row
    return WebhookView(url=url, state=state or WebhookState.PENDING, attempts=attempts or 0, lastStatus=last_status)
