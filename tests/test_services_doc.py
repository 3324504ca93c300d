"""docs/services.md works as written: its shell blocks run in order in one shell against a real
Postgres and the simulated providers, and its Python example (a definition and a handler) runs
through the job loop as a real service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from desired_state.services import intake
from desired_state.services.builtin import builtin_definitions
from desired_state.services.definitions import ServiceDefinition, ServiceRegistry
from reconciler.jobs.builtin import builtin_handlers
from reconciler.jobs.handlers import HandlerRegistry
from tests.conftest import Sim, simulated_runtime
from tests.jobs_support import FAST_JOBS, JOB_ENGINE, new_caller, wait_for
from tests.support import cli_env, free_port

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "services.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(DOC.read_text()) if lang == language]



@pytest.mark.timeout(240)
def test_every_shell_block_runs_as_written(db_url: str, sim: Sim) -> None:
    script = "\n".join(blocks("sh"))
    assert "reconciler run" in script and "curl" in script
    # The tests' database and key, the simulated providers; no webhook settings of the caller's own.
    env = {k: v for k, v in cli_env(db_url, sim).items() if not k.startswith(("SERVICE_WEBHOOK", "WEBHOOK_"))}
    env.update(
        SERVICE_DATABASE_URL=db_url,
        SERVICES_API_KEY="instance-key",
        PORT=str(free_port()),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
    )
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the background `reconciler run` is in this group, killed below
    )
    try:
        out, err = process.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"the script did not finish:\n{out[-3000:]}\n{err[-3000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    assert '"status":"completed"' in out and '"payload":{"hi":1}' in out
    assert re.search(r"(?i)idempotency-replayed: true", out)
    assert '"refunded":true' in out and '"error":"invalid_input"' in out
    assert "ledger audit:" in out and "is up to date" in out


def test_the_python_example_is_a_working_service(db_url: str, sim: Sim) -> None:
    definition_code, handler_code = blocks("python")
    namespace: dict[str, Any] = {}
    exec(compile(definition_code, "docs/services.md (definition)", "exec"), namespace)
    exec(compile(handler_code, "docs/services.md (handler)", "exec"), namespace)
    shout: ServiceDefinition = namespace["SHOUT"]
    example_handlers: HandlerRegistry = namespace["handlers"]
    assert shout.id == "text.shout" and "text.shout" in example_handlers

    def handlers(http: Any) -> HandlerRegistry:
        registry = builtin_handlers(http, None)
        registry.register(shout.id, namespace["shout"])
        return registry

    services = ServiceRegistry([*builtin_definitions(), shout])

    async def run() -> dict[str, Any]:
        runtime = simulated_runtime(db_url, sim, JOB_ENGINE, jobs=FAST_JOBS, services=services, handlers=handlers)
        async with runtime, await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            caller = await new_caller(conn, credits=10)
            admitted = await intake.admit(conn, services, caller, shout.id, {"text": "hi", "times": 2})
            stop = asyncio.Event()
            loop = asyncio.create_task(runtime.jobs.run_forever(stop))
            try:
                return await wait_for(conn, admitted.job_id, {"completed", "failed"})
            finally:
                stop.set()
                await loop

    row = asyncio.run(run())
    assert row["status"] == "completed" and row["result"] == {"shouted": "HI HI"}
    assert row["progress_pct"] == 1 and row["cost_credits"] == 2
