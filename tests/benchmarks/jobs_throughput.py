"""Benchmark: paid no-op jobs through our job loop, side by side with procrastinate (issue 14, part 1).

One Postgres server, one run, three parts, each on a fresh database of its own:

1. **procrastinate** (3.10, the closest Python peer; a benchmark-only dependency, the ``bench``
   extra): ``jobs`` no-op jobs enqueued with ``batch_defer_async`` in batches of 1,000, then
   ``VACUUM ANALYZE``, then drained by its own worker, ``run_worker_async(wait=False)``, once per
   concurrency in ``procrastinate_concurrency``. Each burn-down runs in a fresh process of its own,
   ``repeats`` rounds of them; each side's median run is compared (procrastinate's at the
   concurrency whose median is best).
2. **Ours**: ``callers`` callers are created and credited, then ``jobs`` paid no-op jobs
   (``util.delay-echo`` with ``seconds: 0``, 1 credit each, callers taken in turn) are admitted
   through the admission code (:func:`desired_state.services.intake.admit`, the ``paid_admit``
   transaction: key, rate limit, balance, charge, job row, NOTIFY) from ``admit_connections``
   connections; ``VACUUM ANALYZE``; then the job loop ``reconciler run`` runs
   (:meth:`reconciler.jobs.runner.JobRunner.run_forever` of a :class:`reconciler.runtime.Runtime`
   built with ``reconciler run``'s defaults) until no job is live, and the ledger audit (I1-I7)
   runs over the result. The drain time is from the loop's start to the last
   ``finished_at`` (stamped by the loop's clock), so the watcher that notices the end adds nothing.
3. **HTTP admission**: the real ``reconciler run`` (API and loop, a child process, the simulated
   providers behind it) takes ``POST /api/services/invoke/util/delay-echo`` with ``seconds: 0``
   from ``http_clients`` concurrent clients, each its own caller with its own connection, for
   ``http_seconds``, while its loop drains what they admit; then the audit runs again.

Run it alone with ``python -m tests.benchmarks.jobs_throughput [DATABASE_URL] [--jobs N ...]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql

from desired_state.services import callers as caller_store
from desired_state.services import intake, ledger
from desired_state.services.builtin import DELAY_ECHO, builtin_registry
from reconciler.db import create_database, migrate
from reconciler.engine import EngineSettings
from reconciler.gc_tuning import settle_after_start_up
from reconciler.metrics import Metrics
from reconciler.runtime import Runtime, RuntimeOptions
from reconciler.settings import load_settings
from tests.benchmarks._harness import ROOT, cli, percentile, quiet_logs, serving, simulated_env, simulator_process
from tests.support import free_port

QUICK: dict[str, Any] = {
    "jobs": 200,
    "callers": 10,
    "admit_connections": 4,
    "procrastinate_concurrency": (10,),
    "http_clients": 4,
    "http_seconds": 2.0,
    "repeats": 1,
}
"""The smoke size (``python -m tests.benchmarks --quick`` and the test suite): a few seconds."""
TIMES = "\N{MULTIPLICATION SIGN}"
"""The sign the ratio is written with (3.1 and this sign), as issue 14 asks."""
TARGET_RATIO = 5.0
TARGET_HTTP_P99_MS = 50.0
ENQUEUE_BATCH = 1000
API_KEY = "benchmark-api-key"
NOWHERE = "http://127.0.0.1:9"
"""Provider base URL of the in-process runtime: only its job loop runs, which calls no provider."""

PROCRASTINATE_DATABASE = "bench_procrastinate"
OUR_DATABASE = "bench_paid_jobs"
LIVE_JOBS = "SELECT count(*) FROM service_jobs WHERE status IN ('pending', 'running')"
OUR_FIGURES = """
SELECT count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) AS total,
       max(finished_at) AS last_finished,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY finished_at - created_at) AS admitted_p50,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY finished_at - created_at) AS admitted_p99,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY finished_at - started_at) AS claimed_p50,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY finished_at - started_at) AS claimed_p99
  FROM service_jobs WHERE created_at >= %(since)s AND created_at < %(until)s
"""
PROCRASTINATE_STATUSES = "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1"
# What a drain cost the server: commits in this database and WAL written (the whole server; one
# part runs at a time). Finished backends have flushed their statistics.
SERVER_COUNTERS = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()), pg_current_wal_lsn()
"""
WAL_BYTES = "SELECT pg_wal_lsn_diff(%(after)s, %(before)s)"
COMMIT_PROBE = "INSERT INTO bench_commit_probe VALUES (1)"
COMMIT_PROBES = 50


def procrastinate_installed() -> bool:
    return importlib.util.find_spec("procrastinate") is not None


@contextlib.contextmanager
def fresh_database(server_url: str, name: str, *, migrated: bool) -> Iterator[str]:
    """A new database ``name`` on the server (ours migrated, or empty); dropped afterwards."""
    url = create_database(server_url, name)
    if migrated:
        migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def vacuum_analyze(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE")


@dataclass(frozen=True)
class Counters:
    commits: int
    wal_lsn: str


async def counters(url: str) -> Counters:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await (await conn.execute(SERVER_COUNTERS)).fetchone()
    assert row is not None
    return Counters(int(row[0]), str(row[1]))


async def cost_per_job(url: str, before: Counters, jobs: int) -> dict[str, float]:
    """Commits and WAL bytes per job since ``before`` (the probe's own few commits included)."""
    after = await counters(url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        wal = await (await conn.execute(WAL_BYTES, {"after": after.wal_lsn, "before": before.wal_lsn})).fetchone()
    assert wal is not None
    return {
        "commits_per_job": round((after.commits - before.commits) / jobs, 3),
        "wal_bytes_per_job": round(float(wal[0]) / jobs),
    }


async def commit_milliseconds(url: str) -> float:
    """The median time of one single-row INSERT committed on its own: the WAL flush every commit waits for."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE bench_commit_probe (n integer)")
        times = []
        for _ in range(COMMIT_PROBES):
            began = time.perf_counter()
            await conn.execute(COMMIT_PROBE)
            times.append((time.perf_counter() - began) * 1000)
        await conn.execute("DROP TABLE bench_commit_probe")
    return round(statistics.median(times), 2)


def machine_load() -> float:
    """The one-minute load average as a part starts: the machine is shared, so say how busy it was."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else 0.0


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each Postgres backend connected to ``database``, by pid (Linux ``/proc``; else empty).

    A backend's title is ``postgres: <user> <database> <client> <state>``.
    """
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].split()
        except OSError:
            continue
        if len(title) >= 3 and title[0] == b"postgres:" and title[2] == database.encode():
            cpu = process_cpu_seconds(int(entry.name))
            if cpu is not None:
                found[int(entry.name)] = cpu
    return found


@dataclass(frozen=True)
class CpuMark:
    """Where the CPU went from a mark on: this process (the queue's Python) and the database's backends."""

    python: float
    postgres: dict[int, float]

    @classmethod
    def now(cls, database: str) -> CpuMark:
        return cls(time.process_time(), backend_cpu(database))

    def per_job_ms(self, later: CpuMark, jobs: int) -> dict[str, float]:
        postgres = sum(cpu - self.postgres.get(pid, 0.0) for pid, cpu in later.postgres.items())
        return {
            "python_cpu_ms_per_job": round((later.python - self.python) * 1000 / jobs, 3),
            "postgres_cpu_ms_per_job": round(postgres * 1000 / jobs, 3),
        }


def _ms(delta: Any) -> float | None:
    return round(delta.total_seconds() * 1000, 1) if delta is not None else None


# -- 1. procrastinate ----------------------------------------------------------------------------


async def procrastinate_burn_down(server_url: str, jobs: int, concurrency: int) -> dict[str, Any]:
    """Enqueue ``jobs`` no-op jobs, VACUUM ANALYZE, drain them with procrastinate's own worker."""
    import procrastinate

    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    with fresh_database(server_url, PROCRASTINATE_DATABASE, migrated=False) as url:
        app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=max(10, concurrency + 2))
        )

        @app.task(name="noop", queue="bench")
        async def noop(n: int) -> None:
            return None

        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            started = time.perf_counter()
            for first in range(0, jobs, ENQUEUE_BATCH):
                batch: list[Any] = [{"n": n} for n in range(first, min(jobs, first + ENQUEUE_BATCH))]
                await noop.batch_defer_async(*batch)
            enqueue_seconds = time.perf_counter() - started
            await vacuum_analyze(url)
            before = await counters(url)
            load_average = machine_load()
            mark = CpuMark.now(PROCRASTINATE_DATABASE)
            started = time.perf_counter()
            await app.run_worker_async(
                queues=["bench"],
                concurrency=concurrency,
                wait=False,
                listen_notify=False,
                install_signal_handlers=False,
                delete_jobs="never",
            )
            drain_seconds = time.perf_counter() - started
            cpu = mark.per_job_ms(CpuMark.now(PROCRASTINATE_DATABASE), jobs)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            statuses = {status: int(n) for status, n in await (await conn.execute(PROCRASTINATE_STATUSES)).fetchall()}
        cost = await cost_per_job(url, before, jobs)
    return {
        **cost,
        **cpu,
        "load_average": load_average,
        "concurrency": concurrency,
        "enqueue_jobs_per_second": round(jobs / enqueue_seconds, 1),
        "drain_seconds": round(drain_seconds, 2),
        "drain_jobs_per_second": round(jobs / drain_seconds, 1),
        "statuses": statuses,
        "complete": statuses == {"succeeded": jobs},
    }


# -- 2. ours: admission, then the loop's burn-down -----------------------------------------------


async def create_callers(conn: psycopg.AsyncConnection[Any], prefix: str, count: int, credits: int) -> list[Any]:
    """``count`` callers, each with a key and ``credits`` credits; returns their IssuedKeys."""
    issued = []
    for n in range(count):
        email = f"{prefix}{n}@bench.example.com"
        issued.append(await caller_store.create_caller(conn, email))
        await ledger.grant(conn, email, credits, "benchmark")
    return issued


async def admit_all(url: str, caller_ids: Sequence[Any], jobs: int, connections: int) -> float:
    """Admit ``jobs`` delay-echo jobs through intake.admit from ``connections`` connections; seconds taken."""
    registry = builtin_registry()
    next_job = 0

    async def admitter() -> None:
        nonlocal next_job
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while next_job < jobs:
                n = next_job
                next_job += 1
                await intake.admit(conn, registry, caller_ids[n % len(caller_ids)], DELAY_ECHO, {"seconds": 0})

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await intake.sync_services(conn, registry)
    started = time.perf_counter()
    await asyncio.gather(*(admitter() for _ in range(connections)))
    return time.perf_counter() - started


async def run_loop_until_drained(url: str, options: RuntimeOptions, jobs: int) -> tuple[datetime, dict[str, float]]:
    """Run ``reconciler run``'s job loop until no job is pending or running; returns when it
    started and the CPU it took per job (marked before its pool closes, so no backend is gone)."""
    runtime = Runtime(load_settings(simulated_env_for(NOWHERE)), url, options, Metrics(CollectorRegistry()))
    stop = asyncio.Event()
    mark = CpuMark.now(OUR_DATABASE)
    cpu: dict[str, float] = {}

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                await asyncio.sleep(0.05)
                row = await (await conn.execute(LIVE_JOBS)).fetchone()
                if row is not None and row[0] == 0:
                    cpu.update(mark.per_job_ms(CpuMark.now(OUR_DATABASE), jobs))
                    stop.set()

    async with runtime:
        started_at = datetime.now(UTC)
        watcher = asyncio.create_task(watch())
        try:
            await runtime.jobs.run_forever(stop)
        finally:
            stop.set()
            await watcher
    return started_at, cpu


def simulated_env_for(root: str) -> dict[str, str]:
    from reconciler import demo

    return demo.simulated_env(root, "proj-bench")


async def our_figures(conn: psycopg.AsyncConnection[Any], since: datetime, until: datetime) -> dict[str, Any]:
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute(OUR_FIGURES, {"since": since, "until": until})
        row = await cur.fetchone()
    assert row is not None
    return row


async def audit(url: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        report = await ledger.audit(conn)
    return {
        "clean": report.clean,
        "violations": [str(v) for v in report.violations[:5]],
        "escrow": report.escrow,
        "revenue": report.revenue,
    }


async def our_burn_down(
    server_url: str, jobs: int, callers: int, admit_connections: int, options: RuntimeOptions
) -> dict[str, Any]:
    with fresh_database(server_url, OUR_DATABASE, migrated=True) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            per_caller = -(-jobs // callers)
            issued = await create_callers(conn, "burn", callers, per_caller)
        admitted_from = datetime.now(UTC)
        admit_seconds = await admit_all(url, [key.caller.caller_id for key in issued], jobs, admit_connections)
        await vacuum_analyze(url)
        before = await counters(url)
        load_average = machine_load()
        drain_started, cpu = await run_loop_until_drained(url, options, jobs)
        cost = await cost_per_job(url, before, jobs)
        commit_ms = await commit_milliseconds(url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            figures = await our_figures(conn, admitted_from, datetime.now(UTC))
        report = await audit(url)
    drain_seconds = (figures["last_finished"] - drain_started).total_seconds()
    return {
        **cost,
        **cpu,
        "load_average": load_average,
        "commit_ms": commit_ms,
        "callers": callers,
        "admit_connections": admit_connections,
        "admit_jobs_per_second": round(jobs / admit_seconds, 1),
        "drain_seconds": round(drain_seconds, 2),
        "drain_jobs_per_second": round(jobs / drain_seconds, 1),
        "completed": int(figures["completed"]),
        "total": int(figures["total"]),
        "complete": figures["completed"] == figures["total"] == jobs,
        "admission_to_terminal_p50_ms": _ms(figures["admitted_p50"]),
        "admission_to_terminal_p99_ms": _ms(figures["admitted_p99"]),
        "claim_to_terminal_p50_ms": _ms(figures["claimed_p50"]),
        "claim_to_terminal_p99_ms": _ms(figures["claimed_p99"]),
        "job_concurrency": options.jobs.concurrency,
        "job_batch_size": options.jobs.batch_size,
        "pool_size": options.pool_size,
        "audit": report,
    }


# -- 3. HTTP admission while the loop drains ----------------------------------------------------


class KeepAliveClient:
    """One caller's HTTP/1.1 keep-alive connection posting the same request again and again.

    The load generator shares the machine with the server and Postgres, so it is kept cheap: the
    request's bytes are built once and the answer is read by its Content-Length (httpx cost about
    1 ms of CPU per request here, as much as the server's own work).
    """

    def __init__(self, root: str, path: str, secret: str, body: bytes) -> None:
        address = httpx.URL(root)
        self._host, self._port = address.host, address.port or 80
        self._request = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nAuthorization: Bearer {secret}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveClient:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def post(self) -> int:
        """Send the request; the answer's status code (its body read and dropped)."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(self._request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
        await self._reader.readexactly(length)
        return int(lines[0].split(" ", 2)[1])


@contextlib.asynccontextmanager
async def reconciler_run(url: str) -> AsyncIterator[tuple[str, int]]:
    """``reconciler run`` (API and loop) in a child process against ``url``; yields the API root and its pid."""
    port = free_port()
    async with simulator_process() as sim:
        env = {
            **os.environ,
            **simulated_env(sim),
            "PYTHONPATH": str(ROOT),
            "SERVICE_DATABASE_URL": url,
            "SERVICES_API_KEY": API_KEY,
            "PORT": str(port),
            "LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-c", "import cli; cli.main()", "run", "--host", "127.0.0.1", "--metrics-port", "0"]
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        root = f"http://127.0.0.1:{port}"
        async with serving(process, root, "/api/services/catalog", start_within=60, stop_within=30) as served:
            yield served


async def http_admission(server_url: str, clients: int, seconds: float) -> dict[str, Any]:
    with fresh_database(server_url, "bench_paid_http", migrated=True) as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            issued = await create_callers(conn, "http", clients, 1_000_000)
        latencies: list[float] = []
        codes: Counter[int] = Counter()
        path = f"/api/services/invoke/{DELAY_ECHO.replace('.', '/')}"
        async with reconciler_run(url) as (root, pid):

            async def client(secret: str, until: float | None, count: int) -> None:
                async with KeepAliveClient(root, path, secret, b'{"seconds": 0}') as http:
                    done = 0
                    while (until is None and done < count) or (until is not None and time.perf_counter() < until):
                        began = time.perf_counter()
                        status = await http.post()
                        if until is not None:
                            latencies.append((time.perf_counter() - began) * 1000)
                            codes[status] += 1
                        done += 1

            # Warm-up (not counted): each client's connection, the server's pool, plan caches.
            await asyncio.gather(*(client(key.secret, None, 3) for key in issued))
            window_from = datetime.now(UTC)
            load_average = machine_load()
            server_cpu_before = process_cpu_seconds(pid)
            client_cpu_before = time.process_time()
            until = time.perf_counter() + seconds
            started = time.perf_counter()
            await asyncio.gather(*(client(key.secret, until, 0) for key in issued))
            wall = time.perf_counter() - started
            server_cpu_after = process_cpu_seconds(pid)
            client_cpu = time.process_time() - client_cpu_before
            window_to = datetime.now(UTC)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                backlog_at_end = int((await (await conn.execute(LIVE_JOBS)).fetchone() or (0,))[0])
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    row = await (await conn.execute(LIVE_JOBS)).fetchone()
                    if row is not None and row[0] == 0:
                        break
                    await asyncio.sleep(0.1)
                figures = await our_figures(conn, window_from, window_to)
        report = await audit(url)
    accepted = codes.get(202, 0)
    server_cpu = (
        server_cpu_after - server_cpu_before
        if server_cpu_after is not None and server_cpu_before is not None
        else None
    )
    p99 = percentile(latencies, 0.99) if latencies else None
    return {
        "clients": clients,
        "load_average": load_average,
        "server_cpu_ms_per_request": round(server_cpu * 1000 / len(latencies), 2) if server_cpu and latencies else None,
        "client_cpu_ms_per_request": round(client_cpu * 1000 / len(latencies), 2) if latencies else None,
        "seconds": round(wall, 2),
        "requests": len(latencies),
        "status_codes": {str(code): n for code, n in sorted(codes.items())},
        "requests_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p99_ms": round(p99, 1) if p99 is not None else None,
        "backlog_at_end": backlog_at_end,
        "completed": int(figures["completed"]),
        "admitted": int(figures["total"]),
        "complete": accepted == figures["completed"] == figures["total"],
        "admission_to_terminal_p50_ms": _ms(figures["admitted_p50"]),
        "admission_to_terminal_p99_ms": _ms(figures["admitted_p99"]),
        "audit": report,
        "meets_target": p99 is not None and p99 <= TARGET_HTTP_P99_MS and accepted == len(latencies),
    }


# -- the run -------------------------------------------------------------------------------------


async def run(
    server_url: str,
    *,
    jobs: int = 10_000,
    callers: int = 100,
    admit_connections: int = 8,
    procrastinate_concurrency: Sequence[int] = (1, 10, 50),
    job_concurrency: int = 0,
    job_batch_size: int = 0,
    http_clients: int = 32,
    http_seconds: float = 20.0,
    repeats: int = 3,
) -> dict[str, object]:
    """All three parts; ``job_concurrency``/``job_batch_size`` 0 keep ``reconciler run``'s defaults,
    ``http_seconds`` 0 skips part 3, and procrastinate's part is skipped when it is not installed.

    The machine is shared, so its load drifts from minute to minute: the burn-downs run
    ``repeats`` rounds, each round procrastinate at every concurrency and then ours, and each side
    is represented by its median run (procrastinate at the concurrency whose median is best)."""
    quiet_logs()
    peer: list[dict[str, Any]] = []
    our_runs: list[dict[str, Any]] = []
    installed = procrastinate_installed()
    for repeat in range(1, repeats + 1):
        if installed:
            for concurrency in procrastinate_concurrency:
                task = {"part": "procrastinate", "jobs": jobs, "concurrency": concurrency}
                peer.append({"run": repeat, **await burn_down_in_child(server_url, task)})
        task = {
            "part": "ours",
            "jobs": jobs,
            "callers": callers,
            "admit_connections": admit_connections,
            "job_concurrency": job_concurrency,
            "job_batch_size": job_batch_size,
        }
        our_runs.append({"run": repeat, **await burn_down_in_child(server_url, task)})
    peer_version = _version("procrastinate") if installed else None
    http = await http_admission(server_url, http_clients, http_seconds) if http_seconds > 0 else None

    ours = median_run(our_runs)
    by_concurrency = [[p for p in peer if p["concurrency"] == c] for c in procrastinate_concurrency]
    medians = [median_run(runs) for runs in by_concurrency if runs]
    best = max(medians, key=lambda p: p["drain_jobs_per_second"]) if medians else None
    ratio = round(ours["drain_jobs_per_second"] / best["drain_jobs_per_second"], 1) if best else None
    return {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "jobs": jobs,
        "procrastinate_version": peer_version,
        "procrastinate": peer,
        "procrastinate_best": best,
        "ours": ours,
        "our_runs": our_runs,
        "repeats": repeats,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_ratio_target": ratio is not None and ratio >= TARGET_RATIO,
        "audit_clean": all(o["audit"]["clean"] for o in our_runs) and (http is None or http["audit"]["clean"]),
        "all_complete": all(o["complete"] for o in our_runs) and all(p["complete"] for p in peer),
        "http": http,
        "target_http_p99_ms": TARGET_HTTP_P99_MS,
    }


def _cores(run: Any) -> str:
    """CPU per job over wall time per job: how many cores a drain kept busy."""
    cpu_ms = run["python_cpu_ms_per_job"] + run["postgres_cpu_ms_per_job"]
    return f"{cpu_ms * run['drain_jobs_per_second'] / 1000:.2f}"


def round_ratios(r: Any) -> list[float]:
    """Each round's ratio: our run against procrastinate's best concurrency in that round."""
    ratios = []
    for ours in r.get("our_runs", []):
        peers = [p["drain_jobs_per_second"] for p in r["procrastinate"] if p["run"] == ours["run"]]
        if peers:
            ratios.append(round(ours["drain_jobs_per_second"] / max(peers), 1))
    return ratios


# -- each burn-down in a fresh process ------------------------------------------------------------

CHILD_TASK = "BENCH_JOBS_CHILD"
"""Set in a child's environment: the burn-down it runs (JSON), the server URL beside it."""


def loop_options(job_concurrency: int = 0, job_batch_size: int = 0) -> RuntimeOptions:
    """``reconciler run``'s runtime options, with the job loop's size changed where asked (0: default)."""
    options = RuntimeOptions(engine=EngineSettings())
    jobs_settings = options.jobs
    if job_concurrency:
        jobs_settings = replace(jobs_settings, concurrency=job_concurrency)
    if job_batch_size:
        jobs_settings = replace(jobs_settings, batch_size=job_batch_size)
    return replace(options, jobs=jobs_settings)


async def burn_down_in_child(server_url: str, task: dict[str, Any]) -> dict[str, Any]:
    """Run one burn-down in a fresh Python process, as a worker process would be: nothing another
    run left in memory (objects, pools, the collector's work) weighs on it, and its CPU is its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), CHILD_TASK: json.dumps(task), "BENCH_DATABASE_URL": server_url}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.benchmarks.jobs_throughput", cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the {task['part']} burn-down exited with code {child.returncode}")
    answer: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return answer


async def child_burn_down(server_url: str, task: dict[str, Any]) -> dict[str, Any]:
    quiet_logs()
    # Both sides get the collector settings `reconciler run` applies once it has started
    # (reconciler/gc_tuning.py): the same treatment, as with VACUUM ANALYZE.
    settle_after_start_up()
    if task["part"] == "procrastinate":
        return await procrastinate_burn_down(server_url, task["jobs"], task["concurrency"])
    options = loop_options(task["job_concurrency"], task["job_batch_size"])
    return await our_burn_down(server_url, task["jobs"], task["callers"], task["admit_connections"], options)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median drain rate (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r["drain_jobs_per_second"])[len(runs) // 2]


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


# -- the document --------------------------------------------------------------------------------


def _mark(ok: object) -> str:
    return "PASS" if ok else "MISS"


def summary_rows(r: Any) -> list[tuple[str, str, str, str]]:
    """(benchmark, target, result, PASS/MISS) rows for the summary table of docs/benchmarks.md."""
    ours = r["ours"]
    best = r["procrastinate_best"]
    rows = []
    if best is not None:
        rows.append(
            (
                f"{r['jobs']:,} paid no-op jobs, our loop vs procrastinate {r['procrastinate_version']}",
                f"drain rate >= {r['target_ratio']:g}{TIMES} procrastinate's (medians of {r['repeats']} runs)",
                f"{ours['drain_jobs_per_second']:,.0f} vs {best['drain_jobs_per_second']:,.0f} jobs/s "
                f"(C={best['concurrency']}) = {r['ratio']:.1f}{TIMES}",
                _mark(r["meets_ratio_target"]),
            )
        )
    else:
        rows.append(
            (
                f"{r['jobs']:,} paid no-op jobs, our loop",
                f"drain rate >= {r['target_ratio']:g}{TIMES} procrastinate's",
                f"{ours['drain_jobs_per_second']:,.0f} jobs/s (procrastinate not installed: no ratio)",
                "MISS",
            )
        )
    rows.append(
        (
            f"{r['jobs']:,} paid no-op jobs, ledger audit after the drain",
            "audit clean (I1-I7), every job completed",
            f"{'clean' if r['audit_clean'] else 'VIOLATIONS'} after each of {r['repeats']} runs, "
            f"{r['jobs']:,}/{r['jobs']:,} completed in each" if r["all_complete"] else "some jobs did not complete",
            _mark(r["audit_clean"] and r["all_complete"]),
        )
    )
    http = r["http"]
    if http is not None:
        rows.append(
            (
                f"POST /api/services/invoke/util/delay-echo, {http['clients']} clients, {http['seconds']:g} s",
                f"p99 <= {r['target_http_p99_ms']:g} ms, every request 202",
                f"{http['requests_per_second']:,.0f} req/s, p50 {http['p50_ms']} ms, p99 {http['p99_ms']} ms",
                _mark(http["meets_target"]),
            )
        )
    return rows


def markdown(r: dict[str, object]) -> str:
    res: Any = r
    ours, http, best = res["ours"], res["http"], res["procrastinate_best"]
    lines = [
        f"Measured {res['measured_at']}, {res['jobs']:,} jobs on each side.",
        "",
        "| run | enqueue / admit (jobs/s) | drain (s) | drain (jobs/s) | commits / job | WAL bytes / job "
        "| Python CPU / job (ms) | Postgres CPU / job (ms) | load average at start | all done |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for peer in res["procrastinate"]:
        lines.append(
            f"| procrastinate {res['procrastinate_version']}, concurrency {peer['concurrency']}, run {peer['run']} "
            f"| {peer['enqueue_jobs_per_second']:,.0f} | {peer['drain_seconds']} | "
            f"{peer['drain_jobs_per_second']:,.0f} | {peer['commits_per_job']} | {peer['wal_bytes_per_job']:,} | "
            f"{peer.get('python_cpu_ms_per_job', '-')} | {peer.get('postgres_cpu_ms_per_job', '-')} | "
            f"{peer['load_average']} | {'yes' if peer['complete'] else peer['statuses']} |"
        )
    for run in res["our_runs"]:
        lines.append(
            f"| ours: `reconciler run`'s job loop (concurrency {run['job_concurrency']}, claim batch "
            f"{run['job_batch_size']}, pool {run['pool_size']}), run {run['run']} "
            f"| {run['admit_jobs_per_second']:,.0f} "
            f"({run['admit_connections']} connections, {run['callers']} callers) | {run['drain_seconds']} | "
            f"{run['drain_jobs_per_second']:,.0f} | {run['commits_per_job']} | {run['wal_bytes_per_job']:,} | "
            f"{run.get('python_cpu_ms_per_job', '-')} | {run.get('postgres_cpu_ms_per_job', '-')} | "
            f"{run['load_average']} | {'yes' if run['complete'] else run['completed']} |"
        )
    if best is not None:
        lines += [
            "",
            f"Compared: the median of our {res['repeats']} runs ({ours['drain_jobs_per_second']:,.0f} jobs/s, run "
            f"{ours['run']}) against the median of procrastinate's runs at its best concurrency, "
            f"{best['concurrency']} ({best['drain_jobs_per_second']:,.0f} jobs/s, run {best['run']}): "
            f"**{res['ratio']:.1f}{TIMES}**.",
        ]
    lines += [
        "",
        f"| ours, per job (run {ours['run']}) | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|",
        f"| admission -> terminal (the whole backlog admitted first) | {ours['admission_to_terminal_p50_ms']} "
        f"| {ours['admission_to_terminal_p99_ms']} |",
        f"| claim -> terminal | {ours['claim_to_terminal_p50_ms']} | {ours['claim_to_terminal_p99_ms']} |",
    ]
    if http is not None:
        lines += [
            f"| admission -> terminal, HTTP admissions while the loop drains | "
            f"{http['admission_to_terminal_p50_ms']} | {http['admission_to_terminal_p99_ms']} |",
            "",
            "| HTTP admission (`reconciler run`, API and loop) | value |",
            "|---|---:|",
            f"| clients (each its own caller and connection) | {http['clients']} |",
            f"| window (s) | {http['seconds']} |",
            f"| requests | {http['requests']:,} |",
            f"| answers | {', '.join(f'{k}: {v:,}' for k, v in http['status_codes'].items())} |",
            f"| requests/s | {http['requests_per_second']:,.0f} |",
            f"| p50 / p99 (ms) | {http['p50_ms']} / {http['p99_ms']} |",
            f"| server CPU per request (ms; the `reconciler run` process, its loop included) | "
            f"{http['server_cpu_ms_per_request']} |",
            f"| load generator CPU per request (ms; this process) | {http['client_cpu_ms_per_request']} |",
            f"| load average at start | {http['load_average']} |",
            f"| jobs still live when the window closed | {http['backlog_at_end']:,} |",
            f"| jobs completed / admitted in the window | {http['completed']:,} / {http['admitted']:,} |",
            f"| ledger audit after | {'clean' if http['audit']['clean'] else http['audit']['violations']} |",
        ]
    audit_text = "clean" if ours["audit"]["clean"] else f"**violations**: {ours['audit']['violations']}"
    lines += ["", f"Ledger audit after the burn-down: {audit_text} (revenue {ours['audit']['revenue']:,} credits)."]
    lines += ["", "**Findings.**", ""] + [f"- {note}" for note in findings(res)]
    return "\n".join(lines)


def findings(r: Any) -> list[str]:
    """Where the time goes, written from the numbers (so a rerun keeps them true)."""
    ours, best, http = r["ours"], r["procrastinate_best"], r["http"]
    slow_flush = ours["commit_ms"] >= 1.0
    notes = [
        f"A lone one-row commit took {ours['commit_ms']} ms after our median run (median of {COMMIT_PROBES}; "
        "the WAL flush, which varies with what else the shared machine writes: 0.1 to 5 ms in our runs). "
        + (
            "At that cost a queue that commits per job is bounded by the flush, not by its work."
            if slow_flush
            else "At that cost the drains are bound by CPU (Python and Postgres on two shared cores), and commits "
            "per job still decide how much of it each job takes."
        )
    ]
    if best is not None:
        notes.append(
            f"procrastinate pays {best['commits_per_job']} commits per job at its best concurrency (each job is "
            "fetched by one call of `procrastinate_fetch_job_v2` and finished by another, each its own "
            f"transaction, and a trigger writes event rows); ours pays {ours['commits_per_job']}: up to "
            f"{ours['job_batch_size']} jobs claimed by one statement, and the ends of the jobs that finish "
            "together written by one statement (`reconciler/jobs/completer.py`: `paid_terminate` per job, so "
            "each still has its own fencing guard, its settlement and its NOTIFY). Per job we write "
            f"{ours['wal_bytes_per_job']:,} WAL bytes against procrastinate's {best['wal_bytes_per_job']:,}: "
            "a paid job also writes its charge and its capture (two transfers) and the idempotency and "
            "ledger bookkeeping."
        )
    if "python_cpu_ms_per_job" in ours:
        split = (
            f"Where our drain's time goes, per job: {ours['python_cpu_ms_per_job']} ms of CPU in the loop's Python "
            f"and {ours['postgres_cpu_ms_per_job']} ms in its Postgres backends, {_cores(ours)} cores busy on average"
        )
        if best is not None and "python_cpu_ms_per_job" in best:
            ours_cpu = ours["python_cpu_ms_per_job"] + ours["postgres_cpu_ms_per_job"]
            peer_cpu = best["python_cpu_ms_per_job"] + best["postgres_cpu_ms_per_job"]
            split += (
                f"; procrastinate: {best['python_cpu_ms_per_job']} ms and {best['postgres_cpu_ms_per_job']} ms, "
                f"{_cores(best)} cores busy. In CPU per job ours is {peer_cpu / ours_cpu:.1f}{TIMES} cheaper"
            )
        notes.append(split + ".")
    notes.append(
        "No hot row: the escrow and revenue accounts keep no cached balance (the audit derives theirs from "
        "the transfers), so the terminations of different callers never queue on one row; a refund updates "
        "only its own caller's balance."
    )
    rounds = round_ratios(r)
    if len(rounds) > 1:
        notes.append(
            "Round by round (ours against procrastinate's best concurrency in the same round): "
            + ", ".join(f"{ratio:.1f}{TIMES}" for ratio in rounds)
            + ". procrastinate's own runs spread from "
            f"{min(p['drain_jobs_per_second'] for p in r['procrastinate']):,.0f} to "
            f"{max(p['drain_jobs_per_second'] for p in r['procrastinate']):,.0f} jobs/s: the shared machine's "
            "load moves both sides, hence the medians."
        )
    if best is not None and not r["meets_ratio_target"]:
        notes.append(
            f"The {r['target_ratio']:g}{TIMES} target is missed on this run ({r['ratio']:.1f}{TIMES}). The loop "
            "already overlaps what it can in one process (claims of 256 with 512 handler slots, so the next "
            "batch is claimed while one runs; two termination batches in flight at once), but on two cores "
            "shared with the load of other processes its rate stays near 1 / (Python + Postgres CPU per job). "
            "What is left is the per-job cost itself: Python (two asyncio tasks per job, input and output "
            "validation, the metrics) and Postgres (`paid_terminate` is plpgsql per row, and the claim and the "
            "termination are two non-HOT updates that touch every index of `service_jobs`; a NOTIFY per "
            "termination); a set-based termination and HOT-friendly indexes are the next steps."
        )
    if http is not None:
        verdict = "meets" if http["meets_target"] else "misses"
        mean_ms = http["clients"] * 1000 / http["requests_per_second"] if http["requests_per_second"] else 0.0
        notes.append(
            f"HTTP admission {verdict} the p99 target: {http['requests_per_second']:,.0f} requests/s, p50 "
            f"{http['p50_ms']} ms, p99 {http['p99_ms']} ms. Each admission is its own transaction (a 202 promises "
            "that the charge and the job are durable) and one round trip: `paid_admit` looks the caller up by the "
            "key's hash itself, and runs in autocommit (no BEGIN or COMMIT round trip), and the pooled connection "
            "is checked without one (`desired_state/http/database.py`). The server spends "
            f"{http['server_cpu_ms_per_request']} ms of CPU per request, its job loop included. "
            f"{http['clients']} clients that each wait for their answer queue for {http['clients']} / (requests per "
            f"second) = {mean_ms:.1f} ms on average; the p99 is the tail above that."
        )
        notes.append(
            "What the tail was, and what fixed it (measured on this machine, 20 s windows): at first, 1,075 "
            "requests/s with a p99 of 71 ms. An event-loop lag probe in the server showed one or two stalls a "
            "second of 50-70 ms, and they were the cyclic garbage collector: full collections that scanned the "
            "few hundred thousand objects start-up builds (modules, routes, schemas, validators) and freed "
            "nothing. `reconciler run` now freezes those objects once it has started and makes young "
            "collections rarer (`reconciler/gc_tuning.py`): no stall over 20 ms since, p99 33 ms. Then the "
            "round trips: a per-checkout liveness query and a separate key lookup took 0.8 ms of server CPU "
            "per request in all; folded away, 0.5 ms."
        )
    return notes


METHOD = """\
`tests/benchmarks/jobs_throughput.py`, on the one Postgres of the run, each part on a fresh
database. **procrastinate** (the `bench` extra): 10,000 no-op `async` tasks enqueued with
`batch_defer_async` in batches of 1,000, `VACUUM ANALYZE`, then drained by
`run_worker_async(queues=["bench"], concurrency=C, wait=False, listen_notify=False,
delete_jobs="never")`, for C in 1, 10 and 50; the best drain is the one compared. **Ours**: 100
callers created and credited, then 10,000 `util.delay-echo` jobs (`seconds: 0`, 1 credit each,
the callers in turn) admitted through `intake.admit` (the `paid_admit` transaction: advisory
lock, key, rate limit, balance, charge, job row, NOTIFY) from 8 connections, `VACUUM ANALYZE`,
then `JobRunner.run_forever` of a `Runtime` built with `reconciler run`'s defaults (the same
loop code; only the job loop runs) until no job is live. Each burn-down's process applies the
garbage-collector settings `reconciler run` applies once started (`reconciler/gc_tuning.py`),
procrastinate's as well. Each of our jobs is claimed in a batch,
run by the real handler, ended by `paid_terminate` (guarded status change, capture escrow ->
revenue, NOTIFY), and the ledger audit (I1-I7) runs over the result. Our drain time is from the
loop's start to the last `finished_at`. Finished rows are kept on both sides. The burn-downs run
three rounds (each round procrastinate at C = 1, 10, 50, then ours, each burn-down in a fresh
Python process that runs only it), since the shared machine's load drifts; each side is
represented by its median run, procrastinate at the concurrency whose median is best. **HTTP**:
the real `reconciler run` (API and loop; the simulated providers behind it, idle) in a child
process; 32 clients, each its own caller and its own keep-alive connection, post `{"seconds":
0}` back to back for 20 s after 3 warm-up requests each; the loop drains what they admit, then
the audit runs again. The load generator shares the 2 cores with the server and Postgres, so it
writes prebuilt request bytes on a keep-alive connection and reads each answer by its
Content-Length (its CPU per request is in the table). The load average at the start of each part
is in the tables: the machine is shared with other work."""


def main() -> None:
    task = os.environ.get(CHILD_TASK)
    if task is not None:
        answer = asyncio.run(child_burn_down(os.environ["BENCH_DATABASE_URL"], json.loads(task)))
        print(json.dumps(answer, default=str))
        return
    cli(
        __doc__.splitlines()[0] if __doc__ else None,
        run,
        markdown,
        {
            "jobs": (int, 10_000, "jobs on each side"),
            "callers": (int, 100, "callers the paid jobs are spread over"),
            "admit_connections": (int, 8, "connections admitting at once"),
            "job_concurrency": (int, 0, "the job loop's concurrency (0: reconciler run's default)"),
            "job_batch_size": (int, 0, "the job loop's claim batch (0: reconciler run's default)"),
            "http_clients": (int, 32, "concurrent HTTP clients"),
            "http_seconds": (float, 20.0, "HTTP window (0 skips it)"),
            "repeats": (int, 3, "rounds of the burn-downs (each side's median run is compared)"),
        },
    )


if __name__ == "__main__":
    main()
