"""Benchmark: cold convergence of N instances under per-provider rate limits (target: wall <= 1.2 x bound).

Every instance wants all three tools (OpenRouter key, AgentMail inbox, Telnyx number) plus its
Railway service, volume, domain and deployment. Every simulated provider call takes 25 ms, and
the reconciler's own shared admission (``RuntimeOptions.rate_limits``, the Postgres token bucket
of :mod:`reconciler.admission`) holds each provider to its rate. The benchmark:

1. serves the simulated providers from a child process (25 ms fixed latency on every call,
   deploys that succeed at once, a Telnyx inventory big enough for every instance);
2. creates a fresh database and starts the real loop (``Worker.run_forever``: APScheduler ticks,
   LISTEN/NOTIFY wake-ups, the batched observer) with the knobs given;
3. writes all N desired instances in one transaction and waits until every one is Ready;
4. reports the wall time (``max(ready_at) - min(created_at)``, both stamped by Postgres), the
   provider calls by provider and operation (counted by the simulator), and the rate-limit lower
   bound.

The lower bound: a provider that must receive ``C`` calls at ``rate`` calls/s from a bucket
that starts full with ``burst`` tokens cannot be done before ``(C - burst) / rate`` seconds;
the bound is the largest of these over the providers. ``C`` is N times the calls a create
*must* make at that provider (:data:`MUST_PER_INSTANCE`): every mutation, plus the reads
without which the create cannot finish. The ratio is reported against that bound and against
the same bound computed from the calls actually made (which shows how much of the gap is extra
calls and how much is idle rate).

Run it with ``python -m tests.benchmarks.cold_convergence [DATABASE_URL] [--instances N]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Mapping
from typing import Any

import psycopg

from desired_state import store
from reconciler.admission import Limit
from reconciler.engine import EngineSettings
from reconciler.runtime import RuntimeOptions
from tests.benchmarks._harness import (
    bench_database,
    calls_table,
    cli,
    count_ready,
    fleet_specs,
    quiet_logs,
    runtime_for,
    simulator_process,
    total,
)

BENCH_DATABASE = "reconciler_bench_cold"
TARGET_RATIO = 1.2

# Calls a create must make, per instance and provider (see the module docstring), under the
# operation names the simulator logs (Telnyx: update_messaging assigns the messaging profile,
# update_number records the customer reference).
MUST_PER_INSTANCE: Mapping[str, Mapping[str, int]] = {
    # four mutations, and one read of the service instance to see the deployment SUCCESS
    "railway": {
        "serviceCreate": 1,
        "volumeCreate": 1,
        "serviceDomainCreate": 1,
        "environmentPatchCommit": 1,
        "serviceInstance": 1,
    },
    "openrouter": {"create_key": 1},
    "agentmail": {"create_inbox": 1},
    # a number must be found before it is bought; the order, the messaging profile and the
    # reference (how the number is found again by name) are three writes
    "telnyx": {"search_numbers": 1, "order_number": 1, "update_messaging": 1, "update_number": 1},
}

COMPLETION = """
SELECT count(*) FILTER (WHERE phase = 'Ready'),
       EXTRACT(EPOCH FROM max(ready_at) - min(created_at)),
       EXTRACT(EPOCH FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY ready_at - created_at)),
       sum(fencing_token)
  FROM desired_instances
"""


def limits_for(railway: float, openrouter: float, agentmail: float, telnyx: float) -> dict[str, Limit]:
    """One second's worth of burst per provider."""
    rates = {"railway": railway, "openrouter": openrouter, "agentmail": agentmail, "telnyx": telnyx}
    return {provider: Limit(rate=rate, burst=rate) for provider, rate in rates.items()}


def lower_bound(calls: Mapping[str, int], limits: Mapping[str, Limit]) -> tuple[float, str]:
    """``max((calls - burst) / rate)`` over the providers, and the provider that sets it."""
    bounds = {p: max(0.0, calls.get(p, 0) - limit.burst) / limit.rate for p, limit in limits.items()}
    provider = max(bounds, key=bounds.__getitem__)
    return bounds[provider], provider


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of another process, from /proc (None where there is no /proc)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _outcomes(metrics: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for family in metrics.reconcile_total.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                counts[sample.labels["result"]] = counts.get(sample.labels["result"], 0) + int(sample.value)
    return counts


async def run(
    database_url: str,
    *,
    instances: int = 1000,
    latency_ms: float = 25.0,
    railway_rate: float = 50.0,
    openrouter_rate: float = 100.0,
    agentmail_rate: float = 100.0,
    telnyx_rate: float = 50.0,
    batch_size: int = 32,
    pool_size: int = 10,
    tick: float = 1.0,
    time_limit: float = 1800.0,
) -> dict[str, object]:
    """Converge ``instances`` from nothing; returns the numbers (times in seconds)."""
    quiet_logs()
    limits = limits_for(railway_rate, openrouter_rate, agentmail_rate, telnyx_rate)
    options = RuntimeOptions(
        engine=EngineSettings(poll_interval=3600.0, not_ready_interval=1.0, batch_size=batch_size),
        tick_seconds=tick,
        pool_size=pool_size,
        rate_limits=limits,
    )
    specs = fleet_specs(instances, "cold")
    inventory = int(instances * 1.2) + 100  # every tenth number of the fake's cannot do SMS
    with bench_database(database_url, BENCH_DATABASE) as url:
        async with (
            simulator_process(latency_ms=latency_ms, deploy_seconds=0.0, telnyx_inventory=inventory) as sim,
            runtime_for(sim, url, options) as runtime,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        ):
            stop = asyncio.Event()
            loop_task = asyncio.create_task(runtime.worker.run_forever(stop))
            try:
                await asyncio.sleep(0.5)  # the loop is up and listening
                await sim.reset_requests()
                cpu_before, sim_cpu_before = _self_cpu(), _cpu_seconds(sim.pid)
                started = time.monotonic()
                await store.put_many(conn, specs)
                while await count_ready(conn) < instances:
                    if time.monotonic() - started > time_limit:
                        break
                    await asyncio.sleep(0.1)
                observed_wall = time.monotonic() - started
                cpu, sim_cpu_after = _self_cpu() - cpu_before, _cpu_seconds(sim.pid)
                calls = await sim.requests()
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await loop_task
            row = await (await conn.execute(COMPLETION)).fetchone()
            assert row is not None
            ready, wall, median_ready, claims = int(row[0]), float(row[1] or observed_wall), row[2], int(row[3])
            outcomes = _outcomes(runtime.metrics)

    must = {p: instances * sum(ops.values()) for p, ops in MUST_PER_INSTANCE.items()}
    actual = total(calls)
    bound, bound_provider = lower_bound(must, limits)
    actual_bound, actual_provider = lower_bound(actual, limits)
    ratio = wall / bound if bound else float("inf")
    return {
        "instances": instances,
        "ready": ready,
        "latency_ms": latency_ms,
        "rate_limits": {p: {"rate": limit.rate, "burst": limit.burst} for p, limit in limits.items()},
        "batch_size": batch_size,
        "pool_size": pool_size,
        "tick_seconds": tick,
        "wall_seconds": round(wall, 2),
        "median_time_to_ready_seconds": round(float(median_ready or 0.0), 2),
        "must_calls": must,
        "must_per_instance": {p: dict(ops) for p, ops in MUST_PER_INSTANCE.items()},
        "calls": calls,
        "calls_by_provider": actual,
        "calls_per_instance": {p: round(n / instances, 2) for p, n in actual.items()},
        "lower_bound_seconds": round(bound, 2),
        "lower_bound_provider": bound_provider,
        "ratio": round(ratio, 3),
        "actual_calls_bound_seconds": round(actual_bound, 2),
        "actual_calls_bound_provider": actual_provider,
        "ratio_vs_actual_calls": round(wall / actual_bound, 3) if actual_bound else None,
        "claims": claims,
        "outcomes": outcomes,
        "reconciler_cpu_seconds": round(cpu, 1),
        "simulator_cpu_seconds": (
            round(sim_cpu_after - sim_cpu_before, 1)
            if sim_cpu_after is not None and sim_cpu_before is not None
            else None
        ),
        "target_ratio": TARGET_RATIO,
        "meets_target": ready == instances and ratio <= TARGET_RATIO,
    }


def markdown(results: dict[str, object]) -> str:
    r: Any = results
    limits = r["rate_limits"]
    rates = ", ".join(f"{p} {v['rate']:g}/s" for p, v in limits.items())
    rows = [
        ("instances (Ready / desired)", f"{r['ready']} / {r['instances']}"),
        ("simulated latency per call (ms)", r["latency_ms"]),
        ("rate limits (burst = 1 s of rate)", rates),
        ("knobs", f"batch_size {r['batch_size']}, pool_size {r['pool_size']}, tick {r['tick_seconds']} s"),
        ("wall time, desired write -> all Ready (s)", r["wall_seconds"]),
        ("median time to Ready (s)", r["median_time_to_ready_seconds"]),
        (f"rate-limit lower bound, must-calls ({r['lower_bound_provider']}) (s)", r["lower_bound_seconds"]),
        ("**ratio wall / lower bound**", f"**{r['ratio']}**"),
        (
            f"lower bound from calls actually made ({r['actual_calls_bound_provider']}) (s)",
            r["actual_calls_bound_seconds"],
        ),
        ("ratio wall / actual-calls bound", r["ratio_vs_actual_calls"]),
        ("calls per instance (actual)", ", ".join(f"{p} {n}" for p, n in r["calls_per_instance"].items())),
        ("reconcile passes (claims)", r["claims"]),
        ("pass outcomes", ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())),
        ("CPU seconds: reconciler / simulator", f"{r['reconciler_cpu_seconds']} / {r['simulator_cpu_seconds']}"),
        (f"ratio <= {r['target_ratio']}", "PASS" if r["meets_target"] else "MISS"),
    ]
    lines = ["| cold convergence | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n\n" + calls_table(r["calls"])


KNOBS = {
    "instances": (int, 1000, "desired instances to converge"),
    "latency_ms": (float, 25.0, "simulated latency of every provider call"),
    "railway_rate": (float, 50.0, "Railway calls/s"),
    "openrouter_rate": (float, 100.0, "OpenRouter calls/s"),
    "agentmail_rate": (float, 100.0, "AgentMail calls/s"),
    "telnyx_rate": (float, 50.0, "Telnyx calls/s"),
    "batch_size": (int, 32, "EngineSettings.batch_size"),
    "pool_size": (int, 10, "RuntimeOptions.pool_size"),
    "tick": (float, 1.0, "RuntimeOptions.tick_seconds"),
}

if __name__ == "__main__":
    cli(__doc__.splitlines()[0] if __doc__ else None, run, markdown, KNOBS)
