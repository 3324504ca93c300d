"""Per-provider admission shared by every replica: a rate limit, Retry-After, a circuit breaker.

Provider rate limits are per account, not per process, so they are enforced where every replica
can see them: one row per provider in ``provider_limits``. Before each provider call,
:meth:`PostgresAdmission.admit` runs one ``UPDATE`` that, in a single statement,

* refuses while the provider is blocked: a ``Retry-After`` some replica received, or an open
  circuit;
* refills the token bucket by the time elapsed and takes one token if there is one.

A refusal tells how long to wait. Short waits are slept here (it keeps throughput at the limit);
longer ones raise :class:`~providers.base.Throttled`, which the reconciler records as a durable
deferral of the instance, so no replica calls the provider again before the time is up.

After each call, :meth:`settle` records the outcome: a 429 blocks the provider for its exact
``Retry-After``; ``failure_threshold`` transient failures in a row open the circuit for
``open_seconds`` (calls are shed as deferrals, not errors); the first success closes it. After
the open period the next calls go through (half-open): one more failure opens it again at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from providers.base import ProviderError, Throttled, Transient
from reconciler import queries
from reconciler.metrics import Metrics


@dataclass(frozen=True)
class Limit:
    """A token bucket: ``rate`` calls per second on average, bursts of up to ``burst``."""

    rate: float
    burst: float


DEFAULT_LIMITS: Mapping[str, Limit] = {
    # Railway documents 10 requests/s on Hobby and 50 on Pro; stay under the lower one.
    "railway": Limit(rate=10.0, burst=20.0),
    "openrouter": Limit(rate=20.0, burst=40.0),
    "agentmail": Limit(rate=20.0, burst=40.0),
    "telnyx": Limit(rate=10.0, burst=20.0),
}


def parse_limits(text: str | None) -> dict[str, Limit]:
    """``RECONCILER_RATE_LIMITS``: ``railway=10,telnyx=5/10`` (calls per second, optional /burst)."""
    limits = dict(DEFAULT_LIMITS)
    if not text:
        return limits
    for part in text.split(","):
        problem = f"RECONCILER_RATE_LIMITS: {part.strip()!r} is not provider=rate[/burst]"
        name, _, value = part.strip().partition("=")
        rate_text, _, burst_text = value.partition("/")
        try:
            rate = float(rate_text)
            burst = float(burst_text) if burst_text else max(1.0, rate * 2)
        except ValueError:
            raise ValueError(problem) from None
        if name not in DEFAULT_LIMITS or rate <= 0 or burst < 1:
            raise ValueError(problem)
        limits[name] = Limit(rate, burst)
    return limits


@dataclass
class PostgresAdmission:
    """The :class:`providers.http.Admission` of the reconciler. One per process."""

    pool: AsyncConnectionPool[AsyncConnection[Any]]
    metrics: Metrics
    limits: Mapping[str, Limit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    max_sleep: float = 2.0
    """Waits up to this long are slept in place; longer ones defer the instance (Throttled)."""
    failure_threshold: int = 5
    open_seconds: float = 30.0
    _ensured: set[str] = field(default_factory=set)
    # Providers whose failure count was non-zero at the last admit: a success must reset it.
    _failing: set[str] = field(default_factory=set)

    async def admit(self, provider: str, operation: str) -> None:
        limit = self.limits.get(provider, Limit(1000.0, 1000.0))
        params = {"provider": provider, "rate": limit.rate, "burst": limit.burst}
        waited = 0.0
        while True:
            async with self.pool.connection() as conn:  # not held while sleeping
                if provider not in self._ensured:
                    await conn.execute(queries.ENSURE_LIMIT_ROW, params)
                    self._ensured.add(provider)
                taken = await (await conn.execute(queries.CONSUME_ALLOWANCE, params)).fetchone()
                if taken is not None:
                    if taken[0]:
                        self._failing.add(provider)
                    return
                row = await (await conn.execute(queries.ADMISSION_WAIT, params)).fetchone()
            wait, circuit_open = (float(row[0]), bool(row[1])) if row else (0.0, False)
            if circuit_open:
                raise Throttled(provider, operation, "circuit open after repeated failures", wait)
            if waited + wait > self.max_sleep:
                raise Throttled(provider, operation, "shared rate limit or Retry-After in force", wait)
            await asyncio.sleep(wait + 0.001)
            waited += wait

    async def settle(self, provider: str, operation: str, error: ProviderError | None) -> None:
        params: dict[str, Any] = {
            "provider": provider,
            "threshold": self.failure_threshold,
            "open_seconds": self.open_seconds,
        }
        if error is None or not isinstance(error, (Throttled, Transient)):
            # Success, or an answer that proves the provider is up (404, 409, other 4xx).
            if provider not in self._failing:
                return  # the common case costs no round trip
            self._failing.discard(provider)
            async with self.pool.connection() as conn:
                await conn.execute(queries.RECORD_PROVIDER_SUCCESS, params)
            return
        async with self.pool.connection() as conn:
            if isinstance(error, Throttled):
                await conn.execute(queries.BLOCK_PROVIDER_FOR, params | {"seconds": error.retry_after})
                return
            row = await (await conn.execute(queries.RECORD_PROVIDER_FAILURE, params)).fetchone()
        self._failing.add(provider)
        if row and row[0]:
            self.metrics.circuit_open.labels(provider).set(1)  # refresh_gauges resets it from the table
