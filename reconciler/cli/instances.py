"""Desired-state commands: ``apply``, ``delete`` and ``status``.

They write and read our tables only, never a provider: the reconcile loop (``reconciler run``
or ``reconciler reconcile``) does the provider work the rows ask for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from desired_state import store
from reconciler import status as status_views
from reconciler.cli.common import (
    EXIT_FAILURE,
    async_connection,
    check_instance_ids,
    console,
    database,
    fail,
    require_current_schema,
    run_async,
    settings_or_exit,
)
from reconciler.cli.documents import read_instances

PANEL = "Desired state"
app = typer.Typer()


@app.command("apply", rich_help_panel=PANEL)
def apply_command(
    file: Annotated[Path, typer.Argument(help="JSON or YAML list of instances (instanceId, name, tools, env).")],
) -> None:
    """Write desired instances from a file, like `kubectl apply`: all of them or none."""
    specs = read_instances(file)
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def write() -> list[store.PutResult]:
            async with await async_connection(url) as conn:
                return await store.put_many(conn, specs)

        results = run_async(write())
    for result in results:
        console.print(f"{result.instance_id}: {result.outcome.value}")


@app.command("delete", rich_help_panel=PANEL)
def delete_command(
    instance_ids: Annotated[list[str], typer.Argument(help="Instance ids to tear down.")],
) -> None:
    """Mark instances absent: the reconciler deletes their resources, then the rows."""
    check_instance_ids(instance_ids)
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def mark() -> list[str]:
            async with await async_connection(url) as conn, conn.transaction():
                # One the replaced system made (only instance_infra knows it) is imported for teardown.
                await store.adopt_for_teardown(conn, instance_ids, settings.name_prefix)
                return await store.mark_absent(conn, instance_ids)

        found = run_async(mark())
    for instance_id in instance_ids:
        console.print(f"{instance_id}: {'marked for deletion' if instance_id in found else 'not found'}")
    if len(found) < len(instance_ids):
        raise typer.Exit(EXIT_FAILURE)


@app.command("status", rich_help_panel=PANEL)
def status_command(
    instance_id: Annotated[str | None, typer.Argument(help="One instance (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show instances and their resources, from our tables only (no provider calls)."""
    if instance_id is not None:
        check_instance_ids([instance_id])
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def read() -> list[status_views.InstanceStatus]:
            async with await async_connection(url) as conn:
                return await status_views.instance_statuses(conn, [instance_id] if instance_id else None)

        rows = run_async(read())
    if instance_id and not rows:
        fail(f"instance {instance_id} not found")
    if as_json:
        sys.stdout.write(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
        return
    console.print(status_views.status_table(rows))
