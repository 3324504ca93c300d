"""``reconciler demo`` end to end (small): both halves succeed and leave nothing behind."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from reconciler.demo import run_demo


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_demo_converges_runs_paid_jobs_and_ends_with_a_clean_ledger(pg_server_url: str) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)
    assert await run_demo(pg_server_url, console, instances=3, deploy_seconds=0.3, time_limit=60)
    text = out.getvalue()
    assert "Ledger audit: every invariant holds." in text
    assert "granted 500 - charged 109 + refunded 4 = 395" in text
    assert "Paid jobs: all ended and settled; providers hold 0 resources." in text
