"""The paid half's commands: ``callers``, ``credits``, ``courses``, ``services`` and ``ledger``.

Each is a typer sub-app registered in ``cli.py``. They resolve the database exactly as every other
command does (:mod:`reconciler.cli.common`: ``SERVICE_DATABASE_URL``, else the embedded Postgres,
and a schema this version's migrations have reached) and fail the same way (a
:class:`~reconciler.cli.common.CommandError`: one line on stderr; exit 2 for bad input, checked
before anything is written, 1 otherwise). Keys are printed on stdout alone, everything else on
the shared consoles without markup (emails and reasons are the operator's text).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import psycopg
import typer

from desired_state.services import callers, ledger
from desired_state.services.builtin import BuiltinSettings, builtin_registry
from desired_state.services.callers import CallerError, CallerExists, CallerNotFound
from desired_state.services.definitions import COURSE_ID_PATTERN
from desired_state.services.ledger import LedgerError
from desired_state.services.vocabulary import caller_account
from reconciler.cli.common import EXIT_BAD_INPUT, console, err_console, fail, with_connection

T = TypeVar("T")

callers_app = typer.Typer(help="Callers of the paid services and their API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Credit balances: grant credits, show a balance.", no_args_is_help=True)
courses_app = typer.Typer(help="Course purchases that gate some services.", no_args_is_help=True)
services_app = typer.Typer(help="The paid services catalog.", no_args_is_help=True)
ledger_app = typer.Typer(help="The credits ledger.", no_args_is_help=True)

EmailArg = Annotated[str, typer.Argument(help="The caller's email address.", show_default=False)]


def _say(line: str) -> None:
    console.print(line, highlight=False, markup=False, soft_wrap=True)


def _note(line: str) -> None:
    err_console.print(line, highlight=False, markup=False)


def _with_connection(work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    """:func:`~reconciler.cli.common.with_connection`; an unknown caller exits 1 naming it."""
    try:
        return with_connection(work)
    except CallerNotFound as exc:
        fail(str(exc))


def _email(email: str) -> str:
    try:
        return callers.normalise_email(email)
    except CallerError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


# -- callers -------------------------------------------------------------------------------------------


@callers_app.command("create")
def callers_create(email: EmailArg) -> None:
    """Create a caller and print its API key (sk-...) on stdout, once: it is stored only hashed."""
    address = _email(email)

    async def create(conn: psycopg.AsyncConnection[Any]) -> callers.IssuedKey:
        try:
            return await callers.create_caller(conn, address)
        except CallerExists as exc:
            fail(str(exc))

    issued = _with_connection(create)
    _note(f"created caller {address}; its API key is shown once, below: store it now")
    sys.stdout.write(issued.secret + "\n")


@callers_app.command("key")
def callers_key(email: EmailArg) -> None:
    """Issue another API key for a caller (the old ones stay valid until revoked); printed once."""
    address = _email(email)
    issued = _with_connection(lambda conn: callers.issue_key(conn, address))
    _note(f"new API key for {address}, shown once, below")
    sys.stdout.write(issued.secret + "\n")


@callers_app.command("revoke")
def callers_revoke(
    email: EmailArg,
    key: Annotated[
        str | None, typer.Option("--key", help="Only this key (the key, or its first 11 characters).")
    ] = None,
) -> None:
    """Revoke a caller's API keys (all of them, or the one named by --key); requests with them get 401."""
    address = _email(email)
    if key is not None and not key.startswith("sk-"):
        fail("--key: must be the start of a key, like sk-AbCdEfGh", EXIT_BAD_INPUT)

    async def revoke(conn: psycopg.AsyncConnection[Any]) -> list[str]:
        try:
            return await callers.revoke_keys(conn, address, key)
        except CallerError as exc:
            fail(str(exc), EXIT_BAD_INPUT)

    revoked = _with_connection(revoke)
    if not revoked:
        fail(f"{address} has no live key" + (f" starting {key}" if key else ""))
    for prefix in revoked:
        _say(f"revoked {prefix}...")


# -- credits -------------------------------------------------------------------------------------------


@credits_app.command("grant")
def credits_grant(
    email: EmailArg,
    amount: Annotated[int, typer.Argument(help="Whole credits to grant.", min=1, max=ledger.MAX_GRANT)],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept on the transfer).", show_default=False)],
    grant_key: Annotated[
        str | None, typer.Option("--grant-key", help="Make the grant idempotent: the same key grants once.")
    ] = None,
) -> None:
    """Grant credits to a caller (a transfer from the grants account)."""
    address = _email(email)
    if not reason.strip() or len(reason) > ledger.MAX_REASON_CHARS:
        fail(f"--reason: must be 1-{ledger.MAX_REASON_CHARS} characters", EXIT_BAD_INPUT)
    if grant_key is not None and not 1 <= len(grant_key) <= 200:
        fail("--grant-key: must be 1-200 characters", EXIT_BAD_INPUT)

    async def grant(conn: psycopg.AsyncConnection[Any]) -> ledger.Granted:
        try:
            return await ledger.grant(conn, address, amount, reason, grant_key=grant_key)
        except LedgerError as exc:
            fail(str(exc), EXIT_BAD_INPUT)

    granted = _with_connection(grant)
    if granted.created:
        _say(f"granted {amount} credits to {address}; balance {granted.balance}")
    else:
        _say(f"grant {grant_key} was made before; nothing changed; balance {granted.balance}")


@credits_app.command("show")
def credits_show(
    email: EmailArg,
    limit: Annotated[int, typer.Option(help="How many recent transfers.", min=1, max=500)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """A caller's balance and recent transfers."""
    address = _email(email)

    async def show(conn: psycopg.AsyncConnection[Any]) -> tuple[int, list[ledger.Transfer], str]:
        caller = await callers.find_caller(conn, address)
        return (
            await ledger.balance(conn, caller.caller_id),
            await ledger.recent_transfers(conn, caller.caller_id, limit),
            caller_account(caller.caller_id),
        )

    balance, transfers, account = _with_connection(show)
    if as_json:
        document = {
            "email": address,
            "balance": balance,
            "transfers": [
                {
                    "transferId": str(t.transfer_id),
                    "kind": t.kind.value,
                    "amount": t.signed_for(account),
                    "jobId": str(t.job_id) if t.job_id else None,
                    "reason": t.reason,
                    "createdAt": t.created_at.isoformat(),
                }
                for t in transfers
            ],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    _say(f"{address}: {balance} credits")
    for t in transfers:
        about = t.reason or (f"job {t.job_id}" if t.job_id else "")
        _say(f"  {t.created_at:%Y-%m-%d %H:%M:%S}  {t.kind.value:<8} {t.signed_for(account):>+8}  {about}")


# -- courses -------------------------------------------------------------------------------------------


@courses_app.command("enroll")
def courses_enroll(
    email: EmailArg,
    course: Annotated[str, typer.Argument(help="The course id a service requires.", show_default=False)],
) -> None:
    """Record that a caller bought a course (opens the services gated on it)."""
    address = _email(email)
    if not COURSE_ID_PATTERN.fullmatch(course):
        fail("course: must be 1-100 characters of a-z, 0-9, '.', '_' or '-'", EXIT_BAD_INPUT)
    added = _with_connection(lambda conn: callers.enroll(conn, address, course))
    _say(f"{address} {'enrolled in' if added else 'was already enrolled in'} {course}")


# -- services ------------------------------------------------------------------------------------------


@services_app.command("list")
def services_list(as_json: Annotated[bool, typer.Option("--json", help="The catalog as JSON.")] = False) -> None:
    """The services this deployment offers, with cost, runtime, limits and access rules."""
    try:
        settings = BuiltinSettings.from_env(os.environ)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    items = builtin_registry(settings).catalog()
    if as_json:
        sys.stdout.write(json.dumps([item.model_dump(mode="json") for item in items], indent=2) + "\n")
        return
    for item in items:
        limits = ""
        if item.rateLimit is not None:
            parts = [f"{value}/{unit}" for value, unit in (
                (item.rateLimit.perMinute, "min"), (item.rateLimit.perHour, "h"), (item.rateLimit.perDay, "day")
            ) if value]  # fmt: skip
            limits = " limit " + ",".join(parts)
        gate = f" course {item.access['requiresCoursePurchase']}" if "requiresCoursePurchase" in item.access else ""
        _say(f"{item.id:<20} {item.runtime.value:<5} {item.costCredits:>5} cr{limits}{gate}  {item.summary}")


# -- ledger --------------------------------------------------------------------------------------------


@ledger_app.command("audit")
def ledger_audit(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Check the ledger invariants I1-I7; exit 0 when every one holds, 1 with each violation named."""
    report = _with_connection(ledger.audit)
    if as_json:
        document = {
            "clean": report.clean,
            "escrow": report.escrow,
            "revenue": report.revenue,
            "granted": report.granted,
            "callers": report.callers_total,
            "held": report.held,
            "violations": [{"invariant": v.invariant, "detail": v.detail} for v in report.violations],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        _say(
            f"granted {report.granted} = callers {report.callers_total} + escrow {report.escrow} "
            f"+ revenue {report.revenue}; escrow holds {report.held} for jobs not finished"
        )
        for violation in report.violations:
            _say(str(violation))
        summary = f"{len(report.violations)} violation(s)" if report.violations else "every invariant holds"
        _say(f"ledger audit: {summary}")
    if not report.clean:
        raise typer.Exit(1)
