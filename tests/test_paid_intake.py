"""Admission (intake), termination and the ledger against a real Postgres, with a test clock."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import psycopg
import pytest

from desired_state.services import callers, intake, ledger
from desired_state.services.builtin import DELAY_ECHO
from desired_state.services.intake import AdmissionRefused
from desired_state.services.termination import JobError, cancel, terminate
from desired_state.services.vocabulary import (
    AccountKind,
    ErrorCode,
    JobErrorCode,
    JobStatus,
    Runtime,
    Settlement,
    TransferKind,
)
from tests.paid_support import FREE, GATED, LIMITED, PRICY, FakeClock, registry

Conn = psycopg.AsyncConnection[Any]


async def new_caller(conn: Conn, email: str = "ada@example.com", credits: int = 10) -> uuid.UUID:
    issued = await callers.create_caller(conn, email)
    if credits:
        await ledger.grant(conn, email, credits, "welcome")
    return issued.caller.caller_id


async def count(conn: Conn, table: str) -> int:
    cur = await conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table)))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def assert_clean(conn: Conn) -> ledger.AuditReport:
    report = await ledger.audit(conn)
    assert report.violations == []
    return report


async def test_admit_charges_into_escrow_and_completion_captures(conn: Conn) -> None:
    clock = FakeClock()
    caller = await new_caller(conn)
    admitted = await intake.admit(conn, registry(), caller, DELAY_ECHO, {"seconds": 1}, clock=clock)
    assert (admitted.status, admitted.cost_credits, admitted.replayed) == (JobStatus.PENDING, 1, False)
    assert await ledger.balance(conn, caller) == 9
    report = await assert_clean(conn)
    assert (report.escrow, report.held, report.revenue, report.granted) == (1, 1, 0, 10)

    done = await terminate(conn, admitted.job_id, JobStatus.COMPLETED, now=clock(), token=None, result={"ok": 1})
    assert (done.changed, done.status, done.settlement) == (True, JobStatus.COMPLETED, Settlement.CAPTURE)
    again = await terminate(conn, admitted.job_id, JobStatus.FAILED, now=clock(), token=None)
    assert not again.changed and again.status is JobStatus.COMPLETED
    report = await assert_clean(conn)
    assert (report.escrow, report.revenue) == (0, 1)


async def test_cancel_refunds_once_and_is_scoped_to_the_caller(conn: Conn) -> None:
    clock = FakeClock()
    ada = await new_caller(conn)
    bob = await new_caller(conn, "bob@example.com")
    admitted = await intake.admit(conn, registry(), ada, DELAY_ECHO, {}, clock=clock)
    assert (await cancel(conn, admitted.job_id, now=clock(), caller_id=bob)).found is False
    first = await cancel(conn, admitted.job_id, now=clock(), caller_id=ada)
    assert (first.found, first.status, first.refunded) == (True, JobStatus.CANCELLED, True)
    second = await cancel(conn, admitted.job_id, now=clock(), caller_id=ada)
    assert (second.status, second.refunded) == (JobStatus.CANCELLED, False)
    assert await ledger.balance(conn, ada) == 10
    await assert_clean(conn)


async def test_refusals_write_nothing(conn: Conn) -> None:
    clock = FakeClock()
    caller = await new_caller(conn, credits=10)
    reg = registry()
    cases: list[tuple[str, dict[str, Any], ErrorCode, str | None]] = [
        ("nope.nothing", {}, ErrorCode.SERVICE_NOT_FOUND, None),
        (DELAY_ECHO, {"seconds": 301}, ErrorCode.INVALID_INPUT, None),
        (DELAY_ECHO, {"seconds": "5"}, ErrorCode.INVALID_INPUT, None),
        (DELAY_ECHO, {"extra": 1}, ErrorCode.INVALID_INPUT, None),
        (GATED, {}, ErrorCode.COURSE_NOT_PURCHASED, "media-101"),
        (PRICY, {}, ErrorCode.INSUFFICIENT_CREDITS, "40 more credits needed"),
    ]
    for service, data, code, hint in cases:
        with pytest.raises(AdmissionRefused) as refused:
            await intake.admit(conn, reg, caller, service, data, idempotency_key="k", clock=clock)
        assert refused.value.code is code, service
        if hint is not None:
            assert refused.value.hint == hint
    assert await count(conn, "service_jobs") == 0
    assert await count(conn, "idempotency_keys") == 0
    assert await ledger.balance(conn, caller) == 10
    # the key stayed usable
    await callers.enroll(conn, "ada@example.com", "media-101")
    admitted = await intake.admit(conn, reg, caller, GATED, {}, idempotency_key="k", clock=clock)
    assert admitted.cost_credits == 2 and not admitted.replayed
    await assert_clean(conn)


async def test_idempotency_replay_mismatch_and_scope(conn: Conn) -> None:
    clock = FakeClock()
    ada = await new_caller(conn)
    bob = await new_caller(conn, "bob@example.com")
    reg = registry()
    first = await intake.admit(conn, reg, ada, LIMITED, {"n": 1}, idempotency_key="k1", clock=clock)
    replay = await intake.admit(conn, reg, ada, LIMITED, {"n": 1}, idempotency_key="k1", clock=clock)
    assert replay.replayed and replay.job_id == first.job_id and replay.response_status == 202
    with pytest.raises(AdmissionRefused) as mismatch:
        await intake.admit(conn, reg, ada, LIMITED, {"n": 2}, idempotency_key="k1", clock=clock)
    assert mismatch.value.code is ErrorCode.IDEMPOTENCY_KEY_REUSED
    other = await intake.admit(conn, reg, bob, LIMITED, {"n": 1}, idempotency_key="k1", clock=clock)
    assert other.job_id != first.job_id and not other.replayed
    assert await ledger.balance(conn, ada) == 9
    # replays did not consume the rate limit (2 per minute): one more is admitted
    await intake.admit(conn, reg, ada, LIMITED, {"n": 3}, clock=clock)
    with pytest.raises(AdmissionRefused) as limited:
        await intake.admit(conn, reg, ada, LIMITED, {"n": 4}, clock=clock)
    assert limited.value.code is ErrorCode.RATE_LIMIT_EXCEEDED and limited.value.retry_after == 60
    await assert_clean(conn)


async def test_retry_after_is_exact(conn: Conn) -> None:
    clock = FakeClock()
    caller = await new_caller(conn)
    reg = registry()
    await intake.admit(conn, reg, caller, LIMITED, {}, clock=clock)  # t=0
    clock.advance(20.5)
    await intake.admit(conn, reg, caller, LIMITED, {}, clock=clock)  # t=20.5
    clock.advance(10)  # t=30.5: the minute window holds 2; the oldest leaves at t=60
    with pytest.raises(AdmissionRefused) as refused:
        await intake.admit(conn, reg, caller, LIMITED, {}, clock=clock)
    assert refused.value.retry_after == 30 and refused.value.hint == "Reset in 30s"
    clock.advance(29)  # t=59.5: still inside
    with pytest.raises(AdmissionRefused) as again:
        await intake.admit(conn, reg, caller, LIMITED, {}, clock=clock)
    assert again.value.retry_after == 1
    clock.advance(0.5)  # t=60: the retry after exactly Retry-After succeeds
    await intake.admit(conn, reg, caller, LIMITED, {}, clock=clock)
    # the hour window (3) now blocks until the first admission is an hour old
    clock.advance(100)  # t=160
    with pytest.raises(AdmissionRefused) as hourly:
        await intake.admit(conn, reg, caller, LIMITED, {}, clock=clock)
    assert hourly.value.retry_after == 3600 - 160
    clock.advance(3600 - 160)
    await intake.admit(conn, reg, caller, LIMITED, {}, clock=clock)
    await assert_clean(conn)


async def test_free_service_writes_no_transfers(conn: Conn) -> None:
    clock = FakeClock()
    caller = await new_caller(conn, credits=0)
    admitted = await intake.admit(conn, registry(), caller, FREE, {}, clock=clock)
    outcome = await terminate(
        conn,
        admitted.job_id,
        JobStatus.FAILED,
        now=clock(),
        token=None,
        error=JobError(JobErrorCode.HANDLER_FAILED, "boom"),
    )
    assert outcome.settlement is Settlement.NONE
    assert await count(conn, "credit_transfers") == 0
    await assert_clean(conn)


async def test_provision_input_takes_tool_names_as_json_strings(conn: Conn) -> None:
    caller = await new_caller(conn, credits=100)
    admitted = await intake.admit(
        conn, registry(), caller, "agents.provision", {"name": "bot", "tools": ["openrouter"], "env": {"A": "1"}}
    )
    assert admitted.document == {"name": "bot", "tools": ["openrouter"], "env": {"A": "1"}}
    await assert_clean(conn)


async def _concurrently(db_url: str, n: int, admit: Any) -> list[Any]:
    """``admit(conn)`` on ``n`` connections at once; refusals are returned, not raised."""
    conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True) for _ in range(n)]
    try:
        return await asyncio.gather(*(admit(c) for c in conns), return_exceptions=True)
    finally:
        for c in conns:
            await c.close()


async def test_concurrent_admissions_share_one_key_one_limit_and_one_balance(conn: Conn, db_url: str) -> None:
    clock = FakeClock()
    caller = await new_caller(conn, credits=10)
    reg = registry()

    same_key = await _concurrently(
        db_url, 8, lambda c: intake.admit(c, reg, caller, DELAY_ECHO, {"seconds": 1}, idempotency_key="k", clock=clock)
    )
    assert len({a.job_id for a in same_key}) == 1 and sum(not a.replayed for a in same_key) == 1

    limited = await _concurrently(db_url, 8, lambda c: intake.admit(c, reg, caller, LIMITED, {}, clock=clock))
    admitted = [a for a in limited if not isinstance(a, BaseException)]
    refused = [a for a in limited if isinstance(a, AdmissionRefused)]
    assert len(admitted) == 2 and len(refused) == 6
    assert {r.code for r in refused} == {ErrorCode.RATE_LIMIT_EXCEEDED} and {r.retry_after for r in refused} == {60}

    # 7 credits left; 12 admissions of 1 credit each, at once: exactly 7 pass, the balance ends at 0
    spent = await _concurrently(db_url, 12, lambda c: intake.admit(c, reg, caller, DELAY_ECHO, {}, clock=clock))
    assert sum(not isinstance(a, BaseException) for a in spent) == 7
    assert {a.code for a in spent if isinstance(a, AdmissionRefused)} == {ErrorCode.INSUFFICIENT_CREDITS}
    assert await ledger.balance(conn, caller) == 0
    await assert_clean(conn)


async def test_a_terminal_job_cannot_be_reopened_over_sql(conn: Conn) -> None:
    clock = FakeClock()
    caller = await new_caller(conn)
    admitted = await intake.admit(conn, registry(), caller, DELAY_ECHO, {}, clock=clock)
    await terminate(conn, admitted.job_id, JobStatus.COMPLETED, now=clock(), token=None, result={})
    for change in ("status = 'failed'", "cost_credits = 5"):
        with pytest.raises(psycopg.errors.RaiseException, match="never change"):
            await conn.execute(f"UPDATE service_jobs SET {change} WHERE job_id = %s".encode(), (admitted.job_id,))
    await assert_clean(conn)


@pytest.mark.parametrize(
    ("table", "column", "vocabulary"),
    [
        ("service_jobs", "status", JobStatus),
        ("service_jobs", "runtime", Runtime),
        ("service_jobs", "settlement", Settlement),
        ("credit_transfers", "kind", TransferKind),
        ("credit_accounts", "kind", AccountKind),
    ],
)
async def test_the_schema_spells_the_vocabulary(conn: Conn, table: str, column: str, vocabulary: Any) -> None:
    """The CHECK constraints of migration 0006 allow exactly the values of the Python enums."""
    cur = await conn.execute(
        """SELECT d FROM (SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint
                           WHERE conrelid = %s::regclass AND contype = 'c') c
            WHERE d LIKE %s AND d NOT LIKE '%%finished_at%%'""",
        (table, f"%({column} = ANY%"),
    )
    [(definition,)] = await cur.fetchall()
    assert set(re.findall(r"'([a-z_]+)'::text", definition)) == {member.value for member in vocabulary}


async def test_an_admission_never_re_enables_a_service_an_operator_disabled(conn: Conn) -> None:
    """An unpublished service is published by the first admission; a disabled one stays disabled
    (404), whatever the caller sends: a refusal writes nothing."""
    caller = await new_caller(conn)
    await intake.admit(conn, registry(), caller, DELAY_ECHO, {"seconds": 0})  # publishes it
    await conn.execute("UPDATE paid_services SET enabled = FALSE WHERE service_id = %s", (DELAY_ECHO,))
    for who in (caller, callers.PresentedKey(b"\0" * 32)):  # a known caller, and a key nobody holds
        with pytest.raises(AdmissionRefused) as refused:
            await intake.admit(conn, registry(), who, DELAY_ECHO, {"seconds": 0})
        assert refused.value.code is ErrorCode.SERVICE_NOT_FOUND
    enabled = await conn.execute("SELECT enabled FROM paid_services WHERE service_id = %s", (DELAY_ECHO,))
    assert await enabled.fetchone() == (False,)
    assert await count(conn, "service_jobs") == 1 and await ledger.balance(conn, caller) == 9
