"""Upgrading, in place, a database of the Services API this replaces (seed ``services-api.md``).

That system kept its infrastructure records in the same two tables we publish
(``instance_infra``, ``instance_services``), and before that in the pool manager's own
``instances`` table. ``reconciler migrate`` therefore does, after the numbered migrations, what
its ``db:migrate`` did, in the same order:

1. fill ``instance_infra.provider_project_id`` where it is null, from ``RAILWAY_PROJECT_ID``;
2. with ``POOL_DATABASE_URL`` set, **backfill**: copy each pool ``instances`` row that has a
   ``service_id`` into ``instance_infra``, and its OpenRouter key hash and AgentMail inbox into
   ``instance_services``. As there, it runs only while ``instance_infra`` is empty (so a second run,
   or a run after the reconciler has written rows, changes nothing), it copies only the columns the
   pool table still has, and a failure is reported without failing the schema migration. Unlike
   there, it is one transaction: all rows or none;
3. with ``--drop``, drop the legacy columns: ``gateway_token``, ``setup_password`` and
   ``wallet_key`` from ``instance_infra``; with ``POOL_DATABASE_URL``, the infrastructure columns
   of the pool's ``instances`` and their index, but only once every pool row with a
   ``service_id`` is in ``instance_infra`` (else those columns are the only record of its
   resources). Columns already gone are skipped.

Backfilled rows have no desired row: they record instances the old system made. The garbage
collector leaves them alone (``reconciler.observe``), ``POST /status/batch`` reports them, and
destroying one imports it for teardown (``desired_state.store.adopt_for_teardown``).

Column names come from the fixed tuples below, quoted with ``psycopg.sql.Identifier``; nothing
from input is ever formatted into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from desired_state.vocabulary import TOOLS, Tool
from reconciler import queries
from reconciler.logs import first_line

SERVICES_LEGACY_COLUMNS = ("gateway_token", "setup_password", "wallet_key")
"""``instance_infra`` columns the old system stopped using (seed: ``--drop``)."""

POOL_LEGACY_COLUMNS = (
    "service_id",
    "deploy_status",
    "volume_id",
    "runtime_image",
    "openrouter_key_hash",
    "agentmail_inbox_id",
    "gateway_token",
    "source_branch",
)
"""The pool's ``instances`` columns whose data moved to ``instance_infra`` (seed: ``--drop``)."""
POOL_LEGACY_INDEX = "idx_instances_service_id"

POOL_BACKFILL_COLUMNS = (
    "id",
    "service_id",
    "url",
    "deploy_status",
    "created_at",
    "runtime_image",
    "volume_id",
    "openrouter_key_hash",
    "agentmail_inbox_id",
)
"""What the backfill reads, when the pool table still has it (``id`` and ``service_id`` are required)."""


@dataclass
class UpgradeReport:
    """What ``upgrade`` did; ``problems`` are one line each (no connection strings, no values)."""

    project_ids_filled: int = 0
    backfilled_instances: int = 0
    backfilled_tools: int = 0
    backfill_skipped: str | None = None
    dropped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.project_ids_filled:
            out.append(f"filled provider_project_id on {self.project_ids_filled} instance_infra rows")
        if self.backfilled_instances or self.backfilled_tools:
            counts = f"{self.backfilled_instances} instances and {self.backfilled_tools} tool rows"
            out.append(f"backfilled {counts} from the pool DB")
        if self.backfill_skipped:
            out.append(f"pool backfill skipped: {self.backfill_skipped}")
        out += [f"dropped {column}" for column in self.dropped]
        out += [f"problem: {problem}" for problem in self.problems]
        return out


def upgrade(
    services_url: str,
    pool_url: str | None,
    *,
    project_id: str | None,
    environment_id: str | None,
    drop: bool = False,
) -> UpgradeReport:
    """The steps of the module docstring, against an already migrated services database."""
    report = UpgradeReport()
    with psycopg.connect(services_url, autocommit=True) as services:
        if project_id:
            report.project_ids_filled = services.execute(queries.FILL_PROJECT_ID, {"project_id": project_id}).rowcount
        if pool_url:
            try:
                with psycopg.connect(pool_url) as pool:
                    _backfill(services, pool, project_id, environment_id, report)
            except psycopg.Error as exc:
                report.problems.append(f"pool backfill failed (nothing was copied): {first_line(exc)}")
        if drop:
            _drop_columns(services, "instance_infra", SERVICES_LEGACY_COLUMNS, report)
            if pool_url:
                try:
                    with psycopg.connect(pool_url, autocommit=True) as pool:
                        uncopied = _not_in_instance_infra(services, pool)
                        if uncopied:
                            # Dropping them would lose the only record of those instances' resources.
                            report.problems.append(
                                f"not dropping the pool DB's legacy columns: {uncopied} instances with a "
                                "service_id there are not in instance_infra (the backfill did not copy them)"
                            )
                        else:
                            _drop_columns(pool, "instances", POOL_LEGACY_COLUMNS, report)
                            index = queries.DROP_INDEX.format(sql.Identifier(POOL_LEGACY_INDEX))
                            pool.execute(index)
                except psycopg.Error as exc:
                    report.problems.append(f"dropping the pool DB's legacy columns failed: {first_line(exc)}")
    return report


def _backfill(
    services: psycopg.Connection[Any],
    pool: psycopg.Connection[Any],
    project_id: str | None,
    environment_id: str | None,
    report: UpgradeReport,
) -> None:
    empty = services.execute(queries.INFRA_IS_EMPTY).fetchone()
    if not empty or not empty[0]:
        report.backfill_skipped = "instance_infra already has rows (the backfill runs once, into an empty table)"
        return
    present = {row[0] for row in pool.execute(queries.TABLE_COLUMNS, {"table": "instances"}).fetchall()}
    if not present:
        report.backfill_skipped = "the pool DB has no instances table"
        return
    if "service_id" not in present:
        report.backfill_skipped = "the pool's instances table has no service_id column (already dropped)"
        return
    columns = [c for c in POOL_BACKFILL_COLUMNS if c in present]
    select = queries.SELECT_POOL_INSTANCES.format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with pool.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(select).fetchall()
    with services.transaction():
        for row in rows:
            values = {c: row.get(c) for c in POOL_BACKFILL_COLUMNS}
            inserted = services.execute(
                queries.BACKFILL_INFRA, {**values, "env_id": environment_id or "unknown", "project_id": project_id}
            ).fetchone()
            if inserted is None:
                continue  # another row already holds this instance or service id
            report.backfilled_instances += 1
            tools = (
                # The key's value was shown once, to the old system: it cannot be recovered.
                (Tool.OPENROUTER, values["openrouter_key_hash"], None),
                (Tool.AGENTMAIL, values["agentmail_inbox_id"], values["agentmail_inbox_id"]),
            )
            for tool, resource_id, env_value in tools:
                if not resource_id:
                    continue
                params = {
                    "instance_id": values["id"],
                    "tool_id": tool.value,
                    "resource_id": resource_id,
                    "env_key": TOOLS[tool].env_keys[0],
                    "env_value": env_value,
                }
                if services.execute(queries.BACKFILL_TOOL, params).fetchone() is not None:
                    report.backfilled_tools += 1


def _not_in_instance_infra(services: psycopg.Connection[Any], pool: psycopg.Connection[Any]) -> int:
    """How many pool instances with a service id ``instance_infra`` does not record."""
    present = {row[0] for row in pool.execute(queries.TABLE_COLUMNS, {"table": "instances"}).fetchall()}
    if "service_id" not in present:
        return 0
    ids = [row[0] for row in pool.execute(queries.POOL_PROVISIONED_IDS).fetchall()]
    row = services.execute(queries.COUNT_NOT_RECORDED, {"ids": ids}).fetchone()
    return int(row[0]) if row else 0


def _drop_columns(
    conn: psycopg.Connection[Any], table: str, columns: tuple[str, ...], report: UpgradeReport
) -> None:
    present = {row[0] for row in conn.execute(queries.TABLE_COLUMNS, {"table": table}).fetchall()}
    for column in columns:
        if column not in present:
            continue
        conn.execute(
            queries.DROP_COLUMN.format(sql.Identifier(table), sql.Identifier(column))
        )
        report.dropped.append(f"{table}.{column}")
