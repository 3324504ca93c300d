"""The SQL contract (docs/sql-contract.md), exercised the way a pool manager would: plain SQL over
psycopg, no store functions, with the reconcile loop running against the simulated providers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from desired_state.models import SpecError, parse_instance
from desired_state.vocabulary import RESERVED_ENV_KEYS
from reconciler.db import MIGRATIONS_PACKAGE, create_database, migrate
from reconciler.runtime import Runtime
from reconciler.status import instance_statuses
from tests.conftest import Sim, simulated_runtime
from tests.support import looping, until

CREATE = """
INSERT INTO desired_instances (instance_id, name, spec)
VALUES (%s, %s, %s::jsonb)
"""
PROGRESS = """
SELECT generation, observed_generation, phase, last_error, conditions, present
  FROM desired_instances WHERE instance_id = %s
"""


async def row_of(conn: psycopg.AsyncConnection[Any], instance_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(PROGRESS, (instance_id,))
        return await cur.fetchone()


async def until_converged(conn: psycopg.AsyncConnection[Any], instance_id: str, timeout: float = 30) -> dict[str, Any]:
    """The contract's convergence test: phase Ready and observed_generation = generation."""
    deadline = time.monotonic() + timeout
    while True:
        row = await row_of(conn, instance_id)
        if row and row["phase"] == "Ready" and row["observed_generation"] == row["generation"]:
            return row
        assert time.monotonic() < deadline, f"{instance_id} did not converge: {row}"
        await asyncio.sleep(0.05)


async def until_gone(conn: psycopg.AsyncConnection[Any], instance_id: str, timeout: float = 30) -> None:
    async def gone() -> bool:
        return await row_of(conn, instance_id) is None

    await until(gone, timeout, message=f"{instance_id} was not torn down")


def service_of(sim: Sim, instance_id: str) -> dict[str, Any]:
    services = sim.simulator.snapshot()["railway"]["services"]
    return next(s for s in services if s["name"] == f"convos-agent-{instance_id}")


async def test_an_instance_from_insert_to_teardown_with_plain_sql(runtime: Runtime, sim: Sim, db_url: str) -> None:
    async with (
        looping(runtime),
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener,
    ):
        await listener.execute("LISTEN reconciler_wake")

        # 1. Create: one INSERT. The trigger wakes the loop (and anyone else listening).
        await conn.execute(
            CREATE, ("sqlPool1", "pool agent", '{"tools": ["openrouter", "agentmail"], "env": {"MODEL": "a"}}')
        )
        notify = await anext(listener.notifies(timeout=5))
        assert notify.channel == "reconciler_wake" and notify.payload == "sqlPool1"

        ready = await until_converged(conn, "sqlPool1")
        assert ready["generation"] == 1 and ready["last_error"] is None
        assert ready["conditions"]["Ready"]["status"] == "True"

        # 2. Read: the seed tables, the observed resources and the events.
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT provider_service_id, provider_env_id, url, deploy_status, runtime_image, volume_id"
                "  FROM instance_infra WHERE instance_id = %s",
                ("sqlPool1",),
            )
            infra = await cur.fetchone()
            await cur.execute(
                "SELECT tool_id, resource_id, env_key, status FROM instance_services"
                " WHERE instance_id = %s ORDER BY tool_id",
                ("sqlPool1",),
            )
            services = await cur.fetchall()
            await cur.execute(
                "SELECT kind, external_id, status, attributes FROM observed_resources"
                " WHERE instance_id = %s ORDER BY kind",
                ("sqlPool1",),
            )
            resources = {r["kind"]: r for r in await cur.fetchall()}
            await cur.execute("SELECT action, outcome FROM events WHERE instance_id = %s ORDER BY id", ("sqlPool1",))
            events = await cur.fetchall()
        service = service_of(sim, "sqlPool1")
        assert infra is not None and infra["provider_service_id"] == service["id"]
        assert infra["deploy_status"] == "SUCCESS" and infra["url"].startswith("https://") and infra["volume_id"]
        assert [(s["tool_id"], s["env_key"], s["status"]) for s in services] == [
            ("agentmail", "AGENTMAIL_INBOX_ID", "active"),
            ("openrouter", "OPENROUTER_API_KEY", "active"),
        ]
        assert all(r["status"] == "ready" for r in resources.values())
        assert resources["railway_deployment"]["attributes"]["deploy_status"] == "SUCCESS"
        assert resources["railway_domain"]["attributes"]["domain"] == infra["url"].removeprefix("https://")
        assert sum(e["action"] == "create" for e in events) >= 6

        # 3. Change: an UPDATE of spec is a new generation; the loop converges to it.
        await conn.execute(
            "UPDATE desired_instances SET spec = jsonb_set(spec, '{env,EXTRA}', '\"b\"') WHERE instance_id = %s",
            ("sqlPool1",),
        )
        changed = await until_converged(conn, "sqlPool1")
        assert changed["generation"] == 2
        assert service_of(sim, "sqlPool1")["variables"]["EXTRA"] == "b"

        # Redeploy: bump spec.redeploy.
        await conn.execute(
            "UPDATE desired_instances"
            "   SET spec = jsonb_set(spec, '{redeploy}', to_jsonb(COALESCE((spec->>'redeploy')::int, 0) + 1))"
            " WHERE instance_id = %s",
            ("sqlPool1",),
        )
        redeployed = await until_converged(conn, "sqlPool1")
        assert redeployed["generation"] == 3

        # Writing the same values again is not a new generation (nothing to do).
        await conn.execute(
            "UPDATE desired_instances SET spec = spec, name = name WHERE instance_id = %s", ("sqlPool1",)
        )
        same = await row_of(conn, "sqlPool1")
        assert same is not None and same["generation"] == 3

        # 4. Destroy: present = false; the row disappears once every resource is gone.
        await conn.execute("UPDATE desired_instances SET present = false WHERE instance_id = %s", ("sqlPool1",))
        await until_gone(conn, "sqlPool1")
        snapshot = sim.simulator.snapshot()
        assert snapshot["railway"]["services"] == [] and snapshot["railway"]["volumes"] == []
        assert snapshot["openrouter"]["keys"] == [] and snapshot["agentmail"]["inboxes"] == []
        for table in ("instance_infra", "instance_services", "observed_resources"):
            count = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
            assert count == (0,), table
        # Events outlive the row: the history stays readable.
        deleted = await (
            await conn.execute(
                "SELECT count(*) FROM events WHERE instance_id = %s AND action = 'delete'", ("sqlPool1",)
            )
        ).fetchone()
        assert deleted is not None and deleted[0] >= 5


async def test_an_invalid_spec_written_over_sql_fails_visibly(runtime: Runtime, sim: Sim, db_url: str) -> None:
    async with looping(runtime), await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(CREATE, ("badSpec", "", '{"tools": ["slack"]}'))

        async def failed() -> dict[str, Any] | None:
            row = await row_of(conn, "badSpec")
            return row if row and row["phase"] == "Failed" else None

        row = await until(failed)
        assert "spec.tools" in row["last_error"]
        assert sim.simulator.snapshot()["railway"]["services"] == []
        # Fixing the spec is a new generation; the row converges.
        await conn.execute("UPDATE desired_instances SET spec = '{\"tools\": []}' WHERE instance_id = 'badSpec'")
        fixed = await until_converged(conn, "badSpec")
        assert fixed["last_error"] is None


@pytest.mark.parametrize(
    ("instance_id", "spec"),
    [
        ("has space", "{}"),
        ("x" * 33, "{}"),
        ("", "{}"),
        ("okId", "[]"),
        ("okId", '"text"'),
    ],
)
async def test_the_database_refuses_what_can_never_be_valid(db_url: str, instance_id: str, spec: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute(CREATE, (instance_id, "", spec))


# -- input rules for plain-SQL writers (migration 0005) -------------------------------------------

REFERENCE = "${{convos-agent-OTHER.OPENROUTER_API_KEY}}"
REFUSED_ENVS = [
    {"STEAL": REFERENCE},
    {"URL": "https://${{shared.DOMAIN}}/x"},
    *({name: "x"} for name in sorted(RESERVED_ENV_KEYS)),
    {"PORT": "8080"},
    {"port": "8080"},
    {"RAILWAY_ENVIRONMENT": "production"},
    {"instance_id": "other"},
    {"A": 5},
]


def model_problem(env: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        parse_instance({"instanceId": "ok", "env": env})
    (problem,) = caught.value.problems
    return problem


@pytest.mark.parametrize("env", REFUSED_ENVS, ids=lambda env: next(iter(env)))
async def test_sql_writers_meet_the_env_rules_of_the_api_in_the_same_words(db_url: str, env: dict[str, Any]) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation) as caught:
            await conn.execute(CREATE, ("envRules", "", json.dumps({"env": env})))
        assert caught.value.diag.constraint_name == "desired_instances_env_rules"
        assert caught.value.diag.message_primary == f"invalid spec: {model_problem(env)}"
        assert REFERENCE not in str(caught.value)
        assert await row_of(conn, "envRules") is None


async def test_a_sql_configure_that_adds_a_reference_is_refused_and_changes_nothing(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(CREATE, ("cfgRef", "", '{"env": {"OPENCLAW_PRIMARY_MODEL": "a/b", "XMTP_ENV": "dev"}}'))
        with pytest.raises(psycopg.errors.CheckViolation, match="env: value of STEAL holds a Railway variable"):
            await conn.execute(
                "UPDATE desired_instances SET spec = jsonb_set(spec, '{env}', spec->'env' || %s::jsonb)"
                " WHERE instance_id = 'cfgRef'",
                (json.dumps({"STEAL": REFERENCE}),),
            )
        row = await row_of(conn, "cfgRef")
        assert row is not None and row["generation"] == 1


async def test_nul_characters_are_refused_by_postgres_itself_before_any_row_is_written(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        # jsonb cannot hold \u0000: Postgres refuses it with SQLSTATE 22P05 (docs/sql-contract.md).
        with pytest.raises(psycopg.errors.UntranslatableCharacter, match="unsupported Unicode escape sequence"):
            await conn.execute(CREATE, ("nulEnv", "", '{"env": {"A": "x\\u0000y"}}'))
        # A NUL in a text parameter never leaves the client.
        with pytest.raises(psycopg.DataError, match="NUL"):
            await conn.execute(CREATE, ("nulName", "a\x00b", "{}"))
        assert await row_of(conn, "nulEnv") is None and await row_of(conn, "nulName") is None


async def test_migrate_keeps_a_row_stored_before_the_rules_and_the_loop_fails_it_visibly(
    pg_server_url: str, sim: Sim, tmp_path: Path
) -> None:
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database(pg_server_url, name)
    try:
        await _migrate_over_an_old_bad_row(url, sim, tmp_path)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            drop = psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(psycopg.sql.Identifier(name)))


async def _migrate_over_an_old_bad_row(url: str, sim: Sim, tmp_path: Path) -> None:
    before_rules = tmp_path / "migrations"
    before_rules.mkdir()
    for migration in sorted(files(MIGRATIONS_PACKAGE).iterdir(), key=lambda entry: entry.name):
        if migration.name.endswith(".sql") and migration.name < "0005":
            (before_rules / migration.name).write_text(migration.read_text())
    migrate(url, before_rules)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE, ("oldBad", "", json.dumps({"env": {"STEAL": REFERENCE, "OK": "1"}})))
    assert "0005_input_rules" in migrate(url)

    async with (
        simulated_runtime(url, sim) as runtime,
        looping(runtime),
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
    ):
        await conn.execute("NOTIFY reconciler_wake, 'oldBad'")
        deadline = time.monotonic() + 20
        while (row := await row_of(conn, "oldBad")) is None or row["phase"] != "Failed":
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.05)
        assert row["last_error"].startswith("invalid spec: spec.env: value of STEAL holds a Railway variable")
        assert REFERENCE not in row["last_error"]
        assert sim.simulator.snapshot()["railway"]["services"] == []
        # `reconciler status` lists it (its stored spec cannot be parsed, its error says why).
        [status] = await instance_statuses(conn, ["oldBad"])
        assert status.phase == "Failed" and status.last_error == row["last_error"]
        # The reconciler's own writes to the row keep working; a fix from the caller converges.
        await conn.execute("UPDATE desired_instances SET spec = spec - 'env' WHERE instance_id = 'oldBad'")
        fixed = await until_converged(conn, "oldBad")
        assert fixed["last_error"] is None
