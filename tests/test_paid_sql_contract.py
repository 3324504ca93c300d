"""The paid half of the SQL contract, run as written: every ``sql`` block of the section "Paid
service jobs over plain SQL" of docs/sql-contract.md, executed over psycopg by a role that has
exactly the privileges the section grants, with no helper code of ours on the backend's side."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from desired_state.services import intake, ledger
from desired_state.services.builtin import builtin_registry

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


async def test_a_backend_admits_reads_and_cancels_with_the_documented_sql(db_url: str) -> None:
    callers_block, admit_block, read_block, cancel_block, grants_block = documented_blocks()
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as owner:
        await intake.sync_services(owner, builtin_registry())  # what `reconciler run` does at start-up

    role = f"backend_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for statement in statements(grants_block):
            admin.execute(re.sub(r"\bbackend\b", role, statement).encode())
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(db_url, user=role), autocommit=True) as backend:
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
    finally:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as owner:
        report = await ledger.audit(owner)
        assert report.violations == []
        assert (report.granted, report.callers_total, report.escrow, report.held) == (500, 400, 100, 100)
