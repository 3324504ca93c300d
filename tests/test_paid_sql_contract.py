"""The paid half of the SQL contract, run as written: every ``sql`` block of the section "Paid
service jobs over plain SQL" of docs/sql-contract.md, executed over psycopg by a role that has
exactly the privileges the section grants, with no helper code of ours on the backend's side.

It also holds the contract's one refusal by error: a proxy service admitted over SQL without the
process that would call its upstream (``p_lease_owner``) raises SQLSTATE 22023 and writes nothing
(migration 0010)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from desired_state.services import intake, ledger
from desired_state.services.builtin import DELAY_ECHO, ECHO, builtin_registry

DOC = Path(__file__).resolve().parent.parent / "docs" / "sql-contract.md"
SECTION = "## Paid service jobs over plain SQL"


def documented_blocks() -> list[str]:
    text = DOC.read_text()
    section = text[text.index(SECTION) :]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.DOTALL)


def statements(block: str) -> list[str]:
    """The block's statements, split at each ``;`` that ends a line (comments dropped)."""
    lines = [line for line in block.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in re.split(r";\s*(?:--[^\n]*)?\n", "\n".join(lines) + "\n") if part.strip()]


def run(conn: psycopg.Connection[Any], statement: str, **placeholders: str) -> list[dict[str, Any]]:
    for name, value in placeholders.items():
        statement = statement.replace(f"<{name}>", value)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(statement.encode())
        return cur.fetchall() if cur.description else []


@contextmanager
def backend_connection(db_url: str, grants_block: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of a new role holding exactly the documented grants (dropped afterwards)."""
    role = f"backend_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for statement in statements(grants_block):
            admin.execute(re.sub(r"\bbackend\b", role, statement).encode())
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(db_url, user=role), autocommit=True) as backend:
            yield backend
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_a_backend_admits_reads_and_cancels_with_the_documented_sql(db_url: str) -> None:
    callers_block, admit_block, read_block, cancel_block, grants_block = documented_blocks()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as owner:
        await intake.sync_services(owner, builtin_registry())  # what `reconciler run` does at start-up

    with backend_connection(db_url, grants_block) as backend:
        make_caller, grant, enroll = statements(callers_block)
        [created] = run(backend, make_caller)
        caller_id = str(created["caller_id"])
        run(backend, grant, caller_id=caller_id)
        run(backend, grant, caller_id=caller_id)  # the same grant key: nothing more
        run(backend, enroll, caller_id=caller_id)

        [admit] = statements(admit_block)
        [first] = run(backend, admit, caller_id=caller_id)
        assert (first["outcome"], first["job_status"], first["cost_credits"]) == ("admitted", "pending", 1)
        [replay] = run(backend, admit, caller_id=caller_id)
        assert (replay["outcome"], replay["job_id"]) == ("replayed", first["job_id"])
        [other] = run(backend, admit.replace('"seconds": 5', '"seconds": 6'), caller_id=caller_id)
        assert other["outcome"] == "idempotency_mismatch"
        [pricey] = run(backend, admit.replace("util.delay-echo", "agents.provision").replace("client-key-1", "k2"),
                       caller_id=caller_id)  # fmt: skip
        assert pricey["outcome"] == "admitted"  # 100 of the 499 left

        job_id = str(first["job_id"])
        [read] = statements(read_block)
        [job] = run(backend, read, job_id=job_id)
        assert (job["status"], job["cost_credits"], job["settlement"]) == ("pending", 1, None)

        [cancel] = statements(cancel_block)
        [cancelled] = run(backend, cancel, job_id=job_id)
        assert (cancelled["changed"], cancelled["status"], cancelled["settlement"]) == (True, "cancelled", "refund")
        [again] = run(backend, cancel, job_id=job_id)
        assert (again["changed"], again["status"]) == (False, "cancelled")
        [job] = run(backend, read, job_id=job_id)
        assert (job["status"], job["settlement"], job["error_code"]) == ("cancelled", "refund", "cancelled")

        # A job with a webhook (docs/webhooks.md: the backend sets the URL itself): its termination
        # writes the outbox row under the backend's own privileges, so the documented grants hold it.
        [hooked] = run(backend, admit.replace("client-key-1", "k3"), caller_id=caller_id)
        hook = "UPDATE service_jobs SET webhook_url = 'https://hooks.example.com/jobs' WHERE job_id = '<job_id>'"
        run(backend, hook + " AND webhook_url IS NULL", job_id=str(hooked["job_id"]))
        [ended] = run(backend, cancel, job_id=str(hooked["job_id"]))
        assert (ended["changed"], ended["settlement"]) == (True, "refund")

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as owner:
        report = await ledger.audit(owner)
        assert report.violations == []
        assert (report.granted, report.callers_total, report.escrow, report.held) == (500, 400, 100, 100)
        owed = await owner.execute("SELECT count(*) FROM webhook_deliveries WHERE job_id = %s", (hooked["job_id"],))
        assert await owed.fetchone() == (1,)


async def test_a_proxy_service_admitted_over_sql_without_its_caller_raises_and_writes_nothing(db_url: str) -> None:
    callers_block, admit_block, _, _, grants_block = documented_blocks()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as owner:
        await intake.sync_services(owner, builtin_registry())

    with backend_connection(db_url, grants_block) as backend:
        make_caller, grant, _ = statements(callers_block)
        [created] = run(backend, make_caller)
        caller_id = str(created["caller_id"])
        run(backend, grant, caller_id=caller_id)
        [admit] = statements(admit_block)
        proxy_admit = admit.replace(DELAY_ECHO, ECHO)
        assert proxy_admit != admit

        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            run(backend, proxy_admit, caller_id=caller_id)
        assert refused.value.sqlstate == "22023"
        assert f"{ECHO} is a proxy service: it needs p_lease_owner" in str(refused.value)
        written = """
            SELECT (SELECT count(*) FROM service_jobs) AS jobs,
                   (SELECT count(*) FROM credit_transfers WHERE kind = 'charge') AS charges,
                   (SELECT count(*) FROM idempotency_keys) AS keys,
                   (SELECT balance FROM credit_accounts WHERE caller_id = '<caller_id>') AS balance"""
        assert run(backend, written, caller_id=caller_id) == [{"jobs": 0, "charges": 0, "keys": 0, "balance": 500}]

        # The same guard holds for a live proxy row written directly; a finished one (no lease) may be.
        insert = (
            "INSERT INTO service_jobs (service_id, runtime, caller_id, input, cost_credits, status, timeout_seconds,"
            " finished_at, settlement, settled_at) VALUES (%s, 'proxy', %s, '{}', 0, %s, 60, %s, %s, %s)"
        )
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            backend.execute(insert, (ECHO, caller_id, "running", None, None, None))
        finished = datetime.now(UTC)
        backend.execute(insert, (ECHO, caller_id, "completed", finished, "none", finished))

        lease_owner_argument = r"^\s*NULL\b(?=\s*-- p_lease_owner)"
        owned, replaced = re.subn(lease_owner_argument, "    'backend-proxy-1'", proxy_admit, flags=re.M)
        assert replaced == 1
        [admitted] = run(backend, owned, caller_id=caller_id)  # the refused call left the key unused
        assert (admitted["outcome"], admitted["job_status"], admitted["cost_credits"]) == ("admitted", "running", 1)
        [job] = run(
            backend,
            "SELECT j.lease_owner, k.state FROM service_jobs j JOIN idempotency_keys k USING (job_id)"
            " WHERE j.job_id = '<job_id>'",
            job_id=str(admitted["job_id"]),
        )
        assert job == {"lease_owner": "backend-proxy-1", "state": "in_flight"}

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as owner:
        report = await ledger.audit(owner)
        assert report.violations == []
        assert (report.granted, report.callers_total, report.escrow, report.held) == (500, 499, 1, 1)
