"""Where the database comes from, and how the schema gets there.

``SERVICE_DATABASE_URL`` wins when set. Otherwise the CLI starts an embedded Postgres (the
``pgserver`` package ships real Postgres binaries in its wheel) with its data under
``.reconciler/pgdata`` in the working directory, so ``make demo`` works on a bare machine with no
Docker and no system Postgres. The embedded server is stopped when the last process using it
exits (pgserver counts its users).

Migrations are the numbered ``.sql`` files of ``migrations/``. :func:`migrate` applies the ones
not yet recorded in ``schema_migrations``, each in its own transaction, while holding a
session advisory lock, so any number of replicas may run it at start-up at once and running it
twice changes nothing.

``migrations/`` is a package whose ``*.sql`` files are package data, found with
:mod:`importlib.resources`: the same code reads them from the source tree, an editable install
or a wheel (a path computed from this file's location found nothing in a wheel, and ``migrate``
then reported an up-to-date schema on an empty database). Finding no migration at all is an
error, never "nothing to apply".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from reconciler import queries
from reconciler.logs import first_line

MIGRATIONS_PACKAGE = "migrations"
EMBEDDED_DIR = Path(".reconciler") / "pgdata"
MIGRATION_LOCK_KEY = 7_266_524_501  # any constant shared by every replica
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class DatabaseError(Exception):
    """The database could not be reached or prepared; the message says what to check."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: the ``migrations`` package), in version order."""
    source = files(MIGRATIONS_PACKAGE) if directory is None else directory
    migrations = []
    for entry in sorted((e for e in source.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name):
        match = _MIGRATION_NAME.match(entry.name)
        if not match:
            raise DatabaseError(f"migration file {entry.name} must be named NNNN_description.sql")
        migrations.append(Migration(int(match.group(1)), entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    if not migrations:
        raise DatabaseError(f"no migration files found in {source}: this installation of the reconciler is incomplete")
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise DatabaseError("two migration files share a version number")
    return migrations


def migrate(url: str, directory: Traversable | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when already current)."""
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute(queries.ADVISORY_LOCK, (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(queries.CREATE_MIGRATIONS_TABLE)
            applied = dict(conn.execute(queries.SELECT_APPLIED).fetchall())
            for migration in migrations:
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise DatabaseError(
                            f"migration {migration.name} was changed after it was applied; add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(queries.INSERT_APPLIED, (migration.version, migration.name, migration.checksum))
                applied_now.append(migration.name)
        finally:
            conn.execute(queries.ADVISORY_UNLOCK, (MIGRATION_LOCK_KEY,))
    return applied_now


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A plain connection with a clear error instead of a driver traceback."""
    try:
        return psycopg.connect(url, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to Postgres: {first_line(exc)}") from None


class EmbeddedPostgres:
    """A pgserver-managed Postgres with its data in ``directory``; a context manager."""

    def __init__(self, directory: Path = EMBEDDED_DIR) -> None:
        self.directory = directory.resolve()
        self._server: Any = None

    def start(self) -> str:
        try:
            import pgserver  # imported here: only needed when no database is configured
        except ImportError:
            raise DatabaseError(
                "SERVICE_DATABASE_URL is not set and the embedded Postgres (pgserver) is not installed"
            ) from None
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pgserver.get_server(str(self.directory), cleanup_mode="stop")  # type: ignore[attr-defined]
        except Exception as exc:  # pgserver raises plain exceptions with the server log
            raise DatabaseError(f"the embedded Postgres did not start: {first_line(exc)}") from None
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_database(url: str, name: str, template: str | None = None) -> str:
    """Create database ``name`` (dropping an old one) on the server of ``url``; return its URL."""
    with connect(url, autocommit=True) as conn:
        conn.execute(queries.DROP_DATABASE.format(sql.Identifier(name)))
        if template:
            create = queries.CREATE_DATABASE_FROM_TEMPLATE.format(sql.Identifier(name), sql.Identifier(template))
        else:
            create = queries.CREATE_DATABASE.format(sql.Identifier(name))
        conn.execute(create)
    return with_database(url, name)


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (works for URLs with a socket ``host=`` parameter)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **info)
