"""``reconciler``: the operator's command line. Wiring only: sub-apps in, failures out.

The commands live in :mod:`reconciler.cli`, one module per family; this module registers each
module's typer sub-app (merged into the top level, so ``reconciler apply`` stays ``reconciler
apply``) and owns the process's edges: logging set-up, and turning every expected failure into
one line on stderr and an exit code, never a traceback: exit 2 for bad input (a file, an id, a
setting), 1 for everything else, including a database this version's migrations have not reached
("run `reconciler migrate`").
"""

from __future__ import annotations

import sys
import warnings

import psycopg
import typer

from reconciler.cli import instances, operate, schema, sdk, serve, simulate, webhooks
from reconciler.cli import paid as paid_cli
from reconciler.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, RUN_MIGRATE, CommandError, err_console
from reconciler.cli.jobs import jobs_app
from reconciler.db import DatabaseError
from reconciler.logs import configure_logging
from reconciler.settings import SettingsError

# What callers of this module (the console script, tests driving ``app``) use.
__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "CommandError", "app", "main"]

app = typer.Typer(
    help="Provisioning reconciler: converges desired agent instances onto Railway, OpenRouter, AgentMail and Telnyx.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(schema.app)
app.add_typer(instances.app)
app.add_typer(operate.app)
app.add_typer(serve.app)
app.add_typer(simulate.app)
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(sdk.app, name="sdk")
app.add_typer(paid_cli.callers_app, name="callers")
app.add_typer(paid_cli.credits_app, name="credits")
app.add_typer(paid_cli.courses_app, name="courses")
app.add_typer(paid_cli.services_app, name="services")
app.add_typer(paid_cli.ledger_app, name="ledger")
app.add_typer(jobs_app, name="jobs")

# Raised by the first query that meets a table, column or function a migration would have made:
# the database is older than this version, whatever schema_migrations says.
SCHEMA_BEHIND = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction)


def _exit(message: str, code: int) -> None:
    err_console.print(f"error: {message}", highlight=False, markup=False)
    sys.exit(code)


def main() -> None:
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless noise.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
    configure_logging()
    try:
        app()
    except CommandError as exc:
        _exit(str(exc), exc.code)
    except (SettingsError, DatabaseError) as exc:
        _exit(str(exc), EXIT_FAILURE)
    except SCHEMA_BEHIND as exc:
        problem = (exc.diag.message_primary or type(exc).__name__).strip()
        _exit(f"the database schema is behind this version ({problem}): {RUN_MIGRATE}", EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
