"""``reconciler jobs list | show | cancel``: the operator's view of paid service jobs.

Registered in ``cli.py`` as a typer sub-app. Reads go through the job read model
(:mod:`desired_state.services.jobs`), a cancellation through the one termination transaction
(:func:`desired_state.services.termination.cancel`: guarded status change and refund together;
a worker that finishes later changes nothing). Bad input (an unknown status, a malformed id)
exits 2 before anything is read or written; an unknown job exits 1.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Annotated, Any, NoReturn, TypeVar

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from desired_state.services import jobs, termination
from desired_state.services.jobs import JobRecord
from desired_state.services.vocabulary import JobStatus, system_clock

T = TypeVar("T")
# Wide enough for a job id when piped (rich assumes 80 columns off a terminal).
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

jobs_app = typer.Typer(help="Paid service jobs: list, show, cancel (refunds).", no_args_is_help=True)

JobIdArg = Annotated[str, typer.Argument(help="The job id (a UUID).", show_default=False)]


def _cli() -> ModuleType:
    from reconciler.cli import common  # settings, database resolution, errors

    return common


def _fail(message: str, *, bad_input: bool = False) -> NoReturn:
    main = _cli()
    main.fail(message, main.EXIT_BAD_INPUT if bad_input else main.EXIT_FAILURE)
    raise AssertionError("unreachable")


def _connected(work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    result: T = _cli().with_connection(work)
    return result


def _job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw.strip())
    except ValueError:
        _fail(f"job id: {raw!r} is not a UUID", bad_input=True)


def _status(raw: str | None) -> JobStatus | None:
    if raw is None:
        return None
    try:
        return JobStatus(raw.strip().lower())
    except ValueError:
        _fail(f"--status: must be one of {', '.join(s.value for s in JobStatus)}", bad_input=True)


def _document(record: JobRecord) -> dict[str, Any]:
    document = record.view().model_dump(mode="json")
    document |= {
        "callerId": str(record.caller_id),
        "attempts": record.attempts,
        "maxAttempts": record.max_attempts,
        "deadline": record.deadline.isoformat() if record.deadline else None,
        "leaseOwner": record.lease_owner,
        "settlement": record.settlement.value if record.settlement else None,
    }
    return document


@jobs_app.command("list")
def list_command(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    service: Annotated[str | None, typer.Option(help="Only jobs of this service (group.method).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=jobs.MAX_LIST, help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array instead of a table.")] = False,
) -> None:
    """Jobs, newest first."""
    wanted = _status(status)
    records = _connected(lambda conn: jobs.list_jobs(conn, status=wanted, service_id=service, limit=limit))
    if as_json:
        print(json.dumps([_document(record) for record in records], indent=2))
        return
    if not records:
        console.print("no jobs")
        return
    table = Table()
    table.add_column("job", no_wrap=True)
    for column in ("service", "status", "progress", "cost", "settled", "created", "note"):
        table.add_column(column)
    for record in records:
        pct = "" if record.progress_pct is None else f"{record.progress_pct:.0%}"
        note = record.error_message if record.error_code else record.progress_note
        table.add_row(
            str(record.job_id),
            record.service_id,
            record.status.value,
            pct,
            str(record.cost_credits),
            record.settlement.value if record.settlement else "",
            record.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            (note or "")[:60],
        )
    console.print(table)


@jobs_app.command("show")
def show_command(job_id: JobIdArg) -> None:
    """One job in full (the API's view plus attempts, deadline and lease), as JSON."""
    wanted = _job_id(job_id)
    record = _connected(lambda conn: jobs.get_job(conn, wanted))
    if record is None:
        _fail(f"no job {wanted}")
    print(json.dumps(_document(record), indent=2))


@jobs_app.command("cancel")
def cancel_command(job_id: JobIdArg) -> None:
    """Cancel a pending or running job and refund its credits (a finished job is left as it is)."""
    wanted = _job_id(job_id)

    async def cancel(conn: psycopg.AsyncConnection[Any]) -> tuple[JobRecord | None, termination.Cancellation | None]:
        record = await jobs.get_job(conn, wanted)
        if record is None or record.status.terminal:
            return record, None
        return record, await termination.cancel(conn, wanted, now=system_clock())

    record, outcome = _connected(cancel)
    if record is None:
        _fail(f"no job {wanted}")
    if outcome is None or outcome.status is not JobStatus.CANCELLED:
        status = outcome.status if outcome is not None and outcome.status is not None else record.status
        _fail(f"job {wanted} is {status.value}: nothing to cancel")
    refund = "its credits were refunded" if outcome.refunded else "a free job, nothing to refund"
    console.print(f"cancelled {wanted}; {refund}")
