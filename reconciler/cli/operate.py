"""Operator commands: ``reconcile``, ``plan``, ``why`` and ``gc``.

``reconcile``, ``plan`` and ``gc`` build the same :class:`~reconciler.runtime.Runtime` as
``reconciler run`` (so they act with the same drivers, limits and settings); ``why`` reads our
tables only.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import typer

from reconciler.cli.common import (
    EXIT_BAD_INPUT,
    async_connection,
    check_instance_ids,
    console,
    database,
    fail,
    require_current_schema,
    require_railway,
    run_async,
    settings_or_exit,
)
from reconciler.engine import Outcome
from reconciler.runtime import Runtime

PANEL = "Operating"
EXIT_PLAN_HAS_CHANGES: Final = 2  # Terraform's --detailed-exitcode convention
app = typer.Typer()


@app.command("reconcile", rich_help_panel=PANEL)
def reconcile_command(
    instance: Annotated[list[str] | None, typer.Option("--instance", "-i", help="Instance id (repeatable).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every instance.")] = False,
) -> None:
    """Force a reconcile pass now and print what it did."""
    if bool(instance) == all_:
        fail("give --instance ID (one or more) or --all", EXIT_BAD_INPUT)
    check_instance_ids(instance or [])
    settings = settings_or_exit()
    require_railway(settings)
    with database(settings) as url:
        require_current_schema(url)

        async def force() -> list[Outcome]:
            async with Runtime(settings, url) as runtime:
                made_due = await runtime.reconciler.make_due(None if all_ else instance)
                missing = set(instance or []) - set(made_due)
                if missing:
                    fail(f"not found: {', '.join(sorted(missing))}")
                return await runtime.worker.drain()

        outcomes = run_async(force())
    if not outcomes:
        console.print("nothing to do (rows are leased by a running worker, or there are none)")
    for outcome in outcomes:
        done = ", ".join(f"{a.verb.symbol.strip() or '·'} {a.kind.value}" for a in outcome.actions) or "no changes"
        line = f"{outcome.instance_id}: {outcome.result} ({done})"
        if outcome.error:
            line += f"; error: {outcome.error}"
        console.print(line)


@app.command("plan", rich_help_panel=PANEL)
def plan_command(
    instance: Annotated[list[str] | None, typer.Option("--instance", "-i", help="Instance id (repeatable).")] = None,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0: no changes, 1: error, 2: changes present.")
    ] = False,
) -> None:
    """Show what the reconciler would do, from a fresh read of every provider (changes nothing)."""
    from reconciler.operator import build_plan, render_plan

    check_instance_ids(instance or [])
    settings = settings_or_exit()
    require_railway(settings)
    with database(settings) as url:
        require_current_schema(url)

        async def compute() -> Any:
            async with Runtime(settings, url) as runtime, await async_connection(url) as conn:
                return await build_plan(conn, runtime.observer, runtime.reconciler.defaults, instance or None)

        plan = run_async(compute())
    for line in render_plan(plan):
        console.print(line, highlight=False, markup=False)
    if detailed_exitcode and plan.has_changes:
        raise typer.Exit(EXIT_PLAN_HAS_CHANGES)


@app.command("why", rich_help_panel=PANEL)
def why_command(
    instance_id: Annotated[str, typer.Argument(help="The instance to explain.")],
    events: Annotated[int, typer.Option(help="How many recent events to show.", min=1, max=500)] = 10,
) -> None:
    """Explain an instance's state: conditions, last error, attempts, next attempt, recent events."""
    from reconciler.operator import why

    check_instance_ids([instance_id])
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def explain() -> list[str] | None:
            async with await async_connection(url) as conn:
                return await why(conn, instance_id, events)

        lines = run_async(explain())
    if lines is None:
        fail(f"instance {instance_id} not found")
    for line in lines:
        console.print(line, highlight=False, markup=False)


@app.command("gc", rich_help_panel=PANEL)
def gc_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List orphans; delete nothing.")] = False,
    grace: Annotated[
        float | None, typer.Option(help="Seconds an orphan must have been seen before deletion (default 600).")
    ] = None,
) -> None:
    """Delete provider resources whose derived name maps to no live desired instance."""
    settings = settings_or_exit()
    require_railway(settings)
    with database(settings) as url:
        require_current_schema(url)

        async def collect() -> Any:
            async with Runtime(settings, url) as runtime:
                if grace is not None:
                    runtime.observer.gc_grace = grace
                return await runtime.observer.collect(dry_run=dry_run)

        report = run_async(collect())
    if not report.orphans:
        console.print("no orphans")
    for orphan in report.orphans:
        if dry_run:
            state = "would delete once past the grace period"
        elif orphan in report.collected:
            state = "deleted"
        else:
            state = f"seen for {orphan.seen_for_seconds:.0f}s, waiting for the grace period"
        console.print(f"{orphan.kind.value} {orphan.external_id} ({orphan.name}: {orphan.why}): {state}")
