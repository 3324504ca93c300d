"""Benchmark: ``POST /status/batch`` over 10,000 instances (target: p50 <= 50 ms on 2 cores).

The pool manager calls ``status/batch`` on every tick, with no filter, so the unfiltered answer
for the whole fleet is the number that matters. The benchmark:

1. creates a fresh database ``reconciler_bench`` on the server of the given URL (never touching
   the database the URL names) and migrates it;
2. seeds 10,000 Ready rows into ``desired_instances`` and ``instance_infra`` with two
   ``INSERT ... SELECT generate_series`` statements;
3. serves the real app (``desired_state.http.create_app`` + ``serve``) in a child process pinned to
   two CPUs (``sched_setaffinity``, where the OS has it), so the load generator does not share
   the server's event loop;
4. measures sequential requests (latency percentiles) and then concurrent ones (requests per
   second), checking that every answer lists all 10,000 services.

Run it with ``python -m tests.benchmarks.status_batch [DATABASE_URL]``; without a URL (and without
``SERVICE_DATABASE_URL``) it starts the embedded Postgres (``reconciler.db.EmbeddedPostgres``) in
a temporary directory. It prints a markdown table; ``run()`` returns the same numbers as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from reconciler.db import EmbeddedPostgres, create_database, migrate
from tests.benchmarks._harness import serving
from tests.support import free_port

BENCH_DATABASE = "reconciler_bench"
API_KEY = "benchmark-api-key"
ROOT = Path(__file__).resolve().parents[2]
TARGET_P50_MS = 50.0

SEED_DESIRED = """
INSERT INTO desired_instances (instance_id, name, spec, phase, observed_generation, ready_at)
SELECT 'bench' || lpad(g::text, 7, '0'), '',
       '{"tools": ["openrouter", "agentmail"], "env": {}, "image": null}'::jsonb, 'Ready', 1, now()
  FROM generate_series(1, %(count)s) AS g
"""

SEED_INFRA = """
INSERT INTO instance_infra (instance_id, provider, provider_service_id, provider_env_id,
                            provider_project_id, url, deploy_status, runtime_image, volume_id)
SELECT 'bench' || lpad(g::text, 7, '0'), 'railway', md5('svc' || g), 'env-bench', 'proj-bench',
       'https://convos-agent-bench' || lpad(g::text, 7, '0') || '.up.railway.app',
       (ARRAY['SUCCESS', 'SUCCESS', 'SUCCESS', 'BUILDING', 'SLEEPING'])[1 + g %% 5],
       'ghcr.io/xmtplabs/convos-runtime:latest', md5('vol' || g)
  FROM generate_series(1, %(count)s) AS g
"""

# The child process: the real app and server, pinned to the given CPUs, until SIGTERM.
SERVER_SCRIPT = """
import asyncio, os, signal
from desired_state.http import ApiConfig, create_app, serve

cpus = int(os.environ["BENCH_CPUS"])
if hasattr(os, "sched_setaffinity") and cpus > 0:
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, available[:cpus])

async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    config = ApiConfig(
        api_key=os.environ["BENCH_API_KEY"],
        database_url=os.environ["BENCH_DATABASE_URL"],
        project_id="proj-bench",
        environment_id="env-bench",
    )
    await serve(create_app(config), "127.0.0.1", int(os.environ["BENCH_PORT"]), stop)

asyncio.run(main())
"""


def prepare_database(server_url: str, count: int) -> str:
    """A fresh, migrated ``reconciler_bench`` database holding ``count`` Ready instances."""
    url = create_database(server_url, BENCH_DATABASE)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SEED_DESIRED, {"count": count})
        conn.execute(SEED_INFRA, {"count": count})
        conn.execute("ANALYZE")
    return url


def drop_database(server_url: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")


@contextlib.asynccontextmanager
async def serve_app(database_url: str, cpus: int) -> Any:
    """The real app in a child process pinned to ``cpus``: yields its root URL and pid."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_DATABASE_URL": database_url,  # in the environment, not argv: ps would show a password
        "BENCH_API_KEY": API_KEY,
        "BENCH_PORT": str(port),
        "BENCH_CPUS": str(cpus),
    }
    process = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT], env=env, cwd=ROOT)
    root = f"http://127.0.0.1:{port}"
    async with serving(process, root, "/healthz", start_within=30, stop_within=15) as served:
        yield served


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run(
    database_url: str,
    *,
    instances: int = 10_000,
    sequential: int = 100,
    concurrent: int = 200,
    concurrency: int = 4,
    cpus: int = 2,
) -> dict[str, object]:
    """Seed, serve, measure; returns the numbers (times in milliseconds)."""
    bench_url = prepare_database(database_url, instances)
    try:
        async with (
            serve_app(bench_url, cpus) as (root, _),
            httpx.AsyncClient(
                base_url=root,
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=60,
                limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            ) as client,
        ):

            async def one() -> tuple[float, int]:
                started = time.perf_counter()
                response = await client.post("/status/batch")
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                return elapsed * 1000, len(response.content)

            first = await client.post("/status/batch")
            first.raise_for_status()
            listed = len(first.json()["services"])
            if listed != instances:
                raise RuntimeError(f"status/batch listed {listed} services, expected {instances}")
            for _ in range(5):  # warm up: pool connections, plan cache
                await one()

            latencies = [(await one())[0] for _ in range(sequential)]
            size = len(first.content)

            started = time.perf_counter()
            remaining = concurrent

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await one()

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall = time.perf_counter() - started

            filtered_ids = [f"bench{n:07d}" for n in range(1, 101)]
            filtered: list[float] = []
            for _ in range(20):
                began = time.perf_counter()
                (await client.post("/status/batch", json={"instanceIds": filtered_ids})).raise_for_status()
                filtered.append((time.perf_counter() - began) * 1000)
    finally:
        drop_database(database_url)

    p50 = statistics.median(latencies)
    return {
        "instances": instances,
        "response_bytes": size,
        "server_cpus": cpus if hasattr(os, "sched_setaffinity") else os.cpu_count(),
        "p50_ms": round(p50, 1),
        "p95_ms": round(_percentile(latencies, 0.95), 1),
        "p99_ms": round(_percentile(latencies, 0.99), 1),
        "requests_per_second": round(concurrent / wall, 1),
        "concurrency": concurrency,
        "filtered_100_p50_ms": round(statistics.median(filtered), 1),
        "target_p50_ms": TARGET_P50_MS,
        "meets_target": p50 <= TARGET_P50_MS,
    }


def markdown(results: dict[str, object]) -> str:
    rows = [
        ("instances", results["instances"]),
        ("response size (bytes)", results["response_bytes"]),
        ("server CPUs", results["server_cpus"]),
        ("p50 latency (ms)", results["p50_ms"]),
        ("p95 latency (ms)", results["p95_ms"]),
        ("p99 latency (ms)", results["p99_ms"]),
        (f"requests/s ({results['concurrency']} concurrent)", results["requests_per_second"]),
        ("p50, filtered to 100 ids (ms)", results["filtered_100_p50_ms"]),
        (f"p50 <= {results['target_p50_ms']:g} ms", "yes" if results["meets_target"] else "NO"),
    ]
    lines = ["| POST /status/batch | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "database_url",
        nargs="?",
        help="Postgres server URL (a database reconciler_bench is created on it); default: embedded",
    )
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs the API server is pinned to")
    args = parser.parse_args()
    url = args.database_url or os.environ.get("SERVICE_DATABASE_URL")
    if url:
        results = asyncio.run(run(url, instances=args.instances, cpus=args.cpus))
    else:
        with (
            tempfile.TemporaryDirectory(prefix="rpgb") as directory,
            EmbeddedPostgres(Path(directory) / "data") as embedded,
        ):
            results = asyncio.run(run(embedded, instances=args.instances, cpus=args.cpus))
    print(markdown(results))


if __name__ == "__main__":
    main()
