"""Provider admission shared through Postgres: rate limit, Retry-After and circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from providers.base import NotFound, Throttled, Transient
from reconciler.admission import Limit, PostgresAdmission, parse_limits
from reconciler.metrics import Metrics


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(db_url, min_size=1, max_size=4, kwargs={"autocommit": True}) as p:
        yield p


def replicas(pool: AsyncConnectionPool[Any], **kw: Any) -> tuple[PostgresAdmission, PostgresAdmission]:
    """Two admissions sharing one database, as two reconciler processes would."""
    return (
        PostgresAdmission(pool, Metrics(CollectorRegistry()), **kw),
        PostgresAdmission(pool, Metrics(CollectorRegistry()), **kw),
    )


async def test_the_rate_limit_is_shared_by_replicas(pool: AsyncConnectionPool[Any]) -> None:
    a, b = replicas(pool, limits={"railway": Limit(rate=20.0, burst=2.0)})
    started = time.monotonic()
    await asyncio.gather(*(r.admit("railway", "op") for r in (a, b) for _ in range(6)))
    elapsed = time.monotonic() - started
    # 12 calls, 2 from the burst, 10 at 20/s: at least half a second, whichever replica asks.
    assert elapsed >= 0.45


async def test_retry_after_blocks_every_replica_for_exactly_that_long(pool: AsyncConnectionPool[Any]) -> None:
    a, b = replicas(pool, max_sleep=0.05)
    await a.admit("telnyx", "order")
    await a.settle("telnyx", "order", Throttled("telnyx", "order", "HTTP 429", 1.5))
    with pytest.raises(Throttled) as caught:
        await b.admit("telnyx", "search")
    assert 1.3 < caught.value.retry_after <= 1.5
    # Another provider is not affected.
    await b.admit("openrouter", "create_key")


async def test_the_circuit_opens_after_repeated_failures_and_closes_on_success(
    pool: AsyncConnectionPool[Any],
) -> None:
    a, b = replicas(pool, failure_threshold=3, open_seconds=0.3, max_sleep=0.01)
    for _ in range(3):
        await a.admit("agentmail", "create_inbox")
        await a.settle("agentmail", "create_inbox", Transient("agentmail", "create_inbox", "HTTP 503"))
    with pytest.raises(Throttled, match="circuit open"):
        await b.admit("agentmail", "list_inboxes")
    await asyncio.sleep(0.35)
    await b.admit("agentmail", "list_inboxes")  # half-open: calls go through again
    await b.settle(
        "agentmail", "list_inboxes", NotFound("agentmail", "get_inbox", "HTTP 404")
    )  # proves it is up
    for _ in range(2):  # closed again: two more failures do not open it
        await a.admit("agentmail", "create_inbox")
        await a.settle("agentmail", "create_inbox", Transient("agentmail", "create_inbox", "HTTP 503"))
    await b.admit("agentmail", "create_inbox")


def test_rate_limit_setting_grammar() -> None:
    limits = parse_limits("railway=50,telnyx=2/4")
    assert limits["railway"] == Limit(50.0, 100.0) and limits["telnyx"] == Limit(2.0, 4.0)
    with pytest.raises(ValueError, match="'stripe=5' is not provider=rate"):
        parse_limits("stripe=5")
