"""Convergence through provider faults: 20% 5xx, 10% 429 with Retry-After, 5% timeouts."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from providers.base import Throttled
from providers.simulated.faults import FaultPlan, FaultRule, Latency, early_calls
from reconciler.admission import Limit
from reconciler.runtime import Runtime
from tests.conftest import FAST_ENGINE, Sim, simulated_runtime
from tests.support import all_ready, held, settle, until

HOSTILE = FaultPlan(
    rules=[
        FaultRule(
            error_rates={500: 0.1, 503: 0.1},
            throttle_rate=0.1,
            retry_after=0.3,
            timeout_rate=0.05,
            timeout_seconds=1.0,
        )
    ]
)


@pytest.fixture
async def hostile_runtime(db_url: str, sim: Sim) -> AsyncIterator[Runtime]:
    # A client timeout shorter than the simulated hang, so timeouts are real timeouts.
    async with simulated_runtime(db_url, sim, http_timeout=0.4) as runtime:
        runtime.admission.open_seconds = 0.5  # an opened circuit does not stall the test for long
        yield runtime


async def test_everything_converges_through_faults_and_no_retry_after_is_ignored(
    hostile_runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    sim.simulator.set_faults(HOSTILE)
    specs = [
        InstanceSpec(instance_id=f"f{i}", tools=(Tool.OPENROUTER, Tool.AGENTMAIL, Tool.TELNYX) if i % 3 == 0 else ())
        for i in range(12)
    ]
    await store.put_many(conn, specs)
    await settle(hostile_runtime, lambda: all_ready(conn, len(specs)), timeout=120)

    served = sim.simulator.requests()
    faults_seen = sum(
        count
        for provider in served.values()
        for log in provider["operations"].values()
        for status, count in log["statuses"].items()
        if status in ("429", "500", "503", "504")
    )
    assert faults_seen > 20, "the fault plan did not bite"
    # Requests of concurrent passes already in flight when a 429 left are excused (they cannot be
    # recalled); anything sent once the 429 could have been read must wait its Retry-After.
    assert early_calls(served, in_flight=0.05) == []

    sim.simulator.set_faults(FaultPlan())
    names = held(sim)
    every = sorted(f"convos-agent-f{i}" for i in range(12))
    assert names["railway.services"] == every
    assert names["openrouter.keys"] == sorted(f"convos-agent-f{i}" for i in range(0, 12, 3))
    assert names["telnyx.phone_numbers"] == sorted(f"convos-agent-f{i}" for i in range(0, 12, 3))

    # Throttling was a deferral, never counted as a failed attempt against the row.
    throttled = sum(hostile_runtime.metrics.throttled.labels(p)._value.get() for p in ("railway", "openrouter"))
    assert throttled > 0


async def test_a_retry_after_of_zero_defers_the_row_a_second_rather_than_spinning(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    sim.simulator.set_faults(FaultPlan(rules=[FaultRule(provider="railway", throttle_rate=1.0, retry_after=0.0)]))
    await store.put(conn, InstanceSpec(instance_id="zero"))
    [outcome] = await runtime.worker.drain()
    assert outcome.result == "throttled"
    due_in = await (
        await conn.execute("SELECT EXTRACT(EPOCH FROM next_attempt_at - now()) FROM desired_instances")
    ).fetchone()
    assert due_in is not None and 0.5 < float(due_in[0]) <= 1.0


@pytest.mark.parametrize("spec_changed_meanwhile", [False, True])
async def test_a_create_that_landed_but_whose_answer_was_lost_is_adopted_not_duplicated(
    db_url: str,
    sim: Sim,
    conn: psycopg.AsyncConnection[Any],
    spec_changed_meanwhile: bool,
) -> None:
    # New keys stay out of listings for a second, and the first create's answer is lost: the
    # simulator holds it longer than the client waits (a timeout), then makes the key anyway.
    # The retry's lookup by name must not come too early, even when a spec change makes the
    # instance due again at once.
    slow_create = FaultRule(
        provider="openrouter", operation="create_key", list_lag=1.0, latency=Latency(fixed_ms=800)
    )
    sim.simulator.set_faults(FaultPlan(rules=[slow_create]))
    # Longer than the lag (with create_settle_seconds=0 this test sees a second key).
    engine = dataclasses.replace(FAST_ENGINE, create_settle_seconds=2.0)
    async with simulated_runtime(db_url, sim, engine, http_timeout=0.3) as runtime:
        spec = InstanceSpec(instance_id="dup", tools=(Tool.OPENROUTER,))
        await store.put(conn, spec)
        await runtime.worker.drain()
        row = await store.get(conn, "dup")
        assert row is not None and row.last_error is not None and "timed out" in row.last_error
        await until(lambda: sim.simulator.snapshot()["openrouter"]["keys"], 5.0, message="the create never landed")
        sim.simulator.set_faults(FaultPlan(rules=[slow_create.model_copy(update={"latency": None})]))
        if spec_changed_meanwhile:
            await store.put(conn, InstanceSpec(instance_id="dup", tools=(Tool.OPENROUTER,), env={"MODE": "changed"}))
        await settle(runtime, lambda: all_ready(conn, 1), timeout=30)

    keys = sim.simulator.snapshot()["openrouter"]["keys"]
    assert [k["name"] for k in keys] == ["convos-agent-dup"], "a second key was created"
    # The lost key was found by name and adopted (then replaced: its value was never read).
    events = await (
        await conn.execute("SELECT action FROM events WHERE kind = 'openrouter_key' ORDER BY id")
    ).fetchall()
    assert ("adopt",) in events


async def test_a_create_our_rate_limit_deferred_before_sending_is_created_later_without_a_lookup(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    """Our own admission refused the create's first request, so nothing left for the provider: the
    intent is cleared, and the next pass creates at once instead of looking the resource up by name
    (a lookup spends calls under the very limit that deferred the create, and waits
    ``create_settle_seconds`` first)."""
    await runtime.admission.admit("openrouter", "warm-up")  # its row in the shared limits table
    hold = Throttled("openrouter", "create_key", "Retry-After in force", 60)
    await runtime.admission.settle("openrouter", "create_key", hold)  # every replica holds OpenRouter
    await store.put(conn, InstanceSpec(instance_id="held", tools=(Tool.OPENROUTER,)))
    await runtime.worker.drain()  # Railway converges; the key's create is deferred on every pass
    assert sim.simulator.requests()["openrouter"]["operations"] == {}, "a request left while held"
    resource = "SELECT status, intent_at, external_id FROM observed_resources WHERE kind = 'openrouter_key'"
    row = await (await conn.execute(resource)).fetchone()
    assert row == ("pending", None, None), "the create's intent was left in doubt"

    await conn.execute("UPDATE provider_limits SET blocked_until = NULL WHERE provider = 'openrouter'")
    await conn.execute("UPDATE desired_instances SET next_attempt_at = now()")
    await settle(runtime, lambda: all_ready(conn, 1), timeout=30)
    operations = sim.simulator.requests()["openrouter"]["operations"]
    assert {name: log["count"] for name, log in operations.items()} == {"create_key": 1}


async def test_a_deferred_create_keeps_the_intent_of_an_earlier_create_still_in_doubt(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    """An earlier create's outcome is unknown (its intent has no id): the pass looks, finds nothing
    yet, and its own create is deferred by the rate limit before it leaves. The earlier create may
    still surface in a lagging listing, so its intent stays and the next pass looks again."""
    one_call_per_20s = {"openrouter": Limit(rate=0.05, burst=1.0)}
    async with simulated_runtime(db_url, sim, rate_limits=one_call_per_20s) as runtime:
        await store.put(conn, InstanceSpec(instance_id="doubt", tools=(Tool.OPENROUTER,)))
        earlier = (
            "INSERT INTO observed_resources (instance_id, kind, derived_name, status, intent_at, fencing_token)"
            " VALUES ('doubt', 'openrouter_key', 'convos-agent-doubt', 'creating', now() - interval '1 hour', 0)"
        )
        await conn.execute(earlier)
        await runtime.worker.drain()  # the lookup takes the one token; the create is deferred
    operations = sim.simulator.requests()["openrouter"]["operations"]
    assert {name: log["count"] for name, log in operations.items()} == {"list_keys": 1}
    resource = "SELECT status, intent_at IS NOT NULL, external_id FROM observed_resources WHERE kind = 'openrouter_key'"
    assert await (await conn.execute(resource)).fetchone() == ("creating", True, None)
