"""``reconciler jobs list | show | cancel`` as an operator runs them: real subprocesses, a real Postgres."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from desired_state.services.builtin import DELAY_ECHO
from tests.jobs_support import admit, assert_audit_clean, new_caller, transfers
from tests.support import cli_env, run_cli

Conn = psycopg.AsyncConnection[Any]


async def test_list_show_and_cancel(db_url: str, conn: Conn) -> None:
    env = cli_env(db_url)
    caller = await new_caller(conn, credits=10)
    first = await admit(conn, caller, DELAY_ECHO, {"seconds": 5, "payload": {"n": 1}})
    second = await admit(conn, caller, DELAY_ECHO, {"seconds": 5})

    code, out, err = await run_cli("jobs", "list", "--status", "pending", "--json", env=env)
    assert code == 0, err
    listed = json.loads(out)
    assert [job["jobId"] for job in listed] == [str(second), str(first)]
    assert listed[0]["status"] == "pending" and listed[0]["costCredits"] == 1

    code, out, err = await run_cli("jobs", "cancel", str(first), env=env)
    assert code == 0 and "refunded" in out, err
    assert await transfers(conn, first) == ["charge", "refund"]
    code, _, err = await run_cli("jobs", "cancel", str(first), env=env)
    assert code == 1 and "is cancelled: nothing to cancel" in err
    assert await transfers(conn, first) == ["charge", "refund"]  # not refunded twice

    code, out, err = await run_cli("jobs", "show", str(first), env=env)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["status"], shown["refunded"], shown["error"]["code"]) == ("cancelled", True, "cancelled")

    code, out, _ = await run_cli("jobs", "list", env=env)
    assert code == 0 and str(second) in out and "pending" in out and "cancelled" in out
    await assert_audit_clean(conn)


async def test_bad_input_exits_2_naming_the_field_and_changes_nothing(db_url: str, conn: Conn) -> None:
    env = cli_env(db_url)
    caller = await new_caller(conn, credits=10)
    job_id = await admit(conn, caller, DELAY_ECHO, {"seconds": 5})
    for args, field in (
        (("jobs", "list", "--status", "done"), "--status"),
        (("jobs", "show", "not-a-uuid"), "job id"),
        (("jobs", "cancel", "42"), "job id"),
    ):
        code, _, err = await run_cli(*args, env=env)
        assert code == 2 and field in err, (args, err)
        assert "Traceback" not in err
    code, _, err = await run_cli("jobs", "cancel", str(uuid.uuid4()), env=env)
    assert code == 1 and "no job" in err
    status = await (await conn.execute("SELECT status FROM service_jobs WHERE job_id = %s", (job_id,))).fetchone()
    assert status == ("pending",)
