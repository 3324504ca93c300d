"""What every command shares: exit codes, settings, the database, and checks of ids.

Every command resolves its database the same way (``SERVICE_DATABASE_URL``, else an embedded
Postgres under ``.reconciler/``) and, except ``migrate`` and ``demo``, refuses to work on a
schema older than this version's migrations: one line saying to run ``reconciler migrate``, not a
Postgres traceback from the first query. Every expected failure is a :class:`CommandError`, which
``cli.main`` prints as one line on stderr: exit 2 for bad input (a file, an id, a setting), 1 for
everything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, NoReturn, TypeVar

import psycopg
from rich.console import Console

from desired_state.models import INSTANCE_ID_PATTERN
from reconciler import db
from reconciler.db import EmbeddedPostgres, load_migrations, migrate
from reconciler.logs import first_line
from reconciler.settings import Settings, SettingsError, load_settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

EXIT_BAD_INPUT: Final = 2
EXIT_FAILURE: Final = 1

RUN_MIGRATE: Final = "run `reconciler migrate` first"
SELECT_SCHEMA_VERSION: Final = "SELECT max(version) FROM schema_migrations"
INSTANCE_ID_RULE: Final = "1-32 characters of A-Z, a-z, 0-9, '_' or '-'"


class CommandError(Exception):
    """An expected failure: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    raise CommandError(message, code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


def require_railway(settings: Settings) -> None:
    try:
        settings.require_railway()
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


def check_instance_ids(instance_ids: Iterable[str]) -> None:
    """Refuse a malformed id before any database work (exit 2), on every command that takes one."""
    for instance_id in instance_ids:
        if not INSTANCE_ID_PATTERN.fullmatch(instance_id):
            fail(f"not an instance id: {instance_id!r} ({INSTANCE_ID_RULE})", EXIT_BAD_INPUT)


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL, starting the embedded server when none is configured.

    The embedded database is migrated automatically (it is ours alone); a configured one must be
    migrated explicitly with ``reconciler migrate``, so several replicas never race a schema change
    they were not told about.
    """
    if settings.database_url:
        yield settings.database_url
        return
    with EmbeddedPostgres() as url:
        migrate(url)
        yield url


def require_current_schema(url: str) -> None:
    """Stop with one line when the database lacks this version's migrations."""
    latest = max(m.version for m in load_migrations())  # load_migrations refuses an empty set
    try:
        with db.connect(url) as conn:  # an unreachable server: a DatabaseError, one line
            row = conn.execute(SELECT_SCHEMA_VERSION).fetchone()
    except psycopg.errors.UndefinedTable:
        fail(f"the database has no schema yet: {RUN_MIGRATE}")
    if row is None or (row[0] or 0) < latest:
        fail(f"the database schema is behind this version: {RUN_MIGRATE}")


def run_async(coro: Awaitable[T]) -> T:
    async def runner() -> T:
        return await coro

    return asyncio.run(runner())


def with_connection(work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    """Run ``work`` on an autocommit connection to the configured (or embedded) database, once its
    schema is current; every failure to get there exits with one line."""
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def run() -> T:
            async with await async_connection(url) as conn:
                return await work(conn)

        return run_async(run())


async def async_connection(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        fail(f"cannot connect to Postgres: {first_line(exc)}")
