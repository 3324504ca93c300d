"""Batched observation, drift correction, garbage collection and the operator views."""

from __future__ import annotations

from typing import Any

import psycopg

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from providers.base import DesiredResource, ResourceKind
from reconciler.operator import build_plan, render_plan, why
from reconciler.runtime import Runtime
from tests.conftest import Sim
from tests.support import all_ready, held, out_of_band, settle


async def converged(runtime: Runtime, conn: psycopg.AsyncConnection[Any], *specs: InstanceSpec) -> None:
    await store.put_many(conn, list(specs))
    await settle(runtime, lambda: all_ready(conn, len(specs)))


async def test_a_key_deleted_out_of_band_is_detected_and_recreated(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await converged(runtime, conn, InstanceSpec(instance_id="d1", tools=(Tool.OPENROUTER,)))
    [old] = sim.simulator.snapshot()["openrouter"]["keys"]
    want = DesiredResource(ResourceKind.OPENROUTER_KEY, "d1", "convos-agent-d1")
    await runtime.drivers[ResourceKind.OPENROUTER_KEY].delete(old["id"], want)

    runtime.observer.list_lag_grace = 0
    report = await runtime.observer.observe()
    assert report.drift == [("d1", "openrouter_key", "gone")]
    assert runtime.metrics.drift_detected.labels("openrouter_key", "gone")._value.get() == 1

    await settle(runtime, lambda: all_ready(conn, 1))
    [new] = sim.simulator.snapshot()["openrouter"]["keys"]
    assert new["name"] == "convos-agent-d1" and new["id"] != old["id"]
    key = await (await conn.execute("SELECT env_value FROM instance_services WHERE tool_id='openrouter'")).fetchone()
    [service] = sim.simulator.snapshot()["railway"]["services"]
    assert key is not None and service["variables"]["OPENROUTER_API_KEY"] == key[0]
    # A second cycle finds nothing more to do.
    assert (await runtime.observer.observe()).drift == []


async def change_limit(runtime: Runtime, key_id: str, limit: float) -> None:
    """Someone changes a key's limit in OpenRouter's dashboard."""
    management_key = runtime.settings.openrouter_key
    assert management_key is not None
    token = management_key.get_secret_value()
    await out_of_band(runtime, "OPENROUTER_API_URL", token, "PATCH", f"/keys/{key_id}", json={"limit": limit})


async def test_a_changed_limit_is_corrected(runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]) -> None:
    await converged(runtime, conn, InstanceSpec(instance_id="d2", tools=(Tool.OPENROUTER,)))
    [key] = sim.simulator.snapshot()["openrouter"]["keys"]
    await change_limit(runtime, key["id"], 999.0)

    report = await runtime.observer.observe()
    assert report.drift == [("d2", "openrouter_key", "config")]
    await settle(runtime, lambda: all_ready(conn, 1))
    [key] = sim.simulator.snapshot()["openrouter"]["keys"]
    assert key["limit"] == 20.0


async def test_a_service_removed_out_of_band_is_rebuilt_with_everything_it_carries(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await converged(runtime, conn, InstanceSpec(instance_id="d3", tools=(Tool.AGENTMAIL,)))
    [old] = sim.simulator.snapshot()["railway"]["services"]
    want = DesiredResource(ResourceKind.RAILWAY_SERVICE, "d3", "convos-agent-d3")
    await runtime.drivers[ResourceKind.RAILWAY_SERVICE].delete(old["id"], want)

    runtime.observer.list_lag_grace = 0
    assert ("d3", "railway_service", "gone") in (await runtime.observer.observe()).drift
    await settle(runtime, lambda: all_ready(conn, 1))
    names = held(sim)
    assert names["railway.services"] == names["railway.volumes"] == names["railway.domains"] == ["convos-agent-d3"]
    [new] = sim.simulator.snapshot()["railway"]["services"]
    assert new["id"] != old["id"] and new["variables"]["AGENTMAIL_INBOX_ID"].startswith("convos-agent-d3@")
    infra = await (await conn.execute("SELECT provider_service_id, deploy_status FROM instance_infra")).fetchone()
    assert infra == (new["id"], "SUCCESS")


async def test_a_crashed_deploy_shows_in_status_and_conditions(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await converged(runtime, conn, InstanceSpec(instance_id="d4"))
    [service] = sim.simulator.snapshot()["railway"]["services"]
    sim.simulator.railway.crash(service["id"])

    report = await runtime.observer.observe()
    assert report.status_changes == 1
    assert await (await conn.execute("SELECT deploy_status FROM instance_infra")).fetchone() == ("CRASHED",)
    await runtime.worker.drain()
    row = await store.get(conn, "d4")
    assert row is not None and row.phase == "Failed"
    lines = await why(conn, "d4")
    assert lines is not None and any("Ready=False (DeployFailed)" in line for line in lines)


async def test_a_fleet_larger_than_one_page_of_recorded_rows_is_diffed_whole(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # Recorded rows are read a page at a time; two rows a page splits every instance's five.
    runtime.observer.recorded_page_rows = 2
    ids = ["p1", "p2", "p3"]
    await converged(runtime, conn, *(InstanceSpec(instance_id=i, tools=(Tool.OPENROUTER,)) for i in ids))
    for key in sim.simulator.snapshot()["openrouter"]["keys"]:
        await change_limit(runtime, key["id"], 999.0)
    services = {s["name"]: s["id"] for s in sim.simulator.snapshot()["railway"]["services"]}
    sim.simulator.railway.crash(services["convos-agent-p3"])

    report = await runtime.observer.observe()
    assert sorted(report.drift) == [(i, "openrouter_key", "config") for i in ids]
    assert report.status_changes == 1
    crashed = "SELECT i.instance_id FROM instance_infra i WHERE deploy_status = 'CRASHED'"
    assert await (await conn.execute(crashed)).fetchall() == [("p3",)]


async def test_gc_deletes_orphans_after_the_grace_period_and_never_live_resources(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await converged(runtime, conn, InstanceSpec(instance_id="live1", tools=(Tool.OPENROUTER, Tool.AGENTMAIL)))
    # Resources under the names of instances nobody wants (a crashed create of a deleted row).
    for kind in (ResourceKind.OPENROUTER_KEY, ResourceKind.AGENTMAIL_INBOX):
        want = DesiredResource(kind, "ghost", "convos-agent-ghost", params=_params(kind))
        await runtime.drivers[kind].create(want)

    dry = await runtime.observer.collect(dry_run=True)
    assert sorted((o.kind.value, o.name) for o in dry.orphans) == [
        ("agentmail_inbox", "convos-agent-ghost"),
        ("openrouter_key", "convos-agent-ghost"),
    ]
    assert dry.collected == [] and len(held(sim)["openrouter.keys"]) == 2

    runtime.observer.gc_grace = 3600
    in_grace = await runtime.observer.collect()
    assert in_grace.collected == [] and len(in_grace.orphans) == 2  # remembered, not deleted

    runtime.observer.gc_grace = 0
    done = await runtime.observer.collect()
    assert len(done.collected) == 2
    names = held(sim)
    assert names["openrouter.keys"] == ["convos-agent-live1"] and names["agentmail.inboxes"] == ["convos-agent-live1"]
    events = await (await conn.execute("SELECT count(*) FROM events WHERE action = 'gc_delete'")).fetchone()
    assert events == (2,)


async def test_gc_leaves_alone_an_instance_the_replaced_system_recorded(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # An upgraded database: the old system's instance_infra row, its resources, no desired row.
    service = await runtime.drivers[ResourceKind.RAILWAY_SERVICE].create(
        DesiredResource(ResourceKind.RAILWAY_SERVICE, "legacy1", "convos-agent-legacy1")
    )
    key_want = DesiredResource(
        ResourceKind.OPENROUTER_KEY, "legacy1", "convos-agent-legacy1", params=_params(ResourceKind.OPENROUTER_KEY)
    )
    await runtime.drivers[ResourceKind.OPENROUTER_KEY].create(key_want)
    await conn.execute(
        "INSERT INTO instance_infra (instance_id, provider_service_id, provider_env_id) VALUES ('legacy1', %s, 'env')",
        (service.external_id,),
    )
    # ...and a real orphan beside it, so the pass is known to collect.
    await runtime.drivers[ResourceKind.OPENROUTER_KEY].create(
        DesiredResource(
            ResourceKind.OPENROUTER_KEY, "ghost", "convos-agent-ghost", params=_params(ResourceKind.OPENROUTER_KEY)
        )
    )

    runtime.observer.gc_grace = 0
    assert [o.name for o in (await runtime.observer.collect(dry_run=True)).orphans] == ["convos-agent-ghost"]
    done = await runtime.observer.collect()
    assert [o.name for o in done.collected] == ["convos-agent-ghost"]
    names = held(sim)
    assert names["openrouter.keys"] == ["convos-agent-legacy1"]
    assert names["railway.services"] == ["convos-agent-legacy1"]


async def test_plan_shows_creates_then_nothing_then_drift_and_orphans(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(conn, InstanceSpec(instance_id="p1", tools=(Tool.OPENROUTER,)))
    plan = await build_plan(conn, runtime.observer, runtime.reconciler.defaults, secrets=runtime.secrets)
    text = "\n".join(render_plan(plan))
    assert "  + openrouter_key" in text and "  + railway_deployment" in text
    assert text.endswith("Plan: 5 to add, 0 to change, 0 to destroy.")
    assert sim.simulator.snapshot()["openrouter"]["keys"] == []  # planning changed nothing

    await settle(runtime, lambda: all_ready(conn, 1))
    plan = await build_plan(conn, runtime.observer, runtime.reconciler.defaults, secrets=runtime.secrets)
    assert not plan.has_changes and "No changes." in "\n".join(render_plan(plan))

    [key] = sim.simulator.snapshot()["openrouter"]["keys"]
    driver = runtime.drivers[ResourceKind.OPENROUTER_KEY]
    await driver.delete(key["id"], DesiredResource(ResourceKind.OPENROUTER_KEY, "p1", "convos-agent-p1"))
    await driver.create(DesiredResource(ResourceKind.OPENROUTER_KEY, "x9", "convos-agent-x9", params={"limit": 1.0}))
    runtime.observer.list_lag_grace = 0
    plan = await build_plan(conn, runtime.observer, runtime.reconciler.defaults, secrets=runtime.secrets)
    text = "\n".join(render_plan(plan))
    assert "~ p1 openrouter_key: missing from the provider" in text
    assert "openrouter_key" in text and "convos-agent-x9: no desired instance" in text
    assert text.endswith("Plan: 0 to add, 1 to change, 1 to destroy.")


def _params(kind: ResourceKind) -> dict[str, Any]:
    if kind is ResourceKind.OPENROUTER_KEY:
        return {"limit": 5.0, "limit_reset": None}
    return {"domain": None, "display_name": "Ghost"}


async def test_a_variable_changed_out_of_band_is_detected_and_corrected(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await converged(runtime, conn, InstanceSpec(instance_id="v1", tools=(Tool.AGENTMAIL,), env={"MODE": "calm"}))
    [service] = sim.simulator.snapshot()["railway"]["services"]
    railway = runtime.railway
    assert railway is not None
    # Someone edits two variables by hand in the Railway dashboard; one of them is not ours.
    patch = {"services": {service["id"]: {"variables": {"MODE": {"value": "wild"}, "EXTRA": {"value": "1"}}}}}
    await railway.execute(
        "environmentPatchCommit",
        "mutation P($e: String!, $p: EnvironmentConfig) { environmentPatchCommit(environmentId: $e, patch: $p) }",
        {"e": await railway.environment_id(), "p": patch},
    )

    plan = await build_plan(conn, runtime.observer, runtime.reconciler.defaults, secrets=runtime.secrets)
    assert "~ v1 railway_deployment: fields we own differ" in "\n".join(render_plan(plan))
    report = await runtime.observer.observe()
    assert report.drift == [("v1", "railway_deployment", "config")]
    assert runtime.metrics.drift_detected.labels("railway_deployment", "config")._value.get() == 1

    await settle(runtime, lambda: all_ready(conn, 1))
    [service] = sim.simulator.snapshot()["railway"]["services"]
    assert service["variables"]["MODE"] == "calm"  # ours, put back
    assert service["variables"]["EXTRA"] == "1"  # not ours, left alone
    assert (await runtime.observer.observe()).drift == []
