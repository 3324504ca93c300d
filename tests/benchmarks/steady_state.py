"""Benchmark: a converged fleet of 10,000 at rest (targets: list pages only, RSS <= 200 MB).

What the reconciler costs when nothing needs doing: one batched observation cycle (every provider
listed once, every recorded resource diffed against the listing) and one periodic pass over every
row (every row made due and reconciled). The benchmark:

1. serves the simulated providers from a child process (no latency while the fleet is built);
2. converges N instances (all three tools each) through the real reconciler in this process,
   with no rate limits, so the starting state is exactly what the reconciler writes (or takes a
   fleet built already: ``run_all`` builds one for this and the latency benchmark);
3. puts the measured latency on every provider call (25 ms by default) and, in a **fresh child
   process** (``tests.benchmarks._steady_child``) that imports what ``reconciler run`` imports
   and holds only a :class:`Runtime` (the rate limits of the cold-convergence benchmark), runs
   ``Observer.cycle(collect_garbage=False)`` and then ``make_due(all)`` + ``Worker.drain()``,
   counting the provider calls of each part at the simulator;
4. reports both wall times, the calls by provider and operation, and the child's peak RSS
   (``VmHWM``; ``ru_maxrss`` too, which on Linux also counts the parent's peak: see
   ``_steady_child.peak_rss_mb``). The simulator and the fleet build are other processes.

Run it with ``python -m tests.benchmarks.steady_state [DATABASE_URL] [--instances N]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from tests.benchmarks._harness import ROOT, Fleet, calls_table, cli, fleet_or_build, simulated_env, total
from tests.benchmarks.cold_convergence import limits_for

BENCH_DATABASE = "reconciler_bench_steady"
TARGET_RSS_MB = 200.0
LIST_OPERATIONS = frozenset(
    {
        # Railway: the two paged listings of list_services
        "environment",
        "project",
        # the REST providers' list endpoints
        "list_keys",
        "list_inboxes",
        "list_numbers",
        "list_profiles",
    }
)


def _in_child(fleet: Fleet, batch_size: int, pool_size: int) -> dict[str, Any]:
    """Run ``tests.benchmarks._steady_child`` against the fleet; its one JSON line."""
    limits = limits_for(50.0, 100.0, 100.0, 50.0)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_DATABASE_URL": fleet.database_url,
        "BENCH_SETTINGS": json.dumps(simulated_env(fleet.sim)),
        "BENCH_RATE_LIMITS": json.dumps({p: [limit.rate, limit.burst] for p, limit in limits.items()}),
        "BENCH_SIM_ROOT": fleet.sim.root,
        "BENCH_BATCH_SIZE": str(batch_size),
        "BENCH_POOL_SIZE": str(pool_size),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks._steady_child"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def run(
    database_url: str,
    *,
    instances: int = 10_000,
    latency_ms: float = 25.0,
    batch_size: int = 64,
    pool_size: int = 10,
    fleet: Fleet | None = None,
) -> dict[str, object]:
    """Build the fleet (unless one is given), then measure it at rest in a child process."""
    async with fleet_or_build(database_url, instances, fleet, BENCH_DATABASE) as built:
        instances = built.instances
        await built.sim.set_latency(latency_ms)
        measured = await asyncio.to_thread(_in_child, built, batch_size, pool_size)
        build_seconds = built.build_seconds

    cycle_calls: dict[str, dict[str, int]] = measured["cycle_calls"]
    pass_calls: dict[str, dict[str, int]] = measured["pass_calls"]
    non_list = {
        f"{provider}:{operation}": count
        for provider, operations in cycle_calls.items()
        for operation, count in operations.items()
        if operation not in LIST_OPERATIONS
    }
    pass_total = sum(total(pass_calls).values())
    lists_only = not non_list and pass_total == 0
    rss_ok = float(measured["peak_rss_mb"]) <= TARGET_RSS_MB
    return {
        "instances": instances,
        "tools": "openrouter, agentmail, telnyx on every instance",
        "latency_ms": latency_ms,
        "batch_size": batch_size,
        "pool_size": pool_size,
        "fleet_build_seconds": round(build_seconds, 1),
        "cycle_seconds": measured["cycle_seconds"],
        "cycle_inventory_seconds": measured["cycle_inventory_seconds"],
        "cycle_diff_seconds": measured["cycle_diff_seconds"],
        "cycle_longest_stall_seconds": measured["cycle_longest_stall_seconds"],
        "cycle_cpu_seconds": measured["cycle_cpu_seconds"],
        "cycle_provider_seconds": round(sum(measured["cycle_provider_seconds"].values()), 2),
        "cycle_provider_seconds_by_provider": measured["cycle_provider_seconds"],
        "cycle_listed": measured["cycle_listed"],
        "cycle_drift": measured["cycle_drift"],
        "cycle_status_changes": measured["cycle_status_changes"],
        "cycle_failed": measured["cycle_failed"],
        "cycle_calls": cycle_calls,
        "cycle_calls_by_provider": total(cycle_calls),
        "cycle_non_list_calls": non_list,
        "pass_rows": measured["pass_rows"],
        "pass_seconds": measured["pass_seconds"],
        "pass_cpu_seconds": measured["pass_cpu_seconds"],
        "pass_longest_stall_seconds": measured["pass_longest_stall_seconds"],
        "pass_rows_per_second": round(measured["pass_rows"] / measured["pass_seconds"], 1)
        if measured["pass_seconds"]
        else None,
        "pass_outcomes": measured["pass_outcomes"],
        "pass_actions": measured["pass_actions"],
        "pass_calls": pass_calls,
        "pass_provider_calls": pass_total,
        "rss_at_start_mb": measured["rss_at_start_mb"],
        "rss_after_inventory_mb": measured["rss_after_inventory_mb"],
        "rss_after_cycle_mb": measured["rss_after_cycle_mb"],
        "peak_rss_mb": measured["peak_rss_mb"],
        "ru_maxrss_mb": measured["ru_maxrss_mb"],
        "target_rss_mb": TARGET_RSS_MB,
        "meets_calls_target": lists_only,
        "meets_rss_target": rss_ok,
        "meets_target": lists_only and rss_ok,
    }


def markdown(results: dict[str, object]) -> str:
    r: Any = results
    by_provider = r["cycle_calls_by_provider"]
    rows = [
        ("instances (all three tools each)", r["instances"]),
        ("simulated latency per call (ms)", r["latency_ms"]),
        ("fleet build through the reconciler, no limits (s)", r["fleet_build_seconds"]),
        ("observation cycle: wall time (s)", r["cycle_seconds"]),
        ("  of which listing the providers / diffing our rows (s)",
         f"{r['cycle_inventory_seconds']} / {r['cycle_diff_seconds']}"),
        ("observation cycle: reconciler CPU / waiting on provider calls (s)",
         f"{r['cycle_cpu_seconds']} / {r['cycle_provider_seconds']}"),
        ("observation cycle: waiting on provider calls, by provider (s)",
         ", ".join(f"{p} {n}" for p, n in r["cycle_provider_seconds_by_provider"].items())),
        ("observation cycle: calls", ", ".join(f"{p} {n}" for p, n in by_provider.items())),
        ("observation cycle: calls other than list pages", r["cycle_non_list_calls"] or "none"),
        ("observation cycle: drift flagged / status changes", f"{r['cycle_drift']} / {r['cycle_status_changes']}"),
        ("periodic pass: rows reconciled", r["pass_rows"]),
        ("periodic pass: wall time / reconciler CPU (s)", f"{r['pass_seconds']} / {r['pass_cpu_seconds']}"),
        ("periodic pass: rows/s", r["pass_rows_per_second"]),
        ("periodic pass: outcomes", ", ".join(f"{k} {v}" for k, v in r["pass_outcomes"].items())),
        ("periodic pass: provider calls / actions", f"{r['pass_provider_calls']} / {r['pass_actions']}"),
        ("longest event-loop stall: cycle / pass (s)",
         f"{r['cycle_longest_stall_seconds']} / {r['pass_longest_stall_seconds']}"),
        ("RSS: peak at start-up / current after listing / peak after the cycle (MB)",
         f"{r['rss_at_start_mb']} / {r['rss_after_inventory_mb']} / {r['rss_after_cycle_mb']}"),
        ("**peak RSS of the reconciler process, VmHWM (MB)**", f"**{r['peak_rss_mb']}**"),
        ("the same by getrusage ru_maxrss (MB; includes the parent's peak, see the method)", r["ru_maxrss_mb"]),
        ("list pages only, zero mutations", "PASS" if r["meets_calls_target"] else "MISS"),
        (f"peak RSS <= {r['target_rss_mb']:g} MB", "PASS" if r["meets_rss_target"] else "MISS"),
    ]
    lines = ["| steady state | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n\n" + calls_table(r["cycle_calls"], "observation cycle")


KNOBS = {
    "instances": (int, 10_000, "converged instances"),
    "latency_ms": (float, 25.0, "simulated latency of every provider call while measuring"),
    "batch_size": (int, 64, "EngineSettings.batch_size"),
    "pool_size": (int, 10, "RuntimeOptions.pool_size"),
}

if __name__ == "__main__":
    cli(__doc__.splitlines()[0] if __doc__ else None, run, markdown, KNOBS)
