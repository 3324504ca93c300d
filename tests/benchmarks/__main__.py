"""Run every benchmark against one Postgres and rewrite ``docs/benchmarks.md`` with the results.

``python -m tests.benchmarks [DATABASE_URL] [--only NAME ...] [--quick] [--output PATH]``
(``make bench`` runs it with no arguments). The Postgres server is the URL given, else
``SERVICE_DATABASE_URL``, else an embedded one (``reconciler.db.EmbeddedPostgres``) in a
temporary directory; every benchmark creates its own database on it and drops it afterwards.
``--quick`` runs tiny sizes (a smoke run) and prints the document instead of writing it, unless
``--output`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from reconciler.db import EmbeddedPostgres
from tests.benchmarks import (
    cold_convergence,
    hostile_input,
    jobs_throughput,
    new_work_latency,
    status_batch,
    steady_state,
)
from tests.benchmarks._harness import ROOT, Fleet, converged_fleet

DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "benchmarks.json"
"""The raw results of the run that wrote DOC: ``--render`` rewrites DOC from them without rerunning."""
FLEET_USERS = frozenset({"steady_state", "new_work_latency"})


@dataclass(frozen=True)
class Benchmark:
    name: str
    """Unique per entry; ``module`` is the benchmark module it runs (a variant has its own knobs)."""
    module: str
    title: str
    run: Callable[..., Coroutine[Any, Any, dict[str, object]]]
    markdown: Callable[[dict[str, object]], str]
    full: Mapping[str, Any]
    quick: Mapping[str, Any]
    command: str


QUICK_LATENCY = {"instances": 20, "writes": 5, "spacing": 0.1, "warmup": 1.0, "settle": 20.0}

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "cold_convergence",
        "cold_convergence",
        "Cold convergence under rate limits",
        cold_convergence.run,
        cold_convergence.markdown,
        {"instances": 1000},
        {"instances": 20},
        "python -m tests.benchmarks.cold_convergence --instances 1000",
    ),
    Benchmark(
        "steady_state",
        "steady_state",
        "Steady state: a converged fleet at rest",
        steady_state.run,
        steady_state.markdown,
        {"instances": 10_000},
        {"instances": 20},
        "python -m tests.benchmarks.steady_state --instances 10000",
    ),
    Benchmark(
        "new_work_latency_observer_paused",
        "new_work_latency",
        "New work under a busy loop, the observer paused",
        new_work_latency.run,
        new_work_latency.markdown,
        {"instances": 10_000, "writes": 200, "observe_seconds": 3600.0},
        {**QUICK_LATENCY, "observe_seconds": 3600.0},
        "python -m tests.benchmarks.new_work_latency --instances 10000 --writes 200 --observe-seconds 3600",
    ),
    Benchmark(
        "new_work_latency",
        "new_work_latency",
        "New work under a busy loop, the observer running",
        new_work_latency.run,
        new_work_latency.markdown,
        {"instances": 10_000, "writes": 200},
        QUICK_LATENCY,
        "python -m tests.benchmarks.new_work_latency --instances 10000 --writes 200",
    ),
    Benchmark(
        "status_batch",
        "status_batch",
        "POST /status/batch over the fleet",
        status_batch.run,
        status_batch.markdown,
        {"instances": 10_000},
        {"instances": 20, "sequential": 5, "concurrent": 8},
        "python -m tests.benchmarks.status_batch --instances 10000",
    ),
    Benchmark(
        "hostile_input",
        "hostile_input",
        "Hostile request bodies while /healthz is probed",
        hostile_input.run,
        hostile_input.markdown,
        {"rounds": 10},
        {"rounds": 1},
        "python -m tests.benchmarks.hostile_input --rounds 10",
    ),
    Benchmark(
        "jobs_throughput",
        "jobs_throughput",
        "Paid jobs: our loop against procrastinate, and HTTP admission",
        jobs_throughput.run,
        jobs_throughput.markdown,
        {},
        jobs_throughput.QUICK,
        "python -m tests.benchmarks.jobs_throughput --jobs 10000",
    ),
)


@dataclass
class Outcome:
    benchmark: Benchmark
    seconds: float
    results: dict[str, object] | None = None
    error: str | None = None


async def run_benchmarks(
    server_url: str, names: list[str] | None = None, *, quick: bool = False, log: Callable[[str], None] = print
) -> list[Outcome]:
    """Run the chosen benchmarks one after another; a failure is recorded, not raised.

    The benchmarks that need a converged fleet share one, built before the first of them runs.
    """
    outcomes = []
    async with contextlib.AsyncExitStack() as stack:
        fleet: Fleet | None = None
        for benchmark in BENCHMARKS:
            if names and benchmark.name not in names:
                continue
            knobs = dict(benchmark.quick if quick else benchmark.full)
            started = time.monotonic()
            try:
                if benchmark.module in FLEET_USERS:
                    if fleet is None:
                        log(f"== building a fleet of {knobs['instances']} through the reconciler ...")
                        fleet = await stack.enter_async_context(converged_fleet(server_url, knobs["instances"]))
                        log(f"   fleet: {fleet.build_seconds:.0f} s")
                        started = time.monotonic()
                    knobs["fleet"] = fleet
                log(f"== {benchmark.name} ...")
                results = await benchmark.run(server_url, **knobs)
                outcome = Outcome(benchmark, time.monotonic() - started, results=results)
            except Exception:
                outcome = Outcome(benchmark, time.monotonic() - started, error=traceback.format_exc())
            log(f"   {benchmark.name}: {time.monotonic() - started:.0f} s")
            outcomes.append(outcome)
    return outcomes


# -- the machine ---------------------------------------------------------------------------------


def _meminfo_gib() -> str:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (with uncommitted changes)" if dirty else commit


def machine(server_url: str, embedded: bool) -> dict[str, str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPUs (nproc)": str(cpus),
        "CPU model": _cpu_model(),
        "memory": _meminfo_gib(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Postgres": f"{row[0] if row else 'unknown'} ({'embedded, pgserver' if embedded else 'given URL'})",
        "code": _git_commit(),
    }


# -- the document --------------------------------------------------------------------------------


def _status(ok: object) -> str:
    return "PASS" if ok else "MISS"


def summary_rows(outcome: Outcome) -> list[tuple[str, str, str, str]]:
    """(benchmark, target, result, PASS/MISS) rows for the summary table."""
    module, r = outcome.benchmark.module, outcome.results
    if r is None:
        return [(outcome.benchmark.title, "-", "did not complete (see below)", "ERROR")]
    res: Any = r
    if module == "cold_convergence":
        return [
            (
                f"cold convergence, {res['instances']} instances",
                f"wall / rate-limit lower bound <= {res['target_ratio']}",
                f"{res['wall_seconds']} s / {res['lower_bound_seconds']} s = {res['ratio']}",
                _status(res["meets_target"]),
            )
        ]
    if module == "steady_state":
        return [
            (
                f"steady state, {res['instances']} instances",
                "observation cycle: list pages only, zero mutations; periodic pass: zero calls",
                f"cycle {sum(res['cycle_calls_by_provider'].values())} calls, "
                f"{len(res['cycle_non_list_calls'])} not list pages; pass {res['pass_provider_calls']} calls",
                _status(res["meets_calls_target"]),
            ),
            (
                f"steady state, {res['instances']} instances",
                f"peak RSS <= {res['target_rss_mb']:g} MB",
                f"{res['peak_rss_mb']} MB",
                _status(res["meets_rss_target"]),
            ),
        ]
    if module == "jobs_throughput":
        return jobs_throughput.summary_rows(res)
    if module == "new_work_latency":
        observer = "observer paused" if res["observe_seconds"] > 600 else "observer running"
        p99 = res["p99_seconds"] if res["p99_seconds"] is not None else "not reached"
        return [
            (
                f"new-work latency, {res['writes']} writes, {res['instances']} rows polled, {observer}",
                f"p99 write -> first provider call <= {res['target_p99_seconds']:g} s",
                f"p50 {res['p50_seconds']} s, p99 {p99} s ({res['started']}/{res['writes']} started)",
                _status(res["meets_target"]),
            )
        ]
    if module == "hostile_input":
        return [
            (
                f"hostile bodies, {res['hostile_requests']} requests",
                f"/healthz p99 < {res['target_p99_ms']:g} ms while they are sent",
                f"p50 {res['healthz_p50_ms']} ms, p99 {res['healthz_p99_ms']} ms",
                _status(res["meets_latency_target"]),
            ),
            (
                f"hostile bodies, {res['hostile_requests']} requests",
                f"server peak RSS < {res['target_rss_mb']:g} MB",
                f"{res['server_peak_rss_mb']} MB (JSON worker {res['worker_peak_rss_mb']} MB)",
                _status(res["meets_rss_target"]),
            ),
        ]
    return [
        (
            f"POST /status/batch, {res['instances']} instances",
            f"p50 <= {res['target_p50_ms']:g} ms",
            f"p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms",
            _status(res["meets_target"]),
        )
    ]


METHOD: Mapping[str, str] = {
    "cold_convergence": """\
All instances are written in one transaction into an empty database, and the real loop
(`Worker.run_forever`: APScheduler ticks, LISTEN/NOTIFY wake-ups, the batched observer every
30 s) converges them. Every instance wants an OpenRouter key, an AgentMail inbox and a Telnyx
number plus its Railway service, volume, domain and deployment. The simulated providers run in a
child process; every call to them waits 25 ms; deployments succeed at once (so the time measured
is the reconciler's, not a build's). The rate limits are enforced by the reconciler itself, with
its shared Postgres token bucket (`RuntimeOptions.rate_limits`): Railway 50/s, OpenRouter
100/s, AgentMail 100/s, Telnyx 50/s, each with a burst of one second's worth.

*Wall time* is `max(ready_at) - min(created_at)` over the instances, both stamped by Postgres.
*Must-calls* per instance and provider are the mutations a create makes plus the reads it
cannot do without: Railway 5 (`serviceCreate`, `volumeCreate`, `serviceDomainCreate`,
`environmentPatchCommit`, and one `serviceInstance` read to see the deployment succeed),
OpenRouter 1 (`create_key`), AgentMail 1 (`create_inbox`), Telnyx 4 (`search_numbers`, since a
number must be found before it is bought, `order_number`, `update_messaging` to assign the
messaging profile, `update_number` to record the reference the number is found by again).
One-off calls per process (Railway environment, Telnyx messaging profile) are left out. The
*lower bound* is `max over providers of (N x must-calls - burst) / rate`: no client can finish
sooner. The second ratio uses the calls actually made instead of the must-calls; where it is
close to 1 the reconciler kept the bottleneck provider busy the whole time, and the rest of the
gap to the first ratio is extra calls.""",
    "steady_state": """\
The fleet is built by converging every instance through the real reconciler (no rate limits, no
latency), so the rows are exactly what the reconciler writes; the same fleet then serves the two
latency runs. 25 ms of latency is put on every provider call and a **fresh child process**
(`tests/benchmarks/_steady_child.py`), which imports what `reconciler run` imports (the CLI and
the HTTP API) and holds one `Runtime` with the cold-convergence rate limits, runs one
observation cycle (`Observer.inventory()` then `Observer.observe(inventory)`, which is what
`Observer.cycle(collect_garbage=False)` does, in two steps so each is timed), then makes every
row due and runs `Worker.drain()`. The simulator counts the calls of each part; the provider
time is the reconciler's own call-duration histogram. The peak RSS is the child's `VmHWM`
(`/proc/self/status`): on Linux `getrusage(RUSAGE_SELF).ru_maxrss` survives fork and exec, so a
child's starts at its parent's peak; both are shown. The simulator and the fleet build are
other processes, so the number is the reconciler's alone. List pages: Railway lists services in
two paged listings (`environment` for the service instances, `project` for the services; 100 a
page), OpenRouter 100 keys a page (one more, empty, ends the listing), AgentMail 100 inboxes a
page (the fake serves 50), Telnyx 250 numbers a page (its real cap; the fake's default is 20).
The longest event-loop stall is the longest a 5 ms ticker task on the reconciler's loop went
without running (a loop blocked by synchronous work or a garbage-collection pass).""",
    "new_work_latency": """\
The converged fleet is polled continuously: `poll_interval` is 2 s and one pass over the fleet
takes far longer, so there are always due rows and the worker never idles. The real loop runs
(`Worker.run_forever`, the gauges every 5 s, and the observer every 30 s unless paused), with the
cold-convergence rate limits and 25 ms on every provider call. New desired instances (all three
tools) are written one at a time with `store.put`, 0.5 s apart. The latency of one is
`min(observed_resources.intent_at) - desired_instances.created_at`, both stamped by Postgres:
the engine commits a create's intent immediately before the provider call (then one admission
round trip, then the HTTP request), so the first intent marks the first provider call for the
instance to within a millisecond or two. An instance not started within two minutes of the last
write counts as slower than every measured one. The run with the observer paused
(`observe_seconds` 3600) separates the loop's own latency from the observer's effect.""",
    "status_batch": """\
By another engineer (tests/benchmarks/status_batch.py): 10,000 Ready rows seeded with SQL, the
real HTTP API served by a child process pinned to two CPUs, sequential requests for latency and
four concurrent clients for throughput, each answer checked to list all 10,000 services.""",
    "hostile_input": """\
The real HTTP API in a child process pinned to two CPUs, as for `status_batch`. Two senders each
send, round after round: a 7 MB create body of 500,000 tools, a 6 MB one whose env holds two
million empty lists (what `json.loads` is slowest on), one with 900 unknown fields, a 64 MiB body
streamed without `Content-Length`, and one declaring 400 MB. A third client asks `/healthz`
every 20 ms. "closed" answers are refusals the client saw as a closed connection: the server
answered 413 and closed while the client was still uploading. The peak RSS is the server's
`VmHWM`; the JSON worker (`desired_state/http/json_decode.py`, which decodes bodies that could
hold more values than `INLINE_VALUES`) is its own process and shown apart.""",
    "jobs_throughput": jobs_throughput.METHOD,
}


def render(outcomes: list[Outcome], machine_info: Mapping[str, str], command: str, total_seconds: float) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` ({total_seconds / 60:.0f} min). Do not edit by hand: the next run",
        "rewrites this file. Each benchmark is a module of `tests/benchmarks/` with an",
        "`async def run(database_url, **knobs) -> dict` and a `__main__`; `tests/test_benchmarks_smoke.py`",
        "runs every one at a tiny size so the code cannot rot.",
        "",
        "## Summary",
        "",
        "| benchmark | target | result | status |",
        "|---|---|---|---|",
    ]
    for outcome in outcomes:
        for row in summary_rows(outcome):
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine_info.items()]
    lines += [
        "",
        "Everything runs on this one machine: Postgres, the reconciler, the simulated providers (their",
        "own process) and the load, so they compete for the same cores.",
        "",
        "## Commands",
        "",
        "```sh",
        "make bench        # all of them, one embedded Postgres, one shared 10,000-instance fleet; rewrites this file",
        "python -m tests.benchmarks [DATABASE_URL] [--only NAME ...] [--quick] [--output PATH]",
        "# one alone (each builds what it needs; --json prints the result dict, --help the knobs):",
    ]
    lines += [outcome.benchmark.command for outcome in outcomes]
    lines += [
        "```",
        "",
        "Without a URL (and without `SERVICE_DATABASE_URL`) an embedded Postgres is started in a",
        "temporary directory; each benchmark creates its own database on the server and drops it after.",
    ]
    for index, outcome in enumerate(outcomes, 1):
        benchmark = outcome.benchmark
        lines += ["", f"## {index}. {benchmark.title}", ""]
        lines += [f"`tests/benchmarks/{benchmark.module}.py`, {outcome.seconds:.0f} s.", ""]
        if outcome.results is None:
            lines += ["**It did not complete:**", "", "```", (outcome.error or "").strip()[-3000:], "```"]
        else:
            lines += [benchmark.markdown(outcome.results)]
        notes = findings(outcome, outcomes)
        if notes:
            lines += ["", "**Findings.**", ""] + [f"- {note}" for note in notes]
        if benchmark.module != "new_work_latency" or benchmark.name == "new_work_latency_observer_paused":
            lines += ["", "**Method.** " + METHOD[benchmark.module]]
    return "\n".join(lines) + "\n"


def _result(outcomes: list[Outcome], name: str) -> Any:
    return next((o.results for o in outcomes if o.benchmark.name == name), None)


def findings(outcome: Outcome, outcomes: list[Outcome]) -> list[str]:
    """What the numbers say, written from the numbers (so a rerun keeps them true)."""
    r: Any = outcome.results
    if r is None:
        return []
    module = outcome.benchmark.module
    if module == "cold_convergence":
        return _cold_findings(r)
    if module == "steady_state":
        return _steady_findings(r)
    if module == "new_work_latency" and outcome.benchmark.name == "new_work_latency":
        paused = _result(outcomes, "new_work_latency_observer_paused")
        return _latency_findings(r, paused, _result(outcomes, "steady_state"))
    return []


def _cold_findings(r: Any) -> list[str]:
    notes: list[str] = []
    must_telnyx = sum(r["must_per_instance"]["telnyx"].values())
    made = r["calls_per_instance"].get("telnyx", 0.0)
    orders = r["calls"].get("telnyx", {}).get("order_number", 0)
    notes.append(
        f"The bound is set by {r['lower_bound_provider']} on must-calls and by "
        f"{r['actual_calls_bound_provider']} on the calls actually made ({r['actual_calls_bound_seconds']} s, "
        f"ratio {r['ratio_vs_actual_calls']}): the bottleneck provider was kept busy nearly all the time."
    )
    if made > must_telnyx:
        notes.append(
            f"Telnyx took {made} calls per instance against {must_telnyx} must-calls: "
            f"{orders - r['instances']} number orders failed because another instance had just bought the "
            "same number. Every concurrent create searches, gets the same first 20 numbers on sale and picks "
            "one at random (`TelnyxNumberDriver._buy`); each failed order costs one more search and order. "
            "More instances in flight, more collisions."
        )
    notes.append(
        "`batch_size` is the knob that matters. Tuning runs on this machine (1000 instances; not "
        "regenerated by this file): 32 gave ratio 1.02 (Telnyx 4.96 calls per instance), 64 gave 1.18 "
        "(5.67), 128 gave 1.38 (6.32, and 31 admission deferrals). At 64 and above the Telnyx collisions "
        "make Telnyx, not Railway, the bottleneck; at 32 Railway stays busy and collisions stay cheap."
    )
    if r["outcomes"].get("throttled"):
        notes.append(
            f"{r['outcomes']['throttled']} passes were deferred by the admission (a wait over its 2 s "
            "`max_sleep`). A create deferred before its first request left clears its committed intent, so "
            "its next pass creates at once; one deferred after a request of it left may have landed, and "
            "its next pass looks the resource up by name first (listing calls at the provider). Before that "
            "distinction (`providers.http.counting_sent`) every deferral cost a lookup: on a loaded machine "
            "236 deferrals made 6.25 Railway calls per instance and the ratio 1.275."
        )
    return notes


def _steady_findings(r: Any) -> list[str]:
    notes: list[str] = []
    waited: dict[str, float] = r["cycle_provider_seconds_by_provider"]
    slowest = max(waited, key=waited.__getitem__) if waited else None
    if slowest is not None:
        pages = r["cycle_calls_by_provider"].get(slowest, 0)
        per_page = waited[slowest] / pages if pages else 0.0
        notes.append(
            f"The cycle's {r['cycle_seconds']} s are mostly the providers': {r['cycle_provider_seconds']} s waiting "
            f"on calls, {waited[slowest]} s of it on {pages} {slowest} pages ({per_page:.2f} s a page, against "
            "25 ms of set latency: the fakes filter and sort everything they hold to serve a page, on one event "
            "loop). The reconciler's own part: "
            f"{r['cycle_cpu_seconds']} s of CPU in all, {r['cycle_diff_seconds']} s to diff the recorded rows "
            f"against the listings, and its event loop never stalled longer than {r['cycle_longest_stall_seconds']} s."
        )
    base, listed, peak = r["rss_at_start_mb"], r["rss_after_inventory_mb"], r["peak_rss_mb"]
    verdict = "meets" if r["meets_rss_target"] else "misses"
    notes.append(
        f"Peak RSS {peak} MB {verdict} the {r['target_rss_mb']:g} MB target: {base} MB after start-up, {listed} MB "
        "with every provider listed. What keeps it there (`reconciler/observe.py`): each listed resource is "
        "kept as its name and the fields the diff compares (`Listed`), the recorded rows are diffed "
        "`RECORDED_PAGE_ROWS` (1,000) at a time instead of all 70,000 at once, and every HTTP answer is freed "
        "as soon as it is decoded (httpx ties a response and its stream in a reference cycle, which left every "
        "list page alive until a full garbage collection). Measured with tracemalloc on a 2,000-instance fleet, "
        "the observation cycle's peak went from 27 MB to 9 MB with these changes; before them this benchmark "
        "measured 246 MB at 10,000."
    )
    notes.append(
        f"Building the fleet through the reconciler took {r['fleet_build_seconds']} s, bound by the simulator "
        "(several of the fakes' creates scan what they hold: a Telnyx order copies its whole inventory, an "
        "AgentMail create scans every inbox), so the fleet is built once and shared by the latency runs."
    )
    return notes


def _latency_findings(r: Any, paused: Any, steady: Any) -> list[str]:
    notes: list[str] = []
    p99 = r["p99_seconds"] if r["p99_seconds"] is not None else "not reached"
    if paused is not None:
        paused_p99 = paused["p99_seconds"] if paused["p99_seconds"] is not None else "not reached"
        notes.append(
            f"With the observer paused: p50 {paused['p50_seconds']} s, p99 {paused_p99} s, while the loop ran "
            f"{paused['passes_per_second_while_writing']} periodic passes a second. With the observer listing "
            f"every provider every 30 s: p50 {r['p50_seconds']} s, p99 {p99} s ({r['started']} of {r['writes']} "
            f"started), {r['passes_per_second_while_writing']} passes a second."
        )
    notes.append(
        "Why new work does not queue behind the polls: a write wakes the loop at once (NOTIFY); the drain is a "
        "pipeline that claims again as soon as a quarter of its `batch_size` slots are free, not after its "
        "slowest pass; three quarters of every claim are reserved for new and changed rows, ranked ahead of "
        "retries and polls (`reconciler/queries.py`, `CLAIM_DUE`); and the observer diffs its rows a page at a "
        "time, so it never holds the event loop for long."
    )
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "database_url", nargs="?", help="Postgres server URL; default: SERVICE_DATABASE_URL or embedded"
    )
    parser.add_argument("--only", action="append", choices=[b.name for b in BENCHMARKS], help="run only these")
    parser.add_argument("--quick", action="store_true", help="tiny sizes; print the document instead of writing it")
    parser.add_argument("--output", type=Path, help=f"where to write the document (default {DOC.relative_to(ROOT)})")
    parser.add_argument(
        "--render",
        action="store_true",
        help=f"run nothing: rewrite the document from the results of the last full run ({RESULTS.relative_to(ROOT)})",
    )
    args = parser.parse_args()
    if args.render:
        saved = json.loads(RESULTS.read_text())
        outcomes = [
            Outcome(next(b for b in BENCHMARKS if b.name == o["name"]), o["seconds"], o["results"], o["error"])
            for o in saved["outcomes"]
        ]
        (args.output or DOC).write_text(render(outcomes, saved["machine"], saved["command"], saved["seconds"]))
        print(f"wrote {args.output or DOC} from {RESULTS.relative_to(ROOT)}")
        return
    command = "make bench" if not (args.only or args.quick or args.database_url) else " ".join(
        ["python -m tests.benchmarks", *sys.argv[1:]]
    )
    url = args.database_url or os.environ.get("SERVICE_DATABASE_URL")
    started = time.monotonic()
    with postgres_server(url) as (server_url, embedded):
        info = machine(server_url, embedded)
        outcomes = asyncio.run(run_benchmarks(server_url, args.only, quick=args.quick))
    total = time.monotonic() - started
    document = render(outcomes, info, command, total)
    output = args.output or (None if args.quick else DOC)
    if output == DOC:
        saved = [
            {"name": o.benchmark.name, "seconds": o.seconds, "results": o.results, "error": o.error} for o in outcomes
        ]
        payload = {"command": command, "machine": info, "seconds": total, "outcomes": saved}
        RESULTS.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if output is None:
        print(document)
    else:
        output.write_text(document)
        print(f"wrote {output}")
    if any(outcome.results is None for outcome in outcomes):
        sys.exit(1)


@contextlib.contextmanager
def postgres_server(url: str | None) -> Iterator[tuple[str, bool]]:
    """``(server_url, embedded)``: the given URL, or an embedded Postgres for the duration."""
    if url:
        yield url, False
        return
    with (
        tempfile.TemporaryDirectory(prefix="rpgb") as directory,
        EmbeddedPostgres(Path(directory) / "data") as embedded,
    ):
        yield embedded, True


if __name__ == "__main__":
    main()
