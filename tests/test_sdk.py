"""The generated SDK (``sdk/``, ``reconciler_sdk``): current, type-safe for a consumer, and right
against a served API.

The server here is what ``reconciler run`` is made of, in the test's process so that it can offer
services made for the test (a course gate, a rate limit): the paid routes served by uvicorn on
loopback over a real Postgres, both loops against the simulated providers, and the ``util.echo``
upstream. ``tests/test_sdk_run.py`` runs the SDK against ``reconciler run`` itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pydantic
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from desired_state.http import ApiConfig, create_app
from desired_state.http.routes_paid import PaidApiConfig, PaidRoutes
from desired_state.services import callers, ledger
from desired_state.services.builtin import BuiltinSettings, builtin_definitions, builtin_registry
from desired_state.services.definitions import ServiceDefinition, ServiceRegistry
from providers.simulated.server import serve_in_background
from reconciler.jobs.builtin import EchoUpstream, builtin_handlers
from reconciler.sdkgen.generate import generate, stale
from tests.conftest import Sim, simulated_runtime
from tests.jobs_support import FAST_JOBS, JOB_ENGINE
from tests.paid_support import GATED, LIMITED, definitions_for_tests
from tests.sdk_support import SDK_DIR, DropFirstPost, sdk

ROOT = Path(__file__).resolve().parent.parent
SDK = SDK_DIR

CLI = [sys.executable, "-c", "import cli; cli.main()"]


# -- current and typed ----------------------------------------------------------------------------


def test_the_checked_in_sdk_is_what_the_registry_generates(tmp_path: Path) -> None:
    assert stale(SDK, generate(builtin_registry(BuiltinSettings()))) == []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([*CLI, "sdk", "generate", "--check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    copy = tmp_path / "sdk"
    subprocess.run([*CLI, "sdk", "generate", "--out", str(copy)], cwd=ROOT, env=env, check=True, capture_output=True)
    (copy / "reconciler_sdk" / "models.py").write_text("# edited by hand\n")
    (copy / "reconciler_sdk" / "extra.py").write_text("")
    stale_run = subprocess.run(
        [*CLI, "sdk", "generate", "--check", "--out", str(copy)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert stale_run.returncode == 1
    assert "reconciler_sdk/models.py" in stale_run.stderr and "reconciler_sdk/extra.py" in stale_run.stderr


def test_the_sdk_installs_with_pip_and_depends_on_httpx_and_pydantic_only(tmp_path: Path) -> None:
    target, source = tmp_path / "site", tmp_path / "sdk"
    shutil.copytree(SDK, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    probe = (
        "import sys, reconciler_sdk; "
        "assert reconciler_sdk.__file__.startswith(sys.argv[1]); "
        "mods = {m.split('.')[0] for m in sys.modules}; "
        "print(sorted(m for m in mods if m in ('desired_state', 'reconciler', 'providers', 'psycopg')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"  # none of ours, no database driver
    assert (target / "reconciler_sdk" / "py.typed").exists()
    dependencies = (SDK / "pyproject.toml").read_text().split("dependencies = ", 1)[1].splitlines()[0]
    assert dependencies == '["httpx>=0.27", "pydantic>=2.6"]'


CONSUMER = """
from reconciler_sdk import AsyncClient, Client, InsufficientCredits, Job, UtilDelayEchoOutput, UtilEchoOutput


def main() -> None:
    client = Client(api_key="sk-x", base_url="http://localhost:3002")
    job: Job[UtilDelayEchoOutput] = client.util.delay_echo(seconds=1, payload={"a": [1, 2]}, idempotency_key="k")
    job.on_progress(lambda pct, note: print(pct, note))
    result: UtilDelayEchoOutput = job.wait(timeout=10)
    seconds: float = result.seconds
    echoed: UtilEchoOutput = client.util.echo({"hello": "world"}, webhook_url="https://example.com/hook")
    provisioned = client.agents.provision(name="a", tools=["openrouter"]).wait()
    instance: str = provisioned.instance_id
    try:
        client.agents.destroy(instance_id=instance)
    except InsufficientCredits as error:
        needed: int | None = error.needed
        print(needed)
    print(seconds, echoed, client.run("util.delay-echo", {"seconds": 0}))


async def amain() -> None:
    client = AsyncClient(api_key="sk-x")
    job = await client.util.delay_echo(seconds=2)
    done: UtilDelayEchoOutput = await job.wait(timeout=5)
    print(done.payload, (await job.status()).progress.pct)
"""

WRONG = """
from reconciler_sdk import Client

client = Client(api_key="sk-x")
client.util.delay_echo(seconds="soon")
client.agents.provision(name="a", tools=["slack"])
client.agents.destroy()
text: str = client.util.delay_echo().wait().seconds
"""


def _mypy(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "consumer.py"
    path.write_text(script)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", os.devnull, "--no-incremental", str(path)],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(SDK)},
        capture_output=True,
        text=True,
    )


def test_a_consumer_script_passes_mypy_strict_and_mistakes_do_not(tmp_path: Path) -> None:
    good = _mypy(CONSUMER, tmp_path)
    assert good.returncode == 0, good.stdout
    bad = _mypy(WRONG, tmp_path)
    assert bad.returncode == 1
    for line in (5, 6, 7, 8):  # the script starts with an empty line
        assert f"consumer.py:{line}: error" in bad.stdout, bad.stdout


# -- against a server ------------------------------------------------------------------------------


@dataclass
class Server:
    root: str
    db_url: str
    keys: dict[str, str]
    posts: list[str] = field(default_factory=list)

    def client(self, who: str = "ada", **options: Any) -> sdk.AsyncClient:
        return sdk.AsyncClient(api_key=self.keys[who], base_url=self.root, **options)

    async def scalar(self, query: str, *args: Any) -> Any:
        async with await psycopg.AsyncConnection.connect(self.db_url) as conn:
            cur = await conn.execute(query.encode(), args)
            row = await cur.fetchone()
        assert row is not None
        return row[0]


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse(await request.json())


@asynccontextmanager
async def running_server(db_url: str, sim: Sim) -> AsyncIterator[Server]:
    registry = ServiceRegistry([*builtin_definitions(), *definitions_for_tests()])
    upstream_app = Starlette(routes=[Route("/echo", _echo, methods=["POST"])])
    async with serve_in_background(upstream_app) as upstream:
        runtime = simulated_runtime(
            db_url,
            sim,
            JOB_ENGINE,
            jobs=FAST_JOBS,
            services=registry,
            handlers=lambda http: builtin_handlers(http, upstream),
        )
        async with runtime:
            echo = EchoUpstream(runtime.http, upstream)

            async def proxy_call(definition: ServiceDefinition, document: dict[str, Any], job_id: uuid.UUID) -> Any:
                return await echo(document, job_id)

            paid = PaidRoutes(PaidApiConfig(registry=registry, proxy_call=proxy_call))
            app = create_app(ApiConfig(api_key="instance-key", database_url=db_url), paid=paid)
            keys = {}
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                for who, credits in (("ada", 500), ("poor", 0)):
                    keys[who] = (await callers.create_caller(conn, f"{who}@example.com")).secret
                    if credits:
                        await ledger.grant(conn, f"{who}@example.com", credits, "welcome")
            stop = asyncio.Event()
            loops = [
                asyncio.create_task(runtime.worker.run_forever(stop)),
                asyncio.create_task(runtime.jobs.run_forever(stop)),
            ]
            try:
                async with app.router.lifespan_context(app), serve_in_background(app) as root:
                    yield Server(root, db_url, keys)
            finally:
                stop.set()
                await asyncio.gather(*loops)


@pytest.fixture
async def server(db_url: str, sim: Sim) -> AsyncIterator[Server]:
    async with running_server(db_url, sim) as running:
        yield running


async def test_every_builtin_service_a_job_with_progress_and_the_untyped_call(server: Server) -> None:
    client = server.client()
    seen: list[tuple[float, str | None]] = []
    job = await client.util.delay_echo(seconds=2.5, payload={"a": [1, 2]})
    job.on_progress(lambda pct, note: seen.append((pct, note)))
    result = await job.wait(timeout=30, poll_interval=0.2)
    assert isinstance(result, sdk.UtilDelayEchoOutput) and result.payload == {"a": [1, 2]} and result.seconds == 2.5
    assert len(seen) >= 2 and [pct for pct, _ in seen] == sorted(pct for pct, _ in seen) and seen[-1][0] <= 1

    echoed = await client.util.echo({"hello": "world"})
    assert isinstance(echoed, sdk.UtilEchoOutput) and echoed.model_dump() == {"hello": "world"}

    provisioned = await (await client.agents.provision(name="sdk-agent", tools=["openrouter"])).wait(timeout=60)
    assert isinstance(provisioned, sdk.AgentsProvisionOutput) and provisioned.instance_id
    destroyed = await (await client.agents.destroy(instance_id=provisioned.instance_id)).wait(timeout=60)
    assert destroyed.destroyed is True and destroyed.instance_id == provisioned.instance_id

    untyped = await client.run("util.delay-echo", {"seconds": 0, "payload": "x"})
    assert isinstance(untyped, sdk.AsyncJob)
    assert await untyped.wait(timeout=20) == {"payload": "x", "seconds": 0.0}
    assert await client.run("util.echo", {"k": 1}) == {"k": 1}
    await client.aclose()


async def test_cancel_and_failure_are_typed_and_refunded(server: Server) -> None:
    client = server.client()
    job = await client.util.delay_echo(seconds=60)
    await asyncio.sleep(0.5)
    state = await job.cancel()
    assert state.status == "cancelled" and state.refunded
    with pytest.raises(sdk.JobCancelled) as cancelled:
        await job.wait(timeout=5)
    assert cancelled.value.code == "cancelled"
    failing = await client.util.delay_echo(fail=True)
    with pytest.raises(sdk.JobFailed) as failed:
        await failing.wait(timeout=20)
    assert failed.value.code == "handler_failed" and (await failing.status()).refunded
    await client.aclose()


async def test_each_error_is_a_typed_exception(server: Server) -> None:
    client = server.client(max_retry_wait=0)
    with pytest.raises(sdk.InsufficientCredits) as poor:
        await server.client("poor").util.delay_echo()
    assert poor.value.needed == 1 and poor.value.status == 402
    with pytest.raises(sdk.CourseNotPurchased) as gated:
        await client.run(GATED, {})
    assert gated.value.course_id == "media-101"
    await client.run(LIMITED, {})
    await client.run(LIMITED, {})
    with pytest.raises(sdk.RateLimited) as limited:
        await client.run(LIMITED, {})
    assert limited.value.retry_after is not None and limited.value.retry_after > 0
    with pytest.raises(sdk.InvalidInput):
        await client.run("util.delay-echo", {"seconds": 1000})
    with pytest.raises(pydantic.ValidationError):
        await client.util.delay_echo(seconds=1000)  # refused before any request
    with pytest.raises(sdk.ServiceNotFound):
        await client.run("nope.nothing", {})
    with pytest.raises(sdk.JobNotFound):
        await client.job(str(uuid.uuid4())).status()
    with pytest.raises(sdk.AuthenticationRequired):
        await sdk.AsyncClient(api_key="sk-wrong", base_url=server.root).util.delay_echo()
    with pytest.raises(sdk.IdempotencyKeyReused):
        await client.util.delay_echo(seconds=0, idempotency_key="same")
        await client.util.delay_echo(seconds=1, idempotency_key="same")
    await client.aclose()


async def test_a_dropped_connection_is_retried_with_the_same_key_and_charged_once(server: Server) -> None:
    transport = DropFirstPost()
    client = server.client(http_client=httpx.AsyncClient(transport=transport))
    before = await server.scalar(
        "SELECT balance FROM credit_accounts a JOIN callers c USING (caller_id) WHERE c.email = 'ada@example.com'"
    )
    job = await client.util.delay_echo(seconds=0, payload={"once": True})
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
    assert (await job.wait(timeout=20)).payload == {"once": True}
    jobs = await server.scalar("SELECT count(*) FROM service_jobs WHERE idempotency_key = %s", transport.keys[0])
    after = await server.scalar(
        "SELECT balance FROM credit_accounts a JOIN callers c USING (caller_id) WHERE c.email = 'ada@example.com'"
    )
    assert jobs == 1 and before - after == 1
    # a second logical call gets a key of its own
    await client.util.delay_echo(seconds=0)
    assert len(set(transport.keys)) == 2
    await client.aclose()


async def test_the_synchronous_client(server: Server) -> None:
    def use() -> tuple[Any, Any]:
        with sdk.Client(api_key=server.keys["ada"], base_url=server.root) as client:
            done = client.util.delay_echo(seconds=0, payload=[1]).wait(timeout=20)
            return done, client.util.echo({"sync": True})

    done, echoed = await asyncio.to_thread(use)
    assert done.payload == [1] and echoed.model_dump() == {"sync": True}
