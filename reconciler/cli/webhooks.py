"""``reconciler webhooks``: secrets, the deliveries an operator looks at, and a manual retry.

* ``secret`` prints a fresh ``whsec_`` secret for ``SERVICE_WEBHOOK_SECRET``.
* ``list [--failed] [--state S]`` shows deliveries, newest first; ``--failed`` is what needs an
  operator (retries exhausted, 410, a refused address, or disabled for want of a secret).
* ``retry ID`` (a ``webhook-id`` or a job id) gives a failed or disabled delivery a fresh schedule
  from now; the loop sends it within a tick.
* ``deliver`` runs the sender alone (``reconciler run`` runs it with the loop): until SIGTERM, or
  with ``--once`` until nothing is due.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from typing import Annotated, Any

import psycopg
import typer

from desired_state.webhooks import WEBHOOK_ID_PREFIX, WebhookState
from reconciler.claims import LeaseSettings
from reconciler.cli.common import (
    EXIT_BAD_INPUT,
    console,
    database,
    fail,
    require_current_schema,
    run_async,
    settings_or_exit,
    with_connection,
)
from reconciler.metrics import default_metrics
from reconciler.settings import SettingsError
from reconciler.webhooks import queries
from reconciler.webhooks.delivery import WebhookSender
from reconciler.webhooks.settings import WebhookSettings, load_webhook_settings
from reconciler.webhooks.signing import new_secret

app = typer.Typer(help="Webhook deliveries: secrets, failures, retries.", no_args_is_help=True)

FAILED_STATES = (WebhookState.FAILED.value, WebhookState.DISABLED.value)


def webhook_settings_or_exit() -> WebhookSettings:
    try:
        return load_webhook_settings()
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


@app.command("secret")
def secret_command() -> None:
    """Print a new random whsec_ secret (set it as SERVICE_WEBHOOK_SECRET; several, space-separated, rotate)."""
    typer.echo(new_secret())


@app.command("list")
def list_command(
    failed: Annotated[bool, typer.Option("--failed", help="Only failed and disabled deliveries.")] = False,
    state: Annotated[str | None, typer.Option(help="Only this state: pending, delivered, failed or disabled.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array instead of a table.")] = False,
) -> None:
    """List webhook deliveries, newest first."""
    states: list[str] | None = None
    if state is not None:
        if state not in set(WebhookState):
            fail(f"--state must be one of {', '.join(WebhookState)}, not {state!r}", EXIT_BAD_INPUT)
        states = [state]
    if failed:
        states = [s for s in (states or FAILED_STATES) if s in FAILED_STATES]
        if not states:
            fail("--failed lists failed and disabled deliveries; --state asks for another", EXIT_BAD_INPUT)

    async def read(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        cur = await conn.execute(queries.LIST_DELIVERIES, {"states": states, "limit": limit})
        return list(await cur.fetchall())

    rows = with_connection(read)
    columns = (
        "webhookId",
        "jobId",
        "serviceId",
        "url",
        "state",
        "attempts",
        "lastStatus",
        "lastError",
        "lastAttemptAt",
        "nextAttemptAt",
        "createdAt",
    )
    if as_json:
        items = [dict(zip(columns, row, strict=True)) for row in rows]
        typer.echo(json.dumps(items, default=str, indent=2))
        return
    if not rows:
        console.print("no deliveries")
        return
    for webhook_id, job_id, service_id, url_, state_, attempts, last_status, last_error, _, next_at, _ in rows:
        when = f", next attempt {next_at:%Y-%m-%d %H:%M:%S}Z" if state_ == WebhookState.PENDING else ""
        status = f", last status {last_status}" if last_status is not None else ""
        error = f", last error {last_error!r}" if last_error else ""
        console.print(
            f"{webhook_id} {state_} ({service_id}, job {job_id}) -> {url_}: {attempts} attempt(s){status}{error}{when}",
            highlight=False,
            markup=False,
        )


@app.command("retry")
def retry_command(delivery: Annotated[str, typer.Argument(help="A webhook-id (evt_...) or a job id.")]) -> None:
    """Send a failed or disabled delivery again, on a fresh schedule starting now."""
    webhook_id, job_id = _delivery_key(delivery)

    async def retry(conn: psycopg.AsyncConnection[Any]) -> tuple[list[str], tuple[Any, ...] | None]:
        params = {"webhook_id": webhook_id, "job_id": job_id}
        cur = await conn.execute(queries.RETRY_DELIVERY, params)
        retried = [str(row[0]) for row in await cur.fetchall()]
        if retried:
            return retried, None
        cur = await conn.execute(queries.SELECT_DELIVERY_STATE, params)
        return [], await cur.fetchone()

    retried, existing = with_connection(retry)
    if existing is not None:
        fail(f"{existing[0]} is {existing[1]} (being sent right now, or already delivered): nothing to retry")
    if not retried:
        fail(f"no webhook delivery {delivery}")
    for webhook_id_ in retried:
        console.print(f"{webhook_id_}: pending, due now", highlight=False, markup=False)


def _delivery_key(text: str) -> tuple[str | None, uuid.UUID | None]:
    if text.startswith(WEBHOOK_ID_PREFIX):
        return text, None
    try:
        return None, uuid.UUID(text)
    except ValueError:
        fail(f"not a webhook id (evt_...) nor a job id: {text!r}", EXIT_BAD_INPUT)


@app.command("deliver")
def deliver_command(
    once: Annotated[bool, typer.Option("--once", help="Send what is due now, then exit.")] = False,
    lease_seconds: Annotated[
        float, typer.Option(help="Seconds a claim stays exclusive without a renewal.", min=1, max=600)
    ] = 10.0,
    tick: Annotated[float, typer.Option(help="Seconds between looks for due deliveries.", min=0.05, max=60)] = 0.5,
) -> None:
    """Run the webhook sender alone (reconciler run runs it with the loop) until SIGTERM."""
    webhook_settings = webhook_settings_or_exit()
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)
        run_async(_deliver(url, webhook_settings, once=once, lease_seconds=lease_seconds, tick=tick))


async def _deliver(
    url: str, webhook_settings: WebhookSettings, *, once: bool, lease_seconds: float, tick: float
) -> None:
    from psycopg_pool import AsyncConnectionPool

    from reconciler.runtime import worker_identity

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True, timeout=30)
    sender = WebhookSender(
        pool,
        webhook_settings,
        default_metrics(),
        owner=worker_identity(),
        lease=LeaseSettings(lease_seconds=lease_seconds),
        tick_seconds=tick,
    )
    try:
        if once:
            sender.announce()
            handled = await sender.drain()
            console.print(f"{handled} deliveries handled", highlight=False, markup=False)
            return
        stop = asyncio.Event()
        event_loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.add_signal_handler(sig, stop.set)
        await sender.run_forever(stop)
    finally:
        await sender.aclose()
        await pool.close()
