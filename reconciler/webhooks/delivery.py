"""The webhook sender: claim due deliveries, sign them, post them, record the outcome, retry.

Deliveries are rows of ``webhook_deliveries`` written by the job's termination transaction
(migration 0009), so a delivery exists exactly when its job's end was committed. The sender is
one more user of the shared claim primitive (:mod:`reconciler.claims`): it claims a batch of due
rows (``SKIP LOCKED``, a short lease renewed in the background while it sends, a fencing token),
posts each, and records the attempt in one statement fenced by the token.

**Never lost, at least once.** Every step is a committed row: a sender killed before it posts
leaves the row claimed until its lease lapses, then another sender claims it; killed after the
post but before recording, the row is sent again. The receiver deduplicates on ``webhook-id``,
which is the same for every attempt; the body bytes are the same too (fixed in the outbox).
Only ``webhook-timestamp`` and the signature differ, because they are the attempt's.

**What an answer does** (:func:`decide`):

* 2xx: ``delivered``.
* 410 Gone: ``failed`` at once (the receiver says the endpoint is gone; no more retries).
* A refused destination (not http(s), or a private/loopback/metadata address): ``failed`` at once.
* Anything else (3xx, since redirects are not followed; 4xx; 5xx; timeout; connection error;
  a name that does not resolve): retried on :data:`RETRY_SCHEDULE` with ±10% jitter; on 429 and
  503 a ``Retry-After`` later than the schedule is honoured. After the last attempt, ``failed``.

Without ``SERVICE_WEBHOOK_SECRET`` nothing is sent: due deliveries are recorded ``disabled``
(``reconciler webhooks retry ID`` sends one later, once a secret is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from desired_state.webhooks import WebhookState
from providers.http import MAX_RETRY_AFTER_SECONDS, parse_retry_after
from reconciler.claims import ClaimStatements, Leases, LeaseSettings
from reconciler.logs import first_line
from reconciler.metrics import Metrics
from reconciler.webhooks import queries
from reconciler.webhooks.safety import RefusedDestination, UnresolvedHost, resolve_target
from reconciler.webhooks.settings import SECRET_VARIABLE, WebhookSettings
from reconciler.webhooks.signing import signed_headers
from reconciler.webhooks.vocabulary import AttemptLabel

log = logging.getLogger(__name__)

RETRY_SCHEDULE: Final[tuple[float, ...]] = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
"""Seconds before each attempt, counted from the previous one: immediately, 5 s, 5 min, 30 min,
2 h, 5 h, 10 h, 10 h (Svix's schedule; about 27.6 hours in all, eight attempts)."""
JITTER: Final = 0.1
"""Each wait is stretched or shrunk by up to this share, so retries of many deliveries spread out."""
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
GONE: Final = 410
RESPONSE_PREFIX_BYTES: Final = 200
"""How much of a failed answer's body is kept (in ``last_error``), for the operator."""
USER_AGENT: Final = "provisioning-reconciler-webhooks/1"

WEBHOOK_CLAIMS: Final = ClaimStatements(
    table="webhook_deliveries",
    key="webhook_id",
    claim=queries.CLAIM_DUE,
    renew=queries.RENEW_LEASES,
    release=queries.RELEASE_CLAIMS,
    fence=queries.CHECK_FENCE,
)


@dataclass(frozen=True)
class AttemptResult:
    """What one post came to. ``status`` None: no HTTP answer (``error`` says why)."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    refused: bool = False


@dataclass(frozen=True)
class Decision:
    state: WebhookState
    delay: float
    """Seconds until the next attempt (0 when the state is final)."""
    result: AttemptLabel


def attempt_label(result: AttemptResult) -> AttemptLabel:
    status = result.status
    if result.refused:
        return AttemptLabel.REFUSED
    if status is None:
        return AttemptLabel.TRANSPORT_ERROR
    if 200 <= status < 300:
        return AttemptLabel.SUCCESS
    if status == GONE:
        return AttemptLabel.GONE
    if status == 429:
        return AttemptLabel.THROTTLED
    if 300 <= status < 400:
        return AttemptLabel.REDIRECT
    if 400 <= status < 500:
        return AttemptLabel.CLIENT_ERROR
    return AttemptLabel.SERVER_ERROR


def decide(
    attempts_before: int,
    result: AttemptResult,
    rng: random.Random,
    schedule: Sequence[float] = RETRY_SCHEDULE,
) -> Decision:
    """The delivery's next state after attempt number ``attempts_before + 1``."""
    label = attempt_label(result)
    if label is AttemptLabel.SUCCESS:
        return Decision(WebhookState.DELIVERED, 0.0, label)
    if label in (AttemptLabel.GONE, AttemptLabel.REFUSED):
        return Decision(WebhookState.FAILED, 0.0, label)
    done = attempts_before + 1
    if done >= len(schedule):
        return Decision(WebhookState.FAILED, 0.0, label)
    delay = schedule[done] * (1.0 + rng.uniform(-JITTER, JITTER))
    if result.retry_after is not None and result.status in RETRY_AFTER_STATUSES:
        delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER_SECONDS))
    return Decision(WebhookState.PENDING, delay, label)


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery (the columns CLAIM_DUE returns)."""

    webhook_id: str
    token: int
    job_id: Any
    service_id: str
    url: str
    body: bytes
    attempts: int


class WebhookSender:
    """Delivers due webhooks; ``tick`` once, or ``run_forever`` next to the reconcile loop.

    ``tls_trust`` is what an https receiver's certificate chain is checked against: None (the
    default) is httpx's bundled ``certifi`` roots (``SSL_CERT_FILE`` is not read: the client
    ignores the environment); an :class:`ssl.SSLContext` replaces them (a test's throwaway CA).
    Either way the certificate must name the URL's host, though the connection goes to the
    checked address (``sni_hostname`` below). No switch turns the check off.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        settings: WebhookSettings,
        metrics: Metrics,
        *,
        owner: str,
        lease: LeaseSettings | None = None,
        batch_size: int = 32,
        tick_seconds: float = 0.5,
        schedule: Sequence[float] = RETRY_SCHEDULE,
        rng: random.Random | None = None,
        tls_trust: ssl.SSLContext | None = None,
    ) -> None:
        self._pool = pool
        self.settings = settings
        self._metrics = metrics
        self.leases = Leases(pool, WEBHOOK_CLAIMS, owner=owner, settings=lease or LeaseSettings(lease_seconds=10.0))
        self._batch_size = batch_size
        self._tick_seconds = tick_seconds
        self._schedule = tuple(schedule)
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(
            timeout=settings.timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the address checks must hold
            verify=True if tls_trust is None else tls_trust,
            # No keep-alive: the pool keys a connection by address, not by the TLS name it was
            # checked for, so a kept one could carry another URL's request to the same address.
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
        )
        self._announced = False

    async def aclose(self) -> None:
        await self._http.aclose()

    def announce(self) -> None:
        """Say once, at start-up, when deliveries will not be sent."""
        if not self._announced and not self.settings.enabled:
            log.warning("%s is not set: webhook deliveries are recorded as disabled, not sent", SECRET_VARIABLE)
        self._announced = True

    # -- one round ------------------------------------------------------------------------------

    async def tick(self) -> int:
        """Handle the deliveries due now (one claimed batch); returns how many."""
        if not self.settings.enabled:
            return await self._disable_pending()
        rows = await self.leases.claim(self._batch_size)
        deliveries = [
            Delivery(
                webhook_id=str(row["webhook_id"]),
                token=int(row["fencing_token"]),
                job_id=row["job_id"],
                service_id=str(row["service_id"]),
                url=str(row["url"]),
                body=bytes(row["body"]),
                attempts=int(row["attempts"]),
            )
            for row in rows
        ]
        await asyncio.gather(*(self._deliver(d) for d in deliveries))
        return len(deliveries)

    async def drain(self) -> int:
        """Tick until nothing is due now; returns how many were handled."""
        handled = 0
        async with self.leases.renewing():
            while count := await self.tick():
                handled += count
        return handled

    async def _disable_pending(self) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(queries.DISABLE_PENDING)
            disabled = len(await cur.fetchall())
        if disabled:
            self._metrics.webhook_deliveries.labels(WebhookState.DISABLED.value).inc(disabled)
        return disabled

    async def _deliver(self, delivery: Delivery) -> None:
        if not self.leases.start(delivery.webhook_id, delivery.token):
            return
        try:
            result = await self.attempt(delivery)
            decision = decide(delivery.attempts, result, self._rng, self._schedule)
            self._metrics.webhook_attempts.labels(decision.result.value).inc()
            recorded = await self._record(delivery, result, decision)
            if not recorded:
                self._metrics.lease_lost.inc()
                log.info("webhook %s: claim lost before the attempt was recorded", delivery.webhook_id)
            elif decision.state is not WebhookState.PENDING:
                self._metrics.webhook_deliveries.labels(decision.state.value).inc()
        finally:
            self.leases.done(delivery.webhook_id, delivery.token)

    async def _record(self, delivery: Delivery, result: AttemptResult, decision: Decision) -> bool:
        params = {
            "key": delivery.webhook_id,
            "token": delivery.token,
            "state": decision.state.value,
            "delay": decision.delay,
            "status": result.status,
            "error": result.error,
        }
        async with self._pool.connection() as conn:
            cur = await conn.execute(queries.RECORD_ATTEMPT, params)
            return await cur.fetchone() is not None

    # -- one attempt ----------------------------------------------------------------------------

    async def attempt(self, delivery: Delivery) -> AttemptResult:
        """Post the delivery once, signed now; never raises for a receiver's fault.

        The whole attempt (name lookup, connection, request, the answer's head and prefix) has
        ``timeout_seconds``: a receiver that drips its answer cannot hold the sender longer.
        """
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                return await self._post(delivery)
        except TimeoutError:
            return AttemptResult(None, f"no answer within {self.settings.timeout_seconds:g}s")
        except Exception as exc:  # whatever a receiver's answer does to us, the attempt is recorded
            log.warning("a webhook attempt failed unexpectedly: %s", type(exc).__name__)
            return AttemptResult(None, f"unexpected {type(exc).__name__}")

    async def _post(self, delivery: Delivery) -> AttemptResult:
        try:
            target = await resolve_target(delivery.url, allow_private=self.settings.allow_private)
        except RefusedDestination as exc:
            return AttemptResult(None, f"refused: {exc}"[:200], refused=True)
        except UnresolvedHost as exc:
            return AttemptResult(None, str(exc)[:200])
        now = time.time()
        headers = {
            **signed_headers(self.settings.keys, delivery.webhook_id, int(now), delivery.body),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",
            "Host": target.host_header,
            # The seed's headers, for receivers not yet migrated (its signature is not sent: it
            # was a replayable hash; receivers verify webhook-signature instead).
            "X-Clawvard-Job-Id": str(delivery.job_id),
            "X-Clawvard-Service-Id": delivery.service_id,
        }
        extensions = {"sni_hostname": target.server_name} if target.server_name else {}
        try:
            async with self._http.stream(
                "POST", target.url, content=delivery.body, headers=headers, extensions=extensions
            ) as response:
                prefix = await _read_prefix(response)
        except httpx.TimeoutException:
            return AttemptResult(None, f"no answer within {self.settings.timeout_seconds:g}s")
        except httpx.HTTPError as exc:
            return AttemptResult(None, f"{type(exc).__name__}: {first_line(exc)}"[:200])
        status = response.status_code
        if 200 <= status < 300:
            return AttemptResult(status)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return AttemptResult(status, prefix.decode("utf-8", "replace") or None, retry_after)

    # -- running --------------------------------------------------------------------------------

    async def refresh_gauges(self) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(queries.GAUGES)
            row = await cur.fetchone()
        if row is not None:
            pending, oldest, oldest_due = row
            self._metrics.webhook_pending.set(int(pending))
            self._metrics.webhook_oldest_undelivered_seconds.set(float(oldest))
            self._metrics.webhook_oldest_due_seconds.set(float(oldest_due))

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick every ``tick_seconds`` (sooner while there is more due) until ``stop`` is set."""
        self.announce()
        last_gauges = 0.0
        async with self.leases.renewing():
            while not stop.is_set():
                handled = 0
                try:
                    handled = await self.tick()
                    if time.monotonic() - last_gauges >= 5.0:
                        await self.refresh_gauges()
                        last_gauges = time.monotonic()
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    log.warning("webhook sender: database unavailable (%s); retrying", type(exc).__name__)
                except Exception:
                    log.exception("webhook sender: unexpected error; retrying")
                if handled:
                    continue  # more may be due right away
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._tick_seconds)


async def _read_prefix(response: httpx.Response) -> bytes:
    """At most RESPONSE_PREFIX_BYTES of the body; the rest is never read into memory."""
    prefix = b""
    async for chunk in response.aiter_raw():
        prefix += chunk
        if len(prefix) >= RESPONSE_PREFIX_BYTES:
            break
    return prefix[:RESPONSE_PREFIX_BYTES]
