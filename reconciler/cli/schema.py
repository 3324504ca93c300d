"""``reconciler migrate``: the schema, and the in-place upgrade of the system this replaces."""

from __future__ import annotations

from typing import Annotated

import typer

from reconciler.cli.common import EXIT_FAILURE, console, database, settings_or_exit
from reconciler.db import migrate
from reconciler.legacy import upgrade

app = typer.Typer()


@app.command("migrate", rich_help_panel="Database")
def migrate_command(
    drop: Annotated[
        bool,
        typer.Option(
            "--drop",
            help="Also drop the legacy columns of the system this replaces: instance_infra's gateway_token, "
            "setup_password and wallet_key; with POOL_DATABASE_URL, the pool's infrastructure columns.",
        ),
    ] = False,
) -> None:
    """Apply pending database migrations (safe to run twice, and from several replicas at once).

    Then, for a database upgraded in place, fill instance_infra.provider_project_id from
    RAILWAY_PROJECT_ID and, with POOL_DATABASE_URL set, backfill instance_infra from the pool's
    instances table (only while instance_infra is empty).
    """
    settings = settings_or_exit()
    with database(settings) as url:
        applied = migrate(url)
        report = upgrade(
            url,
            settings.pool_database_url,
            project_id=settings.railway_project_id,
            environment_id=settings.railway_environment_id,
            drop=drop,
        )
    console.print(f"applied {', '.join(applied)}" if applied else "schema is up to date")
    for line in report.lines():
        console.print(line)
    if report.problems:
        raise typer.Exit(EXIT_FAILURE)
