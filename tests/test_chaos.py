"""Chaos: real `reconciler run` processes, killed with SIGKILL at random moments; a database restart.

The short forms run in `make test` (CI). `make chaos` runs the long form with 500 instances
(CHAOS_INSTANCES=500); the assertions are the same.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
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
from tests.support import ROOT, cli_env

CHAOS_INSTANCES = int(os.environ.get("CHAOS_INSTANCES", "50"))
RUN = [sys.executable, "-c", "import cli; cli.main()", "run", "--no-api", "--metrics-port", "0", "--tick", "0.2",
       "--lease-seconds", "3", "--observe-seconds", "3600"]  # fmt: skip

# Every fencing token an instance's events carry must be non-decreasing in the order they were
# written: a smaller one after a larger one would be a stale worker's write getting through.
FENCING_VIOLATIONS = """
SELECT count(*) FROM (
    SELECT fencing_token < max(fencing_token) OVER (
               PARTITION BY instance_id ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS stale
      FROM events WHERE fencing_token IS NOT NULL
) checked WHERE stale
"""


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


def held_names(simulator: Simulator) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for provider, kinds in simulator.snapshot().items():
        for kind, items in kinds.items():
            if kind not in ("messaging_profiles", "deployments"):
                out[f"{provider}.{kind}"] = sorted(str(item["name"]) for item in items)
    return out


async def start(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *RUN, env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def count(conn: psycopg.AsyncConnection[Any], query: str) -> int:
    row = await (await conn.execute(query)).fetchone()
    return int(row[0]) if row else 0


async def until(predicate: Any, timeout: float, during: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        if during is not None:
            await during()
        await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(120 + 6 * CHAOS_INSTANCES)
async def test_three_replicas_converge_and_tear_down_while_being_killed(
    db_url: str, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # The simulator has no rate limits here; the shared ones would only make the run longer.
    env = cli_env(db_url, sim) | {"RECONCILER_RATE_LIMITS": "railway=200,openrouter=200,agentmail=200,telnyx=200"}
    rng = random.Random(7)
    processes = [await start(env) for _ in range(3)]
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
        processes[victim] = await start(env)
        kills += 1
        next_kill = time.monotonic() + rng.uniform(0.2, 0.8)

    try:
        await store.put_many(conn, specs(CHAOS_INSTANCES))
        ready = f"SELECT count(*) = {CHAOS_INSTANCES} FROM desired_instances WHERE phase = 'Ready'"
        await until(lambda: count(conn, ready), timeout=60 + CHAOS_INSTANCES, during=chaos)
        print(f"converged {time.monotonic() - last_kill:.1f}s after the last kill ({kills} kills)")
        converge_kills = kills
        assert held_names(sim.simulator) == expected_names(CHAOS_INSTANCES)

        await store.mark_absent(conn, [s.instance_id for s in specs(CHAOS_INSTANCES)])
        gone = "SELECT count(*) = 0 FROM desired_instances"
        await until(lambda: count(conn, gone), timeout=60 + CHAOS_INSTANCES, during=chaos)
        print(f"torn down {time.monotonic() - last_kill:.1f}s after the last kill ({kills} kills)")
        assert all(not names for names in held_names(sim.simulator).values()), held_names(sim.simulator)
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
        env = cli_env(url, Sim(simulator, root))
        process = await start(env)
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await store.put_many(conn, specs(10))
                # Mid-run: the loop has started work (a slow start on a loaded machine must not
                # turn this into a test of start-up against a stopped database).
                started = "SELECT count(*) FROM desired_instances WHERE observed_generation IS NOT NULL OR attempts > 0"
                await until(lambda: count(conn, started), timeout=60)
            server.stop()
            await asyncio.sleep(2.0)
            assert process.returncode is None, "the loop must survive the outage"
            url = server.start()
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                ready = "SELECT count(*) = 10 FROM desired_instances WHERE phase = 'Ready'"
                await until(lambda: count(conn, ready), timeout=60)
            names = held_names(simulator)
            assert names["openrouter.keys"] == expected_names(10)["openrouter.keys"]
            assert names["railway.services"] == expected_names(10)["railway.services"]
        finally:
            process.send_signal(signal.SIGTERM)
            await process.wait()
