"""The paid half as an operator meets it: `reconciler run` serves the routes and runs the jobs.

The issue's walk-through, in one real process: a caller and credits from the CLI, then over HTTP
the catalog, a delay-echo job polled until it completes with its progress and result, a second
one cancelled and refunded, and `reconciler ledger audit` clean at the end. Then SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.conftest import Sim
from tests.test_cli import CLI, ROOT, cli_env, free_port, run_cli


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_run_serves_paid_jobs_end_to_end(db_url: str, sim: Sim) -> None:
    api_port = free_port()
    env = cli_env(db_url, sim) | {"SERVICES_API_KEY": "instances-key", "PORT": str(api_port)}
    code, out, err = await run_cli("callers", "create", "ada@example.com", env=env)
    assert code == 0, err
    key = out.strip()
    assert (await run_cli("credits", "grant", "ada@example.com", "500", "--reason", "welcome", env=env))[0] == 0
    process = await asyncio.create_subprocess_exec(
        *CLI, "run", "--metrics-port", "0", "--tick", "0.2", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    api = f"http://127.0.0.1:{api_port}"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(base_url=api, timeout=10) as client:
            for _ in range(100):
                try:
                    catalog = await client.get("/api/services/catalog")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert "util.delay-echo" in [item["id"] for item in catalog.json()["services"]]

            invoked = await client.post(
                "/api/services/invoke/util/delay-echo",
                json={"seconds": 2, "payload": {"hi": 1}},
                headers=auth | {"Idempotency-Key": "k1"},
            )
            assert invoked.status_code == 202, invoked.text
            poll = invoked.json()["pollUrl"]
            seen_progress = False
            for _ in range(100):
                job = (await client.get(poll, headers=auth)).json()
                seen_progress = seen_progress or (job["status"] == "running" and job["progress"]["pct"])
                if job["status"] == "completed":
                    break
                await asyncio.sleep(0.1)
            assert job["status"] == "completed" and job["result"] == {"payload": {"hi": 1}, "seconds": 2.0}
            assert seen_progress and job["refunded"] is False

            slow = await client.post("/api/services/invoke/util/delay-echo", json={"seconds": 60}, headers=auth)
            cancelled = await client.delete(slow.json()["pollUrl"], headers=auth)
            assert cancelled.status_code == 200, cancelled.text
            job = (await client.get(slow.json()["pollUrl"], headers=auth)).json()
            assert (job["status"], job["refunded"]) == ("cancelled", True)

            credits = (await client.get("/api/credits", headers=auth)).json()
            assert credits["balance"] == 499
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()[-2000:]
    code, out, _ = await run_cli("ledger", "audit", env=env)
    assert code == 0 and "every invariant holds" in out
