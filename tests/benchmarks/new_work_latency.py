"""Benchmark: new work under a busy loop, desired write -> first provider call (target: p99 <= 1 s).

A fleet of 10,000 converged instances is polled continuously (``poll_interval`` of a few
seconds, far less than one pass over the fleet takes, so due rows are never exhausted), by the
real loop (``Worker.run_forever``: APScheduler ticks, LISTEN/NOTIFY, the batched observer every
30 s, the gauges). Meanwhile new desired instances are written one at a time, spaced. For each,
the latency is from the desired write to the first provider call made for it. The benchmark:

1. serves the simulated providers from a child process and converges the fleet through the real
   reconciler (no rate limits, no latency: only the starting state);
2. puts 25 ms latency on every provider call, starts the loop with the cold-convergence rate
   limits, makes every row due, lets the loop run for a few seconds;
3. writes ``writes`` new instances (all three tools), one ``store.put`` at a time,
   ``spacing`` seconds apart, and waits until each has started;
4. computes each latency as ``min(observed_resources.intent_at) - desired_instances.created_at``,
   both stamped by Postgres. The engine commits a create's intent immediately before the
   provider call (then one admission round trip, then the HTTP request), so the intent of the
   instance's first resource (its Telnyx number) marks its first provider call to within a
   millisecond or two.

Run it with ``python -m tests.benchmarks.new_work_latency [DATABASE_URL] [--instances N]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from typing import Any

import psycopg

from desired_state import store
from reconciler.engine import EngineSettings
from reconciler.runtime import RuntimeOptions
from tests.benchmarks._harness import (
    Fleet,
    cli,
    fleet_or_build,
    fleet_specs,
    percentile,
    quiet_logs,
    runtime_for,
)
from tests.benchmarks.cold_convergence import limits_for

BENCH_DATABASE = "reconciler_bench_latency"
TARGET_P99_SECONDS = 1.0

LATENCIES = """
SELECT d.instance_id, EXTRACT(EPOCH FROM min(o.intent_at) - d.created_at)
  FROM desired_instances d JOIN observed_resources o USING (instance_id)
 WHERE d.instance_id = ANY(%(ids)s) AND o.intent_at IS NOT NULL
 GROUP BY d.instance_id, d.created_at
"""

READY = "SELECT count(*) FROM desired_instances WHERE instance_id = ANY(%(ids)s) AND phase = 'Ready'"
DUE_NOW = "SELECT count(*) FROM desired_instances WHERE next_attempt_at <= now() AND NOT (instance_id = ANY(%(ids)s))"


async def run(
    database_url: str,
    *,
    instances: int = 10_000,
    writes: int = 200,
    spacing: float = 0.5,
    latency_ms: float = 25.0,
    poll_interval: float = 2.0,
    batch_size: int = 32,
    pool_size: int = 10,
    tick: float = 1.0,
    warmup: float = 5.0,
    observe_seconds: float = 30.0,
    settle: float = 120.0,
    fleet: Fleet | None = None,
) -> dict[str, object]:
    """Build the fleet (unless one is given), run the loop over it, write new instances."""
    quiet_logs()
    prefix = f"new{int(time.time()) % 1_000_000:06d}x"  # a fleet may serve several runs
    new_specs = fleet_specs(writes, prefix)
    new_ids = [spec.instance_id for spec in new_specs]
    async with fleet_or_build(database_url, instances, fleet, BENCH_DATABASE) as built:
        instances, sim, url = built.instances, built.sim, built.database_url
        seed_seconds = built.build_seconds
        await sim.set_latency(latency_ms)
        options = RuntimeOptions(
            engine=EngineSettings(poll_interval=poll_interval, not_ready_interval=1.0, batch_size=batch_size),
            tick_seconds=tick,
            pool_size=pool_size,
            rate_limits=limits_for(50.0, 100.0, 100.0, 50.0),
            observe_seconds=observe_seconds,
        )
        async with (
            runtime_for(sim, url, options) as runtime,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        ):
            await runtime.reconciler.make_due(None)
            stop = asyncio.Event()
            loop_task = asyncio.create_task(runtime.worker.run_forever(stop))
            due_during: list[int] = []
            try:
                await asyncio.sleep(warmup)
                claims_before = _claims(runtime.metrics)
                started = time.monotonic()
                for spec in new_specs:
                    await store.put(conn, spec)
                    row = await (await conn.execute(DUE_NOW, {"ids": new_ids})).fetchone()
                    due_during.append(int(row[0]) if row else 0)
                    await asyncio.sleep(spacing)
                writing = time.monotonic() - started
                claims_during = _claims(runtime.metrics) - claims_before
                rows: list[Any] = []
                deadline = time.monotonic() + settle
                while time.monotonic() < deadline:
                    rows = await (await conn.execute(LATENCIES, {"ids": new_ids})).fetchall()
                    if len(rows) >= writes:
                        break
                    await asyncio.sleep(0.2)
                # Let the new instances finish too, so a fleet shared with a later run is at rest.
                while time.monotonic() < deadline and await _count(conn, READY, new_ids) < writes:
                    await asyncio.sleep(0.2)
                ready = await _count(conn, READY, new_ids)
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await loop_task

    started_count = len(rows)
    # An instance that never started is counted as a latency longer than any measured.
    latencies = [float(row[1]) for row in rows] + [math.inf] * (writes - started_count)
    p99 = percentile(latencies, 0.99)

    def seconds(value: float) -> float | None:
        return round(value, 3) if math.isfinite(value) else None  # None: not started in time
    return {
        "instances": instances,
        "writes": writes,
        "started": started_count,
        "spacing_seconds": spacing,
        "latency_ms": latency_ms,
        "poll_interval": poll_interval,
        "batch_size": batch_size,
        "pool_size": pool_size,
        "tick_seconds": tick,
        "observe_seconds": observe_seconds,
        "fleet_build_seconds": round(seed_seconds, 1),
        "writing_seconds": round(writing, 1),
        "due_backlog_median": int(statistics.median(due_during)) if due_during else 0,
        "passes_per_second_while_writing": round(claims_during / writing, 1) if writing else None,
        "p50_seconds": seconds(percentile(latencies, 0.5)),
        "p90_seconds": seconds(percentile(latencies, 0.9)),
        "p99_seconds": seconds(p99),
        "max_seconds": seconds(max(latencies)),
        "ready": ready,
        "target_p99_seconds": TARGET_P99_SECONDS,
        "meets_target": p99 <= TARGET_P99_SECONDS,
    }


async def _count(conn: psycopg.AsyncConnection[Any], query: str, ids: list[str]) -> int:
    row = await (await conn.execute(query, {"ids": ids})).fetchone()
    return int(row[0]) if row else 0


def _claims(metrics: Any) -> int:
    """Rows claimed so far (the claim-to-start histogram's count)."""
    for family in metrics.claim_to_start_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                return int(sample.value)
    return 0


def markdown(results: dict[str, object]) -> str:
    r: Any = {k: ("not reached (instances never started)" if v is None else v) for k, v in results.items()}
    rows = [
        ("converged instances being polled", r["instances"]),
        ("poll interval / tick / observation cycle every (s)",
         f"{r['poll_interval']} / {r['tick_seconds']} / {r['observe_seconds']}"),
        ("due backlog while writing (median rows)", r["due_backlog_median"]),
        ("passes per second while writing (all rows)", r["passes_per_second_while_writing"]),
        ("knobs", f"batch_size {r['batch_size']}, pool_size {r['pool_size']}"),
        ("new instances written / started / Ready at the end", f"{r['writes']} / {r['started']} / {r['ready']}"),
        ("spacing between writes (s)", r["spacing_seconds"]),
        ("simulated latency per call (ms)", r["latency_ms"]),
        ("write -> first provider call, p50 (s)", r["p50_seconds"]),
        ("write -> first provider call, p90 (s)", r["p90_seconds"]),
        ("**write -> first provider call, p99 (s)**", f"**{r['p99_seconds']}**"),
        ("write -> first provider call, max (s)", r["max_seconds"]),
        (f"p99 <= {r['target_p99_seconds']:g} s", "PASS" if r["meets_target"] else "MISS"),
    ]
    lines = ["| new-work latency | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


KNOBS = {
    "instances": (int, 10_000, "converged instances being polled"),
    "writes": (int, 200, "new desired instances written one at a time"),
    "spacing": (float, 0.5, "seconds between two writes"),
    "latency_ms": (float, 25.0, "simulated latency of every provider call"),
    "poll_interval": (float, 2.0, "EngineSettings.poll_interval"),
    "batch_size": (int, 32, "EngineSettings.batch_size"),
    "pool_size": (int, 10, "RuntimeOptions.pool_size"),
    "tick": (float, 1.0, "RuntimeOptions.tick_seconds"),
    "observe_seconds": (float, 30.0, "RuntimeOptions.observe_seconds (the batched observer's interval)"),
}

if __name__ == "__main__":
    cli(__doc__.splitlines()[0] if __doc__ else None, run, markdown, KNOBS)
