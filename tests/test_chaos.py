"""Chaos: real `reconciler run` processes, killed with SIGKILL at random moments; a database restart.

The short forms run in `make test` (CI). `make chaos` runs the long form with 500 instances
(CHAOS_INSTANCES=500); the assertions are the same.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import Any

import psycopg
import pytest

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from providers.simulated.app import Simulator, SimulatorSettings
from providers.simulated.server import serve_in_background
from reconciler.db import EmbeddedPostgres
from tests.conftest import Sim
from tests.support import FENCING_VIOLATIONS, cli_env, count, held, start_replica, until

CHAOS_INSTANCES = int(os.environ.get("CHAOS_INSTANCES", "50"))


def specs(count: int) -> list[InstanceSpec]:
    return [
        InstanceSpec(
            instance_id=f"chaos{i:04d}",
            tools=(Tool.OPENROUTER, Tool.AGENTMAIL, Tool.TELNYX) if i % 5 == 0 else (Tool.OPENROUTER, Tool.AGENTMAIL),
        )
        for i in range(count)
    ]


def expected_names(count: int) -> dict[str, list[str]]:
    every = sorted(f"convos-agent-chaos{i:04d}" for i in range(count))
    telnyx = sorted(f"convos-agent-chaos{i:04d}" for i in range(0, count, 5))
    return {
        "railway.services": every,
        "railway.volumes": every,
        "railway.domains": every,
        "openrouter.keys": every,
        "agentmail.inboxes": every,
        "telnyx.phone_numbers": telnyx,
    }


@pytest.mark.slow
@pytest.mark.timeout(120 + 6 * CHAOS_INSTANCES)
async def test_three_replicas_converge_and_tear_down_while_being_killed(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # The simulator has no rate limits here; the shared ones would only make the run longer.
    env = cli_env(db_url, sim) | {"RECONCILER_RATE_LIMITS": "railway=200,openrouter=200,agentmail=200,telnyx=200"}
    rng = random.Random(7)
    processes = [await start_replica(env, "--lease-seconds", "3") for _ in range(3)]
    kills = 0
    last_kill = time.monotonic()
    next_kill = time.monotonic() + rng.uniform(0.2, 0.6)

    async def chaos() -> None:
        nonlocal kills, next_kill, last_kill
        if time.monotonic() < next_kill:
            return
        victim = rng.randrange(len(processes))
        processes[victim].send_signal(signal.SIGKILL)
        await processes[victim].wait()
        last_kill = time.monotonic()
        processes[victim] = await start_replica(env, "--lease-seconds", "3")
        kills += 1
        next_kill = time.monotonic() + rng.uniform(0.2, 0.8)

    try:
        await store.put_many(conn, specs(CHAOS_INSTANCES))
        ready = f"SELECT count(*) = {CHAOS_INSTANCES} FROM desired_instances WHERE phase = 'Ready'"
        await until(lambda: count(conn, ready), timeout=60 + CHAOS_INSTANCES, interval=0.2, during=chaos)
        print(f"converged {time.monotonic() - last_kill:.1f}s after the last kill ({kills} kills)")
        converge_kills = kills
        assert held(sim) == expected_names(CHAOS_INSTANCES)

        await store.mark_absent(conn, [s.instance_id for s in specs(CHAOS_INSTANCES)])
        gone = "SELECT count(*) = 0 FROM desired_instances"
        await until(lambda: count(conn, gone), timeout=60 + CHAOS_INSTANCES, interval=0.2, during=chaos)
        print(f"torn down {time.monotonic() - last_kill:.1f}s after the last kill ({kills} kills)")
        assert all(not names for names in held(sim).values()), held(sim)
        assert await count(conn, FENCING_VIOLATIONS) == 0
        assert converge_kills >= 1 and kills >= 3, f"too little chaos to prove anything ({kills} kills)"
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                await process.wait()


@pytest.mark.slow
async def test_the_loop_recovers_by_itself_from_a_database_restart(
    private_postgres: tuple[EmbeddedPostgres, str],
) -> None:
    server, url = private_postgres
    simulator = Simulator(SimulatorSettings(deploy_seconds=0.5, seed=3))
    async with serve_in_background(simulator.app()) as root:
        sim = Sim(simulator, root)
        env = cli_env(url, sim)
        process = await start_replica(env, "--lease-seconds", "3")
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await store.put_many(conn, specs(10))
                # Mid-run: the loop has started work (a slow start on a loaded machine must not
                # turn this into a test of start-up against a stopped database).
                started = "SELECT count(*) FROM desired_instances WHERE observed_generation IS NOT NULL OR attempts > 0"
                await until(lambda: count(conn, started), timeout=60, interval=0.2)
            server.stop()
            await asyncio.sleep(2.0)
            assert process.returncode is None, "the loop must survive the outage"
            url = server.start()
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                ready = "SELECT count(*) = 10 FROM desired_instances WHERE phase = 'Ready'"
                await until(lambda: count(conn, ready), timeout=60, interval=0.2)
            names = held(sim)
            assert names["openrouter.keys"] == expected_names(10)["openrouter.keys"]
            assert names["railway.services"] == expected_names(10)["railway.services"]
        finally:
            process.send_signal(signal.SIGTERM)
            await process.wait()
