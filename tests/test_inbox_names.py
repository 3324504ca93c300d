"""Instance ids that differ only in case, against AgentMail's case-insensitive usernames.

End to end on the simulator (whose AgentMail, like the real one, lower-cases every address):
``concA`` and ``conca`` each get an inbox of their own; an inbox made under the old naming rule
is still found; and a username held by somebody else fails the instance with an explanation,
records no create, and so makes teardown claim nothing destroyed.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from desired_state import store
from desired_state.models import InstanceSpec, Tool
from desired_state.queries import SELECT_DESTROYED_KINDS, SELECT_RESOURCE_KINDS
from providers.agentmail import inbox_username
from providers.simulated.faults import FaultPlan, FaultRule
from reconciler.runtime import Runtime
from tests.conftest import Sim
from tests.support import all_ready, out_of_band, settle


def inboxes(sim: Sim) -> dict[str, str]:
    """Email address to client id, of every inbox the simulator holds."""
    return {inbox["email"]: inbox["name"] for inbox in sim.simulator.snapshot()["agentmail"]["inboxes"]}


async def create_foreign_inbox(runtime: Runtime, username: str, client_id: str) -> str:
    """An inbox made by someone else (or by the old naming rule) at the simulated AgentMail."""
    key = runtime.settings.agentmail_key
    assert key is not None
    body = {"username": username, "client_id": client_id, "display_name": "not ours"}
    inbox = await out_of_band(runtime, "AGENTMAIL_API_URL", key.get_secret_value(), "POST", "/inboxes", json=body)
    return str(inbox["inbox_id"])


async def desired(conn: psycopg.AsyncConnection[Any], instance_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT phase, last_error, conditions FROM desired_instances WHERE instance_id = %s", (instance_id,)
        )
        return await cur.fetchone()


async def database_now(conn: psycopg.AsyncConnection[Any]) -> Any:
    row = await (await conn.execute("SELECT now()")).fetchone()
    assert row is not None
    return row[0]


async def destroyed_kinds(conn: psycopg.AsyncConnection[Any], instance_id: str, since: Any) -> set[str]:
    """What the finished teardown destroyed (the statement the destroy answer can be built from)."""
    cur = await conn.execute(SELECT_DESTROYED_KINDS, {"instance_id": instance_id, "since": since})
    return {row[0] for row in await cur.fetchall()}


async def resource_kinds(conn: psycopg.AsyncConnection[Any], instance_id: str) -> set[str]:
    """What the destroy answer reports as destroyed (the HTTP layer's own statement)."""
    cur = await conn.execute(SELECT_RESOURCE_KINDS, {"instance_id": instance_id})
    return {row[0] for row in await cur.fetchall()}


def test_usernames_differ_where_names_differ_only_in_case() -> None:
    assert inbox_username("convos-agent-conca") == "convos-agent-conca"  # unchanged: existing inboxes
    upper = inbox_username("convos-agent-concA")
    assert upper.startswith("convos-agent-conca.") and upper == upper.lower()
    assert upper != inbox_username("convos-agent-CONCA")
    assert len(inbox_username("convos-agent-" + "A" * 32)) <= 64  # AgentMail's username limit


async def test_ids_differing_only_in_case_each_get_an_inbox(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    await store.put(conn, InstanceSpec(instance_id="concA", tools=(Tool.AGENTMAIL,)))
    await settle(runtime, lambda: all_ready(conn, 1))
    await store.put(conn, InstanceSpec(instance_id="conca", tools=(Tool.AGENTMAIL,)))
    await settle(runtime, lambda: all_ready(conn, 2))

    held = {client_id: email.split("@")[0] for email, client_id in inboxes(sim).items()}
    assert held == {
        "convos-agent-conca": "convos-agent-conca",
        "convos-agent-concA": inbox_username("convos-agent-concA"),
    }

    since = await database_now(conn)
    await store.mark_absent(conn, ["concA", "conca"])
    await settle(runtime, lambda: _none_left(conn))
    assert inboxes(sim) == {}
    assert await destroyed_kinds(conn, "conca", since) == {
        "agentmail_inbox",
        "railway_service",
        "railway_volume",
        "railway_domain",
        "railway_deployment",
    }


async def _none_left(conn: psycopg.AsyncConnection[Any]) -> bool:
    return await store.list_instances(conn) == []


async def test_an_inbox_made_under_the_old_naming_rule_is_still_adopted(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # Before the rule, a mixed-case id's inbox took the lower-cased name as its username.
    old = await create_foreign_inbox(runtime, "convos-agent-olda", "convos-agent-oldA")
    await store.put(conn, InstanceSpec(instance_id="oldA", tools=(Tool.AGENTMAIL,)))
    await settle(runtime, lambda: all_ready(conn, 1))
    row = await (
        await conn.execute("SELECT external_id FROM observed_resources WHERE kind = 'agentmail_inbox'")
    ).fetchone()
    assert row == (old,)
    assert list(inboxes(sim)) == [old]  # no second inbox


async def test_a_username_held_by_someone_else_fails_terminally_and_destroys_nothing(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # `concA` made under the old rule holds `convos-agent-conca`; `conca` cannot have it.
    theirs = await create_foreign_inbox(runtime, "convos-agent-conca", "convos-agent-concA")
    await store.put(conn, InstanceSpec(instance_id="conca", tools=(Tool.AGENTMAIL,)))

    async def failed() -> bool:
        row = await desired(conn, "conca")
        return row is not None and row["phase"] == "Failed"

    await settle(runtime, failed)
    row = await desired(conn, "conca")
    assert row is not None
    assert "held by an inbox we do not own" in row["last_error"]
    assert "convos-agent-conca" in row["last_error"] and "case-insensitive" in row["last_error"]
    assert row["conditions"]["Ready"]["reason"] == "NameTaken"
    # Terminal: the next pass is an hour away (the config-error interval), not a hot retry.
    outcomes = await runtime.worker.drain()
    assert outcomes == []
    retries = runtime.metrics.retried.labels("agentmail", "conflict")._value.get()
    assert retries == 1

    # Nothing was created, so nothing is recorded as possibly existing, and teardown reports none.
    assert "agentmail_inbox" not in await resource_kinds(conn, "conca")
    since = await database_now(conn)
    await store.mark_absent(conn, ["conca"])
    await settle(runtime, lambda: _none_left(conn))
    assert "agentmail_inbox" not in await destroyed_kinds(conn, "conca", since)
    events = await (await conn.execute("SELECT action, outcome FROM events WHERE kind = 'agentmail_inbox'")).fetchall()
    assert ("delete", "ok") not in events
    assert list(inboxes(sim)) == [theirs]  # somebody else's inbox is left alone


async def test_a_create_that_never_landed_is_recorded_as_nothing_deleted(
    runtime: Runtime, sim: Sim, conn: psycopg.AsyncConnection[Any]
) -> None:
    # Every create times out before AgentMail acts: the row holds an intent, nothing exists.
    never = FaultRule(provider="agentmail", operation="create_inbox", timeout_rate=1.0, timeout_seconds=0.05)
    sim.simulator.set_faults(FaultPlan(rules=[never]))
    await store.put(conn, InstanceSpec(instance_id="never", tools=(Tool.AGENTMAIL,)))
    await runtime.worker.drain()
    assert "agentmail_inbox" in await resource_kinds(conn, "never")  # a create is in doubt

    sim.simulator.set_faults(FaultPlan())
    since = await database_now(conn)
    await store.mark_absent(conn, ["never"])
    await settle(runtime, lambda: _none_left(conn))
    assert "agentmail_inbox" not in await destroyed_kinds(conn, "never", since)
    events = await (
        await conn.execute("SELECT action, outcome FROM events WHERE kind = 'agentmail_inbox' AND action = 'delete'")
    ).fetchall()
    assert events == [("delete", "not_found")]  # looked for by name, not found: nothing destroyed
    assert inboxes(sim) == {}
