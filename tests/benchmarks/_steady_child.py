"""The measuring process of the steady-state benchmark: the reconciler alone, nothing else loaded.

``steady_state.run`` starts ``python -m tests.benchmarks._steady_child`` with its inputs in the
environment and reads one JSON line from its stdout. This module imports what ``reconciler run``
imports (the CLI and the HTTP API) and the reconciler, but nothing of the simulator or of the
other benchmark modules, so the peak RSS it reports is what a ``reconciler run`` process would
hold for the same work.

Inputs: ``BENCH_DATABASE_URL``, ``BENCH_SETTINGS`` (JSON: the environment the settings are read
from), ``BENCH_RATE_LIMITS`` (JSON: ``{provider: [rate, burst]}``), ``BENCH_SIM_ROOT`` (for the
simulator's request log), ``BENCH_BATCH_SIZE``, ``BENCH_POOL_SIZE``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Iterable
from typing import Any

import httpx


def ru_maxrss_mb() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MB (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` where there is /proc, else ``ru_maxrss``.

    On Linux ``ru_maxrss`` survives fork and execve: a child starts with its parent's peak (here
    the benchmark process's), so it cannot go below that. ``VmHWM`` belongs to the address space,
    which execve replaces, so it counts this program alone.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mb()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def simulator_requests(root: str, *, reset: bool = False) -> dict[str, dict[str, int]]:
    async with httpx.AsyncClient(timeout=300) as client:
        if reset:
            (await client.post(f"{root}/_admin/requests/reset")).raise_for_status()
            return {}
        answer = (await client.get(f"{root}/_admin/requests")).json()
    return {
        provider: {name: int(log["count"]) for name, log in data["operations"].items()}
        for provider, data in answer.items()
    }


def provider_seconds(metrics: Any) -> dict[str, float]:
    """Time spent in provider calls so far, by provider (the call-duration histogram's sums)."""
    spent: dict[str, float] = {}
    for family in metrics.provider_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum") and sample.value:
                spent[sample.labels["provider"]] = round(sample.value, 2)
    return spent


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class StallMeter:
    """The longest time the event loop went without running a 5 ms ticker (a blocked loop)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.longest = max(self.longest, now - last - 0.005)
            last = now

    def __enter__(self) -> StallMeter:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


def tally(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


async def measure() -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    import cli  # noqa: F401  what `reconciler run` has loaded
    import desired_state.http  # noqa: F401
    from reconciler.admission import Limit
    from reconciler.engine import EngineSettings
    from reconciler.metrics import Metrics
    from reconciler.runtime import Runtime, RuntimeOptions
    from reconciler.settings import load_settings

    for name in ("reconciler", "providers", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    sim_root = os.environ["BENCH_SIM_ROOT"]
    limits = {p: Limit(rate, burst) for p, (rate, burst) in json.loads(os.environ["BENCH_RATE_LIMITS"]).items()}
    options = RuntimeOptions(
        engine=EngineSettings(poll_interval=3600.0, batch_size=int(os.environ["BENCH_BATCH_SIZE"])),
        pool_size=int(os.environ["BENCH_POOL_SIZE"]),
        rate_limits=limits,
    )
    settings = load_settings(json.loads(os.environ["BENCH_SETTINGS"]))
    result: dict[str, Any] = {"rss_at_start_mb": round(peak_rss_mb(), 1)}
    metrics = Metrics(CollectorRegistry())
    async with Runtime(settings, os.environ["BENCH_DATABASE_URL"], options, metrics) as runtime:
        await simulator_requests(sim_root, reset=True)
        # Observer.cycle(collect_garbage=False) is inventory() then observe(inventory) under an
        # advisory lock; called in two steps here to time and weigh each.
        with StallMeter() as stalls:
            started, cpu = time.monotonic(), cpu_seconds()
            inventory = await runtime.observer.inventory()
            listed = time.monotonic()
            result["rss_after_inventory_mb"] = current_rss_mb()
            report = await runtime.observer.observe(inventory)
            result["cycle_seconds"] = round(time.monotonic() - started, 2)
        del inventory
        result["cycle_inventory_seconds"] = round(listed - started, 2)
        result["cycle_diff_seconds"] = round(time.monotonic() - listed, 2)
        result["cycle_cpu_seconds"] = round(cpu_seconds() - cpu, 2)
        result["cycle_longest_stall_seconds"] = round(stalls.longest, 3)
        result["cycle_provider_seconds"] = provider_seconds(metrics)
        result["cycle_listed"] = report.listed
        result["cycle_drift"] = len(report.drift)
        result["cycle_status_changes"] = report.status_changes
        result["cycle_failed"] = report.failed
        result["cycle_calls"] = await simulator_requests(sim_root)
        result["rss_after_cycle_mb"] = round(peak_rss_mb(), 1)

        await simulator_requests(sim_root, reset=True)
        due = await runtime.reconciler.make_due(None)
        with StallMeter() as stalls:
            started, cpu = time.monotonic(), cpu_seconds()
            outcomes = await runtime.worker.drain()
            result["pass_seconds"] = round(time.monotonic() - started, 2)
        result["pass_longest_stall_seconds"] = round(stalls.longest, 3)
        result["pass_cpu_seconds"] = round(cpu_seconds() - cpu, 2)
        result["pass_rows"] = len(due)
        result["pass_outcomes"] = tally(f"{o.result}/{o.phase}" for o in outcomes)
        result["pass_actions"] = sum(len(o.actions) for o in outcomes)
        result["pass_calls"] = await simulator_requests(sim_root)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["ru_maxrss_mb"] = round(ru_maxrss_mb(), 1)
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure())))
