"""Every benchmark of tests/benchmarks at a tiny size, so the benchmark code cannot rot.

``make bench`` runs them at full size and rewrites docs/benchmarks.md; this runs the same code
(``python -m tests.benchmarks --quick``: 20 instances each) against the test Postgres and checks
the shape and sanity of what each returns, and that the document renders. The numbers at this
size say nothing about the targets, so only the call-count target is asserted.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchmarks.__main__ import BENCHMARKS, render, run_benchmarks

pytestmark = pytest.mark.slow


async def test_every_benchmark_runs_at_a_tiny_size(pg_server_url: str) -> None:
    outcomes = await run_benchmarks(pg_server_url, quick=True, log=lambda _: None)
    assert [o.benchmark.name for o in outcomes] == [b.name for b in BENCHMARKS]
    errors = {o.benchmark.name: o.error for o in outcomes if o.results is None}
    assert not errors, errors
    results: dict[str, Any] = {o.benchmark.name: o.results for o in outcomes}

    cold = results["cold_convergence"]
    assert cold["ready"] == cold["instances"] == 20
    assert cold["wall_seconds"] > 0 and cold["lower_bound_seconds"] >= 0
    assert cold["lower_bound_provider"] in ("railway", "openrouter", "agentmail", "telnyx")
    for provider, operations in cold["must_per_instance"].items():
        for operation, per_instance in operations.items():
            # every must-call was made at least that often (the names match the simulator's)
            assert cold["calls"][provider][operation] >= per_instance * 20, (provider, operation)

    steady = results["steady_state"]
    assert steady["instances"] == 20 and steady["pass_rows"] == 20
    assert steady["cycle_non_list_calls"] == {}
    assert steady["pass_provider_calls"] == 0 and steady["pass_actions"] == 0
    assert steady["pass_outcomes"] == {"done/Ready": 20}
    assert steady["cycle_drift"] == 0
    assert 30 < steady["peak_rss_mb"] < 1000
    assert steady["meets_calls_target"] is True

    for name in ("new_work_latency", "new_work_latency_observer_paused"):
        latency = results[name]
        assert latency["started"] == latency["writes"] == latency["ready"] == 5, name
        assert 0 < latency["p50_seconds"] <= latency["p99_seconds"] < 30, name
    paused, running = results["new_work_latency_observer_paused"], results["new_work_latency"]
    assert paused["observe_seconds"] > running["observe_seconds"]

    status = results["status_batch"]
    assert status["instances"] == 20 and status["p50_ms"] > 0

    hostile = results["hostile_input"]
    assert hostile["hostile_requests"] == 10 and hostile["healthz_samples"] > 0
    assert {key.split(":")[1] for key in hostile["statuses"]} <= {"400", "413", "closed"}
    assert 0 < hostile["largest_error_body_bytes"] < 8000
    assert hostile["server_peak_rss_mb"] < hostile["target_rss_mb"]

    machine = {"CPUs (nproc)": "2", "Postgres": "test"}
    document = render(outcomes, machine, "python -m tests.benchmarks --quick", 1.0)
    assert document.startswith("# Benchmarks")
    for outcome in outcomes:
        assert outcome.benchmark.title in document
    assert document.count("| PASS |") + document.count("| MISS |") >= 6
