"""Helpers the integration tests share: one way to wait for a condition, the API served, common reads.

Every test that waits for the reconciler uses :func:`until` (poll a condition) or :func:`settle`
(run passes until a condition holds), so a timeout always fails the same way, with the message
the caller gave. Test modules import what they share from here (or take a fixture from
``conftest.py``), never from each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI

from desired_state.http import ApiConfig, create_app
from providers.simulated.server import serve_in_background
from reconciler.demo import simulated_env
from reconciler.runtime import Runtime
from reconciler.secrets_box import embedded_key
from reconciler.status import phase_counts
from tests.conftest import Sim

CLI = [sys.executable, "-c", "import cli; cli.main()"]
"""The ``reconciler`` command, run from the checkout (no install needed)."""
ROOT = Path(__file__).resolve().parent.parent

API_KEY = "test-services-api-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

# Every fencing token an instance's events carry must be non-decreasing in the order they were
# written: a smaller one after a larger one would be a stale worker's write getting through.
FENCING_VIOLATIONS = """
SELECT count(*) FROM (
    SELECT fencing_token < max(fencing_token) OVER (
               PARTITION BY instance_id ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS stale
      FROM events WHERE fencing_token IS NOT NULL
) checked WHERE stale
"""

Condition = Callable[[], Any]
"""A check returning a truthy value when done; plain or async."""


async def _holds(condition: Condition) -> Any:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return result


async def until(
    condition: Condition,
    timeout: float = 20.0,
    *,
    interval: float = 0.05,
    message: str = "condition not reached in time",
    during: Callable[[], Awaitable[Any]] | None = None,
) -> Any:
    """Poll ``condition`` until it holds (its value is returned); fail with ``message`` after ``timeout``.

    ``during`` (optional) runs between polls, for tests that act while they wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = await _holds(condition)
        if result:
            return result
        assert time.monotonic() < deadline, message
        if during is not None:
            await during()
        await asyncio.sleep(interval)


async def settle(runtime: Runtime, done: Condition, timeout: float = 20.0) -> None:
    """Run passes (``drain``) until ``done()`` holds."""

    async def drained_and_done() -> Any:
        await runtime.worker.drain()
        return await _holds(done)

    await until(drained_and_done, timeout, message="did not converge in time")


@contextlib.asynccontextmanager
async def looping(runtime: Runtime) -> AsyncIterator[Runtime]:
    """The runtime's reconcile loop running in the background for the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.worker.run_forever(stop))
    try:
        yield runtime
    finally:
        stop.set()
        await task


@dataclass
class Api:
    client: httpx.AsyncClient
    root: str
    app: FastAPI


@contextlib.asynccontextmanager
async def served(config: ApiConfig) -> AsyncIterator[Api]:
    """The app on a free loopback port, with its lifespan (the pool) around it."""
    app = create_app(config)
    async with (
        app.router.lifespan_context(app),
        serve_in_background(app) as root,
        httpx.AsyncClient(base_url=root, headers=AUTH, timeout=60) as client,
    ):
        yield Api(client, root, app)


def config_for(db_url: str, sim: Sim, **overrides: Any) -> ApiConfig:
    base = ApiConfig(
        api_key=API_KEY,
        database_url=db_url,
        project_id=sim.simulator.railway.project_id,
        environment_id=None,
        wait_timeout=30.0,
        poll_interval=0.05,
    )
    return dataclasses.replace(base, **overrides)


async def count(conn: psycopg.AsyncConnection[Any], query: str) -> int:
    """The single number ``query`` answers (0 when it answers no row)."""
    row = await (await conn.execute(query)).fetchone()
    return int(row[0]) if row else 0


async def desired_count(conn: psycopg.AsyncConnection[Any]) -> int:
    return await count(conn, "SELECT count(*) FROM desired_instances")


async def all_ready(conn: psycopg.AsyncConnection[Any], count: int) -> bool:
    return (await phase_counts(conn)).get("Ready", 0) == count


def held(sim: Sim) -> dict[str, list[str]]:
    """Derived names of everything each provider holds, per resource type."""
    out: dict[str, list[str]] = {}
    for provider, kinds in sim.simulator.snapshot().items():
        for kind, items in kinds.items():
            if kind in ("messaging_profiles", "deployments"):
                continue
            out[f"{provider}.{kind}"] = sorted(str(item["name"]) for item in items)
    return out


async def out_of_band(runtime: Runtime, url_variable: str, key: str, method: str, path: str, **kw: Any) -> Any:
    """A call to a simulated provider made behind the reconciler's back (a human in a dashboard).

    ``url_variable`` names the provider's base URL setting (``OPENROUTER_API_URL``), ``key`` the
    credential to send; the decoded answer is returned.
    """
    async with httpx.AsyncClient() as client:
        response = await client.request(
            method, runtime.settings.urls[url_variable] + path, headers={"Authorization": f"Bearer {key}"}, **kw
        )
    response.raise_for_status()
    return response.json()


def cli_env(db_url: str, sim: Sim | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAILWAY_", "OPENROUTER_", "AGENTMAIL_"))}
    env["SERVICE_DATABASE_URL"] = db_url
    env["RECONCILER_SECRET_KEY"] = embedded_key()  # the key the in-process runtimes of the tests use
    env["PYTHONPATH"] = str(ROOT)
    if sim is not None:
        env.update(simulated_env(sim.root, sim.simulator.railway.project_id))
    return env


def replica_args(*extra: str) -> list[str]:
    """``reconciler run`` as a loop-only replica for the process tests: no API, a short tick, no observer."""
    return [*CLI, "run", "--no-api", "--metrics-port", "0", "--tick", "0.2", "--observe-seconds", "3600", *extra]


async def start_replica(env: dict[str, str], *extra: str) -> asyncio.subprocess.Process:
    """One replica (:func:`replica_args`) in the background, its output discarded."""
    return await asyncio.create_subprocess_exec(
        *replica_args(*extra), env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
