"""Migrations and the desired-state store, against a real Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from reconciler.db import migrate

SEED_INFRA_COLUMNS = {
    "instance_id": ("text", "NO"),
    "provider": ("text", "NO"),
    "provider_service_id": ("text", "NO"),
    "provider_env_id": ("text", "NO"),
    "provider_project_id": ("text", "YES"),
    "url": ("text", "YES"),
    "deploy_status": ("text", "YES"),
    "runtime_image": ("text", "YES"),
    "volume_id": ("text", "YES"),
    "created_at": ("timestamp with time zone", "NO"),
    "updated_at": ("timestamp with time zone", "NO"),
}
SEED_SERVICES_COLUMNS = {
    "id": ("integer", "NO"),
    "instance_id": ("text", "NO"),
    "tool_id": ("text", "NO"),
    "resource_id": ("text", "NO"),
    "resource_meta": ("jsonb", "YES"),
    "env_key": ("text", "NO"),
    "env_value": ("text", "YES"),
    "status": ("text", "NO"),
    "created_at": ("timestamp with time zone", "NO"),
}
COLUMNS = """
SELECT column_name, data_type, is_nullable FROM information_schema.columns
 WHERE table_name = %s AND table_schema = 'public'
"""


def test_migrate_twice_changes_nothing(db_url: str) -> None:
    assert migrate(db_url) == []  # the template was migrated already
    with psycopg.connect(db_url) as conn:
        before = conn.execute("SELECT version, checksum, applied_at FROM schema_migrations").fetchall()
    assert migrate(db_url) == []
    with psycopg.connect(db_url) as conn:
        after = conn.execute("SELECT version, checksum, applied_at FROM schema_migrations").fetchall()
    assert before == after and len(before) >= 1


def test_seed_tables_have_exactly_the_seed_columns(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        infra = {r[0]: (r[1], r[2]) for r in conn.execute(COLUMNS, ("instance_infra",))}
        services = {r[0]: (r[1], r[2]) for r in conn.execute(COLUMNS, ("instance_services",))}
        # The seed's constraints: unique service id, unique (instance, tool), cascade from infra.
        conn.execute(
            "INSERT INTO instance_infra (instance_id, provider_service_id, provider_env_id)"
            " VALUES ('a', 's', 'e')"
        )
        conn.execute(
            "INSERT INTO instance_services (instance_id, tool_id, resource_id, env_key)"
            " VALUES ('a', 'openrouter', 'h', 'K')"
        )
        conn.execute("DELETE FROM instance_infra WHERE instance_id = 'a'")
        left = conn.execute("SELECT count(*) FROM instance_services").fetchone()
    assert infra == SEED_INFRA_COLUMNS
    assert services == SEED_SERVICES_COLUMNS
    assert left == (0,)


async def test_put_is_idempotent_and_a_change_bumps_the_generation(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    spec = InstanceSpec(instance_id="abc", tools=(Tool.OPENROUTER,))
    first = await store.put(conn, spec)
    again = await store.put(conn, spec)
    changed = await store.put(conn, spec.model_copy(update={"tools": (Tool.OPENROUTER, Tool.AGENTMAIL)}))
    assert (first.outcome, first.generation) == (store.PutOutcome.CREATED, 1)
    assert again.outcome is store.PutOutcome.UNCHANGED
    assert (changed.outcome, changed.generation) == (store.PutOutcome.UPDATED, 2)
    row = await store.get(conn, "abc")
    assert row is not None and row.spec.tools == (Tool.OPENROUTER, Tool.AGENTMAIL) and row.present


async def test_mark_absent_keeps_the_row_for_the_finalizer(conn: psycopg.AsyncConnection[Any]) -> None:
    await store.put(conn, InstanceSpec(instance_id="abc"))
    assert await store.mark_absent(conn, ["abc", "nope"]) == ["abc"]
    row = await store.get(conn, "abc")
    assert row is not None and not row.present and row.generation == 2


async def test_a_write_wakes_the_loop(db_url: str, conn: psycopg.AsyncConnection[Any]) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
        await listener.execute("LISTEN reconciler_wake")
        await store.put(conn, InstanceSpec(instance_id="wake1"))
        note = await asyncio.wait_for(anext(listener.notifies()), timeout=5)
    assert note.payload == "wake1"


async def test_plain_sql_writes_are_first_class(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(
        "INSERT INTO desired_instances (instance_id, spec) VALUES ('sql1', %s)",
        ('{"tools": ["agentmail"], "env": {}, "image": null}',),
    )
    await conn.execute(
        'UPDATE desired_instances SET spec = spec || \'{"env": {"A": "1"}}\' WHERE instance_id=\'sql1\''
    )
    row = await store.get(conn, "sql1")
    assert row is not None and row.generation == 2 and row.spec.env == {"A": "1"}
