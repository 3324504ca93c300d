"""Upgrading a database of the replaced Services API in place: backfill from the pool DB, --drop."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from reconciler.db import create_database
from reconciler.legacy import upgrade
from reconciler.runtime import Runtime
from tests.conftest import Sim
from tests.support import all_ready, cli_env, held, run_cli, settle

# The pool manager's instances table before the infrastructure moved out of it (seed, study 3.2).
POOL_SCHEMA = """
CREATE TABLE instances (
    id TEXT PRIMARY KEY, name TEXT, url TEXT, status TEXT DEFAULT 'starting', created_at TIMESTAMPTZ DEFAULT now(),
    service_id TEXT, deploy_status TEXT, volume_id TEXT, runtime_image TEXT, openrouter_key_hash TEXT,
    agentmail_inbox_id TEXT, gateway_token TEXT, source_branch TEXT
);
CREATE INDEX idx_instances_service_id ON instances (service_id);
INSERT INTO instances (id, name, url, service_id, deploy_status, volume_id, runtime_image, openrouter_key_hash,
                       agentmail_inbox_id, gateway_token)
VALUES ('i1', 'one', 'https://one.example', 'svc-1', 'SUCCESS', 'vol-1', 'img:1', 'hash-1', 'one@mail.example', 'tok'),
       ('i2', 'two', NULL, 'svc-2', 'BUILDING', NULL, NULL, NULL, NULL, NULL),
       ('i3', 'three', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""


@pytest.fixture
def pool_url(pg_server_url: str) -> Iterator[str]:
    name = f"pool_{uuid.uuid4().hex[:10]}"
    url = create_database(pg_server_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(POOL_SCHEMA)
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def columns(url: str, table: str) -> set[str]:
    query = f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
    return {row[0] for row in rows(url, query)}


def test_backfill_copies_each_provisioned_pool_row_once(db_url: str, pool_url: str) -> None:
    report = upgrade(db_url, pool_url, project_id="proj-1", environment_id=None)
    assert (report.backfilled_instances, report.backfilled_tools, report.problems) == (2, 2, [])

    infra = rows(
        db_url,
        "SELECT instance_id, provider_service_id, provider_env_id, provider_project_id, url, deploy_status,"
        " runtime_image, volume_id FROM instance_infra ORDER BY instance_id",
    )
    assert infra == [
        ("i1", "svc-1", "unknown", "proj-1", "https://one.example", "SUCCESS", "img:1", "vol-1"),
        ("i2", "svc-2", "unknown", "proj-1", None, "BUILDING", None, None),
    ]
    tools = rows(db_url, "SELECT instance_id, tool_id, resource_id, env_key, env_value FROM instance_services")
    assert sorted(tools) == [
        ("i1", "agentmail", "one@mail.example", "AGENTMAIL_INBOX_ID", "one@mail.example"),
        ("i1", "openrouter", "hash-1", "OPENROUTER_API_KEY", None),  # the key itself is not recoverable
    ]

    again = upgrade(db_url, pool_url, project_id="proj-1", environment_id=None)
    assert again.backfilled_instances == 0 and again.backfill_skipped is not None
    assert len(rows(db_url, "SELECT * FROM instance_infra")) == 2


def test_drop_removes_the_legacy_columns_of_both_databases_and_keeps_the_rest(db_url: str, pool_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:  # the old services schema had these
        conn.execute(
            "ALTER TABLE instance_infra ADD COLUMN gateway_token TEXT, ADD COLUMN setup_password TEXT,"
            " ADD COLUMN wallet_key TEXT"
        )

    report = upgrade(db_url, pool_url, project_id=None, environment_id="env-9", drop=True)

    assert report.backfilled_instances == 2  # the backfill reads the columns before they go
    assert rows(db_url, "SELECT DISTINCT provider_env_id FROM instance_infra") == [("env-9",)]
    assert not {"gateway_token", "setup_password", "wallet_key"} & columns(db_url, "instance_infra")
    assert columns(pool_url, "instances") == {"id", "name", "url", "status", "created_at"}
    assert rows(pool_url, "SELECT indexname FROM pg_indexes WHERE indexname = 'idx_instances_service_id'") == []
    kept = rows(pool_url, "SELECT id, name FROM instances ORDER BY id")
    assert kept == [("i1", "one"), ("i2", "two"), ("i3", "three")]

    twice = upgrade(db_url, pool_url, project_id=None, environment_id="env-9", drop=True)
    assert twice.dropped == [] and twice.problems == []


def test_an_unreachable_pool_db_is_reported_and_the_services_db_is_untouched(db_url: str, pg_server_url: str) -> None:
    missing = psycopg.conninfo.make_conninfo(pg_server_url, dbname="no_such_pool_db")
    report = upgrade(db_url, missing, project_id=None, environment_id=None)
    assert report.backfilled_instances == 0
    assert len(report.problems) == 1 and "pool backfill failed" in report.problems[0]
    assert rows(db_url, "SELECT count(*) FROM instance_infra") == [(0,)]


async def test_migrate_drop_from_the_command_line(db_url: str, pool_url: str) -> None:
    env = {**cli_env(db_url), "POOL_DATABASE_URL": pool_url, "RAILWAY_PROJECT_ID": "proj-cli"}
    code, out, err = await run_cli("migrate", "--drop", env=env)
    assert code == 0, err
    assert "backfilled 2 instances and 2 tool rows from the pool DB" in out
    assert "dropped instances.service_id" in out
    assert pool_url not in out + err  # a connection string may carry a password

    env["POOL_DATABASE_URL"] = "not a connection string"
    code, _, err = await run_cli("migrate", env=env)
    assert code != 0 and "POOL_DATABASE_URL must be a postgresql:// URL" in err


async def test_destroying_an_instance_the_replaced_system_made_deletes_everything_it_held(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any], db_url: str
) -> None:
    # The old system's shape: instance_infra and instance_services rows, resources under the
    # derived name, no desired row. Made here by converging one, then forgetting its desired row.
    await store.put(conn, InstanceSpec(instance_id="old1", tools=(Tool.OPENROUTER, Tool.AGENTMAIL, Tool.TELNYX)))
    await settle(runtime, lambda: all_ready(conn, 1))
    await conn.execute("DELETE FROM desired_instances WHERE instance_id = 'old1'")
    assert len(rows(db_url, "SELECT * FROM instance_services WHERE instance_id = 'old1'")) == 3
    assert all(names == ["convos-agent-old1"] for names in held(sim).values())
    # It bought numbers without a reference of ours (study 1.4): known only by the phone number.
    telnyx = sim.simulator.telnyx
    records: list[Any] = [*telnyx._numbers.values(), *telnyx._orders.values()]
    for record in records:
        record.customer_reference = None

    code, out, err = await run_cli("delete", "old1", env=cli_env(db_url, sim))
    assert code == 0 and "old1: marked for deletion" in out, err
    await settle(runtime, lambda: _gone(conn, "old1"))

    assert all(names == [] for names in held(sim).values()), held(sim)
    assert rows(db_url, "SELECT count(*) FROM instance_infra") == [(0,)]
    actions = rows(db_url, "SELECT action FROM events WHERE instance_id = 'old1' AND id > 0 ORDER BY id")
    assert ("adopt_for_teardown",) in actions and actions[-1] == ("delete_instance",)

    code, out, _ = await run_cli("delete", "old1", env=cli_env(db_url, sim))
    assert code != 0 and "old1: not found" in out


async def _gone(conn: psycopg.AsyncConnection[Any], instance_id: str) -> bool:
    return await store.get(conn, instance_id) is None


def test_drop_keeps_the_pool_columns_while_some_instances_are_not_copied(db_url: str, pool_url: str) -> None:
    # instance_infra already has a row of the reconciler's, so the backfill does not run.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO instance_infra (instance_id, provider_service_id, provider_env_id) VALUES ('new1', 's', 'e')"
        )
    report = upgrade(db_url, pool_url, project_id=None, environment_id=None, drop=True)
    assert report.backfill_skipped is not None
    assert any("not dropping the pool DB's legacy columns: 2 instances" in p for p in report.problems)
    assert "service_id" in columns(pool_url, "instances")
