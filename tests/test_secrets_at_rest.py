"""Our copy of each OpenRouter key is sealed at rest (reconciler/secrets_box.py, migration 0008)."""

from __future__ import annotations

import asyncio
import stat
import time
import uuid
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool
from pydantic import SecretStr

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from reconciler.db import MIGRATIONS_PACKAGE, EmbeddedPostgres, create_database, migrate
from reconciler.demo import simulated_settings
from reconciler.metrics import Metrics
from reconciler.runtime import Runtime
from reconciler.secrets_box import (
    SEALED_PREFIX,
    SecretBox,
    SecretKeyError,
    embedded_key,
    generate_key,
    seal_stored_secrets,
    secret_box,
)
from reconciler.settings import load_settings
from tests.conftest import Sim, simulated_runtime
from tests.support import all_ready, cli_env, run_cli, settle

SELECT_SECRET = "SELECT secret FROM observed_resources WHERE instance_id = %s AND kind = 'openrouter_key'"


def keyed_runtime(db_url: str, sim: Sim, runtime: Runtime, key: str) -> Runtime:
    settings = simulated_settings(sim.root, sim.simulator.railway.project_id).model_copy(
        update={"secret_key": SecretStr(key)}
    )
    return Runtime(settings, db_url, runtime.options, Metrics(CollectorRegistry()))


async def stored_secret(conn: psycopg.AsyncConnection[Any], instance_id: str) -> str:
    row = await (await conn.execute(SELECT_SECRET, (instance_id,))).fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])


def openrouter_keys(sim: Sim) -> list[dict[str, Any]]:
    return list(sim.simulator.snapshot()["openrouter"]["keys"])


def deployed_key(sim: Sim, instance_id: str) -> str:
    services = sim.simulator.snapshot()["railway"]["services"]
    service = next(s for s in services if s["name"] == f"convos-agent-{instance_id}")
    return str(service["variables"]["OPENROUTER_API_KEY"])


async def test_the_openrouter_key_is_sealed_in_observed_resources(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(conn, InstanceSpec(instance_id="sealed1", tools=(Tool.OPENROUTER,)))
    await settle(runtime, lambda: all_ready(conn, 1))
    key = deployed_key(sim, "sealed1")
    assert key.startswith("sk-or-")
    stored = await stored_secret(conn, "sealed1")
    assert stored.startswith(SEALED_PREFIX) and key not in stored
    assert runtime.secrets.open_(stored) == key
    # The seed's column keeps the value in clear: the pool manager may read it (docs/sql-contract.md).
    row = await (await conn.execute("SELECT env_value FROM instance_services WHERE tool_id = 'openrouter'")).fetchone()
    assert row == (key,)


async def test_the_database_refuses_a_new_secret_in_clear(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(conn, InstanceSpec(instance_id="clear1", tools=(Tool.OPENROUTER,)))
    await settle(runtime, lambda: all_ready(conn, 1))
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        await conn.execute(
            "UPDATE observed_resources SET secret = 'sk-or-v1-in-clear' WHERE instance_id = 'clear1'"
            " AND kind = 'openrouter_key'"
        )
    assert caught.value.diag.constraint_name == "observed_resources_secret_sealed"
    assert "sk-or-v1-in-clear" not in str(caught.value)
    # Writes that leave the secret alone still pass.
    await conn.execute("UPDATE observed_resources SET attempts = attempts WHERE instance_id = 'clear1'")


async def test_an_upgrade_seals_rows_written_in_clear_and_keeps_the_key(
    pg_server_url: str, sim: Sim, runtime: Runtime, tmp_path: Path
) -> None:
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database(pg_server_url, name)
    try:
        before = tmp_path / "migrations"
        before.mkdir()
        for migration in sorted(files(MIGRATIONS_PACKAGE).iterdir(), key=lambda entry: entry.name):
            if migration.name.endswith(".sql") and migration.name < "0008":
                (before / migration.name).write_text(migration.read_text())
        migrate(url, before)
        async with (
            simulated_runtime(url, sim) as old,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        ):
            await store.put(conn, InstanceSpec(instance_id="legacy1", tools=(Tool.OPENROUTER,)))
            await settle(old, lambda: all_ready(conn, 1))
            key = deployed_key(sim, "legacy1")
            # As a version before 0008 stored it: in clear.
            await conn.execute("UPDATE observed_resources SET secret = %s WHERE kind = 'openrouter_key'", (key,))
        assert "0008_secrets_at_rest" in migrate(url)  # the row in clear does not stop the migration

        async with (
            simulated_runtime(url, sim) as upgraded,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        ):
            stored = await stored_secret(conn, "legacy1")
            assert stored.startswith(SEALED_PREFIX) and key not in stored
            assert upgraded.secrets.open_(stored) == key
            # A forced pass reads the sealed key: same key, nothing replaced, still Ready.
            await upgraded.reconciler.make_due(["legacy1"])
            await settle(upgraded, lambda: all_ready(conn, 1))
        assert [k["name"] for k in openrouter_keys(sim)] == ["convos-agent-legacy1"]
        assert deployed_key(sim, "legacy1") == key
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            drop = psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(psycopg.sql.Identifier(name)))


async def test_a_wrong_key_stops_with_one_line_naming_the_setting(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any], db_url: str
) -> None:
    await store.put(conn, InstanceSpec(instance_id="wrong1", tools=(Tool.OPENROUTER,)))
    await settle(runtime, lambda: all_ready(conn, 1))
    other = generate_key()
    with pytest.raises(SecretKeyError) as caught:
        async with keyed_runtime(db_url, sim, runtime, other):
            pass
    message = str(caught.value)
    assert message.startswith("RECONCILER_SECRET_KEY does not open the secrets") and "\n" not in message
    assert other not in message

    code, _, err = await run_cli("plan", env=cli_env(db_url, sim) | {"RECONCILER_SECRET_KEY": other})
    assert code == 1
    assert err.strip().startswith("error: RECONCILER_SECRET_KEY does not open") and len(err.strip().splitlines()) == 1
    assert other not in err


async def test_rotation_reseals_with_the_first_key(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any], db_url: str
) -> None:
    await store.put(conn, InstanceSpec(instance_id="rot1", tools=(Tool.OPENROUTER,)))
    await settle(runtime, lambda: all_ready(conn, 1))
    key = deployed_key(sim, "rot1")
    new = generate_key()
    old = embedded_key()
    async with keyed_runtime(db_url, sim, runtime, f"{new},{old}") as rotated:
        assert await seal_stored_secrets(rotated.pool, rotated.secrets) == 0  # already done on entering
    assert SecretBox(new).open_(await stored_secret(conn, "rot1")) == key


def test_a_configured_database_needs_a_well_formed_key() -> None:
    with pytest.raises(SecretKeyError, match=r"^RECONCILER_SECRET_KEY is not set"):
        secret_box(load_settings({"SERVICE_DATABASE_URL": "postgresql://db/reconciler"}))
    malformed = "not-a-fernet-key-but-a-secret"
    with pytest.raises(SecretKeyError) as caught:
        secret_box(load_settings({"SERVICE_DATABASE_URL": "postgresql://db/x", "RECONCILER_SECRET_KEY": malformed}))
    assert str(caught.value).startswith("RECONCILER_SECRET_KEY must hold Fernet keys")
    assert malformed not in str(caught.value)


def test_the_embedded_key_is_generated_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / ".reconciler" / "secret.key"
    first = embedded_key(path)
    assert embedded_key(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    box = SecretBox(first)
    assert box.open_(box.seal("sk-or-v1-x")) == "sk-or-v1-x"


def test_values_in_clear_are_read_as_they_are_and_keys_never_print() -> None:
    key = generate_key()
    box = SecretBox(key)
    assert box.open_("sk-or-v1-written-before-0008") == "sk-or-v1-written-before-0008"
    assert box.stale("sk-or-v1-written-before-0008") and not box.stale(box.seal("x"))
    assert key not in repr(box)
    settings = load_settings({"RECONCILER_SECRET_KEY": key})
    assert key not in repr(settings)


async def test_the_start_up_check_waits_for_a_database_that_goes_away(tmp_path: Path) -> None:
    # Found by tests/test_chaos.py: Postgres stopped just after the pool opened killed the process.
    server = EmbeddedPostgres(tmp_path / "data")
    url = server.start()
    try:
        migrate(url)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=1, open=False)
        await pool.open(wait=True)
        try:
            server.stop()

            def restart_soon() -> str:
                time.sleep(1.0)
                return server.start()

            restart = asyncio.get_running_loop().run_in_executor(None, restart_soon)
            assert await seal_stored_secrets(pool, SecretBox(generate_key())) == 0
            await restart
        finally:
            await pool.close()
    finally:
        server.stop()
