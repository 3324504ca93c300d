"""End to end: desired rows converge on the simulated providers over real HTTP, on a real Postgres."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg.rows import dict_row

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from providers.base import ResourceKind
from providers.simulated.faults import FaultPlan, FaultRule, Latency
from reconciler.engine import Claim
from reconciler.metrics import Metrics
from reconciler.runtime import Runtime
from tests.conftest import FAST_ENGINE, Sim, simulated_runtime
from tests.support import all_ready, held, settle, until

ALL_TOOLS = (Tool.OPENROUTER, Tool.AGENTMAIL, Tool.TELNYX)


async def test_apply_converge_then_delete_leaves_nothing(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    specs = [
        InstanceSpec(instance_id="inst1", tools=ALL_TOOLS, env={"FOO": "bar"}),
        InstanceSpec(instance_id="inst2", tools=(Tool.OPENROUTER, Tool.AGENTMAIL)),
        InstanceSpec(instance_id="inst3"),
    ]
    await store.put_many(conn, specs)
    await settle(runtime, lambda: all_ready(conn, 3))
    conditions = await (await conn.execute("SELECT conditions FROM desired_instances")).fetchall()
    for (condition,) in conditions:
        assert condition["Ready"]["status"] == "True" and condition["Ready"]["reason"] == "Available"
        assert condition["Synced"]["status"] == "True" and condition["Ready"]["observedGeneration"] == 1

    names = held(sim)
    every = ["convos-agent-inst1", "convos-agent-inst2", "convos-agent-inst3"]
    assert names["railway.services"] == every
    assert names["railway.volumes"] == every
    assert names["railway.domains"] == every
    assert names["openrouter.keys"] == every[:2]
    assert names["agentmail.inboxes"] == every[:2]
    assert names["telnyx.phone_numbers"] == every[:1]

    # The seed tables carry the seed's values.
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM instance_infra ORDER BY instance_id")
        infra = await cur.fetchall()
        await cur.execute("SELECT * FROM instance_services ORDER BY instance_id, tool_id")
        services = await cur.fetchall()
    services_by_id = {s["id"]: s for s in sim.simulator.snapshot()["railway"]["services"]}
    assert [row["instance_id"] for row in infra] == ["inst1", "inst2", "inst3"]
    for row in infra:
        assert row["provider"] == "railway"
        assert row["provider_service_id"] in services_by_id
        assert row["provider_project_id"] == sim.simulator.railway.project_id
        assert row["deploy_status"] == "SUCCESS"
        assert row["url"].startswith("https://") and row["url"].endswith(".up.railway.app")
        assert row["runtime_image"] == "ghcr.io/xmtplabs/convos-runtime:latest"
        assert row["volume_id"]
    assert [(s["instance_id"], s["tool_id"], s["env_key"]) for s in services] == [
        ("inst1", "agentmail", "AGENTMAIL_INBOX_ID"),
        ("inst1", "openrouter", "OPENROUTER_API_KEY"),
        ("inst1", "telnyx", "TELNYX_PHONE_NUMBER"),
        ("inst2", "agentmail", "AGENTMAIL_INBOX_ID"),
        ("inst2", "openrouter", "OPENROUTER_API_KEY"),
    ]
    assert all(s["status"] == "active" for s in services)
    key_row = next(s for s in services if s["instance_id"] == "inst1" and s["tool_id"] == "openrouter")
    assert key_row["env_value"].startswith("sk-or-v1-")

    # The first deploy saw every variable, in one patch commit.
    inst1_service = services_by_id[infra[0]["provider_service_id"]]
    variables = inst1_service["variables"]
    assert variables["OPENROUTER_API_KEY"] == key_row["env_value"]
    assert variables["AGENTMAIL_INBOX_ID"].startswith("convos-agent-inst1@")
    assert variables["TELNYX_PHONE_NUMBER"].startswith("+1")
    assert (
        variables["FOO"] == "bar" and variables["INSTANCE_ID"] == "inst1" and variables["XMTP_ENV"] == "dev"
    )
    deployments = [
        d
        for d in sim.simulator.snapshot()["railway"]["deployments"]
        if d.get("service_id") == inst1_service["id"]
    ]
    assert len(deployments) == 1

    # Teardown: marked absent, every resource deleted, then the rows go.
    await store.mark_absent(conn, ["inst1", "inst2", "inst3"])

    async def gone() -> bool:
        left = await (await conn.execute("SELECT count(*) FROM desired_instances")).fetchone()
        return left == (0,)

    await settle(runtime, gone)
    assert all(not items for items in held(sim).values()), held(sim)
    for table in ("instance_infra", "instance_services", "observed_resources"):
        assert await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone() == (0,)
    actions = await (await conn.execute("SELECT count(*) FROM events WHERE action = 'delete'")).fetchone()
    assert actions is not None and actions[0] == 3 * 4 + 2 + 2 + 1


async def test_a_changed_spec_converges_to_the_new_one(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(
        conn, InstanceSpec(instance_id="chg", tools=(Tool.OPENROUTER, Tool.AGENTMAIL), env={"A": "1"})
    )
    await settle(runtime, lambda: all_ready(conn, 1))
    first_key = held(sim)["openrouter.keys"]

    await store.put(
        conn, InstanceSpec(instance_id="chg", tools=(Tool.OPENROUTER, Tool.TELNYX), env={"B": "2"})
    )

    async def converged() -> bool:
        row = await store.get(conn, "chg")
        return row is not None and row.phase == "Ready" and row.observed_generation == row.generation

    await settle(runtime, converged)
    names = held(sim)
    assert names["agentmail.inboxes"] == []
    assert names["telnyx.phone_numbers"] == ["convos-agent-chg"]
    assert names["openrouter.keys"] == first_key  # unchanged resources are left alone
    service = sim.simulator.snapshot()["railway"]["services"][0]
    assert service["variables"]["B"] == "2"
    # Variables we set and no longer want are removed: a dropped env var, the dropped tool's.
    assert "A" not in service["variables"] and "AGENTMAIL_INBOX_ID" not in service["variables"]
    assert service["variables"]["TELNYX_PHONE_NUMBER"].startswith("+1")
    tools = await (
        await conn.execute("SELECT array_agg(tool_id ORDER BY tool_id) FROM instance_services")
    ).fetchone()
    assert tools == (["openrouter", "telnyx"],)


async def test_a_crash_after_create_is_adopted_not_duplicated(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    """The process died after the provider created the inbox but before we recorded its id."""
    spec = InstanceSpec(instance_id="crash1", tools=(Tool.AGENTMAIL,))
    await store.put(conn, spec)
    await conn.execute(
        "INSERT INTO observed_resources (instance_id, kind, derived_name, status, intent_at)"
        " VALUES ('crash1', 'agentmail_inbox', 'convos-agent-crash1', 'creating', now())"
    )
    from reconciler.plan import desired_resource
    from reconciler.runtime import resource_defaults

    want = desired_resource(ResourceKind.AGENTMAIL_INBOX, spec, resource_defaults(runtime.settings), {}, {})
    created = await runtime.drivers[ResourceKind.AGENTMAIL_INBOX].create(want)

    await settle(runtime, lambda: all_ready(conn, 1))
    assert held(sim)["agentmail.inboxes"] == ["convos-agent-crash1"]
    recorded = await (
        await conn.execute("SELECT external_id FROM observed_resources WHERE kind = 'agentmail_inbox'")
    ).fetchone()
    assert recorded == (created.external_id,)
    adopt = await (await conn.execute("SELECT count(*) FROM events WHERE action = 'adopt'")).fetchone()
    assert adopt == (1,)


async def test_an_adopted_key_without_its_value_is_replaced(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    """An OpenRouter key's value is shown once: a key created before a crash cannot be used."""
    spec = InstanceSpec(instance_id="crash2", tools=(Tool.OPENROUTER,))
    await store.put(conn, spec)
    await conn.execute(
        "INSERT INTO observed_resources (instance_id, kind, derived_name, status, intent_at)"
        " VALUES ('crash2', 'openrouter_key', 'convos-agent-crash2', 'creating', now())"
    )
    from reconciler.plan import desired_resource
    from reconciler.runtime import resource_defaults

    want = desired_resource(ResourceKind.OPENROUTER_KEY, spec, resource_defaults(runtime.settings), {}, {})
    lost = await runtime.drivers[ResourceKind.OPENROUTER_KEY].create(want)

    await settle(runtime, lambda: all_ready(conn, 1))
    keys = sim.simulator.snapshot()["openrouter"]["keys"]
    assert [k["name"] for k in keys] == ["convos-agent-crash2"]
    assert keys[0]["id"] != lost.external_id
    value = await (await conn.execute("SELECT env_value FROM instance_services")).fetchone()
    assert value is not None and value[0].startswith("sk-or-v1-")


async def test_a_stale_worker_cannot_overwrite_a_newer_claim(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(conn, InstanceSpec(instance_id="fence1"))
    [stale] = await runtime.reconciler.claim()
    # Its lease runs out; another worker claims the row (bumping the fencing token).
    await conn.execute("UPDATE desired_instances SET lease_expires_at = now() - interval '1 second'")
    [fresh] = await runtime.reconciler.claim()
    assert fresh.token == stale.token + 1

    outcome = await runtime.reconciler.reconcile(stale)
    assert outcome.result == "lease_lost"
    assert await (await conn.execute("SELECT count(*) FROM observed_resources")).fetchone() == (0,)
    assert held(sim)["railway.services"] == []  # it stopped before its first provider call

    assert (await runtime.reconciler.reconcile(fresh)).result in ("requeue", "done")
    assert held(sim)["railway.services"] == ["convos-agent-fence1"]


async def test_a_stale_worker_does_not_update_a_resource_a_newer_claim_owns(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(conn, InstanceSpec(instance_id="fence2", tools=(Tool.OPENROUTER,), openrouter_limit=5.0))
    await settle(runtime, lambda: all_ready(conn, 1))
    await store.put(conn, InstanceSpec(instance_id="fence2", tools=(Tool.OPENROUTER,), openrouter_limit=7.0))
    [stale] = await runtime.reconciler.claim()
    await conn.execute("UPDATE desired_instances SET lease_expires_at = now() - interval '1 second'")
    [fresh] = await runtime.reconciler.claim()

    # An update has no row to write before its call: the fence is checked all the same.
    assert (await runtime.reconciler.reconcile(stale)).result == "lease_lost"
    [key] = sim.simulator.snapshot()["openrouter"]["keys"]
    assert key["limit"] == 5.0
    await runtime.reconciler.reconcile(fresh)
    [key] = sim.simulator.snapshot()["openrouter"]["keys"]
    assert key["limit"] == 7.0


async def test_a_missing_tool_key_is_a_visible_configuration_error(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any], db_url: str
) -> None:


    settings = runtime.settings.model_copy(update={"agentmail_key": None})
    async with Runtime(settings, db_url, runtime.options, Metrics(CollectorRegistry())) as bare:
        await store.put(conn, InstanceSpec(instance_id="nokey", tools=(Tool.AGENTMAIL,)))
        outcomes = await bare.worker.drain()
    assert [o.result for o in outcomes] == ["terminal"]
    row = await store.get(conn, "nokey")
    assert row is not None and row.phase == "Failed"
    assert row.last_error is not None and "AGENTMAIL_API_KEY is not set" in row.last_error
    # Not retried hot: the next attempt is at the slow configuration-error interval.
    assert (row.next_attempt_at - datetime.now(UTC)).total_seconds() > 600
    conditions = (await (await conn.execute("SELECT conditions FROM desired_instances")).fetchone() or [{}])[
        0
    ]
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "ConfigError"
    assert (
        conditions["Synced"]["status"] == "False" and "AGENTMAIL_API_KEY" in conditions["Synced"]["message"]
    )


async def test_claims_rank_changes_then_retries_then_polls_with_aging(
    runtime: Runtime, conn: psycopg.AsyncConnection[Any]
) -> None:
    # (row, changed?, failed attempts, due for how long); aging_seconds is 30.
    rows = [
        ("fresh", True, 0, 0),
        ("retry_recent", True, 2, 10),  # a retry ranks 30 s behind: after "fresh"
        ("retry_aged", True, 2, 45),  # ...but has waited more than that: before "fresh"
        ("poll_recent", False, 0, 10),  # a poll ranks 60 s behind new work, 30 s behind retries
        ("poll_retry", False, 1, 10),  # a failed drift correction: before "poll_recent"
        ("poll_aged", False, 0, 100),  # overdue by more than 60 s: before both
    ]
    for instance_id, changed, attempts, due_for in rows:
        await conn.execute(
            "INSERT INTO desired_instances (instance_id, spec, generation, observed_generation, phase, attempts,"
            " next_attempt_at) VALUES (%s, '{}'::jsonb, 2, %s, 'Ready', %s, now() - %s * interval '1 second')",
            (instance_id, 1 if changed else 2, attempts, due_for),
        )
    assert runtime.reconciler.settings.aging_seconds == 30
    order = [c.instance_id for _ in rows for c in await runtime.reconciler.claim(1)]
    assert order == ["retry_aged", "fresh", "retry_recent", "poll_aged", "poll_retry", "poll_recent"]


async def test_claims_are_disjoint_across_workers(
    runtime: Runtime, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put_many(conn, [InstanceSpec(instance_id=f"c{i}") for i in range(10)])
    first, second = await asyncio.gather(runtime.reconciler.claim(6), runtime.reconciler.claim(6))
    ids = [c.instance_id for c in first + second]
    assert sorted(ids) == sorted(f"c{i}" for i in range(10))  # every row once, none twice
    assert all(isinstance(c, Claim) for c in first + second)


async def test_new_work_is_claimed_first_even_behind_an_old_backlog_and_polls_never_starve(
    runtime: Runtime, conn: psycopg.AsyncConnection[Any]
) -> None:
    # 200 converged rows whose periodic poll has been due for an hour (a backlogged loop).
    await conn.execute(
        "INSERT INTO desired_instances (instance_id, spec, generation, observed_generation, phase, next_attempt_at)"
        " SELECT 'poll' || i, '{}'::jsonb, 1, 1, 'Ready', now() - interval '1 hour'"
        " FROM generate_series(1, 200) AS i"
    )
    await store.put(conn, InstanceSpec(instance_id="brandnew"))
    first = await runtime.reconciler.claim(8)
    assert "brandnew" in [c.instance_id for c in first]

    # A flood of changed rows still leaves a quarter of every claim to the oldest polls.
    await store.put_many(conn, [InstanceSpec(instance_id=f"flood{i}") for i in range(100)])
    second = await runtime.reconciler.claim(8)
    polls = [c for c in second if c.instance_id.startswith("poll")]
    assert len(polls) == 2 and len(second) == 8
    # Even the smallest claim the pipelined drain makes keeps a slot for them.
    third = await runtime.reconciler.claim(2)
    assert sorted(c.instance_id[:4] for c in third) == ["floo", "poll"]


async def test_an_instance_wanted_again_during_its_teardown_is_rebuilt_not_half_deleted(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    spec = InstanceSpec(instance_id="again", tools=(Tool.OPENROUTER,))
    await store.put(conn, spec)
    await settle(runtime, lambda: all_ready(conn, 1))
    await store.mark_absent(conn, ["again"])

    # The caller wants it back while the teardown is deleting the Railway service (the last
    # step): the simulator holds that call for a second, and the row says it is in flight.
    slow_delete = FaultRule(provider="railway", operation="serviceDelete", latency=Latency(fixed_ms=1000))
    sim.simulator.set_faults(FaultPlan(rules=[slow_delete]))
    teardown = asyncio.create_task(runtime.worker.drain())

    async def deleting_the_service() -> bool:
        cur = await conn.execute(
            "SELECT 1 FROM observed_resources WHERE instance_id = 'again' AND kind = 'railway_service'"
            " AND status = 'deleting'"
        )
        return await cur.fetchone() is not None

    await until(deleting_the_service, 10.0, message="the teardown did not reach the service")
    await store.put(conn, spec)
    first = await teardown
    assert (first[0].kind, first[0].result) == ("teardown", "requeue")
    sim.simulator.set_faults(FaultPlan())

    await settle(runtime, lambda: all_ready(conn, 1))
    row = await store.get(conn, "again")
    assert row is not None and row.present
    names = held(sim)
    assert names["railway.services"] == ["convos-agent-again"] and names["openrouter.keys"] == ["convos-agent-again"]
    infra = await (await conn.execute("SELECT count(*) FROM instance_infra WHERE instance_id = 'again'")).fetchone()
    assert infra == (1,)


async def test_stopping_a_busy_loop_lets_the_passes_in_flight_finish_and_logs_no_error(
    db_url: str, sim: Sim, caplog: Any
) -> None:
    # Every converged row is due again at once: the loop never runs out of work by itself.
    async with (
        simulated_runtime(db_url, sim, replace(FAST_ENGINE, poll_interval=0.0)) as runtime,
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn,
    ):
        await store.put_many(conn, [InstanceSpec(instance_id=f"busy{i}") for i in range(8)])
        stop = asyncio.Event()
        loop = asyncio.create_task(runtime.worker.run_forever(stop))
        await until(lambda: all_ready(conn, 8), 30.0, interval=0.1, message="did not converge in time")
        caplog.clear()
        stop.set()
        await asyncio.wait_for(loop, timeout=15)
        leased = await (
            await conn.execute("SELECT count(*) FROM desired_instances WHERE lease_owner IS NOT NULL")
        ).fetchone()
    assert leased == (0,), "a pass was abandoned mid-way, its claim left to expire"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_unexpected_error_is_recorded_on_the_row_with_backoff_not_left_on_a_held_claim(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # Not a provider's answer: the database refuses the pass's first write with an error no retry
    # inside the pass can fix (a trigger standing in for a bug), its text secret-looking.
    await conn.execute(
        """
        CREATE FUNCTION refuse_service_rows() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'a bug with secret-looking text sk-or-v1-abc'; END $$;
        CREATE TRIGGER refuse_service_rows BEFORE INSERT ON observed_resources
           FOR EACH ROW WHEN (NEW.kind = 'railway_service') EXECUTE FUNCTION refuse_service_rows();
        """
    )
    await store.put(conn, InstanceSpec(instance_id="oops"))
    [outcome] = await runtime.worker.drain()
    assert outcome.result == "error"
    row = await store.get(conn, "oops")
    assert row is not None and row.attempts == 1 and row.next_attempt_at > datetime.now(UTC)
    assert row.last_error == "internal error (RaiseException); details in the reconciler's log"
    leased = await (await conn.execute("SELECT lease_owner FROM desired_instances")).fetchone()
    assert leased == (None,)

    await conn.execute("DROP TRIGGER refuse_service_rows ON observed_resources")
    await settle(runtime, lambda: all_ready(conn, 1))
