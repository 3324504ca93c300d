"""Fixtures: a real Postgres for every integration test, and the simulated providers over HTTP.

The Postgres server comes from, in order (ARCHITECTURE.md section 7):
``RECONCILER_TEST_DATABASE_URL``; a testcontainers Postgres when a Docker engine answers; an
embedded ``pgserver`` (works on a bare machine). The schema is migrated once into a template
database, and each test gets its own fresh copy (``CREATE DATABASE ... TEMPLATE``), so tests
never see each other's rows and never need cleaning up.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from providers.simulated.app import Simulator, SimulatorSettings
from providers.simulated.server import serve_in_background
from reconciler.db import EmbeddedPostgres, create_database, migrate
from reconciler.demo import simulated_settings
from reconciler.engine import EngineSettings
from reconciler.metrics import Metrics
from reconciler.runtime import Runtime, RuntimeOptions

TEMPLATE = "reconciler_test_template"


def _docker_answers() -> bool:
    try:
        import docker  # testcontainers depends on it

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A URL of a Postgres server this session may create databases on."""
    configured = os.environ.get("RECONCILER_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    # A short path: the server's Unix socket lives in its data directory.
    with tempfile.TemporaryDirectory(prefix="rpg") as directory:
        embedded = EmbeddedPostgres(Path(directory) / "data")
        with embedded as url:
            yield url


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> str:
    url = create_database(pg_server_url, TEMPLATE)
    migrate(url)
    return url


@pytest.fixture
def db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A freshly migrated database of this test's own."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database(pg_server_url, name, template=TEMPLATE)
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
        )


@pytest.fixture
async def private_postgres() -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A Postgres server of this test's own (migrated), so it can be stopped and restarted without
    disturbing other tests."""
    with tempfile.TemporaryDirectory(prefix="rpgr") as directory:
        server = EmbeddedPostgres(Path(directory) / "data")
        url = server.start()
        migrate(url)
        try:
            yield server, url
        finally:
            server.stop()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as connection:
        yield connection


@dataclass
class Sim:
    """A running simulator: its object (state, knobs) and its root URL."""

    simulator: Simulator
    root: str


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    simulator = Simulator(SimulatorSettings(deploy_seconds=0.2, seed=1))
    async with serve_in_background(simulator.app()) as root:
        yield Sim(simulator, root)


FAST_ENGINE = EngineSettings(
    lease_seconds=30.0,
    poll_interval=3600.0,
    not_ready_interval=0.05,
    backoff_base=0.05,
    backoff_cap=0.5,
    config_error_interval=3600.0,
    create_settle_seconds=0.2,
)


def simulated_runtime(db_url: str, sim: Sim, engine: EngineSettings = FAST_ENGINE, **options: Any) -> Runtime:
    """A Runtime on ``sim`` with its own metrics registry; enter it with ``async with``."""
    settings = simulated_settings(sim.root, sim.simulator.railway.project_id)
    runtime_options = RuntimeOptions(engine=engine, tick_seconds=0.1, **options)
    return Runtime(settings, db_url, runtime_options, Metrics(CollectorRegistry()))


@pytest.fixture
async def runtime(db_url: str, sim: Sim) -> AsyncIterator[Runtime]:
    async with simulated_runtime(db_url, sim) as rt:
        yield rt
