"""Benchmark: a converged fleet of 10,000 at rest (targets: list pages only, RSS <= 200 MB).

What the reconciler costs when nothing needs doing: one batched observation cycle (every provider
listed once, every recorded resource diffed against the listing) and one periodic pass over every
row (every row made due and reconciled). The benchmark:

1. serves the simulated providers from a child process (no latency while the fleet is built);
2. converges N instances (all three tools each) through the real reconciler in this process,
   with no rate limits, so the starting state is exactly what the reconciler writes (or takes a
   fleet built already: ``run_all`` builds one for this and the latency benchmark);
3. puts the measured latency on every provider call (25 ms by default) and, in a **fresh child
   process** that imports what ``reconciler run`` imports and holds only a :class:`Runtime`
   (the rate limits of the cold-convergence benchmark in force), runs
   ``Observer.cycle(collect_garbage=False)`` and then ``make_due(all)`` + ``Worker.drain()``,
   counting the provider calls of each part at the simulator;
4. reports both wall times, the calls by provider and operation, and the child's peak RSS
   (``getrusage(RUSAGE_SELF).ru_maxrss``: the reconciler alone, the simulator and the fleet
   building are other processes).

Run it with ``python -m tests.benchmarks.steady_state [DATABASE_URL] [--instances N]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from tests.benchmarks._harness import (
    ROOT,
    Fleet,
    SimulatorHandle,
    calls_table,
    cli,
    fleet_or_build,
    total,
)

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

# The child: only the reconciler, measured from its first line.
CHILD_SCRIPT = """
import asyncio, json, os
from tests.benchmarks.steady_state import measure
print(json.dumps(asyncio.run(measure(
    os.environ["BENCH_DATABASE_URL"], os.environ["BENCH_SIM_ROOT"], os.environ["BENCH_SIM_PROJECT"],
    batch_size=int(os.environ["BENCH_BATCH_SIZE"]), pool_size=int(os.environ["BENCH_POOL_SIZE"]),
))))
"""


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except OSError:
        return None


async def measure(
    database_url: str, sim_root: str, project_id: str, *, batch_size: int, pool_size: int
) -> dict[str, Any]:
    """Runs in the child process: one observation cycle, one full periodic pass."""
    import cli  # noqa: F401  what `reconciler run` has loaded
    import desired_state.api  # noqa: F401
    from reconciler.engine import EngineSettings
    from reconciler.runtime import RuntimeOptions
    from tests.benchmarks._harness import quiet_logs, runtime_for
    from tests.benchmarks.cold_convergence import limits_for

    quiet_logs()
    sim = SimulatorHandle(sim_root, project_id, 0)
    options = RuntimeOptions(
        engine=EngineSettings(poll_interval=3600.0, batch_size=batch_size),
        pool_size=pool_size,
        rate_limits=limits_for(50.0, 100.0, 100.0, 50.0),
    )
    result: dict[str, Any] = {"rss_at_start_mb": round(_rss_mb(), 1)}
    async with runtime_for(sim, database_url, options) as runtime:
        await sim.reset_requests()
        started, cpu = time.monotonic(), _cpu()
        report = await runtime.observer.cycle(collect_garbage=False)
        result["cycle_seconds"] = round(time.monotonic() - started, 2)
        result["cycle_cpu_seconds"] = round(_cpu() - cpu, 2)
        result["cycle_provider_seconds"] = round(_provider_seconds(runtime.metrics), 2)
        assert report is not None
        result["cycle_listed"] = report.listed
        result["cycle_drift"] = len(report.drift)
        result["cycle_status_changes"] = report.status_changes
        result["cycle_failed"] = report.failed
        result["cycle_calls"] = await sim.requests()
        result["rss_after_cycle_mb"] = round(_rss_mb(), 1)

        await sim.reset_requests()
        due = await runtime.reconciler.make_due(None)
        started, cpu = time.monotonic(), _cpu()
        outcomes = await runtime.worker.drain()
        result["pass_seconds"] = round(time.monotonic() - started, 2)
        result["pass_cpu_seconds"] = round(_cpu() - cpu, 2)
        result["pass_rows"] = len(due)
        result["pass_outcomes"] = _tally(f"{o.result}/{o.phase}" for o in outcomes)
        result["pass_actions"] = sum(len(o.actions) for o in outcomes)
        result["pass_calls"] = await sim.requests()
    result["peak_rss_mb"] = round(_rss_mb(), 1)
    result["rss_at_end_mb"] = _current_rss_mb()
    return result


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _provider_seconds(metrics: Any) -> float:
    """Time spent in provider calls so far (the call-duration histogram's sum, all providers)."""
    spent = 0.0
    for family in metrics.provider_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                spent += sample.value
    return spent


def _tally(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _in_child(url: str, sim: SimulatorHandle, batch_size: int, pool_size: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_DATABASE_URL": url,
        "BENCH_SIM_ROOT": sim.root,
        "BENCH_SIM_PROJECT": sim.project_id,
        "BENCH_BATCH_SIZE": str(batch_size),
        "BENCH_POOL_SIZE": str(pool_size),
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, check=False
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
        measured = await asyncio.to_thread(_in_child, built.database_url, built.sim, batch_size, pool_size)
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
        "cycle_cpu_seconds": measured["cycle_cpu_seconds"],
        "cycle_provider_seconds": measured["cycle_provider_seconds"],
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
        "pass_rows_per_second": round(measured["pass_rows"] / measured["pass_seconds"], 1)
        if measured["pass_seconds"]
        else None,
        "pass_outcomes": measured["pass_outcomes"],
        "pass_actions": measured["pass_actions"],
        "pass_calls": pass_calls,
        "pass_provider_calls": pass_total,
        "rss_at_start_mb": measured["rss_at_start_mb"],
        "rss_after_cycle_mb": measured["rss_after_cycle_mb"],
        "peak_rss_mb": measured["peak_rss_mb"],
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
        ("observation cycle: reconciler CPU / waiting on provider calls (s)",
         f"{r['cycle_cpu_seconds']} / {r['cycle_provider_seconds']}"),
        ("observation cycle: calls", ", ".join(f"{p} {n}" for p, n in by_provider.items())),
        ("observation cycle: calls other than list pages", r["cycle_non_list_calls"] or "none"),
        ("observation cycle: drift flagged / status changes", f"{r['cycle_drift']} / {r['cycle_status_changes']}"),
        ("periodic pass: rows reconciled", r["pass_rows"]),
        ("periodic pass: wall time / reconciler CPU (s)", f"{r['pass_seconds']} / {r['pass_cpu_seconds']}"),
        ("periodic pass: rows/s", r["pass_rows_per_second"]),
        ("periodic pass: outcomes", ", ".join(f"{k} {v}" for k, v in r["pass_outcomes"].items())),
        ("periodic pass: provider calls / actions", f"{r['pass_provider_calls']} / {r['pass_actions']}"),
        ("RSS after start-up / after the cycle (MB)", f"{r['rss_at_start_mb']} / {r['rss_after_cycle_mb']}"),
        ("**peak RSS of the reconciler process (MB)**", f"**{r['peak_rss_mb']}**"),
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
