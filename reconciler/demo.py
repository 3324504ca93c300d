"""``reconciler demo``: the whole product on one machine, in well under a minute.

It creates a fresh ``reconciler_demo`` database (on the embedded Postgres unless
``SERVICE_DATABASE_URL`` is set), serves the four simulated providers on a loopback port, writes
desired instances (every fifth one with a Telnyx number), runs the real reconcile loop until all
are Ready, prints the status table and the provider calls it took, then marks everything absent and
waits until the simulated providers hold nothing. Then the paid half (:mod:`reconciler.demo_jobs`):
a caller, credits, a mix of jobs run by the job loop, and a clean ledger audit. Every step is the
production code path: the same store, loops, drivers and HTTP; only the providers are simulated.
"""

from __future__ import annotations

import asyncio
import logging
import random
import string
import time
from collections.abc import Awaitable, Callable

import psycopg
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from desired_state.vocabulary import Phase
from providers.simulated.app import Simulator, SimulatorSettings, base_urls, upstream_url
from providers.simulated.faults import FaultPlan, FaultRule
from providers.simulated.server import serve_in_background
from reconciler.db import create_database, migrate
from reconciler.demo_jobs import run_jobs_demo
from reconciler.engine import EngineSettings
from reconciler.metrics import Metrics
from reconciler.runtime import Runtime, RuntimeOptions
from reconciler.settings import Settings, load_settings
from reconciler.status import instance_statuses, phase_counts, status_table

DEMO_DATABASE = "reconciler_demo"
COUNT_DESIRED = "SELECT count(*) FROM desired_instances"
_ALPHABET = string.ascii_letters + string.digits + "_-"


def simulated_env(root: str, project_id: str) -> dict[str, str]:
    """The settings environment pointing every provider at a simulator served at ``root``, with
    made-up credentials (what ``reconciler demo``, the tests and the benchmarks run with)."""
    urls = base_urls(root)
    return {
        "RAILWAY_API_TOKEN": "simulated-railway-token",
        "RAILWAY_PROJECT_ID": project_id,
        "RAILWAY_ENVIRONMENT_NAME": "production",
        "OPENROUTER_MANAGEMENT_KEY": "simulated-openrouter-key",
        "AGENTMAIL_API_KEY": "simulated-agentmail-key",
        "TELNYX_API_KEY": "simulated-telnyx-key",
        "RAILWAY_API_URL": urls["railway"],
        "OPENROUTER_API_URL": urls["openrouter"],
        "AGENTMAIL_API_URL": urls["agentmail"],
        "TELNYX_API_URL": urls["telnyx"],
        "UTIL_ECHO_BASE_URL": upstream_url(root),
        "XMTP_ENV": "dev",
    }


def simulated_settings(root: str, project_id: str) -> Settings:
    """Settings pointing every provider at a simulator served at ``root``."""
    return load_settings(simulated_env(root, project_id))


def demo_specs(count: int, seed: int = 2026) -> list[InstanceSpec]:
    rng = random.Random(seed)
    specs = []
    for index in range(count):
        instance_id = "".join(rng.choice(_ALPHABET) for _ in range(12))
        tools = [Tool.OPENROUTER, Tool.AGENTMAIL] + ([Tool.TELNYX] if index % 5 == 0 else [])
        specs.append(InstanceSpec(instance_id=instance_id, name=f"demo-{index + 1}", tools=tuple(tools)))
    return specs


def held_resources(simulator: Simulator) -> int:
    """How many resources the simulated providers hold (messaging profiles are shared, not counted)."""
    total = 0
    for provider, kinds in simulator.snapshot().items():
        for kind, items in kinds.items():
            if (provider, kind) not in {("telnyx", "messaging_profiles"), ("railway", "deployments")}:
                total += len(items)
    return total


async def _wait(
    console: Console, label: str, total: int, progress_of: Callable[[], Awaitable[int]], time_limit: float
) -> bool:
    deadline = time.monotonic() + time_limit
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        while True:
            done = await progress_of()
            progress.update(task, completed=done)
            if done >= total:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)


async def run_demo(
    server_url: str,
    console: Console,
    *,
    instances: int,
    deploy_seconds: float,
    time_limit: float,
    error_rate: float = 0.0,
    throttle_rate: float = 0.0,
) -> bool:
    # Deferrals are expected here (and shown by `reconciler why`); keep the progress bars readable.
    logging.getLogger("reconciler.engine").setLevel(logging.ERROR)
    url = create_database(server_url, DEMO_DATABASE)
    migrate(url)
    simulator = Simulator(SimulatorSettings(deploy_seconds=deploy_seconds, seed=7))
    if error_rate or throttle_rate:
        half = error_rate / 2
        rule = FaultRule(error_rates={500: half, 503: half}, throttle_rate=throttle_rate, retry_after=1.0)
        simulator.set_faults(FaultPlan(rules=[rule]))
        console.print(
            f"Injecting faults: {error_rate:.0%} of provider calls fail with 500/503, "
            f"{throttle_rate:.0%} answer 429 with Retry-After: 1"
        )
    metrics = Metrics(CollectorRegistry())
    options = RuntimeOptions(
        engine=EngineSettings(poll_interval=300.0, not_ready_interval=0.5, batch_size=16), tick_seconds=0.5
    )
    specs = demo_specs(instances)
    async with serve_in_background(simulator.app()) as root:
        settings = simulated_settings(root, simulator.railway.project_id)
        console.print(f"Simulated providers at {root}; database {DEMO_DATABASE}")
        async with Runtime(settings, url, options, metrics) as runtime:
            stop = asyncio.Event()
            loop_task = asyncio.create_task(runtime.worker.run_forever(stop))
            jobs_task = asyncio.create_task(runtime.jobs.run_forever(stop))
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            async with conn:
                await store.put_many(conn, specs)
                started = time.monotonic()

                async def ready() -> int:
                    return (await phase_counts(conn)).get(Phase.READY, 0)

                converged = await _wait(console, "converging", instances, ready, time_limit)
                elapsed = time.monotonic() - started
                rows = await instance_statuses(conn)
                console.print(status_table(rows))
                calls = _provider_calls(metrics)
                ready_count = sum(r.phase == Phase.READY for r in rows)
                per_provider = ", ".join(f"{p} {n}" for p, n in calls.items())
                console.print(
                    f"{'Converged' if converged else 'NOT converged'}: {ready_count}/{instances} instances "
                    f"Ready in {elapsed:.1f}s with {sum(calls.values())} provider calls ({per_provider}); "
                    f"providers hold {held_resources(simulator)} resources."
                )
                await store.mark_absent(conn, [spec.instance_id for spec in specs])
                held_at_start = held_resources(simulator)

                async def released() -> int:
                    held = held_resources(simulator)
                    rows_left = (await (await conn.execute(COUNT_DESIRED)).fetchone() or (0,))[0]
                    # Complete only when the providers hold nothing AND every finalizer has run.
                    return (
                        held_at_start if held == 0 and rows_left == 0 else min(held_at_start - held, held_at_start - 1)
                    )

                torn_down = await _wait(console, "tearing down", held_at_start, released, time_limit)
                console.print(
                    f"{'Torn down' if torn_down else 'NOT torn down'}: providers hold "
                    f"{held_resources(simulator)} resources."
                )
                paid = await run_jobs_demo(runtime, conn, console, time_limit)
                console.print(
                    f"{'Paid jobs: all ended and settled' if paid else 'Paid jobs: NOT as expected'}; "
                    f"providers hold {held_resources(simulator)} resources."
                )
            stop.set()
            await asyncio.gather(loop_task, jobs_task)
    return converged and torn_down and paid and held_resources(simulator) == 0


def _provider_calls(metrics: Metrics) -> dict[str, int]:
    totals: dict[str, int] = {}
    for family in metrics.provider_calls.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                provider = sample.labels["provider"]
                totals[provider] = totals.get(provider, 0) + int(sample.value)
    return totals
