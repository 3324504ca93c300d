"""The one claim primitive (reconciler/claims.py): short leases renewed by the worker itself.

* a slow but living worker is never overtaken (its leases are renewed while it works);
* a killed replica's claims are started by another replica within 15 s (real processes, SIGKILL);
* a replica stopped with SIGTERM hands back at once the claims it has not started;
* a renewal that finds the claim taken reports it lost.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from providers.simulated.faults import FaultPlan, FaultRule, Latency
from reconciler.claims import LeaseLost
from tests.conftest import FAST_ENGINE, Sim, simulated_runtime
from tests.support import FENCING_VIOLATIONS, cli_env, count, held, start_replica, until

TAKEOVER_LIMIT = 15.0


def slow_providers(sim: Sim, ms: float) -> None:
    sim.simulator.set_faults(FaultPlan(rules=[FaultRule(latency=Latency(fixed_ms=ms))]))


async def tokens(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    rows = await (await conn.execute("SELECT instance_id, fencing_token FROM desired_instances")).fetchall()
    return {row[0]: int(row[1]) for row in rows}


async def test_renewal_keeps_a_slow_pass_from_being_overtaken(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # Every provider call takes 0.5 s, so one pass of a new instance takes several seconds,
    # over twice the 1.5 s lease; two workers drain at once.
    slow_providers(sim, 500)
    engine = replace(FAST_ENGINE, lease_seconds=1.5)
    await store.put_many(conn, [InstanceSpec(instance_id=f"slow{i}", tools=(Tool.OPENROUTER,)) for i in range(4)])
    async with simulated_runtime(db_url, sim, engine) as first, simulated_runtime(db_url, sim, engine) as second:
        started = time.monotonic()
        await asyncio.gather(first.worker.drain(), second.worker.drain())
        assert time.monotonic() - started > 2 * engine.lease_seconds, "the passes were not slow enough to prove it"
        lost = [rt.metrics.lease_lost._value.get() for rt in (first, second)]
    assert lost == [0, 0]  # no pass was overtaken: not one write refused by the fence
    assert await count(conn, FENCING_VIOLATIONS) == 0
    assert held(sim)["railway.services"] == [f"convos-agent-slow{i}" for i in range(4)]


async def test_a_renewal_reports_a_claim_another_worker_took(
    runtime: Any, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(conn, InstanceSpec(instance_id="lost1"))
    leases = runtime.reconciler.leases
    lost: list[tuple[object, int]] = []
    leases.on_lost = lambda key, token: lost.append((key, token))
    [claim] = await runtime.reconciler.claim()
    assert await leases.renew() == []
    await conn.execute("UPDATE desired_instances SET lease_expires_at = now() - interval '1 second'")
    [again] = await runtime.reconciler.claim()  # another claim of the expired row
    assert again.token == claim.token + 1
    assert await leases.renew() == [("lost1", claim.token)]
    assert lost == [("lost1", claim.token)]
    async with runtime.pool.connection() as c, c.transaction():
        with pytest.raises(LeaseLost):
            await leases.check_fence(c, "lost1", claim.token)


async def test_released_claims_are_due_at_once_and_never_started(
    runtime: Any, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put_many(conn, [InstanceSpec(instance_id=f"rel{i}") for i in range(3)])
    leases = runtime.reconciler.leases
    claims = await runtime.reconciler.claim()
    assert leases.start(claims[0].instance_id, claims[0].token)
    released = await leases.release_unstarted()
    assert sorted(key for key, _ in released) == sorted(c.instance_id for c in claims[1:])
    assert not leases.start(claims[1].instance_id, claims[1].token)  # handed back: must not start
    free = await count(conn, "SELECT count(*) FROM desired_instances WHERE lease_owner IS NULL")
    assert free == 2
    assert len(await runtime.reconciler.claim()) == 2  # due again for anyone, right away


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_killed_replicas_instance_claims_are_started_elsewhere_within_15s(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # Slow providers keep the first replica's passes in flight when it is killed. The replicas
    # run with the default lease (no --lease-seconds).
    slow_providers(sim, 300)
    env = cli_env(db_url, sim)
    victim = await start_replica(env)
    survivor: asyncio.subprocess.Process | None = None
    try:
        await store.put_many(conn, [InstanceSpec(instance_id=f"kill{i}", tools=(Tool.OPENROUTER,)) for i in range(6)])
        leased = "SELECT count(*) = 6 FROM desired_instances WHERE lease_owner IS NOT NULL"
        await until(lambda: count(conn, leased), timeout=30, interval=0.2)
        survivor = await start_replica(env)
        await asyncio.sleep(2.0)  # the survivor is up and ticking (it finds nothing it may claim)
        before = await tokens(conn)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await victim.wait()

        async def all_taken_over() -> bool:
            now = await tokens(conn)
            return all(now[key] > token for key, token in before.items())

        await until(all_taken_over, timeout=30, interval=0.2)
        took = time.monotonic() - killed_at
        print(f"the killed replica's claims were taken over {took:.1f}s after the kill")
        assert took <= TAKEOVER_LIMIT, f"the dead replica's claims were started elsewhere after {took:.1f}s"
        ready = "SELECT count(*) = 6 FROM desired_instances WHERE phase = 'Ready'"
        await until(lambda: count(conn, ready), timeout=60, interval=0.2)
        assert held(sim)["railway.services"] == [f"convos-agent-kill{i}" for i in range(6)]
    finally:
        for process in (victim, survivor):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGKILL)
                await process.wait()
