"""The escrow ledger: integer credits, double entry, immutable transfers (issue 12, part 3).

Accounts: one per caller (``caller:<uuid>``) and three system accounts, ``grants`` (the source of
every credit, so its balance is minus everything ever granted), ``escrow`` (credits of jobs not
yet finished) and ``revenue``. A transfer moves a positive amount from one account to another:

* grant: grants -> caller (``reconciler credits grant``);
* charge: caller -> escrow, at admission (``paid_admit``);
* capture: escrow -> revenue, when a job completes; refund: escrow -> caller, when it fails, is
  cancelled or times out (``paid_settlement_transfer``, in the termination transaction).

Ids are deterministic (md5 of the kind and the job id, or of the grant key), and partial unique
indexes allow one charge and one settlement per job, so a retried write meets "exists" and
changes nothing. Only caller accounts keep a cached balance (``CHECK (balance >= 0)``, updated in
the statement that writes the transfer): the system accounts' balances are derived from their
transfers when read, so no admission or settlement updates a row every job shares.

:func:`audit` checks the invariants of ``reference/jobs-ledger-anchors.md`` section 3.3 and names
each one violated:

* I1 conservation: caller balances plus the system accounts' derived balances sum to 0;
* I2 parity: each caller's cached balance equals the signed sum of its transfers;
* I3 bounds: no caller, escrow or revenue balance is negative;
* I4 per job: one charge equal to its cost; completed -> one capture of the cost and no refund;
  failed, cancelled, timed out -> one refund of the cost and no capture; live -> no settlement;
  every terminal job settled; free jobs have no transfers;
* I5 clearing: escrow equals the costs of the pending and running jobs;
* I6 idempotency: keyed jobs and key rows pair one to one, and no finished job's key is in flight;
* I7 referential: every transfer runs between the accounts its kind names.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from desired_state.services import queries
from desired_state.services.callers import find_caller
from desired_state.services.vocabulary import (
    ESCROW_ACCOUNT,
    GRANTS_ACCOUNT,
    REVENUE_ACCOUNT,
    AccountKind,
    Clock,
    TransferKind,
    caller_account,
    system_clock,
)

MAX_GRANT = 10**12
MAX_REASON_CHARS = 500
AUDIT_ROW_LIMIT = 1000


class LedgerError(ValueError):
    """Bad ledger input; the message names the field."""


@dataclass(frozen=True)
class Transfer:
    transfer_id: uuid.UUID
    kind: TransferKind
    from_account: str
    to_account: str
    amount: int
    job_id: uuid.UUID | None
    reason: str | None
    created_at: datetime

    def signed_for(self, account: str) -> int:
        return self.amount if self.to_account == account else -self.amount


@dataclass(frozen=True)
class Granted:
    transfer_id: uuid.UUID
    balance: int
    created: bool
    """False when a grant with the same key existed already (nothing changed)."""


async def grant(
    conn: psycopg.AsyncConnection[Any],
    email: str,
    amount: int,
    reason: str,
    *,
    grant_key: str | None = None,
    clock: Clock = system_clock,
) -> Granted:
    """Credit a caller ``amount`` credits from the grants account.

    ``grant_key`` makes the grant idempotent (the same key grants once); without one every call
    is a new grant.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_GRANT:
        raise LedgerError(f"amount: must be a whole number of credits from 1 to {MAX_GRANT}")
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_CHARS or "\x00" in reason:
        raise LedgerError(f"reason: must be 1-{MAX_REASON_CHARS} characters")
    caller = await find_caller(conn, email)
    key = grant_key if grant_key is not None else uuid.uuid4().hex
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            queries.GRANT,
            {"grant_key": key, "caller_id": caller.caller_id, "amount": amount, "reason": reason, "now": clock()},
        )
        row = await cur.fetchone()
        if row is not None:
            return Granted(row[0], int(row[1]), True)
        await cur.execute(queries.SELECT_BALANCE, {"caller_id": caller.caller_id})
        balance_row = await cur.fetchone()
    assert balance_row is not None
    return Granted(grant_transfer_id(key), int(balance_row[0]), False)


def grant_transfer_id(grant_key: str) -> uuid.UUID:
    """The id of the grant made with ``grant_key`` (``md5('grant:' || key)::uuid``, as in SQL)."""
    return uuid.UUID(bytes=hashlib.md5(f"grant:{grant_key}".encode(), usedforsecurity=False).digest())


async def balance(conn: psycopg.AsyncConnection[Any], caller_id: uuid.UUID) -> int:
    async with conn.cursor() as cur:
        await cur.execute(queries.SELECT_BALANCE, {"caller_id": caller_id})
        row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def recent_transfers(conn: psycopg.AsyncConnection[Any], caller_id: uuid.UUID, limit: int = 20) -> list[Transfer]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.RECENT_TRANSFERS, {"account": caller_account(caller_id), "limit": limit})
        rows = await cur.fetchall()
    return [
        Transfer(
            transfer_id=row["transfer_id"],
            kind=TransferKind(row["kind"]),
            from_account=row["from_account"],
            to_account=row["to_account"],
            amount=int(row["amount"]),
            job_id=row["job_id"],
            reason=row["reason"],
            created_at=row["created_at"],
        )
        for row in rows
    ]


# -- the audit -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    invariant: str
    """``I1`` ... ``I7``."""
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant} {INVARIANT_NAMES[self.invariant]}: {self.detail}"


INVARIANT_NAMES = {
    "I1": "conservation",
    "I2": "parity",
    "I3": "bounds",
    "I4": "per-job settlement",
    "I5": "clearing",
    "I6": "idempotency",
    "I7": "referential",
}


@dataclass
class AuditReport:
    violations: list[Violation] = field(default_factory=list)
    escrow: int = 0
    revenue: int = 0
    granted: int = 0
    """Everything ever granted (minus the grants account's derived balance)."""
    callers_total: int = 0
    held: int = 0
    """Costs of pending and running jobs (what escrow must hold)."""

    @property
    def clean(self) -> bool:
        return not self.violations

    def by_invariant(self) -> dict[str, int]:
        counts = dict.fromkeys(INVARIANT_NAMES, 0)
        for violation in self.violations:
            counts[violation.invariant] += 1
        return counts


async def audit(conn: psycopg.AsyncConnection[Any], limit: int = AUDIT_ROW_LIMIT) -> AuditReport:
    """Check I1-I7 in one repeatable-read snapshot; every violation is named (up to ``limit`` per query)."""
    report = AuditReport()
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await cur.execute(queries.AUDIT_ACCOUNTS)
        accounts = await cur.fetchall()
        await cur.execute(queries.AUDIT_HELD)
        held_row = await cur.fetchone()
        await cur.execute(queries.AUDIT_JOBS, {"limit": limit})
        jobs = await cur.fetchall()
        await cur.execute(queries.AUDIT_GRANTS, {"limit": limit})
        grants = await cur.fetchall()
        await cur.execute(queries.AUDIT_KEYS, {"limit": limit})
        keys = await cur.fetchall()
    assert held_row is not None
    report.held = int(next(iter(held_row.values())))
    _check_accounts(report, accounts)
    for row in jobs:
        _check_job(report, row)
    for row in grants:
        report.violations.append(
            Violation("I7", f"grant {row['transfer_id']} runs {row['from_account']} -> {row['to_account']}")
        )
    for row in keys:
        _check_key(report, row)
    return report


def _check_accounts(report: AuditReport, accounts: list[dict[str, Any]]) -> None:
    total = 0
    for row in accounts:
        account, kind, cached, derived = row["account_id"], row["kind"], row["balance"], int(row["derived"])
        if kind is None:
            report.violations.append(Violation("I7", f"transfers name account {account}, which does not exist"))
            total += derived
            continue
        if kind == AccountKind.CALLER:
            total += int(cached)
            report.callers_total += int(cached)
            if int(cached) != derived:
                report.violations.append(
                    Violation("I2", f"{account} holds {cached} but its transfers sum to {derived}")
                )
            if int(cached) < 0:
                report.violations.append(Violation("I3", f"{account} balance is {cached}"))
            continue
        total += derived
        if account == ESCROW_ACCOUNT:
            report.escrow = derived
        elif account == REVENUE_ACCOUNT:
            report.revenue = derived
        elif account == GRANTS_ACCOUNT:
            report.granted = -derived
        if account in (ESCROW_ACCOUNT, REVENUE_ACCOUNT) and derived < 0:
            report.violations.append(Violation("I3", f"{account} balance is {derived}"))
    if total != 0:
        report.violations.append(Violation("I1", f"all balances sum to {total}, not 0"))
    if report.escrow != report.held:
        report.violations.append(
            Violation("I5", f"escrow holds {report.escrow} but pending and running jobs cost {report.held}")
        )


def _check_job(report: AuditReport, row: dict[str, Any]) -> None:
    job = f"job {row['job_id']} ({row['service_id']}, {row['status']}, cost {row['cost_credits']})"
    cost, status = int(row["cost_credits"]), row["status"]
    live = status in ("pending", "running")
    if row["misrouted"]:
        report.violations.append(Violation("I7", f"{job}: {row['misrouted']} transfer(s) between the wrong accounts"))
    if cost == 0:
        if row["charges"] + row["captures"] + row["refunds"]:
            report.violations.append(Violation("I4", f"{job}: a free job has transfers"))
    else:
        if row["charges"] == 0:
            report.violations.append(Violation("I7", f"{job}: has no charge"))
        elif row["charges"] != 1 or int(row["charged"]) != cost:
            report.violations.append(
                Violation("I4", f"{job}: {row['charges']} charge(s) of {row['charged']} in all, expected one of {cost}")
            )
        captures, refunds = row["captures"], row["refunds"]
        if live and captures + refunds:
            report.violations.append(Violation("I4", f"{job}: settled while still {status}"))
        elif status == "completed" and (captures != 1 or int(row["captured"]) != cost or refunds):
            report.violations.append(
                Violation("I4", f"{job}: {captures} capture(s), {refunds} refund(s); expected one capture of {cost}")
            )
        elif not live and status != "completed" and (refunds != 1 or int(row["refunded"]) != cost or captures):
            report.violations.append(
                Violation("I4", f"{job}: {refunds} refund(s), {captures} capture(s); expected one refund of {cost}")
            )
    if not live and not row["settled"]:
        report.violations.append(Violation("I4", f"{job}: finished but not settled"))
    elif live and row["settled"]:
        report.violations.append(Violation("I4", f"{job}: marked settled while still {status}"))
    elif row["settled"]:
        expected = "none" if cost == 0 else "capture" if status == "completed" else "refund"
        if row["settlement"] != expected:
            report.violations.append(
                Violation("I4", f"{job}: recorded settlement {row['settlement']}, expected {expected}")
            )


def _check_key(report: AuditReport, row: dict[str, Any]) -> None:
    if row["job"] is None:
        report.violations.append(Violation("I6", f"key row of job {row['key_job']} pairs with no keyed job"))
    elif row["key_job"] is None:
        report.violations.append(Violation("I6", f"job {row['job']} carries a key but has no key row"))
    elif row["state"] == "in_flight" and row["status"] not in ("pending", "running"):
        report.violations.append(Violation("I6", f"job {row['job']} is {row['status']} but its key is still in flight"))
    else:
        report.violations.append(
            Violation("I6", f"job {row['job']} and its key row disagree on caller, service or key")
        )
