"""What the reconciler benchmarks share: a simulator in its own process, a fresh database, a fleet.

* :func:`simulator_process` serves the four simulated providers (``providers.simulated``, the
  same :class:`~providers.simulated.app.Simulator` that ``reconciler simulate`` serves) from a
  child process, so the provider side neither shares the reconciler's event loop nor counts in its
  memory. It differs from ``reconciler simulate`` in two knobs that command does not expose: the
  Telnyx inventory (the fake sells 500 numbers by default; a 10,000-instance fleet needs more) and
  the Telnyx page size (250, the real API's cap, instead of the fake's 20).
* :func:`bench_database` creates a fresh, migrated database on the given server and drops it after.
* :func:`converged_fleet` converges ``count`` instances through the real reconciler, with no rate
  limits and no simulated latency: how the steady-state and latency benchmarks reach a converged
  fleet of 10,000, so their starting state is exactly what the reconciler itself writes. It takes
  about 8 minutes for 10,000 on 2 cores, bound by the simulator (several fakes' creates scan
  every resource they hold, so building N costs O(N^2) there), which is why
  ``python -m tests.benchmarks`` builds one fleet and hands it to both benchmarks.
* :func:`cli` is the ``__main__`` of every benchmark: a database URL (argument,
  ``SERVICE_DATABASE_URL``, or an embedded Postgres in a temporary directory) and knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client import CollectorRegistry

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from reconciler import demo
from reconciler.admission import Limit
from reconciler.db import EmbeddedPostgres, create_database, migrate
from reconciler.engine import EngineSettings
from reconciler.metrics import Metrics
from reconciler.runtime import Runtime, RuntimeOptions
from reconciler.secrets_box import generate_key
from reconciler.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
ALL_TOOLS: tuple[Tool, ...] = (Tool.OPENROUTER, Tool.AGENTMAIL, Tool.TELNYX)
NO_LIMITS: Mapping[str, Limit] = {}

# The child process: the simulator on a loopback port it picks, until SIGTERM. It prints one JSON
# line (port and Railway project id) once it accepts connections.
SIMULATOR_SCRIPT = """
import asyncio, json, os, signal, socket, sys
import uvicorn
from providers.simulated.app import Simulator, SimulatorSettings
from providers.simulated.faults import FaultPlan, FaultRule, Latency
from providers.simulated.telnyx import FakeTelnyx

seed = int(os.environ["BENCH_SIM_SEED"])
latency = float(os.environ["BENCH_SIM_LATENCY_MS"])
rules = [FaultRule(latency=Latency(fixed_ms=latency))] if latency > 0 else []
simulator = Simulator(
    SimulatorSettings(deploy_seconds=float(os.environ["BENCH_SIM_DEPLOY_SECONDS"]), seed=seed)
)
simulator.telnyx = FakeTelnyx(seed=seed, inventory=int(os.environ["BENCH_SIM_TELNYX_INVENTORY"]), page_size=250)
simulator.set_faults(FaultPlan(rules=rules))

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
server = uvicorn.Server(
    uvicorn.Config(simulator.app(), log_level="warning", lifespan="off", access_log=False, backlog=4096)
)

async def main() -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: setattr(server, "should_exit", True))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    print(json.dumps({"port": sock.getsockname()[1], "project_id": simulator.railway.project_id}), flush=True)
    await task

asyncio.run(main())
"""


@dataclass(frozen=True)
class SimulatorHandle:
    root: str
    project_id: str
    pid: int

    async def requests(self) -> dict[str, dict[str, int]]:
        """Calls served so far: ``{provider: {operation: count}}`` (admin routes not counted)."""
        async with httpx.AsyncClient(timeout=120) as client:
            answer = (await client.get(f"{self.root}/_admin/requests")).json()
        return {
            provider: {name: int(log["count"]) for name, log in data["operations"].items()}
            for provider, data in answer.items()
        }

    async def reset_requests(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            (await client.post(f"{self.root}/_admin/requests/reset")).raise_for_status()

    async def set_latency(self, latency_ms: float) -> None:
        """Put a fixed latency on every provider call from now on (0: none)."""
        rules = [{"latency": {"fixed_ms": latency_ms}}] if latency_ms > 0 else []
        async with httpx.AsyncClient(timeout=120) as client:
            (await client.put(f"{self.root}/_admin/faults", json={"rules": rules})).raise_for_status()


@contextlib.asynccontextmanager
async def simulator_process(
    *, latency_ms: float = 0.0, deploy_seconds: float = 0.0, telnyx_inventory: int = 500, seed: int = 7
) -> AsyncIterator[SimulatorHandle]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BENCH_SIM_SEED": str(seed),
        "BENCH_SIM_LATENCY_MS": str(latency_ms),
        "BENCH_SIM_DEPLOY_SECONDS": str(deploy_seconds),
        "BENCH_SIM_TELNYX_INVENTORY": str(telnyx_inventory),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SIMULATOR_SCRIPT], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=60)
        if not line:
            raise RuntimeError(f"the simulator exited with code {process.wait()}")
        started = json.loads(line)
        yield SimulatorHandle(f"http://127.0.0.1:{started['port']}", str(started["project_id"]), process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def bench_database(server_url: str, name: str) -> Iterator[str]:
    """A fresh, migrated database ``name`` on the server of ``server_url``; dropped afterwards."""
    url = create_database(server_url, name)
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            drop = psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(psycopg.sql.Identifier(name)))


def fleet_specs(count: int, prefix: str, tools: tuple[Tool, ...] = ALL_TOOLS) -> list[InstanceSpec]:
    return [InstanceSpec(instance_id=f"{prefix}{n:06d}", tools=tools) for n in range(count)]


BENCH_SECRET_KEY = generate_key()
"""Seals the stored provider secrets of every runtime and child process of one benchmark run (a
configured database needs ``RECONCILER_SECRET_KEY``; the embedded default would generate one)."""


def simulated_env(sim: SimulatorHandle) -> dict[str, str]:
    """The settings environment pointing every provider at ``sim`` (as ``reconciler demo`` does)."""
    return {**demo.simulated_env(sim.root, sim.project_id), "RECONCILER_SECRET_KEY": BENCH_SECRET_KEY}


def runtime_for(sim: SimulatorHandle, database_url: str, options: RuntimeOptions) -> Runtime:
    """A Runtime wired to the simulator, with metrics of its own (not the process default)."""
    settings = load_settings(simulated_env(sim))
    return Runtime(settings, database_url, options, Metrics(CollectorRegistry()))


async def count_ready(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute("SELECT count(*) FROM desired_instances WHERE phase = 'Ready'")).fetchone()
    return int(row[0]) if row else 0


async def converge_fleet(
    sim: SimulatorHandle,
    database_url: str,
    count: int,
    *,
    prefix: str = "fleet",
    tools: tuple[Tool, ...] = ALL_TOOLS,
    time_limit: float = 3600.0,
) -> float:
    """Write ``count`` desired instances and drain the real reconciler until all are Ready.

    No rate limits and no latency (the simulator should be started with none): this only builds
    the starting state of a benchmark. Returns the seconds it took.
    """
    options = RuntimeOptions(
        engine=EngineSettings(poll_interval=3600.0, not_ready_interval=0.05, batch_size=32),
        pool_size=16,
        rate_limits=NO_LIMITS,
    )
    specs = fleet_specs(count, prefix, tools)
    started = time.monotonic()
    async with (
        runtime_for(sim, database_url, options) as runtime,
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn,
    ):
        for chunk in range(0, count, 1000):
            await store.put_many(conn, specs[chunk : chunk + 1000])
        while True:
            await runtime.worker.drain()
            if await count_ready(conn) >= count:
                break
            if time.monotonic() - started > time_limit:
                raise RuntimeError(f"the fleet did not converge within {time_limit:.0f} s")
            await asyncio.sleep(0.05)  # rows waiting on a deploy or a short retry
        await conn.execute("VACUUM ANALYZE")
    return time.monotonic() - started


@dataclass(frozen=True)
class Fleet:
    """A converged fleet: its simulator (still serving), its database, and what building it took."""

    sim: SimulatorHandle
    database_url: str
    instances: int
    build_seconds: float


@contextlib.asynccontextmanager
async def converged_fleet(
    server_url: str, count: int, *, name: str = "reconciler_bench_fleet", spare_numbers: int = 1000
) -> AsyncIterator[Fleet]:
    """A database ``name`` and a simulator holding ``count`` instances converged by the reconciler.

    The simulator sells ``spare_numbers`` more SMS numbers than the fleet holds, for new instances.
    """
    inventory = int((count + spare_numbers) * 1.2) + 100  # every tenth number of the fake's is voice-only
    with bench_database(server_url, name) as url:
        async with simulator_process(telnyx_inventory=inventory) as sim:
            seconds = await converge_fleet(sim, url, count)
            yield Fleet(sim, url, count, seconds)


@contextlib.asynccontextmanager
async def fleet_or_build(server_url: str, count: int, fleet: Fleet | None, name: str) -> AsyncIterator[Fleet]:
    """``fleet`` when one is given (``run_all`` shares one), else a new one of ``count`` instances."""
    if fleet is not None:
        yield fleet
        return
    async with converged_fleet(server_url, count, name=name) as built:
        yield built


def percentile(samples: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.99 for p99)."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def quiet_logs() -> None:
    """Deferrals and drift are logged at WARNING/INFO by the engine; a benchmark only wants errors."""
    for name in ("reconciler", "providers", "httpx", "apscheduler"):
        logging.getLogger(name).setLevel(logging.ERROR)


def total(calls: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    return {provider: sum(operations.values()) for provider, operations in calls.items()}


def calls_table(calls: Mapping[str, Mapping[str, int]], title: str = "provider calls") -> str:
    lines = [f"| {title}: provider | operation | calls |", "|---|---|---:|"]
    for provider, operations in calls.items():
        for operation, count in sorted(operations.items()):
            lines.append(f"| {provider} | {operation} | {count} |")
    return "\n".join(lines)


def cli(
    description: str | None,
    run: Callable[..., Coroutine[Any, Any, dict[str, object]]],
    markdown: Callable[[dict[str, object]], str],
    knobs: Mapping[str, tuple[type, Any, str]],
) -> None:
    """The ``__main__`` of a benchmark: ``[DATABASE_URL] [--knob value ...]``; prints markdown."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "database_url", nargs="?", help="Postgres server URL (a benchmark database is created on it); default: embedded"
    )
    for name, (kind, default, help_text) in knobs.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=help_text)
    parser.add_argument("--json", action="store_true", help="print the result dict as JSON instead of markdown")
    args = vars(parser.parse_args())
    as_json = args.pop("json")
    url = args.pop("database_url") or os.environ.get("SERVICE_DATABASE_URL")
    results: dict[str, object]
    if url:
        results = asyncio.run(run(url, **args))
    else:
        with (
            tempfile.TemporaryDirectory(prefix="rpgb") as directory,
            EmbeddedPostgres(Path(directory) / "data") as embedded,
        ):
            results = asyncio.run(run(embedded, **args))
    print(json.dumps(results, indent=2) if as_json else markdown(results))


@contextlib.asynccontextmanager
async def serving(
    process: subprocess.Popen[bytes], root: str, ready_path: str, *, start_within: float, stop_within: float
) -> AsyncIterator[tuple[str, int]]:
    """Wait until the child ``process`` answers 200 on ``root + ready_path``; yield ``(root, pid)``;
    then stop it with SIGTERM (SIGKILL after ``stop_within`` seconds). Raises ``RuntimeError`` if the
    child exits or does not serve within ``start_within`` seconds."""
    try:
        async with httpx.AsyncClient(base_url=root) as probe:
            deadline = time.monotonic() + start_within
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args!r:.80} exited with code {process.returncode}")
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get(ready_path)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the child did not serve {ready_path} within {start_within:.0f} s")
                await asyncio.sleep(0.05)
        yield root, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=stop_within)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

