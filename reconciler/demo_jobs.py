"""The paid half of ``reconciler demo``: a caller, credits, a mix of jobs, and a ledger that adds up.

After the instance half, on the same database, simulated providers and running loops: a caller is
created and credited, then jobs are admitted through the one admission transaction (the code
every route uses): ``util.delay-echo`` jobs that succeed, some that fail (``fail: true``), some
cancelled while they run, and an ``agents.provision`` that the instance reconciler makes Ready
(torn down afterwards with the free ``agents.destroy``). The job loop runs them all; the demo
prints each job's end and its settlement, runs the ledger audit, and explains the caller's
balance transfer by transfer: granted - captured = balance, with every refund back in it and
nothing left in escrow.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from desired_state.services import callers, intake, jobs, ledger, termination
from desired_state.services.builtin import DELAY_ECHO, DESTROY, PROVISION, provision_instance_id
from desired_state.services.vocabulary import JobStatus, Settlement, TransferKind
from reconciler.runtime import Runtime

DEMO_CALLER = "ada@example.com"
GRANT = 500
LIVE = "SELECT count(*) FROM service_jobs WHERE status IN ('pending', 'running')"


async def run_jobs_demo(
    runtime: Runtime, conn: psycopg.AsyncConnection[Any], console: Console, time_limit: float
) -> bool:
    """Run the paid half; True when every job ended, the audit is clean and the balance adds up."""
    await runtime.publish_services()
    issued = await callers.create_caller(conn, DEMO_CALLER)
    caller = issued.caller.caller_id
    await ledger.grant(conn, DEMO_CALLER, GRANT, "welcome", grant_key="demo-welcome")
    console.print(f"\nCaller {DEMO_CALLER} created (key {issued.prefix}..., shown once) and granted {GRANT} credits.")

    async def admit(service_id: str, data: dict[str, Any]) -> uuid.UUID:
        admission = await intake.admit(conn, runtime.services, caller, service_id, data)
        return admission.job_id

    successes = [
        await admit(DELAY_ECHO, {"seconds": s, "payload": {"n": i}}) for i, s in enumerate((0, 0.5, 1, 1.5, 2))
    ]
    failures = [await admit(DELAY_ECHO, {"seconds": 0.5, "fail": True}) for _ in range(2)]
    to_cancel = [await admit(DELAY_ECHO, {"seconds": 60}) for _ in range(2)]
    provision = await admit(PROVISION, {"name": "demo-agent", "tools": ["openrouter", "agentmail"], "env": {}})
    console.print(
        f"Admitted {len(successes) + len(failures) + len(to_cancel) + 1} jobs: {len(successes)} delay-echo, "
        f"{len(failures)} told to fail, {len(to_cancel)} to be cancelled while running, one agents.provision."
    )
    await _until_running(conn, to_cancel)
    for job_id in to_cancel:
        await termination.cancel(conn, job_id, now=runtime.jobs.clock(), caller_id=caller)
    ended = await _until(conn, LIVE, time_limit)

    destroy: uuid.UUID | None = None
    record = await jobs.get_job(conn, provision)
    if record is not None and record.status is JobStatus.COMPLETED:
        destroy = await admit(DESTROY, {"instanceId": provision_instance_id(provision)})
        ended = ended and await _until(conn, LIVE, time_limit)

    ids = [*successes, *failures, *to_cancel, provision, *([destroy] if destroy else [])]
    records = [r for r in [await jobs.get_job(conn, job_id) for job_id in ids] if r is not None]
    console.print(_jobs_table(records))
    report = await ledger.audit(conn)
    balance = await ledger.balance(conn, caller)
    adds_up = _explain(console, records, balance, report)
    console.print(
        "Ledger audit: every invariant holds."
        if report.clean
        else "Ledger audit FAILED:\n" + "\n".join(f"  {v}" for v in report.violations)
    )
    expected = {
        **dict.fromkeys(successes, JobStatus.COMPLETED),
        **dict.fromkeys(failures, JobStatus.FAILED),
        **dict.fromkeys(to_cancel, JobStatus.CANCELLED),
        provision: JobStatus.COMPLETED,
    }
    as_expected = all(r.status is expected.get(r.job_id, JobStatus.COMPLETED) for r in records)
    return ended and report.clean and adds_up and as_expected


async def _until_running(conn: psycopg.AsyncConnection[Any], job_ids: list[uuid.UUID]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cur = await conn.execute(
            "SELECT count(*) FROM service_jobs WHERE job_id = ANY(%s) AND status = 'running'", (job_ids,)
        )
        if (await cur.fetchone() or (0,))[0] == len(job_ids):
            return
        await asyncio.sleep(0.1)


async def _until(conn: psycopg.AsyncConnection[Any], live_query: str, time_limit: float) -> bool:
    deadline = time.monotonic() + time_limit
    while time.monotonic() < deadline:
        if (await (await conn.execute(live_query)).fetchone() or (0,))[0] == 0:
            return True
        await asyncio.sleep(0.2)
    return False


def _jobs_table(records: list[jobs.JobRecord]) -> Table:
    table = Table(title="Jobs")
    for column in ("service", "status", "cost", "settlement", "result or error"):
        table.add_column(column)
    for record in records:
        error = f"{record.error_code}: {record.error_message or ''}"
        outcome = error if record.error_code else json.dumps(record.result)
        settlement = record.settlement.value if record.settlement else "-"
        table.add_row(record.service_id, record.status.value, str(record.cost_credits), settlement, outcome[:70])
    return table


def _explain(console: Console, records: list[jobs.JobRecord], balance: int, report: ledger.AuditReport) -> bool:
    """Print where every credit went; True when it adds up."""
    captured = sum(r.cost_credits for r in records if r.settlement is Settlement.CAPTURE)
    refunded = sum(r.cost_credits for r in records if r.settlement is Settlement.REFUND)
    charged = sum(r.cost_credits for r in records)
    console.print(
        f"Balance of {DEMO_CALLER}: granted {GRANT} - charged {charged} + refunded {refunded} = {balance} "
        f"(= {GRANT} - {captured} captured for completed jobs); "
        f"escrow {report.escrow}, revenue {report.revenue}. "
        f"Transfers: {TransferKind.CHARGE.value} {charged}, {TransferKind.CAPTURE.value} {captured}, "
        f"{TransferKind.REFUND.value} {refunded}."
    )
    return balance == GRANT - charged + refunded == GRANT - captured and report.escrow == 0
